"""The simulated data plane over real loopback sockets: pods serving on their own 127.x
addresses, kube-proxy on the ClusterIP following the EndpointSlices a little late, and the
load model (queueing with fewer endpoints, cold starts, a throttled sidecar)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.simulator import Store, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.dataplane import DataPlane, ServiceProfile
from exporter.simulator.endpointslices import EndpointSliceController
from exporter.simulator.kubeproxy import Backend, backends_of, usable
from exporter.simulator.latency import ColdStart, ServiceTime, quantile
from exporter.simulator.load import ContainerProfile
from exporter.simulator.objects import ContainerTemplate
from exporter.simulator.services import service
from exporter.simulator.traffic import ClientTarget, http_get
from tests.conftest import free_port, wait_for

CLUSTER_IP = "127.0.97.10"
APP = ContainerProfile("app", cpu_per_request=0.002, cpu_limit=1.0, on_path=True, serves=True)
ENVOY = ContainerProfile(
    "envoy", cpu_idle=0.03, cpu_per_request=0.0003, cpu_limit=0.25, on_path=True, passes=2,
    sidecar=True,
)  # fmt: skip
PROFILE = ServiceProfile(
    "default", "web", ServiceTime(median=0.002, sigma=0.3), nominal_rps=300, workers=4,
    cold_start=ColdStart(amplitude=3.0, decay=10.0), containers=(APP, ENVOY), shutdown_delay=2.0,
)  # fmt: skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    store: Store
    cluster: Cluster
    plane: DataPlane
    clock: FakeClock
    port: int
    pods: list[str]
    subnet: int

    def ip(self, n: int) -> str:
        return f"127.0.{self.subnet}.{n}"

    def target(self, address: str) -> ClientTarget:
        return ClientTarget("web.default.svc.cluster.local", address, self.port, "/")

    def pod(self, index: int, *, state: str = "ready", seed: int | None = None) -> Any:
        return objects.deployment_pod(
            "web",
            seed=index if seed is None else seed,
            state=state,  # type: ignore[arg-type]
            node="node-a",
            pod_ip=self.ip(index + 1),
            containers=(ContainerTemplate("app", port=self.port, readiness_probe=True),),
            sidecars=(ContainerTemplate("envoy"),),
        )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = Store()
    port = free_port()
    subnet = random.Random().randrange(100, 250)  # another test process may use loopback too
    store.create("services", service("web", cluster_ip=CLUSTER_IP, ports=(("http", port, "http"),)))
    clock = FakeClock()
    w = World(store, Cluster(store), None, clock, port, [], subnet)  # type: ignore[arg-type]
    for i in range(3):
        w.pods.append(store.create("pods", w.pod(i))["metadata"]["name"])
    controller = EndpointSliceController(store)
    controller.reconcile()
    task = asyncio.create_task(controller.run())
    # A long rule-sync delay: the tests sync kube-proxy themselves, when they mean to.
    plane = DataPlane(store, [PROFILE], sync_delay=3600, tick=0.02, clock=clock, seed=5)
    w.plane = plane
    try:
        async with plane:
            yield w
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def refused(w: World, address: str) -> bool:
    return await http_get(w.target(address), timeout=2.0) == "ConnectionRefusedError"


async def answers(w: World, address: str) -> bool:
    return await http_get(w.target(address), timeout=2.0) is None


def served(w: World) -> dict[str, int]:
    out = {}
    for name in w.pods:
        runtime = w.plane.pods.get(("default", name))
        server = runtime.server if runtime else None
        out[name] = server.served if server else 0
    return out


async def through_service(w: World, n: int) -> dict[str, int]:
    before = served(w)
    results = await asyncio.gather(*(http_get(w.target(CLUSTER_IP), 2.0) for _ in range(n)))
    assert all(r is None for r in results), results
    after = served(w)
    return {name: after[name] - before.get(name, 0) for name in after}


async def test_pods_listen_on_their_own_address_while_their_process_runs(world: World) -> None:
    w = world
    assert all([await answers(w, w.ip(i + 1)) for i in range(3)])
    # A pod whose containers are still being created has no process (and no IP yet).
    creating = w.store.create("pods", w.pod(3, state="creating"))["metadata"]["name"]
    assert await refused(w, w.ip(4))
    # Running but not yet ready: the process already listens (probes reach it).
    w.cluster.transition(
        "default", creating, lambda p, now: objects.containers_running(p, now, pod_ip=w.ip(4))
    )
    await wait_for(lambda: answers(w, w.ip(4)), "the new pod's process to listen")
    # The app is OOM-killed: its address refuses connections until the kubelet restarts it.
    first = w.pods[0]
    await w.plane.kill("default", first, "app")
    assert await refused(w, w.ip(1))
    w.cluster.restart("default", first, "app", "OOMKilled")
    await wait_for(lambda: answers(w, w.ip(1)), "the restarted container to listen")
    # A deleted pod is gone.
    w.cluster.finish_termination("default", w.pods[1])
    await wait_for(lambda: refused(w, w.ip(2)), "the deleted pod to stop listening")


async def test_a_terminating_pod_drains_then_stops_listening(world: World) -> None:
    w = world
    w.cluster.terminate("default", w.pods[0])
    await wait_for(lambda: w.plane.pod("default", w.pods[0]).terminating_at, "terminating")
    assert await answers(w, w.ip(1))  # draining: still serving
    w.clock.now += PROFILE.shutdown_delay  # its preStop and drain are over: the process exits
    await wait_for(lambda: refused(w, w.ip(1)), "the drained pod to stop listening")


async def test_the_service_address_balances_over_ready_endpoints(world: World) -> None:
    w = world
    w.cluster.transition("default", w.pods[2], objects.mark_not_ready)
    await wait_for(lambda: not w.plane.pod("default", w.pods[2]).ready, "not ready")
    await w.plane.kube_proxy.sync()
    got = await through_service(w, 60)
    assert got[w.pods[2]] == 0, "a not-ready endpoint gets no new connections"
    assert got[w.pods[0]] > 10 and got[w.pods[1]] > 10
    # No endpoint at all: the connection is reset, as a rejected one.
    for name in w.pods[:2]:
        w.cluster.transition("default", name, objects.mark_not_ready)
    await wait_for(lambda: not any(r.ready for r in w.plane.pods.values()), "none ready")
    await w.plane.kube_proxy.sync()
    assert await http_get(w.target(CLUSTER_IP), 2.0) in ("ConnectionResetError", "invalid_response")


async def test_kube_proxy_sends_to_a_terminating_endpoint_until_its_rules_sync(
    world: World,
) -> None:
    w = world
    leaving = w.pods[0]
    w.cluster.terminate("default", leaving)
    slice_says_terminating = lambda: any(  # noqa: E731
        e["conditions"]["terminating"]
        for s in w.store.list("endpointslices")
        for e in s["endpoints"]
    )
    await wait_for(slice_says_terminating, "the EndpointSlice to say terminating")
    # The API knows, kube-proxy's rules do not yet: the terminating pod still gets traffic.
    assert [b.ready for b in w.plane.kube_proxy.backends(("default", "web"))] == [True] * 3
    assert (await through_service(w, 60))[leaving] > 0
    await w.plane.kube_proxy.sync()
    assert (await through_service(w, 60))[leaving] == 0
    assert len(w.plane.kube_proxy.receiving(("default", "web"))) == 2


async def test_kube_proxy_syncs_its_rules_after_its_delay() -> None:
    store = Store()
    port = free_port()
    store.create("services", service("web", cluster_ip="127.0.97.11", ports=(("http", port, 80),)))
    store.create("pods", objects.deployment_pod("web", pod_ip="127.0.97.21"))
    controller = EndpointSliceController(store)
    controller.reconcile()
    plane = DataPlane(store, [PROFILE], sync_delay=0.05)
    async with plane:
        assert len(plane.kube_proxy.receiving(("default", "web"))) == 1
        name = store.list("pods")[0]["metadata"]["name"]
        Cluster(store).transition("default", name, objects.mark_not_ready)
        controller.reconcile()
        await wait_for(lambda: not plane.kube_proxy.receiving(("default", "web")), "a sync")


async def test_fewer_ready_endpoints_load_each_pod_more(world: World) -> None:
    w = world

    def utilisation(name: str) -> float:
        conditions = w.plane.pod("default", name).conditions
        assert conditions is not None
        return conditions.utilisation

    three = utilisation(w.pods[0])
    assert w.plane.pod("default", w.pods[0]).arrival_rate == pytest.approx(100)
    w.cluster.transition("default", w.pods[2], objects.mark_not_ready)
    await wait_for(lambda: not w.plane.pod("default", w.pods[2]).ready, "not ready")
    await w.plane.kube_proxy.sync()
    assert w.plane.pod("default", w.pods[0]).arrival_rate == pytest.approx(150)
    assert utilisation(w.pods[0]) > 1.4 * three
    assert w.plane.pod("default", w.pods[2]).arrival_rate == 0


async def test_a_new_pod_starts_cold_and_warms_up(world: World) -> None:
    w = world
    name = w.store.create("pods", w.pod(3, state="running"))["metadata"]["name"]
    await wait_for(lambda: ("default", name) in w.plane.pods, "the new pod")
    runtime = w.plane.pod("default", name)
    w.cluster.transition("default", name, objects.mark_ready)
    await wait_for(lambda: runtime.ready_at is not None, "ready")

    def slowdown() -> float:
        w.plane.compute()
        assert runtime.conditions is not None
        return runtime.conditions.slowdown

    assert slowdown() == pytest.approx(4.0)  # 1 + amplitude, just ready
    w.clock.now += PROFILE.cold_start.decay
    assert slowdown() == pytest.approx(1 + 3 / 2.718281828, rel=1e-6)
    w.clock.now += 10 * PROFILE.cold_start.decay
    assert slowdown() == pytest.approx(1.0, abs=1e-3)
    # The pods that ran before the data plane started are warm.
    assert w.plane.pod("default", w.pods[0]).conditions.slowdown == 1.0  # type: ignore[union-attr]


async def test_a_sidecar_burst_throttles_it_and_stalls_requests_through_it(world: World) -> None:
    w = world
    runtime = w.plane.pod("default", w.pods[0])
    calm = runtime.conditions
    assert calm is not None and runtime.loads["envoy"].throttled_share < 0.05
    w.plane.burst("default", w.pods[0], "envoy", 2.0)
    envoy = runtime.loads["envoy"]
    assert envoy.usage == pytest.approx(0.25) and envoy.throttled_share > 0.99
    assert envoy.stall > 0.8 and envoy.psi_cpu_some == envoy.stall
    assert runtime.loads["app"].stall < 0.01  # the app itself is not throttled
    bursting = runtime.conditions
    # A request crosses the proxy twice (in and out): two chances to meet a throttled period.
    assert bursting is not None and bursting.stalls.count(envoy.stall) == 2

    def p99(c: Any) -> float:
        rng = random.Random(1)
        return quantile([c.draw(rng) for _ in range(5000)], 0.99)

    assert p99(bursting) > p99(calm) + 0.05
    w.plane.burst("default", w.pods[0], "envoy", 0.0)
    assert runtime.loads["envoy"].throttled_share < 0.05


def test_backends_merge_slices_and_fall_back_to_terminating() -> None:
    def endpoint(name: str, ip: str, ready: bool, serving: bool, terminating: bool) -> Any:
        return {
            "addresses": [ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": name},
        }

    ports = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    slices = [
        {"ports": ports, "endpoints": [endpoint("a", "127.0.10.1", True, True, False)]},
        {"ports": ports, "endpoints": [endpoint("b", "127.0.10.2", False, True, True)]},
        {"ports": [{"name": "metrics", "port": 9090}], "endpoints": [
            endpoint("c", "127.0.10.3", True, True, False)]},
    ]  # fmt: skip
    backends = backends_of(slices, "http")
    assert [(b.pod, b.port) for b in backends] == [("default/a", 8080), ("default/b", 8080)]
    assert [b.pod for b in usable(backends)] == ["default/a"]
    # Only terminating ones left: kube-proxy still uses those that serve.
    assert [b.pod for b in usable(backends[1:])] == ["default/b"]
    gone = Backend("default/d", "127.0.10.4", 8080, ready=False, serving=False, terminating=True)
    assert usable([gone]) == []
