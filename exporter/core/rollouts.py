"""Rollouts of the workloads behind opted-in Services, seen cluster-wide (docs/lifecycle.md,
*Rollouts*): when each starts, whether it progresses or is stuck, and when it finishes, that
is when every endpoint of the workload in its Services runs the new revision and is ready.

`RolloutTracker` is fed each reported Service's endpoints whenever they change (`observe`),
the pods that arrive on this node (`on_pod_event`) and a clock tick (`tick`: finishes to
confirm, rollouts stuck). Like the other trackers it is pure: it takes `now` with every
call and returns what changed as `RolloutChange`s, which the agent counts, logs and
publishes.

An endpoint's workload and revision are known:

- for a pod on this node: from its controller and its revision label (the pod tracker's
  snapshot, found by the endpoint's pod uid);
- for a Deployment's pod anywhere: from its name, `<deployment>-<pod-template-hash>-<suffix>`.
  The controllers write the hash and the suffix in Kubernetes' safe alphabet (no vowels, no
  0, 1 or 3), so a StatefulSet's `web-0` or a DaemonSet's `node-agent-x7k2p` is not taken
  for one;
- for a StatefulSet's or DaemonSet's pod elsewhere: its name carries no revision. It belongs
  to the StatefulSet or DaemonSet of that name whose pods this agent has seen on its own node
  (`<name>-<ordinal>`, `<name>-<suffix>`), and counts as on the new revision once its pod
  was re-created (a new pod uid, or a new pod) since the rollout began.

Cost: `observe` is O(the Service's endpoints), plus O(the endpoints of the workloads it
touches in their other Services); state is kept per workload behind a reported Service,
and a rollout only while it runs (and the last `max_recent` that ended, for the JSON).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from exporter.core.endpoints import Endpoint
from exporter.core.episodes import iso
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.pods import PodSnapshot
from exporter.core.services import ServiceRef

WorkloadKey = tuple[str, str, str]  # (namespace, workload kind, workload name)
LocalPods = Callable[[str], PodSnapshot | None]

#: Kubernetes' rand.SafeEncodeString alphabet: pod-template-hashes and generated name
#: suffixes use only these characters.
SAFE_ALPHABET = frozenset("bcdfghjklmnpqrstvwxz2456789")
#: A generated name's random suffix (generateName), and the longest pod-template-hash (the
#: decimal digits of a 32-bit hash).
SUFFIX_LENGTH = 5
MAX_HASH_LENGTH = 10
#: The kinds of controller that roll out a new revision by replacing pods.
ROLLING_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet"})
#: Those whose pods' names carry no revision; found by name once seen on this node.
NAMED_KINDS = frozenset({"StatefulSet", "DaemonSet"})


def _safe(text: str) -> bool:
    return bool(text) and SAFE_ALPHABET.issuperset(text)


def deployment_of(pod: str) -> tuple[str, str] | None:
    """(Deployment, pod-template-hash) of a Deployment's pod from its name, else None."""
    rest, _, suffix = pod.rpartition("-")
    name, _, template_hash = rest.rpartition("-")
    if not name or len(suffix) != SUFFIX_LENGTH or not _safe(suffix):
        return None
    if len(template_hash) > MAX_HASH_LENGTH or not _safe(template_hash):
        return None
    return name, template_hash


def _named_member(kind: str, suffix: str) -> bool:
    """Is `suffix` what that kind of controller puts after its name in its pods' names?"""
    if kind == "StatefulSet":
        return suffix.isascii() and suffix.isdigit()
    return len(suffix) == SUFFIX_LENGTH and _safe(suffix)


class RolloutState(StrEnum):
    """The `state` of a rollout in /api/v1/episodes."""

    PROGRESSING = "progressing"
    STUCK = "stuck"
    FINISHED = "finished"
    #: The workload left every Service this agent reports before the rollout finished
    #: (deleted, scaled to zero, or no longer selected).
    ABANDONED = "abandoned"


