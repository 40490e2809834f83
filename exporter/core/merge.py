"""The cluster's view of its episodes, merged from what each agent saw (docs/cli.md).

Every agent reports the episodes of the Services it has latency for (docs/scale.md): one
disruption of one Service is seen by the k agents that probe its address and by those on
the nodes of its endpoints, each with its own cause (a container restart is `restart` on
the pod's node and `readiness` elsewhere), times and latency. `tailwatch episodes` gathers
the agents' `/api/v1/episodes` documents and this module makes one cluster-level record of
each disruption:

- episodes of the same Service whose [opened_at, closed_at or now] intervals overlap, or
  are within the settle time of each other, are one record (an agent opens its episode at
  the first event it sees, and the endpoint watch reaches the agents at slightly different
  moments);
- the record opens at the earliest open and closes at the latest close, and is open while
  any agent's episode is;
- its cause is the most dominant of the agents' causes by the ranking of the correlation
  core (lifecycle causes in `CAUSE_RANK` order, then `resource_pressure`, `unexplained`): the
  node that hosts the pod sees the most precise cause;
- its impact is the worst measured, its p99 ratio the highest, and it is recovered when
  every agent that judged recovery saw it recover (at the latest `recovered_at`), not when
  any said it did not;
- each agent's own view stays listed (node, cause, impact, p99 ratio, recovery, samples).

Pure: the agents' JSON in, values out; `now` is an argument. An episode the parser cannot
read (a field missing or of the wrong type) is skipped and counted, never fatal; keys it
does not know are ignored, so newer agents' additions pass through unharmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.core.episodes import CAUSE_RANK, Cause, Impact, Status, iso

#: When an agent's document does not say its settle time (docs/correlation.md default).
DEFAULT_SETTLE = 30.0

# Lower ranks dominate: the lifecycle causes in the core's order, then the tail-spike causes,
# then a cause this version does not know (a newer agent's).
_SPIKE_CAUSES = (Cause.RESOURCE_PRESSURE.value, Cause.UNEXPLAINED.value)
_UNKNOWN_CAUSE_RANK = len(CAUSE_RANK) + len(_SPIKE_CAUSES)


def cause_rank(cause: str) -> int:
    """The dominance of `cause` (lower wins): the correlation core's ranking of lifecycle
    causes, then resource_pressure, unexplained, and anything unknown last."""
    try:
        known = Cause(cause)
    except ValueError:
        return _UNKNOWN_CAUSE_RANK
    if known in CAUSE_RANK:
        return CAUSE_RANK[known]
    return len(CAUSE_RANK) + _SPIKE_CAUSES.index(known.value)


# The worst impact wins; a measured `none` says more than `unknown`, which says more than
# nothing (an episode still open has no impact yet).
_IMPACT_RANK = {
    Impact.SEVERE.value: 3,
    Impact.DEGRADED.value: 2,
    Impact.NONE.value: 1,
    Impact.UNKNOWN.value: 0,
}


class MalformedEpisode(ValueError):
    """An agent's episode this parser cannot read."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """One agent's episode of a Service: what its node saw."""

    node: str
    id: str
    namespace: str
    service: str
    cause: str
    status: str
    impact: str | None
    opened_at: float
    closed_at: float | None
    recovered_at: float | None
    recovery_seconds: float | None
    p99_ratio: float | None
    baseline_samples: int | None
    during_samples: int | None
    summary: str

    @property
    def open(self) -> bool:
        return self.status == Status.OPEN.value or self.closed_at is None

    def end(self, now: float) -> float:
        return now if self.closed_at is None else max(self.closed_at, self.opened_at)

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "id": self.id,
            "cause": self.cause,
            "status": self.status,
            "impact": self.impact,
            "opened_at": iso(self.opened_at),
            "closed_at": iso(self.closed_at),
            "p99_ratio": self.p99_ratio,
            "recovered_at": iso(self.recovered_at),
            "recovery_seconds": self.recovery_seconds,
            "samples": {"baseline": self.baseline_samples, "during": self.during_samples},
            "summary": self.summary,
        }


def _time(value: object, name: str, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedEpisode(f"{name} is not a time: {value!r}")
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise MalformedEpisode(f"{name} is not an ISO 8601 time: {value!r}") from None


def _text(doc: Mapping[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedEpisode(f"{name} is missing or not a string")
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def node_view(node: str, episode: Mapping[str, Any]) -> NodeView:
    """One episode of an agent's `/api/v1/episodes` (exporter/core/episodes.py
    `Episode.as_json`). The identity and times must be there; the latency fields may be
    absent or null (an episode without samples)."""
    if not isinstance(episode, Mapping):
        raise MalformedEpisode("an episode is not an object")
    opened_at = _time(episode.get("opened_at"), "opened_at", optional=False)
    assert opened_at is not None
    latency = _mapping(episode.get("latency"))
    impact = episode.get("impact")
    return NodeView(
        node=node,
        id=str(episode.get("id") or ""),
        namespace=_text(episode, "namespace"),
        service=_text(episode, "service"),
        cause=_text(episode, "cause"),
        status=_text(episode, "status"),
        impact=impact if isinstance(impact, str) else None,
        opened_at=opened_at,
        closed_at=_time(episode.get("closed_at"), "closed_at", optional=True),
        recovered_at=_time(episode.get("recovered_at"), "recovered_at", optional=True),
        recovery_seconds=_number(episode.get("recovery_seconds")),
        p99_ratio=_number(_mapping(latency.get("ratios")).get("p99")),
        baseline_samples=_count(_mapping(latency.get("baseline")).get("samples")),
        during_samples=_count(_mapping(latency.get("during")).get("samples")),
        summary=str(episode.get("summary") or ""),
    )


@dataclass
class AgentEpisodes:
    """What one agent's document holds: its episodes, its settle time, and how many of its
    episodes could not be read."""

    node: str
    views: list[NodeView] = field(default_factory=list)
    settle: float = DEFAULT_SETTLE
    malformed: int = 0
    problem: str = ""  # the first malformed episode's reason, for the one line shown


def read_agent(doc: Mapping[str, Any], node: str = "") -> AgentEpisodes:
    """An agent's `/api/v1/episodes` document (`Correlator.as_json`: "node", "settings",
    "open", "recent"); `node` names the agent when the document does not."""
    named = doc.get("node")
    out = AgentEpisodes(node=named if isinstance(named, str) and named else node)
    settle = _number(_mapping(doc.get("settings")).get("settle_seconds"))
    if settle is not None and settle >= 0:
        out.settle = settle
    for key in ("open", "recent"):
        episodes = doc.get(key)
        if episodes is None:
            continue
        if not isinstance(episodes, list):
            out.malformed += 1
            out.problem = out.problem or f"{key} is not a list"
            continue
        for episode in episodes:
            try:
                out.views.append(node_view(out.node, episode))
            except MalformedEpisode as exc:
                out.malformed += 1
                out.problem = out.problem or str(exc)
    return out


@dataclass(frozen=True, slots=True)
class Filters:
    """Which records to keep: a Service's namespace and name, and `since` (epoch seconds:
    records that were open at some moment since then)."""

    namespace: str | None = None
    service: str | None = None
    since: float | None = None

    def service_matches(self, view: NodeView) -> bool:
        return (self.namespace is None or view.namespace == self.namespace) and (
            self.service is None or view.service == self.service
        )


@dataclass(frozen=True)
class ClusterEpisode:
    """One disruption of one Service, as the cluster saw it: the agents' views merged."""

    namespace: str
    service: str
    opened_at: float
    closed_at: float | None  # None while any agent's episode is open
    cause: str
    impact: str | None
    status: str
    recovered_at: float | None
    p99_ratio: float | None
    views: tuple[NodeView, ...]

    @property
    def nodes(self) -> list[str]:
        """The nodes that saw it, each once, in the order of their views."""
        return list(dict.fromkeys(v.node for v in self.views))

    @property
    def duration(self) -> float | None:
        return None if self.closed_at is None else self.closed_at - self.opened_at

    @property
    def recovery_seconds(self) -> float | None:
        if self.recovered_at is None or self.closed_at is None:
            return None
        return max(0.0, self.recovered_at - self.closed_at)

    def as_json(self) -> dict[str, Any]:
        duration, recovery = self.duration, self.recovery_seconds
        return {
            "namespace": self.namespace,
            "service": self.service,
            "status": self.status,
            "cause": self.cause,
            "impact": self.impact,
            "opened_at": iso(self.opened_at),
            "closed_at": iso(self.closed_at),
            "duration_seconds": None if duration is None else round(duration, 3),
            "recovered_at": iso(self.recovered_at),
            "recovery_seconds": None if recovery is None else round(recovery, 3),
            "p99_ratio": self.p99_ratio,
            "nodes": [v.as_json() for v in self.views],
        }


