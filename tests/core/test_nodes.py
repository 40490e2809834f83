"""The agent's own Node (docs/lifecycle.md, *Node events*): what a Node body says about the
node's health, the node events from its changes (exactly once), and what the kubelet says
it evicted a pod for."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.core.events import PodEventKind
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.nodes import NodeEvent, NodeEventKind, NodeSnapshot, NodeTracker
from exporter.core.pods import MalformedObject, eviction_resource, parse_pod
from exporter.simulator import objects as o
from tests.core.kube_schema import SUPPORTED_VERSIONS, validate_pod

N = NodeEventKind
T = o.EPOCH + 3600
NODE = "node-1"


def node(**options: Any) -> dict[str, Any]:
    return o.node(NODE, now=o.EPOCH, **options)


def kinds(events: list[NodeEvent]) -> list[tuple[str, str]]:
    return [(e.kind.value, e.taint or e.reason) for e in events]


# -- the simulator's Nodes are real Nodes --------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        lambda n: n,
        lambda n: o.node_pressure(n, "MemoryPressure", T),
        lambda n: o.node_pressure(o.node_pressure(n, "DiskPressure", T), "DiskPressure", T + 9,
                                  under=False),
        lambda n: o.node_not_ready(n, T),
        lambda n: o.node_not_ready(n, T, unreachable=True),
        lambda n: o.node_ready(o.node_not_ready(n, T), T + 30),
        lambda n: o.cordon(n, T),
        lambda n: o.uncordon(o.cordon(n, T), T + 5),
        lambda n: o.add_taint(n, "example.com/retire", "NoExecute", T, value="soon"),
        lambda n: o.node_heartbeat(n, T),
    ],
    ids=["healthy", "memory", "disk-cleared", "not-ready", "unreachable", "ready-again",
         "cordoned", "uncordoned", "tainted", "heartbeat"],
)  # fmt: skip
def test_the_simulators_nodes_pass_the_real_schema(change: Any) -> None:
    validate_pod(change(o.node(NODE, ip="127.0.9.1", zone="zone-b")), SUPPORTED_VERSIONS)


# -- parse -------------------------------------------------------------------------------------


def test_a_healthy_node_is_ready_with_nothing_wrong() -> None:
    snapshot = NodeSnapshot.parse(node())
    assert snapshot.name == NODE and snapshot.uid
    assert snapshot.is_ready is True
    assert snapshot.pressures == [] and not snapshot.unschedulable and not snapshot.taints


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("MemoryPressure", "KubeletHasInsufficientMemory"),
        ("DiskPressure", "KubeletHasDiskPressure"),
        ("PIDPressure", "KubeletHasInsufficientPID"),
    ],
)
def test_each_pressure_condition_is_read_with_its_time(condition: str, reason: str) -> None:
    snapshot = NodeSnapshot.parse(o.node_pressure(node(), condition, T))
    (held,) = snapshot.pressures
    assert held[0] == condition
    assert (held[1].status, held[1].reason, held[1].since) == ("True", reason, T)


@pytest.mark.parametrize(
    ("unreachable", "status", "reason"),
    [(False, "False", "KubeletNotReady"), (True, "Unknown", "NodeStatusUnknown")],
)
def test_not_ready_and_unreachable(unreachable: bool, status: str, reason: str) -> None:
    snapshot = NodeSnapshot.parse(o.node_not_ready(node(), T, unreachable=unreachable))
    assert snapshot.is_ready is False
    assert snapshot.ready is not None
    assert (snapshot.ready.status, snapshot.ready.reason, snapshot.ready.since) == (
        status,
        reason,
        T,
    )
    # The node controller's not-ready/unreachable taints say the same: no `tainted` of them.
    assert snapshot.taints == frozenset()


def test_cordon_and_no_execute_taints() -> None:
    body = o.add_taint(o.cordon(node(), T), "example.com/retire", "NoExecute", T + 1)
    body = o.add_taint(body, "example.com/gpu", "NoSchedule", T + 2)  # not ours to watch
    snapshot = NodeSnapshot.parse(body)
    assert snapshot.unschedulable
    assert {(t.key, t.effect, t.since) for t in snapshot.taints} == {
        ("example.com/retire", "NoExecute", T + 1)
    }


def test_a_mirror_taint_stands_in_for_a_condition_that_is_not_reported() -> None:
    body = node()
    body["status"]["conditions"] = []
    body = o.add_taint(body, "node.kubernetes.io/memory-pressure", "NoSchedule", T)
    body = o.add_taint(body, "node.kubernetes.io/unreachable", "NoExecute", T)
    snapshot = NodeSnapshot.parse(body)
    assert [ctype for ctype, _ in snapshot.pressures] == ["MemoryPressure"]
    assert snapshot.ready is not None and snapshot.ready.status == "Unknown"
    assert snapshot.ready.since == T  # the NoExecute taint's timeAdded


def test_a_lingering_mirror_taint_does_not_outvote_its_condition() -> None:
    """The node controller lifts its taint a moment after the kubelet's condition cleared."""
    body = o.node_pressure(node(), "MemoryPressure", T)
    body = o.set_node_condition(body, "MemoryPressure", "False", T + 20)
    assert any(t["key"].endswith("memory-pressure") for t in body["spec"]["taints"])
    assert NodeSnapshot.parse(body).pressures == []


