"""The agent's wiring: watches, lifecycle tracking, metrics and the HTTP server, supervised."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exporter import __version__, views
from exporter.auth import KubernetesAuth
from exporter.cgroups import (
    CgroupSampler,
    CgroupSource,
    SamplePass,
    raise_open_files_limit,
)
from exporter.core.catalog import ServiceCatalog
from exporter.core.correlation import Correlator
from exporter.core.endpoints import EndpointEvent
from exporter.core.episodes import ChangeKind, EpisodeChange, Source
from exporter.core.events import LifecycleEvent, Workload
from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.nodes import NodeEvent, NodeTracker
from exporter.core.peers import PeerSet
from exporter.core.pods import PodSnapshot
from exporter.core.rollouts import RolloutChange, RolloutChangeKind, RolloutTracker
from exporter.core.rules import CorrelationSettings
from exporter.core.services import PROBE_LABEL, ServiceRef
from exporter.exposition import Exposition
from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.events import EpisodeEvents
from exporter.kube.review import ReviewClient
from exporter.kube.watching import (
    ApiSession,
    Reflector,
    ResourceSpec,
    WatchHealth,
    WatchTiming,
)
from exporter.metrics import (
    AgentMetrics,
    AgentSource,
    ClientLatency,
    ClientLatencySource,
    EpisodeMetrics,
    RolloutMetrics,
    RolloutSource,
    ServiceSource,
)
from exporter.otlp import LatencyDelta, OtlpReceiver, OtlpSource, merge_deltas
from exporter.otlp.receiver import LocalSources
from exporter.probe import Prober, ProbeResult, ProbeSource, ProbeTarget
from exporter.process import ProcessSource
from exporter.runtime import Router
from exporter.server import ListenError, ReloadingCertificate, build_app, start_server
from exporter.settings import Settings
from exporter.watches import EndpointSliceWatch, NodeWatch, PeerWatch, PodWatch, ServiceWatch

log = logging.getLogger("tailwatch.agent")
episode_log = logging.getLogger("tailwatch.episodes")
rollout_log = logging.getLogger("tailwatch.rollouts")

#: How long the counters of a Service this agent stopped reporting stay on /metrics (its
#: endpoint events, episodes), so that Prometheus scrapes their last increments.
FORGET_AFTER = 300.0
#: Client deltas held before they are recorded anyway: ticks and scrapes record them far
#: sooner (20 Services x 10 requests a second hold ~200 a tick); a bound, not a schedule.
MAX_HELD_CLIENT_DELTAS = 4096
_EPISODE_MESSAGES = {
    ChangeKind.OPENED: "episode opened",
    ChangeKind.CLOSED: "episode closed",
    ChangeKind.RECOVERED: "episode recovered",
    ChangeKind.NOT_RECOVERED: "episode not recovered",
    ChangeKind.INTERRUPTED: "episode interrupted",
    ChangeKind.NO_BASELINE: "episode closed without baseline",
}


_ROLLOUT_MESSAGES = {
    RolloutChangeKind.STARTED: "rollout started",
    RolloutChangeKind.ADOPTED: "rollout in progress (started before this agent saw it)",
    RolloutChangeKind.SUPERSEDED: "rollout superseded",
    RolloutChangeKind.STUCK: "rollout stuck",
    RolloutChangeKind.PROGRESSING: "rollout progressing",
    RolloutChangeKind.FINISHED: "rollout finished",
    RolloutChangeKind.ABANDONED: "rollout abandoned",
}


def correlation_settings(settings: Settings) -> CorrelationSettings:
    """The windows and gates that open, close and recover episodes, each from its option
    (docs/correlation.md, *Settings*): what decides an episode is what `run --help` shows."""
    return CorrelationSettings(
        settle=settings.episode_settle,
        baseline=settings.baseline_window,
        recovery_window=settings.recovery_window,
        recovery_tolerance=settings.recovery_tolerance,
        recovery_max=settings.recovery_max,
        spike_ratio=settings.spike_ratio,
        spike_min_increase=settings.spike_min_increase,
        spike_min_slow=settings.spike_min_slow,
        min_samples=settings.window_min_samples,
        confidence=settings.quantile_confidence,
    )


def _episode_log_fields(change: EpisodeChange) -> dict[str, object]:
    """The fields of an episode's log line: the numbers of /api/v1/episodes, flattened."""
    doc = change.episode.as_json()
    fields: dict[str, object] = {
        "episode": doc["id"],
        "namespace": doc["namespace"],
        "service": doc["service"],
        "cause": doc["cause"],
        "status": doc["status"],
    }
    if doc["spike"] is not None:
        fields["spike_detected_at"] = doc["spike"]["detected_at"]
    if change.kind is not ChangeKind.OPENED:
        for key in ("opened_at", "closed_at", "duration_seconds", "impact", "recovered_at",
                    "recovery_seconds", "detected_at", "event_counts", "summary"):  # fmt: skip
            if doc[key] is not None:
                fields[key] = doc[key]
        latency = doc["latency"]
        if latency is not None:
            notes: list[str] = []
            for part in ("baseline", "during"):
                if latency[part] is not None:
                    fields[f"{part}_p99_seconds"] = latency[part]["p99"]
                    fields[f"{part}_samples"] = latency[part]["samples"]
                    notes += [f"{part}: {note}" for note in latency[part]["notes"]]
            if latency["ratios"] is not None:
                fields["p99_ratio"] = latency["ratios"]["p99"]
            if notes:
                fields["latency_notes"] = notes
        if doc["attribution"]:
            top = doc["attribution"][0]
            fields["top_container"] = f"{top['namespace']}/{top['pod']}/{top['container']}"
            fields["top_signals"] = top["signals"]
        noisy = next((n for n in doc["neighbours"] if n["signals"]), None)
        if noisy is not None:
            fields["top_neighbour"] = f"{noisy['namespace']}/{noisy['pod']}/{noisy['container']}"
            fields["top_neighbour_signals"] = noisy["signals"]
        if doc["node_pressure"] is not None:
            fields["node_pressure"] = doc["node_pressure"]
    else:
        fields["opened_at"] = doc["opened_at"]
        fields["first_event"] = doc["events"][0]["event"] if doc["events"] else ""
    return fields


