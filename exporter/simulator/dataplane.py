"""The simulated cluster's data plane: every pod of a profiled Service serves HTTP on its own
loopback address (its `status.podIP`), with the latency model of `latency` and the
resource model of `load`, and kube-proxy serves the Services' ClusterIPs.

`DataPlane` follows the store. A pod listens while its serving container runs: from the
kubelet starting it (before it is Ready, as a real process does) until it is killed, its
pod is gone, or `shutdown_delay` seconds after it started terminating (a graceful drain);
then its address refuses connections. Every `tick` seconds it recomputes, per pod, the
share of its Service's nominal load that kube-proxy's programmed rules send it, its
containers' CPU and memory (cold start costs CPU, bursts add some, quotas throttle), the
node's contention (its cores shared by the containers' CPU requests, as CFS weights them:
a container wanting more than its share slows, and every thread of the node waits for a
core part of the time), and from those the conditions the pod's next requests meet.

The scenario's knobs are `kill` (a container's process dies), `burst` (a container does
extra CPU work: a sidecar's config push, a batch job's threads on a node without a CPU
limit) and `grow_memory` (a container's working set climbs, e.g. to an OOM kill).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.simulator.endpointslices import selector_matches
from exporter.simulator.informer import StoreFollower
from exporter.simulator.kubeproxy import KubeProxy, stop_listening
from exporter.simulator.latency import ColdStart, RequestConditions, ServiceTime
from exporter.simulator.load import ContainerLoad, ContainerProfile, MiB, container_load, contend
from exporter.simulator.store import Store

log = logging.getLogger("tailwatch.simulator.dataplane")

PodKey = tuple[str, str]  # (namespace, name)
ServiceKey = tuple[str, str]

#: A container the profiles do not describe (a DaemonSet's agent, a batch job): nearly idle.
IDLE = ContainerProfile("", cpu_idle=0.005, memory=24 * MiB)


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    """How the pods behind one Service behave.

    `nominal_rps`: the Service's own traffic (the many clients a demo does not run), split
    over the endpoints kube-proxy sends to; it drives queueing and CPU. `workers`: requests
    one pod serves at once. `containers`: the pods' containers by name; the one with
    `serves=True` listens on the pod's port. `shutdown_delay`: how long a terminating pod
    keeps serving (its preStop hook and drain) before its process exits.
    """

    namespace: str
    service: str
    service_time: ServiceTime
    nominal_rps: float = 100.0
    workers: int = 4
    cold_start: ColdStart = field(default_factory=ColdStart)
    containers: tuple[ContainerProfile, ...] = (
        ContainerProfile("app", cpu_per_request=0.002, serves=True, on_path=True),
    )
    shutdown_delay: float = 0.5

    @property
    def key(self) -> ServiceKey:
        return (self.namespace, self.service)

    def container(self, name: str) -> ContainerProfile:
        for profile in self.containers:
            if profile.name == name:
                return profile
        return IDLE

    def compressed(self, speed: float) -> ServiceProfile:
        """The profile with its durations divided by `speed` (a time-compressed scenario:
        cold starts and drains pass faster; request latencies stay what they are)."""
        return replace(
            self,
            cold_start=replace(self.cold_start, decay=self.cold_start.decay / speed),
            shutdown_delay=self.shutdown_delay / speed,
        )

    @property
    def serving(self) -> ContainerProfile | None:
        for profile in self.containers:
            if profile.serves:
                return profile
        return None


@dataclass(slots=True)
class MemoryRamp:
    """A working set moving linearly from `start` to `end` bytes over [t0, t0 + seconds]."""

    start: int
    end: int
    t0: float
    seconds: float

    def at(self, now: float) -> int:
        if self.seconds <= 0 or now >= self.t0 + self.seconds:
            return self.end
        done = max(0.0, now - self.t0) / self.seconds
        return int(self.start + (self.end - self.start) * done)


def _seed_of(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


class PodServer:
    """An HTTP/1.1 server on one pod address: each request waits `latency()` seconds, then
    gets `200 OK` and `Connection: close`."""

    def __init__(self, address: str, port: int, latency: Callable[[], float], name: str) -> None:
        self.address = address
        self.port = port
        self.latency = latency
        self.name = name
        self.served = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.address, self.port, reuse_address=True
        )

    async def close(self, *, abort: bool = False) -> None:
        """Stop listening (new connections are refused). In-flight requests finish, unless
        `abort`: the process died, and their connections are reset."""
        if self._server is not None:
            server, self._server = self._server, None
            await stop_listening(server)
        if abort:
            for task in list(self._handlers):
                task.cancel()
        if abort and self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            with contextlib.suppress(OSError, EOFError, asyncio.LimitOverrunError):
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(self.latency())
                body = f"{self.name}\n".encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
                self.served += 1
        except asyncio.CancelledError:
            # The process died mid-request: the peer sees a reset. The handler task ends
            # here rather than cancelled (asyncio's stream callback logs cancelled ones).
            writer.transport.abort()
        finally:
            self._handlers.discard(task)
            writer.close()


class PodRuntime:
    """What the data plane knows of one pod: from the API, the scenario's knobs, and the
    model's latest answers."""

    def __init__(self, key: PodKey, uid: str, seed: int, *, warm: bool) -> None:
        self.key = key
        self.uid = uid
        self.rng = random.Random(_seed_of(seed, *key, uid))
        self.warm = warm  # running before the data plane started: no cold start
        self.node = ""
        self.ip = ""
        self.port: int | None = None
        self.phase = ""
        self.profile: ServiceProfile | None = None
        self.container_ids: dict[str, str] = {}
        self.running: set[str] = set()
        self.containers: tuple[str, ...] = ()
        self.ready = False
        self.ready_at: float | None = None
        self.terminating_at: float | None = None
        self.killed: set[str] = set()
        self.bursts: dict[str, float] = {}
        self.memory: dict[str, MemoryRamp] = {}
        self.server: PodServer | None = None
        self.arrival_rate = 0.0
        self.loads: dict[str, ContainerLoad] = {}
        self.conditions: RequestConditions | None = None
        self.phase_offset = (_seed_of("memory", *key) % 1000) / 1000 * 2 * math.pi

    @property
    def name(self) -> str:
        return f"{self.key[0]}/{self.key[1]}"

    def serving_container(self) -> str | None:
        serving = self.profile.serving if self.profile else None
        return serving.name if serving is not None else None

    def draw_latency(self) -> float:
        conditions = self.conditions
        if conditions is None:
            return 0.0
        return conditions.draw(self.rng)


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]


