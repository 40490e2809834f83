"""Numbers measured from when things happened, decided only on what the samples support:
spike windows, impact levels, unsupported baselines and attribution over the slow interval."""

from __future__ import annotations

import pytest

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import ChangeKind, Impact, Status
from exporter.core.events import PodEventKind as P
from exporter.core.histogram import RELATIVE_ACCURACY
from exporter.core.rules import CorrelationSettings

from .harness import CHECKOUT, T0, World
from .test_spikes import SIDECARS, STEADY_CPU, world


def steady(seconds: float = 300, **settings: float) -> World:
    w = World(CorrelationSettings(**settings))
    w.seed("checkout-a", "checkout-b")
    w.run(seconds)  # a probe every 0.5 s at 10 ms
    return w


def test_a_spike_is_reported_from_when_it_rose_to_when_it_fell() -> None:
    w = steady()
    rose = w.now + 0.5  # the first slow probe
    w.run(10, 0.060)
    fell = w.now  # the last slow probe
    w.run(90)
    (episode,) = w.closed()
    assert episode.spike and episode.status is Status.RECOVERED
    assert episode.opened_at == pytest.approx(rose, abs=0.5)
    assert episode.closed_at == pytest.approx(fell, abs=0.5)
    assert episode.spike_detected_at is not None and episode.spike_detected_at > rose
    headline = episode.headline()
    assert headline is not None
    # `during` is [opened, closed] (to within one 1 s slot): the 20 slow probes, not the
    # calm after them.
    assert headline.during.count == pytest.approx(20, abs=2)
    doc = episode.as_json()
    assert doc["spike"]["detected_at"] is not None
    assert doc["spike"]["threshold_seconds"] == pytest.approx(0.020, rel=0.05)
    assert doc["duration_seconds"] == pytest.approx(10, abs=1)
    assert doc["events"][0]["event"] == "tail_spike"


def test_one_slow_probe_in_a_lifecycle_episode_is_not_a_severe_p99() -> None:
    """40 probes during the episode, one of them 10x: its "p99" is that one probe, which
    the JSON reports with what it is; the impact level is decided on what the samples
    support (the p99's lower bound), and that is no impact."""
    w = steady()
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(0.5, 0.100)
    w.run(4.5)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(60)
    (episode,) = w.closed()
    assert episode.impact is Impact.NONE
    doc = episode.as_json()
    during = doc["latency"]["during"]
    assert during["p99"] == pytest.approx(0.100, rel=RELATIVE_ACCURACY)
    assert during["supported"]["p99"] is False
    assert f"p99 from {during['samples']} samples is the maximum" in during["notes"][0]
    assert "is the maximum" in doc["summary"]


def test_clear_harm_is_severe_even_from_few_samples() -> None:
    w = steady()
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(5, 0.100)  # every probe 10x: the p99's lower bound is 10x too
    w.change("checkout-b", [E.READY], ready=True)
    w.run(60)
    (episode,) = w.closed()
    assert episode.impact is Impact.SEVERE
    assert episode.observed_p99_ratio() == pytest.approx(10, rel=0.05)


def test_a_baseline_that_cannot_bound_a_p99_decides_nothing() -> None:
    w = steady(60)  # 120 steady probes (60 of them in the baseline yet): a p99 needs 299
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(5, 0.100)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(60)
    (episode,) = w.closed()
    assert episode.impact is Impact.UNKNOWN
    assert episode.status is Status.NO_BASELINE
    assert episode.recovered_at is None
    assert "recovery not judged: the baseline p99 from 59 samples" in episode.summary()
    # Nor is a tail spike judged against it.
    w2 = steady(60)
    w2.run(20, 0.200)
    assert w2.closed() == [] and w2.c.open_episodes() == []


