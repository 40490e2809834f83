"""The demo's cluster: a shop of four opted-in Services on three nodes, the kubelet- and
controller-like choreography of its pods, and the scripted scenario that disrupts it
(docs/demo.md). `exporter.demo` runs it with the real agent; the tests run it too.

Times are scenario seconds: a `ScenarioClock` runs `speed` times faster than real time.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from exporter.core.services import (
    ANNOTATION_INTERVAL,
    ANNOTATION_PATH,
    ANNOTATION_PROTOCOL,
    ANNOTATION_SLO,
    MIN_INTERVAL,
)
from exporter.simulator import objects
from exporter.simulator.apiserver import ApiServer
from exporter.simulator.cluster import Cluster
from exporter.simulator.dataplane import DataPlane, ServiceProfile
from exporter.simulator.latency import ColdStart, ServiceTime
from exporter.simulator.load import ContainerProfile, MiB
from exporter.simulator.nodecgroups import NodeCgroups
from exporter.simulator.objects import ContainerTemplate
from exporter.simulator.services import service as service_object

AGENT_NODE = "node-1"
DRAINED_NODE = "node-3"
NODES = ("node-1", "node-2", "node-3")
NAMESPACE = "shop"
DEFAULT_PORT = 8080
#: The scripted part, in scenario seconds.
SCRIPT_SECONDS = 400.0
GiB = 1 << 30


# -- the shop ------------------------------------------------------------------------------

#: Thread hand-offs per checkout request (its app's `wakeups`): under CPU contention each
#: may wait for a core, so checkout feels a noisy neighbour far more than the others.
CHECKOUT_WAKEUPS = 16
#: The noisy neighbour: a batch Job's pod on node-1 with a CPU request of 100m and no
#: limit, whose job starts 20 busy threads for NEIGHBOUR_SECONDS. node-1's 8 cores are then
#: wanted 2.7 times over: CFS gives the Services' containers what they want (their
#: requests weigh more) and the batch job the rest, but every thread of the node waits for
#: a core about 60% of the time (its CPU PSI).
NEIGHBOUR_NAMESPACE, NEIGHBOUR_JOB, NEIGHBOUR_CONTAINER = "batch", "cruncher", "cruncher"
NEIGHBOUR_CORES = 20.0
NEIGHBOUR_SECONDS = 30.0


@dataclass(frozen=True)
class DemoService:
    """One opted-in Service of the shop, its workload and where its pods run."""

    profile: ServiceProfile
    kind: str  # "Deployment" | "StatefulSet"
    nodes: tuple[str, ...]  # one replica per entry
    cluster_ip: str
    path: str
    slo: str

    @property
    def name(self) -> str:
        return self.profile.service


def _app(
    cpu: float, per_request: float, limit: float, memory: int, mem_limit: int, *, wakeups: int = 1
) -> Any:
    return ContainerProfile(
        "app",
        cpu_idle=cpu,
        cpu_per_request=per_request,
        cpu_request=limit / 2,
        cpu_limit=limit,
        memory=memory,
        memory_limit=mem_limit,
        on_path=True,
        serves=True,
        wakeups=wakeups,
    )


SHOP: tuple[DemoService, ...] = (
    DemoService(
        ServiceProfile(
            NAMESPACE,
            "checkout",
            ServiceTime(median=0.012, sigma=0.45, slow_probability=0.002, slow_factor=4),
            nominal_rps=300,
            workers=8,
            # A JVM-like service: its first requests are 4x slower (JIT, connection pools),
            # and a request is handed between many threads (acceptor, workers, the async
            # clients' callbacks), each of which waits for a core when the node has none.
            cold_start=ColdStart(amplitude=3.0, decay=20.0),
            containers=(_app(0.02, 0.003, 1.0, 300 * MiB, 512 * MiB, wakeups=CHECKOUT_WAKEUPS),),
            shutdown_delay=0.5,
        ),
        "Deployment",
        ("node-1", "node-2", "node-2"),
        "127.0.96.10",
        "/api/checkout/health",
        "100ms",
    ),
    DemoService(
        ServiceProfile(
            NAMESPACE,
            "db",
            ServiceTime(median=0.008, sigma=0.5, slow_probability=0.002, slow_factor=4),
            nominal_rps=600,
            workers=12,
            # A database with a cold buffer cache: reads go to disk until it is warm.
            cold_start=ColdStart(amplitude=3.0, decay=15.0),
            containers=(
                ContainerProfile(
                    "db",
                    cpu_idle=0.05,
                    cpu_per_request=0.002,
                    cpu_request=1.0,
                    cpu_limit=2.0,
                    memory=1 * GiB,
                    memory_limit=2 * GiB,
                    on_path=True,
                    serves=True,
                ),
            ),
            shutdown_delay=2.0,
        ),
        "StatefulSet",
        ("node-1", "node-2", "node-3"),
        "127.0.96.11",
        "/health",
        "50ms",
    ),
    DemoService(
        ServiceProfile(
            NAMESPACE,
            "recommend",
            ServiceTime(median=0.008, sigma=0.4, slow_probability=0.002, slow_factor=4),
            nominal_rps=300,
            workers=6,
            cold_start=ColdStart(amplitude=2.0, decay=12.0),
            containers=(
                _app(0.02, 0.002, 1.0, 400 * MiB, 768 * MiB),
                # An Envoy-like proxy on the request path: requests wait when it is throttled.
                ContainerProfile(
                    "envoy",
                    cpu_idle=0.03,
                    cpu_per_request=0.0003,
                    cpu_request=0.1,
                    cpu_limit=0.25,
                    memory=60 * MiB,
                    memory_limit=128 * MiB,
                    on_path=True,
                    hop=0.00015,
                    passes=2,
                    sidecar=True,
                ),
            ),
        ),
        "Deployment",
        ("node-1", "node-2"),
        "127.0.96.12",
        "/api/recommendations?user=probe",
        "80ms",
    ),
    DemoService(
        ServiceProfile(
            NAMESPACE,
            "cart",
            ServiceTime(median=0.015, sigma=0.45, slow_probability=0.002, slow_factor=4),
            nominal_rps=200,
            workers=6,
            containers=(_app(0.02, 0.002, 1.0, 200 * MiB, 512 * MiB),),
        ),
        "Deployment",
        ("node-1", "node-2"),
        "127.0.96.13",
        "/api/cart/health",
        "100ms",
    ),
)
UNAFFECTED = "cart"
#: Extra CPU the recommend pod's proxy sidecar wants during its burst (a config push
#: recomputed by many threads): about 8 times its 250m limit.
SIDECAR_BURST_CORES = 2.0
NODE_CORES = {"node-1": 8.0, "node-2": 8.0, "node-3": 8.0}
NODE_ZONES = {"node-1": "zone-a", "node-2": "zone-b", "node-3": "zone-a"}
#: What recommend's app uses when the kubelet evicts it from node-1 under memory pressure
#: (its request is 400Mi): the message names it, as the kubelet's does.
EVICTED_USAGE = {"app": "700Mi"}
#: The soft eviction threshold's grace period: node-1 is under MemoryPressure this long
#: (scenario seconds) before its kubelet evicts. It also lets recommend's baseline, which
#: lost its sidecar burst and recovery, grow back past a p99's 299 probes at 7x.
EVICTION_GRACE = 15.0


def _cores(value: float) -> str:
    return f"{round(value * 1000)}m"


def _mebibytes(value: int) -> str:
    return f"{value // MiB}Mi"


def container_templates(
    profile: ServiceProfile, port: int
) -> tuple[list[ContainerTemplate], list[ContainerTemplate]]:
    """(containers, native sidecars) of a pod of `profile`, with its requests and limits."""
    containers: list[ContainerTemplate] = []
    sidecars: list[ContainerTemplate] = []
    for c in profile.containers:
        limits = {}
        if c.cpu_limit is not None:
            limits["cpu"] = _cores(c.cpu_limit)
        if c.memory_limit is not None:
            limits["memory"] = _mebibytes(c.memory_limit)
        template = ContainerTemplate(
            name=c.name,
            port=port if c.serves else None,
            readiness_probe=c.serves,
            requests={"cpu": _cores(c.cpu_request), "memory": _mebibytes(c.memory)},
            limits=limits,
        )
        (sidecars if c.sidecar else containers).append(template)
    return containers, sidecars


def _duration_text(seconds: float) -> str:
    """A Go duration for an annotation: 250ms, 1s."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """The pods' and Services' port: `preferred` unless something on this machine already
    listens on it (a wildcard listener would take it on every loopback address), else a
    free one. 0 picks a free one."""
    if preferred:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- time ----------------------------------------------------------------------------------


class ScenarioClock:
    """Scenario time: real time since the start multiplied by `speed`."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.restart()

    def restart(self) -> None:
        """Scenario time 0 is now."""
        self._t0_monotonic = time.monotonic()
        self.t0_wall = time.time()

    def now(self) -> float:
        return (time.monotonic() - self._t0_monotonic) * self.speed

    def of_wall(self, wall: float) -> float:
        return (wall - self.t0_wall) * self.speed

    def wall_of(self, t: float) -> float:
        return self.t0_wall + t / self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds / self.speed))

    async def until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, (t - self.now()) / self.speed))


