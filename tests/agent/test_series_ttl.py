"""--series-ttl: the series keyed by a workload (pod events, startup and termination times)
of a workload with no pod left on the node go --series-ttl after its last pod left; per-pod
series go with the pod. 500 CronJob runs (each its own Job, with one pod) leave nothing on a
node that has no pod left of them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp

from exporter.catalogue import POD_EVENTS, POD_STARTUP, POD_TERMINATION
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.exposition import Exposition
from exporter.metrics import AgentMetrics, AgentSource
from exporter.simulator import ApiServer
from exporter.simulator import objects as o
from exporter.simulator.cluster import Cluster
from exporter.watches import PodWatch
from tests.agent.conftest import running_agent
from tests.conftest import wait_for

Pod = dict[str, Any]
NODE = "node-a"
TTL = 900.0
JOBS = 500
WORKLOAD_FAMILIES = (POD_EVENTS.name, POD_STARTUP.name, POD_TERMINATION.name)


class Clock:
    """The agent's clocks, moved by hand: wall time for the tracker, monotonic for expiry."""

    def __init__(self) -> None:
        self.wall = o.EPOCH + 10_000.0
        self.mono = 1_000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class Node:
    """The pod watch's handler, tracker and metrics of one agent, fed with watch events of
    pods built like the API server's, and the /metrics text of the agent's own families."""

    def __init__(self, ttl: float | None = TTL) -> None:
        self.clock = Clock()
        self.metrics = AgentMetrics(series_ttl=ttl, clock=lambda: self.clock.mono)
        self.tracker = PodLifecycleTracker(NODE, occupancy=self.metrics.on_workload)
        self.watch = PodWatch(
            self.tracker, self.metrics, lambda event: None, lambda: self.clock.wall
        )
        self.watch.on_list([])
        self.exposition = Exposition(
            [AgentSource(self.metrics, pods=self.tracker.pods, watches=list)]
        )

    def event(self, event_type: str, pod: Pod, seconds: float = 1.0) -> Pod:
        self.clock.advance(seconds)
        self.watch.on_event(event_type, pod)
        return pod

    def run_job(self, job: str, *, killed: bool) -> None:
        """One CronJob run: its Job's pod arrives, runs, becomes ready, and either completes
        and is removed (history limit) or is killed while running (concurrencyPolicy
        Replace: a graceful deletion, then the kubelet removes it)."""
        pod = o.job_pod(job, node=NODE, created=self.clock.wall, state="scheduled")
        self.event("ADDED", pod)
        pod = self.event("MODIFIED", o.containers_running(pod, self.clock.wall))
        pod = self.event("MODIFIED", o.mark_ready(pod, self.clock.wall), 2)
        if killed:
            pod = self.event("MODIFIED", o.begin_termination(pod, self.clock.wall))
        else:
            pod = self.event("MODIFIED", o.complete(pod, self.clock.wall), 5)
        self.event("DELETED", pod, 3)

    def restarted(self, pod: Pod, reason: str) -> Pod:
        running = o.containers_running(pod, self.clock.wall)
        return o.restart_container(running, "app", self.clock.wall, reason=reason)

    def label_sets(self, kind: str = "Job") -> dict[str, int]:
        """Label sets of each workload family whose workload_kind is `kind`."""
        m = self.metrics
        keys: tuple[Iterable[tuple[str, ...]], ...] = (m.pod_events, m.startup, m.termination)
        return {
            name: sum(1 for key in table if key[1] == kind)
            for name, table in zip(WORKLOAD_FAMILIES, keys, strict=True)
        }

    def samples(self, kind: str = "Job") -> int:
        """Sample lines of /metrics (text format) with workload_kind=`kind`."""
        text = self.exposition.render()
        return sum(
            1
            for line in text.splitlines()
            if not line.startswith("#") and f'workload_kind="{kind}"' in line
        )


