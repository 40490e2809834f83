"""The correlation core (docs/correlation.md): episodes of each opted-in Service, built from
lifecycle events (node-local pod events and the cluster view of endpoints), latency samples
(the prober and OTLP clients) and cgroup samples; and the `state` of every latency sample.

An episode opens at the first disruptive event touching a Service and closes when every
endpoint is ready, none is terminating and the set has been stable for `settle`; a tail
spike with no lifecycle event is an episode too (`resource_pressure` or `unexplained`),
from when its tail rose to when it fell. Impact compares latency during the episode with
the steady baseline before it; recovery is when latency really returned within tolerance
after the close, found once a window confirms it (exporter/core/tails.py). The episodes
themselves, and their words and JSON, are in exporter/core/episodes.py. Pure: every call
takes `now` (epoch seconds).
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.attribution import ContainerReading, PodKey, ResourceTracker
from exporter.core.endpoints import Endpoint, EndpointEvent, EndpointEventKind
from exporter.core.episodes import (
    CAUSE_RANK,
    Cause,
    ChangeKind,
    CorrelationSettings,
    Episode,
    EpisodeChange,
    Evidence,
    Impact,
    LatencyImpact,
    ServiceState,
    Source,
    Status,
    iso,
)
from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.histogram import FineHistogram
from exporter.core.quantiles import Tail
from exporter.core.services import ServiceRef
from exporter.core.tails import ServiceLatency, fell_at, rose_at, spiking

#: Non-disruptive events remembered per Service, for the episode they may lead to.
PRECEDING_EVENTS = 16

# Pod events that disrupt a Service their pod backs, and those that only tell the cause.
_DISRUPTIVE_POD_EVENTS = frozenset(
    {
        PodEventKind.CONTAINER_RESTART,
        PodEventKind.CRASH_LOOP,
        PodEventKind.OOM_KILL,
        PodEventKind.NOT_READY,
        PodEventKind.TERMINATING,
        PodEventKind.EVICTED,
    }
)
EVICTION_REASONS = frozenset(
    {
        "EvictionByEvictionAPI",
        "PreemptionByScheduler",
        "DeletionByTaintManager",
        "TerminationByKubelet",
    }
)
Changes = list[EpisodeChange]


def replica_set_of(pod: str) -> str | None:
    """The ReplicaSet of a Deployment's pod from its name (`<rs>-<5 chars>`), else None."""
    rs, _, suffix = pod.rpartition("-")
    if rs and len(suffix) == 5 and suffix.isalnum() and "-" in rs:
        return rs
    return None


@dataclass
class _ServiceView:
    """What the correlator holds per Service."""

    ref: ServiceRef
    latency: ServiceLatency
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    episode: Episode | None = None  # open, or recovering
    local_pods: set[PodKey] = field(default_factory=set)
    seq: int = 0
    # Events that touched the Service while it was steady without disrupting it.
    preceding: deque[EndpointEvent | LifecycleEvent] = field(
        default_factory=lambda: deque(maxlen=PRECEDING_EVENTS)
    )


