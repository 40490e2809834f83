"""PodLifecycleTracker: node-local lifecycle events from lists and watch events
(docs/lifecycle.md)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.pods import MalformedObject
from exporter.simulator import objects as o
from tests.core.kube_schema import EDGE_VERSIONS, validate_pod

Pod = dict[str, Any]
E = PodEventKind
NODE = "node-1"
T0 = o.EPOCH
T = T0 + 1000  # "now" of the tests, well after the pods were created


class Agent:
    """A tracker fed only with objects that pass the real Kubernetes schema."""

    def __init__(self, node: str = NODE) -> None:
        self.tracker = PodLifecycleTracker(node)

    def sync(self, pods: Sequence[Pod], now: float = T) -> list[LifecycleEvent]:
        for pod in pods:
            validate_pod(pod)
        result = self.tracker.sync(pods, now)
        assert result.malformed == []
        return result.events

    def apply(self, event_type: str, pod: Pod, now: float = T) -> list[LifecycleEvent]:
        validate_pod(pod)
        return self.tracker.apply(event_type, pod, now)


@pytest.fixture
def agent() -> Agent:
    return Agent()


def brief(events: Sequence[LifecycleEvent]) -> list[tuple[str, str, str, int]]:
    """(event, reason, container, count) of each event, in order."""
    return [(e.kind.value, e.reason, e.container, e.count) for e in events]


def api(**kw: Any) -> Pod:
    kw.setdefault("node", NODE)
    return o.deployment_pod("api", **kw)


def with_sidecar(**kw: Any) -> Pod:
    return api(sidecars=["proxy"], **kw)


def _without_last_reason(pod: Pod) -> Pod:
    pod = copy.deepcopy(pod)
    del pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["reason"]
    return pod


# -- the first list -----------------------------------------------------------------------------


def a_busy_node() -> list[Pod]:
    """Pods in every state a node can hold when the agent starts."""
    looping = o.crash_loop_back_off(
        o.restart_container(api(seed=2), "app", T0 + 50, reason="OOMKilled"), "app", T0 + 60
    )
    return [
        api(seed=1),
        looping,
        o.begin_termination(api(seed=3), T0 + 70, disruption="EvictionByEvictionAPI"),
        o.evict_by_kubelet(api(seed=4), T0 + 80),
        o.complete(o.job_pod("backup", node=NODE), T0 + 90),
        api(seed=5, state="creating"),
        o.statefulset_pod("db", 0, node=NODE),
        o.daemonset_pod("node-agent", node=NODE),
        o.bare_pod("debug", node=NODE),
    ]


def test_the_first_list_is_silent(agent: Agent) -> None:
    synced_before = agent.tracker.synced
    assert agent.sync(a_busy_node()) == []
    assert (synced_before, agent.tracker.synced) == (False, True)
    assert {p.name for p in agent.tracker.pods()} == {p["metadata"]["name"] for p in a_busy_node()}


def test_an_agent_restart_never_produces_a_burst(agent: Agent) -> None:
    agent.sync(a_busy_node())
    restarted = Agent()
    assert restarted.sync(a_busy_node(), now=T + 5000) == []
    # ... and the second agent then reports only what happens next.
    looping = a_busy_node()[1]
    recovered = o.restart_container(looping, "app", T + 5001)
    assert brief(restarted.apply("MODIFIED", recovered, T + 5001)) == [
        ("container_restart", "Error", "app", 1)
    ]


def test_watch_events_before_the_first_list_are_recorded_silently(agent: Agent) -> None:
    pod = api()
    assert agent.apply("ADDED", pod) == []
    assert agent.apply("MODIFIED", o.mark_not_ready(pod, T)) == []
    assert agent.apply("DELETED", api(seed=9)) == []
    assert not agent.tracker.synced
    assert agent.sync([pod]) == []
    assert agent.tracker.synced


# -- each event from one watch event ------------------------------------------------------------


def _transition_cases() -> list[Any]:
    ready = api()
    sidecar = with_sidecar()
    looping = o.crash_loop_back_off(ready, "app", T0 + 100)
    cases: list[Any] = [
        (
            "ready",
            api(state="running"),
            o.mark_ready(api(state="running"), T),
            [("ready", "", "", 1)],
        ),
        ("not_ready", ready, o.mark_not_ready(ready, T), [("not_ready", "", "", 1)]),
        ("ready again", o.mark_not_ready(ready, T0 + 100), ready, [("ready", "", "", 1)]),
        *[
            (
                f"restart {reason}",
                ready,
                o.restart_container(ready, "app", T, reason=reason),
                # Back from a restart, the app is not ready until its probe passes.
                [("container_restart", reason, "app", 1), ("not_ready", "", "", 1)],
            )
            for reason in ("OOMKilled", "Error", "Completed")
        ],
        (
            "restart of a native sidecar",
            sidecar,
            o.restart_container(sidecar, "proxy", T, reason="OOMKilled"),
            [("container_restart", "OOMKilled", "proxy", 1)],
        ),
        (
            "restart without a reason",
            ready,
            _without_last_reason(o.restart_container(ready, "app", T)),
            [("container_restart", "Unknown", "app", 1), ("not_ready", "", "", 1)],
        ),
        (
            "crash loop",
            ready,
            looping,
            [("crash_loop", "Error", "app", 1), ("not_ready", "", "", 1)],
        ),
        (
            "crash loop after OOM",
            ready,
            o.crash_loop_back_off(ready, "app", T, reason="OOMKilled"),
            [("crash_loop", "OOMKilled", "app", 1), ("not_ready", "", "", 1)],
        ),
        (
            "restart at the end of a back-off",
            looping,
            o.restart_container(looping, "app", T),
            [("container_restart", "Error", "app", 1)],
        ),
        (
            "back-off again after a failed restart",
            o.restart_container(looping, "app", T0 + 200),
            o.crash_loop_back_off(o.restart_container(looping, "app", T0 + 200), "app", T),
            [("crash_loop", "Error", "app", 1)],
        ),
        ("terminating", ready, o.begin_termination(ready, T), [("terminating", "Deleted", "", 1)]),
        *[
            (
                f"terminating {reason}",
                ready,
                o.begin_termination(ready, T, disruption=reason),
                [("terminating", reason, "", 1)],
            )
            for reason in o.DISRUPTION_MESSAGES
        ],
        (
            # The condition comes first; the deletion is the event.
            "disruption target alone",
            ready,
            o.disruption_target(ready, "EvictionByEvictionAPI", T),
            [],
        ),
        (
            "not ready while terminating",
            o.begin_termination(ready, T0 + 100),
            o.mark_not_ready(o.begin_termination(ready, T0 + 100), T),
            [],
        ),
        (
            "kubelet eviction",
            ready,
            o.evict_by_kubelet(ready, T, usage={"app": "900Mi"}),
            [("evicted", "Evicted", "", 1)],
        ),
        (
            "eviction of a deleting pod",
            o.begin_termination(ready, T0 + 100),
            o.evict_by_kubelet(o.begin_termination(ready, T0 + 100), T),
            [("evicted", "Evicted", "", 1)],
        ),
        (
            "job completes",
            o.job_pod("backup", node=NODE),
            o.complete(o.job_pod("backup", node=NODE), T),
            [],
        ),
        ("nothing changed", ready, copy.deepcopy(ready), []),
    ]
    return [
        pytest.param(before, after, expected, id=name) for name, before, after, expected in cases
    ]


@pytest.mark.parametrize(("before", "after", "expected"), _transition_cases())
def test_one_change_one_event(
    agent: Agent, before: Pod, after: Pod, expected: list[tuple[str, str, str, int]]
) -> None:
    agent.sync([before], now=T - 1)
    events = agent.apply("MODIFIED", after)
    assert brief(events) == expected
    # Delivered again (a re-list, a duplicate watch event): nothing new.
    assert agent.apply("MODIFIED", after) == []
    assert agent.sync([after]) == []


def test_events_carry_the_pod_identity(agent: Agent) -> None:
    pod = o.statefulset_pod("db", 1, namespace="data", node=NODE, revision=3)
    agent.sync([pod], now=T - 1)
    (event,) = agent.apply("MODIFIED", o.mark_not_ready(pod, T), now=T)
    assert event == LifecycleEvent(
        kind=E.NOT_READY,
        at=T,
        namespace="data",
        pod="db-1",
        uid=pod["metadata"]["uid"],
        workload=Workload("StatefulSet", "db"),
        node=NODE,
        revision=f"db-{o.revision_hash('db', 3)}",
    )


# -- arrivals and durations ---------------------------------------------------------------------


def test_startup_time_runs_from_scheduled_to_the_first_ready(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(state="scheduled", created=T)
    assert brief(agent.apply("ADDED", pod, T + 1)) == [("scheduled", "", "", 1)]
    pod = o.containers_creating(pod, T + 2)
    assert agent.apply("MODIFIED", pod, T + 2) == []
    pod = o.containers_running(pod, T + 5)
    assert agent.apply("MODIFIED", pod, T + 5) == []
    pod = o.mark_ready(pod, T + 13.5)
    (ready,) = agent.apply("MODIFIED", pod, T + 13.7)
    # The API's times (whole seconds): PodScheduled at T, Ready at T + 13.
    assert ready.kind is E.READY and ready.duration_seconds == 13
    # A later flap is readiness, not startup.
    agent.apply("MODIFIED", o.mark_not_ready(pod, T + 20), T + 20)
    (again,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 30), T + 30)
    assert again.kind is E.READY and again.duration_seconds is None


def test_a_pod_arriving_ready_has_its_startup_time_from_the_api(agent: Agent) -> None:
    agent.sync([], now=T)
    events = agent.apply("ADDED", api(created=T), T + 9)  # scheduled at T, Ready at T + 5
    assert brief(events) == [("scheduled", "", "", 1), ("ready", "", "", 1)]
    assert events[1].duration_seconds == 5


def test_a_ready_pod_of_the_first_list_never_has_a_startup_time(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    agent.apply("MODIFIED", o.mark_not_ready(pod, T + 1), T + 1)
    (ready,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 3), T + 3)
    assert ready.duration_seconds is None


def test_termination_time_runs_from_terminating_to_deleted(agent: Agent) -> None:
    pod = api()  # from the first list: its termination is still measured
    agent.sync([pod], now=T)
    deleting = o.begin_termination(pod, T + 10)
    assert brief(agent.apply("MODIFIED", deleting, T + 10)) == [("terminating", "Deleted", "", 1)]
    (deleted,) = agent.apply("DELETED", deleting, T + 41)
    assert deleted.kind is E.DELETED and deleted.duration_seconds == 31


def test_a_pod_first_seen_terminating_still_has_a_termination_time(agent: Agent) -> None:
    deleting = o.begin_termination(api(), T0 + 100)
    agent.sync([deleting, api(seed=1)], now=T)
    (first,) = agent.apply("DELETED", deleting, T + 5)
    assert first.duration_seconds == T + 5 - (T0 + 100)  # from the request, in the object
    (second,) = agent.apply("DELETED", api(seed=1), T + 6)
    assert second.duration_seconds is None  # never terminating: removed at once


def test_a_pod_arriving_with_history_reports_it(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = o.restart_container(api(created=T), "app", T + 5, reason="OOMKilled")
    pod = o.restart_container(pod, "app", T + 6, reason="OOMKilled")
    pod = o.begin_termination(pod, T + 7, disruption="DeletionByTaintManager")
    events = agent.apply("ADDED", pod, T + 8)
    assert brief(events) == [
        ("scheduled", "", "", 1),
        ("container_restart", "OOMKilled", "app", 2),
        ("terminating", "DeletionByTaintManager", "", 1),
    ]
    (deleted,) = agent.apply("DELETED", pod, T + 20)
    assert deleted.duration_seconds == 13  # arrived terminating: requested at T + 7


def test_modified_of_an_unknown_pod_is_an_arrival(agent: Agent) -> None:
    agent.sync([], now=T)
    assert brief(agent.apply("MODIFIED", api(state="scheduled"))) == [("scheduled", "", "", 1)]
    assert agent.apply("ADDED", api(state="scheduled")) == []


def test_deletions_are_reported_once(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    assert brief(agent.apply("DELETED", pod)) == [("deleted", "", "", 1)]
    assert agent.apply("DELETED", pod) == []
    assert agent.sync([]) == []
    # A late re-delivery of the deleted pod is not a new pod.
    assert agent.apply("MODIFIED", pod) == []
    assert agent.sync([pod]) == []
    assert agent.tracker.pods() == ()
    assert agent.apply("DELETED", api(seed=77)) == []  # never seen


# -- relist after a gap -------------------------------------------------------------------------


def test_a_relist_reports_exactly_the_changes_of_the_gap(agent: Agent) -> None:
    restarted, deleted, steady = api(seed=1), api(seed=2), api(seed=3)
    agent.sync([restarted, deleted, steady], now=T)

    # During the gap: two OOM kills of one container, one pod deleted, one pod arrived.
    twice = o.restart_container(restarted, "app", T + 10, reason="OOMKilled")
    twice = o.mark_ready(o.restart_container(twice, "app", T + 20, reason="OOMKilled"), T + 25)
    arrived = o.mark_not_ready(api(seed=4, created=T + 30), T + 40)
    relisted = [twice, steady, arrived]

    events = agent.sync(relisted, now=T + 60)
    assert sorted(brief(events)) == sorted(
        [
            ("container_restart", "OOMKilled", "app", 2),
            ("deleted", "", "", 1),
            ("scheduled", "", "", 1),
        ]
    )
    by_kind = {e.kind: e for e in events}
    assert by_kind[E.CONTAINER_RESTART].uid == restarted["metadata"]["uid"]
    assert by_kind[E.DELETED].uid == deleted["metadata"]["uid"]
    assert by_kind[E.SCHEDULED].uid == arrived["metadata"]["uid"]
    assert all(e.at == T + 60 for e in events)
    # The same list again, or the same objects by watch: nothing more.
    assert agent.sync(relisted, now=T + 70) == []
    for pod in relisted:
        assert agent.apply("MODIFIED", pod, T + 80) == []


def test_a_relist_orders_arrivals_by_creation(agent: Agent) -> None:
    agent.sync([], now=T)
    pods = [api(seed=i, created=T + i) for i in (2, 3, 1)]
    events = agent.sync(pods, now=T + 10)
    scheduled = [e.uid for e in events if e.kind is E.SCHEDULED]
    assert scheduled == [pods[i]["metadata"]["uid"] for i in (2, 0, 1)]


def test_a_malformed_object_in_a_relist_is_not_a_deletion() -> None:
    tracker = PodLifecycleTracker(NODE)
    kept, other = api(seed=1), api(seed=2)
    tracker.sync([kept, other], T)

    broken = copy.deepcopy(o.restart_container(kept, "app", T + 1))
    broken["status"]["containerStatuses"][0]["restartCount"] = "1"
    result = tracker.sync([broken, other, {"kind": "Pod"}, "junk"], T + 2)  # type: ignore[list-item]
    assert result.events == []
    assert [m.reason for m in result.malformed] == ["bad_field", "missing_field", "not_an_object"]
    assert "restartCount" in str(result.malformed[0])
    assert {p.uid for p in tracker.pods()} == {kept["metadata"]["uid"], other["metadata"]["uid"]}
    # Once readable again, what changed meanwhile is reported.
    fixed = o.restart_container(kept, "app", T + 1)
    assert brief(tracker.sync([fixed, other], T + 3).events) == [
        ("container_restart", "Error", "app", 1),
        ("not_ready", "", "", 1),
    ]


def test_a_malformed_new_pod_in_a_relist_is_reported_and_not_tracked() -> None:
    tracker = PodLifecycleTracker(NODE)
    tracker.sync([], T)
    broken = copy.deepcopy(api())
    broken["status"]["conditions"] = "Ready"
    result = tracker.sync([broken], T + 1)
    assert result.events == []
    assert [m.reason for m in result.malformed] == ["bad_field"]
    assert tracker.pods() == ()


# -- rollouts -----------------------------------------------------------------------------------


def test_a_new_revision_arriving_is_a_rollout(agent: Agent) -> None:
    agent.sync([api(seed=1), api(seed=2)], now=T)
    first = agent.apply("ADDED", api(seed=3, revision=2, state="scheduled"), T + 1)
    assert brief(first) == [("scheduled", "", "", 1), ("rollout", "", "", 1)]
    assert first[1].revision == o.revision_hash("api", 2)
    assert first[1].workload == Workload("Deployment", "api")
    # More pods of the new revision: the rollout was already reported.
    assert brief(agent.apply("ADDED", api(seed=4, revision=2, state="scheduled"), T + 2)) == [
        ("scheduled", "", "", 1)
    ]
    # Rolling back is a rollout too.
    back = agent.apply("ADDED", api(seed=5, revision=1, state="scheduled"), T + 3)
    assert [e.kind for e in back] == [E.SCHEDULED, E.ROLLOUT]


def test_a_scale_up_of_the_same_revision_is_no_rollout(agent: Agent) -> None:
    agent.sync([api(seed=1)], now=T)
    assert brief(agent.apply("ADDED", api(seed=2, state="scheduled"))) == [("scheduled", "", "", 1)]


def test_the_first_pod_of_a_workload_is_no_rollout(agent: Agent) -> None:
    agent.sync([api(seed=1)], now=T)
    new = o.deployment_pod("web", revision=7, node=NODE, state="scheduled")
    assert brief(agent.apply("ADDED", new)) == [("scheduled", "", "", 1)]


def test_the_revision_is_remembered_when_the_last_pod_leaves(agent: Agent) -> None:
    # A one-replica Deployment on this node: the old pod goes before the new one comes.
    old = api(seed=1)
    agent.sync([old], now=T)
    agent.apply("DELETED", old, T + 1)
    events = agent.apply("ADDED", api(seed=2, revision=2, state="scheduled"), T + 2)
    assert [e.kind for e in events] == [E.SCHEDULED, E.ROLLOUT]


def test_the_first_list_remembers_the_newest_revision(agent: Agent) -> None:
    # Caught in the middle of a rollout: the newest pod tells where it is going.
    agent.sync([api(seed=1, revision=1, created=T0), api(seed=2, revision=2, created=T0 + 60)], T)
    assert agent.tracker.revision_of("default", Workload("Deployment", "api")) == o.revision_hash(
        "api", 2
    )
    assert [e.kind for e in agent.apply("ADDED", api(seed=3, revision=2, state="scheduled"))] == [
        E.SCHEDULED
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda seed, revision: o.statefulset_pod(
            "db", 0, revision=revision, node=NODE, created=T0 + seed
        ),
        lambda seed, revision: o.daemonset_pod(
            "node-agent", revision=revision, node=NODE, seed=seed
        ),
    ],
    ids=["statefulset", "daemonset"],
)
def test_controller_revision_rollouts(agent: Agent, make: Callable[[int, int], Pod]) -> None:
    old = make(1, 1)
    agent.sync([old], now=T)
    agent.apply("DELETED", old, T + 1)
    events = agent.apply("ADDED", make(2, 2), T + 2)
    assert [e.kind for e in events] == [E.SCHEDULED, E.ROLLOUT, E.READY]


def test_jobs_and_bare_pods_never_roll_out(agent: Agent) -> None:
    agent.sync([o.job_pod("backup", node=NODE, seed=1), o.bare_pod("debug", node=NODE)], now=T)
    job = agent.apply("ADDED", o.job_pod("backup", node=NODE, seed=2, state="scheduled"))
    assert [e.kind for e in job] == [E.SCHEDULED]
    assert job[0].workload == Workload("Job", "backup") and job[0].revision == ""


def test_a_rollout_found_by_a_relist(agent: Agent) -> None:
    agent.sync([api(seed=1)], now=T)
    new = [api(seed=2, revision=2, created=T + 1), api(seed=3, revision=2, created=T + 2)]
    events = agent.sync([api(seed=1), *new], now=T + 5)
    assert Counter(e.kind for e in events) == {E.SCHEDULED: 2, E.ROLLOUT: 1, E.READY: 2}


# -- this node only -----------------------------------------------------------------------------


def test_pods_of_other_nodes_are_not_ours(agent: Agent) -> None:
    elsewhere = api(seed=1, node="node-2")
    assert agent.sync([elsewhere, api(seed=2)]) == []
    assert [p.node for p in agent.tracker.pods()] == [NODE]
    assert agent.apply("ADDED", api(seed=3, node="node-2")) == []
    assert agent.apply("DELETED", elsewhere) == []


def test_a_held_pod_showing_another_node_has_left_this_view(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    moved = copy.deepcopy(pod)
    moved["spec"]["nodeName"] = "node-2"
    assert brief(agent.apply("MODIFIED", moved)) == [("deleted", "", "", 1)]
    assert agent.tracker.pods() == ()


def test_without_a_node_every_pod_is_tracked() -> None:
    agent = Agent(node="")
    agent.sync([api(seed=1, node="node-2"), api(seed=2, node="node-3")])
    assert len(agent.tracker.pods()) == 2


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "body", "reason"),
    [
        ("ADDED", {"kind": "Pod"}, "missing_field"),
        (
            "MODIFIED",
            {"metadata": {"uid": "u", "name": "n", "namespace": "d"}, "status": []},
            "bad_field",
        ),
        ("DELETED", {"metadata": {"name": "n"}}, "missing_field"),
        ("ERROR", {"kind": "Status", "code": 410}, "bad_event_type"),
    ],
)
def test_an_unusable_watch_event_raises_and_changes_nothing(
    event_type: str, body: Mapping[str, Any], reason: str
) -> None:
    tracker = PodLifecycleTracker(NODE)
    pod = api()
    tracker.sync([pod], T)
    with pytest.raises(MalformedObject) as exc:
        tracker.apply(event_type, body, T + 1)
    assert exc.value.reason == reason
    assert [p.uid for p in tracker.pods()] == [pod["metadata"]["uid"]]
    assert brief(tracker.apply("MODIFIED", o.mark_not_ready(pod, T + 2), T + 2)) == [
        ("not_ready", "", "", 1)
    ]


def test_a_deleted_event_needs_only_the_uid() -> None:
    tracker = PodLifecycleTracker(NODE)
    pod = api()
    tracker.sync([pod], T)
    assert [
        e.kind for e in tracker.apply("DELETED", {"metadata": {"uid": pod["metadata"]["uid"]}}, T)
    ] == [E.DELETED]


def test_bookmarks_carry_no_pod() -> None:
    tracker = PodLifecycleTracker(NODE)
    tracker.sync([], T)
    assert tracker.apply("BOOKMARK", {"kind": "Pod", "metadata": {"resourceVersion": "9"}}, T) == []


def test_an_unknown_container_state_does_not_crash(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    odd = copy.deepcopy(pod)
    odd["status"]["containerStatuses"][0]["state"] = {"hibernating": {}}
    assert agent.tracker.apply("MODIFIED", odd, T + 1) == []


# -- memory ---------------------------------------------------------------------------------------


def test_memory_stays_bounded_under_churn() -> None:
    tracker = PodLifecycleTracker(NODE, max_workloads=50, max_tombstones=100)
    resident = api(seed=0)
    tracker.sync([resident], T)
    now = T
    for i in range(2000):
        now += 1
        pod = o.deployment_pod(f"batch-{i}", node=NODE, created=now, state="scheduled")
        tracker.apply("ADDED", pod, now)
        tracker.apply("DELETED", pod, now)
    assert [p.uid for p in tracker.pods()] == [resident["metadata"]["uid"]]
    assert len(tracker._revisions) <= 50
    assert len(tracker._tombstones) == len(tracker._tombstone_set) == 100
    # The workload that still has a pod here keeps its revision; the oldest others are gone.
    assert tracker.revision_of("default", Workload("Deployment", "api")) is not None
    assert tracker.revision_of("default", Workload("Deployment", "batch-0")) is None
    assert tracker.revision_of("default", Workload("Deployment", "batch-1999")) is not None


def test_reset_starts_over_silently(agent: Agent) -> None:
    agent.sync([api(seed=1)], now=T)
    agent.tracker.reset()
    assert not agent.tracker.synced and agent.tracker.pods() == ()
    assert agent.sync([api(seed=2)], now=T + 1) == []


# -- watch and relist agree (property) ------------------------------------------------------------


@dataclass
class Step:
    now: float
    event_type: str
    body: Pod
    world: list[Pod]  # the full list right after this step


@dataclass
class Trace:
    initial: list[Pod]
    steps: list[Step] = field(default_factory=list)


def _app(pod: Pod) -> Pod:
    (status,) = pod["status"].get("containerStatuses", [{}])
    return dict(status)


def _change(pod: Pod, op: str, variant: int, now: float) -> Pod | None:
    """`op` applied to `pod` if it makes sense in the pod's state, else None."""
    status = pod["status"]
    state = _app(pod).get("state", {})
    deleting = "deletionTimestamp" in pod["metadata"]
    terminal = status["phase"] in ("Succeeded", "Failed")
    reason = ("OOMKilled", "Error", "Completed")[variant % 3]
    if terminal:
        return None
    if op == "start" and "podIP" not in status:
        return o.containers_running(pod, now)
    if op == "ready" and "running" in state:
        return o.mark_ready(pod, now)
    if op == "unready" and "running" in state:
        return o.mark_not_ready(pod, now)
    if op == "restart" and "running" in state:
        return o.restart_container(pod, "app", now, reason=reason)
    if op == "crash" and "running" in state:
        return o.crash_loop_back_off(pod, "app", now, reason=reason)
    if op == "recover" and state.get("waiting", {}).get("reason") == "CrashLoopBackOff":
        return o.restart_container(pod, "app", now)
    if op == "terminate" and not deleting:
        disruption = (None, "EvictionByEvictionAPI", "PreemptionByScheduler")[variant % 3]
        return o.begin_termination(pod, now, disruption=disruption)
    if op == "evict" and "running" in state:
        return o.evict_by_kubelet(pod, now)
    return None