def test_pressure_is_measured_over_the_slow_interval_with_its_peak() -> None:
    """A container throttled in 90% of its periods during a 10 s burst is reported at 90%,
    not averaged over the settle time after it."""
    w, node = world()
    start = w.now
    for _ in range(10):
        w.run(1, 0.060)
        w.observe(node.advance(STEADY_CPU, throttled={("checkout-a", "app"): 0.9}), SIDECARS)
    for _ in range(120):
        w.run(1)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    (episode,) = w.closed()
    assert episode.cause.value == "resource_pressure"
    top = episode.attribution[0]
    assert (top.pod, top.container) == ("checkout-a", "app")
    assert top.throttled_ratio == pytest.approx(0.9, abs=0.1)
    assert top.peak_throttled_ratio == pytest.approx(0.9, abs=0.01)
    assert episode.attribution_window is not None
    begin, end = episode.attribution_window
    assert begin == pytest.approx(start, abs=1) and end == pytest.approx(start + 10, abs=1)
    assert episode.as_json()["attribution_window"]["from"] is not None


def test_the_slow_interval_of_a_lifecycle_episode_is_its_slow_samples() -> None:
    w = steady()
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(3)
    first_slow = w.now + 0.5
    w.run(6, 0.080)
    last_slow = w.now
    w.run(3)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(60)
    (episode,) = w.closed()
    assert episode.attribution_window == (
        pytest.approx(first_slow, abs=0.01),
        pytest.approx(last_slow, abs=0.01),
    )


def test_recovery_is_placed_to_the_probe_at_one_probe_a_second() -> None:
    """The default probe interval: recovery within one probe of when latency returned."""
    w = steady(400)
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(5, 0.100, every=1.0)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(30, 0.100, every=1.0)  # settle, then 7 s more of slow answers after the close
    w.run(7, 0.100, every=1.0)
    returned = w.now
    w.run(60, every=1.0)
    (episode,) = w.closed()
    assert episode.status is Status.RECOVERED
    assert episode.recovered_at == pytest.approx(returned, abs=1.0)
    assert episode.closed_at is not None and episode.closed_at < returned
    assert episode.detected_at == pytest.approx(returned + 30, abs=1.0)
    assert episode.opened_at > T0 and episode.service == CHECKOUT


def test_a_spike_never_becomes_the_baseline_of_the_next() -> None:
    """The samples of a spike taken before it was detected were steady then: they must not
    raise the baseline, or an identical spike minutes later goes unseen."""
    w = steady(400, recovery_window=30)
    for _ in range(2):
        w.run(10, 0.100, every=0.1)
        w.run(190, every=0.1)
    spikes = [e for e in w.closed() if e.spike]
    assert len(spikes) == 2
    for episode in spikes:
        headline = episode.headline()
        assert headline is not None and headline.baseline is not None
        assert headline.baseline.p99.value == pytest.approx(0.010, rel=RELATIVE_ACCURACY)


def test_a_replica_not_ready_does_not_hold_a_spike_open() -> None:
    w = steady()
    w.change("checkout-b", [], ready=False)  # a replica broken since before (no event now)
    w.run(10, 0.060)
    fell = w.now
    w.run(60)
    (episode,) = w.closed()
    assert episode.spike and episode.closed_at == pytest.approx(fell, abs=0.5)
    headline = episode.headline()
    assert headline is not None and headline.during.count == pytest.approx(20, abs=2)


def test_a_spike_joined_by_a_lifecycle_event_is_attributed_over_its_slow_interval() -> None:
    w, node = world()
    start = w.now
    for second in range(10):
        w.run(1, 0.060)
        w.observe(node.advance(STEADY_CPU, throttled={("checkout-a", "app"): 0.9}), SIDECARS)
        if second == 7:
            w.pod_event(P.CONTAINER_RESTART, "checkout-a", container="app")
    for _ in range(120):
        w.run(1)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    (episode,) = w.closed()
    assert episode.cause.value == "restart"
    assert episode.attribution_window is not None
    begin, end = episode.attribution_window
    assert begin == pytest.approx(start, abs=1) and end == pytest.approx(start + 10, abs=1)
    assert episode.attribution[0].throttled_ratio == pytest.approx(0.9, abs=0.1)


def test_an_episode_without_a_baseline_says_so_when_it_ends() -> None:
    w = steady(60)
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(5, 0.100)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(60)
    assert [ch.kind for ch in w.changes] == [
        ChangeKind.OPENED, ChangeKind.CLOSED, ChangeKind.NO_BASELINE
    ]  # fmt: skip