def test_absent_parts_are_a_node_nothing_is_known_of() -> None:
    snapshot = NodeSnapshot.parse({"metadata": {"name": NODE}})
    assert snapshot.ready is None and snapshot.pressures == [] and not snapshot.unschedulable


def test_an_unreadable_time_costs_only_the_time() -> None:
    body = o.node_not_ready(node(), T)
    for condition in body["status"]["conditions"]:
        condition["lastTransitionTime"] = "yesterday"
    snapshot = NodeSnapshot.parse(body)
    assert snapshot.ready is not None and snapshot.ready.since is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "not_an_object"),
        ({}, "missing_field"),
        ({"metadata": {"name": ""}}, "missing_field"),
        ({"metadata": {"name": NODE}, "status": []}, "bad_field"),
        ({"metadata": {"name": NODE}, "status": {"conditions": {}}}, "bad_field"),
        ({"metadata": {"name": NODE}, "status": {"conditions": ["Ready"]}}, "bad_field"),
        ({"metadata": {"name": NODE}, "status": {"conditions": [{"type": "Ready"}]}}, "bad_field"),
        ({"metadata": {"name": NODE}, "spec": {"unschedulable": "yes"}}, "bad_field"),
        ({"metadata": {"name": NODE}, "spec": {"taints": "x"}}, "bad_field"),
        ({"metadata": {"name": NODE}, "spec": {"taints": [{"key": "k"}]}}, "bad_field"),
        ({"metadata": {"name": NODE}, "spec": {"taints": [{"effect": "NoExecute"}]}}, "bad_field"),
    ],
)
def test_malformed_nodes_are_refused_with_a_reason(body: Any, reason: str) -> None:
    with pytest.raises(MalformedObject) as caught:
        NodeSnapshot.parse(body)
    assert caught.value.reason == reason


# -- the tracker -----------------------------------------------------------------------------------


def synced(body: dict[str, Any] | None = None) -> NodeTracker:
    tracker = NodeTracker(NODE)
    assert tracker.sync([body or node()], T).events == []
    return tracker


def test_the_first_list_is_silent_even_for_a_node_in_trouble() -> None:
    body = o.cordon(o.node_pressure(o.node_not_ready(node(), T - 50), "MemoryPressure", T - 40), T)
    tracker = NodeTracker(NODE)
    assert tracker.sync([body], T + 5).events == []
    # ... but what is wrong now is known, since when the API says (else since the list).
    assert [(e.kind, e.at) for e in tracker.degraded()] == [
        (N.NOT_READY, T - 50),
        (N.MEMORY_PRESSURE, T - 40),
        (N.CORDONED, T + 5),
    ]


