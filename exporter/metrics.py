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
from exporter.core.correlation import ChangeKind, Correlator, EpisodeChange
from exporter.core.endpoints import EndpointCounts, EndpointEvent
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.histogram import LatencySeries, layout_for, le_string
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
SERVICE = ("namespace", "service")
EPISODES = Family(
    "tailwatch_episodes",
    "counter",
    "Closed episodes of opted-in Services, by cause and impact (none, degraded, severe, "
    "unknown when there was no steady baseline).",
    (*SERVICE, "cause", "impact"),
)
EPISODE_P99_RATIO = Family(
    "tailwatch_episode_p99_ratio",
    "histogram",
    "p99 latency during an episode divided by the steady baseline p99 before it.",
    (*SERVICE, "cause"),
    (1, 1.2, 1.5, 2, 3, 5, 10, 20, 50, 100),
)
EPISODE_RECOVERY = Family(
    "tailwatch_episode_recovery_seconds",
    "histogram",
    "Time from an episode's close until the rolling p99 was back within tolerance of the baseline.",
    (*SERVICE, "cause"),
    (1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
EPISODES_NOT_RECOVERED = Family(
    "tailwatch_episodes_not_recovered",
    "counter",
    "Episodes whose latency was not back to baseline --recovery-max after they closed.",
    (*SERVICE, "cause"),
)
SERVICE_SLO = Family(
    "tailwatch_service_slo_seconds",
    "gauge",
    "The tailwatch.io/slo-latency of each opted-in Service that has one; slo_le is the `le` "
    "of that boundary in the Service's latency histograms, for joining them in PromQL.",
    (*SERVICE, "slo_le"),
)
SERVICE_DISRUPTED = Family(
    "tailwatch_service_disrupted",
    "gauge",
    "1 while an episode of the Service is open (with its cause so far), else 0 (cause none).",
    (*SERVICE, "cause"),
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
    EPISODES,
    EPISODE_P99_RATIO,
    EPISODE_RECOVERY,
    EPISODES_NOT_RECOVERED,
    SERVICE_DISRUPTED,
    SERVICE_SLO,
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


class ClientLatencyCollector(Collector):
    """tailwatch_client_request_duration_seconds from `ClientLatency`, at scrape time. Its
    own collector (hundreds of bucket samples per Service) so that /metrics can render it
    straight from the series (exporter/exposition.py)."""

    def __init__(self, latency: ClientLatency) -> None:
        self.latency = latency

    def collect(self) -> Iterator[Metric]:
        client = _family(CLIENT_DURATION)
        assert isinstance(client, HistogramMetricFamily)
        for labels, series in sorted(self.latency.series.items()):
            client.add_metric(list(labels), series.cumulative_buckets(), series.sum)
        yield client


class AgentCollector(Collector):
    """Renders the agent's state at scrape time."""

    def __init__(
        self,
        metrics: AgentMetrics,
        *,
        pods: Callable[[], Iterable[PodSnapshot]],
        watches: Callable[[], Iterable[WatchHealth]],
        endpoints: Callable[[], Mapping[ServiceRef, EndpointCounts]] = dict,
        extra_dropped: Iterable[Callable[[], Mapping[str, int]]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.pods = pods
        self.watches = watches
        self.endpoints = endpoints
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


class EpisodeMetrics:
    """The episode counters and histograms, fed with the correlator's changes."""

    def __init__(self) -> None:
        self.episodes: dict[tuple[str, ...], float] = {}
        self.p99_ratio: dict[tuple[str, ...], FixedBuckets] = {}
        self.recovery: dict[tuple[str, ...], FixedBuckets] = {}
        self.not_recovered: dict[tuple[str, ...], float] = {}

    def record(self, change: EpisodeChange) -> None:
        episode = change.episode
        service = (episode.service.namespace, episode.service.name, episode.cause.value)
        if change.kind is ChangeKind.CLOSED:
            impact = episode.impact.value if episode.impact is not None else "unknown"
            key = (*service, impact)
            self.episodes[key] = self.episodes.get(key, 0) + 1
            ratio = episode.p99_ratio()
            if ratio is not None:
                held = self.p99_ratio.get(service) or FixedBuckets.empty(EPISODE_P99_RATIO.buckets)
                self.p99_ratio[service] = held.observe(ratio)
        elif change.kind is ChangeKind.RECOVERED and episode.recovery_seconds is not None:
            held = self.recovery.get(service) or FixedBuckets.empty(EPISODE_RECOVERY.buckets)
            self.recovery[service] = held.observe(episode.recovery_seconds)
        elif change.kind is ChangeKind.NOT_RECOVERED:
            self.not_recovered[service] = self.not_recovered.get(service, 0) + 1

    def forget_service(self, service: ServiceRef) -> None:
        for table in (self.episodes, self.p99_ratio, self.recovery, self.not_recovered):
            for key in [k for k in table if k[:2] == (service.namespace, service.name)]:
                del table[key]


class ServiceCollector(Collector):
    """Per opted-in Service: the episode families, tailwatch_service_disrupted read from the
    correlator, and each Service's SLO threshold (`slos()`)."""

    def __init__(
        self,
        metrics: EpisodeMetrics,
        correlator: Correlator,
        slos: Callable[[], Mapping[ServiceRef, float]] = dict,
    ) -> None:
        self.metrics = metrics
        self.correlator = correlator
        self.slos = slos

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield _counter(EPISODES, m.episodes)
        yield _histogram(EPISODE_P99_RATIO, m.p99_ratio)
        yield _histogram(EPISODE_RECOVERY, m.recovery)
        yield _counter(EPISODES_NOT_RECOVERED, m.not_recovered)
        disrupted = _family(SERVICE_DISRUPTED)
        assert isinstance(disrupted, GaugeMetricFamily)
        open_causes = {e.service: e.cause.value for e in self.correlator.open_episodes()}
        for ref in sorted(self.correlator.services, key=str):
            cause = open_causes.get(ref)
            disrupted.add_metric([ref.namespace, ref.name, cause or "none"], 1 if cause else 0)
        yield disrupted
        slo = _family(SERVICE_SLO)
        assert isinstance(slo, GaugeMetricFamily)
        for ref, seconds in sorted(self.slos().items(), key=lambda item: str(item[0])):
            slo.add_metric([ref.namespace, ref.name, le_string(seconds)], seconds)
        yield slo