def _port_of(pod: Mapping[str, Any], container: str | None) -> int | None:
    specs = pod.get("spec", {}).get("containers", [])
    for spec in specs:
        if (container is None or spec["name"] == container) and spec.get("ports"):
            return int(spec["ports"][0]["containerPort"])
    return None


class DataPlane:
    """Pod servers and kube-proxy for the Services in `profiles`, following `store`."""

    def __init__(
        self,
        store: Store,
        profiles: Iterable[ServiceProfile],
        *,
        seed: int = 0,
        node_cores: Mapping[str, float] | None = None,
        default_cores: float = 4.0,
        sync_delay: float = 1.0,
        tick: float = 0.1,
        memory_period: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.profiles = {p.key: p for p in profiles}
        self.seed = seed
        self.node_cores = dict(node_cores or {})
        self.default_cores = default_cores
        self.tick = tick
        self.memory_period = memory_period
        self.clock = clock
        self.kube_proxy = KubeProxy(
            store,
            sync_delay=sync_delay,
            seed=seed,
            include=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"]) in self.profiles,
        )
        self.kube_proxy.listeners.append(self.compute)
        self.pods: dict[PodKey, PodRuntime] = {}
        self.contention: dict[str, float] = {}
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.kube_proxy.start()
        await self.refresh()
        self._started = True
        self._tasks = [
            asyncio.create_task(self._follow(), name="dataplane-follow"),
            asyncio.create_task(self._ticker(), name="dataplane-tick"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for runtime in self.pods.values():
            if runtime.server is not None:
                await runtime.server.close(abort=True)
                runtime.server = None
        await self.kube_proxy.close()

    async def __aenter__(self) -> DataPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _follow(self) -> None:
        with StoreFollower(self.store, ("pods", "services")) as follower:
            while True:
                await follower.changes()
                await self.refresh()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self.compute()
            await self._reconcile_servers()

    # -- following the API -----------------------------------------------------------

    def _profile_of(
        self, pod: Mapping[str, Any], selectors: Mapping[ServiceKey, Any]
    ) -> ServiceProfile | None:
        namespace = pod["metadata"]["namespace"]
        for key, selector in selectors.items():
            if key[0] == namespace and selector_matches(selector, pod["metadata"].get("labels")):
                return self.profiles[key]
        return None

    async def refresh(self) -> None:
        """Bring the pods' runtime state in line with the API, then their servers."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        now = self.clock()
        selectors: dict[ServiceKey, Any] = {}
        for service in _stored(self.store, "services"):
            key = (service["metadata"]["namespace"], service["metadata"]["name"])
            selector = (service.get("spec") or {}).get("selector")
            if key in self.profiles and selector:
                selectors[key] = selector
        seen: set[PodKey] = set()
        for pod in _stored(self.store, "pods"):
            meta = pod["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            runtime = self.pods.get(key)
            if runtime is None or runtime.uid != meta["uid"]:
                if runtime is not None and runtime.server is not None:
                    await runtime.server.close(abort=True)
                runtime = PodRuntime(key, meta["uid"], self.seed, warm=not self._started)
                self.pods[key] = runtime
            self._update(runtime, pod, self._profile_of(pod, selectors), now)
        for key in set(self.pods) - seen:
            gone = self.pods.pop(key)
            if gone.server is not None:
                await gone.server.close(abort=True)
        self.compute()
        await self._reconcile_servers_locked()

    def _update(
        self,
        runtime: PodRuntime,
        pod: Mapping[str, Any],
        profile: ServiceProfile | None,
        now: float,
    ) -> None:
        status = pod.get("status") or {}
        runtime.profile = profile
        runtime.node = str(pod.get("spec", {}).get("nodeName") or "")
        runtime.ip = str(status.get("podIP") or "")
        runtime.phase = str(status.get("phase") or "")
        runtime.port = _port_of(pod, runtime.serving_container())
        ids: dict[str, str] = {}
        running: set[str] = set()
        for cs in _statuses(pod):
            ids[cs["name"]] = str(cs.get("containerID") or "")
            if "running" in (cs.get("state") or {}):
                running.add(cs["name"])
        for name, cid in ids.items():
            if runtime.container_ids.get(name) not in (None, cid):
                # A new container (a restart): a new process, with nothing of the old one.
                runtime.killed.discard(name)
                runtime.memory.pop(name, None)
                runtime.bursts.pop(name, None)
        runtime.container_ids = ids
        runtime.running = running
        runtime.containers = tuple(ids)
        ready = _ready(pod)
        if ready and not runtime.ready:
            runtime.ready_at = None if runtime.warm else now
        runtime.ready = ready
        if not ready and not runtime.warm:
            runtime.ready_at = None
        if not ready:
            runtime.warm = False  # once not ready, the next ready is a cold one
        if pod["metadata"].get("deletionTimestamp") and runtime.terminating_at is None:
            runtime.terminating_at = now

    def _should_listen(self, runtime: PodRuntime, now: float) -> bool:
        serving = runtime.serving_container()
        if not runtime.ip or runtime.port is None or serving is None:
            return False
        if runtime.phase != "Running" or serving not in runtime.running:
            return False
        if serving in runtime.killed:
            return False
        if runtime.terminating_at is not None and runtime.profile is not None:
            return now < runtime.terminating_at + runtime.profile.shutdown_delay
        return True

    async def _reconcile_servers(self) -> None:
        async with self._lock:
            await self._reconcile_servers_locked()

    async def _reconcile_servers_locked(self) -> None:
        now = self.clock()
        for runtime in list(self.pods.values()):
            want = self._should_listen(runtime, now)
            if want and runtime.server is None:
                assert runtime.port is not None
                server = PodServer(runtime.ip, runtime.port, runtime.draw_latency, runtime.key[1])
                try:
                    await server.start()
                except OSError as exc:
                    log.warning("pod %s cannot listen on %s: %s", runtime.name, runtime.ip, exc)
                    continue
                runtime.server = server
            elif not want and runtime.server is not None:
                server, runtime.server = runtime.server, None
                # A killed process resets its connections; a drained one finishes them.
                await server.close(abort=runtime.serving_container() in runtime.killed)

    # -- the model -------------------------------------------------------------------

    def _working_set(self, runtime: PodRuntime, profile: ContainerProfile, now: float) -> int:
        ramp = runtime.memory.get(profile.name)
        if ramp is not None:
            return ramp.at(now)
        # A working set that breathes with caches and garbage collection (+-3%).
        wave = math.sin(2 * math.pi * now / self.memory_period + runtime.phase_offset)
        return int(profile.memory * (1 + 0.03 * wave))

    def compute(self) -> None:
        """Recompute every pod's load and request conditions from the current state."""
        now = self.clock()
        rates: dict[str, float] = {}
        for key, service in self.profiles.items():
            receiving = self.kube_proxy.receiving(key)
            for backend in receiving:
                rates[backend.pod] = service.nominal_rps / len(receiving)
        by_node: dict[str, list[tuple[PodRuntime, ContainerLoad, float]]] = {}
        colds: dict[PodKey, float] = {}
        for runtime in self.pods.values():
            profile = runtime.profile
            runtime.arrival_rate = rates.get(runtime.name, 0.0)
            cold = 1.0
            if profile is not None and not (runtime.warm and runtime.ready):
                age = None if runtime.ready_at is None else now - runtime.ready_at
                cold = profile.cold_start.factor(age)
            colds[runtime.key] = cold
            for name in runtime.containers:
                cp = profile.container(name) if profile is not None else IDLE
                if not cp.name:
                    cp = replace(IDLE, name=name)
                load = container_load(
                    cp,
                    runtime.arrival_rate,
                    cold_factor=cold if cp.serves else 1.0,
                    extra_cpu=runtime.bursts.get(name, 0.0),
                    working_set=self._working_set(runtime, cp, now),
                    running=name in runtime.running and name not in runtime.killed,
                )
                by_node.setdefault(runtime.node, []).append((runtime, load, cp.cpu_request))
        factors: dict[str, float] = {}
        starved: dict[tuple[PodKey, str], float] = {}
        for runtime in self.pods.values():
            runtime.loads = {}
        for node, entries in by_node.items():
            cores = self.node_cores.get(node, self.default_cores)
            wanted = [load for _, load, _ in entries]
            contended, factors[node] = contend(wanted, cores, [weight for _, _, weight in entries])
            for (runtime, before, _), load in zip(entries, contended, strict=True):
                runtime.loads[load.name] = load
                if 0 < load.usage < before.usage:  # it got less than its share of the work
                    starved[(runtime.key, load.name)] = before.usage / load.usage
        self.contention = factors
        for runtime in self.pods.values():
            serving = runtime.serving_container() or ""
            factor = factors.get(runtime.node, 1.0)
            runtime.conditions = self._conditions(
                runtime,
                colds[runtime.key] * starved.get((runtime.key, serving), 1.0),
                runqueue=1 - 1 / factor,
            )

    def _conditions(
        self, runtime: PodRuntime, slowdown: float, *, runqueue: float = 0.0
    ) -> RequestConditions | None:
        profile = runtime.profile
        if profile is None:
            return None
        serving = profile.serving
        serving_load = runtime.loads.get(serving.name) if serving else None
        on_path = [c for c in profile.containers if c.on_path]
        return RequestConditions(
            service_time=profile.service_time,
            workers=profile.workers,
            arrival_rate=runtime.arrival_rate,
            slowdown=slowdown,
            capacity_loss=serving_load.stall if serving_load else 0.0,
            stalls=tuple(
                runtime.loads[c.name].stall
                for c in on_path
                if c.name in runtime.loads
                for _ in range(c.passes)
            ),
            hop=sum(c.hop * c.passes for c in on_path),
            runqueue=runqueue,
            wakeups=serving.wakeups if serving else 1,
        )

    # -- questions and knobs ---------------------------------------------------------

    def pod(self, namespace: str, name: str) -> PodRuntime:
        try:
            return self.pods[(namespace, name)]
        except KeyError:
            raise KeyError(f"no pod {namespace}/{name} in the data plane") from None

    def load_of(self, namespace: str, pod: str, container: str) -> ContainerLoad | None:
        runtime = self.pods.get((namespace, pod))
        return runtime.loads.get(container) if runtime is not None else None

    async def kill(self, namespace: str, name: str, container: str) -> None:
        """The container's process dies (an OOM kill, a crash): its CPU stops, and if it
        serves the pod's port, in-flight requests are reset and new ones refused, until
        the kubelet starts a new container (a new containerID in the pod's status)."""
        runtime = self.pod(namespace, name)
        runtime.killed.add(container)
        self.compute()
        await self._reconcile_servers()

    def burst(self, namespace: str, name: str, container: str, cores: float) -> None:
        """The container does `cores` of extra CPU work (0 ends the burst)."""
        runtime = self.pod(namespace, name)
        if cores > 0:
            runtime.bursts[container] = cores
        else:
            runtime.bursts.pop(container, None)
        self.compute()

    def grow_memory(
        self, namespace: str, name: str, container: str, to_bytes: int, seconds: float
    ) -> None:
        """The container's working set climbs to `to_bytes` over `seconds` (and stays)."""
        runtime = self.pod(namespace, name)
        profile = runtime.profile.container(container) if runtime.profile else IDLE
        now = self.clock()
        start = self._working_set(runtime, profile, now)
        runtime.memory[container] = MemoryRamp(start, to_bytes, now, seconds)
        self.compute()


def _stored(store: Store, resource: str) -> list[dict[str, Any]]:
    """The stored objects themselves, not copies: read them, never change them."""
    items, _ = store.snapshot(resource)
    return [obj for _, obj in items]
