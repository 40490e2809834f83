"""RolloutTracker: rollouts of the workloads behind an opted-in Service, from its endpoints
cluster-wide and the pods of this node (docs/lifecycle.md, *Rollouts*). The tracker is fed
as the agent feeds it: the Service's EndpointSlice through a real EndpointTracker, the pods
of the agent's node through a real PodLifecycleTracker, times passed in."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from exporter.core.endpoints import EndpointTracker
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.rollouts import (
    RolloutChange,
    RolloutChangeKind,
    RolloutState,
    RolloutTracker,
    deployment_of,
)
from exporter.core.services import ServiceRef
from exporter.metrics import RolloutMetrics
from exporter.simulator import objects as o
from exporter.simulator.endpointslices import is_endpoint
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service

Pod = dict[str, Any]
K = RolloutChangeKind
NS = "shop"
SVC = service("web", namespace=NS, cluster_ip="127.0.96.1", ports=(("http", 8080, "http"),))
REF = ServiceRef(NS, "web")
T = o.EPOCH + 1000.0
DEPLOYMENT = (NS, "Deployment", "web")
REV1, REV2, REV3 = (o.revision_hash("web", r) for r in (1, 2, 3))
#: How long a finished state must hold before the finish is reported (a replacement
#: arriving meanwhile breaks it).
SETTLE = 30.0


def web(revision: int, index: int, node: str, at: float = T, state: Any = "ready") -> Pod:
    return o.deployment_pod(
        "web", revision=revision, seed=index, namespace=NS, node=node, created=at, state=state
    )


def db(ordinal: int, node: str, revision: int = 1, at: float = T, state: Any = "ready") -> Pod:
    return o.statefulset_pod(
        "web", ordinal, revision=revision, namespace=NS, node=node, created=at, state=state
    )


def name(pod: Pod) -> str:
    return str(pod["metadata"]["name"])


class Agent:
    """What one agent sees: the Service's endpoints cluster-wide and the pods of its node."""

    def __init__(
        self,
        pods: Iterable[Pod],
        *,
        node: str = "node-a",
        stuck_after: float = 600.0,
        settle: float = SETTLE,
    ) -> None:
        self.node = node
        self.pods: dict[str, Pod] = {name(p): p for p in pods}
        self.endpoints = EndpointTracker()
        self.lifecycle = PodLifecycleTracker(node)
        self.rollouts = RolloutTracker(stuck_after=stuck_after, settle=settle)
        self.changes: list[RolloutChange] = []
        self.lifecycle.sync([p for p in self.pods.values() if self._here(p)], T)
        self.endpoints.sync([self._slice()], T)
        self._observe(T)

    def _here(self, pod: Pod) -> bool:
        return bool(pod["spec"].get("nodeName") == self.node)

    def _slice(self) -> dict[str, Any]:
        endpoints = [endpoint_of_pod(p) for p in self.pods.values() if is_endpoint(p)]
        body = endpoint_slice(SVC, endpoints, ports=(("http", 8080),))
        body["metadata"]["uid"] = "slice-web"
        return body

    def _observe(self, now: float) -> None:
        view = self.endpoints.view(REF)
        self.changes += self.rollouts.observe(REF, view, now, self.lifecycle.pod)

    def change(self, now: float, put: Sequence[Pod] = (), gone: Sequence[str] = ()) -> None:
        """Pods created or changed, and pods gone, at `now`: the pod watch first (the
        pods of this node), then the EndpointSlice, as the controller would write it."""
        for pod in put:
            if self._here(pod):
                kind = "MODIFIED" if name(pod) in self.pods else "ADDED"
                for event in self.lifecycle.apply(kind, pod, now):
                    self.changes += self.rollouts.on_pod_event(event)
            self.pods[name(pod)] = pod
        for pod_name in gone:
            pod = self.pods.pop(pod_name)
            if self._here(pod):
                for event in self.lifecycle.apply("DELETED", pod, now):
                    self.changes += self.rollouts.on_pod_event(event)
        self.endpoints.apply("MODIFIED", self._slice(), now)
        self._observe(now)

    def ready(self, now: float, *names: str) -> None:
        self.change(now, put=[o.mark_ready(self.pods[n], now) for n in names])

    def not_ready(self, now: float, *names: str) -> None:
        self.change(now, put=[o.mark_not_ready(self.pods[n], now) for n in names])

    def terminate(self, now: float, *names: str) -> None:
        self.change(now, put=[o.begin_termination(self.pods[n], now) for n in names])

    def tick(self, now: float) -> None:
        self.changes += self.rollouts.tick(now)

    def kinds(self) -> list[RolloutChangeKind]:
        return [c.kind for c in self.changes]

    def last(self, kind: RolloutChangeKind) -> RolloutChange:
        return [c for c in self.changes if c.kind is kind][-1]

    def doc(self) -> dict[str, Any]:
        (rollout,) = self.rollouts.as_json()
        return rollout


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (name(web(1, 0, "node-b")), ("web", REV1)),
        ("checkout-7d4b9c8f6d-x2k9p", ("checkout", "7d4b9c8f6d")),
        ("my-web-app-5b9f8d6c7-zq4tw", ("my-web-app", "5b9f8d6c7")),
        ("web-0", None),  # a StatefulSet's pod
        ("node-agent-x7k2p", None),  # a DaemonSet's: "agent" has vowels, no hash does
        ("web-7d4b9c8f6d-abcde", None),  # a suffix the controllers never write
        ("web-x2k9p", None),  # a bare ReplicaSet's pod: no hash
        ("web-7d4b9c8f6d4444-x2k9p", None),  # longer than a 32-bit hash
    ],
)
def test_a_deployment_pod_is_known_by_its_name(pod: str, expected: tuple[str, str] | None) -> None:
    assert deployment_of(pod) == expected


