"""Episodes that outlive the agent (docs/correlation.md, *Episodes that outlive the agent*).

With --emit-events every change of an episode is a Kubernetes Event on its Service, and each
Event carries the episode's compact record (`episode_record`, an annotation): its id, times,
cause, impact, status, the headline's baseline and during tails and the slow threshold, its
event counts and its words. After a restart the agent reads its node's Events back, parses
each record (`parse_record`) and `plan_restore` decides what comes back:

- per episode id, the record of its most advanced Event (open < recovering < finished; the
  newest observation among equals), since each Event carries the state at its change;
- per Service at most one live episode (open, or closed and waiting for its recovery): the
  newest; an older live one, whose end was never written (an Event lost), comes back
  interrupted by it, as the correlator would have ended it;
- the last episode of a Service if it is open, whatever its age (it stays open until it
  closes by the usual rules); any other only if its newest Event is within the lookback
  (recovery_max + settle: an older one was judged, or is past judging);
- per Service the highest sequence number of any id, so that new ids continue after them.

`restored_episode` builds the Episode: marked `restored`, its baseline from the record (an
open one is judged against it when it closes), the during tail it was written with standing
for the samples this agent no longer has, a finished one keeping its words. Pure: the
adapter (exporter/kube/events.py) lists and decodes, the correlator (`Correlator.restore`)
installs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.episodes import (
    LIFECYCLE_CAUSES,
    Cause,
    Episode,
    Impact,
    LatencyImpact,
    Source,
    Status,
)
from exporter.core.quantiles import TAIL_QUANTILES, Estimate, Tail
from exporter.core.services import ServiceRef

#: The record's format; a record of another version is not restored.
RECORD_VERSION = 1
#: Bounds of a record (an annotation of well under 4 KiB): event kinds counted, and its words.
MAX_COUNTS = 32
MAX_SUMMARY = 1000
MAX_ID = 256  # an episode id: a namespace and a name of up to 63 characters, and a number

_LIVE = (Status.OPEN, Status.RECOVERING)
# How far along an episode a record is: each Event carries the state at its change.
_STAGE = {Status.OPEN: 0, Status.RECOVERING: 1}


def _time(x: float | None) -> float | None:
    return None if x is None else round(x, 6)  # epoch seconds, to the microsecond


def _value(x: float | None) -> float | None:
    return None if x is None else round(x, 9)  # latency seconds, to the nanosecond


def tail_record(tail: Tail | None) -> dict[str, Any] | None:
    """A Tail as a few numbers: p50, p99, p99.9 (`q`), their bounds (`lo`, `hi`), the sample
    count and the confidence."""
    if tail is None:
        return None
    return {
        "q": [_value(e.value) for e in tail.estimates],
        "lo": [_value(e.lower) for e in tail.estimates],
        "hi": [_value(e.upper) for e in tail.estimates],
        "n": tail.samples,
        "c": tail.confidence,
    }


def _number(value: Any, what: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} is not a number: {value!r}")
    return float(value)


def _triple(doc: Mapping[str, Any], key: str, optional: bool) -> list[float | None]:
    values = doc.get(key)
    if not isinstance(values, list) or len(values) != len(TAIL_QUANTILES):
        raise ValueError(f"tail {key} is not three numbers")
    return [_number(v, f"tail {key}", optional=optional) for v in values]


def tail_from(doc: Any) -> Tail | None:
    """The Tail of `tail_record`; ValueError when it is not one."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        raise ValueError("tail is not an object")
    values, lower, upper = (
        _triple(doc, "q", False),
        _triple(doc, "lo", True),
        _triple(doc, "hi", True),
    )
    n = doc.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError("tail n is not a positive integer")
    confidence = _number(doc.get("c"), "tail confidence")
    assert confidence is not None
    p50, p99, p999 = (
        Estimate(q, float(v or 0.0), n, lo, hi)
        for q, v, lo, hi in zip(TAIL_QUANTILES, values, lower, upper, strict=True)
    )
    return Tail(p50, p99, p999, confidence)


