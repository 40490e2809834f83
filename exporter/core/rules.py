"""The rules of docs/correlation.md that need no correlator state: the settings, which
events disrupt a Service, how an event joins an episode as evidence and the cause it points
to, and which Services a pod's events concern. Pure: the correlator (correlation.py)
decides when they apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from exporter.core.attribution import PodKey, Thresholds, neighbours_explain
from exporter.core.endpoints import Endpoint, EndpointEvent, EndpointEventKind
from exporter.core.episodes import CAUSE_RANK, Cause, Episode, Evidence, Impact
from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.nodes import NodeEvent
from exporter.core.quantiles import DEFAULT_CONFIDENCE
from exporter.core.services import ServiceRef


@dataclass(frozen=True)
class CorrelationSettings:
    """The knobs of docs/correlation.md, each a setting of the agent (defaults there)."""

    settle: float = 30.0
    baseline: float = 300.0
    recovery_window: float = 30.0
    recovery_tolerance: float = 0.2
    recovery_max: float = 600.0
    spike_ratio: float = 2.0
    #: A spike must also be this much slower than the baseline p99 (seconds): a p99 going
    #: from 200 µs to 500 µs is noise, not an episode.
    spike_min_increase: float = 0.002
    #: Samples over the spike threshold a window needs, whatever the statistics allow.
    spike_min_slow: int = 5
    #: Samples the rolling window needs before a spike or a recovery is judged.
    min_samples: int = 5
    #: Confidence of the order-statistic bounds every decision is taken on.
    confidence: float = DEFAULT_CONFIDENCE
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
        if self.baseline <= self.recovery_window:
            raise ValueError("baseline must be longer than recovery_window")
        if self.recovery_max < self.recovery_window:
            raise ValueError("recovery_max must be at least recovery_window")
        if self.recovery_tolerance >= self.spike_ratio - 1:
            raise ValueError("recovery_tolerance must be below spike_ratio - 1")
        if not 0.5 <= self.confidence < 1:
            raise ValueError("confidence must be in [0.5, 1)")
        if self.min_samples < 1 or self.spike_min_slow < 1 or self.spike_min_increase < 0:
            raise ValueError("min_samples and spike_min_slow must be positive")

    @property
    def tick_interval(self) -> float:
        """How often `tick` should run, and the width of the fine slots: often enough to see
        the shortest window move, and to place a rise or a recovery to within a probe."""
        return min(1.0, self.settle / 10, self.recovery_window / 10)

    @property
    def spike_confidence(self) -> float:
        """The confidence a spike is opened at: every tick tests a window, so one window's
        span holds recovery_window / tick_interval tests of much the same samples; each is
        held to that many times less error (a Bonferroni correction), so that steady
        traffic opens no spike at any probe rate."""
        return 1 - (1 - self.confidence) * self.tick_interval / self.recovery_window

    @property
    def recovery_threshold_factor(self) -> float:
        return 1 + self.recovery_tolerance

    def spike_threshold(self, baseline_p99: float) -> float:
        return max(baseline_p99 * self.spike_ratio, baseline_p99 + self.spike_min_increase)

    def as_json(self) -> dict[str, float]:
        return {
            "settle_seconds": self.settle,
            "baseline_seconds": self.baseline,
            "recovery_window_seconds": self.recovery_window,
            "recovery_tolerance": self.recovery_tolerance,
            "recovery_max_seconds": self.recovery_max,
            "spike_ratio": self.spike_ratio,
            "spike_min_increase_seconds": self.spike_min_increase,
            "spike_min_slow": self.spike_min_slow,
            "window_min_samples": self.min_samples,
            "confidence": self.confidence,
        }


# Pod events that disrupt a Service their pod backs, and those that only tell the cause.
DISRUPTIVE_POD_EVENTS = frozenset(
    {
        PodEventKind.CONTAINER_RESTART,
        PodEventKind.CRASH_LOOP,
        PodEventKind.OOM_KILL,
        PodEventKind.NOT_READY,
        PodEventKind.TERMINATING,
        PodEventKind.EVICTED,
    }
)
# DisruptionTarget reasons of a terminating pod: evicted through the API (a drain, kubectl
# evict) or preempted, cause `eviction`; or removed by its node (the kubelet under node
# pressure or shutting the node down, the taint manager for a NoExecute taint), cause `node`.
EVICTION_REASONS = frozenset({"EvictionByEvictionAPI", "PreemptionByScheduler"})
NODE_EVICTION_REASONS = frozenset({"TerminationByKubelet", "DeletionByTaintManager"})


def endpoint_disrupts(event: EndpointEvent, endpoint: Endpoint | None) -> bool:
    """An endpoint going away or not ready, or one arriving that is not ready yet."""
    kind = event.kind
    not_ready_now = endpoint is None or not endpoint.ready
    return kind in (
        EndpointEventKind.NOT_READY,
        EndpointEventKind.TERMINATING,
        EndpointEventKind.REMOVED,
    ) or (
        kind in (EndpointEventKind.ADDED, EndpointEventKind.REPLACED, EndpointEventKind.MOVED)
        and not_ready_now
    )


def replica_set_of(pod: str) -> str | None:
    """The ReplicaSet of a Deployment's pod from its name (`<rs>-<5 chars>`), else None."""
    rs, _, suffix = pod.rpartition("-")
    if rs and len(suffix) == 5 and suffix.isalnum() and "-" in rs:
        return rs
    return None