def _status(views: Sequence[NodeView]) -> tuple[str, float | None]:
    """The record's status and recovery time. Open while any view is; `recovering` while
    any agent has not judged recovery yet; `not_recovered` when any says so; `recovered`
    at the latest recovery when some agent saw it (the others could not judge it:
    interrupted, or without a baseline); else the first of those that any view has."""
    statuses = {v.status for v in views}
    if any(v.open for v in views):
        return Status.OPEN.value, None
    for status in (Status.RECOVERING, Status.NOT_RECOVERED):
        if status.value in statuses:
            return status.value, None
    recovered = [v.recovered_at for v in views if v.recovered_at is not None]
    if Status.RECOVERED.value in statuses and recovered:
        return Status.RECOVERED.value, max(recovered)
    for status in (Status.INTERRUPTED, Status.NO_BASELINE):
        if status.value in statuses:
            return status.value, None
    return sorted(statuses)[0], None


def _record(views: list[NodeView]) -> ClusterEpisode:
    views.sort(key=lambda v: (cause_rank(v.cause), v.opened_at, v.node))
    closes = [v.closed_at for v in views]
    impacts = [v.impact for v in views if v.impact is not None]
    ratios = [v.p99_ratio for v in views if v.p99_ratio is not None]
    status, recovered_at = _status(views)
    return ClusterEpisode(
        namespace=views[0].namespace,
        service=views[0].service,
        opened_at=min(v.opened_at for v in views),
        closed_at=None if any(v.open for v in views) else max(c for c in closes if c is not None),
        cause=views[0].cause,  # the most dominant: views are sorted by cause first
        impact=max(impacts, key=lambda i: _IMPACT_RANK.get(i, -1)) if impacts else None,
        status=status,
        recovered_at=recovered_at,
        p99_ratio=max(ratios) if ratios else None,
        views=tuple(views),
    )