def episode_record(episode: Episode, factor: float) -> dict[str, Any]:
    """The compact record of `episode` as it is now, for the annotation of its Event: what
    `restored_episode` needs to bring it back (`factor`: 1 + the recovery tolerance, which
    makes the slow threshold). Bounded: at most MAX_COUNTS event kinds, MAX_SUMMARY chars."""
    headline = episode.headline()
    counts = dict(sorted(episode.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_COUNTS])
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "id": episode.id,
        "status": episode.status.value,
        "cause": episode.cause.value,
        "impact": None if episode.impact is None else episode.impact.value,
        "opened_at": _time(episode.opened_at),
        "closed_at": _time(episode.closed_at),
        "recovered_at": _time(episode.recovered_at),
        "detected_at": _time(episode.detected_at),
        "source": None if headline is None else headline.source.value,
        "baseline": None if headline is None else tail_record(headline.baseline),
        "during": None if headline is None else tail_record(headline.during_tail()),
        "threshold": _value(episode.slow_threshold(factor, headline)),
        "spike": None
        if episode.spike_detected_at is None
        else [_time(episode.spike_detected_at), _value(episode.spike_threshold)],
        "counts": dict(sorted(counts.items())),
        "interrupted_by": episode.interrupted_by[:MAX_ID],
        "summary": episode.summary()[:MAX_SUMMARY],
    }
    return {k: v for k, v in record.items() if v not in (None, "", {})}


@dataclass(frozen=True)
class EpisodeRecord:
    """One Event's record of its episode, with when the Event last saw it happen."""

    id: str
    service: ServiceRef
    seq: int  # the episode's number among its Service's (the id's last part)
    status: Status
    cause: Cause
    opened_at: float
    observed_at: float  # the Event's newest observation (eventTime or series.lastObservedTime)
    impact: Impact | None = None
    closed_at: float | None = None
    recovered_at: float | None = None
    detected_at: float | None = None
    source: Source | None = None
    baseline: Tail | None = None
    during: Tail | None = None
    threshold: float | None = None
    spike: tuple[float, float] | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    interrupted_by: str = ""
    summary: str = ""

    @property
    def live(self) -> bool:
        return self.status in _LIVE


def _enum(kind: Any, value: Any, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"unknown {what}: {value!r}") from None


def parse_record(doc: Any, service: ServiceRef, observed_at: float) -> EpisodeRecord:
    """The record of an Event about `service` (its `regarding`); ValueError when it is not
    one this agent wrote in this format, or it is about another Service."""
    if not isinstance(doc, Mapping):
        raise ValueError("the record is not an object")
    if doc.get("v") != RECORD_VERSION:
        raise ValueError(f"record version {doc.get('v')!r}")
    episode_id = doc.get("id")
    prefix, _, number = str(episode_id).rpartition("/")
    if not isinstance(episode_id, str) or prefix != str(service) or not number.isdigit():
        raise ValueError(f"episode id {episode_id!r} is not one of {service}")
    status = _enum(Status, doc.get("status"), "status")
    if status is Status.RECOVERING and (doc.get("threshold") is None or doc.get("source") is None):
        raise ValueError("a recovering episode without its slow threshold")
    spike = doc.get("spike")
    if spike is not None:
        if not isinstance(spike, list) or len(spike) != 2:
            raise ValueError("spike is not [detected_at, threshold]")
        spike = (_number(spike[0], "spike detected_at"), _number(spike[1], "spike threshold"))
    counts = doc.get("counts") or {}
    if not isinstance(counts, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in counts.items()
    ):
        raise ValueError("counts is not a map of integers")
    impact, source = doc.get("impact"), doc.get("source")
    opened_at = _number(doc.get("opened_at"), "opened_at")
    assert opened_at is not None
    return EpisodeRecord(
        id=episode_id,
        service=service,
        seq=int(number),
        status=status,
        cause=_enum(Cause, doc.get("cause"), "cause"),
        opened_at=opened_at,
        observed_at=observed_at,
        impact=None if impact is None else _enum(Impact, impact, "impact"),
        closed_at=_number(doc.get("closed_at"), "closed_at", optional=True),
        recovered_at=_number(doc.get("recovered_at"), "recovered_at", optional=True),
        detected_at=_number(doc.get("detected_at"), "detected_at", optional=True),
        source=None if source is None else _enum(Source, source, "source"),
        baseline=tail_from(doc.get("baseline")),
        during=tail_from(doc.get("during")),
        threshold=_number(doc.get("threshold"), "threshold", optional=True),
        spike=spike,  # type: ignore[arg-type]
        counts=dict(counts),
        interrupted_by=str(doc.get("interrupted_by") or ""),
        summary=str(doc.get("summary") or "")[:MAX_SUMMARY],
    )


