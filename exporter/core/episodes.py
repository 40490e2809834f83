"""Episodes as values (docs/correlation.md): what one disruption of one Service was, its
latency before and during it, its evidence and attribution, and how it is put in words and
JSON. The correlator (exporter/core/correlation.py) owns them and changes them; everything
here only reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from exporter.core.attribution import (
    ContainerPressure,
    Neighbour,
    NeighbourWindow,
    NodePressure,
    PodKey,
    Pressure,
)
from exporter.core.histogram import FineHistogram
from exporter.core.nodes import BAD_NODE_EVENTS, describe_node_state
from exporter.core.quantiles import DEFAULT_CONFIDENCE, Estimate, Tail, tail_of
from exporter.core.services import ServiceRef


class Cause(StrEnum):
    """Values of the `cause` label (contract), lifecycle causes in order of dominance."""

    ROLLOUT = "rollout"
    RESCHEDULE = "reschedule"
    EVICTION = "eviction"
    # The node under the Service's endpoints went NotReady, under memory/disk/PID pressure,
    # cordoned or tainted for eviction; or its kubelet evicted a pod for a resource.
    NODE = "node"
    RESTART = "restart"
    READINESS = "readiness"
    SCALE = "scale"
    RESOURCE_PRESSURE = "resource_pressure"
    UNEXPLAINED = "unexplained"


LIFECYCLE_CAUSES: tuple[Cause, ...] = (
    Cause.ROLLOUT,
    Cause.RESCHEDULE,
    Cause.EVICTION,
    Cause.NODE,
    Cause.RESTART,
    Cause.READINESS,
    Cause.SCALE,
)
CAUSE_RANK = {cause: rank for rank, cause in enumerate(LIFECYCLE_CAUSES)}


class ServiceState(StrEnum):
    """Values of the `state` label of latency samples (contract)."""

    STEADY = "steady"
    DISRUPTED = "disrupted"
    RECOVERING = "recovering"


class Impact(StrEnum):
    """Values of the `impact` label of tailwatch_episodes_total. `unknown`: no baseline
    that can bound a p99 to compare with (e.g. in the agent's first minutes), or no
    latency sample during the episode."""

    NONE = "none"
    DEGRADED = "degraded"
    SEVERE = "severe"
    UNKNOWN = "unknown"


class Status(StrEnum):
    OPEN = "open"
    RECOVERING = "recovering"  # closed; latency not yet confirmed back to baseline
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


HEADLINE_ORDER = (Source.SERVICE_PROBE, Source.ENDPOINT_PROBE, Source.CLIENT)


def iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One event that is part of an episode."""

    at: float
    source: str  # endpoint | pod | node | latency
    event: str
    pod: str = ""
    container: str = ""
    reason: str = ""
    node: str = ""
    resource: str = ""  # what the kubelet evicted a pod for (memory, ephemeral-storage, ...)
    taint: str = ""  # the key of a node's NoExecute taint

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": iso(self.at),
            "source": self.source,
            "event": self.event,
            "pod": self.pod,
            "container": self.container,
            "reason": self.reason,
            "node": self.node,
        }
        if self.resource:
            out["resource"] = self.resource
        if self.taint:
            out["taint"] = self.taint
        return out


def _ratio(value: float | None, baseline: float) -> float | None:
    # A baseline of 0 (every value under 1 µs) compares as 1 µs.
    return None if value is None else value / max(baseline, 1e-6)