def merge(
    agents: Iterable[AgentEpisodes], now: float, filters: Filters | None = None
) -> list[ClusterEpisode]:
    """The cluster-level records of the agents' episodes, oldest first. Two views of one
    Service belong to one record when one opened before the other's end plus the settle
    time (the largest any agent uses); a record's end is its latest close, or `now` while
    it is open. O(n log n) in the episodes the agents hold."""
    filters = filters or Filters()
    by_service: dict[tuple[str, str], list[NodeView]] = {}
    settle = DEFAULT_SETTLE
    agents = list(agents)
    if agents:
        settle = max(a.settle for a in agents)
    for agent in agents:
        for view in agent.views:
            if filters.service_matches(view):
                by_service.setdefault((view.namespace, view.service), []).append(view)
    records: list[ClusterEpisode] = []
    for views in by_service.values():
        views.sort(key=lambda v: (v.opened_at, v.node))
        group: list[NodeView] = []
        end = 0.0
        for view in views:
            if group and view.opened_at > end + settle:
                records.append(_record(group))
                group = []
            end = max(end, view.end(now)) if group else view.end(now)
            group.append(view)
        if group:
            records.append(_record(group))
    if filters.since is not None:
        since = filters.since
        records = [r for r in records if (now if r.closed_at is None else r.closed_at) >= since]
    records.sort(key=lambda r: (r.opened_at, r.namespace, r.service))
    return records