# -- Deployments -----------------------------------------------------------------------------


def test_a_rollout_never_touching_this_node_is_seen_through_endpoint_names_and_timed() -> None:
    old = [web(1, i, node) for i, node in enumerate(("node-b", "node-b", "node-c"))]
    agent = Agent(old)  # on node-a, where no pod of web runs
    assert agent.changes == []
    assert agent.rollouts.revision_of(DEPLOYMENT) == REV1

    new = [web(2, 10 + i, "node-c", at=T + 100, state="running") for i in range(3)]
    agent.change(T + 100, put=[new[0]])  # the first pod of the new ReplicaSet arrives
    assert agent.kinds() == [K.STARTED]
    started = agent.last(K.STARTED).rollout
    assert (started.from_revision, started.to_revision, started.started_at) == (REV1, REV2, T + 100)
    assert agent.rollouts.gauges(T + 100) == {DEPLOYMENT: (1, 0)}
    doc = agent.doc()
    assert (doc["ready_new"], doc["ready_old"], doc["old"], doc["total"]) == (0, 3, 3, 4)

    # maxSurge 1, maxUnavailable 0: each new pod ready, then an old one goes.
    for i, at in enumerate((T + 100, T + 110, T + 120)):
        if i:
            agent.change(at, put=[new[i]])
        agent.ready(at + 5, name(new[i]))
        agent.terminate(at + 5, name(old[i]))
        if i < 2:
            agent.change(at + 8, gone=[name(old[i])])
    agent.tick(T + 200)
    assert agent.kinds() == [K.STARTED], "the last old endpoint is still there, terminating"
    doc = agent.doc()
    assert doc["state"] == "progressing"
    assert (doc["ready_new"], doc["ready_old"], doc["old"], doc["total"]) == (3, 0, 1, 3)

    # The last old pod is gone: done then, reported once that has held for the settle time.
    agent.change(T + 133, gone=[name(old[2])])
    agent.tick(T + 133 + SETTLE - 1)
    assert agent.kinds() == [K.STARTED]
    agent.tick(T + 133 + SETTLE)
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    finished = agent.last(K.FINISHED)
    assert finished.at == T + 133 + SETTLE
    assert finished.rollout.finished_at == T + 133
    assert finished.rollout.duration_seconds == 33
    doc = agent.doc()
    assert doc["state"] == "finished" and doc["duration_seconds"] == 33
    assert doc["from_revision"] == REV1 and doc["to_revision"] == REV2
    assert doc["services"] == ["shop/web"] and doc["start_seen"] is True
    assert agent.rollouts.revision_of(DEPLOYMENT) == REV2
    assert agent.rollouts.gauges(T + 170) == {DEPLOYMENT: (0, 0)}
    # The ended rollout's series go a while after it ended; its record stays in the JSON.
    assert agent.rollouts.gauges(T + 133 + agent.rollouts.keep) == {}
    assert agent.doc()["state"] == "finished"
    # More pods of the new revision: a scale-up, not another rollout.
    agent.change(T + 200, put=[web(2, 20, "node-b", at=T + 200)])
    agent.tick(T + 300)
    assert agent.kinds() == [K.STARTED, K.FINISHED]


