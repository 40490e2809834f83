"""Pods from the API mapped onto a kubelet-like cgroup tree, through the whole agent: usage per
container, a kernel OOM kill that is no restart, and series that go with their pod."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
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
    agent.listeners.append(lambda e: oom_events.append(e) if e.kind is PodEventKind.OOM_KILL
                           else None)  # fmt: skip
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
