"""Node-local pod lifecycle detection: turns Pod lists and watch events into `LifecycleEvent`s.

Pure and clock-free: every call takes the agent's time `now` (epoch seconds). The semantics
are those of docs/lifecycle.md; the decisions the contract leaves open are written down on
`PodLifecycleTracker`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.pods import TERMINAL_PHASES, MalformedObject, PodSnapshot, parse_pod, uid_of

WorkloadKey = tuple[str, str, str]  # (namespace, workload kind, workload name)
#: Told when a workload gets its first pod on the node (True) or loses its last (False).
OccupancyListener = Callable[[WorkloadKey, bool], None]

_CRASH_LOOP = "CrashLoopBackOff"
#: How far below 0 a duration between two clocks may fall and still be reported (as 0): the
#: API's times have whole-second resolution, and the node's clock and the control plane's
#: differ a little. Further below, the clocks disagree and the duration is dropped.
CLOCK_TOLERANCE = 2.0
#: The kubelet writes status.startTime and the first Ready=False in one status update; read
#: back to the second, they differ by at most this much for a pod never Ready.
_FIRST_STATUS_SPREAD = 1.0


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one full list produced: the events of the gap, and the objects it could not use."""

    events: list[LifecycleEvent] = field(default_factory=list)
    malformed: list[MalformedObject] = field(default_factory=list)


@dataclass(slots=True)
class _HeldPod:
    snapshot: PodSnapshot
    # The pod's first Ready is still to come as far as the agent can tell: the `ready` that
    # ends this carries the startup time.
    startup_pending: bool = False
    # When the agent saw the pod arrive (agent's clock): the start of a startup time only where
    # the API gives no timestamps.
    startup_from: float | None = None
    # The earliest deletion request (deletionTimestamp - deletionGracePeriodSeconds) seen.
    deletion_requested: float | None = None
    # When `terminating` was seen as a transition (agent's clock): the start of a termination
    # time only where the API gives no deletion request time.
    terminating_since: float | None = None


def _is_evicted(snapshot: PodSnapshot) -> bool:
    return snapshot.phase == "Failed" and snapshot.status_reason == "Evicted"