def test_a_new_pod_arriving_here_starts_the_rollout_before_its_endpoint() -> None:
    old = [web(1, 0, "node-a"), web(1, 1, "node-b")]
    agent = Agent(old, settle=0)
    new = web(2, 10, "node-a", at=T + 50, state="scheduled")  # no IP yet: no endpoint
    agent.change(T + 50, put=[new])
    assert agent.kinds() == [K.STARTED]
    assert agent.last(K.STARTED).rollout.started_at == T + 50
    assert agent.doc()["total"] == 2

    running = o.containers_running(new, T + 53)
    agent.change(T + 53, put=[running])
    agent.change(T + 58, put=[o.mark_ready(running, T + 58)])
    agent.terminate(T + 58, name(old[0]))
    second = web(2, 11, "node-b", at=T + 60, state="running")
    agent.change(T + 60, put=[second])
    agent.ready(T + 66, name(second))
    agent.terminate(T + 66, name(old[1]))
    agent.change(T + 67, gone=[name(old[0])])
    assert agent.kinds() == [K.STARTED]
    agent.change(T + 69, gone=[name(old[1])])
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    assert agent.last(K.FINISHED).rollout.duration_seconds == 19


def test_a_replacement_arriving_within_the_settle_time_holds_the_finish() -> None:
    """maxUnavailable: an old pod goes before its replacement has an endpoint. For a moment
    every endpoint left is new and ready; the replacement arriving undoes that."""
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old)
    first = web(2, 10, "node-c", at=T + 10, state="running")
    agent.terminate(T + 10, name(old[0]))
    agent.change(T + 10, put=[first])
    agent.ready(T + 20, name(first))
    agent.change(T + 21, gone=[name(old[0])])
    agent.terminate(T + 21, name(old[1]))
    agent.change(T + 24, gone=[name(old[1])])  # done, for now
    second = web(2, 11, "node-c", at=T + 40, state="running")
    agent.change(T + 40, put=[second])
    agent.tick(T + 60)
    assert agent.kinds() == [K.STARTED]
    agent.ready(T + 50, name(second))
    agent.tick(T + 79)
    assert agent.kinds() == [K.STARTED]
    agent.tick(T + 80)
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    assert agent.last(K.FINISHED).rollout.finished_at == T + 50


def test_scaling_up_and_down_is_not_a_rollout() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old)
    more = [web(1, 10 + i, "node-c", at=T + 10, state="running") for i in range(3)]
    agent.change(T + 10, put=more)
    agent.ready(T + 15, *(name(p) for p in more))
    agent.terminate(T + 30, *(name(p) for p in old))
    agent.change(T + 40, gone=[name(p) for p in old])
    agent.tick(T + 10_000)
    assert agent.changes == []
    assert agent.rollouts.as_json() == []
    assert agent.rollouts.gauges(T + 10_000) == {}


