"""Tail spikes without a lifecycle event, and resource attribution."""

from __future__ import annotations

import pytest

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import ChangeKind, Status
from exporter.core.rules import CorrelationSettings

from .harness import Pressure, Reading, World

SIDECARS = {("shop", "checkout-a"): frozenset({"proxy"})}


class Node:
    """The cgroups of checkout-a (app + proxy sidecar) and checkout-b (app), advanced by
    rates per second."""

    def __init__(self) -> None:
        self.readings = {
            (pod, c): Reading("shop", pod, c)
            for pod, c in (("checkout-a", "app"), ("checkout-a", "proxy"), ("checkout-b", "app"))
        }

    def advance(
        self,
        cpu: dict[tuple[str, str], float],
        throttled: dict[tuple[str, str], float] | None = None,
        psi_cpu: dict[tuple[str, str], float] | None = None,
        memory: dict[tuple[str, str], float] | None = None,
    ) -> list[Reading]:
        for key, r in self.readings.items():
            assert r.cpu_usage_seconds is not None
            assert r.cpu_periods is not None and r.cpu_throttled_periods is not None
            r.cpu_usage_seconds += cpu.get(key, 0.0)
            r.cpu_periods += 10
            r.cpu_throttled_periods += round(10 * (throttled or {}).get(key, 0.0))
            held = r.pressure[0].some_seconds if r.pressure else 0.0
            r.pressure = (Pressure("cpu", held + (psi_cpu or {}).get(key, 0.0)),)
            if memory and key in memory:
                assert r.memory_limit_bytes is not None
                r.memory_working_set_bytes = int(memory[key] * r.memory_limit_bytes)
        return list(self.readings.values())


STEADY_CPU = {("checkout-a", "app"): 0.4, ("checkout-a", "proxy"): 0.1, ("checkout-b", "app"): 0.4}


def world() -> tuple[World, Node]:
    w = World(CorrelationSettings())
    w.seed("checkout-a", "checkout-b")
    node = Node()
    for _ in range(300):
        w.run(1)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    return w, node


def test_sidecar_cpu_burst_is_resource_pressure_attributed_to_the_sidecar() -> None:
    w, node = world()
    burst = {("checkout-a", "app"): 0.4, ("checkout-a", "proxy"): 1.0, ("checkout-b", "app"): 0.4}
    for _ in range(40):
        w.run(1, 0.060)
        w.observe(
            node.advance(
                burst,
                throttled={("checkout-a", "proxy"): 0.6},
                psi_cpu={("checkout-a", "app"): 0.3},
            ),
            SIDECARS,
        )
    for _ in range(120):
        w.run(1)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    (episode,) = w.closed()
    assert episode.spike
    assert episode.cause.value == "resource_pressure"
    top = episode.attribution[0]
    assert (top.pod, top.container, top.sidecar) == ("checkout-a", "proxy", True)
    assert "sidecar_cpu" in top.signals and "cpu_throttling" in top.signals
    # Over the burst against 0.2 usually.
    # (the usual share moves a little in the seconds before the spike is detected)
    assert top.steady_pod_cpu_share == pytest.approx(0.2, rel=0.1)
    assert top.pod_cpu_share is not None and top.pod_cpu_share > 0.5
    app = next(a for a in episode.attribution if a.container == "app")
    assert app.pod == "checkout-a" and app.signals == ("cpu_pressure",)
    # Over the burst itself, not averaged with the calm settle time after it.
    assert app.psi_cpu_some == pytest.approx(0.3, abs=0.02)
    assert episode.status is Status.RECOVERED
    assert "strongest pressure: checkout-a/proxy" in episode.summary()


def test_a_closed_episode_keeps_its_answer_not_its_samples() -> None:
    """Up to --max-recent closed episodes are held for /episodes: each keeps its attribution
    and tails, not the container deltas and histogram buckets they were measured from."""
    w, node = world()
    burst = {("checkout-a", "app"): 0.4, ("checkout-a", "proxy"): 1.0, ("checkout-b", "app"): 0.4}
    for _ in range(40):
        w.run(1, 0.060)
        w.observe(node.advance(burst, throttled={("checkout-a", "proxy"): 0.6}), SIDECARS)
    (episode,) = w.c.open_episodes()
    assert len(episode.pressure.deltas) >= 3 * 30  # three containers, a pass a second
    for _ in range(120):
        w.run(1)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    (closed,) = w.closed()
    assert closed is episode and not episode.pressure.deltas
    assert all(impact.during.packed for impact in episode.latency.values())
    answer = episode.as_json()
    assert answer["attribution"][0]["container"] == "proxy"
    assert episode.impact is not None and episode.impact.value != "unknown"
    # Packed histograms read the same (tests/latency): the tails are still there.
    assert answer["latency"]["during"]["samples"] == 80  # 40 s of 2 probes a second
    assert answer["latency"]["during"]["p99"] == pytest.approx(0.060, rel=0.02)


def test_spike_without_pressure_is_unexplained() -> None:
    w, node = world()
    for _ in range(40):
        w.run(1, 0.060)
        w.observe(node.advance(STEADY_CPU), SIDECARS)
    w.run(120)
    (episode,) = w.closed()
    assert episode.cause.value == "unexplained"
    assert episode.attribution == []


def test_memory_near_limit_is_pressure() -> None:
    w, node = world()
    for _ in range(40):
        w.run(1, 0.060)
        w.observe(node.advance(STEADY_CPU, memory={("checkout-b", "app"): 0.97}), SIDECARS)
    w.run(120)
    (episode,) = w.closed()
    assert episode.cause.value == "resource_pressure"
    assert episode.attribution[0].container == "app"
    assert episode.attribution[0].signals == ("memory_near_limit",)


@pytest.mark.parametrize(
    ("slow", "count"),
    [
        (0.060, 2),  # two slow probes in the 30 s window: noise, not an episode
        (0.011, 60),  # 10% slower: under the 2x spike ratio
        (0.0115, 60),
    ],
)
def test_near_misses_open_no_spike(slow: float, count: int) -> None:
    w, _ = world()
    for i in range(60):
        w.run(0.5, slow if i < count else 0.010, every=0.5)
    w.run(60)
    assert w.changes == []


def test_small_absolute_increase_is_not_a_spike() -> None:
    w = World(CorrelationSettings())
    w.seed("checkout-a")
    w.run(300, 0.0002)
    w.run(30, 0.0006)  # 3x, but 0.4 ms
    assert w.changes == []


def test_a_lifecycle_event_during_a_spike_takes_over_the_cause() -> None:
    w, _ = world()
    w.run(30, 0.060)
    assert [ch.kind for ch in w.changes] == [ChangeKind.OPENED]
    w.change("checkout-b", [E.NOT_READY], ready=False)
    w.run(3, 0.060)
    w.change("checkout-b", [E.READY], ready=True)
    w.run(120)
    (episode,) = w.closed()
    assert episode.cause.value == "readiness"
    assert episode.counts["latency/tail_spike"] == 1


def test_spike_episode_stays_open_while_slow() -> None:
    w, _ = world()
    w.run(200, 0.060)
    assert w.closed() == []
    assert w.c.state_of("shop", "checkout") == "disrupted"
    w.run(120)
    (episode,) = w.closed()
    # It lasted as long as the tail was up (closed once calm for settle, at when it fell).
    assert episode.duration == pytest.approx(200, abs=1)
