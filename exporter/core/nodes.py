"""The agent's own Node: its snapshots, and the node events of docs/lifecycle.md (*Node
events*) from their differences.

A Service's latency can be hurt by the node under its pods rather than by the pods: a node
that goes NotReady, runs short of memory, disk or PIDs (and whose kubelet then evicts
pods), is cordoned for maintenance or tainted NoExecute. The agent watches its own Node
(`fieldSelector=metadata.name=<node>`) and turns those changes into `NodeEvent`s, which the
correlator makes the episode cause `node` (docs/correlation.md).

`NodeSnapshot.parse` keeps the few fields that say whether the node is well: the Ready
condition, the three pressure conditions, `spec.unschedulable` and the taints that evict
or mirror a condition. `NodeTracker` diffs snapshots the way `PodLifecycleTracker` diffs
pods: the first list is silent, a relist reports exactly what changed, a re-delivery
reports nothing (the kubelet's status heartbeats are MODIFIED events that change nothing
here). Pure and clock-free: every call takes the agent's time `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter.core.pods import MalformedObject, opt_list, opt_mapping, parse_time, uid_of


class NodeEventKind(StrEnum):
    """Values of the `event` label of `tailwatch_node_events_total` (contract)."""

    NOT_READY = "not_ready"
    READY = "ready"
    MEMORY_PRESSURE = "memory_pressure"
    DISK_PRESSURE = "disk_pressure"
    PID_PRESSURE = "pid_pressure"
    PRESSURE_CLEARED = "pressure_cleared"
    CORDONED = "cordoned"
    UNCORDONED = "uncordoned"
    TAINTED = "tainted"
    UNTAINTED = "untainted"


#: Node events that say the node is unwell now: they make an episode's cause `node`.
BAD_NODE_EVENTS = frozenset(
    {
        NodeEventKind.NOT_READY,
        NodeEventKind.MEMORY_PRESSURE,
        NodeEventKind.DISK_PRESSURE,
        NodeEventKind.PID_PRESSURE,
        NodeEventKind.CORDONED,
        NodeEventKind.TAINTED,
    }
)
#: The pressure conditions, the event each one's becoming True is, and the well-known taint
#: the node lifecycle controller mirrors it as.
PRESSURES: Mapping[str, tuple[NodeEventKind, str]] = {
    "MemoryPressure": (NodeEventKind.MEMORY_PRESSURE, "node.kubernetes.io/memory-pressure"),
    "DiskPressure": (NodeEventKind.DISK_PRESSURE, "node.kubernetes.io/disk-pressure"),
    "PIDPressure": (NodeEventKind.PID_PRESSURE, "node.kubernetes.io/pid-pressure"),
}
#: Taints the node lifecycle controller sets from the Ready condition (False, Unknown) and
#: from spec.unschedulable. They say what the condition says, so they count as it (a node
#: tainted not-ready is not ready even when its Ready condition is not readable) and are
#: not reported again as `tainted`.
NOT_READY_TAINTS = frozenset({"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"})
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
MIRROR_TAINTS = frozenset(
    {*NOT_READY_TAINTS, UNSCHEDULABLE_TAINT, *(taint for _, taint in PRESSURES.values())}
)
NO_EXECUTE = "NoExecute"
_EFFECTS = frozenset({"NoSchedule", "PreferNoSchedule", NO_EXECUTE})


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """One change of the agent's node. `at` is when it happened as the API tells it (the
    condition's lastTransitionTime, the taint's timeAdded), else when the agent saw it.
    `reason`: the condition's reason (`KubeletNotReady`, `NodeStatusUnknown`,
    `KubeletHasInsufficientMemory`, ...); for `pressure_cleared` the condition that cleared
    (`MemoryPressure`, ...); for `tainted`/`untainted` the taint's effect. `taint` is the
    taint's key."""

    kind: NodeEventKind
    at: float
    node: str
    reason: str = ""
    taint: str = ""

    @property
    def bad(self) -> bool:
        """The node is unwell in this way from `at` on."""
        return self.kind in BAD_NODE_EVENTS

    @property
    def label_reason(self) -> str:
        """The `reason` label of tailwatch_node_events_total: bounded, so that a node with
        many custom taints adds no series (the key is in the log line and the evidence)."""
        if self.kind in (NodeEventKind.TAINTED, NodeEventKind.UNTAINTED):
            return self.taint if "kubernetes.io/" in self.taint else "other"
        return self.reason

    def as_log_fields(self) -> dict[str, object]:
        """The fields of the structured log line for this event."""
        fields: dict[str, object] = {"event": self.kind.value, "node": self.node}
        if self.reason:
            fields["reason"] = self.reason
        if self.taint:
            fields["taint"] = self.taint
        return fields

    def describe(self) -> str:
        """The event in words, for an episode's summary."""
        return describe_node_state(self.kind.value, self.node, self.reason, self.taint)