class PodLifecycleTracker:
    """Holds the pods of one node and reports their lifecycle changes exactly once.

    Decisions where docs/lifecycle.md is silent:

    - Before the first `sync`, `apply` records pods silently too (there is nothing to diff
      against); the first `sync` then replaces that state, still silently.
    - A pod that arrives (ADDED of an unknown uid, or new in a relist) is diffed against a
      pod that was just scheduled: `scheduled`, then `rollout` if its revision is new for its
      workload, then whatever already happened to it on this node (restarts, crash loop,
      ready, terminating, evicted). Restarts before the arrival did happen on this node.
    - Durations come from the API's own times, not from when events reached the agent
      (docs/lifecycle.md, *Durations*). Startup: Ready's lastTransitionTime minus
      PodScheduled's (never before creationTimestamp: a pod is not scheduled before it
      exists), on the first `ready` of the pod, once. Termination: the agent's time of the
      `deleted` minus the deletion request, deletionTimestamp - deletionGracePeriodSeconds
      (the earliest seen for the pod: the kubelet's final grace-0 delete may move it later).
    - Which `ready` is the first: a pod that arrives after the first list is new, so its
      first `ready` has a startup time even when it arrives already Ready (a relist after a
      gap) - unless the API shows it was Ready before: Ready=False since later than
      status.startTime (the kubelet writes both in its first status). A pod of the first list
      that is already Ready never gets one: it started before the agent ran, and every agent
      restart would put the node's old pods in the histogram again. A pod of the first list
      that has never been Ready (no Ready condition yet, or Ready=False since startTime)
      gets one when it becomes Ready: the pods that start with the agent, at a node's boot.
    - The API keeps only a condition's latest transition: readiness that flapped while the
      agent was not watching cannot be seen once the pod is Ready again, and such a startup
      runs to the latest Ready. A flap the agent sees never yields a startup.
    - A pod seen already terminating (in the first list, or arriving so) still gets its
      termination time: the request time is in the object.
    - A duration below 0 is the clocks disagreeing: down to -CLOCK_TOLERANCE it is reported
      as 0, below that it is dropped. Only where the API gives no usable time does the
      agent's clock stand in, between two changes it saw (arrival -> Ready, terminating ->
      gone); else there is no duration.
    - `not_ready` is not reported for a pod that is deleting or has finished (phase
      Succeeded/Failed): that is the end of the pod, not a readiness flap. An eviction is
      reported as `evicted` only.
    - `crash_loop` is reported each time a container enters CrashLoopBackOff from another
      state (each failed restart of a crash-looping container is a new back-off).
    - `rollout` needs a revision (pod-template-hash or controller-revision-hash): bare pods
      and Jobs never roll out. Only arrivals update the revision remembered for a workload;
      the initial sync remembers, per workload, the revision of its newest pod.
    - With `node` set, the tracker's view is exactly the pods whose spec.nodeName is `node`.
      spec.nodeName cannot change, so another node in a body of a held pod can only be bad
      input; it is treated like the apiserver treats an object that stops matching a
      fieldSelector: the pod left this view and is reported `deleted`.
    - A malformed object in a relist whose metadata.uid is still readable keeps the held pod
      as it was (it is not a deletion); every malformed object is returned in `.malformed`.
    - A list is taken as the truth at one moment (the agent lists without a resourceVersion,
      a consistent read); resourceVersions are not compared.
    - Deleted pods are forgotten at once. Their uids are kept in a bounded list of
      tombstones so that a late re-delivery of a deleted pod is not taken for a new pod.
    - Memory is bounded by the pods on the node plus `max_workloads` remembered revisions of
      workloads without pods here (oldest dropped first) plus `max_tombstones` uids.
    - The pods of each workload on the node are counted as pods come, go, or change owner
      (an orphaned pod becomes a bare Pod), silent changes included: `occupancy` hears each
      workload that gets its first pod here or loses its last, so that the series keyed by
      workload can expire (docs/metrics.md, *Cardinality*) at O(1) per change.
    """

    def __init__(
        self,
        node: str = "",
        *,
        max_workloads: int = 1024,
        max_tombstones: int = 1024,
        occupancy: OccupancyListener | None = None,
    ) -> None:
        self._node = node
        self._max_workloads = max_workloads
        self._occupancy = occupancy
        self._pods: dict[str, _HeldPod] = {}
        self._workload_pods: dict[WorkloadKey, int] = {}
        self._revisions: OrderedDict[WorkloadKey, str] = OrderedDict()
        self._tombstones: deque[str] = deque(maxlen=max_tombstones)
        self._tombstone_set: set[str] = set()
        self._synced = False

    @property
    def node(self) -> str:
        return self._node

    @property
    def synced(self) -> bool:
        """True once the first full list has been applied."""
        return self._synced

    def pods(self) -> tuple[PodSnapshot, ...]:
        """The pods currently on this node, as last seen."""
        return tuple(held.snapshot for held in self._pods.values())

    def pod(self, uid: str) -> PodSnapshot | None:
        held = self._pods.get(uid)
        return held.snapshot if held else None

    def pods_of(self, namespace: str, workload: Workload) -> int:
        """How many pods of `workload` are on this node now."""
        return self._workload_pods.get((namespace, workload.kind, workload.name), 0)

    def revision_of(self, namespace: str, workload: Workload) -> str | None:
        """The revision this agent last saw arrive for `workload` (None if none is known)."""
        return self._revisions.get((namespace, workload.kind, workload.name))

    def reset(self) -> None:
        """Forget everything: the next `sync` establishes state silently again."""
        self._pods.clear()
        self._recount()
        self._revisions.clear()
        self._tombstones.clear()
        self._tombstone_set.clear()
        self._synced = False

    # -- inputs ------------------------------------------------------------------------------

    def sync(self, objects: Iterable[Mapping[str, Any]], now: float) -> SyncResult:
        """Apply a full list (the first list, or a relist after 410 Gone or a reconnect)."""
        malformed: list[MalformedObject] = []
        listed: dict[str, PodSnapshot] = {}
        # uids of listed bodies that could not be parsed: those pods are still there.
        unusable: set[str] = set()
        for obj in objects:
            try:
                snapshot = parse_pod(obj)
            except MalformedObject as exc:
                malformed.append(exc)
                uid = uid_of(obj)
                if uid is not None:
                    unusable.add(uid)
                continue
            if snapshot.uid in self._tombstone_set or not self._is_ours(snapshot):
                continue
            listed[snapshot.uid] = snapshot

        if not self._synced:
            self._establish(listed.values())
            self._synced = True
            return SyncResult([], malformed)

        events: list[LifecycleEvent] = []
        for uid in list(self._pods):
            if uid not in listed and uid not in unusable:
                events += self._delete(uid, now)
        arrivals: list[PodSnapshot] = []
        for uid, snapshot in listed.items():
            if uid in self._pods:
                events += self._update(snapshot, now)
            else:
                arrivals.append(snapshot)
        # In the order they were created, as a watch would have delivered them.
        arrivals.sort(key=lambda s: (s.created_at is None, s.created_at or 0.0))
        for snapshot in arrivals:
            events += self._arrive(snapshot, now)
        return SyncResult(events, malformed)

    def apply(self, event_type: str, obj: Mapping[str, Any], now: float) -> list[LifecycleEvent]:
        """Apply one watch event ("ADDED", "MODIFIED" or "DELETED"); idempotent.

        Raises `MalformedObject` for a body it cannot use (the held state is left as it was).
        BOOKMARK events carry no pod and yield nothing.
        """
        if event_type == "BOOKMARK":
            return []
        if event_type == "DELETED":
            uid = uid_of(obj)
            if uid is None:
                raise MalformedObject("missing_field", "DELETED body has no metadata.uid")
            return self._delete(uid, now) if uid in self._pods else []
        if event_type not in ("ADDED", "MODIFIED"):
            raise MalformedObject("bad_event_type", f"unknown watch event type {event_type!r}")
        snapshot = parse_pod(obj)
        if snapshot.uid in self._tombstone_set:
            return []
        if not self._is_ours(snapshot):
            return self._delete(snapshot.uid, now) if snapshot.uid in self._pods else []
        if snapshot.uid in self._pods:
            return self._update(snapshot, now)
        return self._arrive(snapshot, now)

    # -- state changes -----------------------------------------------------------------------

    def _is_ours(self, snapshot: PodSnapshot) -> bool:
        return not self._node or snapshot.node == self._node

    def _establish(self, snapshots: Iterable[PodSnapshot]) -> None:
        """Take `snapshots` as the state of the node, silently."""
        self._pods = {
            s.uid: _HeldPod(
                s,
                startup_pending=_never_ready(s),
                deletion_requested=s.deletion_requested_at,
            )
            for s in snapshots
        }
        self._recount()
        # The newest pod of a workload carries the revision it is rolling towards.
        for held in sorted(self._pods.values(), key=lambda h: h.snapshot.created_at or 0.0):
            self._remember_revision(held.snapshot)

    def _arrive(self, snapshot: PodSnapshot, now: float) -> list[LifecycleEvent]:
        if not self._synced:
            self._hold(_HeldPod(snapshot))
            self._remember_revision(snapshot)
            return []
        events = [self._event(PodEventKind.SCHEDULED, snapshot, now)]
        key = _workload_key(snapshot)
        previous = self._revisions.get(key)
        if snapshot.revision and previous and previous != snapshot.revision:
            events.append(self._event(PodEventKind.ROLLOUT, snapshot, now))
        self._remember_revision(snapshot)
        held = _HeldPod(
            _just_scheduled(snapshot),
            startup_pending=not _was_ready_before(snapshot),
            startup_from=now,
        )
        self._hold(held)
        events += self._transitions(held, snapshot, now, arriving=True)
        return events

    def _update(self, snapshot: PodSnapshot, now: float) -> list[LifecycleEvent]:
        if not self._synced:
            self._replace(self._pods[snapshot.uid], snapshot)
            return []
        return self._transitions(self._pods[snapshot.uid], snapshot, now, arriving=False)

    def _delete(self, uid: str, now: float) -> list[LifecycleEvent]:
        held = self._pods.pop(uid)
        self._count(_workload_key(held.snapshot), -1)
        self._tombstone(uid)
        if not self._synced:
            return []
        # Gone now, by the agent's clock: the API gives no time for the removal.
        duration = _elapsed(held.deletion_requested, now)
        if duration is None:
            duration = _elapsed(held.terminating_since, now)
        return [self._event(PodEventKind.DELETED, held.snapshot, now, duration_seconds=duration)]

    def _transitions(
        self, held: _HeldPod, new: PodSnapshot, now: float, *, arriving: bool
    ) -> list[LifecycleEvent]:
        """The events between the held snapshot and `new`; then `new` becomes the held one."""
        old = held.snapshot
        events: list[LifecycleEvent] = []
        for container in new.containers:
            before = old.container(container.name)
            grew = container.restart_count - (before.restart_count if before else 0)
            if grew > 0:
                events.append(
                    self._event(
                        PodEventKind.CONTAINER_RESTART,
                        new,
                        now,
                        container=container.name,
                        reason=container.last_terminated_reason or "Unknown",
                        count=grew,
                    )
                )
            was_crash_looping = before is not None and before.waiting_reason == _CRASH_LOOP
            if container.waiting_reason == _CRASH_LOOP and not was_crash_looping:
                events.append(
                    self._event(
                        PodEventKind.CRASH_LOOP,
                        new,
                        now,
                        container=container.name,
                        reason=container.last_terminated_reason or "Unknown",
                    )
                )

        if new.ready is True and old.ready is not True:
            startup = _startup(held, new, now, arriving) if held.startup_pending else None
            held.startup_pending = False
            held.startup_from = None
            events.append(self._event(PodEventKind.READY, new, now, duration_seconds=startup))
        elif (
            old.ready is True
            and new.ready is False
            and not new.deleting
            and new.phase not in TERMINAL_PHASES
        ):
            events.append(self._event(PodEventKind.NOT_READY, new, now))
        if held.startup_pending and _was_ready_before(new):
            # Ready and unready again while the agent was not watching: the first Ready went
            # by unseen, and a later one is no startup.
            held.startup_pending = False
            held.startup_from = None

        held.deletion_requested = _earliest(held.deletion_requested, new.deletion_requested_at)
        if new.deleting and not old.deleting:
            if not arriving:
                held.terminating_since = now
            reason = new.disruption_reason or "Deleted"
            events.append(
                self._event(
                    PodEventKind.TERMINATING, new, now, reason=reason,
                    resource=new.eviction_resource,
                )
            )  # fmt: skip

        if _is_evicted(new) and not _is_evicted(old):
            events.append(
                self._event(
                    PodEventKind.EVICTED, new, now, reason="Evicted",
                    resource=new.eviction_resource,
                )
            )  # fmt: skip

        self._replace(held, new)
        return events

    # -- pods per workload -------------------------------------------------------------------

    def _hold(self, held: _HeldPod) -> None:
        self._pods[held.snapshot.uid] = held
        self._count(_workload_key(held.snapshot), 1)

    def _replace(self, held: _HeldPod, new: PodSnapshot) -> None:
        """`new` becomes the held snapshot; its workload may differ (owner references can
        change: a pod orphaned by its ReplicaSet's deletion becomes a bare Pod)."""
        old_key, new_key = _workload_key(held.snapshot), _workload_key(new)
        held.snapshot = new
        if old_key != new_key:
            self._count(new_key, 1)
            self._count(old_key, -1)

    def _count(self, key: WorkloadKey, change: int) -> None:
        before = self._workload_pods.get(key, 0)
        after = before + change
        if after:
            self._workload_pods[key] = after
        else:
            del self._workload_pods[key]
        if self._occupancy is not None and (before == 0) != (after == 0):
            self._occupancy(key, after > 0)

    def _recount(self) -> None:
        """Count the pods per workload again after `_pods` was replaced as a whole."""
        before = self._workload_pods
        after: dict[WorkloadKey, int] = {}
        for held in self._pods.values():
            key = _workload_key(held.snapshot)
            after[key] = after.get(key, 0) + 1
        self._workload_pods = after
        if self._occupancy is not None:
            for key in [k for k in before if k not in after]:
                self._occupancy(key, False)
            for key in [k for k in after if k not in before]:
                self._occupancy(key, True)

    def _remember_revision(self, snapshot: PodSnapshot) -> None:
        if not snapshot.revision:
            return
        key = _workload_key(snapshot)
        self._revisions[key] = snapshot.revision
        self._revisions.move_to_end(key)
        if len(self._revisions) <= self._max_workloads:
            return
        # Drop the oldest workloads that have no pod here; those with pods stay.
        for candidate in list(self._revisions):
            if len(self._revisions) <= self._max_workloads:
                break
            if candidate != key and candidate not in self._workload_pods:
                del self._revisions[candidate]

    def _tombstone(self, uid: str) -> None:
        if len(self._tombstones) == self._tombstones.maxlen:
            self._tombstone_set.discard(self._tombstones[0])
        self._tombstones.append(uid)
        self._tombstone_set.add(uid)

    def _event(
        self,
        kind: PodEventKind,
        snapshot: PodSnapshot,
        now: float,
        *,
        reason: str = "",
        container: str = "",
        count: int = 1,
        duration_seconds: float | None = None,
        resource: str = "",
    ) -> LifecycleEvent:
        return LifecycleEvent(
            kind=kind,
            at=now,
            namespace=snapshot.namespace,
            pod=snapshot.name,
            uid=snapshot.uid,
            workload=snapshot.workload,
            node=snapshot.node or self._node,
            revision=snapshot.revision,
            reason=reason,
            container=container,
            count=count,
            duration_seconds=duration_seconds,
            resource=resource,
        )


