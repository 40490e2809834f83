"""A small world for correlation tests: one or two Services, endpoints changed the way the
EndpointSlice tracker reports them, probe samples on a fixed grid and an explicit clock."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from exporter.core.correlation import Correlator
from exporter.core.endpoints import Endpoint, EndpointEvent, EndpointEventKind
from exporter.core.episodes import ChangeKind, EpisodeChange, Source
from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.rules import CorrelationSettings
from exporter.core.services import ServiceRef

NODE = "node-1"
CHECKOUT = ServiceRef("shop", "checkout")
SEARCH = ServiceRef("shop", "search")
T0 = 1_800_000_000.0
CHECKOUT_DEPLOYMENT = Workload("Deployment", "checkout")


@dataclass
class Reading:
    """A cgroup sample as the sampler makes it (the fields the core reads)."""

    namespace: str
    pod: str
    container: str
    cpu_usage_seconds: float | None = 0.0
    cpu_periods: int | None = 0
    cpu_throttled_periods: int | None = 0
    memory_working_set_bytes: int | None = 100 << 20
    memory_limit_bytes: int | None = 1 << 30
    pressure: tuple[Pressure, ...] = ()


@dataclass(frozen=True)
class Pressure:
    resource: str
    some_seconds: float
    full_seconds: float | None = None


@dataclass
class World:
    settings: CorrelationSettings = field(default_factory=CorrelationSettings)
    services: tuple[ServiceRef, ...] = (CHECKOUT, SEARCH)
    now: float = T0
    changes: list[EpisodeChange] = field(default_factory=list)
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.c = Correlator(self.settings, node=NODE, workloads=lambda: self.workloads)
        self.c.set_services(self.services)
        self.endpoints: dict[ServiceRef, dict[str, Endpoint]] = {s: {} for s in self.services}

    # -- endpoints ------------------------------------------------------------------------

    def endpoint(
        self,
        pod: str,
        *,
        service: ServiceRef = CHECKOUT,
        ready: bool = True,
        terminating: bool = False,
        node: str = NODE,
        uid: str = "",
    ) -> Endpoint:
        return Endpoint(
            identity=f"{service.namespace}/{pod}",
            address=f"127.10.0.{len(self.endpoints[service]) + 1}",
            pod=pod,
            pod_uid=uid or f"uid-{pod}",
            node=node,
            ready=ready,
            serving=ready or terminating,
            terminating=terminating,
        )

    def seed(self, *pods: str, service: ServiceRef = CHECKOUT, node: str = NODE) -> None:
        """Endpoints present before anything happens (the silent first list)."""
        for pod in pods:
            self.endpoints[service][f"{service.namespace}/{pod}"] = self.endpoint(
                pod, service=service, node=node
            )
        self.c.endpoints_changed(service, self.endpoints[service])

    def change(
        self,
        pod: str,
        events: Iterable[EndpointEventKind],
        *,
        service: ServiceRef = CHECKOUT,
        ready: bool | None = None,
        terminating: bool = False,
        removed: bool = False,
        node: str = NODE,
        previous_node: str = "",
    ) -> None:
        """One EndpointSlice update: the view after it, then its events, as the agent feeds them."""
        key = f"{service.namespace}/{pod}"
        held = self.endpoints[service].get(key)
        if removed:
            self.endpoints[service].pop(key, None)
        else:
            base = held or self.endpoint(pod, service=service, node=node, ready=False)
            self.endpoints[service][key] = replace(
                base,
                ready=base.ready if ready is None else ready,
                terminating=terminating,
                serving=(base.ready if ready is None else ready) or terminating,
                node=node,
            )
        self.c.endpoints_changed(service, self.endpoints[service])
        for kind in events:
            event = EndpointEvent(kind, self.now, service, key, pod, "", node, previous_node)
            self._feed(self.c.on_endpoint_event(event))

    def pod_event(
        self,
        kind: PodEventKind,
        pod: str,
        *,
        namespace: str = "shop",
        workload: Workload = CHECKOUT_DEPLOYMENT,
        reason: str = "",
        container: str = "",
        node: str = NODE,
    ) -> None:
        self.workloads[(namespace, pod)] = workload
        event = LifecycleEvent(
            kind, self.now, namespace, pod, f"uid-{pod}", workload, node=node,
            reason=reason, container=container,
        )  # fmt: skip
        self._feed(self.c.on_pod_event(event))

    # -- time and latency -------------------------------------------------------------------

    def run(
        self,
        seconds: float,
        latency: float | dict[ServiceRef, float] = 0.010,
        *,
        every: float = 0.5,
    ) -> None:
        """Let time pass: a probe sample of every Service every `every` seconds and a tick
        after each. A single `latency` is checkout's; the other Services answer in 10 ms."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = round(self.now + every, 6)
            for service in self.services:
                if isinstance(latency, dict):
                    value = latency.get(service, 0.010)
                else:
                    value = latency if service == CHECKOUT else 0.010
                self.c.record_latency(service, Source.SERVICE_PROBE, value, self.now)
            self._feed(self.c.tick(self.now))

    def observe(self, readings: list[Reading], sidecars: dict | None = None) -> None:
        """One cgroup pass (copies, as the sampler makes new samples each pass)."""
        self.c.observe_resources(self.now, [replace(r) for r in readings], sidecars or {})

    def _feed(self, changes: list[EpisodeChange]) -> None:
        self.changes.extend(changes)

    def kinds(self) -> list[tuple[str, str]]:
        return [(ch.kind.value, ch.episode.id) for ch in self.changes]

    def closed(self) -> list:
        return [ch.episode for ch in self.changes if ch.kind is ChangeKind.CLOSED]