def test_a_time_ahead_of_the_agents_clock_is_the_agents() -> None:
    """Skewed clocks: the control plane's time cannot be later than when the agent saw it."""
    ahead = o.node_pressure(node(), "MemoryPressure", T + 30)
    tracker = NodeTracker(NODE)
    tracker.sync([ahead], T)
    assert [(e.kind, e.at) for e in tracker.degraded()] == [(N.MEMORY_PRESSURE, T)]
    tracker = synced()
    (event,) = tracker.apply("MODIFIED", ahead, T + 1)
    assert event.at == T + 1


def test_each_change_is_one_event_at_when_the_api_says_it_happened() -> None:
    tracker = synced()
    story = [
        (lambda n, t: o.node_pressure(n, "MemoryPressure", t),
         ("memory_pressure", "KubeletHasInsufficientMemory")),
        (lambda n, t: o.node_pressure(n, "MemoryPressure", t, under=False),
         ("pressure_cleared", "MemoryPressure")),
        (o.node_not_ready, ("not_ready", "KubeletNotReady")),
        (o.node_ready, ("ready", "KubeletReady")),
        (o.cordon, ("cordoned", "")),
        (o.uncordon, ("uncordoned", "")),
    ]  # fmt: skip
    body = node()
    seen = T + 1000  # the agent's clock: later than the API's times
    for step, (transition, want) in enumerate(story):
        happened = T + 10 * step
        body = transition(body, happened)
        events = tracker.apply("MODIFIED", body, seen)
        assert kinds(events) == [want], step
        # Conditions carry their lastTransitionTime; a cordon has none: the agent's clock.
        assert events[0].at == (seen if want[0].endswith("cordoned") else happened), step


def test_a_no_execute_taint_is_tainted_then_untainted_with_its_key() -> None:
    tracker = synced()
    tainted = o.add_taint(node(), "node.cloudprovider.kubernetes.io/shutdown", "NoExecute", T)
    (event,) = tracker.apply("MODIFIED", tainted, T + 1)
    assert (event.kind, event.taint, event.reason, event.at) == (
        N.TAINTED, "node.cloudprovider.kubernetes.io/shutdown", "NoExecute", T,
    )  # fmt: skip
    assert event.label_reason == "node.cloudprovider.kubernetes.io/shutdown"
    (event,) = tracker.apply("MODIFIED", node(), T + 9)
    assert (event.kind, event.at) == (N.UNTAINTED, T + 9)


def test_a_custom_taint_key_is_not_a_label_value() -> None:
    tracker = synced()
    (event,) = tracker.apply("MODIFIED", o.add_taint(node(), "team-7/evict", "NoExecute", T), T)
    assert event.taint == "team-7/evict" and event.label_reason == "other"


def test_heartbeats_and_duplicates_report_nothing() -> None:
    tracker = synced()
    under = o.node_pressure(node(), "MemoryPressure", T)
    assert len(tracker.apply("MODIFIED", under, T)) == 1
    assert tracker.apply("MODIFIED", under, T + 1) == []  # re-delivered
    assert tracker.apply("MODIFIED", o.node_heartbeat(under, T + 10), T + 10) == []
    assert tracker.apply("BOOKMARK", {"metadata": {"resourceVersion": "9"}}, T + 11) == []


def test_a_relist_reports_exactly_the_changes_of_the_gap() -> None:
    tracker = synced(o.node_pressure(node(), "DiskPressure", T - 5))
    # During the gap: disk pressure cleared, the node went not ready and was cordoned.
    after = o.node_pressure(o.node_pressure(node(), "DiskPressure", T - 5), "DiskPressure", T + 3,
                            under=False)  # fmt: skip
    after = o.cordon(o.node_not_ready(after, T + 4), T + 6)
    result = tracker.sync([after], T + 30)
    assert sorted(kinds(result.events)) == [
        ("cordoned", ""),
        ("not_ready", "KubeletNotReady"),
        ("pressure_cleared", "DiskPressure"),
    ]
    assert tracker.sync([after], T + 31).events == []  # the same list again: nothing


def test_a_malformed_node_in_a_relist_keeps_what_was_held() -> None:
    tracker = synced(o.cordon(node(), T))
    result = tracker.sync([{"metadata": {"name": NODE}, "spec": {"taints": 1}}], T + 5)
    assert [m.reason for m in result.malformed] == ["bad_field"] and result.events == []
    assert [e.kind for e in tracker.degraded()] == [N.CORDONED]