# -- the cluster -----------------------------------------------------------------------------


class DemoCluster:
    """The shop's objects in the API, and kubelet/controller-like choreography of its pods
    in scenario time: pods start (created, containers running, ready), stop gracefully,
    are evicted, restart after an OOM kill."""

    def __init__(self, api: ApiServer, clock: ScenarioClock, port: int) -> None:
        self.api = api
        self.store = api.store
        self.cluster = Cluster(api.store)
        self.clock = clock
        self.port = port
        self._next_ip = {node: 10 for node in NODES}
        self.pods: dict[str, list[str]] = {s.name: [] for s in SHOP}  # current, by Service
        self.dataplane: DataPlane | None = None
        self.cgroups: NodeCgroups | None = None

    def pod_ip(self, node: str) -> str:
        """The next address of `node`'s pod range: 127.0.<10 + node number>.<n>."""
        self._next_ip[node] += 1
        return f"127.0.{10 + NODES.index(node) + 1}.{self._next_ip[node]}"

    def service_of(self, name: str) -> DemoService:
        for s in SHOP:
            if s.name == name:
                return s
        raise KeyError(name)

    def build_pod(
        self, s: DemoService, node: str, *, index: int, revision: int = 1, **options: Any
    ) -> dict[str, Any]:
        containers, sidecars = container_templates(s.profile, self.port)
        common: dict[str, Any] = {
            "namespace": NAMESPACE,
            "node": node,
            "containers": containers,
            "sidecars": sidecars,
            "grace_period_seconds": 30,
            **options,
        }
        if s.kind == "StatefulSet":
            return objects.statefulset_pod(s.name, index, service_name=s.name, **common)
        return objects.deployment_pod(s.name, revision=revision, seed=index, **common)

    def seed(self) -> None:
        """Services and the pods running before the agent starts (its first list is silent).

        Every Service is probed at the shortest interval its annotation may ask for, at
        every speed: a baseline needs a few hundred probes to bound a p99 (docs/demo.md),
        and the demo's windows are short in real time."""
        interval = MIN_INTERVAL
        now = time.time()
        for node in NODES:  # registered, ready and healthy; the agent watches node-1's
            self.store.create("nodes", objects.node(node, zone=NODE_ZONES[node], now=now - 86400))
        for s in SHOP:
            self.store.create(
                "services",
                service_object(
                    s.name,
                    namespace=NAMESPACE,
                    cluster_ip=s.cluster_ip,
                    ports=(("http", self.port, "http"),),
                    annotations={
                        ANNOTATION_PROTOCOL: "http",
                        ANNOTATION_PATH: s.path,
                        ANNOTATION_INTERVAL: _duration_text(interval),
                        ANNOTATION_SLO: s.slo,
                    },
                ),
            )
            for index, node in enumerate(s.nodes):
                pod = self.build_pod(
                    s, node, index=index, pod_ip=self.pod_ip(node), created=now - 3600
                )
                self.pods[s.name].append(self.store.create("pods", pod)["metadata"]["name"])
        for node in NODES:
            for daemonset in ("kube-proxy", "node-exporter"):
                self.store.create(
                    "pods",
                    objects.daemonset_pod(
                        daemonset,
                        namespace="kube-system",
                        node=node,
                        containers=(daemonset,),
                        created=now - 7200,
                    ),
                )
        # A batch job on the node that will be drained (not opted in).
        self.store.create(
            "pods",
            objects.job_pod("nightly-report", namespace="batch", node=DRAINED_NODE, created=now),
        )
        # The noisy neighbour's pod on the agent's node, idle until the script starts it.
        cruncher = ContainerTemplate(
            NEIGHBOUR_CONTAINER, requests={"cpu": "100m", "memory": "64Mi"}
        )
        self.store.create(
            "pods",
            objects.job_pod(
                NEIGHBOUR_JOB, namespace=NEIGHBOUR_NAMESPACE, node=AGENT_NODE,
                containers=(cruncher,), created=now - 600,
            ),
        )  # fmt: skip

    def neighbour_pod(self) -> str:
        """The name of the noisy neighbour's pod on the agent's node."""
        return next(
            str(p["metadata"]["name"]) for p in self.store.list("pods", NEIGHBOUR_NAMESPACE)
            if p["spec"].get("nodeName") == AGENT_NODE
            and p["metadata"]["labels"].get("job-name") == NEIGHBOUR_JOB
        )  # fmt: skip

    # -- pod choreography (scenario seconds) -------------------------------------------

    async def start_pod(self, pod: dict[str, Any], *, pull: float, warmup: float) -> str:
        """The kubelet takes a bound pod: sandbox and image pull, containers running (the
        process listens), readiness passes after `warmup`."""
        created = self.cluster.add(objects.containers_creating(pod, time.time()))
        ns, name = created["metadata"]["namespace"], created["metadata"]["name"]
        ip = self.pod_ip(created["spec"]["nodeName"])
        await self.clock.sleep(pull)
        self.cluster.transition(
            ns, name, lambda p, now: objects.containers_running(p, now, pod_ip=ip)
        )
        await self.clock.sleep(warmup)
        self.cluster.transition(ns, name, objects.mark_ready)
        return str(name)

    async def stop_pod(
        self, namespace: str, name: str, *, grace: float, disruption: str | None = None
    ) -> None:
        """Graceful deletion (a rollout, a drain): terminating, the process drains and
        exits, and the kubelet removes the pod `grace` seconds later."""
        self.cluster.terminate(namespace, name, disruption=disruption)
        await self.clock.sleep(grace)
        self.cluster.finish_termination(namespace, name)

    async def oom_kill(self, name: str, container: str, *, restart_after: float) -> None:
        """The kernel OOM-kills the container: memory.events oom_kill grows, the process dies,
        readiness fails, and the kubelet restarts it (reason OOMKilled)."""
        assert self.dataplane is not None
        if self.cgroups is not None:
            self.cgroups.oom_kill(NAMESPACE, name, container)
        await self.dataplane.kill(NAMESPACE, name, container)
        self.cluster.transition(NAMESPACE, name, objects.mark_not_ready)
        await self.clock.sleep(restart_after)
        self.cluster.restart(NAMESPACE, name, container, "OOMKilled")