def test_a_recreate_rollout_starts_with_the_first_new_endpoint() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old, settle=0)
    agent.terminate(T + 10, *(name(p) for p in old))
    agent.change(T + 20, gone=[name(p) for p in old])
    assert agent.changes == []
    new = [web(2, 10 + i, "node-b", at=T + 30, state="running") for i in range(2)]
    agent.change(T + 30, put=new)
    assert agent.kinds() == [K.STARTED]
    agent.ready(T + 40, *(name(p) for p in new))
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    assert agent.last(K.FINISHED).rollout.duration_seconds == 10


# -- stuck -----------------------------------------------------------------------------------


def test_a_rollout_without_progress_is_stuck_after_the_setting_until_it_progresses() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old, stuck_after=60, settle=0)
    new = [web(2, 10 + i, "node-c", at=T + 10, state="running") for i in range(2)]
    agent.change(T + 10, put=[new[0]])
    # The new pod flaps: ready, not ready, ready again. Only the first ready is progress.
    agent.ready(T + 20, name(new[0]))
    agent.not_ready(T + 30, name(new[0]))
    agent.ready(T + 40, name(new[0]))
    agent.tick(T + 79)
    assert agent.kinds() == [K.STARTED]
    agent.tick(T + 80)
    assert agent.kinds() == [K.STARTED, K.STUCK]
    stuck = agent.last(K.STUCK).rollout
    assert stuck.state is RolloutState.STUCK and stuck.stuck_since == T + 80
    assert agent.rollouts.gauges(T + 80) == {DEPLOYMENT: (1, 1)}
    assert agent.doc()["state"] == "stuck"
    agent.tick(T + 200)
    assert agent.kinds() == [K.STARTED, K.STUCK], "stuck once"

    agent.terminate(T + 300, name(old[0]))  # not progress yet: the pod is still there
    agent.change(T + 301, gone=[name(old[0])])  # progress: an old one left
    assert agent.kinds() == [K.STARTED, K.STUCK, K.PROGRESSING]
    assert agent.doc()["state"] == "progressing"
    assert agent.rollouts.gauges(T + 301) == {DEPLOYMENT: (1, 0)}
    agent.tick(T + 360)
    assert agent.kinds()[-1] is K.PROGRESSING
    agent.tick(T + 361)
    assert agent.kinds()[-1] is K.STUCK

    agent.change(T + 400, put=[new[1]])
    agent.ready(T + 405, name(new[1]))
    agent.terminate(T + 405, name(old[1]))
    agent.change(T + 410, gone=[name(old[1])])
    expected = [K.STARTED, K.STUCK, K.PROGRESSING, K.STUCK, K.PROGRESSING, K.FINISHED]
    assert agent.kinds() == expected
    assert agent.last(K.FINISHED).rollout.duration_seconds == 400
    assert agent.rollouts.gauges(T + 410) == {DEPLOYMENT: (0, 0)}


# -- superseded, rolled back, abandoned ------------------------------------------------------------


def test_a_rollout_superseded_by_a_newer_revision_goes_on_towards_it() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old, settle=0)
    second = web(2, 10, "node-b", at=T + 10, state="running")
    agent.change(T + 10, put=[second])
    agent.ready(T + 15, name(second))
    agent.terminate(T + 15, name(old[0]))
    # A newer template before it finished: a pod of revision 3 arrives.
    third = [web(3, 20 + i, "node-c", at=T + 20, state="running") for i in range(2)]
    agent.change(T + 20, put=[third[0]])
    assert agent.kinds() == [K.STARTED, K.SUPERSEDED]
    superseded = agent.last(K.SUPERSEDED).rollout
    assert (superseded.from_revision, superseded.to_revision) == (REV1, REV3)
    assert superseded.superseded == [REV2]
    # Revision 2's ready pod is now one of the old.
    assert (agent.doc()["ready_new"], agent.doc()["ready_old"]) == (0, 2)
    agent.change(T + 25, put=[o.mark_ready(third[0], T + 25), third[1]])
    agent.terminate(T + 25, name(second))
    agent.ready(T + 30, name(third[1]))
    agent.terminate(T + 30, name(old[1]))
    assert agent.kinds()[-1] is K.SUPERSEDED
    agent.change(T + 32, gone=[name(old[0]), name(old[1]), name(second)])
    assert agent.kinds() == [K.STARTED, K.SUPERSEDED, K.FINISHED]
    doc = agent.doc()
    assert (doc["from_revision"], doc["to_revision"], doc["superseded"]) == (REV1, REV3, [REV2])
    assert doc["duration_seconds"] == 22 and doc["rolled_back"] is False
    assert agent.rollouts.revision_of(DEPLOYMENT) == REV3


