"""The cause `node` (docs/correlation.md, *Node causes*): the kubelet's evictions for a
resource, and the agent's own node unwell under a Service's endpoints, with a real
NodeTracker fed the simulator's Node objects and an explicit clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import Status
from exporter.core.events import LifecycleEvent, Workload
from exporter.core.events import PodEventKind as P
from exporter.core.nodes import NodeTracker
from exporter.core.rules import CorrelationSettings
from exporter.simulator import objects as o

from .harness import CHECKOUT, NODE, SEARCH, World

RS = "checkout-5d9f8c7b6"
HERE, THERE, NEW = f"{RS}-aaaaa", f"{RS}-bbbbb", f"{RS}-zzzzz"
SLOW = 0.080  # against a 10 ms baseline


class NodeWorld(World):
    """The harness's world, and this agent's Node as the API shows it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.body: dict[str, Any] = o.node(NODE, now=self.now - 3600)
        self.tracker = NodeTracker(NODE)
        self.tracker.sync([self.body], self.now)
        self.c.node_state = self.tracker.degraded

    def node(self, change: Callable[[dict[str, Any], float], dict[str, Any]]) -> None:
        """The Node changes now (one MODIFIED event), as the agent's node watch feeds it."""
        self.body = change(self.body, self.now)
        for event in self.tracker.apply("MODIFIED", self.body, self.now):
            self._feed(self.c.on_node_event(event))

    def kubelet(self, kind: P, pod: str, *, reason: str = "", resource: str = "") -> None:
        """A pod event of this node with the eviction's resource (the harness has none)."""
        self.workloads[("shop", pod)] = Workload("Deployment", "checkout")
        event = LifecycleEvent(
            kind, self.now, "shop", pod, f"uid-{pod}", Workload("Deployment", "checkout"),
            node=NODE, reason=reason, resource=resource,
        )  # fmt: skip
        self._feed(self.c.on_pod_event(event))


def steady(**settings: float) -> NodeWorld:
    w = NodeWorld(CorrelationSettings(**settings))
    w.seed(HERE, THERE)  # both on this node
    w.seed("search-0", service=SEARCH, node="node-2")  # nothing on this node
    w.run(300)
    return w


def replaced_elsewhere(w: NodeWorld) -> None:
    """The lost pod's endpoint goes and its replacement becomes ready on another node."""
    w.change(HERE, [E.REMOVED], removed=True)
    w.change(NEW, [E.ADDED], node="node-2")
    w.run(4, SLOW)
    w.change(NEW, [E.READY], ready=True, node="node-2")


def only_episode(w: NodeWorld) -> Any:
    w.run(120)  # settle, close, recover
    (episode,) = w.closed()
    return episode


def node_events(episode: Any) -> list[tuple[str, str]]:
    return [(e.event, e.reason) for e in episode.evidence if e.source == "node"]


def test_a_node_pressure_eviction_is_cause_node_with_its_resource() -> None:
    w = steady()
    w.node(lambda n, t: o.node_pressure(n, "MemoryPressure", t))
    w.run(2)
    w.kubelet(P.EVICTED, HERE, reason="Evicted", resource="memory")
    replaced_elsewhere(w)
    w.run(5)
    w.node(lambda n, t: o.node_pressure(n, "MemoryPressure", t, under=False))
    episode = only_episode(w)
    assert (episode.service, episode.cause.value, episode.status) == (
        CHECKOUT, "node", Status.RECOVERED,
    )  # fmt: skip
    evicted = next(e for e in episode.evidence if e.event == "evicted")
    assert (evicted.pod, evicted.resource) == (HERE, "memory")
    assert evicted.as_json()["resource"] == "memory"
    # The pressure before the episode joined it when it opened; its clearing joined later.
    assert node_events(episode) == [
        ("memory_pressure", "KubeletHasInsufficientMemory"),
        ("pressure_cleared", "MemoryPressure"),
    ]
    assert episode.counts["node/memory_pressure"] == 1
    summary = episode.summary()
    assert summary.startswith("A node problem of shop/checkout raised p99")
    assert f"node node-1 under MemoryPressure; the kubelet evicted shop/{HERE} for memory" in (
        summary
    )
    # The Service nobody touched saw nothing, though the node was unwell.
    assert all(ch.episode.service == CHECKOUT for ch in w.changes)


def test_an_eviction_the_kubelet_reports_without_a_node_condition_is_still_node() -> None:
    """A pod over its own ephemeral-storage limit, or a message the agent cannot read."""
    w = steady()
    w.kubelet(P.EVICTED, HERE, reason="Evicted")
    replaced_elsewhere(w)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert f"the kubelet evicted shop/{HERE};" in episode.summary()


@pytest.mark.parametrize(
    ("reason", "words"),
    [
        ("TerminationByKubelet", "the kubelet terminated"),
        ("DeletionByTaintManager", "the taint manager deleted"),
    ],
)
def test_a_pod_removed_by_its_node_is_cause_node(reason: str, words: str) -> None:
    w = steady()
    w.kubelet(P.TERMINATING, HERE, reason=reason)
    w.change(HERE, [E.TERMINATING], ready=False, terminating=True)
    w.run(3, SLOW)
    replaced_elsewhere(w)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert f"{words} shop/{HERE}" in episode.summary()