class Correlator:
    """Episodes of the opted-in Services this agent knows.

    Inputs: `set_services`, `endpoints_changed` (the endpoint view after every change),
    `on_endpoint_event`, `on_pod_event`, `record_latency`/`record_latency_ranges`,
    `observe_resources`, and `tick` (every `settings.tick_interval` seconds). The event
    handlers and `tick` return the `EpisodeChange`s they caused (episodes change state
    only there). `state_of` gives the `state` label of a sample.
    `workloads()` maps this node's pods (namespace, name) to their workloads.
    """

    def __init__(
        self,
        settings: CorrelationSettings | None = None,
        *,
        node: str = "",
        workloads: Callable[[], Mapping[PodKey, Workload]] = dict,
    ) -> None:
        self.settings = settings or CorrelationSettings()
        self.node = node
        self.workloads = workloads
        self._index_stale = False
        self.services: dict[ServiceRef, _ServiceView] = {}
        self.recent: list[Episode] = []  # finished episodes, newest last
        s = self.settings
        self.resources = ResourceTracker(s.baseline, history=s.recovery_window + s.settle)
        self._pod_services: dict[PodKey, set[ServiceRef]] = {}
        self._workload_services: dict[tuple[str, str, str], set[ServiceRef]] = {}

    # -- services and endpoints --------------------------------------------------------

    def set_services(self, refs: Iterable[ServiceRef]) -> None:
        """The opted-in Services now. A Service that left is forgotten with its episode."""
        wanted = set(refs)
        for gone in [r for r in self.services if r not in wanted]:
            del self.services[gone]
            self._index_stale = True
        for ref in wanted:
            if ref not in self.services:
                self.services[ref] = self._new_view(ref)

    def add_service(self, ref: ServiceRef) -> None:
        """Keep episodes for `ref` from now on (this agent has latency for it)."""
        if ref not in self.services:
            self.services[ref] = self._new_view(ref)

    def has_episode(self, ref: ServiceRef) -> bool:
        """Is an episode of `ref` open, or closed and waiting for its recovery?"""
        view = self.services.get(ref)
        return view is not None and view.episode is not None

    def remove_service(self, ref: ServiceRef) -> None:
        """Forget `ref` with its episode (gone, or this agent no longer has latency for it)."""
        if self.services.pop(ref, None) is not None:
            self._index_stale = True

    def _new_view(self, ref: ServiceRef) -> _ServiceView:
        return _ServiceView(ref, ServiceLatency(self.settings))

    def baseline_of(self, ref: ServiceRef, now: float) -> Tail | None:
        """The steady baseline of the Service's headline latency up to `now`: whether it can
        bound a p99 yet (`.p99.supported`) tells if episodes of it can be judged."""
        view = self.services.get(ref)
        source = view.latency.primary() if view is not None else None
        if view is None or source is None:
            return None
        return view.latency.baseline(source, now)

    def _view(self, ref: ServiceRef) -> _ServiceView | None:
        return self.services.get(ref)

    def endpoints_changed(self, ref: ServiceRef, endpoints: Mapping[str, Endpoint]) -> None:
        """The Service's endpoints after a change (`EndpointTracker.view`)."""
        view = self._view(ref)
        if view is None or endpoints == view.endpoints:
            return
        view.endpoints = dict(endpoints)
        view.local_pods = {
            _pod_key(e) for e in endpoints.values() if e.pod and self.node and e.node == self.node
        }
        if view.episode is not None and view.episode.open:
            view.episode.pods |= view.local_pods
        self._index_stale = True

    def _pod_index(self) -> dict[PodKey, set[ServiceRef]]:
        """The Services each pod backs (rebuilt lazily: endpoints change far more often than
        pods have events)."""
        if self._index_stale:
            self._rebuild_pod_index()
            self._index_stale = False
        return self._pod_services

    def _rebuild_pod_index(self) -> None:
        known = self.workloads()
        pods: dict[PodKey, set[ServiceRef]] = {}
        workloads: dict[tuple[str, str, str], set[ServiceRef]] = {}
        for view in self.services.values():
            for e in view.endpoints.values():
                if e.pod:
                    pods.setdefault(_pod_key(e), set()).add(view.ref)
            for namespace, pod in view.local_pods:
                w = known.get((namespace, pod))
                if w is not None and w.kind != "Pod":
                    workloads.setdefault((namespace, w.kind, w.name), set()).add(view.ref)
        self._pod_services = pods
        # Workloads stay known after their pods left (a rollout replaces every pod).
        for key, refs in workloads.items():
            self._workload_services.setdefault(key, set()).update(refs)
        for key in list(self._workload_services):
            self._workload_services[key] &= set(self.services)
            if not self._workload_services[key]:
                del self._workload_services[key]

    # -- lifecycle events ----------------------------------------------------------------

    def on_endpoint_event(self, event: EndpointEvent) -> list[EpisodeChange]:
        view = self._view(event.service)
        changes: Changes = []
        if view is None:
            return changes
        self._flush(view, event.at)
        kind = event.kind
        endpoint = view.endpoints.get(event.identity)
        not_ready_now = endpoint is None or not endpoint.ready
        disruptive = kind in (
            EndpointEventKind.NOT_READY,
            EndpointEventKind.TERMINATING,
            EndpointEventKind.REMOVED,
        ) or (
            kind in (EndpointEventKind.ADDED, EndpointEventKind.REPLACED, EndpointEventKind.MOVED)
            and not_ready_now
        )
        self._event(view, event, disruptive, changes)
        return changes

    def on_pod_event(self, event: LifecycleEvent) -> list[EpisodeChange]:
        refs = set(self._pod_index().get((event.namespace, event.pod), ()))
        w = event.workload
        if w.kind != "Pod":
            refs |= self._workload_services.get((event.namespace, w.kind, w.name), set())
        changes: Changes = []
        for ref in sorted(refs, key=str):
            view = self._view(ref)
            if view is None:
                continue
            self._flush(view, event.at)
            self._event(view, event, event.kind in _DISRUPTIVE_POD_EVENTS, changes)
        return changes

    def _event(
        self,
        view: _ServiceView,
        event: EndpointEvent | LifecycleEvent,
        disruptive: bool,
        changes: Changes,
    ) -> None:
        """An event touching the Service: joins the open episode, opens one if disruptive,
        else is remembered for `settle` (a rollout's new pod arrives before the first old
        one goes: that arrival belongs to the episode it leads to)."""
        episode = view.episode if view.episode is not None and view.episode.open else None
        if episode is None:
            if not disruptive:
                view.preceding.append(event)
                return
            episode = self._open(view, event.at, event.at, changes)
        self._join(episode, event)

    def _join(self, episode: Episode, event: EndpointEvent | LifecycleEvent) -> None:
        if isinstance(event, EndpointEvent):
            self._join_endpoint(episode, event)
        else:
            self._join_pod(episode, event)
        episode.last_change = max(episode.last_change, event.at)
        self._update_cause(episode)

    def _join_endpoint(self, episode: Episode, event: EndpointEvent) -> None:
        kind = event.kind
        self._add_evidence(
            episode,
            Evidence(
                event.at, "endpoint", kind.value, pod=event.pod, node=event.node,
                reason=f"from {event.previous_node}" if event.previous_node else "",
            ),
        )  # fmt: skip
        cause = {
            EndpointEventKind.NOT_READY: Cause.READINESS,
            EndpointEventKind.ADDED: Cause.SCALE,
            EndpointEventKind.REMOVED: Cause.SCALE,
            EndpointEventKind.TERMINATING: Cause.SCALE,
            EndpointEventKind.REPLACED: Cause.RESTART,
            EndpointEventKind.MOVED: Cause.RESCHEDULE,
        }.get(kind)
        if cause is not None:
            episode.causes.add(cause)
        rs = replica_set_of(event.pod) if event.pod else None
        if rs is not None:
            if kind is EndpointEventKind.ADDED:
                episode.replica_sets_added.add(rs)
            elif kind in (EndpointEventKind.TERMINATING, EndpointEventKind.REMOVED):
                episode.replica_sets_leaving.add(rs)
            if _replica_sets_rolled(episode):
                episode.causes.add(Cause.ROLLOUT)

    def _join_pod(self, episode: Episode, event: LifecycleEvent) -> None:
        kind = event.kind
        self._add_evidence(
            episode,
            Evidence(
                event.at, "pod", kind.value, pod=event.pod, container=event.container,
                reason=event.reason, node=event.node,
            ),
        )  # fmt: skip
        if event.node == self.node or not event.node:
            episode.pods.add((event.namespace, event.pod))
        if kind is PodEventKind.ROLLOUT:
            episode.causes.add(Cause.ROLLOUT)
        elif kind is PodEventKind.EVICTED or (
            kind is PodEventKind.TERMINATING and event.reason in EVICTION_REASONS
        ):
            episode.causes.add(Cause.EVICTION)
        elif kind in (PodEventKind.CONTAINER_RESTART, PodEventKind.CRASH_LOOP,
                      PodEventKind.OOM_KILL):  # fmt: skip
            episode.causes.add(Cause.RESTART)
        elif kind is PodEventKind.NOT_READY:
            episode.causes.add(Cause.READINESS)

    def _add_evidence(self, episode: Episode, evidence: Evidence) -> None:
        key = f"{evidence.source}/{evidence.event}"
        episode.counts[key] = episode.counts.get(key, 0) + 1
        if len(episode.evidence) < self.settings.max_events:
            episode.evidence.append(evidence)
        else:
            episode.evidence_dropped += 1

    def _update_cause(self, episode: Episode) -> None:
        lifecycle = [c for c in episode.causes if c in CAUSE_RANK]
        if lifecycle:
            episode.cause = min(lifecycle, key=CAUSE_RANK.__getitem__)
            return
        window = episode.attribution_window or (episode.opened_at, episode.closed_at or 1e18)
        ranked = episode.pressure.ranked(self.settings.thresholds, *window)
        pressure = any(c.signals for c in ranked)
        episode.cause = Cause.RESOURCE_PRESSURE if pressure else Cause.UNEXPLAINED

    # -- opening and closing -----------------------------------------------------------

    def _open(
        self,
        view: _ServiceView,
        at: float,
        baseline_end: float,
        changes: Changes,
        *,
        spike: tuple[float, float] | None = None,
    ) -> Episode:
        """Open an episode at `at` against the baselines before `baseline_end`; `spike` is
        (detected at, threshold) for an episode opened by a tail spike."""
        held = view.episode
        view.seq += 1
        episode_id = f"{view.ref}/{view.seq}"
        if held is not None and held.status is Status.RECOVERING:
            held.status = Status.INTERRUPTED
            held.interrupted_by = episode_id
            self._finish(view, held)
            changes.append(EpisodeChange(ChangeKind.INTERRUPTED, held))
        latency = view.latency
        primary = latency.primary()
        impacts: dict[Source, LatencyImpact] = {}
        for source in latency.timelines:
            tail = latency.baseline(source, baseline_end)
            if source is primary:
                # Back to back episodes: the last baseline that could bound a p99.
                if tail is not None and tail.p99.supported:
                    latency.last_baseline = tail
                elif latency.last_baseline is not None:
                    tail = latency.last_baseline
            impacts[source] = LatencyImpact(source, tail, self.settings.confidence)
        episode = Episode(
            id=episode_id,
            service=view.ref,
            opened_at=at,
            latency=impacts,
            last_change=at,
            pods=set(view.local_pods),
        )
        if spike is not None:
            episode.spike_detected_at, episode.spike_threshold = spike
        view.episode = episode
        changes.append(EpisodeChange(ChangeKind.OPENED, episode))
        for held_event in view.preceding:
            if held_event.at >= at - self.settings.settle:
                self._join(episode, held_event)
        view.preceding.clear()
        return episode

    def _endpoints_settled(self, view: _ServiceView) -> bool:
        return all(e.ready and not e.terminating for e in view.endpoints.values())

    def _slow_threshold(self, view: _ServiceView, episode: Episode) -> float | None:
        """Baseline p99 x (1 + tolerance) of the headline: over it, a sample is slow."""
        primary = view.latency.primary()
        impact = episode.latency.get(primary) if primary is not None else None
        if impact is None or impact.baseline is None or not impact.baseline.p99.supported:
            return None
        return impact.baseline.p99.value * self.settings.recovery_threshold_factor

    def _close(
        self, view: _ServiceView, episode: Episode, closed_at: float, changes: Changes
    ) -> None:
        s = self.settings
        episode.closed_at = closed_at
        if episode.spike:
            window = (episode.opened_at, closed_at)
        elif episode.slow_from is not None and episode.slow_to is not None:
            window = (episode.slow_from, episode.slow_to)
        else:
            window = (episode.opened_at, closed_at)
        episode.attribution_window = window
        episode.attribution = episode.pressure.ranked(s.thresholds, *window)
        self._update_cause(episode)
        headline = episode.headline()
        baseline = headline.baseline if headline is not None else None
        during = headline.during_tail() if headline is not None else None
        threshold = self._slow_threshold(view, episode)
        if baseline is None or threshold is None or during is None:
            episode.impact = Impact.UNKNOWN
        else:
            # Decided on what the samples show at least: the during p99's lower bound.
            lower = during.p99.lower or 0.0
            if lower >= baseline.p99.value * s.severe_ratio:
                episode.impact = Impact.SEVERE
            elif lower > threshold:
                episode.impact = Impact.DEGRADED
            else:
                episode.impact = Impact.NONE
        primary = view.latency.primary()
        if threshold is None or primary is None:
            episode.status = Status.NO_BASELINE
        else:
            episode.status = Status.RECOVERING
            view.latency.start_recovery(primary, closed_at, threshold)
        changes.append(EpisodeChange(ChangeKind.CLOSED, episode))

    def _finish(self, view: _ServiceView, episode: Episode) -> None:
        if view.episode is episode:
            view.episode = None
            view.latency.recovery = None
        self.recent.append(episode)
        del self.recent[: -self.settings.max_recent]

    # -- latency -----------------------------------------------------------------------

    def state_of(self, namespace: str, service: str) -> str:
        view = self.services.get(ServiceRef(namespace, service))
        if view is None or view.episode is None:
            return ServiceState.STEADY.value
        if view.episode.open:
            return ServiceState.DISRUPTED.value
        return ServiceState.RECOVERING.value

    def _during(
        self, view: _ServiceView, source: Source, histogram: FineHistogram, now: float
    ) -> None:
        """Samples taken while the episode is open: its latency, and its slow interval."""
        episode = view.episode
        if episode is None or not episode.open:
            return
        impact = episode.latency.get(source)
        if impact is None:
            impact = episode.latency[source] = LatencyImpact(source, None, self.settings.confidence)
        impact.during.merge(histogram)
        if source is view.latency.primary():
            threshold = self._slow_threshold(view, episode)
            if threshold is not None and histogram.count_above(threshold):
                episode.slow_from = now if episode.slow_from is None else episode.slow_from
                episode.slow_to = now

    def record_latency(self, ref: ServiceRef, source: Source, seconds: float, now: float) -> None:
        view = self.services.get(ref)
        if view is None:
            return
        view.latency.record(source, seconds, now, steady=view.episode is None)
        if view.episode is not None and view.episode.open:
            one = FineHistogram()
            one.record(seconds)
            self._during(view, source, one, now)

    def record_latency_ranges(
        self,
        ref: ServiceRef,
        source: Source,
        ranges: Iterable[tuple[float, float, int]],
    ) -> None:
        """Values known by range (a client's histogram buckets), recorded at the next tick
        or state change with the state of then."""
        view = self.services.get(ref)
        if view is not None:
            view.latency.add_ranges(source, ranges)

    def _flush(self, view: _ServiceView, now: float) -> None:
        if not view.latency.pending:
            return
        flushed = view.latency.flush(now, steady=view.episode is None)
        for source, histogram in flushed.items():
            self._during(view, source, histogram, now)

    # -- resources ---------------------------------------------------------------------

    def observe_resources(
        self,
        now: float,
        readings: Iterable[ContainerReading],
        sidecars: Mapping[PodKey, frozenset[str]],
    ) -> None:
        """One cgroup pass of the containers of this node's pods. Only pods that back a
        Service are tracked (the others cannot be part of an episode)."""
        backing: dict[PodKey, list[_ServiceView]] = {}
        for view in self.services.values():
            for pod in view.local_pods:
                backing.setdefault(pod, []).append(view)
            if view.episode is not None and view.episode.open:
                for pod in view.episode.pods:
                    backing.setdefault(pod, []).append(view)
        relevant = [r for r in readings if (r.namespace, r.pod) in backing]
        steady = {pod for pod, views in backing.items() if all(v.episode is None for v in views)}
        for delta in self.resources.observe(now, relevant, sidecars, steady):
            for view in backing.get(delta.key[:2], ()):
                episode = view.episode
                if episode is not None and episode.open:
                    episode.pressure.add(delta)

    # -- the clock -----------------------------------------------------------------------

    def tick(self, now: float) -> Changes:
        """Close settled episodes, judge recovery, detect spikes."""
        changes: Changes = []
        for view in list(self.services.values()):
            self._flush(view, now)
            episode = view.episode
            if episode is None:
                self._detect_spike(view, now, changes)
            elif episode.open:
                self._maybe_close(view, episode, now, changes)
            elif episode.status is Status.RECOVERING:
                self._judge_recovery(view, episode, now, changes)
            else:  # closed without a baseline: nothing to wait for
                self._finish(view, episode)
        return changes

    def _detect_spike(self, view: _ServiceView, now: float, changes: Changes) -> None:
        """A steady Service whose window's p99 is confidently over the spike threshold: an
        episode from when the tail rose. The baseline is the one before the window."""
        s = self.settings
        latency = view.latency
        source = latency.primary()
        if source is None:
            return
        end = now - s.recovery_window
        baseline = latency.baseline(source, end)
        if baseline is None or not baseline.p99.supported:
            return
        threshold = s.spike_threshold(baseline.p99.value)
        if not spiking(*latency.totals(source, end, threshold), s):
            return
        counts = latency.counts(source, end, threshold)
        rise = rose_at(counts)
        assert rise is not None  # spiking: some slot has samples above
        episode = self._open(view, rise.first, end, changes, spike=(now, threshold))
        self._add_evidence(episode, Evidence(rise.first, "latency", "tail_spike"))
        # The samples since the rise were recorded as steady: they are the episode's.
        for src, impact in episode.latency.items():
            impact.during.merge(latency.timelines[src].fine.merged(rise.first))
        fell = fell_at(counts, s.confidence)
        episode.last_change = max(episode.last_change, fell.last if fell else rise.last)
        for delta in self.resources.recent(episode.pods, rise.first):
            episode.pressure.add(delta)
        self._update_cause(episode)

    def _maybe_close(
        self, view: _ServiceView, episode: Episode, now: float, changes: Changes
    ) -> None:
        s = self.settings
        lifecycle = any(c in CAUSE_RANK for c in episode.causes)
        source = view.latency.primary()
        if episode.spike and not lifecycle and source is not None:
            assert episode.spike_threshold is not None
            counts = view.latency.counts(source, episode.opened_at, episode.spike_threshold)
            fell = fell_at(counts, s.confidence)
            if fell is not None:  # still up, or it fell at this slot
                episode.last_change = max(episode.last_change, fell.last)
        if now - episode.last_change < s.settle:
            return
        long_open = now - episode.opened_at >= s.recovery_max
        if not (self._endpoints_settled(view) or long_open):
            return
        if episode.spike and not lifecycle and source is not None:
            # A spike ends when its tail fell: what came after is not part of it.
            closed_at = episode.last_change
            for src, impact in episode.latency.items():
                fine = view.latency.timelines[src].fine
                after = fine.merged(math.nextafter(closed_at, math.inf))
                # (not all of it the episode's, e.g. a source that joined late: keep it all)
                with contextlib.suppress(ValueError):
                    impact.during = impact.during.subtract(after)
            self._close(view, episode, closed_at, changes)
        else:
            self._close(view, episode, now, changes)

    def _judge_recovery(
        self, view: _ServiceView, episode: Episode, now: float, changes: Changes
    ) -> None:
        s = self.settings
        assert episode.closed_at is not None
        track = view.latency.recovery
        moment = track.confirmed(now, s) if track is not None else None
        if moment is not None:
            episode.recovered_at = moment
            episode.detected_at = now
            episode.status = Status.RECOVERED
            self._finish(view, episode)
            changes.append(EpisodeChange(ChangeKind.RECOVERED, episode))
        elif now - episode.closed_at >= s.recovery_max:
            episode.status = Status.NOT_RECOVERED
            view.latency.baseline_from = now
            view.latency.last_baseline = None
            self._finish(view, episode)
            changes.append(EpisodeChange(ChangeKind.NOT_RECOVERED, episode))

    # -- views ---------------------------------------------------------------------------

    def open_episodes(self) -> list[Episode]:
        """Open episodes, oldest first."""
        held = (v.episode for v in self.services.values() if v.episode is not None)
        return sorted((e for e in held if e.open), key=lambda e: (e.opened_at, e.id))

    def closed_episodes(self) -> list[Episode]:
        """Closed episodes still recovering and the last finished ones, newest first."""
        held = [v.episode for v in self.services.values() if v.episode is not None]
        closed = [e for e in held if not e.open] + self.recent
        return sorted(closed, key=lambda e: (e.closed_at or 0.0, e.id), reverse=True)

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "node": self.node,
            "generated_at": iso(now),
            "settings": self.settings.as_json(),
            "open": [e.as_json() for e in self.open_episodes()],
            "recent": [e.as_json() for e in self.closed_episodes()],
        }


def _pod_key(endpoint: Endpoint) -> PodKey:
    namespace, _, pod = endpoint.identity.partition("/")
    return (namespace, pod or endpoint.pod)


def _replica_sets_rolled(episode: Episode) -> bool:
    """A new ReplicaSet of a Deployment arrived while an older one of it left."""
    for added in episode.replica_sets_added:
        deployment = added.rpartition("-")[0]
        for leaving in episode.replica_sets_leaving:
            if leaving != added and leaving.rpartition("-")[0] == deployment:
                return True
    return False