@dataclass
class LatencyImpact:
    """One latency source over an episode: the baseline before it and what it was during."""

    source: Source
    baseline: Tail | None
    confidence: float = DEFAULT_CONFIDENCE
    during: FineHistogram = field(default_factory=FineHistogram)
    #: The during tail an episode read back from its Events was closed with (its samples are
    #: not kept): it stands for `during` while this agent has recorded none.
    restored_during: Tail | None = None
    # The during tail for (histogram, count): words, JSON and metrics read it several times.
    _tail: tuple[int, int, Tail | None] | None = field(default=None, repr=False, compare=False)

    def during_tail(self) -> Tail | None:
        if not self.during.count and self.restored_during is not None:
            return self.restored_during
        key = (id(self.during), self.during.count)
        if self._tail is None or self._tail[:2] != key:
            self._tail = (*key, tail_of(self.during, self.confidence))
        return self._tail[2]

    def ratios(self) -> tuple[float, float, float] | None:
        during = self.during_tail()
        if during is None or self.baseline is None:
            return None
        p50, p99, p999 = (
            _ratio(d.value, b.value) or 0.0
            for d, b in zip(during.estimates, self.baseline.estimates, strict=True)
        )
        return p50, p99, p999

    def as_json(self) -> dict[str, Any]:
        during = self.during_tail()
        ratios = self.ratios()
        out: dict[str, Any] = {
            "source": "client" if self.source is Source.CLIENT else "probe",
            "probe_target": None if self.source is Source.CLIENT else self.source.value,
            "baseline": None if self.baseline is None else self.baseline.as_json(),
            "during": None if during is None else during.as_json(),
            "ratios": None,
        }
        if ratios is not None and during is not None and self.baseline is not None:
            base = self.baseline.estimates
            out["ratios"] = {
                "p50": round(ratios[0], 3),
                "p99": round(ratios[1], 3),
                "p999": round(ratios[2], 3),
                "bounds": {
                    name: [_round(_ratio(e.lower, b.value), 3), _round(_ratio(e.upper, b.value), 3)]
                    for name, e, b in zip(
                        ("p50", "p99", "p999"), during.estimates, base, strict=True
                    )
                },
            }
        return out


def seconds_text(seconds: float) -> str:
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
    Cause.NODE: "A node problem",
    Cause.RESTART: "A container restart",
    Cause.READINESS: "A readiness change",
    Cause.SCALE: "A scale change",
    Cause.RESOURCE_PRESSURE: "Resource pressure",
    Cause.UNEXPLAINED: "An unexplained tail spike",
}


def _p99_text(estimate: Estimate, confidence: float) -> str:
    note = estimate.note(confidence)
    text = seconds_text(estimate.value)
    return text if note is None else f"{text} ({note})"


def node_story(evidence: list[Evidence], namespace: str) -> list[str]:
    """What the node did, in words, from an episode's evidence: "node node-1 under
    MemoryPressure", "the kubelet evicted shop/recommend-abc for memory" (each once)."""
    said: list[str] = []
    for e in evidence:
        text = ""
        if e.source == "node" and e.event in BAD_NODE_EVENTS:
            text = describe_node_state(e.event, e.node, e.reason, e.taint)
        elif e.source == "pod" and (
            e.event == "evicted" or (e.event == "terminating" and e.reason in _NODE_REMOVALS)
        ):
            who = _NODE_REMOVALS.get(e.reason, "the kubelet evicted")
            text = f"{who} {namespace}/{e.pod}" + (f" for {e.resource}" if e.resource else "")
        if text and text not in said:
            said.append(text)
    return said


# Who removed a pod for its node, by the DisruptionTarget reason of its `terminating`.
_NODE_REMOVALS = {
    "TerminationByKubelet": "the kubelet terminated",
    "DeletionByTaintManager": "the taint manager deleted",
}