OPS = (
    "create",
    "start",
    "ready",
    "unready",
    "restart",
    "crash",
    "recover",
    "terminate",
    "evict",
    "delete",
)


def build_trace(initial: int, ops: Sequence[tuple[int, int, int]]) -> Trace:
    world: dict[str, Pod] = {}
    for i in range(initial):
        pod = api(seed=f"initial-{i}", revision=1 + i % 2, created=T0 + i)
        world[pod["metadata"]["uid"]] = pod
    trace = Trace(initial=list(world.values()))
    now = T
    for index, (op_index, pick, variant) in enumerate(ops):
        now += 1 + variant % 4
        op = OPS[op_index % len(OPS)]
        if op == "create":
            state: o.PodState = ("scheduled", "running", "ready")[variant % 3]
            name = ("api", "web")[pick % 2]
            pod = o.deployment_pod(
                name, node=NODE, seed=index, revision=1 + variant % 2, created=now, state=state
            )
            world[pod["metadata"]["uid"]] = pod
            trace.steps.append(Step(now, "ADDED", pod, list(world.values())))
            continue
        if not world:
            continue
        uid = list(world)[pick % len(world)]
        if op == "delete":
            gone = world.pop(uid)
            trace.steps.append(Step(now, "DELETED", gone, list(world.values())))
            continue
        changed = _change(world[uid], op, variant, now)
        if changed is not None:
            world[uid] = changed
            trace.steps.append(Step(now, "MODIFIED", changed, list(world.values())))
    return trace


