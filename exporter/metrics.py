"""The state behind the agent's own metric families (declared in exporter/catalogue.py).

Counters and histograms that the agent updates live in `AgentMetrics` as plain dicts keyed
by label values, so series of pods that are gone can be removed. `AgentSource` reads them,
together with values read from the agent's state (pods on the node, watch health, dropped
input), at scrape time; `ClientLatencySource` and `ServiceSource` do the same for client
latency and the episodes.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Mapping

from exporter import __version__
from exporter.catalogue import (
    BUILD_INFO,
    CLIENT_DURATION,
    CLIENT_SLOW,
    CONTAINER_RESTARTS,
    DROPPED,
    ENDPOINT_EVENTS,
    EPISODE_P99_RATIO,
    EPISODE_RECOVERY,
    EPISODES,
    EPISODES_NOT_RECOVERED,
    POD_EVENTS,
    POD_INFO,
    POD_STARTUP,
    POD_TERMINATION,
    SERVICE_DISRUPTED,
    SERVICE_ENDPOINTS,
    SERVICE_SLO,
    WATCH_EVENTS,
    WATCH_LAST_EVENT_AGE,
    WATCH_RESTARTS,
    FamilySnapshot,
    Series,
)
from exporter.core.buckets import FixedBuckets
from exporter.core.correlation import ChangeKind, Correlator, EpisodeChange
from exporter.core.endpoints import EndpointCounts, EndpointEvent
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.histogram import (
    DEFAULT_CLASSIC_LAYOUT,
    LatencySeries,
    le_string,
)
from exporter.core.pods import PodSnapshot
from exporter.core.services import ServiceRef
from exporter.kube.watching import WatchHealth


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
        classic_layout: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT,
    ) -> None:
        self.slo_of = slo_of
        self.state_of = state_of
        self.classic_layout = classic_layout
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
            slo = self.slo_of(service)
            series = self.series[key] = LatencySeries.of_service(slo, self.classic_layout)
        series.record_ranges(buckets, sum_seconds)

    def forget(self, service: ServiceRef) -> None:
        for key in [k for k in self.series if k[:2] == (service.namespace, service.name)]:
            del self.series[key]


class ClientLatencySource:
    """tailwatch_client_request_duration_seconds and tailwatch_client_request_slow_total
    from `ClientLatency`, at scrape time."""

    def __init__(self, latency: ClientLatency) -> None:
        self.latency = latency

    def snapshot(self) -> Iterable[FamilySnapshot]:
        series = self.latency.series
        slow = [(key, s.slow_count) for key, s in series.items() if s.slo is not None]
        return (FamilySnapshot(CLIENT_DURATION, series.items()), FamilySnapshot(CLIENT_SLOW, slow))


class AgentSource:
    """The agent's own families: pod lifecycle, Service endpoints, watches, dropped input,
    build info."""

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
        self._build: list[Series] = [((__version__, platform.python_version()), 1)]

    def snapshot(self) -> Iterable[FamilySnapshot]:
        m = self.metrics
        info: list[Series] = [
            ((p.namespace, p.name, p.workload.kind, p.workload.name, p.revision), 1)
            for p in self.pods()
        ]
        counts: list[Series] = []
        for ref, c in self.endpoints().items():
            counts += [
                ((ref.namespace, ref.name, "ready"), c.ready),
                ((ref.namespace, ref.name, "serving"), c.serving),
                ((ref.namespace, ref.name, "terminating"), c.terminating),
            ]
        events: dict[tuple[str, ...], float] = {}
        restarts: dict[tuple[str, ...], float] = {}
        age: list[Series] = []
        dropped: dict[tuple[str, ...], float] = {(r,): n for r, n in m.dropped.items()}
        now = self.clock()
        for health in self.watches():
            for etype, n in health.events.items():
                events[(health.resource, etype)] = n
            for reason, n in health.restarts.items():
                restarts[(health.resource, reason)] = n
            if health.last_event_at is not None:
                age.append(((health.resource,), max(0.0, now - health.last_event_at)))
            for reason, n in health.dropped.items():
                dropped[(reason,)] = dropped.get((reason,), 0) + n
        for source in self.extra_dropped:
            for reason, n in source().items():
                dropped[(reason,)] = dropped.get((reason,), 0) + n
        return (
            FamilySnapshot(POD_EVENTS, m.pod_events.items()),
            FamilySnapshot(CONTAINER_RESTARTS, m.restarts.items()),
            FamilySnapshot(POD_STARTUP, m.startup.items()),
            FamilySnapshot(POD_TERMINATION, m.termination.items()),
            FamilySnapshot(POD_INFO, info),
            FamilySnapshot(ENDPOINT_EVENTS, m.endpoint_events.items()),
            FamilySnapshot(SERVICE_ENDPOINTS, counts),
            FamilySnapshot(WATCH_EVENTS, events.items()),
            FamilySnapshot(WATCH_RESTARTS, restarts.items()),
            FamilySnapshot(WATCH_LAST_EVENT_AGE, age),
            FamilySnapshot(DROPPED, dropped.items()),
            FamilySnapshot(BUILD_INFO, self._build),
        )


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


class ServiceSource:
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

    def snapshot(self) -> Iterable[FamilySnapshot]:
        m = self.metrics
        open_causes = {e.service: e.cause.value for e in self.correlator.open_episodes()}
        disrupted: list[Series] = []
        for ref in self.correlator.services:
            cause = open_causes.get(ref)
            disrupted.append(((ref.namespace, ref.name, cause or "none"), 1 if cause else 0))
        slo: list[Series] = [
            ((ref.namespace, ref.name, le_string(seconds)), seconds)
            for ref, seconds in self.slos().items()
        ]
        return (
            FamilySnapshot(EPISODES, m.episodes.items()),
            FamilySnapshot(EPISODE_P99_RATIO, m.p99_ratio.items()),
            FamilySnapshot(EPISODE_RECOVERY, m.recovery.items()),
            FamilySnapshot(EPISODES_NOT_RECOVERED, m.not_recovered.items()),
            FamilySnapshot(SERVICE_DISRUPTED, disrupted),
            FamilySnapshot(SERVICE_SLO, slo),
        )
