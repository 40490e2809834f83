"""Pod startup and termination times from the API's own timestamps (docs/lifecycle.md,
*Durations*): pods seen late, relists, readiness flaps, missing and unreadable times, grace
periods, clock skew; and once end to end, the agent against the simulator over HTTP."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.lifecycle import CLOCK_TOLERANCE, PodLifecycleTracker
from exporter.core.pods import parse_pod
from exporter.metrics import AgentMetrics
from exporter.simulator import ApiServer
from exporter.simulator import objects as o
from exporter.simulator.cluster import Cluster
from tests.agent.conftest import running_agent
from tests.conftest import wait_for
from tests.core.test_lifecycle import NODE, T0, Agent, T, api, brief

Pod = dict[str, Any]
E = PodEventKind


@pytest.fixture
def agent() -> Agent:
    return Agent()


def the(kind: PodEventKind, events: list[LifecycleEvent]) -> LifecycleEvent:
    (event,) = [e for e in events if e.kind is kind]
    return event


def with_condition(pod: Pod, ctype: str, **fields: Any) -> Pod:
    """`pod` with fields of its `ctype` condition replaced (None removes the field)."""
    pod = copy.deepcopy(pod)
    (condition,) = [c for c in pod["status"]["conditions"] if c["type"] == ctype]
    for key, value in fields.items():
        if value is None:
            condition.pop(key, None)
        else:
            condition[key] = value
    return pod


def with_metadata(pod: Pod, **fields: Any) -> Pod:
    pod = copy.deepcopy(pod)
    for key, value in fields.items():
        if value is None:
            pod["metadata"].pop(key, None)
        else:
            pod["metadata"][key] = value
    return pod


def shortened(pod: Pod, now: float, grace: int) -> Pod:
    """A second delete with a shorter grace period, as an API server that does not let
    deletionTimestamp move into the past writes it: now + grace. (Older ones keep the request
    time: deletionTimestamp - grace stays where it was.) With grace 0 this is the kubelet's
    final delete, the last MODIFIED before DELETED."""
    return with_metadata(
        pod, deletionTimestamp=o.rfc3339(now + grace), deletionGracePeriodSeconds=grace
    )


# -- what is read from the Pod --------------------------------------------------------------


def test_the_apis_times_are_read_from_the_pod() -> None:
    pod = o.begin_termination(api(created=T0), T0 + 100, grace_period_seconds=30)
    snap = parse_pod(pod)
    assert (snap.created_at, snap.scheduled_at, snap.started_at) == (T0, T0, T0 + 1)
    assert snap.ready is True and snap.ready_since == snap.ready_at == T0 + 5
    assert (snap.deletion_at, snap.deletion_grace_seconds) == (T0 + 130, 30)
    assert snap.deletion_requested_at == T0 + 100

    starting = parse_pod(api(created=T0, state="running"))
    assert starting.ready is False and starting.ready_since == T0 + 1 and starting.ready_at is None
    assert parse_pod(o.unschedulable(api(node=None, state="unscheduled"), T0)).scheduled_at is None


def _change(pod: Pod, where: str, key: str, value: Any) -> Pod:
    return (
        with_metadata(pod, **{key: value})
        if where == "metadata"
        else (with_condition(pod, where, **{key: value}))
    )


@pytest.mark.parametrize(
    ("where", "key", "value", "field"),
    [
        ("PodScheduled", "lastTransitionTime", "yesterday", "scheduled_at"),
        ("PodScheduled", "lastTransitionTime", None, "scheduled_at"),
        ("Ready", "lastTransitionTime", 1717200005, "ready_since"),
        ("Ready", "lastTransitionTime", "2024-06-01T00:00:05", "ready_since"),  # no zone
        ("metadata", "deletionTimestamp", "soon", "deletion_at"),
        ("metadata", "deletionGracePeriodSeconds", "30", "deletion_grace_seconds"),
        ("metadata", "deletionGracePeriodSeconds", -1, "deletion_grace_seconds"),
        ("metadata", "deletionGracePeriodSeconds", True, "deletion_grace_seconds"),
        ("metadata", "deletionGracePeriodSeconds", None, "deletion_grace_seconds"),
    ],
)
def test_an_unreadable_time_is_absent_and_costs_nothing_else(
    where: str, key: str, value: Any, field: str
) -> None:
    changed = _change(o.begin_termination(api(), T0 + 100), where, key, value)
    snap = parse_pod(changed)
    assert getattr(snap, field) is None
    assert snap.deleting and snap.ready is True  # the rest of the pod is read as before
    # The tracker keeps such a pod like any other.
    tracker = PodLifecycleTracker(NODE)
    assert tracker.sync([changed], T).malformed == []
    assert len(tracker.pods()) == 1


# -- startup ----------------------------------------------------------------------------------


def test_a_pod_seen_late_reports_its_true_startup_once(agent: Agent) -> None:
    metrics = AgentMetrics()
    agent.sync([], now=T)
    # During a watch gap the pod is scheduled at T + 10 and is Ready at T + 15.
    late = api(created=T + 10)
    events = agent.sync([late], now=T + 100)
    assert brief(events) == [("scheduled", "", "", 1), ("ready", "", "", 1)]
    assert the(E.READY, events).duration_seconds == 5  # not 90, and not "unknown"
    for event in events:
        metrics.record(event)
    # Seen again by relist or watch: nothing more.
    assert agent.sync([late], now=T + 200) == []
    assert agent.apply("MODIFIED", late, T + 201) == []
    assert metrics.startup[("default", "Deployment", "api", "deployment")].count == 1


def test_a_pod_that_became_ready_in_a_gap_reports_the_apis_startup(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(state="scheduled", created=T)
    agent.apply("ADDED", pod, T + 1)
    # The watch drops; the pod starts and becomes Ready at T + 13; the relist is at T + 60.
    pod = o.mark_ready(o.containers_running(o.containers_creating(pod, T + 2), T + 5), T + 13)
    (ready,) = agent.sync([pod], now=T + 60)
    assert ready.kind is E.READY and ready.duration_seconds == 13


def test_a_readiness_flap_is_never_a_startup(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(created=T)
    events = agent.sync([pod], now=T + 10)
    assert the(E.READY, events).duration_seconds == 5
    pod = o.mark_not_ready(pod, T + 20)
    assert brief(agent.apply("MODIFIED", pod, T + 20)) == [("not_ready", "", "", 1)]
    pod = o.mark_ready(pod, T + 30)
    # The Ready condition's time is now T + 30: still no startup of 30 s.
    (again,) = agent.sync([pod], now=T + 31)
    assert again.kind is E.READY and again.duration_seconds is None


def test_a_flap_hidden_in_a_gap_is_no_startup(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(state="running", created=T)
    agent.apply("ADDED", pod, T + 3)
    # Unseen: Ready at T + 10, unready at T + 20 (Ready=False since long after startTime).
    pod = o.mark_not_ready(o.mark_ready(pod, T + 10), T + 20)
    assert agent.sync([pod], now=T + 30) == []
    (ready,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 40), T + 40)
    assert ready.duration_seconds is None  # 40 s would be the flap, not the startup


def test_a_pod_arriving_after_a_hidden_flap_has_no_startup(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = o.mark_not_ready(api(created=T + 1), T + 20)  # Ready at T + 6, then not
    assert brief(agent.sync([pod], now=T + 30)) == [("scheduled", "", "", 1)]
    (ready,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 40), T + 40)
    assert ready.duration_seconds is None


@pytest.mark.parametrize("state", ["scheduled", "creating", "running"])
def test_a_pod_of_the_first_list_still_starting_reports_its_startup(
    agent: Agent, state: o.PodState
) -> None:
    """At a node's boot the agent starts with the pods: those never Ready yet report their
    startup when they become Ready, from the API's times."""
    pod = api(state=state, created=T - 30)
    agent.sync([pod], now=T)
    if state != "running":
        pod = o.containers_running(pod, T + 2)
        agent.apply("MODIFIED", pod, T + 2)
    (ready,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 10), T + 10)
    assert ready.duration_seconds == 40