def by_watch(trace: Trace, how: Sequence[int] = ()) -> list[LifecycleEvent]:
    """Events of the trace; step i is delivered by watch (0), relist (1), twice by watch (2)
    or relisted twice (3) as `how[i]` says (watch when absent)."""
    tracker = PodLifecycleTracker(NODE)
    assert tracker.sync(trace.initial, T).events == []
    events: list[LifecycleEvent] = []
    for index, step in enumerate(trace.steps):
        mode = how[index] if index < len(how) else 0
        for _ in range(2 if mode >= 2 else 1):
            if mode in (1, 3):
                events += tracker.sync(step.world, step.now).events
            else:
                events += tracker.apply(step.event_type, step.body, step.now)
    return events


def test_the_objects_of_a_trace_are_valid_pods() -> None:
    # Every op on every pod, a few times over: the generator makes only real Pods.
    ops = [(op, pick, variant) for variant in range(6) for op in range(len(OPS)) for pick in (0, 1)]
    trace = build_trace(2, ops)
    assert {step.event_type for step in trace.steps} == {"ADDED", "MODIFIED", "DELETED"}
    for pod in [*trace.initial, *(step.body for step in trace.steps)]:
        validate_pod(pod, EDGE_VERSIONS[-1:])


trace_strategy = st.builds(
    build_trace,
    st.integers(min_value=0, max_value=3),
    st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)), max_size=40),
)
PROPERTY_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(trace=trace_strategy, how=st.lists(st.integers(0, 3), max_size=40))
def test_watching_and_relisting_give_the_same_events(trace: Trace, how: list[int]) -> None:
    assert Counter(by_watch(trace, how)) == Counter(by_watch(trace))