def _never_ready(snapshot: PodSnapshot) -> bool:
    """The API shows the pod has never been Ready: no Ready condition yet, or Ready=False
    since the kubelet first reported the pod (its startTime)."""
    if snapshot.ready is None:
        return True
    if snapshot.ready is True or snapshot.ready_since is None or snapshot.started_at is None:
        return False
    return snapshot.ready_since - snapshot.started_at <= _FIRST_STATUS_SPREAD


def _was_ready_before(snapshot: PodSnapshot) -> bool:
    """The API shows the pod was Ready before and is not now: Ready=False since a time later
    than the kubelet's first status of the pod."""
    if snapshot.ready is not False or snapshot.ready_since is None or snapshot.started_at is None:
        return False
    return snapshot.ready_since - snapshot.started_at > _FIRST_STATUS_SPREAD


def _startup(held: _HeldPod, new: PodSnapshot, now: float, arriving: bool) -> float | None:
    """Scheduled -> Ready by the API's times; else by the agent's, if it saw both ends."""
    scheduled = new.scheduled_at
    if scheduled is not None and new.created_at is not None:
        scheduled = max(scheduled, new.created_at)
    startup = _elapsed(scheduled, new.ready_at)
    if startup is None and held.startup_from is not None and not arriving:
        startup = _elapsed(held.startup_from, now)
    return startup


def _elapsed(start: float | None, end: float | None) -> float | None:
    """`end - start`, 0 if a little below 0 (CLOCK_TOLERANCE), None if unknown or further."""
    if start is None or end is None:
        return None
    elapsed = end - start
    if elapsed < -CLOCK_TOLERANCE:
        return None
    return max(elapsed, 0.0)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _workload_key(snapshot: PodSnapshot) -> WorkloadKey:
    return (snapshot.namespace, snapshot.workload.kind, snapshot.workload.name)


def _just_scheduled(snapshot: PodSnapshot) -> PodSnapshot:
    """The baseline an arriving pod is diffed against: bound to the node, nothing else yet."""
    return replace(
        snapshot,
        phase="Pending",
        status_reason="",
        ready=None,
        deleting=False,
        disruption_reason="",
        containers=(),
    )