def test_a_drain_stays_an_eviction_though_the_node_is_cordoned() -> None:
    """kubectl drain cordons, then evicts through the Eviction API: the eviction is the
    dominant cause; the cordon is evidence."""
    w = steady()
    w.node(o.cordon)
    w.run(1)
    w.kubelet(P.TERMINATING, HERE, reason="EvictionByEvictionAPI")
    w.change(HERE, [E.TERMINATING], ready=False, terminating=True)
    w.run(3, SLOW)
    replaced_elsewhere(w)
    episode = only_episode(w)
    assert episode.cause.value == "eviction"
    assert node_events(episode) == [("cordoned", "")]


def test_a_node_not_ready_before_its_endpoints_go_not_ready_makes_the_episode_node() -> None:
    """The node controller marks the endpoints of a NotReady node not ready ~40 s later: the
    episode opens then, and the node's state joins it."""
    w = steady()
    w.node(o.node_not_ready)
    w.run(40)
    assert w.changes == []  # the node alone opened nothing
    w.change(HERE, [E.NOT_READY], ready=False)
    w.change(THERE, [E.NOT_READY], ready=False)
    w.run(10, SLOW)
    w.node(o.node_ready)
    w.change(HERE, [E.READY], ready=True)
    w.change(THERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert node_events(episode) == [("not_ready", "KubeletNotReady"), ("ready", "KubeletReady")]
    assert "node node-1 not ready (KubeletNotReady)" in episode.summary()


def test_a_bad_node_event_within_settle_before_the_episode_joins_it() -> None:
    w = steady(settle=30.0)
    w.node(lambda n, t: o.node_pressure(n, "PIDPressure", t))
    w.run(5)
    w.node(lambda n, t: o.node_pressure(n, "PIDPressure", t, under=False))
    w.run(10)  # cleared 10 s before, pressured 15 s before the readiness change
    w.change(HERE, [E.NOT_READY], ready=False)
    w.run(5, SLOW)
    w.change(HERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert node_events(episode) == [("pid_pressure", "KubeletHasInsufficientPID")]


def test_a_node_event_long_before_the_episode_is_not_its_cause() -> None:
    w = steady(settle=30.0)
    w.node(lambda n, t: o.node_pressure(n, "DiskPressure", t))
    w.run(5)
    w.node(lambda n, t: o.node_pressure(n, "DiskPressure", t, under=False))
    w.run(60)
    w.change(HERE, [E.NOT_READY], ready=False)
    w.run(5, SLOW)
    w.change(HERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "readiness"
    assert node_events(episode) == []


def test_a_node_going_bad_during_an_episode_makes_it_node() -> None:
    w = steady()
    w.change(HERE, [E.NOT_READY], ready=False)
    w.run(3, SLOW)
    w.node(lambda n, t: o.add_taint(n, "node.kubernetes.io/out-of-service", "NoExecute", t))
    w.run(3, SLOW)
    w.change(HERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert node_events(episode) == [("tainted", "NoExecute")]
    assert "node node-1 tainted node.kubernetes.io/out-of-service:NoExecute" in episode.summary()


def test_a_cordon_alone_opens_nothing() -> None:
    w = steady()
    w.node(o.cordon)
    w.run(120)
    w.node(o.uncordon)
    w.run(60)
    assert w.changes == []


def test_a_service_with_nothing_on_this_node_is_not_caused_by_it() -> None:
    """search's endpoint is on node-2: this node's pressure is no cause of its episode."""
    w = steady()
    w.node(lambda n, t: o.node_pressure(n, "MemoryPressure", t))
    w.change("search-0", [E.NOT_READY], service=SEARCH, ready=False, node="node-2")
    w.run(5, {SEARCH: SLOW})
    w.change("search-0", [E.READY], service=SEARCH, ready=True, node="node-2")
    w.run(120)
    (episode,) = w.closed()
    assert (episode.service, episode.cause.value) == (SEARCH, "readiness")
    assert node_events(episode) == []


def test_the_node_state_of_the_agents_first_list_counts() -> None:
    """An agent that starts on a node already cordoned and under pressure (its first list
    is silent) still knows: an episode opening then is `node`."""
    w = steady()
    w.body = o.node_pressure(o.cordon(w.body, w.now - 100), "MemoryPressure", w.now - 90)
    w.tracker = NodeTracker(NODE)
    w.tracker.sync([w.body], w.now)
    w.c.node_state = w.tracker.degraded
    w.change(HERE, [E.NOT_READY], ready=False)
    w.run(5, SLOW)
    w.change(HERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "node"
    assert sorted(node_events(episode)) == [
        ("cordoned", ""),
        ("memory_pressure", "KubeletHasInsufficientMemory"),
    ]


def test_a_cordon_standing_long_before_the_episode_is_not_its_cause() -> None:
    """A node cordoned long ago (a pool kept for maintenance, a permanent tolerated taint)
    did not cause a readiness flap today: it is no evidence, and the cause stays readiness.
    Conditions that still hold (NotReady, pressure) would count however old."""
    w = steady(settle=30.0)
    w.node(o.cordon)
    w.run(300)
    w.change(HERE, [E.NOT_READY], ready=False)
    w.run(5, SLOW)
    w.change(HERE, [E.READY], ready=True)
    episode = only_episode(w)
    assert episode.cause.value == "readiness"
    assert node_events(episode) == []
