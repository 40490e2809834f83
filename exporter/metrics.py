"""Every metric family the agent exports, declared in one place, and the state behind them.

Counters and histograms that the agent updates live in `AgentMetrics` as plain dicts keyed
by label values, so series of pods that are gone can be removed. `AgentCollector` renders
them, together with snapshot metrics read from the agent's state (pods on the node, watch
health, dropped input), at scrape time, as prometheus_client's custom collectors do.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.core.buckets import FixedBuckets
from exporter.core.endpoints import EndpointCounts, EndpointEvent
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.histogram import LatencySeries, layout_for
from exporter.core.pods import PodSnapshot
from exporter.core.services import ServiceRef
from exporter.kube.watching import WatchHealth


@dataclass(frozen=True)
class Family:
    name: str  # without the _total suffix for counters, as prometheus_client wants it
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


WORKLOAD = ("namespace", "workload_kind", "workload")

POD_EVENTS = Family(
    "tailwatch_pod_events",
    "counter",
    "Node-local pod lifecycle events seen by this agent.",
    (*WORKLOAD, "event", "reason"),
)
CONTAINER_RESTARTS = Family(
    "tailwatch_container_restarts",
    "counter",
    "Container restarts seen by this agent, by the reason of the last termination.",
    ("namespace", "pod", "container", "reason"),
)
POD_STARTUP = Family(
    "tailwatch_pod_startup_seconds",
    "histogram",
    "Time from a pod's arrival on this node to its first Ready.",
    WORKLOAD,
    (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
POD_TERMINATION = Family(
    "tailwatch_pod_termination_seconds",
    "histogram",
    "Time from a pod's deletionTimestamp being set to the pod being gone.",
    WORKLOAD,
    (1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600),
)
POD_INFO = Family(
    "tailwatch_pod_info",
    "gauge",
    "Pods on this node (value 1), with their workload and revision.",
    ("namespace", "pod", "workload_kind", "workload", "revision"),
)
WATCH_EVENTS = Family(
    "tailwatch_watch_events",
    "counter",
    "Kubernetes API watch events handled, bookmarks included.",
    ("resource", "type"),
)
WATCH_RESTARTS = Family(
    "tailwatch_watch_restarts",
    "counter",
    "Watch reconnections by reason (closed, gone, connection_error, inactivity_timeout, ...).",
    ("resource", "reason"),
)
WATCH_LAST_EVENT_AGE = Family(
    "tailwatch_watch_last_event_age_seconds",
    "gauge",
    "Seconds since the last list, event or bookmark of each watch.",
    ("resource",),
)
ENDPOINT_EVENTS = Family(
    "tailwatch_endpoint_events",
    "counter",
    "Endpoint changes of opted-in Services (cluster view, from EndpointSlices).",
    ("namespace", "service", "event"),
)
SERVICE_ENDPOINTS = Family(
    "tailwatch_service_endpoints",
    "gauge",
    "Endpoints of each opted-in Service by condition (ready, serving, terminating).",
    ("namespace", "service", "condition"),
)
CLIENT_DURATION = Family(
    "tailwatch_client_request_duration_seconds",
    "histogram",
    "Client-observed latency of opted-in Services, from clients' OTLP histograms.",
    ("namespace", "service", "state"),
)
DROPPED = Family(
    "tailwatch_dropped",
    "counter",
    "Input dropped because it was malformed or over a limit, by reason.",
    ("reason",),
)
BUILD_INFO = Family(
    "tailwatch_build_info", "gauge", "Build information (value 1).", ("version", "python")
)

FAMILIES: tuple[Family, ...] = (
    POD_EVENTS,
    CONTAINER_RESTARTS,
    POD_STARTUP,
    POD_TERMINATION,
    POD_INFO,
    ENDPOINT_EVENTS,
    SERVICE_ENDPOINTS,
    CLIENT_DURATION,
    WATCH_EVENTS,
    WATCH_RESTARTS,
    WATCH_LAST_EVENT_AGE,
    DROPPED,
    BUILD_INFO,
)


class AgentMetrics:
    """The agent's counters and histograms, keyed by label values."""

    def __init__(self) -> None:
        self.pod_events: dict[tuple[str, ...], float] = {}
        self.restarts: dict[tuple[str, ...], float] = {}
        self.startup: dict[tuple[str, ...], FixedBuckets] = {}
        self.termination: dict[tuple[str, ...], FixedBuckets] = {}
        self.endpoint_events: dict[tuple[str, ...], float] = {}
        self.dropped: dict[str, int] = {}

    def record_endpoint(self, event: EndpointEvent) -> None:
        key = (event.service.namespace, event.service.name, event.kind.value)
        self.endpoint_events[key] = self.endpoint_events.get(key, 0) + 1

    def forget_service(self, service: ServiceRef) -> None:
        """Drop the series of a Service that is no longer opted in."""
        for key in [k for k in self.endpoint_events if k[:2] == (service.namespace, service.name)]:
            del self.endpoint_events[key]

    def count_dropped(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def record(self, event: LifecycleEvent) -> None:
        if event.kind is PodEventKind.OOM_KILL:
            return  # exported by the cgroup collector as tailwatch_container_oom_kills_total
        workload = (event.namespace, event.workload.kind, event.workload.name)
        key = (*workload, event.kind.value, event.reason)
        self.pod_events[key] = self.pod_events.get(key, 0) + event.count
        if event.kind is PodEventKind.CONTAINER_RESTART:
            rkey = (event.namespace, event.pod, event.container, event.reason)
            self.restarts[rkey] = self.restarts.get(rkey, 0) + event.count
        if event.duration_seconds is not None:
            if event.kind is PodEventKind.READY:
                table, buckets = self.startup, POD_STARTUP.buckets
            elif event.kind is PodEventKind.DELETED:
                table, buckets = self.termination, POD_TERMINATION.buckets
            else:
                return
            held = table.get(workload) or FixedBuckets.empty(buckets)
            table[workload] = held.observe(event.duration_seconds)

    def forget_pod(self, namespace: str, pod: str) -> None:
        """Drop the per-pod series of a pod that left the node."""
        for key in [k for k in self.restarts if k[0] == namespace and k[1] == pod]:
            del self.restarts[key]


class ClientLatency:
    """Client-reported latency per Service and state, in the Service's exposition layout
    (its SLO threshold as an exact boundary) and at fine resolution for quantiles."""

    def __init__(
        self,
        slo_of: Callable[[ServiceRef], float | None],
        state_of: Callable[[str, str], str] = lambda namespace, service: "steady",
    ) -> None:
        self.slo_of = slo_of
        self.state_of = state_of
        self.series: dict[tuple[str, str, str], LatencySeries] = {}

    def record(
        self,
        service: ServiceRef,
        buckets: Iterable[tuple[float, float, int]],
        sum_seconds: float,
    ) -> None:
        key = (service.namespace, service.name, self.state_of(service.namespace, service.name))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = LatencySeries(layout_for(self.slo_of(service)))
        series.record_ranges(buckets, sum_seconds)

    def forget(self, service: ServiceRef) -> None:
        for key in [k for k in self.series if k[:2] == (service.namespace, service.name)]:
            del self.series[key]


def _family(f: Family) -> Metric:
    if f.kind == "counter":
        return CounterMetricFamily(f.name, f.help, labels=f.labels)
    if f.kind == "gauge":
        return GaugeMetricFamily(f.name, f.help, labels=f.labels)
    return HistogramMetricFamily(f.name, f.help, labels=f.labels)


def _counter(f: Family, values: Mapping[tuple[str, ...], float]) -> Metric:
    metric = _family(f)
    assert isinstance(metric, CounterMetricFamily)
    for labels, value in sorted(values.items()):
        metric.add_metric(list(labels), value)
    return metric


def _histogram(f: Family, series: Mapping[tuple[str, ...], FixedBuckets]) -> Metric:
    metric = _family(f)
    assert isinstance(metric, HistogramMetricFamily)
    for labels, h in sorted(series.items()):
        metric.add_metric(list(labels), h.cumulative(), h.total)
    return metric


class AgentCollector(Collector):
    """Renders the agent's state at scrape time."""

    def __init__(
        self,
        metrics: AgentMetrics,
        *,
        pods: Callable[[], Iterable[PodSnapshot]],
        watches: Callable[[], Iterable[WatchHealth]],
        endpoints: Callable[[], Mapping[ServiceRef, EndpointCounts]] = dict,
        client_latency: ClientLatency | None = None,
        extra_dropped: Iterable[Callable[[], Mapping[str, int]]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.pods = pods
        self.watches = watches
        self.endpoints = endpoints
        self.client_latency = client_latency
        self.extra_dropped = list(extra_dropped)
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(POD_EVENTS, m.pod_events)
        yield _counter(CONTAINER_RESTARTS, m.restarts)
        yield _histogram(POD_STARTUP, m.startup)
        yield _histogram(POD_TERMINATION, m.termination)

        info = _family(POD_INFO)
        assert isinstance(info, GaugeMetricFamily)
        for pod in sorted(self.pods(), key=lambda p: (p.namespace, p.name)):
            info.add_metric(
                [pod.namespace, pod.name, pod.workload.kind, pod.workload.name, pod.revision], 1
            )
        yield info

        yield _counter(ENDPOINT_EVENTS, m.endpoint_events)
        counts = _family(SERVICE_ENDPOINTS)
        assert isinstance(counts, GaugeMetricFamily)
        for ref, c in sorted(self.endpoints().items(), key=lambda item: str(item[0])):
            for condition, n in (("ready", c.ready), ("serving", c.serving),
                                 ("terminating", c.terminating)):  # fmt: skip
                counts.add_metric([ref.namespace, ref.name, condition], n)
        yield counts

        client = _family(CLIENT_DURATION)
        assert isinstance(client, HistogramMetricFamily)
        if self.client_latency is not None:
            for labels, series in sorted(self.client_latency.series.items()):
                client.add_metric(list(labels), series.cumulative_buckets(), series.sum)
        yield client

        events: dict[tuple[str, ...], float] = {}
        restarts: dict[tuple[str, ...], float] = {}
        age = _family(WATCH_LAST_EVENT_AGE)
        assert isinstance(age, GaugeMetricFamily)
        dropped: dict[tuple[str, ...], float] = {(r,): n for r, n in m.dropped.items()}
        now = self.clock()
        for health in self.watches():
            for etype, n in health.events.items():
                events[(health.resource, etype)] = n
            for reason, n in health.restarts.items():
                restarts[(health.resource, reason)] = n
            if health.last_event_at is not None:
                age.add_metric([health.resource], max(0.0, now - health.last_event_at))
            for reason, n in health.dropped.items():
                dropped[(reason,)] = dropped.get((reason,), 0) + n
        for source in self.extra_dropped:
            for reason, n in source().items():
                dropped[(reason,)] = dropped.get((reason,), 0) + n
        yield _counter(WATCH_EVENTS, events)
        yield _counter(WATCH_RESTARTS, restarts)
        yield age
        yield _counter(DROPPED, dropped)

        build = _family(BUILD_INFO)
        assert isinstance(build, GaugeMetricFamily)
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