# -- the scenario --------------------------------------------------------------------------


@dataclass(frozen=True)
class Disruption:
    """One scripted disruption: when it starts (scenario seconds), what it does, and the
    cause the agent should report for the Service it disrupts."""

    at: float
    service: str
    kind: str
    expected_cause: str
    description: str
    act: Callable[[], Awaitable[None]]


class Scenario:
    """The script (docs/demo.md has the timeline)."""

    def __init__(self, demo: DemoCluster) -> None:
        self.demo = demo
        self.clock = demo.clock
        self.started: dict[str, float] = {}  # disruption kind -> wall time it began

    def disruptions(self) -> list[Disruption]:
        return [
            Disruption(
                120, "checkout", "rollout", "rollout",
                "rolling update of checkout to a new revision (maxSurge 1, maxUnavailable 0)",
                self.rollout,
            ),
            Disruption(
                170, "db", "oom_kill", "restart",
                "db-0's db container leaks memory and is OOM-killed, then restarted",
                self.oom,
            ),
            Disruption(
                240, "recommend", "sidecar_burst", "resource_pressure",
                "a mesh config push: recommend's envoy sidecars want 8x their CPU limit for 50s",
                self.sidecar_burst,
            ),
            Disruption(
                300, "db", "drain", "reschedule",
                "node-3 is drained: db-2 is evicted and recreated on node-1",
                self.drain,
            ),
            Disruption(
                360, "recommend", "node_pressure", "node",
                "node-1 runs short of memory: 15 s later its kubelet evicts recommend's pod "
                "there for memory; the ReplicaSet recreates it on node-2",
                self.node_pressure,
            ),
            Disruption(
                290, "checkout", "noisy_neighbour", "resource_pressure",
                "a batch job on node-1 (100m CPU request, no limit) starts 20 busy threads for "
                "30 s: every thread of node-1 waits for a core, checkout's at each of its "
                "many hand-offs",
                self.noisy_neighbour,
            ),
        ]  # fmt: skip

    async def rollout(self) -> None:
        d = self.demo
        s = d.service_of("checkout")
        old = list(d.pods["checkout"])
        removals: list[asyncio.Task[None]] = []
        for index, name in enumerate(old):
            node = d.store.get("pods", NAMESPACE, name)["spec"]["nodeName"]
            pod = d.build_pod(s, node, index=100 + index, revision=2, state="scheduled")
            new = await d.start_pod(pod, pull=3, warmup=6)
            d.pods["checkout"].append(new)
            d.pods["checkout"].remove(name)
            # The new pod is ready: the old ReplicaSet scales down by one, and the next new
            # pod is created while the old one drains.
            removals.append(asyncio.create_task(d.stop_pod(NAMESPACE, name, grace=3)))
        await asyncio.gather(*removals)

    async def oom(self) -> None:
        d = self.demo
        assert d.dataplane is not None
        name = "db-0"
        limit = d.service_of("db").profile.containers[0].memory_limit
        assert limit is not None
        # A slow leak for 12 s, pressing on the limit (reclaim, memory.events max) ...
        d.dataplane.grow_memory(
            NAMESPACE, name, "db", int(limit * 0.995), seconds=12 / d.clock.speed
        )
        await self.clock.sleep(14)
        # ... until the kernel kills it.
        await d.oom_kill(name, "db", restart_after=2)
        await self.clock.sleep(7)
        d.cluster.transition(NAMESPACE, name, objects.mark_ready)

    async def sidecar_burst(self) -> None:
        d = self.demo
        assert d.dataplane is not None
        # A mesh configuration push: every recommend pod's envoy recomputes its config at
        # once. The agent on node-1 sees the cgroups of its own pod only.
        pods = list(d.pods["recommend"])
        for pod in pods:
            d.dataplane.burst(NAMESPACE, pod, "envoy", SIDECAR_BURST_CORES)
        await self.clock.sleep(50)
        for pod in pods:
            d.dataplane.burst(NAMESPACE, pod, "envoy", 0.0)

    async def noisy_neighbour(self) -> None:
        d = self.demo
        assert d.dataplane is not None
        pod = d.neighbour_pod()
        d.dataplane.burst(NEIGHBOUR_NAMESPACE, pod, NEIGHBOUR_CONTAINER, NEIGHBOUR_CORES)
        await self.clock.sleep(NEIGHBOUR_SECONDS)
        d.dataplane.burst(NEIGHBOUR_NAMESPACE, pod, NEIGHBOUR_CONTAINER, 0.0)

    async def drain(self) -> None:
        d = self.demo
        s = d.service_of("db")
        # kubectl drain: every pod of the node but DaemonSets' goes through the Eviction API.
        job = next(
            p["metadata"]["name"] for p in d.store.list("pods", "batch")
            if p["spec"].get("nodeName") == DRAINED_NODE
        )  # fmt: skip
        await asyncio.gather(
            d.stop_pod("batch", job, grace=1, disruption="EvictionByEvictionAPI"),
            d.stop_pod(NAMESPACE, "db-2", grace=6, disruption="EvictionByEvictionAPI"),
        )
        # The StatefulSet controller recreates db-2 once the old one is gone; the scheduler
        # puts it on node-1; its volume attaches, the database starts and warms up.
        pod = d.build_pod(s, AGENT_NODE, index=2, seed=1, state="scheduled")
        await d.start_pod(pod, pull=5, warmup=8)

    async def node_pressure(self) -> None:
        d = self.demo
        s = d.service_of("recommend")
        victim = next(
            p for p in d.pods["recommend"]
            if d.store.get("pods", NAMESPACE, p)["spec"]["nodeName"] == AGENT_NODE
        )  # fmt: skip
        # node-1 runs short of memory: its kubelet reports MemoryPressure at the soft eviction
        # threshold (the node controller taints it memory-pressure), and once the threshold's
        # grace period is over evicts the pod using most over its request.
        d.cluster.node_pressure(AGENT_NODE, "MemoryPressure")
        await self.clock.sleep(EVICTION_GRACE)
        d.cluster.evict(NAMESPACE, victim, "memory", usage=EVICTED_USAGE)
        d.pods["recommend"].remove(victim)
        # Its ReplicaSet replaces it at once; the scheduler keeps off the tainted node-1.
        pod = d.build_pod(s, "node-2", index=200, state="scheduled")
        replacement = asyncio.create_task(d.start_pod(pod, pull=3, warmup=5))
        await self.clock.sleep(8)
        # The memory is reclaimed: the pressure (and the taint) clears, after a transition
        # period much shorter than the kubelet's default 5 minutes.
        d.cluster.node_pressure(AGENT_NODE, "MemoryPressure", under=False)
        d.pods["recommend"].append(await replacement)