def test_500_cronjob_runs_leave_no_series_after_the_ttl() -> None:
    node = Node()
    resident = o.deployment_pod("api", node=NODE, created=node.clock.wall, state="scheduled")
    node.event("ADDED", resident)
    node.event("MODIFIED", o.mark_ready(o.containers_running(resident, node.clock.wall),
                                        node.clock.wall))  # fmt: skip
    halfway = 0.0
    for i in range(JOBS):
        node.run_job(f"report-2900{i:04d}", killed=i % 2 == 1)
        node.clock.advance(0.5)
        if i == JOBS // 2 - 1:
            halfway = node.clock.mono
    end = node.clock.mono
    assert len(node.tracker.pods()) == 1  # only the Deployment's pod is left

    before = node.label_sets()
    before_samples = node.samples()
    # Every run has scheduled, ready, deleted (+ terminating when killed) and its times.
    assert before == {POD_EVENTS.name: 3.5 * JOBS, POD_STARTUP.name: JOBS,
                      POD_TERMINATION.name: JOBS / 2}  # fmt: skip
    assert before_samples == 3.5 * JOBS + 14 * JOBS + 14 * JOBS / 2  # 14 lines per histogram

    # The TTL after the first half left: those runs' series are gone, the others' stay.
    node.clock.advance(halfway + TTL - node.clock.mono)
    assert node.metrics.expire() == JOBS // 2
    assert node.label_sets()[POD_STARTUP.name] == JOBS // 2

    node.clock.advance(end + TTL - node.clock.mono)
    assert node.metrics.expire() == JOBS // 2
    after = node.label_sets()
    after_samples = node.samples()
    assert after == dict.fromkeys(WORKLOAD_FAMILIES, 0)
    assert after_samples == 0
    assert "report-2900" not in node.exposition.render()
    # The Deployment with a pod on the node keeps its series.
    assert node.label_sets("Deployment") == {POD_EVENTS.name: 2, POD_STARTUP.name: 1,
                                             POD_TERMINATION.name: 0}  # fmt: skip
    # A burst that expires at once goes in batches, a tick each.
    node.metrics.series_ttl = 1
    for i in range(3):
        node.run_job(f"burst-{i}", killed=False)
    node.clock.advance(1)
    assert [node.metrics.expire(batch=2), node.metrics.expire(batch=2)] == [2, 1]
    # Nothing else is kept of the runs (memory): no deadline, no index entry.
    assert not node.metrics._expiry
    assert list(node.metrics._workload_events) == [("default", "Deployment", "api")]
    print(f"\nworkload label sets {before} -> {after}; /metrics samples "
          f"{before_samples} -> {after_samples}")  # fmt: skip


def test_a_new_pod_of_the_workload_keeps_its_series() -> None:
    node = Node(ttl=60)
    pod = o.deployment_pod("web", node=NODE, created=node.clock.wall, seed=1, state="scheduled")
    node.event("ADDED", pod)
    node.event("DELETED", pod)
    node.clock.advance(30)
    # A pod of the same workload comes back before the TTL: the series stay, and count on.
    again = o.deployment_pod("web", node=NODE, created=node.clock.wall, seed=2, state="scheduled")
    node.event("ADDED", again)
    node.clock.advance(120)
    node.metrics.expire()
    key = ("default", "Deployment", "web", "scheduled", "", "deployment")
    assert node.metrics.pod_events[key] == 2
    # Its last pod leaves: the series go the TTL after that, not before.
    node.event("DELETED", again)
    node.clock.advance(59)
    assert node.metrics.expire() == 0 and key in node.metrics.pod_events
    node.clock.advance(1)
    assert node.metrics.expire() == 1 and key not in node.metrics.pod_events
    # A later pod of it starts the counters over from 0 (Prometheus sees a counter reset).
    node.event("ADDED", o.deployment_pod("web", node=NODE, created=node.clock.wall, seed=3,
                                         state="scheduled"))  # fmt: skip
    assert node.metrics.pod_events[key] == 1