@dataclass
class RestorePlan:
    """What comes back: per Service at most one live episode, the finished ones (oldest
    first), and the highest sequence number of each Service's ids."""

    live: list[EpisodeRecord] = field(default_factory=list)
    finished: list[EpisodeRecord] = field(default_factory=list)
    #: Live episodes that a newer one of the same Service ended: id -> the newer id.
    interrupted: dict[str, str] = field(default_factory=dict)
    seq: dict[ServiceRef, int] = field(default_factory=dict)


def _stage(record: EpisodeRecord) -> int:
    return _STAGE.get(record.status, 2)


def plan_restore(records: Iterable[EpisodeRecord], now: float, lookback: float) -> RestorePlan:
    """Which of the records read back become episodes again (the module's rules). O(records)."""
    plan = RestorePlan()
    best: dict[str, EpisodeRecord] = {}
    newest: dict[str, float] = {}  # the newest observation of each episode, any of its Events
    for record in records:
        ref = record.service
        plan.seq[ref] = max(plan.seq.get(ref, 0), record.seq)
        newest[record.id] = max(newest.get(record.id, -math.inf), record.observed_at)
        held = best.get(record.id)
        if held is None or (_stage(record), record.observed_at) > (_stage(held), held.observed_at):
            best[record.id] = record
    by_service: dict[ServiceRef, list[EpisodeRecord]] = {}
    for record in best.values():
        by_service.setdefault(record.service, []).append(record)
    for ordered in by_service.values():
        ordered.sort(key=lambda r: r.seq)
        nexts: list[EpisodeRecord | None] = [*ordered[1:], None]
        for record, after in zip(ordered, nexts, strict=True):
            if after is None and record.status is Status.OPEN:
                plan.live.append(record)  # still open, however long ago it opened
            elif newest[record.id] < now - lookback:
                continue  # judged long ago (or past judging): its Events tell its story
            elif after is not None and record.live:
                plan.interrupted[record.id] = after.id  # a newer one began: its end was lost
                plan.finished.append(record)
            elif record.live:
                plan.live.append(record)
            else:
                plan.finished.append(record)
    plan.finished.sort(key=lambda r: (r.closed_at or r.opened_at, r.id))
    return plan


def restored_episode(
    record: EpisodeRecord, confidence: float, now: float, *, interrupted_by: str = ""
) -> Episode:
    """The Episode of `record`, as this agent (restarted at `now`) holds it from then on. An
    open one counts its settle time from `now`: nothing is known of what changed while no
    agent was looking. With `interrupted_by`, a live one ended by a newer episode."""
    latency: dict[Source, LatencyImpact] = {}
    if record.source is not None:
        latency[record.source] = LatencyImpact(
            record.source, record.baseline, confidence, restored_during=record.during
        )
    status, summary = record.status, record.summary
    if interrupted_by:
        status, summary = Status.INTERRUPTED, ""  # its words would say it is still going on
    elif record.live:
        summary = ""  # this agent goes on measuring it: its words follow
    episode = Episode(
        id=record.id,
        service=record.service,
        opened_at=record.opened_at,
        latency=latency,
        confidence=confidence,
        counts=dict(record.counts),
        causes={record.cause} if record.cause in LIFECYCLE_CAUSES else set(),
        last_change=now if record.status is Status.OPEN else record.opened_at,
        closed_at=record.closed_at,
        recovered_at=record.recovered_at,
        detected_at=record.detected_at,
        status=status,
        impact=record.impact,
        cause=record.cause,
        interrupted_by=interrupted_by or record.interrupted_by,
        restored=True,
        restored_summary=summary,
    )
    if record.spike is not None:
        episode.spike_detected_at, episode.spike_threshold = record.spike
    return episode
