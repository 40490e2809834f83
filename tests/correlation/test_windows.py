"""The bounded latency history: what a window holds, whatever the slot alignment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.histogram import FineHistogram
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


# One tick of a Service: (seconds since the last tick, probe values, a client range or none,
# steady, whether a spike rose in it).
ticks = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.4, 1.0, 1.0, 1.0, 2.5, 31.0]),
        st.lists(st.floats(0.0, 2.0), max_size=4),
        st.one_of(st.none(), st.tuples(st.floats(0.0, 0.5), st.integers(0, 500))),
        st.booleans(),
        st.integers(0, 30).map(lambda n: n == 0),
    ),
    min_size=1,
    max_size=250,
)


def _answers(run: list[tuple[float, list[float], tuple[float, int] | None, bool, bool]]) -> list:
    """What the correlation core reads of a timeline, tick by tick: windows of the fine track
    (merged, totals, counts, quantiles), the baseline before it, the ring's merges."""
    t = LatencyTimeline(fine_span=40, width=1, baseline_span=60, slots=6, hold=20)
    now = 1_800_000_000.3
    out: list = []
    for gap, values, client, steady, spike in run:
        now += gap
        for v in values:
            t.record(now, v, steady)
        if client is not None:
            h = FineHistogram()
            h.record_range(client[0], client[0] * 1.5, client[1])
            t.merge(now, h, steady)
        t.advance(now)
        if spike:
            t.unsteady_since(now - 3)
        end = now - 20
        baseline = t.steady_before(end, 60)
        window = t.fine.merged(end)
        out.append((
            baseline, baseline.quantiles((0.5, 0.99)), t.baseline_version(end, 60),
            window, window.quantiles((0.5, 0.99, 1.0)), window.largest(),
            t.fine.totals(end, 0.2), t.fine.totals(end, 0.05, steady_only=True),
            t.fine.counts(end - 10, 0.1), t.baseline.merged(now - 45, now),
            [(s.index, s.histogram.count, s.above(0.3)) for s in t.fine],
        ))  # fmt: skip
    out.append(sum(not s.histogram.packed for s in t.fine))  # slots left unpacked
    return out


@settings(max_examples=60, deadline=None)
@given(ticks)
def test_packed_slots_answer_every_window_as_unpacked_ones(
    run: list[tuple[float, list[float], tuple[float, int] | None, bool, bool]],
) -> None:
    """Closed slots are packed: every window, baseline and count read from them is the same
    as from slots left as they were written (packing turned off)."""
    packed = _answers(run)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(FineHistogram, "pack", lambda self: None)
        unpacked = _answers(run)
    assert packed[:-1] == unpacked[:-1]
    assert packed[-1] <= 1  # the newest slot only


def test_only_the_newest_slot_stays_unpacked() -> None:
    t = LatencyTimeline(fine_span=40, width=1, baseline_span=60, slots=6, hold=20)
    for i in range(200):
        t.record(1000.0 + i, 0.010 + i / 1e4, steady=True)
        t.advance(1000.0 + i)
    fine = list(t.fine)
    assert all(s.histogram.packed for s in fine[:-1]) and not fine[-1].histogram.packed
    # A clock step back lands in the newest slot, never in a packed one.
    t.record(1100.0, 0.5, steady=True)
    assert fine[-1].histogram.count == 2 and all(s.histogram.packed for s in fine[:-1])
    ring = [h.histogram for h in t.baseline._ring]
    assert all(h.packed for h in ring[:-1]) and not ring[-1].packed
