"""The correlation core (docs/correlation.md): episodes of each opted-in Service, built from
lifecycle events (node-local pod events and the cluster view of endpoints), latency samples
(the prober and OTLP clients) and cgroup samples; and the `state` of every latency sample.

An episode opens at the first disruptive event touching a Service and closes when every
endpoint is ready, none is terminating and the set has been stable for `settle`; a tail
spike with no lifecycle event is an episode too (`resource_pressure` or `unexplained`).
Impact compares latency during the episode with the steady baseline before it; recovery
is the time from close until the rolling p99 is back within tolerance of the baseline.
docs/correlation.md states every rule. Pure: every call takes `now` (epoch seconds).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from exporter.core.attribution import (
    ContainerPressure,
    ContainerReading,
    PodKey,
    Pressure,
    ResourceTracker,
    Thresholds,
)
from exporter.core.endpoints import Endpoint, EndpointEvent, EndpointEventKind
from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.histogram import FineHistogram
from exporter.core.services import ServiceRef
from exporter.core.windows import LatencyTimeline, Quantiles, kth_largest, quantiles


class Cause(StrEnum):
    """Values of the `cause` label (contract), lifecycle causes in order of dominance."""

    ROLLOUT = "rollout"
    RESCHEDULE = "reschedule"
    EVICTION = "eviction"
    RESTART = "restart"
    READINESS = "readiness"
    SCALE = "scale"
    RESOURCE_PRESSURE = "resource_pressure"
    UNEXPLAINED = "unexplained"


LIFECYCLE_CAUSES: tuple[Cause, ...] = (
    Cause.ROLLOUT,
    Cause.RESCHEDULE,
    Cause.EVICTION,
    Cause.RESTART,
    Cause.READINESS,
    Cause.SCALE,
)
_RANK = {cause: rank for rank, cause in enumerate(LIFECYCLE_CAUSES)}


class ServiceState(StrEnum):
    """Values of the `state` label of latency samples (contract)."""

    STEADY = "steady"
    DISRUPTED = "disrupted"
    RECOVERING = "recovering"


class Impact(StrEnum):
    """Values of the `impact` label of tailwatch_episodes_total. `unknown`: there was no
    steady latency to compare with (e.g. in the agent's first minutes)."""

    NONE = "none"
    DEGRADED = "degraded"
    SEVERE = "severe"
    UNKNOWN = "unknown"


class Status(StrEnum):
    OPEN = "open"
    RECOVERING = "recovering"  # closed; latency not yet back to baseline
    RECOVERED = "recovered"
    NOT_RECOVERED = "not_recovered"  # not back after recovery_max
    INTERRUPTED = "interrupted"  # another episode opened before it recovered
    NO_BASELINE = "no_baseline"  # closed, but recovery cannot be judged without a baseline


class Source(StrEnum):
    """Where a latency sample comes from. The episode's headline latency is the probe of
    the Service address, else (a headless Service) of its endpoints on this node, else the
    clients' OTLP histograms."""

    SERVICE_PROBE = "service"
    ENDPOINT_PROBE = "endpoint"
    CLIENT = "client"


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


@dataclass(frozen=True)
class CorrelationSettings:
    """The knobs of docs/correlation.md (defaults there) and a few of our own."""

    settle: float = 30.0
    baseline: float = 300.0
    recovery_window: float = 30.0
    recovery_tolerance: float = 0.2
    recovery_max: float = 600.0
    spike_ratio: float = 2.0
    #: A spike must also be this much slower than the baseline (seconds): a p99 going from
    #: 200 µs to 500 µs is noise, not an episode.
    spike_min_increase: float = 0.002
    #: Samples the rolling window needs before a spike or a recovery is judged.
    min_samples: int = 5
    #: A spike needs at least this many samples over the threshold (and 1% of them).
    spike_min_slow: int = 3
    #: Steady samples a baseline needs before a spike is judged against it: a p99 of a
    #: handful of samples makes every later sample look like a spike.
    spike_min_baseline: int = 50
    severe_ratio: float = 3.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    slots: int = 10
    max_events: int = 200
    max_recent: int = 100

    def __post_init__(self) -> None:
        for name in ("settle", "baseline", "recovery_window", "recovery_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.recovery_tolerance < 0:
            raise ValueError("recovery_tolerance must not be negative")
        if self.spike_ratio <= 1:
            raise ValueError("spike_ratio must be above 1")

    @property
    def tick_interval(self) -> float:
        """How often `tick` should run: often enough to see the shortest window move."""
        return min(1.0, self.settle / 10, self.recovery_window / 10)

    def as_json(self) -> dict[str, float]:
        return {
            "settle_seconds": self.settle,
            "baseline_seconds": self.baseline,
            "recovery_window_seconds": self.recovery_window,
            "recovery_tolerance": self.recovery_tolerance,
            "recovery_max_seconds": self.recovery_max,
            "spike_ratio": self.spike_ratio,
        }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One event that is part of an episode."""

    at: float
    source: str  # endpoint | pod | latency
    event: str
    pod: str = ""
    container: str = ""
    reason: str = ""
    node: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "source": self.source,
            "event": self.event,
            "pod": self.pod,
            "container": self.container,
            "reason": self.reason,
            "node": self.node,
        }


def _quantiles_json(q: Quantiles | None, samples: int) -> dict[str, Any] | None:
    if q is None:
        return None
    return {"p50": _round(q[0]), "p99": _round(q[1]), "p999": _round(q[2]), "samples": samples}


def _ratios(during: Quantiles | None, baseline: Quantiles | None) -> tuple[float, ...] | None:
    if during is None or baseline is None:
        return None
    # A baseline of 0 (every value under 1 µs) compares as 1 µs.
    return tuple(d / max(b, 1e-6) for d, b in zip(during, baseline, strict=True))


@dataclass
class LatencyImpact:
    """One latency source over an episode: the baseline before it and what it was during."""

    source: Source
    baseline: Quantiles | None
    baseline_samples: int
    during: FineHistogram = field(default_factory=FineHistogram)

    def during_quantiles(self) -> Quantiles | None:
        return quantiles(self.during)

    def ratios(self) -> tuple[float, ...] | None:
        return _ratios(self.during_quantiles(), self.baseline)

    def as_json(self) -> dict[str, Any]:
        ratios = self.ratios()
        return {
            "source": "client" if self.source is Source.CLIENT else "probe",
            "probe_target": None if self.source is Source.CLIENT else self.source.value,
            "baseline": _quantiles_json(self.baseline, self.baseline_samples),
            "during": _quantiles_json(self.during_quantiles(), self.during.count),
            "ratios": None
            if ratios is None
            else {
                "p50": round(ratios[0], 3),
                "p99": round(ratios[1], 3),
                "p999": round(ratios[2], 3),
            },
        }


def _seconds_text(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    return f"{seconds:.3g} s"


def _duration_text(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


_CAUSE_TEXT = {
    Cause.ROLLOUT: "A rollout",
    Cause.RESCHEDULE: "A reschedule",
    Cause.EVICTION: "An eviction",
    Cause.RESTART: "A container restart",
    Cause.READINESS: "A readiness change",
    Cause.SCALE: "A scale change",
    Cause.RESOURCE_PRESSURE: "Resource pressure",
    Cause.UNEXPLAINED: "An unexplained tail spike",
}


@dataclass
class Episode:
    """One episode of one Service. Mutable while open or recovering; the correlator owns it."""

    id: str
    service: ServiceRef
    opened_at: float
    spike: bool  # opened by a latency spike, not by a lifecycle event
    latency: dict[Source, LatencyImpact]
    evidence: list[Evidence] = field(default_factory=list)
    evidence_dropped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    causes: set[Cause] = field(default_factory=set)
    pressure: Pressure = field(default_factory=Pressure)
    attribution: list[ContainerPressure] = field(default_factory=list)
    last_change: float = 0.0
    closed_at: float | None = None
    recovered_at: float | None = None
    status: Status = Status.OPEN
    impact: Impact | None = None
    cause: Cause = Cause.UNEXPLAINED
    interrupted_by: str = ""
    # Pods on this node that backed the Service during the episode.
    pods: set[PodKey] = field(default_factory=set)
    # Deployment rollout evidence from endpoint pod names: ReplicaSets added / leaving.
    replica_sets_added: set[str] = field(default_factory=set)
    replica_sets_leaving: set[str] = field(default_factory=set)

    @property
    def open(self) -> bool:
        return self.status is Status.OPEN

    @property
    def duration(self) -> float | None:
        return None if self.closed_at is None else self.closed_at - self.opened_at

    @property
    def recovery_seconds(self) -> float | None:
        if self.recovered_at is None or self.closed_at is None:
            return None
        return self.recovered_at - self.closed_at

    def headline(self) -> LatencyImpact | None:
        for source in (Source.SERVICE_PROBE, Source.ENDPOINT_PROBE, Source.CLIENT):
            impact = self.latency.get(source)
            if impact is not None and (impact.during.count or impact.baseline is not None):
                return impact
        return None

    def p99_ratio(self) -> float | None:
        headline = self.headline()
        ratios = headline.ratios() if headline is not None else None
        return None if ratios is None else ratios[1]

    def summary(self) -> str:
        what = f"{_CAUSE_TEXT[self.cause]} of {self.service}"
        headline = self.headline()
        during = headline.during_quantiles() if headline else None
        baseline = headline.baseline if headline else None
        parts: list[str] = []
        if during is not None and baseline is not None:
            ratio = during[1] / max(baseline[1], 1e-6)
            if ratio > 1:
                parts.append(
                    f"{what} raised p99 from {_seconds_text(baseline[1])} to "
                    f"{_seconds_text(during[1])} ({ratio:.1f}x)"
                )
            else:
                parts.append(
                    f"{what} did not raise p99 ({_seconds_text(during[1])} during it, "
                    f"{_seconds_text(baseline[1])} before)"
                )
        elif during is not None:
            parts.append(f"{what}: p99 {_seconds_text(during[1])} (no baseline to compare)")
        else:
            parts.append(f"{what} (no latency samples during it)")
        if self.closed_at is not None:
            parts[-1] += f" for {_duration_text(self.closed_at - self.opened_at)}"
        else:
            parts[-1] += ", still open"
        if self.status is Status.RECOVERED and self.recovery_seconds is not None:
            parts.append(
                f"latency was back to baseline {_duration_text(self.recovery_seconds)} after"
            )
        elif self.status is Status.NOT_RECOVERED:
            parts.append("latency did not return to baseline")
        elif self.status is Status.INTERRUPTED:
            parts.append(f"another episode ({self.interrupted_by}) began before it recovered")
        if self.attribution and self.attribution[0].signals:
            top = self.attribution[0]
            signals = ", ".join(s.replace("_", " ") for s in top.signals)
            parts.append(f"strongest pressure: {top.pod}/{top.container} ({signals})")
        return "; ".join(parts) + "."

    def as_json(self) -> dict[str, Any]:
        headline = self.headline()
        client = self.latency.get(Source.CLIENT)
        return {
            "id": self.id,
            "namespace": self.service.namespace,
            "service": self.service.name,
            "cause": self.cause.value,
            "status": self.status.value,
            "opened_at": _iso(self.opened_at),
            "closed_at": _iso(self.closed_at),
            "duration_seconds": _round(self.duration, 3),
            "recovered_at": _iso(self.recovered_at),
            "recovery_seconds": _round(self.recovery_seconds, 3),
            "impact": None if self.impact is None else self.impact.value,
            "latency": None if headline is None else headline.as_json(),
            "client_latency": None if client is None or client is headline else client.as_json(),
            "events": [e.as_json() for e in self.evidence],
            "events_dropped": self.evidence_dropped,
            "event_counts": dict(sorted(self.counts.items())),
            "attribution": [a.as_json() for a in self.attribution],
            "summary": self.summary(),
        }


class ChangeKind(StrEnum):
    OPENED = "opened"
    CLOSED = "closed"
    RECOVERED = "recovered"
    NOT_RECOVERED = "not_recovered"
    INTERRUPTED = "interrupted"
    NO_BASELINE = "no_baseline"


@dataclass(frozen=True, slots=True)
class EpisodeChange:
    """What a call changed: the agent counts, logs and announces these."""

    kind: ChangeKind
    episode: Episode


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
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    timelines: dict[Source, LatencyTimeline] = field(default_factory=dict)
    episode: Episode | None = None  # open, or recovering
    last_baseline: tuple[Quantiles, int] | None = None
    local_pods: set[PodKey] = field(default_factory=set)
    seq: int = 0
    # After an episode that did not recover, its latency is the new normal: baselines start
    # afresh from then, instead of every later sample looking like a spike.
    baseline_from: float = 0.0
    # Client histogram ranges since the last flush, by source and (lower, upper): clients
    # send the same bounds over and over, so adding them up first makes one `record_range`
    # per bucket per tick instead of one per data point.
    pending: dict[Source, dict[tuple[float, float], int]] = field(default_factory=dict)
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
        self.resources = ResourceTracker(self.settings.baseline)
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
                self.services[ref] = _ServiceView(ref)

    def add_service(self, ref: ServiceRef) -> None:
        """Keep episodes for `ref` from now on (this agent has latency for it)."""
        if ref not in self.services:
            self.services[ref] = _ServiceView(ref)

    def has_episode(self, ref: ServiceRef) -> bool:
        """Is an episode of `ref` open, or closed and waiting for its recovery?"""
        view = self.services.get(ref)
        return view is not None and view.episode is not None

    def remove_service(self, ref: ServiceRef) -> None:
        """Forget `ref` with its episode (gone, or this agent no longer has latency for it)."""
        if self.services.pop(ref, None) is not None:
            self._index_stale = True

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
        if view is None:
            return []
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
        return self._event(view, event, disruptive)

    def on_pod_event(self, event: LifecycleEvent) -> list[EpisodeChange]:
        refs = set(self._pod_index().get((event.namespace, event.pod), ()))
        w = event.workload
        if w.kind != "Pod":
            refs |= self._workload_services.get((event.namespace, w.kind, w.name), set())
        changes: list[EpisodeChange] = []
        for ref in sorted(refs, key=str):
            view = self._view(ref)
            if view is None:
                continue
            self._flush(view, event.at)
            changes += self._event(view, event, event.kind in _DISRUPTIVE_POD_EVENTS)
        return changes

    def _event(
        self, view: _ServiceView, event: EndpointEvent | LifecycleEvent, disruptive: bool
    ) -> list[EpisodeChange]:
        """An event touching the Service: joins the open episode, opens one if disruptive,
        else is remembered for `settle` (a rollout's new pod arrives before the first old
        one goes: that arrival belongs to the episode it leads to)."""
        changes: list[EpisodeChange] = []
        episode = view.episode if view.episode is not None and view.episode.open else None
        if episode is None:
            if not disruptive:
                view.preceding.append(event)
                return []
            episode = self._open(view, event.at, spike=False, changes=changes)
        self._join(episode, event)
        return changes

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
        lifecycle = [c for c in episode.causes if c in _RANK]
        if lifecycle:
            episode.cause = min(lifecycle, key=_RANK.__getitem__)
        elif any(c.signals for c in episode.pressure.ranked(self.settings.thresholds)):
            episode.cause = Cause.RESOURCE_PRESSURE
        else:
            episode.cause = Cause.UNEXPLAINED

    # -- opening and closing -----------------------------------------------------------

    def _baseline(
        self, view: _ServiceView, source: Source, now: float, exclude: float
    ) -> tuple[Quantiles | None, int]:
        timeline = view.timelines.get(source)
        if timeline is None:
            return None, 0
        window = min(self.settings.baseline, now - view.baseline_from)
        if window <= exclude:
            return None, 0
        steady = timeline.steady_before(now, window, exclude)
        q = quantiles(steady)
        if q is not None:
            return q, steady.count
        return None, 0

    def _open(
        self, view: _ServiceView, now: float, *, spike: bool, changes: list[EpisodeChange]
    ) -> Episode:
        held = view.episode
        view.seq += 1
        episode_id = f"{view.ref}/{view.seq}"
        if held is not None and held.status is Status.RECOVERING:
            held.status = Status.INTERRUPTED
            held.interrupted_by = episode_id
            self._finish(view, held)
            changes.append(EpisodeChange(ChangeKind.INTERRUPTED, held))
        # A spike is detected a rolling window after it began: keep that window out.
        exclude = self.settings.recovery_window if spike else 0.0
        latency: dict[Source, LatencyImpact] = {}
        for source in view.timelines:
            q, n = self._baseline(view, source, now, exclude)
            if q is None and source is self._primary_source(view) and view.last_baseline:
                q, n = view.last_baseline  # back-to-back episodes: the last steady baseline
            if q is not None and source is self._primary_source(view):
                view.last_baseline = (q, n)
            latency[source] = LatencyImpact(source, q, n)
        episode = Episode(
            id=episode_id,
            service=view.ref,
            opened_at=now,
            spike=spike,
            latency=latency,
            last_change=now,
            pods=set(view.local_pods),
        )
        view.episode = episode
        changes.append(EpisodeChange(ChangeKind.OPENED, episode))
        for held_event in view.preceding:
            if held_event.at >= now - self.settings.settle:
                self._join(episode, held_event)
        view.preceding.clear()
        return episode

    def _primary_source(self, view: _ServiceView) -> Source | None:
        for source in (Source.SERVICE_PROBE, Source.ENDPOINT_PROBE, Source.CLIENT):
            if source in view.timelines:
                return source
        return None

    def _endpoints_settled(self, view: _ServiceView) -> bool:
        return all(e.ready and not e.terminating for e in view.endpoints.values())

    def _close(self, view: _ServiceView, episode: Episode, now: float) -> EpisodeChange:
        s = self.settings
        episode.closed_at = now
        episode.attribution = episode.pressure.ranked(s.thresholds)
        self._update_cause(episode)
        headline = episode.headline()
        ratios = headline.ratios() if headline is not None else None
        if ratios is None:
            episode.impact = Impact.UNKNOWN
        elif ratios[1] >= s.severe_ratio:
            episode.impact = Impact.SEVERE
        elif ratios[1] > 1 + s.recovery_tolerance:
            episode.impact = Impact.DEGRADED
        else:
            episode.impact = Impact.NONE
        if headline is None or headline.baseline is None:
            episode.status = Status.NO_BASELINE
        else:
            episode.status = Status.RECOVERING
        return EpisodeChange(ChangeKind.CLOSED, episode)

    def _finish(self, view: _ServiceView, episode: Episode) -> None:
        if view.episode is episode:
            view.episode = None
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

    def _timeline(self, view: _ServiceView, source: Source) -> LatencyTimeline:
        timeline = view.timelines.get(source)
        if timeline is None:
            s = self.settings
            timeline = view.timelines[source] = LatencyTimeline(
                s.recovery_window, s.baseline, s.slots
            )
        return timeline

    def record_latency(self, ref: ServiceRef, source: Source, seconds: float, now: float) -> None:
        view = self.services.get(ref)
        if view is None:
            return
        episode = view.episode
        self._timeline(view, source).record(now, seconds, steady=episode is None)
        if episode is not None and episode.open:
            impact = episode.latency.get(source)
            if impact is None:
                impact = episode.latency[source] = LatencyImpact(source, None, 0)
            impact.during.record(seconds)

    def record_latency_ranges(
        self,
        ref: ServiceRef,
        source: Source,
        ranges: Iterable[tuple[float, float, int]],
    ) -> None:
        """Values known by range (a client's histogram buckets), recorded at the next tick
        or state change with the state of then."""
        view = self.services.get(ref)
        if view is None:
            return
        pending = view.pending.get(source)
        if pending is None:
            pending = view.pending[source] = {}
        for lower, upper, count in ranges:
            if count:
                key = (lower, upper)
                pending[key] = pending.get(key, 0) + count

    def _flush(self, view: _ServiceView, now: float) -> None:
        if not view.pending:
            return
        episode = view.episode
        during = episode is not None and episode.open
        for source, pending in view.pending.items():
            histogram = FineHistogram()
            for (lower, upper), count in pending.items():
                histogram.record_range(lower, upper, count)
            self._timeline(view, source).merge(now, histogram, steady=episode is None)
            if during:
                assert episode is not None
                impact = episode.latency.get(source)
                if impact is None:
                    impact = episode.latency[source] = LatencyImpact(source, None, 0)
                impact.during.merge(histogram)
        view.pending = {}

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

    def tick(self, now: float) -> list[EpisodeChange]:
        """Close settled episodes, judge recovery, detect spikes."""
        changes: list[EpisodeChange] = []
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

    def _rolling(self, view: _ServiceView, now: float) -> FineHistogram | None:
        source = self._primary_source(view)
        if source is None:
            return None
        return view.timelines[source].recent(now, self.settings.recovery_window)

    def _spike_threshold(self, view: _ServiceView, baseline_p99: float) -> float:
        s = self.settings
        return max(baseline_p99 * s.spike_ratio, baseline_p99 + s.spike_min_increase)

    def _is_spiking(self, view: _ServiceView, baseline_p99: float, now: float) -> bool:
        rolling = self._rolling(view, now)
        if rolling is None or rolling.count < self.settings.min_samples:
            return False
        k = max(self.settings.spike_min_slow, -(-rolling.count // 100))
        slow = kth_largest(rolling, k)
        return slow is not None and slow > self._spike_threshold(view, baseline_p99)

    def _detect_spike(self, view: _ServiceView, now: float, changes: list[EpisodeChange]) -> None:
        source = self._primary_source(view)
        if source is None:
            return
        baseline, samples = self._baseline(view, source, now, self.settings.recovery_window)
        if baseline is None or samples < self.settings.spike_min_baseline:
            return
        if not self._is_spiking(view, baseline[1], now):
            return
        episode = self._open(view, now, spike=True, changes=changes)
        self._add_evidence(episode, Evidence(now, "latency", "tail_spike"))
        # The samples that made the spike were recorded as steady: count them as during.
        for src, impact in episode.latency.items():
            impact.during.merge(view.timelines[src].recent(now, self.settings.recovery_window))
        self._update_cause(episode)

    def _maybe_close(
        self, view: _ServiceView, episode: Episode, now: float, changes: list[EpisodeChange]
    ) -> None:
        s = self.settings
        if now - episode.last_change < s.settle:
            return
        long_open = now - episode.opened_at >= s.recovery_max
        if not (self._endpoints_settled(view) or long_open):
            return
        if episode.spike and not any(c in _RANK for c in episode.causes):
            headline = episode.headline()
            baseline = headline.baseline if headline is not None else None
            if baseline is not None and self._is_spiking(view, baseline[1], now):
                episode.last_change = now  # still slow: settle counts from the calm
                return
        changes.append(self._close(view, episode, now))

    def _judge_recovery(
        self, view: _ServiceView, episode: Episode, now: float, changes: list[EpisodeChange]
    ) -> None:
        s = self.settings
        assert episode.closed_at is not None
        headline = episode.headline()
        baseline = headline.baseline if headline is not None else None
        if baseline is None:
            return
        rolling = self._rolling(view, now)
        if rolling is not None and rolling.count >= s.min_samples:
            p99 = rolling.quantile(0.99)
            if p99 is not None and p99 <= baseline[1] * (1 + s.recovery_tolerance):
                episode.recovered_at = now
                episode.status = Status.RECOVERED
                self._finish(view, episode)
                changes.append(EpisodeChange(ChangeKind.RECOVERED, episode))
                return
        if now - episode.closed_at >= s.recovery_max:
            episode.status = Status.NOT_RECOVERED
            view.baseline_from = now
            view.last_baseline = None
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
            "generated_at": _iso(now),
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