def test_a_pod_of_the_first_list_that_was_ready_before_has_no_startup(agent: Agent) -> None:
    # Ready since T0 + 5, then a container restart made it unready: it started long ago.
    pod = o.restart_container(api(), "app", T0 + 500)
    agent.sync([pod], now=T)
    (ready,) = agent.apply("MODIFIED", o.mark_ready(pod, T + 10), T + 10)
    assert ready.duration_seconds is None


def test_an_agent_restart_puts_no_old_pod_in_the_startup_histogram() -> None:
    pods = [api(seed=i, created=T0 + i) for i in range(20)]
    for restart in range(3):
        tracker = PodLifecycleTracker(NODE)
        assert tracker.sync(pods, T + 100 * restart).events == []
        relisted = tracker.sync(pods, T + 100 * restart + 50).events
        assert relisted == []


def test_startup_falls_back_to_the_agents_clock_only_without_api_times(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(state="running", created=T)
    agent.apply("ADDED", pod, T + 1)
    untimed = with_condition(o.mark_ready(pod, T + 8), "Ready", lastTransitionTime="later")
    (ready,) = agent.apply("MODIFIED", untimed, T + 9)
    assert ready.duration_seconds == 8  # from the arrival the agent saw, by its clock
    # Arriving already Ready without times: no duration (0 would be false).
    other = with_condition(api(seed=1, created=T), "PodScheduled", lastTransitionTime=None)
    assert the(E.READY, agent.apply("ADDED", other, T + 20)).duration_seconds is None


@pytest.mark.parametrize(
    ("skew", "expected"),
    [(0.0, 0.0), (1.0, 0.0), (CLOCK_TOLERANCE, 0.0), (CLOCK_TOLERANCE + 1, None), (3600.0, None)],
)
def test_a_startup_is_never_negative(agent: Agent, skew: float, expected: float | None) -> None:
    """The kubelet's clock (Ready) behind the control plane's (PodScheduled) by `skew`:
    a little is read as 0, more is dropped."""
    agent.sync([], now=T)
    pod = with_condition(api(created=T), "PodScheduled", lastTransitionTime=o.rfc3339(T + 5 + skew))
    assert the(E.READY, agent.sync([pod], now=T + 10)).duration_seconds == expected


def test_clocks_that_disagree_fall_back_to_the_agents_clock(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = api(state="running", created=T)
    agent.apply("ADDED", pod, T + 1)
    skewed = o.mark_ready(pod, T - 60)  # Ready a minute before PodScheduled, by the API
    (ready,) = agent.apply("MODIFIED", skewed, T + 7)
    assert ready.duration_seconds == 6


def test_scheduling_is_never_before_creation(agent: Agent) -> None:
    """Two control-plane instances with different clocks (or a bad object) can put
    PodScheduled before creationTimestamp: the pod was not scheduled before it existed."""
    agent.sync([], now=T)
    pod = with_metadata(api(created=T), creationTimestamp=o.rfc3339(T + 3))
    assert the(E.READY, agent.sync([pod], now=T + 10)).duration_seconds == 2


# -- termination ------------------------------------------------------------------------------


def test_termination_runs_from_the_request_not_from_the_deadline(agent: Agent) -> None:
    """A 30 s grace period and a process that exits in 2 s: terminated in 2 s."""
    pod = api()
    agent.sync([pod], now=T)
    deleting = o.begin_termination(pod, T + 10, grace_period_seconds=30)
    agent.apply("MODIFIED", deleting, T + 10.4)  # the watch's delay does not count
    (deleted,) = agent.apply("DELETED", deleting, T + 12)
    assert deleted.duration_seconds == 2


def test_a_shortened_grace_period_keeps_the_first_request(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    deleting = o.begin_termination(pod, T + 10, grace_period_seconds=30)
    agent.apply("MODIFIED", deleting, T + 10)
    agent.apply("MODIFIED", shortened(deleting, T + 15, 5), T + 15)
    final = shortened(deleting, T + 18, 0)  # the kubelet's own delete, grace 0
    agent.apply("MODIFIED", final, T + 18)
    (deleted,) = agent.apply("DELETED", final, T + 18.5)
    assert deleted.duration_seconds == 8.5


def test_a_pod_arriving_terminating_in_a_relist_gets_its_termination(agent: Agent) -> None:
    agent.sync([], now=T)
    pod = o.begin_termination(api(created=T + 1), T + 5, disruption="EvictionByEvictionAPI")
    events = agent.sync([pod], now=T + 20)
    assert brief(events)[-1] == ("terminating", "EvictionByEvictionAPI", "", 1)
    (deleted,) = agent.apply("DELETED", pod, T + 25)
    assert deleted.duration_seconds == 20


def test_a_deletion_found_by_a_relist_is_gone_at_the_relist(agent: Agent) -> None:
    pod = api()
    agent.sync([pod], now=T)
    agent.apply("MODIFIED", o.begin_termination(pod, T + 10), T + 10)
    (deleted,) = agent.sync([], now=T + 50)
    assert deleted.kind is E.DELETED and deleted.duration_seconds == 40


@pytest.mark.parametrize(
    "unreadable",
    [{"deletionTimestamp": "soon"}, {"deletionGracePeriodSeconds": None}],
)
def test_termination_without_a_request_time(agent: Agent, unreadable: dict[str, Any]) -> None:
    """Without the request's time the agent's clock stands in, from the `terminating` it saw;
    a pod first seen terminating then has none."""
    seen, unseen = api(seed=1), api(seed=2)
    agent.sync([seen, with_metadata(o.begin_termination(unseen, T0 + 100), **unreadable)], T)
    deleting = with_metadata(o.begin_termination(seen, T + 10), **unreadable)
    assert brief(agent.apply("MODIFIED", deleting, T + 10)) == [("terminating", "Deleted", "", 1)]
    assert agent.apply("DELETED", deleting, T + 13)[0].duration_seconds == 3
    assert agent.apply("DELETED", unseen, T + 14)[0].duration_seconds is None


@pytest.mark.parametrize(
    ("behind", "first_seen_terminating", "expected"),
    [(1.0, False, 0.0), (1.0, True, 0.0), (30.0, False, 5.0), (30.0, True, None)],
)
def test_a_termination_is_never_negative(
    agent: Agent, behind: float, first_seen_terminating: bool, expected: float | None
) -> None:
    """The node's clock (the agent's) `behind` the control plane's: a little is read as 0;
    more falls back to the agent's own clock if it saw the `terminating`, else no duration."""
    pod = api()
    deleting = o.begin_termination(pod, T + 100, grace_period_seconds=30)
    agent.sync([deleting if first_seen_terminating else pod], now=T + 95 - behind)
    if not first_seen_terminating:
        agent.apply("MODIFIED", deleting, T + 95 - behind)
    (deleted,) = agent.apply("DELETED", deleting, T + 100 - behind)
    assert deleted.duration_seconds == expected


def test_a_pod_removed_at_once_has_no_termination_time(agent: Agent) -> None:
    pod = o.complete(o.job_pod("backup", node=NODE), T0 + 90)  # finished: no grace to wait
    agent.sync([pod], now=T)
    assert agent.apply("DELETED", pod, T + 1)[0].duration_seconds is None


# -- end to end -------------------------------------------------------------------------------


async def test_the_agent_reports_the_apis_durations(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    """The agent against the simulator over HTTP. The scheduler and kubelet act on a clock the
    test moves; the API server's (the Store's) and the agent's are the machine's."""
    node = "node-a"
    kubelet = [0.0]
    cluster = Cluster(api.store, clock=lambda: kubelet[0])
    # Before the agent starts: a pod bound and being created, a Ready pod, a pod deleting.
    starting = cluster.add(o.deployment_pod("web", state="unscheduled"))
    web = starting["metadata"]["name"]
    kubelet[0] = time.time() + 1  # scheduled a second after its creation (whole seconds)
    scheduled_at = kubelet[0]
    cluster.transition("default", web, lambda pod, now: o.schedule(pod, node, now))
    kubelet[0] += 2
    cluster.transition("default", web, o.containers_creating)
    ready = cluster.start(o.deployment_pod("api", node=node, state="scheduled"))
    old = cluster.start(o.deployment_pod("old", node=node, state="scheduled"))
    requested = time.time()
    cluster.terminate("default", old["metadata"]["name"])  # grace 30: the Store's clock

    seen: list[LifecycleEvent] = []
    async with running_agent(kubeconfig, tmp_path, node=node) as agent:
        agent.router.subscribe(LifecycleEvent, seen.append)
        kubelet[0] += 3
        cluster.transition("default", web, o.containers_running)
        kubelet[0] = scheduled_at + 12
        cluster.transition("default", web, o.mark_ready)
        cluster.flap_readiness("default", ready["metadata"]["name"])
        cluster.finish_termination("default", old["metadata"]["name"])

        def kinds() -> list[tuple[str, str]]:
            return [(e.workload.name, e.kind.value) for e in seen]

        await wait_for(
            lambda: {("web", "ready"), ("api", "ready"), ("old", "deleted")} <= set(kinds()),
            "the pods' events",
        )
        took = time.time() - requested
        by_pod = {(e.workload.name, e.kind): e for e in seen}
        # Seen as a starting pod in the first list: its startup is the API's, to the second.
        assert by_pod[("web", E.READY)].duration_seconds == 12
        assert by_pod[("api", E.READY)].duration_seconds is None  # a flap, not a startup
        # First seen already terminating: from the deletion request, not 30 s of grace.
        termination = by_pod[("old", E.DELETED)].duration_seconds
        assert termination is not None and 0 <= termination <= took + 1
        assert set(agent.metrics.startup) == {("default", "Deployment", "web", "deployment")}
        assert set(agent.metrics.termination) == {("default", "Deployment", "old", "deployment")}
