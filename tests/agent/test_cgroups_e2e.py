"""Pods from the API mapped onto a kubelet-like cgroup tree, through the whole agent: usage per
container, a kernel OOM kill that is no restart, and series that go with their pod; and a
busy, CPU-throttled container in the machine's own hybrid cgroupfs, laid out by the cgroupfs
driver (v1 controllers only, nothing under unified/)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.cgroups.layout import CgroupMode, container_id_of_status
from exporter.cgroups.synthetic import (
    ContainerUsage,
    SyntheticContainer,
    SyntheticPod,
    TreeLayout,
    write_tree,
    write_usage,
)
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.simulator import ApiServer, objects
from tests.agent.conftest import running_agent
from tests.cgroups.real_cgroupfs import HOST_ROOT, HostContainerCgroup, NotWritable
from tests.conftest import wait_for

LAYOUT = TreeLayout(version="v2", driver="systemd", runtime="containerd")
MiB = 1024 * 1024


def usage(cpu_s: float, oom_kill: int = 0) -> ContainerUsage:
    return ContainerUsage(
        cpu_usage_usec=int(cpu_s * 1e6), nr_periods=100, nr_throttled=7,
        throttled_usec=350_000, cpu_quota_usec=50_000, memory_anon=40 * MiB,
        memory_inactive_file=8 * MiB, memory_active_file=2 * MiB, memory_limit=128 * MiB,
        oom_kill=oom_kill, psi_cpu_some=1_500_000, pids=(4242,),
    )  # fmt: skip


def synthetic(pod: dict[str, Any], cpu_s: float) -> SyntheticPod:
    statuses = pod["status"]["containerStatuses"]
    return SyntheticPod(
        namespace=pod["metadata"]["namespace"],
        name=pod["metadata"]["name"],
        uid=pod["metadata"]["uid"],
        qos=pod["status"]["qosClass"],
        sandbox_id="f" * 64,
        containers=tuple(
            SyntheticContainer(s["name"], s["containerID"].split("://")[1], usage(cpu_s))
            for s in statuses
        ),
    )


@pytest.fixture
async def world(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> AsyncIterator[tuple[Agent, list[SyntheticPod], Path]]:
    limits = {"cpu": "500m", "memory": "128Mi"}
    pods = [
        api.store.create("pods", objects.deployment_pod(
            "web", node="node-a", seed=i, containers=("app", "envoy"), requests=limits,
            limits=limits))
        for i in range(2)
    ]  # fmt: skip
    tree = [synthetic(p, cpu_s=10.0 * (i + 1)) for i, p in enumerate(pods)]
    root = tmp_path / "cgroup"
    write_tree(root, LAYOUT, tree)
    async with running_agent(kubeconfig, root, sample_interval=0.05, wait_ready=False) as agent:
        yield agent, tree, root


def scrape(agent: Agent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(agent.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def cpu_series(agent: Agent) -> dict[tuple[str, str], float]:
    latest = agent.cgroups.latest
    if latest is None:
        return {}
    return {(s.pod, s.container): s.cpu_usage_seconds for s in latest.samples}


async def test_usage_oom_kills_and_gone_pods(
    world: tuple[Agent, list[SyntheticPod], Path], api: ApiServer
) -> None:
    agent, tree, root = world
    oom_events: list[LifecycleEvent] = []
    agent.router.subscribe(
        LifecycleEvent,
        lambda e: oom_events.append(e) if e.kind is PodEventKind.OOM_KILL else None,
    )
    first, second = tree
    want = {(p.name, c.name): 10.0 * (i + 1) for i, p in enumerate(tree) for c in p.containers}
    await wait_for(lambda: cpu_series(agent) == want or None, f"cpu usage {want}")

    app = (("container", "app"), ("namespace", "default"), ("pod", first.name))
    samples = scrape(agent)
    assert samples["tailwatch_container_cpu_usage_seconds_total", app] == 10.0
    assert samples["tailwatch_container_cpu_throttled_periods_total", app] == 7.0
    assert samples["tailwatch_container_cpu_throttled_seconds_total", app] == 0.35
    # working set = usage (anon 40 + file 10 MiB) - inactive_file (8 MiB), as the kubelet has it
    assert samples["tailwatch_container_memory_working_set_bytes", app] == 42 * MiB
    assert samples["tailwatch_container_memory_limit_bytes", app] == 128 * MiB

    # A child process of `app` is OOM-killed: the container keeps running (no restart).
    write_usage(root, LAYOUT, first, first.containers[0].container_id, usage(10.0, oom_kill=1))
    await wait_for(lambda: oom_events, "the OOM kill as a lifecycle event")
    assert (oom_events[0].pod, oom_events[0].container) == (first.name, "app")
    assert oom_events[0].workload.name == "web"
    assert scrape(agent)["tailwatch_container_oom_kills_total", app] == 1

    # The second pod is deleted: its series go with it.
    api.store.remove("pods", "default", second.name)
    await wait_for(
        lambda: all(pod != second.name for pod, _ in cpu_series(agent)), "series of the gone pod"
    )
    assert not [key for key in scrape(agent) if ("pod", second.name) in key[1]]
    assert agent.cgroups.dropped() == {}


# --- the machine's own hybrid cgroupfs ---------------------------------------------------

# Joins the container's cgroups first (real_cgroupfs._JOIN), then holds 32 MiB (charged to
# the container's memory cgroup: allocated after joining) and spins; it ends by itself if
# the test process dies without killing it, or after two minutes.
SPIN = (
    "import os, time\n"
    "parent, end = os.getppid(), time.monotonic() + 120\n"
    "keep = b'x' * (32 << 20)\n"
    "while os.getppid() == parent and time.monotonic() < end:\n"
    "    for _ in range(100_000): pass\n"
)
SPIN_LIMIT = 256 * MiB

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def host_container(api: ApiServer) -> Iterator[tuple[dict[str, Any], HostContainerCgroup]]:
    """A Burstable pod on node-a (a random uid) and its container's cgroup in the host's v1
    controllers, killed and removed (leaf first) whatever the test did."""
    body = objects.deployment_pod(
        "spin",
        node="node-a",
        containers=("spin",),
        seed=str(uuid.uuid4()),
        requests={"cpu": "50m", "memory": "64Mi"},
        limits={"cpu": "100m", "memory": "256Mi"},
    )
    pod = api.store.create("pods", body)
    assert pod["status"]["qosClass"] == "Burstable"
    uid = pod["metadata"]["uid"]  # a fresh one, as the API server gives every new object
    cid = container_id_of_status(pod["status"]["containerStatuses"][0]["containerID"])
    assert cid is not None
    cgroup = HostContainerCgroup(uid, cid)
    try:
        cgroup.setup()
    except NotWritable as exc:
        pytest.skip(f"needs a hybrid host with a writable cgroupfs (root): {exc}")
    try:
        yield pod, cgroup
    finally:
        leftovers = cgroup.cleanup()
        assert leftovers == [], leftovers


async def http_metrics(agent: Agent) -> Metrics:
    url = f"http://{agent.settings.listen}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def of_container(metrics: Metrics, labels: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """name (with the extra labels) -> value of the series of one container."""
    mine = set(labels)
    return {
        name + "".join(f",{k}={v}" for k, v in key if (k, v) not in mine): value
        for (name, key), value in metrics.items()
        if mine <= set(key)
    }


@pytest.mark.timeout(120)
async def test_a_throttled_container_of_the_cgroupfs_driver_on_the_real_hybrid_host(
    api: ApiServer,
    kubeconfig: Path,
    host_container: tuple[dict[str, Any], HostContainerCgroup],
) -> None:
    pod, cgroup = host_container
    name = pod["metadata"]["name"]
    labels = (("container", "spin"), ("namespace", "default"), ("pod", name))
    assert not (HOST_ROOT / "unified" / cgroup.relpath).exists()
    cgroup.set_cpu_quota(10_000)  # 10 ms per 100 ms period: a tenth of a CPU
    cgroup.set_memory_limit(SPIN_LIMIT)
    cgroup.start(SPIN)
    usage = "tailwatch_container_cpu_usage_seconds_total"
    periods = "tailwatch_container_cpu_throttled_periods_total"
    throttled = "tailwatch_container_cpu_throttled_seconds_total"
    vanished = ("tailwatch_dropped_total", (("reason", "cgroup_vanished"),))

    async with running_agent(kubeconfig, HOST_ROOT, sample_interval=0.1) as agent:
        hierarchies = agent.cgroups.hierarchies
        assert hierarchies is not None and hierarchies.mode is CgroupMode.HYBRID

        async def exported() -> dict[str, float] | None:
            return of_container(await http_metrics(agent), labels) or None

        first: dict[str, float] = await wait_for(
            exported, "the container's series on /metrics", timeout=30
        )

        async def throttled_more() -> Metrics | None:
            metrics = await http_metrics(agent)
            now = of_container(metrics, labels)
            grew = all(now.get(k, 0) > first.get(k, 0) for k in (usage, periods, throttled))
            # Its 32 MiB are written at a tenth of a CPU: on a busy machine that takes a while.
            filled = now.get("tailwatch_container_memory_working_set_bytes", 0) >= 30 * MiB
            return metrics if grew and filled and now[periods] >= 3 else None

        metrics: Metrics = await wait_for(
            throttled_more, "CPU usage and throttling to grow, its memory written", timeout=60
        )
        now = of_container(metrics, labels)
        assert now["tailwatch_container_cpu_periods_total"] >= now[periods]
        assert now["tailwatch_container_memory_working_set_bytes"] >= 30 * MiB
        assert now["tailwatch_container_memory_limit_bytes"] == SPIN_LIMIT
        # No PSI for a cgroup that has no directory under unified/; nothing vanished.
        assert not [k for k in now if k.startswith("tailwatch_container_pressure_")]
        assert vanished not in metrics
        assert not {r for r in agent.cgroups.dropped() if r.startswith("cgroup_")}

        # The container exits and the runtime removes its cgroup: a real disappearance,
        # counted once, and its series go.
        assert cgroup.remove_container() == []

        async def gone() -> Metrics | None:
            metrics = await http_metrics(agent)
            return None if of_container(metrics, labels) else metrics

        metrics = await wait_for(gone, "the series of the removed cgroup to go", timeout=30)
        assert metrics[vanished] == 1
        # Then the pod goes from the API: nothing of it is left, nothing more is counted.
        api.store.remove("pods", "default", name)
        await wait_for(lambda: not any(c.uid == pod["metadata"]["uid"]
                                       for c in agent.tracker.pods()), "the pod to go")  # fmt: skip
        metrics = await http_metrics(agent)
        assert not of_container(metrics, labels)
        assert metrics[vanished] == 1