def join(
    episode: Episode,
    event: EndpointEvent | LifecycleEvent | NodeEvent,
    node: str,
    settings: CorrelationSettings,
) -> None:
    """`event` joins `episode`: its evidence, the cause it points to, the settle clock."""
    if isinstance(event, EndpointEvent):
        _join_endpoint(episode, event, settings.max_events)
    elif isinstance(event, NodeEvent):
        _join_node(episode, event, settings.max_events)
    else:
        _join_pod(episode, event, node, settings.max_events)
    episode.last_change = max(episode.last_change, event.at)
    update_cause(episode, settings.thresholds)


def _join_endpoint(episode: Episode, event: EndpointEvent, max_events: int) -> None:
    kind = event.kind
    add_evidence(
        episode,
        Evidence(
            event.at, "endpoint", kind.value, pod=event.pod, node=event.node,
            reason=f"from {event.previous_node}" if event.previous_node else "",
        ),
        max_events,
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


def _join_pod(episode: Episode, event: LifecycleEvent, node: str, max_events: int) -> None:
    kind = event.kind
    add_evidence(
        episode,
        Evidence(
            event.at, "pod", kind.value, pod=event.pod, container=event.container,
            reason=event.reason, node=event.node, resource=event.resource,
        ),
        max_events,
    )  # fmt: skip
    if event.node == node or not event.node:
        episode.pods.add((event.namespace, event.pod))
    if kind is PodEventKind.ROLLOUT:
        episode.causes.add(Cause.ROLLOUT)
    elif kind is PodEventKind.EVICTED or (
        kind is PodEventKind.TERMINATING and event.reason in NODE_EVICTION_REASONS
    ):
        episode.causes.add(Cause.NODE)  # the kubelet's (phase Failed, Evicted) or the node's
    elif kind is PodEventKind.TERMINATING and event.reason in EVICTION_REASONS:
        episode.causes.add(Cause.EVICTION)
    elif kind in (PodEventKind.CONTAINER_RESTART, PodEventKind.CRASH_LOOP,
                  PodEventKind.OOM_KILL):  # fmt: skip
        episode.causes.add(Cause.RESTART)
    elif kind is PodEventKind.NOT_READY:
        episode.causes.add(Cause.READINESS)


def _join_node(episode: Episode, event: NodeEvent, max_events: int) -> None:
    """A change of this agent's node: evidence, and the cause `node` when it is unwell."""
    add_evidence(
        episode,
        Evidence(event.at, "node", event.kind.value, reason=event.reason, node=event.node,
                 taint=event.taint),
        max_events,
    )  # fmt: skip
    if event.bad:
        episode.causes.add(Cause.NODE)


def add_evidence(episode: Episode, evidence: Evidence, max_events: int) -> None:
    key = f"{evidence.source}/{evidence.event}"
    episode.counts[key] = episode.counts.get(key, 0) + 1
    if len(episode.evidence) < max_events:
        episode.evidence.append(evidence)
    else:
        episode.evidence_dropped += 1


def update_cause(episode: Episode, thresholds: Thresholds) -> None:
    """The dominant lifecycle cause; without one, resource pressure (over the slow interval
    once closed: its attribution; or a neighbour's while the node was contended) or nothing
    explained."""
    if episode.causes:
        episode.cause = min(episode.causes, key=CAUSE_RANK.__getitem__)
        return
    if episode.attribution_window is not None:
        ranked = episode.attribution
    else:
        ranked = episode.pressure.ranked(thresholds, episode.opened_at, math.inf)
    pressure = any(c.signals for c in ranked) or neighbours_explain(
        episode.neighbours, episode.node_pressure, thresholds
    )
    episode.cause = Cause.RESOURCE_PRESSURE if pressure else Cause.UNEXPLAINED


def _replica_sets_rolled(episode: Episode) -> bool:
    """A new ReplicaSet of a Deployment arrived while an older one of it left."""
    for added in episode.replica_sets_added:
        deployment = added.rpartition("-")[0]
        for leaving in episode.replica_sets_leaving:
            if leaving != added and leaving.rpartition("-")[0] == deployment:
                return True
    return False


def slow_interval(episode: Episode, closed_at: float) -> tuple[float, float]:
    """What attribution is measured over: a spike from when it rose to when it fell; a
    lifecycle episode from its first to its last slow headline sample (from the rise, when
    a spike began it), else all of it."""
    if episode.spike_only:
        return episode.opened_at, closed_at
    start = episode.opened_at if episode.spike else episode.slow_from
    if start is not None and episode.slow_to is not None:
        return start, episode.slow_to
    return episode.opened_at, closed_at


def impact_of(episode: Episode, threshold: float | None, severe_ratio: float) -> Impact:
    """The impact level, decided on what the samples show at least: the during p99's lower
    bound against a baseline that bounds its p99 (`threshold`: its slow threshold)."""
    headline = episode.headline()
    during = headline.during_tail() if headline is not None else None
    if headline is None or headline.baseline is None or during is None or threshold is None:
        return Impact.UNKNOWN
    lower = during.p99.lower or 0.0
    if lower >= headline.baseline.p99.value * severe_ratio:
        return Impact.SEVERE
    if lower > threshold:
        return Impact.DEGRADED
    return Impact.NONE


def pod_key(endpoint: Endpoint) -> PodKey:
    namespace, _, pod = endpoint.identity.partition("/")
    return (namespace, pod or endpoint.pod)


@dataclass
class ServiceIndex:
    """The Services each pod backs, and each workload with pods backing them on this node
    (a new pod of a rollout counts before its endpoint exists). Rebuilt lazily: endpoints
    change far more often than pods have events."""

    stale: bool = False
    pods: dict[PodKey, set[ServiceRef]] = field(default_factory=dict)
    workloads: dict[tuple[str, str, str], set[ServiceRef]] = field(default_factory=dict)

    def services_of(
        self,
        event: LifecycleEvent,
        views: Iterable[tuple[ServiceRef, Mapping[str, Endpoint], set[PodKey]]],
        known: Callable[[], Mapping[PodKey, Workload]],
    ) -> set[ServiceRef]:
        """The Services `event` concerns; `views` are every Service's (ref, endpoints, pods
        on this node) and `known` this node's pods' workloads, read only when the index is
        stale."""
        if self.stale:
            self._rebuild(list(views), known())
            self.stale = False
        refs = set(self.pods.get((event.namespace, event.pod), ()))
        w = event.workload
        if w.kind != "Pod":
            refs |= self.workloads.get((event.namespace, w.kind, w.name), set())
        return refs

    def _rebuild(
        self,
        views: list[tuple[ServiceRef, Mapping[str, Endpoint], set[PodKey]]],
        known: Mapping[PodKey, Workload],
    ) -> None:
        pods: dict[PodKey, set[ServiceRef]] = {}
        workloads: dict[tuple[str, str, str], set[ServiceRef]] = {}
        for ref, endpoints, local_pods in views:
            for e in endpoints.values():
                if e.pod:
                    pods.setdefault(pod_key(e), set()).add(ref)
            for namespace, pod in local_pods:
                w = known.get((namespace, pod))
                if w is not None and w.kind != "Pod":
                    workloads.setdefault((namespace, w.kind, w.name), set()).add(ref)
        self.pods = pods
        # Workloads stay known after their pods left (a rollout replaces every pod).
        for key, refs in workloads.items():
            self.workloads.setdefault(key, set()).update(refs)
        services = {ref for ref, _, _ in views}
        for key in list(self.workloads):
            self.workloads[key] &= services
            if not self.workloads[key]:
                del self.workloads[key]