def test_without_a_ttl_the_series_stay() -> None:
    node = Node(ttl=None)
    node.run_job("nightly-1", killed=False)
    node.clock.advance(10 * 365 * 86400)
    assert node.metrics.expire() == 0
    assert node.label_sets()[POD_EVENTS.name] == 3


def test_restart_series_go_with_their_pod() -> None:
    node = Node()
    pod = o.deployment_pod("api", node=NODE, created=node.clock.wall, state="scheduled")
    node.event("ADDED", pod)
    pod = node.event("MODIFIED", node.restarted(pod, "OOMKilled"))
    other = o.deployment_pod("api", node=NODE, created=node.clock.wall, seed=5, state="scheduled")
    node.event("ADDED", other)
    node.event("MODIFIED", node.restarted(other, "Error"))
    assert len(node.metrics.restarts) == 2
    node.event("DELETED", pod)
    assert [k[1] for k in node.metrics.restarts] == [other["metadata"]["name"]]
    assert 'pod="' + pod["metadata"]["name"] not in node.exposition.render()


def test_a_pod_gone_in_a_watch_gap_or_orphaned_starts_the_ttl() -> None:
    """The relist after a gap reports the pods that left meanwhile; a pod whose owner is
    removed (orphaned) leaves its workload too."""
    node = Node(ttl=60)
    job = o.job_pod("batch-1", node=NODE, created=node.clock.wall, state="scheduled")
    orphan = o.deployment_pod("old", node=NODE, created=node.clock.wall, state="scheduled")
    node.event("ADDED", job)
    node.event("ADDED", orphan)
    # The Deployment's ReplicaSet is deleted with --cascade=orphan: no owner any more.
    bare = {**orphan, "metadata": {**orphan["metadata"], "ownerReferences": []}}
    node.event("MODIFIED", bare)
    node.clock.advance(10)
    node.watch.on_list([bare])  # the Job's pod left during a gap in the watch
    assert node.tracker.pods_of("default", node.tracker.pods()[0].workload) == 1
    node.clock.advance(60)
    assert node.metrics.expire() == 2
    # (The orphan's owner change is no lifecycle event: its new workload has no series.)
    assert node.metrics.pod_events == {}


async def test_the_agent_drops_finished_cronjob_series(
    api: ApiServer, cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    """The agent against the simulator: Job pods come and go on the node; a short TTL later
    /metrics has none of their series; the Deployment that stays keeps its own."""
    async with running_agent(kubeconfig, tmp_path, series_ttl=1.0) as agent:
        gone: list[LifecycleEvent] = []
        agent.router.subscribe(
            LifecycleEvent,
            lambda e: gone.append(e) if e.kind is PodEventKind.DELETED else None,
        )
        cluster.start(o.deployment_pod("api", node=NODE, state="scheduled"))
        for i in range(JOBS):
            pod = cluster.start(o.job_pod(f"report-{i:04d}", node=NODE, state="scheduled"))
            name = pod["metadata"]["name"]
            if i % 2:
                cluster.terminate("default", name)
            else:
                cluster.transition("default", name, o.complete)
            cluster.finish_termination("default", name)

        await wait_for(lambda: len(gone) == JOBS, f"{JOBS} Job pods to leave", timeout=60)
        assert {e.workload.kind for e in gone} == {"Job"}
        await wait_for(
            lambda: (
                not any(k[1] == "Job" for k in agent.metrics.pod_events)
                and not agent.metrics.startup.keys()
                - {("default", "Deployment", "api", "deployment")}
            ),
            "the Job series to expire",
            timeout=30,
        )
        assert not agent.metrics.termination
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{agent.settings.listen}/metrics") as resp,
        ):
            text = await resp.text()
        assert 'workload_kind="Job"' not in text
        assert (
            'tailwatch_pod_events_total{event="ready",namespace="default",reason="",'
            'workload="api",workload_kind="Deployment",workload_type="deployment"} 1.0' in text
        )
        assert 'reason="internal_error"' not in text