def test_a_rollback_finishes_on_the_revision_it_came_from() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old, settle=0)
    bad = web(2, 10, "node-c", at=T + 10, state="running")
    agent.change(T + 10, put=[bad])
    # kubectl rollout undo: the old ReplicaSet scales back up, the new one down.
    back = web(1, 20, "node-c", at=T + 40, state="running")
    agent.change(T + 40, put=[back])
    agent.terminate(T + 40, name(bad))
    assert agent.kinds() == [K.STARTED, K.SUPERSEDED]
    agent.ready(T + 45, name(back))
    agent.change(T + 46, gone=[name(bad)])
    assert agent.kinds() == [K.STARTED, K.SUPERSEDED, K.FINISHED]
    doc = agent.doc()
    assert doc["rolled_back"] is True and doc["to_revision"] == REV1
    assert doc["superseded"] == [REV2] and doc["duration_seconds"] == 36


def test_an_old_pod_replaced_during_the_rollout_does_not_keep_it_from_finishing() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old, settle=0)
    new = [web(2, 10 + i, "node-c", at=T + 10, state="running") for i in range(2)]
    agent.change(T + 10, put=new)
    # An old pod is evicted and its ReplicaSet, not scaled down yet, replaces it.
    replacement = web(1, 5, "node-c", at=T + 12)
    agent.change(T + 12, put=[replacement], gone=[name(old[0])])
    agent.ready(T + 20, *(name(p) for p in new))
    agent.terminate(T + 21, name(old[1]), name(replacement))
    agent.change(T + 23, gone=[name(old[1]), name(replacement)])
    assert agent.kinds()[0] is K.STARTED and agent.kinds()[-1] is K.FINISHED, agent.kinds()
    finished = agent.last(K.FINISHED).rollout
    assert finished.to_revision == REV2 and finished.duration_seconds == 13
    assert finished.superseded == [] and finished.rolled_back is False


def test_a_workload_that_leaves_the_service_abandons_its_rollout() -> None:
    old = [web(1, i, "node-b") for i in range(2)]
    agent = Agent(old)
    new = web(2, 10, "node-c", at=T + 10, state="running")
    agent.change(T + 10, put=[new])
    agent.change(T + 20, gone=[*(name(p) for p in old), name(new)])  # deleted
    assert agent.kinds() == [K.STARTED, K.ABANDONED]
    assert agent.doc()["state"] == "abandoned" and agent.doc()["duration_seconds"] is None
    assert agent.rollouts.gauges(T + 20) == {DEPLOYMENT: (0, 0)}


# -- the starting state ----------------------------------------------------------------------------


def test_a_rollout_under_way_when_the_agent_starts_is_followed_without_a_duration() -> None:
    old = [web(1, 0, "node-b")]
    new = [web(2, 10, "node-c"), web(2, 11, "node-c", state="running")]
    agent = Agent([*old, *new], settle=0)
    assert agent.kinds() == [K.ADOPTED]
    doc = agent.doc()
    assert doc["start_seen"] is False and doc["started_at"] is None
    assert doc["to_revision"] is None
    agent.ready(T + 10, name(new[1]))
    agent.terminate(T + 10, name(old[0]))
    assert agent.kinds() == [K.ADOPTED]
    agent.change(T + 12, gone=[name(old[0])])
    assert agent.kinds() == [K.ADOPTED, K.FINISHED]
    doc = agent.doc()
    assert doc["state"] == "finished" and doc["to_revision"] == REV2
    assert doc["duration_seconds"] is None and doc["finished_at"] is not None
    assert agent.rollouts.revision_of(DEPLOYMENT) == REV2


