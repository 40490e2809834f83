"""The state behind the agent's own metric families (declared in exporter/catalogue.py).

Counters and histograms that the agent updates live in `AgentMetrics` as plain dicts keyed
by label values, so series of pods that are gone can be removed. `AgentSource` reads them,
together with values read from the agent's state (pods on the node, watch health, dropped
input), at scrape time; `ClientLatencySource` and `ServiceSource` do the same for client
latency and the episodes.

Series are bounded where they are made (docs/metrics.md, *Cardinality*): each table that
creates label sets from input asks `SeriesLimit` before it adds one, and the series keyed by
a workload expire --series-ttl after its last pod left the node. Both cost O(1) per update.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

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
    NODE_EVENTS,
    POD_EVENTS,
    POD_INFO,
    POD_STARTUP,
    POD_TERMINATION,
    ROLLOUT_DURATION,
    ROLLOUT_IN_PROGRESS,
    ROLLOUT_STUCK,
    SERVICE_DISRUPTED,
    SERVICE_ENDPOINTS,
    SERVICE_SLO,
    WATCH_EVENTS,
    WATCH_LAST_EVENT,
    WATCH_RESTARTS,
    Family,
    FamilySnapshot,
    Series,
)
from exporter.core.buckets import FixedBuckets
from exporter.core.correlation import Correlator
from exporter.core.endpoints import EndpointCounts, EndpointEvent
from exporter.core.episodes import ChangeKind, EpisodeChange
from exporter.core.events import LifecycleEvent, PodEventKind, workload_type
from exporter.core.histogram import (
    DEFAULT_CLASSIC_LAYOUT,
    Exemplar,
    ExemplarSeries,
    le_string,
)
from exporter.core.lifecycle import WorkloadKey
from exporter.core.nodes import NodeEvent
from exporter.core.pods import PodSnapshot
from exporter.core.rollouts import RolloutChange, RolloutChangeKind
from exporter.core.services import ServiceRef
from exporter.kube.watching import WatchHealth
from exporter.logs import LogOnce

log = logging.getLogger("tailwatch.agent")

#: --series-limit's default: the most label sets of one family.
DEFAULT_SERIES_LIMIT = 10_000
#: The tailwatch_dropped_total reasons of this module.
SERIES_LIMIT = "series_limit"
INTERNAL_ERROR = "internal_error"
#: The environment variable with the git commit the agent was built from (the image's
#: REVISION build argument), for tailwatch_build_info's `revision`.
REVISION_ENV = "TAILWATCH_REVISION"
#: The most workloads `AgentMetrics.expire` drops in one call (~5 ms of the event loop on a
#: 2-core machine); the others go at the next tick, a second later.
EXPIRE_BATCH = 1000
#: A failing piece of code logs its traceback at most this often (the first time at once).
ERROR_LOG_INTERVAL = 300.0


class SeriesLimit:
    """--series-limit: the most label sets any one family may have.

    Asked by the tables that make label sets from input, before they add one: a family at
    the limit gets no new label set, while its existing ones keep counting. Each refused
    update is counted in tailwatch_dropped_total{reason="series_limit"} (the other reasons
    count input too: objects, data points, probe samples; counting distinct refused label
    sets would mean remembering them, the very memory the limit is there to bound), and
    logged once per family, then at most every 5 minutes with the number suppressed.
    """

    def __init__(
        self,
        limit: int | None,
        count_dropped: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self._count_dropped = count_dropped
        self._log = LogOnce(log, clock=clock)

    def room(self, family: Family, size: int) -> bool:
        """May a family whose table holds `size` label sets get one more? If not, the
        update that wanted it is counted as dropped."""
        if self.limit is None or size < self.limit:
            return True
        self._count_dropped(SERIES_LIMIT)
        self._log.warning(
            family.name,
            "%s has %d label sets, the --series-limit: new ones are dropped and counted in "
            'tailwatch_dropped_total{reason="series_limit"}',
            family.name,
            self.limit,
        )
        return False

    def add(
        self,
        family: Family,
        table: dict[tuple[str, ...], float],
        key: tuple[str, ...],
        n: float = 1,
    ) -> bool:
        """Add `n` to the counter `table[key]`, creating it only if the family has room.
        True when the key is new (the caller may index it), False otherwise."""
        count = table.get(key)
        if count is not None:
            table[key] = count + n
            return False
        if not self.room(family, len(table)):
            return False
        table[key] = n
        return True

    def observe(
        self,
        family: Family,
        table: dict[tuple[str, ...], FixedBuckets],
        key: tuple[str, ...],
        value: float,
    ) -> None:
        """Observe `value` in the histogram `table[key]` (in the family's buckets), made only
        if the family has room."""
        held = table.get(key)
        if held is None:
            if not self.room(family, len(table)):
                return
            held = FixedBuckets.empty(family.buckets)
        table[key] = held.observe(value)


class _Guard:
    """`AgentMetrics.guard`: an exception in the block is logged and counted, not raised."""

    __slots__ = ("_metrics", "_what")

    def __init__(self, metrics: AgentMetrics, what: str) -> None:
        self._metrics = metrics
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # nothing raised, or a cancellation or exit: let it through
        self._metrics.internal_error(self._what, exc)
        return True


class AgentMetrics:
    """The agent's counters and histograms, keyed by label values; what it dropped; and the
    expiry of the series keyed by workload.

    `on_workload` is the pod tracker's occupancy listener: a workload that lost its last pod
    on the node has its series (pod events, startup and termination times) dropped
    `series_ttl` seconds later by `expire`, unless a pod of it came back meanwhile. The
    deadlines sit in an OrderedDict in the order they fall (one clock, one TTL), so `expire`
    costs O(expired workloads), never a scan of the series.
    """

    def __init__(
        self,
        *,
        series_limit: int | None = DEFAULT_SERIES_LIMIT,
        series_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pod_events: dict[tuple[str, ...], float] = {}
        self.restarts: dict[tuple[str, ...], float] = {}
        self.startup: dict[tuple[str, ...], FixedBuckets] = {}
        self.termination: dict[tuple[str, ...], FixedBuckets] = {}
        self.endpoint_events: dict[tuple[str, ...], float] = {}
        self.node_events: dict[tuple[str, ...], float] = {}
        self.dropped: dict[str, int] = {}
        self.series_ttl = series_ttl
        self.clock = clock
        self.limit = SeriesLimit(series_limit, self.count_dropped, clock)
        # The pod_events keys of each workload, and the restarts keys of each pod: what to
        # drop with them, without a scan.
        self._workload_events: dict[WorkloadKey, set[tuple[str, ...]]] = {}
        self._pod_restarts: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        # Workloads without pods on the node -> when their series go (clock time).
        self._expiry: OrderedDict[WorkloadKey, float] = OrderedDict()
        # Per failing piece of code: its traceback, logged at most every ERROR_LOG_INTERVAL.
        self._errors = LogOnce(log, ERROR_LOG_INTERVAL, clock)

    def record_endpoint(self, event: EndpointEvent) -> None:
        key = (event.service.namespace, event.service.name, event.kind.value)
        self.limit.add(ENDPOINT_EVENTS, self.endpoint_events, key)

    def record_node(self, event: NodeEvent) -> None:
        """A change of this agent's node (its reasons are bounded: `NodeEvent.label_reason`)."""
        self.limit.add(NODE_EVENTS, self.node_events, (event.kind.value, event.label_reason))

    def forget_service(self, service: ServiceRef) -> None:
        """Drop the series of a Service that is no longer opted in."""
        for key in [k for k in self.endpoint_events if k[:2] == (service.namespace, service.name)]:
            del self.endpoint_events[key]

    def count_dropped(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def internal_error(self, what: str, exc: BaseException) -> None:
        """A bug caught where it would otherwise stop a watch or a loop (a listener, a
        sink, a tick): counted in tailwatch_dropped_total{reason="internal_error"}, and
        logged with its traceback, once per `what` every ERROR_LOG_INTERVAL at most."""
        self.count_dropped(INTERNAL_ERROR)
        self._errors.log(logging.ERROR, what, "%s failed", what, exc_info=exc)

    def guard(self, what: str) -> _Guard:
        """`with metrics.guard("the OTLP sink"): ...`: an Exception raised in the block is
        an `internal_error`, and the code after the block runs on."""
        return _Guard(self, what)

    def record(self, event: LifecycleEvent) -> None:
        if event.kind is PodEventKind.OOM_KILL:
            return  # exported by the cgroup collector as tailwatch_container_oom_kills_total
        workload = (event.namespace, event.workload.kind, event.workload.name)
        wtype = event.workload.type
        key = (*workload, event.kind.value, event.reason, wtype)
        if self.limit.add(POD_EVENTS, self.pod_events, key, event.count):
            self._workload_events.setdefault(workload, set()).add(key)
        if event.kind is PodEventKind.CONTAINER_RESTART:
            rkey = (event.namespace, event.pod, event.container, event.reason)
            if self.limit.add(CONTAINER_RESTARTS, self.restarts, rkey, event.count):
                self._pod_restarts.setdefault((event.namespace, event.pod), set()).add(rkey)
        if event.duration_seconds is not None:
            if event.kind is PodEventKind.READY:
                table, family = self.startup, POD_STARTUP
            elif event.kind is PodEventKind.DELETED:
                table, family = self.termination, POD_TERMINATION
            else:
                return
            self.limit.observe(family, table, (*workload, wtype), event.duration_seconds)

    def forget_pod(self, namespace: str, pod: str) -> None:
        """Drop the per-pod series of a pod that left the node."""
        for key in self._pod_restarts.pop((namespace, pod), ()):
            del self.restarts[key]

    # -- series keyed by workload ------------------------------------------------------------

    def on_workload(self, workload: WorkloadKey, present: bool) -> None:
        """The tracker's occupancy listener: `workload` has pods on the node again (its
        series stay), or lost its last one (they go `series_ttl` from now)."""
        if present:
            self._expiry.pop(workload, None)
        elif self.series_ttl is not None:
            self._expiry[workload] = self.clock() + self.series_ttl
            self._expiry.move_to_end(workload)

    def expire(self, batch: int = EXPIRE_BATCH) -> int:
        """Drop the series of the workloads whose TTL ran out, at most `batch` of them (a
        node drained of thousands of bare pods must not stall the loop in one go); how many
        workloads."""
        now = self.clock()
        expired = 0
        while self._expiry and expired < batch:
            workload, due = next(iter(self._expiry.items()))
            if due > now:
                break
            del self._expiry[workload]
            self.forget_workload(workload)
            expired += 1
        return expired

    def forget_workload(self, workload: WorkloadKey) -> None:
        """Drop the series keyed by `workload`: its pod events, startup and termination
        times. A later event of it starts them again from 0 (a counter reset)."""
        for key in self._workload_events.pop(workload, ()):
            del self.pod_events[key]
        typed = (*workload, workload_type(workload[1]))
        self.startup.pop(typed, None)
        self.termination.pop(typed, None)


class ClientLatency:
    """Client-reported latency per Service and state, in the Service's exposition layout
    (its SLO threshold as an exact boundary) and at fine resolution for quantiles."""

    def __init__(
        self,
        slo_of: Callable[[ServiceRef], float | None],
        state_of: Callable[[str, str], str] = lambda namespace, service: "steady",
        classic_layout: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT,
        limit: SeriesLimit | None = None,
    ) -> None:
        self.slo_of = slo_of
        self.state_of = state_of
        self.classic_layout = classic_layout
        self.limit = limit or SeriesLimit(None, lambda reason: None)
        self.series: dict[tuple[str, str, str], ExemplarSeries] = {}

    def record(
        self,
        service: ServiceRef,
        buckets: Iterable[tuple[float, float, int]],
        sum_seconds: float,
        exemplars: Sequence[Exemplar] = (),
    ) -> None:
        """A client delta; its exemplars (trace ids) kept per classic bucket, the latest."""
        key = (service.namespace, service.name, self.state_of(service.namespace, service.name))
        series = self.series.get(key)
        if series is None:
            if not self.limit.room(CLIENT_DURATION, len(self.series)):
                return
            slo = self.slo_of(service)
            series = self.series[key] = ExemplarSeries.of_service(slo, self.classic_layout)
        series.record_ranges(buckets, sum_seconds)
        if exemplars:
            series.add_exemplars(exemplars)

    def forget(self, service: ServiceRef) -> None:
        for key in [k for k in self.series if k[:2] == (service.namespace, service.name)]:
            del self.series[key]


class ClientLatencySource:
    """tailwatch_client_request_duration_seconds and tailwatch_client_request_slow_total
    from `ClientLatency`, at scrape time."""

    def __init__(self, latency: ClientLatency, before: Callable[[], None] = lambda: None) -> None:
        self.latency = latency
        self.before = before  # records what the agent holds (deltas come merged per tick)

    def snapshot(self) -> Iterable[FamilySnapshot]:
        self.before()
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
        wall_clock: Callable[[], float] = time.time,
        revision: str | None = None,
    ) -> None:
        self.metrics = metrics
        self.pods = pods
        self.watches = watches
        self.endpoints = endpoints
        self.extra_dropped = list(extra_dropped)
        self.clock = clock
        self.wall_clock = wall_clock
        if revision is None:
            revision = os.environ.get(REVISION_ENV, "").strip() or "unknown"
        self._build: list[Series] = [((__version__, revision, platform.python_version()), 1)]

    def snapshot(self) -> Iterable[FamilySnapshot]:
        m = self.metrics
        info: list[Series] = [
            ((p.namespace, p.name, w.kind, w.name, p.revision, w.type), 1)
            for p in self.pods()
            for w in (p.workload,)
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
        last_event: list[Series] = []
        dropped: dict[tuple[str, ...], float] = {(r,): n for r, n in m.dropped.items()}
        # The watches keep monotonic times (a wall clock step must not fake a silent
        # watch); the family is a timestamp, as kube-state-metrics' are, so one wall clock
        # reading turns them into unix seconds.
        now = self.clock()
        wall = self.wall_clock()
        for health in self.watches():
            for etype, n in health.events.items():
                events[(health.resource, etype)] = n
            for reason, n in health.restarts.items():
                restarts[(health.resource, reason)] = n
            if health.last_event_at is not None:
                ago = max(0.0, now - health.last_event_at)
                last_event.append(((health.resource,), wall - ago))
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
            FamilySnapshot(NODE_EVENTS, m.node_events.items()),
            FamilySnapshot(ENDPOINT_EVENTS, m.endpoint_events.items()),
            FamilySnapshot(SERVICE_ENDPOINTS, counts),
            FamilySnapshot(WATCH_EVENTS, events.items()),
            FamilySnapshot(WATCH_RESTARTS, restarts.items()),
            FamilySnapshot(WATCH_LAST_EVENT, last_event),
            FamilySnapshot(DROPPED, dropped.items()),
            FamilySnapshot(BUILD_INFO, self._build),
        )


class EpisodeMetrics:
    """The episode counters and histograms, fed with the correlator's changes."""

    def __init__(self, limit: SeriesLimit | None = None) -> None:
        self.limit = limit or SeriesLimit(None, lambda reason: None)
        self.episodes: dict[tuple[str, ...], float] = {}
        self.p99_ratio: dict[tuple[str, ...], FixedBuckets] = {}
        self.recovery: dict[tuple[str, ...], FixedBuckets] = {}
        self.not_recovered: dict[tuple[str, ...], float] = {}

    def record(self, change: EpisodeChange) -> None:
        episode = change.episode
        service = (episode.service.namespace, episode.service.name, episode.cause.value)
        if change.kind is ChangeKind.CLOSED:
            impact = episode.impact.value if episode.impact is not None else "unknown"
            self.limit.add(EPISODES, self.episodes, (*service, impact))
            # The estimate where the samples bound the during p99, else its lower bound.
            ratio = episode.observed_p99_ratio()
            if ratio is not None:
                self.limit.observe(EPISODE_P99_RATIO, self.p99_ratio, service, ratio)
        elif change.kind is ChangeKind.RECOVERED and episode.recovery_seconds is not None:
            self.limit.observe(EPISODE_RECOVERY, self.recovery, service, episode.recovery_seconds)
        elif change.kind is ChangeKind.NOT_RECOVERED:
            self.limit.add(EPISODES_NOT_RECOVERED, self.not_recovered, service)

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


class RolloutMetrics:
    """tailwatch_rollout_duration_seconds per workload, observed as each rollout finishes.

    A workload's series goes `ttl` seconds (--series-ttl) after its last rollout ended,
    unless another one started meanwhile: its pods need not be on this node, so the pod
    tracker's occupancy cannot tell when it is gone. O(1) per change; `expire` costs
    O(expired series)."""

    def __init__(
        self,
        limit: SeriesLimit | None = None,
        *,
        ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit or SeriesLimit(None, lambda reason: None)
        self.ttl = ttl
        self.clock = clock
        self.durations: dict[tuple[str, ...], FixedBuckets] = {}
        self._expiry: OrderedDict[WorkloadKey, float] = OrderedDict()

    def record(self, change: RolloutChange) -> None:
        key = change.rollout.key
        if change.kind in (RolloutChangeKind.STARTED, RolloutChangeKind.ADOPTED):
            self._expiry.pop(key, None)
        elif change.kind in (RolloutChangeKind.FINISHED, RolloutChangeKind.ABANDONED):
            duration = change.rollout.duration_seconds
            typed = (*key, workload_type(key[1]))
            if duration is not None:
                self.limit.observe(ROLLOUT_DURATION, self.durations, typed, duration)
            if self.ttl is not None and typed in self.durations:
                self._expiry[key] = self.clock() + self.ttl
                self._expiry.move_to_end(key)

    def expire(self) -> int:
        """Drop the duration series whose TTL ran out; how many."""
        now = self.clock()
        expired = 0
        while self._expiry:
            key, due = next(iter(self._expiry.items()))
            if due > now:
                break
            del self._expiry[key]
            self.durations.pop((*key, workload_type(key[1])), None)
            expired += 1
        return expired


class RolloutSource:
    """The rollout families: the durations of `RolloutMetrics`, and the in-progress and
    stuck gauges of every rollout the tracker knows (`gauges()`: workload -> (in progress,
    stuck)), read at scrape time."""

    def __init__(
        self,
        metrics: RolloutMetrics,
        gauges: Callable[[], Mapping[WorkloadKey, tuple[int, int]]],
    ) -> None:
        self.metrics = metrics
        self.gauges = gauges

    def snapshot(self) -> Iterable[FamilySnapshot]:
        gauges = [((*key, workload_type(key[1])), v) for key, v in self.gauges().items()]
        return (
            FamilySnapshot(ROLLOUT_DURATION, self.metrics.durations.items()),
            FamilySnapshot(ROLLOUT_IN_PROGRESS, [(key, v[0]) for key, v in gauges]),
            FamilySnapshot(ROLLOUT_STUCK, [(key, v[1]) for key, v in gauges]),
        )
