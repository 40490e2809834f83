"""Noisy neighbours: attribution ranks every container of the node over an episode's slow
interval, names a neighbour apart from the Service's own containers, and reports the
node's PSI; what it keeps per container does not grow with the episode's length."""

from __future__ import annotations

import gc

import pytest

from exporter.core.attribution import Checkpoint
from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import Episode
from exporter.core.rules import CorrelationSettings

from .harness import Pressure, Reading, World

SIDECARS = {("shop", "checkout-a"): frozenset({"proxy"})}
CRUNCHER = ("batch", "cruncher-x", "cruncher")
OWN = (
    ("shop", "checkout-a", "app"),
    ("shop", "checkout-a", "proxy"),
    ("shop", "checkout-b", "app"),
)
OTHERS = (("kube-system", "kube-proxy-x", "kube-proxy"), CRUNCHER)
STEADY = {OWN[0]: 0.4, OWN[1]: 0.1, OWN[2]: 0.4, OTHERS[0]: 0.02, CRUNCHER: 0.05}


class Node:
    """Every container of the node and the node's PSI, advanced one second at a time."""

    def __init__(self, containers: tuple[tuple[str, str, str], ...] = OWN + OTHERS) -> None:
        self.readings = {key: Reading(*key) for key in containers}
        self.psi_cpu = 0.0

    def add(self, key: tuple[str, str, str]) -> None:
        self.readings[key] = Reading(*key)

    def advance(
        self,
        cpu: dict[tuple[str, str, str], float],
        *,
        node_psi: float = 0.0,
        psi_cpu: dict[tuple[str, str, str], float] | None = None,
    ) -> list[Reading]:
        for key, r in self.readings.items():
            assert r.cpu_usage_seconds is not None and r.cpu_periods is not None
            r.cpu_usage_seconds += cpu.get(key, STEADY.get(key, 0.01))
            r.cpu_periods += 10
            held = r.pressure[0].some_seconds if r.pressure else 0.0
            r.pressure = (Pressure("cpu", held + (psi_cpu or {}).get(key, 0.0)),)
        self.psi_cpu += node_psi
        return list(self.readings.values())


def second(w: World, node: Node, latency: float = 0.010, **advance: object) -> None:
    """One second: probes and ticks, then a cgroup pass of the whole node."""
    w.run(1, latency)
    readings = node.advance(**advance)  # type: ignore[arg-type]
    node_pressure = (Pressure("cpu", node.psi_cpu), Pressure("memory", 0.0))
    w.c.observe_resources(w.now, readings, SIDECARS, node_pressure)


def world(node: Node | None = None) -> tuple[World, Node]:
    w = World(CorrelationSettings())
    w.seed("checkout-a", "checkout-b")
    node = node or Node()
    for _ in range(300):
        second(w, node, cpu=STEADY)
    return w, node


def only_episode(w: World) -> Episode:
    (episode,) = w.closed()
    return episode


def test_a_cpu_hog_next_door_is_named_as_the_neighbour_not_as_the_services_own() -> None:
    w, node = world()
    hog = {**STEADY, CRUNCHER: 3.1, OWN[0]: 0.8}  # checkout's app is busy too, and stalls
    for _ in range(40):
        second(w, node, 0.060, cpu=hog, node_psi=0.42, psi_cpu={OWN[0]: 0.05})
    for _ in range(120):
        second(w, node, cpu=STEADY)
    episode = only_episode(w)
    assert episode.spike and episode.cause.value == "resource_pressure"
    # The Service's own containers show no signal of their own ...
    assert all(not a.signals for a in episode.attribution)
    assert {(a.namespace, a.pod) for a in episode.attribution} <= {k[:2] for k in OWN}
    # ... the neighbour does: it burned 3.1 cores, 3.05 above its usual 0.05.
    top = episode.neighbours[0]
    assert (top.namespace, top.pod, top.container) == CRUNCHER
    assert top.signals == ("neighbour_cpu",)
    assert top.cpu_cores == pytest.approx(3.1, rel=0.06)
    assert top.cpu_cores_above_steady == pytest.approx(3.05, rel=0.06)
    assert [n for n in episode.neighbours if (n.namespace, n.pod) in {k[:2] for k in OWN}] == []
    assert episode.node_pressure is not None
    assert episode.node_pressure.cpu_some == pytest.approx(0.42, rel=0.06)
    assert episode.node_pressure.memory_some == 0.0 and episode.node_pressure.io_some is None
    doc = episode.as_json()
    assert doc["neighbours"][0]["container"] == "cruncher"
    assert doc["neighbours"][0]["cpu_cores_above_steady"] == pytest.approx(3.05, rel=0.06)
    assert doc["node_pressure"]["cpu_some"] == pytest.approx(0.42, rel=0.06)
    assert episode.summary().endswith(
        "; noisy neighbour batch/cruncher-x/cruncher burned 3.1 cores; node CPU PSI 42%."
    )


def test_the_neighbour_is_named_as_soon_as_the_spike_is_detected() -> None:
    w, node = world()
    hog = {**STEADY, CRUNCHER: 3.0}
    for _ in range(15):
        second(w, node, 0.060, cpu=hog, node_psi=0.4)
    (opened,) = w.c.open_episodes()
    assert opened.cause.value == "resource_pressure"
    assert opened.neighbours[0].container == "cruncher"