def test_forgetting_the_service_drops_its_rollouts_silently() -> None:
    old = [web(1, 0, "node-b")]
    agent = Agent(old)
    agent.change(T + 10, put=[web(2, 10, "node-c", at=T + 10, state="running")])
    assert agent.kinds() == [K.STARTED]
    assert agent.rollouts.forget_service(REF, T + 20) == []
    assert agent.rollouts.as_json() == [] and agent.rollouts.gauges(T + 20) == {}
    assert agent.rollouts.revision_of(DEPLOYMENT) is None


def test_an_unchanged_view_costs_nothing_and_bare_pods_are_not_followed() -> None:
    bare = o.bare_pod("debug", namespace=NS, node="node-b")
    agent = Agent([web(1, 0, "node-b"), bare])
    assert agent.rollouts.revision_of(DEPLOYMENT) == REV1
    view = agent.endpoints.view(REF)
    assert len(view) == 2
    assert agent.rollouts.observe(REF, view, T + 5) == []
    assert agent.rollouts.as_json() == []


# -- StatefulSets ------------------------------------------------------------------------------


def recreate(agent: Agent, ordinal: int, node: str, at: float) -> None:
    """The StatefulSet controller replaces a pod: the old one terminates and is gone, the
    new one (same name, new uid, revision 2) arrives and becomes ready 5 s later."""
    pod_name = f"web-{ordinal}"
    agent.terminate(at, pod_name)
    agent.change(at + 1, gone=[pod_name])
    agent.change(at + 2, put=[db(ordinal, node, revision=2, at=at + 2, state="running")])
    agent.ready(at + 7, pod_name)


@pytest.mark.parametrize("here", ["node-a", "node-c"])
def test_a_statefulset_rollout_is_followed_through_recreated_pods(here: str) -> None:
    """web-0 runs on node-a, web-1 on node-b, web-2 on node-c; the controller replaces
    them from the highest ordinal down. Both agents whose node has one of them tell the
    same start and finish, though node-a's learns of the new revision only at the end."""
    nodes = ("node-a", "node-b", "node-c")
    agent = Agent([db(i, node) for i, node in enumerate(nodes)], node=here)
    workload = (NS, "StatefulSet", "web")
    revision_1, revision_2 = (f"web-{o.revision_hash('web', r)}" for r in (1, 2))
    assert agent.rollouts.revision_of(workload) == revision_1
    for ordinal in (2, 1, 0):
        recreate(agent, ordinal, nodes[ordinal], T + 10 + 20 * (2 - ordinal))
        agent.tick(T + 10 + 20 * (2 - ordinal) + 19)
    assert [c.kind for c in agent.changes if c.kind is not K.FINISHED] == [K.STARTED]
    agent.tick(T + 57 + SETTLE)
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    finished = agent.last(K.FINISHED).rollout
    assert finished.started_at == T + 12  # web-2's replacement arrived
    assert finished.finished_at == T + 57  # web-0's replacement became ready
    assert (finished.from_revision, finished.to_revision) == (revision_1, revision_2)
    assert agent.rollouts.revision_of(workload) == revision_2


