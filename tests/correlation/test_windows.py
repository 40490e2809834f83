"""The bounded latency history: what a window holds, whatever the slot alignment."""

from __future__ import annotations

import pytest

from exporter.core.rules import CorrelationSettings
from exporter.core.windows import LatencyTimeline, SlotRing

from .harness import World


@pytest.mark.parametrize("offset", [0.0, 0.1, 7.3, 15.0, 29.9])
def test_excluded_span_never_reaches_the_baseline(offset: float) -> None:
    """Slots are 30 s long, the excluded span too: samples of the last 30 s must not count,
    even when the slot that holds them began earlier (a spike must not be its own baseline)."""
    t = LatencyTimeline(fine_span=61, width=1, baseline_span=300, slots=10, hold=30)
    start = 1_800_000_000.0 + offset
    for i in range(400):
        t.record(start + i, 0.010, steady=True)
        t.advance(start + i)  # a tick
    now = start + 400
    for i in range(30):
        t.record(now + i, 0.500, steady=True)  # a spike not detected yet
        t.advance(now + i)
        baseline = t.steady_before(now + i - 30, 300)
        assert baseline.count >= 300  # the whole baseline window before the excluded span
        assert baseline.quantile(1.0) == pytest.approx(0.010, rel=0.02)
        # Not even the ring holds the spike: steady samples reach it only once out of the
        # rolling window.
        assert t.baseline.merged(now, now + i).count_above(0.1) == 0


def test_ring_keeps_a_bounded_number_of_slots() -> None:
    ring = SlotRing(span=30, slots=10)
    for i in range(10_000):
        ring.record(float(i), 0.001)
    assert len(ring) == 11
    assert 30 <= ring.merged(9_970, 9_999).count <= 33  # known to within one 3 s slot


def test_values_read_back_by_rank() -> None:
    ring = SlotRing(span=100, slots=1)
    for v in (1, 2, 3, 4, 5):
        ring.record(0.0, v / 1000)
    merged = ring.merged(0, 0)
    largest, third = merged.at_ranks([5, 3])
    assert largest == pytest.approx(0.005, rel=0.02) == merged.largest()
    assert third == pytest.approx(0.003, rel=0.02)
    with pytest.raises(ValueError, match="rank 6"):
        merged.at_ranks([6])


def test_no_spike_against_a_baseline_of_a_few_samples() -> None:
    """Right after the agent starts the baseline holds a handful of samples; their p99 is no
    reference, and a slower minute must not become an endless 'spike' episode."""
    w = World(CorrelationSettings())
    w.seed("checkout-a")
    w.now += 28  # the agent's first sample lands at the end of a baseline slot
    w.run(1, 0.004, every=1.0)  # and happens to be fast
    w.run(120, 0.030, every=1.0)  # the Service's usual latency
    assert w.changes == []