@dataclass
class Episode:
    """One episode of one Service. Mutable while open or recovering; the correlator owns it.

    Times are when things happened, not when the agent noticed: a spike's `opened_at` is
    when its tail rose and `closed_at` when it fell (`spike_detected_at` is when the rise
    was detected); `recovered_at` is when latency really returned within tolerance after
    the close, `detected_at` when a window confirmed it."""

    id: str
    service: ServiceRef
    opened_at: float
    latency: dict[Source, LatencyImpact]
    confidence: float = DEFAULT_CONFIDENCE
    spike_detected_at: float | None = None  # set for an episode opened by a tail spike
    spike_threshold: float | None = None
    evidence: list[Evidence] = field(default_factory=list)
    evidence_dropped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    causes: set[Cause] = field(default_factory=set)
    pressure: Pressure = field(default_factory=Pressure)
    attribution: list[ContainerPressure] = field(default_factory=list)
    #: The slow interval attribution is measured over: the spike, or the first to the
    #: last slow headline sample of a lifecycle episode (else the whole episode).
    attribution_window: tuple[float, float] | None = None
    #: The other pods' containers of the node over the slow interval, the noisiest first,
    #: and the node's PSI then (once closed; from the rise to the detection for a spike
    #: still open). `neighbour_window` holds the checkpoints they are measured between.
    neighbours: list[Neighbour] = field(default_factory=list)
    node_pressure: NodePressure | None = None
    neighbour_window: NeighbourWindow | None = field(default=None, repr=False)
    last_change: float = 0.0
    closed_at: float | None = None
    recovered_at: float | None = None
    detected_at: float | None = None
    status: Status = Status.OPEN
    impact: Impact | None = None
    cause: Cause = Cause.UNEXPLAINED
    interrupted_by: str = ""
    #: First and last headline samples over baseline p99 x (1 + tolerance) while open.
    slow_from: float | None = None
    slow_to: float | None = None
    # Pods on this node that backed the Service during the episode.
    pods: set[PodKey] = field(default_factory=set)
    # Deployment rollout evidence from endpoint pod names: ReplicaSets added / leaving.
    replica_sets_added: set[str] = field(default_factory=set)
    replica_sets_leaving: set[str] = field(default_factory=set)
    #: Read back from this node's Events after an agent restart (exporter/core/restore.py);
    #: a finished one keeps the words it was written with (its evidence is not kept).
    restored: bool = False
    restored_summary: str = ""

    @property
    def spike(self) -> bool:
        """Opened by a latency spike, not by a lifecycle event."""
        return self.spike_detected_at is not None

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
        for source in HEADLINE_ORDER:
            impact = self.latency.get(source)
            if impact is not None and (impact.during.count or impact.baseline is not None):
                return impact
        return None

    @property
    def spike_only(self) -> bool:
        """Opened by a spike and joined by no lifecycle event: its times are its tail's."""
        return self.spike and not self.causes

    def slow_threshold(self, factor: float, headline: LatencyImpact | None = None) -> float | None:
        """The headline baseline's p99 x `factor` (1 + the recovery tolerance): over it, a
        sample is slow. None when the baseline cannot bound its p99."""
        headline = headline or self.headline()
        baseline = headline.baseline if headline is not None else None
        if baseline is None or not baseline.p99.supported:
            return None
        return baseline.p99.value * factor

    def add_during(
        self, source: Source, histogram: FineHistogram, now: float, factor: float
    ) -> None:
        """Samples taken at `now` while open: its latency, and its slow interval."""
        impact = self.latency.get(source)
        if impact is None:
            impact = self.latency[source] = LatencyImpact(source, None, self.confidence)
        impact.during.merge(histogram)
        if impact is self.headline():
            threshold = self.slow_threshold(factor, impact)
            if threshold is not None and histogram.count_above(threshold):
                self.slow_from = now if self.slow_from is None else self.slow_from
                self.slow_to = now

    def p99_ratio(self) -> float | None:
        headline = self.headline()
        ratios = headline.ratios() if headline is not None else None
        return None if ratios is None else ratios[1]

    def observed_p99_ratio(self) -> float | None:
        """The p99 ratio to report as a number: the estimate when the samples bound the
        during p99, else its lower bound (never more than the samples show)."""
        headline = self.headline()
        during = headline.during_tail() if headline is not None else None
        if during is None or headline is None or headline.baseline is None:
            return None
        p99 = during.p99
        return _ratio(p99.value if p99.supported else p99.lower, headline.baseline.p99.value)

    def summary(self) -> str:
        if self.restored_summary:
            return self.restored_summary
        what = f"{_CAUSE_TEXT[self.cause]} of {self.service}"
        headline = self.headline()
        during = headline.during_tail() if headline else None
        baseline = headline.baseline if headline else None
        confidence = headline.confidence if headline else DEFAULT_CONFIDENCE
        parts: list[str] = []
        if during is not None and baseline is not None:
            ratio = _ratio(during.p99.value, baseline.p99.value) or 0.0
            before = seconds_text(baseline.p99.value)
            if ratio > 1:
                parts.append(
                    f"{what} raised p99 from {before} to {_p99_text(during.p99, confidence)} "
                    f"({ratio:.1f}x)"
                )
            else:
                parts.append(
                    f"{what} did not raise p99 ({_p99_text(during.p99, confidence)} during "
                    f"it, {before} before)"
                )
        elif during is not None:
            parts.append(
                f"{what}: p99 {_p99_text(during.p99, confidence)} (no baseline to compare)"
            )
        else:
            parts.append(f"{what} (no latency samples during it)")
        if self.closed_at is not None:
            parts[-1] += f" for {_duration_text(self.closed_at - self.opened_at)}"
        else:
            parts[-1] += ", still open"
        if self.cause is Cause.NODE:
            parts += node_story(self.evidence, self.service.namespace)
        if self.status is Status.RECOVERED and self.recovery_seconds is not None:
            parts.append(
                f"latency was back to baseline {_duration_text(self.recovery_seconds)} after"
            )
        elif self.status is Status.NOT_RECOVERED:
            parts.append("latency did not return to baseline")
        elif self.status is Status.INTERRUPTED:
            parts.append(f"another episode ({self.interrupted_by}) began before it recovered")
        elif self.status is Status.NO_BASELINE and baseline is not None:
            note = baseline.p99.note(confidence)
            if note is not None:
                parts.append(f"recovery not judged: the baseline {note}")
        if self.attribution and self.attribution[0].signals:
            top = self.attribution[0]
            signals = ", ".join(s.replace("_", " ") for s in top.signals)
            parts.append(f"strongest pressure: {top.pod}/{top.container} ({signals})")
        noisy = self.neighbours[0] if self.neighbours else None
        if noisy is not None and "neighbour_cpu" in noisy.signals and noisy.cpu_cores:
            words = (
                f"noisy neighbour {noisy.namespace}/{noisy.pod}/{noisy.container} burned "
                f"{noisy.cpu_cores:.1f} cores"
            )
            node = self.node_pressure
            if node is not None and node.cpu_some is not None:
                words += f"; node CPU PSI {node.cpu_some * 100:.0f}%"
            parts.append(words)
        return "; ".join(parts) + "."

    def as_json(self) -> dict[str, Any]:
        headline = self.headline()
        client = self.latency.get(Source.CLIENT)
        window = self.attribution_window
        return {
            "id": self.id,
            "namespace": self.service.namespace,
            "service": self.service.name,
            "cause": self.cause.value,
            "status": self.status.value,
            "opened_at": iso(self.opened_at),
            "closed_at": iso(self.closed_at),
            "duration_seconds": _round(self.duration, 3),
            "recovered_at": iso(self.recovered_at),
            "recovery_seconds": _round(self.recovery_seconds, 3),
            "detected_at": iso(self.detected_at),
            "spike": None
            if self.spike_detected_at is None
            else {
                "detected_at": iso(self.spike_detected_at),
                "threshold_seconds": _round(self.spike_threshold),
            },
            "impact": None if self.impact is None else self.impact.value,
            "latency": None if headline is None else headline.as_json(),
            "client_latency": None if client is None or client is headline else client.as_json(),
            "events": [e.as_json() for e in self.evidence],
            "events_dropped": self.evidence_dropped,
            "event_counts": dict(sorted(self.counts.items())),
            "attribution_window": None
            if window is None
            else {"from": iso(window[0]), "to": iso(window[1])},
            "attribution": [a.as_json() for a in self.attribution],
            "neighbours": [n.as_json() for n in self.neighbours],
            "node_pressure": None if self.node_pressure is None else self.node_pressure.as_json(),
            "summary": self.summary(),
            "restored": self.restored,
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
