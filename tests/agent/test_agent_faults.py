"""The whole agent in-process against the simulator: through dropped connections, 410 gaps
and undecodable watch lines, every lifecycle change is counted exactly once."""

from __future__ import annotations

import aiohttp

from exporter.agent import Agent
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.conftest import wait_for


def restarts(agent: Agent) -> dict[tuple[str, ...], float]:
    return dict(agent.metrics.restarts)


async def test_each_change_is_counted_once_through_faults(
    api: ApiServer, cluster: Cluster, agent: Agent
) -> None:
    # The agent started on an empty node; these pods arrive while it watches.
    for i in range(3):
        cluster.start(objects.bare_pod(f"p{i}", node="node-a", state="scheduled"))
    await wait_for(lambda: len(agent.tracker.pods()) == 3, "three pods")

    # 1. a dropped connection right after a restart.
    cluster.restart("default", "p0", "app", "OOMKilled")
    api.faults.drop_watches()
    cluster.restart("default", "p0", "app", "OOMKilled")
    # 2. a stalled watch, changes, compaction, then 410: the relist sees the gap.
    await wait_for(lambda: agent.metrics.restarts.get(("default", "p0", "app", "OOMKilled")) == 2,
                   "two OOM restarts")  # fmt: skip
    api.faults.stall_watches()
    cluster.restart("default", "p1", "app", "Error")
    cluster.restart("default", "p1", "app", "Error")
    cluster.terminate("default", "p2")
    cluster.finish_termination("default", "p2")
    cluster.add(objects.bare_pod("late", node="node-a"))
    api.store.compact()
    api.faults.stall_watches(False)
    api.faults.expire_watches()
    # 3. garbage on the stream, then one more restart.
    await wait_for(lambda: agent.pods_health.restarts.get("gone", 0) >= 1, "the 410 relist")
    api.faults.inject_raw_line(b"\x00not json", resource="pods")
    cluster.restart("default", "p0", "app", "Error")

    def bare(event: str, reason: str = "", pod: str = "") -> tuple[str, ...]:
        return ("default", "Pod", pod, event, reason, "barepod")  # workload_type last

    expected = {
        bare("scheduled", pod="p0"): 1, bare("scheduled", pod="p1"): 1,
        bare("scheduled", pod="p2"): 1, bare("scheduled", pod="late"): 1,
        bare("ready", pod="p0"): 1, bare("ready", pod="p1"): 1,
        bare("ready", pod="p2"): 1, bare("ready", pod="late"): 1,
        bare("container_restart", "OOMKilled", "p0"): 2,
        bare("container_restart", "Error", "p0"): 1,
        bare("container_restart", "Error", "p1"): 2,
        bare("not_ready", pod="p0"): 1, bare("not_ready", pod="p1"): 1,
        bare("deleted", pod="p2"): 1,
    }  # fmt: skip
    # (p2 is removed at once after its graceful delete began: the stalled watch saw
    # neither step, so the relist reports only `deleted`.)
    await wait_for(lambda: agent.metrics.pod_events == expected or None,
                   f"exactly {expected}", timeout=10)  # fmt: skip
    assert restarts(agent) == {
        ("default", "p0", "app", "OOMKilled"): 2,
        ("default", "p0", "app", "Error"): 1,
        ("default", "p1", "app", "Error"): 2,
    }
    assert agent.metrics.dropped == {}
    await wait_for(lambda: agent.pods_health.dropped == {"watch_decode": 1}, "the bad line")
    await wait_for(lambda: agent.readiness()[0], "ready again after the relist")
    assert agent.metrics.pod_events == expected, "the relist after the bad line added nothing"

    # /metrics and /readyz over HTTP.
    url = f"http://{agent.settings.listen}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/readyz") as resp:
            assert resp.status == 200
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    assert 'tailwatch_dropped_total{reason="watch_decode"} 1.0' in text
    assert 'tailwatch_watch_restarts_total{reason="gone",resource="pods"}' in text


async def test_malformed_pods_are_dropped_and_counted(
    api: ApiServer, cluster: Cluster, agent: Agent
) -> None:
    bad = objects.bare_pod("bad", node="node-a")
    bad["status"]["containerStatuses"][0]["restartCount"] = "three"
    cluster.add(bad)
    cluster.start(objects.bare_pod("good", node="node-a", state="scheduled"))
    await wait_for(lambda: agent.metrics.dropped.get("malformed_pod_bad_field") == 1,
                   "the malformed pod counted")  # fmt: skip
    await wait_for(lambda: len(agent.tracker.pods()) == 1, "the good pod tracked")
    assert agent.readiness()[0]