def describe_node_state(event: str, node: str, reason: str = "", taint: str = "") -> str:
    """ "node node-1 under MemoryPressure", "node node-1 not ready (KubeletNotReady)", ..."""
    for condition, (kind, _) in PRESSURES.items():
        if event == kind.value:
            return f"node {node} under {condition}"
    if event == NodeEventKind.NOT_READY.value:
        return f"node {node} not ready" + (f" ({reason})" if reason else "")
    if event == NodeEventKind.CORDONED.value:
        return f"node {node} cordoned"
    if event == NodeEventKind.TAINTED.value:
        return f"node {node} tainted {taint}:{reason or NO_EXECUTE}"
    if event == NodeEventKind.PRESSURE_CLEARED.value:
        return f"node {node} no longer under {reason}"
    return f"node {node} {event.replace('_', ' ')}"


@dataclass(frozen=True, slots=True)
class Condition:
    """One node condition as the agent keeps it."""

    status: str  # True | False | Unknown
    reason: str = ""
    since: float | None = None  # lastTransitionTime; None if absent or unreadable


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    effect: str
    since: float | None = None  # timeAdded (set for NoExecute taints); None otherwise


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """What the agent keeps of its Node: whether it is ready, under pressure, cordoned or
    tainted to evict. The node controller's well-known taints that mirror a condition
    (node.kubernetes.io/not-ready, memory-pressure, ...) stand in for that condition when it
    is not reported, and are never `tainted` themselves."""

    name: str
    uid: str = ""
    ready: Condition | None = None  # None: no Ready condition reported (yet)
    # The pressure conditions reported, (type, condition), whatever their status.
    conditions: tuple[tuple[str, Condition], ...] = ()
    unschedulable: bool = False
    taints: frozenset[Taint] = field(default_factory=frozenset)  # NoExecute, but the mirrors

    @staticmethod
    def parse(obj: Mapping[str, Any]) -> NodeSnapshot:
        """A Node body (the API's JSON, a dict) to a snapshot; raises `MalformedObject` with
        a short reason slug when a field it needs is missing or of the wrong type. Optional
        parts (status, conditions, taints, times) may be absent; a bad time costs only the
        event's time, which falls back to the agent's clock."""
        if not isinstance(obj, Mapping):
            raise MalformedObject("not_an_object", "node is not a JSON object")
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            raise MalformedObject("missing_field", "node.metadata is missing or not an object")
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedObject("missing_field", "metadata.name is missing or empty")
        spec = opt_mapping(obj, "spec", "node")
        status = opt_mapping(obj, "status", "node")

        ready: Condition | None = None
        pressures: list[tuple[str, Condition]] = []
        for cond in opt_list(status, "conditions", "status"):
            if not isinstance(cond, Mapping):
                raise MalformedObject("bad_field", "status.conditions[] is not an object")
            ctype, cstatus = cond.get("type"), cond.get("status")
            if not isinstance(ctype, str) or not isinstance(cstatus, str):
                raise MalformedObject("bad_field", "status.conditions[] lacks type or status")
            condition = Condition(
                cstatus, _text(cond.get("reason")), parse_time(cond.get("lastTransitionTime"))
            )
            if ctype == "Ready":
                ready = condition
            elif ctype in PRESSURES:
                pressures.append((ctype, condition))

        unschedulable = spec.get("unschedulable", False)
        if unschedulable is None:
            unschedulable = False
        if not isinstance(unschedulable, bool):
            raise MalformedObject("bad_field", "spec.unschedulable is not a boolean")
        taints: set[Taint] = set()
        for raw in opt_list(spec, "taints", "spec"):
            if not isinstance(raw, Mapping):
                raise MalformedObject("bad_field", "spec.taints[] is not an object")
            key, effect = raw.get("key"), raw.get("effect")
            if not isinstance(key, str) or not key or effect not in _EFFECTS:
                raise MalformedObject("bad_field", "spec.taints[] lacks a key or an effect")
            if effect == NO_EXECUTE or key in MIRROR_TAINTS:
                taints.add(Taint(key, str(effect), parse_time(raw.get("timeAdded"))))

        # The node controller's taints say what a condition says, a moment later (and keep
        # saying it a moment after the condition changed back): they stand in for a
        # condition only when it is not reported at all.
        reported = {ctype for ctype, _ in pressures}
        for ctype, (_, mirror) in PRESSURES.items():
            taint = next((t for t in taints if t.key == mirror), None)
            if taint is not None and ctype not in reported:
                pressures.append((ctype, Condition("True", "", taint.since)))
        not_ready_taint = next((t for t in taints if t.key in NOT_READY_TAINTS), None)
        if not_ready_taint is not None and ready is None:
            unreachable = not_ready_taint.key == "node.kubernetes.io/unreachable"
            ready = Condition("Unknown" if unreachable else "False", "", not_ready_taint.since)

        return NodeSnapshot(
            name=name,
            uid=uid_of(obj) or "",
            ready=ready,
            conditions=tuple(sorted(pressures, key=lambda p: p[0])),
            unschedulable=unschedulable,
            taints=frozenset(t for t in taints if t.key not in MIRROR_TAINTS),
        )

    @property
    def is_ready(self) -> bool | None:
        return None if self.ready is None else self.ready.status == "True"

    def condition(self, ctype: str) -> Condition | None:
        for held, condition in self.conditions:
            if held == ctype:
                return condition
        return None

    def pressure(self, ctype: str) -> Condition | None:
        """The pressure condition `ctype` if it is True."""
        condition = self.condition(ctype)
        return condition if condition is not None and condition.status == "True" else None

    @property
    def pressures(self) -> list[tuple[str, Condition]]:
        return [(t, c) for t, c in self.conditions if c.status == "True"]