@PROPERTY_SETTINGS
@given(trace=trace_strategy, delivered=st.lists(st.booleans(), max_size=40))
def test_a_gap_loses_no_restart_and_duplicates_nothing(trace: Trace, delivered: list[bool]) -> None:
    """Watch events lost in gaps, a relist after each gap: every restart is still counted."""
    watched = PodLifecycleTracker(NODE)
    watched.sync(trace.initial, T)
    gappy = PodLifecycleTracker(NODE)
    gappy.sync(trace.initial, T)
    all_events: list[LifecycleEvent] = []
    gap_events: list[LifecycleEvent] = []
    in_gap = False
    last = T
    for index, step in enumerate(trace.steps):
        all_events += watched.apply(step.event_type, step.body, step.now)
        if index < len(delivered) and not delivered[index]:
            in_gap = True
            continue
        if in_gap:
            gap_events += gappy.sync(step.world, step.now).events
            in_gap = False
        else:
            gap_events += gappy.apply(step.event_type, step.body, step.now)
        last = step.now
    final = trace.steps[-1].world if trace.steps else trace.initial
    gap_events += gappy.sync(final, last + 1).events

    assert set(watched.pods()) == set(gappy.pods())

    def restarts(events: list[LifecycleEvent]) -> Counter[tuple[str, str]]:
        counts: Counter[tuple[str, str]] = Counter()
        for e in events:
            if e.kind is E.CONTAINER_RESTART:
                counts[(e.uid, e.container)] += e.count
        return counts

    present = {p["metadata"]["uid"] for p in final}
    assert {k: v for k, v in restarts(gap_events).items() if k[0] in present} == {
        k: v for k, v in restarts(all_events).items() if k[0] in present
    }
    for kind in (E.SCHEDULED, E.DELETED, E.TERMINATING, E.EVICTED, E.ROLLOUT):
        per_pod = Counter(e.uid for e in gap_events if e.kind is kind)
        assert all(n == 1 for n in per_pod.values()), (kind, per_pod)
    gone = {p["metadata"]["uid"] for p in trace.initial} - present
    assert {e.uid for e in gap_events if e.kind is E.DELETED} >= gone