@contextlib.asynccontextmanager
async def _reviews_through(auth: KubernetesAuth | None, api: ApiSession) -> AsyncIterator[None]:
    """--auth=kubernetes reviews go through `api` while it is open. Left before the session
    closes: a review made then would fail on a closed session; it gets 503 instead."""
    if auth is not None:
        auth.reviews.api = api
    try:
        yield
    finally:
        if auth is not None:
            auth.reviews.api = None


class Agent:
    """One tailwatch agent: everything `tailwatch run` starts."""

    def __init__(
        self,
        settings: Settings,
        *,
        connection: KubeConnection | None = None,
        timing: WatchTiming | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.timing = timing or WatchTiming()
        self.clock = clock
        self.monotonic = monotonic
        # Series are bounded where they are made (docs/metrics.md, *Cardinality*): at most
        # --series-limit label sets per family; those keyed by a workload go --series-ttl
        # after its last pod left the node (the tracker tells, `_correlate` expires them).
        self.metrics = AgentMetrics(
            series_limit=settings.series_limit, series_ttl=settings.series_ttl, clock=monotonic
        )
        self.tracker = PodLifecycleTracker(
            node=settings.node_name, occupancy=self.metrics.on_workload
        )
        self.catalog = ServiceCatalog(node=settings.node_name)
        # This agent's own Node: its bad states are the episode cause `node`.
        self.node_tracker = NodeTracker(settings.node_name)
        self.correlator = Correlator(
            correlation_settings(settings),
            node=settings.node_name,
            workloads=self._workloads,
            node_state=self.node_tracker.degraded,
        )
        self.episode_metrics = EpisodeMetrics(self.metrics.limit)
        # Every part publishes what it sees to the router; the correlator subscribes first,
        # so it has every event before whoever else listens (the Event emitter, the demo).
        # A handler that fails is counted (internal_error) and the others still hear.
        self.router = Router(self.metrics.internal_error)
        self.router.subscribe(LifecycleEvent, self._correlate_pod_event)
        self.router.subscribe(EndpointEvent, self._correlate_endpoint_event)
        self.router.subscribe(NodeEvent, self._correlate_node_event)
        self.router.subscribe(EpisodeChange, self._on_episode_change)
        self.router.subscribe(ProbeResult, self._on_probe_result)
        self.router.subscribe(LatencyDelta, self._on_client_delta)
        self.router.subscribe(SamplePass, self._on_sample_pass)
        # Further sections of /api/v1/episodes beside the episodes, by name.
        self.episode_sections: dict[str, Callable[[], Any]] = {}
        # Rollouts of the workloads behind the Services this agent reports (docs/lifecycle.md):
        # fed with their endpoints by `_update_service`, the pods arriving here, and the tick.
        self.rollouts = RolloutTracker(
            stuck_after=settings.rollout_stuck, settle=settings.episode_settle, keep=FORGET_AFTER
        )
        self.rollout_metrics = RolloutMetrics(
            self.metrics.limit, ttl=settings.series_ttl, clock=monotonic
        )
        self.router.subscribe(LifecycleEvent, self._rollouts_pod_event)
        self.router.subscribe(RolloutChange, self._on_rollout_change)
        self.episode_sections["rollouts"] = self.rollouts.as_json
        # --emit-events: every episode change is an Event on its Service, written by a worker
        # (exporter/kube/events.py); this node's are read back at start (_restore_episodes).
        self.episode_events: EpisodeEvents | None = None
        self._restored: set[ServiceRef] = set()  # Services of live restored episodes
        if settings.emit_events:
            self.episode_events = EpisodeEvents(
                settings.node_name,
                factor=self.correlator.settings.recovery_threshold_factor,
                uid_of=self._service_uid,
                count_dropped=self.metrics.count_dropped,
                on_error=self.metrics.internal_error,
                clock=clock,
                monotonic=monotonic,
                backoff=(self.timing.backoff_initial, self.timing.backoff_cap),
            )
            self.router.subscribe(EpisodeChange, self.episode_events.on_change)
            self.episode_sections["events"] = self.episode_events.as_json
        self.pods_health = WatchHealth("pods")
        self.services_health = WatchHealth("services")
        self.slices_health = WatchHealth("endpointslices")
        self.node_health = WatchHealth("node")
        self.healths = [
            self.pods_health,
            self.services_health,
            self.slices_health,
            self.node_health,
        ]
        # The agents that share the probing of Service addresses (docs/scale.md): none to
        # watch when peer discovery is off; then this agent probes every address itself.
        self.peers: PeerSet | None = None
        self.peer_watch: PeerWatch | None = None
        self._peer_drain: asyncio.Task[None] | None = None
        self._draining = False
        if settings.peer_discovery:
            self.peers = PeerSet(settings.node_name, settings.service_probers)
            self.peer_watch = PeerWatch(
                self.peers, self.metrics, self._probers_changed, self._peers_listed
            )
            self.peers_health = WatchHealth("peers")
            self.healths.append(self.peers_health)
        # The sampler runs in its own thread; it reads this snapshot, swapped on the loop.
        self._cgroup_pods: tuple[PodSnapshot, ...] = ()
        self.cgroups = CgroupSampler(settings.cgroup_root, lambda: self._cgroup_pods)
        self.client_latency = ClientLatency(
            slo_of=self._slo_of,
            state_of=self.correlator.state_of,
            classic_layout=settings.classic_buckets,
            limit=self.metrics.limit,
        )
        # Phases are spread by node name, so agents do not probe a Service in lockstep.
        self.prober = Prober(
            phase_seed=settings.node_name,
            state_of=self.correlator.state_of,
            on_result=self.router.publish,
            classic_layout=settings.classic_buckets,
        )
        # --otlp-sources=local: OTLP only from the pods of this node and the node itself; an
        # unknown source gets a retryable 503 while the pod watch is not synced and up.
        self.otlp_sources: LocalSources | None = None
        if settings.otlp_sources == "local":
            health = self.pods_health
            self.otlp_sources = LocalSources(
                self.tracker.pods,
                lambda: health.synced and health.failing_since is None,
                clock=monotonic,
            )
        self.otlp = OtlpReceiver(
            self.catalog.resolve,
            self.router.publish,
            metrics=settings.otlp_metric_names,
            sources=self.otlp_sources,
        )
        # /metrics is rendered by the exposition from these sources; its registry holds the
        # same sources for prometheus_client's generate_latest (the reference in tests).
        self.cgroup_source = CgroupSource(self.cgroups)
        self.exposition = Exposition(
            [
                AgentSource(
                    self.metrics,
                    pods=self.tracker.pods,
                    watches=lambda: self.healths,
                    endpoints=self._endpoint_counts,
                    extra_dropped=[
                        self.cgroups.dropped,
                        self.otlp.dropped,
                        self.otlp.ingest.dropped,
                        lambda: self.prober.ledger.dropped,
                    ],
                    clock=monotonic,
                ),
                ClientLatencySource(self.client_latency, before=self._record_client_deltas),
                self.cgroup_source,
                OtlpSource(self.otlp.outcomes),
                ProbeSource(self.prober.ledger),
                ServiceSource(self.episode_metrics, self.correlator, self._slos),
                RolloutSource(self.rollout_metrics, lambda: self.rollouts.gauges(self.clock())),
                ProcessSource(),  # the standard process_* families, read from /proc
            ]
        )
        self.registry = self.exposition.registry
        # Per opted-in Service: the probe targets this agent has for it, and whether it
        # reports the Service (it has latency for it: docs/scale.md). Each change of a
        # Service costs O(that Service), never O(all Services).
        self._probe_targets: dict[ServiceRef, frozenset[ProbeTarget]] = {}
        self._reported: set[ServiceRef] = set()
        self._client_services: set[ServiceRef] = set()
        self._client_deltas: list[LatencyDelta] = []  # held until `_record_client_deltas`
        self._forget_at: dict[ServiceRef, float] = {}  # monotonic time to drop its counters
        self.service_watch = ServiceWatch(
            self.catalog, self.metrics, self._services_changed, self.clock
        )
        self.node_watch = NodeWatch(
            self.node_tracker, self.metrics, self.router.publish, self.clock
        )
        self.slice_watch = EndpointSliceWatch(
            self.catalog,
            self.metrics,
            self.router.publish,
            self._services_changed,
            self.clock,
            reports=self.reports,
        )

    async def _sample_cgroups(self, stop: asyncio.Event) -> None:
        """Sample cgroups every --sample-interval in one dedicated thread: a pass is a few
        thousand blocking reads, which must not stall the watches and the prober. Missed
        ticks are skipped, never piled up."""
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgroups")
        interval = self.settings.sample_interval
        next_at = self.monotonic()
        try:
            while not stop.is_set():
                self._cgroup_pods = tuple(self.tracker.pods())
                result = await loop.run_in_executor(executor, self._sample_pass, self.clock())
                self.router.publish(result)
                next_at += interval
                if next_at < self.monotonic():
                    next_at = self.monotonic() + interval
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), next_at - self.monotonic())
        finally:
            executor.shutdown(wait=True)
            self.cgroups.close()

    def _sample_pass(self, now: float) -> SamplePass:
        """One sampling pass and then, when a scrape is near, its /metrics lines, both in the
        sampler's thread: a scrape finds the cgroup families rendered (docs/performance.md,
        /metrics exposition)."""
        result = self.cgroups.sample(now)
        # Only in the passes just before the next scrape (ScrapeRhythm): the next pass is
        # one interval away, so the last pass before any scrape is always rendered ahead.
        self.exposition.prepare(self.cgroup_source, ahead=2 * self.settings.sample_interval)
        return result

    def _on_sample_pass(self, result: SamplePass) -> None:
        """A cgroup pass: its kernel OOM kills are lifecycle events (their counter is the
        cgroup collector's); its readings go to the correlator's attribution."""
        for event in result.events:
            logging.getLogger("tailwatch.events").info(
                "lifecycle event", extra=event.as_log_fields()
            )
            self.router.publish(event)
        self.correlator.observe_resources(
            result.at, result.samples, self._sidecars(), result.node_pressure
        )

    # -- correlation -----------------------------------------------------------------------

    def _workloads(self) -> dict[tuple[str, str], Workload]:
        return {(p.namespace, p.name): p.workload for p in self.tracker.pods()}

    def _sidecars(self) -> dict[tuple[str, str], frozenset[str]]:
        """The sidecars of every pod of the node, by the one rule of exporter/core/sidecars.py
        (its annotation, native sidecars, well-known names; never the containers' order)."""
        out: dict[tuple[str, str], frozenset[str]] = {}
        for pod in self._cgroup_pods:
            names = pod.sidecars
            if names:
                out[(pod.namespace, pod.name)] = names
        return out

    def _rollouts_pod_event(self, event: LifecycleEvent) -> None:
        self.router.publish_all(self.rollouts.on_pod_event(event))

    def _on_rollout_change(self, change: RolloutChange) -> None:
        """Counted (the duration of a finished one) and logged."""
        self.rollout_metrics.record(change)
        rollout_log.info(_ROLLOUT_MESSAGES[change.kind], extra=change.as_log_fields())

    def _correlate_pod_event(self, event: LifecycleEvent) -> None:
        self._record_client_deltas()  # under the state they came in
        self.router.publish_all(self.correlator.on_pod_event(event))

    def _correlate_node_event(self, event: NodeEvent) -> None:
        self._record_client_deltas()
        self.router.publish_all(self.correlator.on_node_event(event))

    def _correlate_endpoint_event(self, event: EndpointEvent) -> None:
        self._record_client_deltas()
        # The correlator has the Service's endpoints already (`_update_service` runs first).
        self.router.publish_all(self.correlator.on_endpoint_event(event))

    def _on_probe_result(self, result: ProbeResult) -> None:
        t = result.target
        source = Source.SERVICE_PROBE if t.target == "service" else Source.ENDPOINT_PROBE
        # At its intended start: latency is measured from then, and a slow answer's
        # slowness began then (a 1 s probe ending now says nothing about now).
        started = self.clock() - result.latency
        self.correlator.record_latency(
            ServiceRef(t.namespace, t.service), source, result.latency, started
        )

    def _on_episode_change(self, change: EpisodeChange) -> None:
        """Counted, logged, and the Service's reporting updated."""
        self.episode_metrics.record(change)
        episode_log.info(_EPISODE_MESSAGES[change.kind], extra=_episode_log_fields(change))
        if change.kind is not ChangeKind.OPENED:  # it may be all that kept it reported
            self._update_service(change.episode.service)

    async def _correlate(self, stop: asyncio.Event) -> None:
        """Close settled episodes, judge recovery and look for tail spikes, on a fixed tick."""
        interval = self.correlator.settings.tick_interval
        frozen = False
        if self._restored:  # restored episodes are judged once their endpoints are known
            await self._synced(stop)
            self._services_changed(self._restored)
        while not stop.is_set():
            if not frozen and self.readiness()[0]:
                # Once synced, move what startup built (modules, the first lists) out of the
                # collector's sight: full collections then scan only what changes, instead
                # of stalling the loop, and the prober's measurements, for tens of ms.
                gc.freeze()
                frozen = True
            # A bug in one step is counted and logged (internal_error); the others, and the
            # next tick, still run.
            with self.metrics.guard("the endpoint removals flush"):
                self.slice_watch.flush()
            self._record_client_deltas()
            with self.metrics.guard("the correlation tick"):
                self.router.publish_all(self.correlator.tick(self.clock()))
            with self.metrics.guard("the series expiry"):
                self._forget_due()
                self.metrics.expire()
            with self.metrics.guard("the rollout tick"):
                self.router.publish_all(self.rollouts.tick(self.clock()))
                self.rollout_metrics.expire()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _restore_episodes(self, api: ApiSession) -> None:
        """--emit-events: this node's episodes read back from its Events, before any watch
        delivers an event (docs/reliability.md). The live ones keep their Services reported
        until they end (or the Service turns out gone, once the watches have synced)."""
        assert self.episode_events is not None
        records = await self.episode_events.read_back(api, timeout=self.timing.request_timeout)
        recent = len(self.correlator.recent)
        live = self.correlator.restore(records, self.clock())
        self._restored = {e.service for e in live}
        self._reported |= self._restored
        restored_recent = len(self.correlator.recent) - recent
        self.episode_events.restored(len(live), restored_recent)
        if records:
            log.info(
                "episodes restored from this node's Events",
                extra={"events": len(records), "live": len(live), "recent": restored_recent},
            )

    async def _synced(self, stop: asyncio.Event) -> None:
        """Until every watch has delivered its first list (at most the inactivity timeout)."""
        deadline = self.monotonic() + self.timing.inactivity_timeout
        interval = self.correlator.settings.tick_interval
        while not (stop.is_set() or self.readiness()[0]) and self.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _service_uid(self, ref: ServiceRef) -> str:
        spec = self.catalog.specs.get(ref)
        return spec.uid if spec is not None else ""

    def episodes_json(self) -> dict[str, Any]:
        """The JSON of /api/v1/episodes (exporter/views.py); `self.episode_sections` adds
        named sections beside the episodes."""
        return views.episodes_json(self.correlator, self.clock(), self.episode_sections)

    def _slos(self) -> dict[ServiceRef, float]:
        slos = {}
        for ref in self._reported:
            spec = self.catalog.specs.get(ref)
            if spec is not None and spec.slo is not None:
                slos[ref] = spec.slo
        return slos

    def _slo_of(self, service: Any) -> float | None:
        spec = self.catalog.specs.get(service)
        return spec.slo if spec is not None else None

    def _on_client_delta(self, delta: LatencyDelta) -> None:
        """A client delta is held, to be recorded with the others of its Service
        (`_record_client_deltas`); a new client Service is reported at once."""
        self._client_deltas.append(delta)
        if delta.service not in self._client_services:
            self._client_services.add(delta.service)
            self._services_changed({delta.service})
        if len(self._client_deltas) >= MAX_HELD_CLIENT_DELTAS:
            self._record_client_deltas()

    def _record_client_deltas(self) -> None:
        """Record the client deltas held since the last call, merged per Service and
        metric: a Service's clients send the same buckets, so one tick's worth costs one
        delta's recording instead of one per request (10 a second each at the reference
        load). Called before anything reads them or can change a Service's state: the
        correlation tick, a lifecycle event, a Service's removal, a scrape. Each is then
        recorded under the state it came in, and the correlator holds client ranges until
        its next tick or event anyway: nothing a user sees changes but the cost."""
        if not self._client_deltas:
            return
        held, self._client_deltas = self._client_deltas, []
        for delta in merge_deltas(held):
            with self.metrics.guard("recording the client latency"):
                self.client_latency.record(
                    delta.service, delta.buckets, delta.sum_seconds, delta.exemplars
                )
                self.correlator.record_latency_ranges(delta.service, Source.CLIENT, delta.buckets)

    def _endpoint_counts(self) -> dict[Any, Any]:
        counts = {}
        for ref in self._reported:
            c = self.catalog.endpoints.counts_of(ref)
            if c is not None:
                counts[ref] = c
        return counts

    # -- the Services this agent probes and reports ------------------------------------------

    def probes_address(self, ref: ServiceRef) -> bool:
        """Is this agent one of the k that probe the Service's address? (Every agent that
        sees no peers is.)"""
        if self.peer_watch is None:
            return True
        # Until the peers are listed, none: else every agent of a cluster starting at once
        # would probe every Service address for a moment.
        return self.peer_watch.synced and self.peer_watch.peers.is_prober(str(ref))

    def _peers_listed(self) -> None:
        """The first list of the peers: now this agent knows which addresses it probes."""
        self._services_changed({*self.catalog.specs, *self.catalog.skipped})

    def _probers_changed(self, keys: set[str]) -> None:
        """The peers changed: these Services' addresses are now probed by this agent, or no
        longer."""
        self._services_changed({ServiceRef(*key.split("/", 1)) for key in keys})

    def _forget(self, ref: ServiceRef) -> None:
        self.metrics.forget_service(ref)
        self.episode_metrics.forget_service(ref)

    def _forget_due(self) -> None:
        """Drop the counters of Services this agent stopped reporting FORGET_AFTER ago."""
        now = self.monotonic()
        for ref in [r for r, at in self._forget_at.items() if at <= now]:
            del self._forget_at[ref]
            self._forget(ref)

    def _drain_peers_soon(self) -> None:
        """The peer set's full setup (when this agent joins, or many peers change at once)
        costs O(Services x peers in its zone): it is done in steps of a few ms, between
        which the event loop runs the prober and the watches, never in one stall that
        would show as false latency in every probe of the node."""
        peers = self.peers
        if peers is None or not peers.pending:
            return
        if self._peer_drain is not None and not self._peer_drain.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test feeding the agent by hand): all at once
            if not self._draining:
                self._draining = True
                try:
                    while peers.pending:
                        self._probers_changed(peers.setup_pending())
                finally:
                    self._draining = False
            return
        self._peer_drain = loop.create_task(self._drain_peers(peers), name="peer-setup")

    async def _drain_peers(self, peers: PeerSet) -> None:
        while peers.pending:
            self._probers_changed(peers.setup_pending())
            await asyncio.sleep(0)

    def reports(self, ref: ServiceRef) -> bool:
        """Does this agent report the Service: its endpoint events, counts, SLO, episodes?
        Only if it has latency for it: it probes its address, hosts one of its endpoints or
        receives its clients' OTLP. So a disruption leaves k plus a few local records, not
        one per node (docs/scale.md)."""
        return ref in self._reported

    def _services_changed(self, refs: set[ServiceRef]) -> None:
        """These Services changed (spec, opt-in, endpoints, or whether this agent probes
        their address): update their targets and what this agent reports of them."""
        for ref in refs:
            self._update_service(ref)
        self._drain_peers_soon()

    def _update_service(self, ref: ServiceRef) -> None:
        catalog = self.catalog
        opted_in = catalog.opted_in(ref)
        # The peer set learns the Services once the peers are listed (then all of them, set
        # up in steps): before, this agent probes no address and the set has nothing to say.
        if self.peer_watch is not None and self.peer_watch.synced:
            if opted_in:
                self.peer_watch.peers.add_service(str(ref))
            else:
                self.peer_watch.peers.remove_service(str(ref))
        address = opted_in and self.probes_address(ref)
        # An episode in progress keeps the Service reported until it has recovered: the
        # node whose pod was evicted or rescheduled sees the end of its own episode.
        reported = opted_in and (
            address
            or bool(catalog.local_endpoints(ref))
            or ref in self._client_services
            or self.correlator.has_episode(ref)
        )
        if reported:
            self._reported.add(ref)
            self._forget_at.pop(ref, None)
            self.correlator.add_service(ref)
            self.correlator.endpoints_changed(ref, catalog.endpoints.view(ref))
            if catalog.endpoints.synced:  # the first list is the starting state
                with self.metrics.guard("the rollout tracker"):
                    view = catalog.endpoints.view(ref)
                    changes = self.rollouts.observe(ref, view, self.clock(), self.tracker.pod)
                    self.router.publish_all(changes)
        elif ref in self._reported:
            self._record_client_deltas()  # what came before it goes
            self._reported.discard(ref)
            self.correlator.remove_service(ref)
            with self.metrics.guard("the rollout tracker"):
                self.router.publish_all(self.rollouts.forget_service(ref, self.clock()))
            # Its counters stay a while, so that Prometheus scrapes their last increments.
            self._forget_at[ref] = self.monotonic() + FORGET_AFTER
        if not opted_in:
            self._forget_at.pop(ref, None)
            self._forget(ref)
            if ref in self._client_services:
                self._record_client_deltas()
                self._client_services.discard(ref)
                self.client_latency.forget(ref)
        wanted = frozenset(
            ProbeTarget.from_spec(t) for t in catalog.targets_of(ref, address=address)
        )
        held = self._probe_targets.get(ref, frozenset())
        if wanted != held:
            self.prober.update_targets(held - wanted, wanted - held)
            if wanted:
                self._probe_targets[ref] = wanted
            else:
                del self._probe_targets[ref]

    def targets(self) -> dict[str, Any]:
        """The JSON of /api/v1/targets (exporter/views.py)."""
        watch = self.peer_watch
        return views.targets_json(
            self.settings,
            self.catalog,
            self.prober,
            self.probes_address,
            peers=watch.peers if watch is not None else None,
            peers_listed=watch is not None and watch.synced,
        )

    def _peer_reflectors(self, reflector: Callable[..., Reflector]) -> list[Reflector]:
        """The watch of the peer agents' pods, when peer discovery is on."""
        if self.peer_watch is None:
            return []
        namespace = self.settings.pod_namespace
        # Only Running pods can be peers: the server leaves out the others (a pod being
        # created or finished), which spares every agent their changes (docs/scale.md).
        spec = ResourceSpec(
            "peers",
            f"/api/v1/namespaces/{namespace}/pods",
            field_selector="status.phase=Running",
            label_selector=self.settings.peer_selector,
        )
        return [reflector(spec, self.peer_watch, self.peers_health)]

    def readiness(self) -> tuple[bool, str]:
        now = self.monotonic()
        waiting = [
            h.resource for h in self.healths if not h.is_ready(now, self.timing.inactivity_timeout)
        ]
        if waiting:
            return False, "not ready: watches not synced: " + ", ".join(waiting)
        return True, "ready"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or forever); raises ListenError if an address is taken."""
        stop = stop or asyncio.Event()
        connection = self.connection or load_connection(self.settings.kubeconfig)
        raise_open_files_limit()  # the sampler keeps a few thousand cgroup files open
        # --auth=kubernetes: the reviews go through the API session opened below; requests
        # that arrive before it is open get 503 (exporter/auth.py).
        auth = None
        if self.settings.auth == "kubernetes":
            reviews = ReviewClient(ttl=self.settings.auth_cache_ttl, clock=self.monotonic)
            auth = KubernetesAuth(reviews, self.metrics.count_dropped)
        app = build_app(
            self.exposition,
            self.readiness,
            {"/api/v1/targets": self.targets, "/api/v1/episodes": self.episodes_json},
            authorize=auth,
        )
        # TLS: a pair that cannot be loaded now raises TlsError (the CLI exits 2); later
        # rotations are loaded as they come (exporter.server.ReloadingCertificate).
        cert_file, key_file = self.settings.tls_cert_file, self.settings.tls_key_file
        tls = None
        if cert_file is not None and key_file is not None:
            tls = ReloadingCertificate(cert_file, key_file, self.metrics.count_dropped)
        runner = await start_server(
            app, self.settings.listen, tls=tls, count=self.metrics.count_dropped
        )
        otlp_runner = None
        if self.settings.otlp_listen is not None:
            try:
                otlp_runner = await self.otlp.start(self.settings.otlp_listen)
            except OSError as exc:
                await runner.cleanup()
                raise ListenError("--otlp-listen", self.settings.otlp_listen, exc) from exc
        otlp_grpc = None
        if self.settings.otlp_grpc_listen is not None:
            # grpcio is loaded only here, when asked for (~14 MiB: docs/otlp.md, "OTLP/gRPC").
            from exporter.otlp.grpc_receiver import GrpcReceiver  # noqa: PLC0415

            try:
                otlp_grpc = await GrpcReceiver(self.otlp).start(self.settings.otlp_grpc_listen)
            except OSError as exc:
                await asyncio.gather(*(r.cleanup() for r in (otlp_runner, runner) if r))
                raise ListenError(
                    "--otlp-grpc-listen", self.settings.otlp_grpc_listen, exc
                ) from exc
        log.info(
            "tailwatch agent started",
            extra={
                "node": self.settings.node_name,
                "listen": str(self.settings.listen),
                "otlp_listen": str(self.settings.otlp_listen or "disabled"),
                "otlp_grpc_listen": str(self.settings.otlp_grpc_listen or "disabled"),
                "api": connection.host,
                "api_config": connection.source,
                "api_tls": connection.tls,
                "tls": "on" if self.settings.tls else "off",
                "auth": self.settings.auth,
                "otlp_sources": self.settings.otlp_sources,
                "list_mode": self.settings.list_mode,
                "address_probing": (
                    f"shared by {self.settings.service_probers} of the pods matching "
                    f"{self.settings.peer_selector!r} in {self.settings.pod_namespace}"
                    if self.peers is not None
                    else "every Service address (peer discovery off: no --peer-selector "
                    "or no POD_NAMESPACE)"
                ),
            },
        )
        node = self.settings.node_name
        opted_in = f"{PROBE_LABEL}=true"
        try:
            # The User-Agent names the node: the API server's audit log and metrics (and the
            # simulator) can tell the agents of a DaemonSet apart.
            user_agent = f"tailwatch/{__version__} node/{node}"
            async with (
                ApiSession(connection, self.timing, user_agent=user_agent) as api,
                _reviews_through(auth, api),
            ):
                mode = self.settings.list_mode

                def reflector(spec: ResourceSpec, handler: Any, health: WatchHealth) -> Reflector:
                    return Reflector(
                        api, spec, handler, health, clock=self.monotonic, list_mode=mode
                    )

                if self.episode_events is not None:  # before any watch delivers an event
                    await self._restore_episodes(api)
                pods: Any = PodWatch(self.tracker, self.metrics, self.router.publish, self.clock)
                if self.otlp_sources is not None:  # it follows the pods of the node
                    pods = self.otlp_sources.watching(pods)
                reflectors = [
                    reflector(
                        ResourceSpec("pods", "/api/v1/pods", f"spec.nodeName={node}"),
                        pods,
                        self.pods_health,
                    ),
                    *self._peer_reflectors(reflector),
                    reflector(
                        ResourceSpec("services", "/api/v1/services", label_selector=opted_in),
                        self.service_watch,
                        self.services_health,
                    ),
                    # EndpointSlices carry their Service's labels: the same selector applies.
                    reflector(
                        ResourceSpec(
                            "endpointslices",
                            "/apis/discovery.k8s.io/v1/endpointslices",
                            label_selector=opted_in,
                        ),
                        self.slice_watch,
                        self.slices_health,
                    ),
                    # Its own Node only: one object, whatever the size of the cluster.
                    reflector(
                        ResourceSpec(
                            "node", "/api/v1/nodes", field_selector=f"metadata.name={node}"
                        ),
                        self.node_watch,
                        self.node_health,
                    ),
                ]
                tasks = [
                    asyncio.create_task(r.run(), name=f"watch-{r.resource.name}")
                    for r in reflectors
                ]
                tasks.append(asyncio.create_task(self._sample_cgroups(stop), name="cgroups"))
                tasks.append(asyncio.create_task(self.prober.run(), name="prober"))
                tasks.append(asyncio.create_task(self._correlate(stop), name="correlation"))
                if self.episode_events is not None:
                    events = self.episode_events.run(api)
                    tasks.append(asyncio.create_task(events, name="episode-events"))
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
                for task in [*tasks, stopper]:
                    task.cancel()
                await asyncio.gather(*tasks, stopper, return_exceptions=True)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise RuntimeError(f"{task.get_name()} stopped") from task.exception()
        finally:
            if self._peer_drain is not None:
                self._peer_drain.cancel()
            # Both listeners at once, each within about SHUTDOWN_GRACE (1 s) whatever their
            # clients are doing (exporter.server).
            listeners = (otlp_grpc, otlp_runner, runner)
            await asyncio.gather(*(r.cleanup() for r in listeners if r is not None))
            log.info("tailwatch agent stopped")