def test_a_neighbour_hot_only_in_the_settle_after_the_slow_interval_is_not_named() -> None:
    w, node = world()
    burst = {**STEADY, OWN[1]: 1.0}  # checkout's own sidecar bursts: the spike's cause
    for _ in range(30):
        second(w, node, 0.060, cpu=burst, psi_cpu={OWN[0]: 0.3})
    for _ in range(3):
        second(w, node, cpu=STEADY)
    for _ in range(25):  # latency is back; then the batch job starts burning CPU
        second(w, node, cpu={**STEADY, CRUNCHER: 3.0}, node_psi=0.5)
    for _ in range(90):
        second(w, node, cpu=STEADY)
    episode = only_episode(w)
    assert episode.cause.value == "resource_pressure"
    assert episode.attribution[0].container in {"app", "proxy"}
    assert [n.container for n in episode.neighbours if n.signals] == []
    assert episode.node_pressure is not None and episode.node_pressure.cpu_some == 0.0
    assert "noisy neighbour" not in episode.summary()


def test_a_rollouts_neighbours_are_measured_over_its_slow_samples_only() -> None:
    """A lifecycle episode: from its first to its last slow headline sample, not the settle
    time after it (when the hog started)."""
    w, node = world()
    w.change("checkout-b", [E.NOT_READY], ready=False)
    for _ in range(10):
        second(w, node, 0.060, cpu={**STEADY, CRUNCHER: 2.0}, node_psi=0.3)
    w.change("checkout-b", [E.READY], ready=True)
    for _ in range(20):
        second(w, node, cpu={**STEADY, CRUNCHER: 0.05})
    for _ in range(40):  # settle time, with a louder hog that has nothing to do with it
        second(w, node, cpu={**STEADY, CRUNCHER: 6.0}, node_psi=0.9)
    for _ in range(60):
        second(w, node, cpu=STEADY)
    episode = only_episode(w)
    assert episode.cause.value == "readiness"
    top = episode.neighbours[0]
    assert top.container == "cruncher"
    assert top.cpu_cores == pytest.approx(2.0, rel=0.15)
    assert episode.node_pressure is not None
    assert episode.node_pressure.cpu_some == pytest.approx(0.3, rel=0.15)


def test_a_neighbour_that_started_during_the_spike_counts_all_its_cpu_as_above_steady() -> None:
    w, node = world()
    newcomer = ("batch", "report-7", "report")
    for i in range(40):
        if i == 5:
            node.add(newcomer)
        second(w, node, 0.060, cpu={**STEADY, newcomer: 2.5}, node_psi=0.35)
    for _ in range(120):
        second(w, node, cpu=STEADY)
    episode = only_episode(w)
    top = episode.neighbours[0]
    assert (top.namespace, top.pod, top.container) == newcomer
    assert top.cpu_cores == pytest.approx(2.5, rel=0.06)
    assert top.cpu_cores_above_steady == top.cpu_cores
    assert episode.cause.value == "resource_pressure"


def test_without_node_psi_a_busy_neighbour_proves_nothing() -> None:
    """On cgroup v1 there is no PSI: the neighbour is listed, the spike is unexplained."""
    w = World(CorrelationSettings())
    w.seed("checkout-a", "checkout-b")
    node = Node()
    for _ in range(300):
        w.run(1)
        w.c.observe_resources(w.now, node.advance(STEADY), SIDECARS)
    for _ in range(40):
        w.run(1, 0.060)
        w.c.observe_resources(w.now, node.advance({**STEADY, CRUNCHER: 3.0}), SIDECARS)
    w.run(120)
    episode = only_episode(w)
    assert episode.neighbours[0].container == "cruncher"
    assert episode.node_pressure is None
    assert episode.cause.value == "unexplained"


def live_checkpoints() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Checkpoint))


def test_a_long_episode_on_a_full_node_keeps_two_checkpoints_not_its_history() -> None:
    """330 containers, a readiness episode held open for the whole --recovery-max: the ring
    stays at the spike lookback, the episode holds two checkpoints, and lets them go once
    closed."""
    containers = OWN + tuple(("batch", f"pod-{p}", f"c{k}") for p in range(109) for k in range(3))
    node = Node(containers[:330])
    assert len(node.readings) == 330
    # Checkpoints other tests of the session still hold are not this correlator's.
    elsewhere = live_checkpoints()
    w, node = world(node)
    settings = w.c.settings
    lookback = settings.recovery_window + settings.settle
    bound = lookback + 2  # one pass a second, and the one before the lookback
    w.change("checkout-b", [E.NOT_READY], ready=False)
    counts = []
    for i in range(int(settings.recovery_max) + 60):
        second(w, node, 0.060 if i < 20 else 0.010, cpu=STEADY)
        if i % 120 == 0 and i < settings.recovery_max - 10:
            counts.append(live_checkpoints() - elsewhere)
            (episode,) = w.c.open_episodes()
            assert episode.neighbour_window is not None
    assert max(counts) <= bound + 2, counts
    assert len(w.c.resources.ring) <= bound
    episode = only_episode(w)
    assert episode.neighbour_window is None
    assert live_checkpoints() - elsewhere <= bound
