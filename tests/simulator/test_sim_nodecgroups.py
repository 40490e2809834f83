"""The simulated node's cgroup tree, read by the agent's real cgroup sampler: one cgroup per
running container of the node's pods, counters that integrate the data plane's load, an OOM
kill the sampler sees, and cgroups that go with restarted containers and deleted pods."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.cgroups import CgroupSampler
from exporter.core.events import PodEventKind
from exporter.core.pods import parse_pod
from exporter.simulator import Store, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.load import ContainerLoad, MiB
from exporter.simulator.nodecgroups import NodeCgroups
from exporter.simulator.objects import ContainerTemplate

NODE = "node-a"
LIMITS = {"cpu": "500m", "memory": "256Mi"}
APP = ContainerTemplate("app", port=8080, readiness_probe=True, requests=LIMITS, limits=LIMITS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def load(name: str, usage: float, *, throttled: float = 0.0, stall: float = 0.0) -> ContainerLoad:
    return ContainerLoad(
        name=name, demand=usage / (1 - stall) if stall < 1 else usage, usage=usage,
        throttled_share=throttled, stall=stall, psi_cpu_some=stall, psi_cpu_full=stall * 0.9,
        working_set=100 * MiB, memory_limit=256 * MiB, psi_memory_some=0.0, psi_memory_full=0.0,
    )  # fmt: skip


class World:
    def __init__(self, root: Path) -> None:
        self.store = Store()
        self.cluster = Cluster(self.store)
        self.clock = FakeClock()
        self.loads: dict[tuple[str, str], ContainerLoad] = {}
        self.cgroups = NodeCgroups(root, self.store, NODE, self.load_of, clock=self.clock)
        self.sampler = CgroupSampler(root, self.snapshots)

    def load_of(self, namespace: str, pod: str, container: str) -> ContainerLoad | None:
        return self.loads.get((pod, container))

    def snapshots(self) -> list[Any]:
        return [parse_pod(p) for p in self.store.list("pods") if p["spec"].get("nodeName") == NODE]

    def samples(self) -> dict[tuple[str, str], Any]:
        result = self.sampler.sample(self.clock.now)
        return {(s.pod, s.container): s for s in result.samples}

    def step(self, seconds: float) -> dict[tuple[str, str], Any]:
        self.clock.now += seconds
        self.cgroups.update()
        return self.samples()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "cgroup")
    for i, node in enumerate((NODE, NODE, "node-b")):
        w.store.create(
            "pods",
            objects.deployment_pod(
                "web", seed=i, node=node, containers=(APP,), sidecars=(ContainerTemplate("envoy"),)
            ),
        )
    creating = objects.deployment_pod("web", seed=9, node=NODE, state="creating", containers=(APP,))
    w.store.create("pods", creating)
    yield w
    w.sampler.close()


def names(w: World) -> list[str]:
    return sorted(p["metadata"]["name"] for p in w.store.list("pods") if
                  p["spec"]["nodeName"] == NODE and p["status"]["phase"] == "Running")  # fmt: skip


def test_the_agents_sampler_finds_every_running_container_of_the_node(world: World) -> None:
    world.cgroups.update()
    got = world.samples()
    running = names(world)
    assert sorted(got) == sorted((p, c) for p in running for c in ("app", "envoy"))
    app = got[running[0], "app"]
    assert app.memory_limit_bytes == 256 * MiB  # from the pod spec
    assert world.sampler.dropped() == {}


def test_counters_integrate_the_load(world: World) -> None:
    pod = names(world)[0]
    world.loads[pod, "app"] = load("app", 0.5, throttled=0.6, stall=0.2)
    world.loads[pod, "envoy"] = load("envoy", 0.05)
    world.cgroups.update()
    before = world.samples()
    after = world.step(10.0)
    app, app0 = after[pod, "app"], before[pod, "app"]
    assert app.cpu_usage_seconds - app0.cpu_usage_seconds == pytest.approx(5.0)
    assert app.cpu_periods - app0.cpu_periods == 100  # 10 s of 100 ms CFS periods
    assert app.cpu_throttled_periods - app0.cpu_throttled_periods == 60
    assert app.cpu_throttled_seconds - app0.cpu_throttled_seconds == pytest.approx(2.0)
    psi = {p.resource: p for p in app.pressure}
    psi0 = {p.resource: p for p in app0.pressure}
    assert psi["cpu"].some_seconds - psi0["cpu"].some_seconds == pytest.approx(2.0)
    assert app.memory_working_set_bytes == 100 * MiB
    envoy = after[pod, "envoy"]
    assert envoy.cpu_usage_seconds - before[pod, "envoy"].cpu_usage_seconds == pytest.approx(0.5)
    # A container the data plane does not describe idles.
    other = names(world)[1]
    assert after[other, "app"].cpu_usage_seconds < 0.1


def test_an_oom_kill_restart_and_deletion(world: World, tmp_path: Path) -> None:
    pod = names(world)[0]
    world.cgroups.update()
    world.samples()  # the sampler's first look: what it finds is its silent baseline
    old = world.cgroups.container_path("default", pod, "app")
    assert old is not None and old.is_dir()
    world.cgroups.oom_kill("default", pod, "app")
    assert "oom_kill 1" in (old / "memory.events").read_text()
    result = world.sampler.sample(world.clock.now)
    kills = [e for e in result.events if e.kind is PodEventKind.OOM_KILL]
    assert [(e.pod, e.container, e.count) for e in kills] == [(pod, "app", 1)]

    # The kubelet restarts it: a new container, a new cgroup; the old one is removed.
    world.cluster.restart("default", pod, "app", "OOMKilled")
    world.step(1.0)
    new = world.cgroups.container_path("default", pod, "app")
    assert new is not None and new != old and new.is_dir() and not old.exists()
    assert "oom_kill 0" in (new / "memory.events").read_text()

    # A pod that is deleted takes its cgroups with it; one that starts gets them.
    pod_dir = new.parent
    world.cluster.finish_termination("default", pod)
    creating = next(
        p["metadata"]["name"] for p in world.store.list("pods") if p["status"]["phase"] == "Pending"
    )
    assert world.cgroups.container_path("default", creating, "app") is None
    world.cluster.transition("default", creating, objects.containers_running)
    world.step(1.0)
    assert not pod_dir.exists()
    assert world.cgroups.container_path("default", creating, "app") is not None
    assert world.sampler.dropped() == {}