def test_a_statefulset_pod_recreated_long_before_is_not_part_of_the_rollout() -> None:
    """A reschedule (a new uid, same revision) an hour earlier is no part of a later
    rollout: that pod stays old until the controller replaces it again."""
    agent = Agent([db(0, "node-a"), db(1, "node-b")], node="node-a")
    agent.terminate(T + 10, "web-1")
    agent.change(T + 11, gone=["web-1"])
    agent.change(T + 12, put=[db(1, "node-c", at=T + 12)])  # rescheduled, revision 1
    agent.terminate(T + 4000, "web-0")
    agent.change(T + 4001, gone=["web-0"])
    agent.change(T + 4002, put=[db(0, "node-a", revision=2, at=T + 4002)])
    assert agent.kinds() == [K.STARTED]
    doc = agent.doc()
    assert doc["started_at"] == doc["last_progress_at"]  # not backdated to the reschedule
    assert (doc["ready_new"], doc["old"]) == (1, 1)
    # web-1 is gone a moment before its replacement arrives: not finished yet.
    recreate(agent, 1, "node-c", T + 4010)
    agent.tick(T + 4017 + SETTLE)
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    assert agent.last(K.FINISHED).rollout.duration_seconds == 4017 - 4002


def test_a_daemonset_rollout_is_followed_through_new_pods_on_other_nodes() -> None:
    """A DaemonSet replaces its pod on each node by a new one (a new name): node-b's first,
    then node-a's, where the agent learns of the new revision."""

    def agent_pod(node: str, revision: int = 1, at: float = T, state: Any = "ready") -> Pod:
        return o.daemonset_pod(
            "web", revision=revision, namespace=NS, node=node, created=at, state=state,
            seed=(revision, at),
        )  # fmt: skip

    old = {node: agent_pod(node) for node in ("node-a", "node-b")}
    agent = Agent(old.values(), node="node-a")
    workload = (NS, "DaemonSet", "web")
    assert agent.rollouts.revision_of(workload) == o.revision_hash("web", 1)
    for node, at in (("node-b", T + 10), ("node-a", T + 30)):
        agent.terminate(at, name(old[node]))
        agent.change(at + 1, gone=[name(old[node])])
        new = agent_pod(node, revision=2, at=at + 2, state="running")
        agent.change(at + 2, put=[new])
        agent.ready(at + 7, name(new))
    assert agent.kinds() == [K.STARTED]
    agent.tick(T + 37 + SETTLE)
    assert agent.kinds() == [K.STARTED, K.FINISHED]
    finished = agent.last(K.FINISHED).rollout
    assert (finished.started_at, finished.finished_at) == (T + 12, T + 37)
    assert finished.to_revision == o.revision_hash("web", 2)


def test_the_duration_series_goes_series_ttl_after_the_last_rollout_ended() -> None:
    """The agent's table of tailwatch_rollout_duration_seconds (exporter/metrics.py), fed
    with the tracker's changes, on its own clock."""
    old = [web(1, 0, "node-b")]
    agent = Agent(old, settle=0)
    new = web(2, 10, "node-c", at=T + 10, state="running")
    agent.change(T + 10, put=[new])
    agent.ready(T + 20, name(new))
    agent.terminate(T + 20, name(old[0]))
    agent.change(T + 25, gone=[name(old[0])])
    again = web(3, 20, "node-c", at=T + 50, state="running")
    agent.change(T + 50, put=[again])
    started, finished, restarted = agent.changes
    assert [started.kind, finished.kind, restarted.kind] == [K.STARTED, K.FINISHED, K.STARTED]

    clock = [0.0]
    metrics = RolloutMetrics(ttl=900.0, clock=lambda: clock[0])
    for change in (started, finished):
        metrics.record(change)
    (durations,) = metrics.durations.values()
    assert (durations.count, durations.sum) == (1, 15)
    clock[0] = 899.0
    assert metrics.expire() == 0
    clock[0] = 900.0
    assert metrics.expire() == 1 and metrics.durations == {}

    # Another rollout of the workload before the TTL ran out keeps the series.
    clock[0] = 0.0
    for change in (started, finished, restarted):
        metrics.record(change)
    clock[0] = 5000.0
    assert metrics.expire() == 0 and len(metrics.durations) == 1