class RolloutChangeKind(StrEnum):
    STARTED = "started"
    #: Found in progress when this agent first saw the Service (its start is unknown).
    ADOPTED = "adopted"
    #: A newer revision took over before the rollout finished (or an older one came back:
    #: a rollback); the rollout goes on towards it.
    SUPERSEDED = "superseded"
    STUCK = "stuck"
    PROGRESSING = "progressing"  # progress again after being stuck
    FINISHED = "finished"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Member:
    """One endpoint of a workload in one Service, as the tracker keeps it."""

    uid: str  # the pod's uid (the endpoint's identity when it has none)
    revision: str  # "" when its name does not say and its pod is not on this node
    ready: bool
    terminating: bool
    # When this agent first saw this pod back the Service: None for those already there
    # when it first saw the Service.
    since: float | None


@dataclass(slots=True)
class Rollout:
    """One rollout of one workload, in progress or ended."""

    namespace: str
    workload_kind: str
    workload: str
    from_revision: str
    to_revision: str  # "" until known, for a rollout found in progress
    # None: it was in progress when this agent first saw the Service.
    started_at: float | None
    # When this agent began following it (arrivals since then say which revision is newest).
    tracked_from: float
    # Endpoints without a known revision whose pod was re-created since then are on the new
    # revision.
    recreated_from: float
    last_progress: float
    services: tuple[str, ...] = ()
    superseded: list[str] = field(default_factory=list)
    state: RolloutState = RolloutState.PROGRESSING
    stuck_since: float | None = None
    finished_at: float | None = None
    ready_new: int = 0  # ready endpoints of the new revision
    ready_old: int = 0  # ready endpoints of other revisions
    old: int = 0  # endpoints of other revisions, terminating ones included
    total: int = 0  # endpoints that are not terminating
    # The most endpoints of the new revision ready, and the fewest of the old left, so far:
    # going past either is progress (a new pod flapping is not).
    best_ready_new: int = 0
    least_old: int = 0
    # Since when it has been done (every endpoint new and ready), until that is confirmed.
    done_since: float | None = None

    @property
    def key(self) -> WorkloadKey:
        return (self.namespace, self.workload_kind, self.workload)

    @property
    def rolled_back(self) -> bool:
        """It ended on the revision it started from (`kubectl rollout undo`)."""
        return bool(self.from_revision) and self.to_revision == self.from_revision

    @property
    def duration_seconds(self) -> float | None:
        """Start to finish; None until it finished, or when its start was not seen."""
        if self.state is not RolloutState.FINISHED or self.started_at is None:
            return None
        assert self.finished_at is not None
        return max(0.0, self.finished_at - self.started_at)

    def as_json(self) -> dict[str, Any]:
        duration = self.duration_seconds
        return {
            "namespace": self.namespace,
            "workload_kind": self.workload_kind,
            "workload": self.workload,
            "services": list(self.services),
            "from_revision": self.from_revision or None,
            "to_revision": self.to_revision or None,
            "superseded": list(self.superseded),
            "rolled_back": self.rolled_back,
            "state": self.state.value,
            "started_at": iso(self.started_at),
            "start_seen": self.started_at is not None,
            "finished_at": iso(self.finished_at),
            "duration_seconds": None if duration is None else round(duration, 3),
            "last_progress_at": iso(self.last_progress),
            "stuck_since": iso(self.stuck_since),
            "ready_new": self.ready_new,
            "ready_old": self.ready_old,
            "old": self.old,
            "total": self.total,
        }


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """What a call changed: the agent counts, logs and publishes these. `rollout` is a copy
    taken at the change."""

    kind: RolloutChangeKind
    at: float
    rollout: Rollout

    def as_log_fields(self) -> dict[str, object]:
        r = self.rollout
        fields: dict[str, object] = {
            "namespace": r.namespace,
            "workload_kind": r.workload_kind,
            "workload": r.workload,
            "from_revision": r.from_revision,
            "to_revision": r.to_revision,
            "state": r.state.value,
            "ready_new": r.ready_new,
            "ready_old": r.ready_old,
            "old": r.old,
            "total": r.total,
        }
        if r.services:
            fields["services"] = list(r.services)
        if r.started_at is not None:
            fields["started_at"] = iso(r.started_at)
        if r.superseded:
            fields["superseded"] = list(r.superseded)
        if r.finished_at is not None:
            fields["finished_at"] = iso(r.finished_at)
        if r.duration_seconds is not None:
            fields["duration_seconds"] = round(r.duration_seconds, 3)
        if r.stuck_since is not None and r.state is RolloutState.STUCK:
            fields["stuck_since"] = iso(r.stuck_since)
        if r.rolled_back:
            fields["rolled_back"] = True
        return fields