def _text(value: object) -> str:
    """A condition's reason: a CamelCase word by the API's conventions, at most 64 chars."""
    return value[:64] if isinstance(value, str) else ""


def _when(since: float | None, now: float) -> float:
    """When a change happened: the API's time, else (absent, or ahead of the agent's clock,
    which cannot be) the agent's."""
    return now if since is None or since > now else since


@dataclass(frozen=True, slots=True)
class NodeSyncResult:
    """What one full list produced: the events of the gap, and the objects it could not use."""

    events: list[NodeEvent] = field(default_factory=list)
    malformed: list[MalformedObject] = field(default_factory=list)


class NodeTracker:
    """Holds the agent's Node and reports its changes exactly once.

    - Before the first `sync`, `apply` records silently; the first `sync` replaces that
      state, still silently. What is bad already then is in `degraded()`, from the API's
      times where it gives them (else from when the agent first saw it).
    - A relist is diffed against what was held: exactly the changes of the gap are reported.
    - A node that arrives (ADDED, or in a relist, after being absent) is diffed against a
      node in good health with no Ready condition yet, so a new node that is ready says
      nothing and one that is not ready says `not_ready`.
    - A deleted node is forgotten silently (the agent's pods go with it).
    - Objects of another node (none, with the server's field selector) are ignored.
    - `ready` is reported only after a `not_ready` state: a node becoming ready for the
      first time is not news.
    """

    def __init__(self, node: str = "") -> None:
        self._node = node
        self._held: NodeSnapshot | None = None
        self._synced = False
        # When the agent first saw a state the API gives no time for (a cordon): key -> time.
        self._seen: dict[tuple[NodeEventKind, str], float] = {}

    @property
    def node(self) -> str:
        return self._node

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def snapshot(self) -> NodeSnapshot | None:
        return self._held

    def sync(self, objects: Iterable[Mapping[str, Any]], now: float) -> NodeSyncResult:
        """Apply a full list (the first list, or a relist after 410 Gone or a reconnect)."""
        malformed: list[MalformedObject] = []
        listed: NodeSnapshot | None = None
        unusable = False
        for obj in objects:
            try:
                snapshot = NodeSnapshot.parse(obj)
            except MalformedObject as exc:
                malformed.append(exc)
                unusable = unusable or _name_of(obj) in ("", self._node)
                continue
            if self._is_ours(snapshot):
                listed = snapshot
        if unusable and listed is None:
            # Our node is there but unreadable: keep what was held (it is no deletion).
            if not self._synced:
                self._synced = True
            return NodeSyncResult([], malformed)
        if not self._synced:
            self._synced = True
            self._establish(listed, now)
            return NodeSyncResult([], malformed)
        return NodeSyncResult(self._change(listed, now), malformed)

    def apply(self, event_type: str, obj: Mapping[str, Any], now: float) -> list[NodeEvent]:
        """Apply one watch event ("ADDED", "MODIFIED" or "DELETED"); idempotent. Raises
        `MalformedObject` for a body it cannot use (the held state is left as it was)."""
        if event_type == "BOOKMARK":
            return []
        if event_type == "DELETED":
            if _name_of(obj) == (self._held.name if self._held else None):
                return self._change(None, now) if self._synced else self._establish(None, now)
            return []
        if event_type not in ("ADDED", "MODIFIED"):
            raise MalformedObject("bad_event_type", f"unknown watch event type {event_type!r}")
        snapshot = NodeSnapshot.parse(obj)
        if not self._is_ours(snapshot):
            return []
        if not self._synced:
            return self._establish(snapshot, now)
        return self._change(snapshot, now)

    def degraded(self) -> tuple[NodeEvent, ...]:
        """The bad states the node is in now, each as the event that began it (`at`: since
        when, by the API's time where it gives one)."""
        held = self._held
        if held is None:
            return ()
        return tuple(self._bad_states(held))

    # -- diffs -------------------------------------------------------------------------------

    def _is_ours(self, snapshot: NodeSnapshot) -> bool:
        return not self._node or snapshot.name == self._node

    def _establish(self, snapshot: NodeSnapshot | None, now: float) -> list[NodeEvent]:
        self._held = snapshot
        self._seen.clear()
        if snapshot is not None:
            self._remember(snapshot, now)
        return []

    def _remember(self, snapshot: NodeSnapshot, now: float) -> None:
        """Note when each bad state was first seen (the time of those the API gives no time
        for); forget those that ended."""
        current = {(e.kind, e.taint) for e in self._bad_states(snapshot)}
        for key in [k for k in self._seen if k not in current]:
            del self._seen[key]
        for key in current:
            self._seen.setdefault(key, now)

    def _bad_states(self, snapshot: NodeSnapshot) -> list[NodeEvent]:
        """The bad states of `snapshot`, each at the API's time, else when first seen."""
        name = snapshot.name
        seen = self._seen
        out: list[NodeEvent] = []
        ready = snapshot.ready
        if ready is not None and ready.status != "True":
            kind = NodeEventKind.NOT_READY
            at = _since(ready.since, seen.get((kind, "")))
            out.append(NodeEvent(kind, at, name, ready.reason or _not_ready_reason(ready.status)))
        for ctype, condition in snapshot.pressures:
            kind = PRESSURES[ctype][0]
            at = _since(condition.since, seen.get((kind, "")))
            out.append(NodeEvent(kind, at, name, condition.reason or ctype))
        if snapshot.unschedulable:
            kind = NodeEventKind.CORDONED
            out.append(NodeEvent(kind, _since(None, seen.get((kind, ""))), name))
        for taint in sorted(snapshot.taints, key=lambda t: (t.key, t.effect)):
            kind = NodeEventKind.TAINTED
            at = _since(taint.since, seen.get((kind, taint.key)))
            out.append(NodeEvent(kind, at, name, taint.effect, taint.key))
        return out

    def _change(self, new: NodeSnapshot | None, now: float) -> list[NodeEvent]:
        """The events from the held snapshot to `new`; then `new` is held."""
        old = self._held
        self._held = new
        if new is None:
            self._seen.clear()
            return []
        base = old if old is not None else NodeSnapshot(new.name)
        events: list[NodeEvent] = []
        name = new.name
        if new.ready is not None and new.ready.status != "True":
            if base.ready is None or base.ready.status == "True":
                reason = new.ready.reason or _not_ready_reason(new.ready.status)
                at = _when(new.ready.since, now)
                events.append(NodeEvent(NodeEventKind.NOT_READY, at, name, reason))
        elif new.is_ready and base.ready is not None and base.ready.status != "True":
            assert new.ready is not None
            at = _when(new.ready.since, now)
            events.append(NodeEvent(NodeEventKind.READY, at, name, new.ready.reason))
        for ctype, (kind, _) in PRESSURES.items():
            before, after = base.pressure(ctype), new.pressure(ctype)
            if after is not None and before is None:
                events.append(NodeEvent(kind, _when(after.since, now), name, after.reason or ctype))
            elif after is None and before is not None:
                cleared = new.condition(ctype)
                at = _when(cleared.since if cleared is not None else None, now)
                events.append(NodeEvent(NodeEventKind.PRESSURE_CLEARED, at, name, ctype))
        if new.unschedulable and not base.unschedulable:
            events.append(NodeEvent(NodeEventKind.CORDONED, now, name))
        elif base.unschedulable and not new.unschedulable:
            events.append(NodeEvent(NodeEventKind.UNCORDONED, now, name))
        old_keys = {(t.key, t.effect) for t in base.taints}
        new_keys = {(t.key, t.effect) for t in new.taints}
        for taint in sorted(new.taints, key=lambda t: (t.key, t.effect)):
            if (taint.key, taint.effect) not in old_keys:
                at = _when(taint.since, now)
                events.append(NodeEvent(NodeEventKind.TAINTED, at, name, taint.effect, taint.key))
        for taint in sorted(base.taints, key=lambda t: (t.key, t.effect)):
            if (taint.key, taint.effect) not in new_keys:
                events.append(
                    NodeEvent(NodeEventKind.UNTAINTED, now, name, taint.effect, taint.key)
                )
        self._remember(new, now)
        return events


def _since(api: float | None, seen: float | None) -> float:
    """Since when a state holds: the API's time, else (absent, or later than when the agent
    first saw the state, which only skewed clocks allow) when the agent first saw it."""
    if api is not None and (seen is None or api <= seen):
        return api
    return seen if seen is not None else 0.0


def _not_ready_reason(status: str) -> str:
    # Unknown: the node controller's verdict that the kubelet stopped posting status.
    return "NodeStatusUnknown" if status == "Unknown" else "NotReady"


def _name_of(obj: object) -> str:
    if not isinstance(obj, Mapping):
        return ""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ""
    name = metadata.get("name")
    return name if isinstance(name, str) else ""