def test_another_nodes_changes_are_not_this_agents() -> None:
    tracker = synced()
    other = o.node_not_ready(o.node("node-2"), T)
    assert tracker.apply("MODIFIED", other, T) == []
    assert tracker.sync([node(), other], T + 1).events == []


def test_a_node_that_arrives_not_ready_says_so_and_one_that_arrives_ready_says_nothing() -> None:
    tracker = NodeTracker(NODE)
    tracker.sync([], T)
    assert tracker.apply("ADDED", node(), T) == []
    tracker.apply("DELETED", node(), T + 1)
    assert tracker.degraded() == ()
    (event,) = tracker.apply("ADDED", o.node_not_ready(node(), T + 2), T + 2)
    assert event.kind is N.NOT_READY


def test_before_the_first_list_events_are_recorded_silently() -> None:
    tracker = NodeTracker(NODE)
    assert tracker.apply("ADDED", o.cordon(node(), T), T) == []
    assert tracker.sync([o.cordon(node(), T)], T + 1).events == []
    assert [e.kind for e in tracker.degraded()] == [N.CORDONED]


def test_the_log_line_says_what_and_where() -> None:
    event = NodeEvent(N.MEMORY_PRESSURE, T, NODE, "KubeletHasInsufficientMemory")
    assert event.as_log_fields() == {
        "event": "memory_pressure",
        "node": NODE,
        "reason": "KubeletHasInsufficientMemory",
    }
    assert event.bad and event.describe() == "node node-1 under MemoryPressure"
    assert not NodeEvent(N.PRESSURE_CLEARED, T, NODE, "MemoryPressure").bad


# -- what the kubelet evicted a pod for ---------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "resource"),
    [
        ("The node was low on resource: memory. Threshold quantity: 100Mi, available: 62Mi. ",
         "memory"),
        ("The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, "
         "available: 2Gi. Container app was using 5Gi, request is 0, has larger consumption "
         "of ephemeral-storage. ", "ephemeral-storage"),
        ("The node was low on resource: pids. ", "pids"),
        ("The node was low on resource: inodes. ", "inodes"),
        ("Pod ephemeral local storage usage exceeds the total limit of containers 1Gi. ",
         "ephemeral-storage"),
        ('Container app exceeded its local ephemeral storage limit "1Gi". ', "ephemeral-storage"),
        ("Pod was terminated in response to imminent node shutdown.", ""),
        ("Eviction API: evicting", ""),
        ("", ""),
        (None, ""),
        (42, ""),
    ],
)  # fmt: skip
def test_the_eviction_resource_is_read_tolerantly(message: object, resource: str) -> None:
    assert eviction_resource(message) == resource


def test_an_evicted_pod_says_what_for_and_its_event_carries_it() -> None:
    pod = o.deployment_pod("web", node=NODE, seed=1)
    evicted = o.evict_by_kubelet(pod, T, resource="memory", usage={"app": "900Mi"})
    assert parse_pod(evicted).eviction_resource == "memory"
    # Only the DisruptionTarget condition says it (status.message gone): still read.
    del evicted["status"]["message"]
    assert parse_pod(evicted).eviction_resource == "memory"
    tracker = PodLifecycleTracker(NODE)
    tracker.sync([pod], T)
    (event,) = tracker.apply("MODIFIED", evicted, T + 1)
    assert (event.kind, event.reason, event.resource) == (PodEventKind.EVICTED, "Evicted", "memory")
    assert event.as_log_fields()["resource"] == "memory"


def test_a_drained_pod_has_no_eviction_resource() -> None:
    pod = o.deployment_pod("web", node=NODE, seed=1)
    tracker = PodLifecycleTracker(NODE)
    tracker.sync([pod], T)
    drained = o.begin_termination(pod, T + 1, disruption="EvictionByEvictionAPI")
    (event,) = tracker.apply("MODIFIED", drained, T + 1)
    assert (event.kind, event.reason, event.resource) == (
        PodEventKind.TERMINATING, "EvictionByEvictionAPI", "",
    )  # fmt: skip
    assert "resource" not in event.as_log_fields()