def _no_local_pods(uid: str) -> PodSnapshot | None:
    return None


def _arrival(m: Member) -> tuple[float, str]:
    """Latest arrival first, those of the starting state last; then by revision, so that
    a tie is decided the same way every time."""
    return (-math.inf if m.since is None else m.since, m.revision)


class RolloutTracker:
    """Rollouts of the workloads behind the Services this agent reports.

    Decisions where the contract is silent (docs/lifecycle.md, *Rollouts*):

    - A rollout starts when an endpoint of a revision other than the workload's known one
      arrives, or a pod of one arrives on this node, at that event's time. The known
      revision is the one the workload's endpoints all ran when this agent first saw them,
      or the one its last rollout finished on.
    - The first view of a Service is its starting state: nothing starts then. A workload
      found with endpoints of two revisions is a rollout in progress whose start is unknown
      (no duration); its target is the revision of its next arrival, or the one left.
    - It finishes when no endpoint of another revision is left, terminating ones included,
      none is terminating, and every endpoint is on the new revision and ready, at the time
      of the change that made it so. A terminating endpoint holds it: a StatefulSet
      replaces a pod only once the old one is gone, and a Deployment with maxUnavailable
      removes an old pod before its replacement has an endpoint. The finish is confirmed
      once that state has held for `settle` seconds (a replacement arriving meanwhile
      breaks it), and reported then with the time it began.
    - Its target is the present revision whose endpoints arrived last: a newer revision
      that arrives before it finished takes over (kube's own semantics: the newest one
      continues), and so does the old one coming back (a rollback, which finishes with
      `rolled_back`). The start stays the first one's.
    - Progress is an endpoint of the new revision becoming ready beyond the most so far, or
      the endpoints of other revisions going below the fewest so far. Without progress for
      `stuck_after` seconds it is stuck, until progress resumes or it finishes.
    - A workload that leaves every Service reported here ends its rollout as abandoned; its
      known revision is kept `forget_after` seconds (a Recreate rollout removes every old
      pod before the first new one arrives).
    """

    def __init__(
        self,
        *,
        stuck_after: float = 600.0,
        settle: float = 30.0,
        keep: float = 300.0,
        max_recent: int = 50,
        forget_after: float = 600.0,
    ) -> None:
        if stuck_after <= 0 or settle < 0:
            raise ValueError("stuck_after must be positive and settle not negative")
        self.stuck_after = stuck_after
        self.settle = settle
        self.keep = keep
        self.forget_after = forget_after
        self._views: dict[ServiceRef, Mapping[str, Endpoint]] = {}
        self._members: dict[ServiceRef, dict[WorkloadKey, dict[str, Member]]] = {}
        self._services: dict[WorkloadKey, set[ServiceRef]] = {}
        self._revision: dict[WorkloadKey, str] = {}
        # StatefulSets and DaemonSets with a pod seen on this node, by (namespace, name).
        self._named: dict[tuple[str, str], WorkloadKey] = {}
        # Workloads without endpoints, and when they are forgotten (in that order).
        self._empty: OrderedDict[WorkloadKey, float] = OrderedDict()
        self._active: dict[WorkloadKey, Rollout] = {}
        self._ended: deque[Rollout] = deque(maxlen=max_recent)

    # -- reading ---------------------------------------------------------------------------

    def active(self) -> list[Rollout]:
        return list(self._active.values())

    def ended(self) -> list[Rollout]:
        """The rollouts that ended lately, the most recent last."""
        return list(self._ended)

    def revision_of(self, workload: WorkloadKey) -> str | None:
        return self._revision.get(workload)

    def gauges(self, now: float) -> dict[WorkloadKey, tuple[int, int]]:
        """(in progress, stuck) of every workload with a rollout in progress, or one that
        ended less than `keep` seconds ago (its series go then)."""
        out: dict[WorkloadKey, tuple[int, int]] = {}
        for rollout in self._ended:
            if rollout.finished_at is not None and now - rollout.finished_at < self.keep:
                out[rollout.key] = (0, 0)
        for key, rollout in self._active.items():
            out[key] = (1, 1 if rollout.state is RolloutState.STUCK else 0)
        return out

    def as_json(self) -> list[dict[str, Any]]:
        """Rollouts in progress (oldest first), then those that ended (latest first)."""
        active = sorted(
            self._active.values(), key=lambda r: (r.started_at or r.tracked_from, r.key)
        )
        return [r.as_json() for r in active] + [r.as_json() for r in reversed(self._ended)]

    # -- inputs ----------------------------------------------------------------------------

    def observe(
        self,
        service: ServiceRef,
        endpoints: Mapping[str, Endpoint],
        now: float,
        local: LocalPods = _no_local_pods,
    ) -> list[RolloutChange]:
        """The Service's endpoints now (by identity, as `EndpointTracker.view` gives them);
        `local` finds a pod of this node by uid. A view already seen changes nothing."""
        if self._views.get(service) is endpoints:
            return []
        baseline = service not in self._views
        self._views[service] = endpoints
        before = self._members.pop(service, {})
        previous = {
            identity: (workload, m)
            for workload, members in before.items()
            for identity, m in members.items()
        }
        after: dict[WorkloadKey, dict[str, Member]] = {}
        # The pods of this node first: they make the StatefulSets and DaemonSets whose pods
        # elsewhere are then known by name.
        here: list[tuple[str, Endpoint, PodSnapshot]] = []
        elsewhere: list[tuple[str, Endpoint, None]] = []
        for identity, endpoint in endpoints.items():
            pod = local(endpoint.pod_uid) if endpoint.pod_uid else None
            if pod is None:
                elsewhere.append((identity, endpoint, None))
            else:
                here.append((identity, endpoint, pod))
        for identity, endpoint, pod in (*here, *elsewhere):
            uid = endpoint.pod_uid or identity
            held = previous.get(identity)
            found: tuple[WorkloadKey, str] | None
            if held is not None and held[1].uid == uid:
                member = held[1]
                since = member.since
                # The same pod elsewhere: its name says what it said (classified once).
                found = held[0], member.revision
                if pod is not None:
                    found = self._classify(service.namespace, endpoint, pod)
            else:
                member = None
                since = None if baseline else now
                found = self._classify(service.namespace, endpoint, pod)
            if found is None:
                continue
            workload, revision = found
            if (
                member is None
                or member.revision != revision
                or member.ready != endpoint.ready
                or member.terminating != endpoint.terminating
            ):
                member = Member(uid, revision, endpoint.ready, endpoint.terminating, since)
            after.setdefault(workload, {})[identity] = member
        if after:
            self._members[service] = after
        changes: list[RolloutChange] = []
        for workload in sorted(before.keys() | after.keys()):
            services = self._services.setdefault(workload, set())
            if workload in after:
                services.add(service)
            else:
                services.discard(service)
                if not services:
                    del self._services[workload]
            changes += self._evaluate(workload, now, baseline=baseline)
        return changes

    def on_pod_event(self, event: LifecycleEvent) -> list[RolloutChange]:
        """A pod arrived on this node: one of a new revision of a workload behind a reported
        Service starts its rollout, before its endpoint is there."""
        if event.kind not in (PodEventKind.SCHEDULED, PodEventKind.ROLLOUT) or not event.revision:
            return []
        workload = (event.namespace, event.workload.kind, event.workload.name)
        if workload not in self._services:
            return []
        rollout = self._active.get(workload)
        if rollout is not None:
            rollout.done_since = None  # not finished: this pod's endpoint is to come
            return []
        known = self._revision.get(workload, "")
        if not known or known == event.revision:
            return []
        rollout = self._start(workload, known, event.revision, event.at)
        return [self._change(RolloutChangeKind.STARTED, rollout, event.at)]

    def forget_service(self, service: ServiceRef, now: float) -> list[RolloutChange]:
        """This agent no longer reports the Service: its endpoints go, silently. A workload
        behind no other reported Service is forgotten, its rollout with it (this agent does
        not follow it any more; the agents that report the Service do)."""
        self._views.pop(service, None)
        changes: list[RolloutChange] = []
        for workload in sorted(self._members.pop(service, {})):
            services = self._services.get(workload)
            if services is not None:
                services.discard(service)
                if services:
                    changes += self._evaluate(workload, now, baseline=False)
                    continue
                del self._services[workload]
            self._active.pop(workload, None)
            self._forget(workload)
        return changes

    def tick(self, now: float) -> list[RolloutChange]:
        """Finishes confirmed after `settle`, rollouts without progress for `stuck_after`
        stuck, workloads without endpoints for `forget_after` forgotten. O(rollouts in
        progress)."""
        changes: list[RolloutChange] = []
        for rollout in list(self._active.values()):
            if rollout.done_since is not None:
                if now - rollout.done_since >= self.settle:
                    changes.append(self._finish(rollout, now))
                continue
            due = rollout.last_progress + self.stuck_after
            if rollout.state is RolloutState.PROGRESSING and now >= due:
                rollout.state = RolloutState.STUCK
                rollout.stuck_since = due
                changes.append(self._change(RolloutChangeKind.STUCK, rollout, now))
        while self._empty:
            workload, due = next(iter(self._empty.items()))
            if due > now:
                break
            del self._empty[workload]
            self._forget(workload)
        return changes

    # -- the rules -------------------------------------------------------------------------

    def _classify(
        self, namespace: str, endpoint: Endpoint, pod: PodSnapshot | None
    ) -> tuple[WorkloadKey, str] | None:
        """The workload and revision of an endpoint (`pod`: its pod, when on this node), or
        None when it is not a pod of a workload that rolls out (a bare pod, a Job, an
        address without a pod)."""
        if pod is not None and pod.namespace == namespace:
            kind, name = pod.workload.kind, pod.workload.name
            if kind not in ROLLING_KINDS:
                return None
            key = (namespace, kind, name)
            if kind in NAMED_KINDS:
                self._named[(namespace, name)] = key
            return key, pod.revision
        if not endpoint.pod:
            return None
        prefix, _, suffix = endpoint.pod.rpartition("-")
        named = self._named.get((namespace, prefix))
        if named is not None and _named_member(named[1], suffix):
            return named, ""
        deployment = deployment_of(endpoint.pod)
        if deployment is None:
            return None
        return (namespace, "Deployment", deployment[0]), deployment[1]

    def _gather(self, workload: WorkloadKey) -> list[Member]:
        """The workload's endpoints over every reported Service it backs."""
        members: dict[str, Member] = {}
        for service in self._services.get(workload, ()):
            members.update(self._members.get(service, {}).get(workload, {}))
        return list(members.values())

    def _evaluate(
        self, workload: WorkloadKey, now: float, *, baseline: bool
    ) -> list[RolloutChange]:
        members = self._gather(workload)
        if not members:
            return self._vacated(workload, now)
        self._empty.pop(workload, None)
        live = [m for m in members if not m.terminating]
        revisions = {m.revision for m in live if m.revision}
        rollout = self._active.get(workload)
        changes: list[RolloutChange] = []
        if rollout is None:
            known = self._revision.get(workload, "")
            if baseline or not known:
                # A starting state: the revision it runs, or a rollout already under way.
                if len(revisions) == 1:
                    self._revision[workload] = next(iter(revisions))
                if len(revisions) <= 1:
                    return []
                rollout = self._adopt(workload, now)
                changes.append(self._change(RolloutChangeKind.ADOPTED, rollout, now))
            else:
                others = [m for m in live if m.revision and m.revision != known]
                if not others:
                    return []
                newest = max(others, key=_arrival)
                rollout = self._start(workload, known, newest.revision, now)
                changes.append(self._change(RolloutChangeKind.STARTED, rollout, now))
        else:
            changes += self._retarget(rollout, live, now)
        rollout.services = tuple(sorted(str(s) for s in self._services.get(workload, ())))
        changes += self._progress(rollout, members, now)
        return changes

    def _start(self, workload: WorkloadKey, known: str, to: str, at: float) -> Rollout:
        members = self._gather(workload)
        # Endpoints without a revision re-created in a chain of re-creations leading up to
        # now (no gap as long as `stuck_after`) are the first of this rollout: a StatefulSet
        # replaces its pods one by one, elsewhere before here. The start goes back with them.
        recreated = sorted(
            {
                m.since
                for m in members
                if not m.revision and not m.terminating and m.since is not None and m.since <= at
            },
            reverse=True,
        )
        since = at
        for t in recreated:
            if since - t > self.stuck_after:
                break
            since = t
        rollout = Rollout(
            *workload,
            from_revision=known,
            to_revision=to,
            started_at=since,
            tracked_from=since,
            recreated_from=since,
            last_progress=at,
            services=tuple(sorted(str(s) for s in self._services.get(workload, ()))),
        )
        self._active[workload] = rollout
        self._count(rollout, members)
        rollout.best_ready_new, rollout.least_old = rollout.ready_new, rollout.old
        return rollout

    def _adopt(self, workload: WorkloadKey, now: float) -> Rollout:
        rollout = Rollout(
            *workload,
            from_revision="",
            to_revision="",
            started_at=None,
            tracked_from=now,
            recreated_from=now,
            last_progress=now,
        )
        self._active[workload] = rollout
        self._count(rollout, self._gather(workload))
        rollout.best_ready_new, rollout.least_old = rollout.ready_new, rollout.old
        return rollout

    def _retarget(self, rollout: Rollout, live: list[Member], now: float) -> list[RolloutChange]:
        """The target is the present revision whose endpoints arrived last (since this
        agent follows the rollout); without such arrivals it stays, or, for a rollout found
        in progress, becomes the only revision left."""
        arrived: dict[str, float] = {}
        present: set[str] = set()
        for m in live:
            if not m.revision:
                continue
            present.add(m.revision)
            if m.since is not None and m.since >= rollout.tracked_from:
                arrived[m.revision] = max(arrived.get(m.revision, -math.inf), m.since)
        if arrived:
            target = max(arrived, key=lambda revision: (arrived[revision], revision))
        elif not rollout.to_revision and len(present) == 1:
            target = next(iter(present))
        else:
            return []
        if target == rollout.to_revision:
            return []
        if not rollout.to_revision:  # found in progress: now it is known where it goes
            rollout.to_revision = target
            others = present - {target}
            rollout.from_revision = next(iter(others)) if len(others) == 1 else ""
            return []
        # Given up: the revisions it went towards before, but the one it came from.
        if rollout.to_revision != rollout.from_revision:
            rollout.superseded.append(rollout.to_revision)
        if target in rollout.superseded:
            rollout.superseded.remove(target)
        rollout.to_revision = target
        rollout.done_since = None
        self._count(rollout, self._gather(rollout.key))
        change = self._progressed(rollout, now)
        superseded = self._change(RolloutChangeKind.SUPERSEDED, rollout, now)
        return [superseded] if change is None else [change, superseded]

    def _new(self, rollout: Rollout, m: Member) -> bool:
        if m.revision:
            return m.revision == rollout.to_revision
        return m.since is not None and m.since >= rollout.recreated_from

    def _count(self, rollout: Rollout, members: Iterable[Member]) -> bool:
        """Update the rollout's counts; True when it is done: every endpoint new and ready,
        none of another revision left, none terminating."""
        ready_new = ready_old = old = total = terminating = 0
        all_ready = True
        for m in members:
            new = self._new(rollout, m)
            old += not new
            if m.terminating:
                terminating += 1
                continue
            total += 1
            if new:
                ready_new += m.ready
                all_ready = all_ready and m.ready
            else:
                ready_old += m.ready
        rollout.ready_new, rollout.ready_old = ready_new, ready_old
        rollout.old, rollout.total = old, total
        return bool(rollout.to_revision) and not old and not terminating and total > 0 and all_ready

    def _progressed(self, rollout: Rollout, now: float) -> RolloutChange | None:
        rollout.best_ready_new, rollout.least_old = rollout.ready_new, rollout.old
        rollout.last_progress = now
        if rollout.state is RolloutState.STUCK:
            rollout.state = RolloutState.PROGRESSING
            rollout.stuck_since = None
            return self._change(RolloutChangeKind.PROGRESSING, rollout, now)
        return None

    def _progress(self, rollout: Rollout, members: list[Member], now: float) -> list[RolloutChange]:
        changes: list[RolloutChange] = []
        done = self._count(rollout, members)
        if rollout.ready_new > rollout.best_ready_new or rollout.old < rollout.least_old:
            change = self._progressed(rollout, now)
            if change is not None:
                changes.append(change)
        if not done:
            rollout.done_since = None
        elif rollout.done_since is None:
            rollout.done_since = now
        if rollout.done_since is not None and now - rollout.done_since >= self.settle:
            changes.append(self._finish(rollout, now))
        return changes

    def _finish(self, rollout: Rollout, now: float) -> RolloutChange:
        assert rollout.done_since is not None
        self._end(rollout, RolloutState.FINISHED, rollout.done_since)
        self._revision[rollout.key] = rollout.to_revision
        return self._change(RolloutChangeKind.FINISHED, rollout, now)

    def _vacated(self, workload: WorkloadKey, now: float) -> list[RolloutChange]:
        self._empty[workload] = now + self.forget_after
        self._empty.move_to_end(workload)
        rollout = self._active.get(workload)
        if rollout is None:
            return []
        rollout.ready_new = rollout.ready_old = rollout.old = rollout.total = 0
        self._end(rollout, RolloutState.ABANDONED, now)
        return [self._change(RolloutChangeKind.ABANDONED, rollout, now)]

    def _end(self, rollout: Rollout, state: RolloutState, at: float) -> None:
        rollout.state = state
        rollout.finished_at = at
        rollout.stuck_since = None
        rollout.done_since = None
        del self._active[rollout.key]
        self._ended.append(rollout)

    def _forget(self, workload: WorkloadKey) -> None:
        self._revision.pop(workload, None)
        self._empty.pop(workload, None)
        named = (workload[0], workload[2])
        if self._named.get(named) == workload:
            del self._named[named]

    @staticmethod
    def _change(kind: RolloutChangeKind, rollout: Rollout, at: float) -> RolloutChange:
        return RolloutChange(kind, at, replace(rollout, superseded=list(rollout.superseded)))
