"""The simulator's object store: etcd plus the apiserver's registry rules, in process, no I/O.

One global resourceVersion orders every change across all resources, as etcd's revision does.
Every change is kept in a history log until `compact()` (or the optional `history_limit`)
forgets it, so a watch can resume from any version still in history and a paginated list
can read the state at its first page's version; older versions get 410 Expired.

The store is thread-safe (one lock), so a test thread may drive it while the server's event
loop serves watches. Stored objects are never mutated in place: every change stores a new
dict, so the history and open watches can share them; callers get deep copies.
"""

from __future__ import annotations

import bisect
import copy
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from exporter.simulator.resources import Object, ResourceType, object_key, resource_type
from exporter.simulator.status import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    invalid,
    not_found,
)

EventType = Literal["ADDED", "MODIFIED", "DELETED"]

DEFAULT_NAMESPACE = "default"
DEFAULT_POD_GRACE_SECONDS = 30
# generateName suffixes use the same alphabet as the real server (no vowels, no look-alikes).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _typed(rtype: ResourceType, body: Object) -> Object:
    """`body` with the resource's kind and apiVersion first, as the server serializes them."""
    rest = {k: v for k, v in body.items() if k not in ("kind", "apiVersion")}
    return {"kind": rtype.kind, "apiVersion": rtype.api_version, **rest}


@dataclass(frozen=True)
class HistoryEvent:
    """One change: `object` is the state after it (for DELETED: the last state, carrying the
    deletion's resourceVersion); `previous` the state before (None for ADDED)."""

    resource_version: int
    type: EventType
    resource: str
    object: Object
    previous: Object | None


# Aliases at module level: inside `Store`, `list` names its method.
Items = list[tuple[str, Object]]
Events = list[HistoryEvent]
Objects = list[Object]


class HistoryCompacted(Exception):
    """The requested resourceVersion is older than the history the store still holds."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"resourceVersion {requested} is compacted (history starts after {compacted})"
        )
        self.requested = requested
        self.compacted = compacted


class Subscription:
    """A watcher's queue of live events of one resource, filled in resourceVersion order.

    `wake` is called (with the store's lock held, possibly from another thread) after each
    event is queued; it must only schedule work, never block.
    """

    def __init__(self, store: Store, resource: str, wake: Callable[[], None]) -> None:
        self.resource = resource
        self._store = store
        self._wake = wake
        self._pending: deque[HistoryEvent] = deque()
        self.closed = False
        self.start_version = store.resource_version  # the watch starts after this version

    def _push(self, event: HistoryEvent) -> None:
        self._pending.append(event)
        self._wake()

    def take(self) -> list[HistoryEvent]:
        """Everything queued so far, oldest first."""
        with self._store._lock:
            events = list(self._pending)
            self._pending.clear()
        return events

    def close(self) -> None:
        self._store._unsubscribe(self)


class Store:
    """Objects by resource and key, a global resourceVersion, history, and watch subscribers."""

    def __init__(
        self, clock: Callable[[], float] = time.time, history_limit: int | None = None
    ) -> None:
        self._clock = clock
        self._history_limit = history_limit
        self._lock = threading.RLock()
        self._rv = 1  # as if one object predated the simulator: a list is never at version 0
        self._compacted = 0  # every event with a version above this is still in history
        self._objects: dict[str, dict[str, Object]] = {}
        self._history: list[HistoryEvent] = []
        self._subscriptions: list[Subscription] = []

    # ---- versions and history ------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion (of any resource)."""
        return self._rv

    @property
    def compacted_resource_version(self) -> int:
        """Versions below this are forgotten: watching or reading at them gets 410."""
        return self._compacted

    def compact(self, resource_version: int | None = None) -> int:
        """Forget history up to `resource_version` (default: now), like etcd compaction.

        Watches already open are unaffected (their events are queued); a new watch or a list
        continuation from an older version gets 410 Expired. Returns the compacted version.
        """
        with self._lock:
            target = self._rv if resource_version is None else min(resource_version, self._rv)
            if target > self._compacted:
                cut = bisect.bisect_right(self._history, target, key=lambda e: e.resource_version)
                del self._history[:cut]
                self._compacted = target
            return self._compacted

    def history(self, resource: str | None = None, since: int = 0) -> Events:
        """Events still in history with a version above `since`, oldest first."""
        with self._lock:
            return [
                e
                for e in self._history[self._history_index(since) :]
                if resource is None or e.resource == resource
            ]

    def _history_index(self, since: int) -> int:
        return bisect.bisect_right(self._history, since, key=lambda e: e.resource_version)

    def _record(self, event: HistoryEvent) -> None:
        self._history.append(event)
        if self._history_limit is not None and len(self._history) > self._history_limit:
            dropped = len(self._history) - self._history_limit
            self._compacted = self._history[dropped - 1].resource_version
            del self._history[:dropped]
        for sub in self._subscriptions:
            if sub.resource == event.resource:
                sub._push(event)

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    # ---- reads ---------------------------------------------------------------------------

    def _bucket(self, resource: str) -> dict[str, Object]:
        resource_type(resource)  # KeyError for a resource the simulator does not serve
        return self._objects.setdefault(resource, {})

    def _current(self, rtype: ResourceType, namespace: str, name: str) -> Object:
        obj = self._bucket(rtype.plural).get(object_key(rtype, namespace, name))
        if obj is None:
            raise not_found(rtype.plural, name, rtype.group)
        return obj

    def get(self, resource: str, namespace: str, name: str) -> Object:
        """A copy of one object; ApiError 404 if absent."""
        with self._lock:
            return copy.deepcopy(self._current(resource_type(resource), namespace, name))

    def list(self, resource: str, namespace: str | None = None) -> Objects:
        """Copies of the current objects (of one namespace, if given), in key order."""
        with self._lock:
            items, _ = self.snapshot(resource)
            return [
                copy.deepcopy(obj)
                for _, obj in items
                if namespace is None or obj["metadata"].get("namespace") == namespace
            ]

    def snapshot(self, resource: str, resource_version: int | None = None) -> tuple[Items, int]:
        """(key, object) pairs in key order at `resource_version` (default: now), and the version.

        Past states are rebuilt by undoing history newer than the version, so this works for
        any version not yet compacted (else `HistoryCompacted`). The objects are shared and
        must not be mutated.
        """
        with self._lock:
            state = dict(self._bucket(resource))
            at = self._rv if resource_version is None else min(resource_version, self._rv)
            if at < self._rv:
                if at < self._compacted:
                    raise HistoryCompacted(at, self._compacted)
                rtype = resource_type(resource)
                for event in reversed(self._history[self._history_index(at) :]):
                    if event.resource != resource:
                        continue
                    meta = event.object["metadata"]
                    key = object_key(rtype, meta.get("namespace", ""), meta["name"])
                    if event.previous is None:
                        state.pop(key, None)
                    else:
                        state[key] = event.previous
            return sorted(state.items()), at

    # ---- watches -------------------------------------------------------------------------

    def watch(
        self, resource: str, since: int | None, wake: Callable[[], None]
    ) -> tuple[Events, Subscription]:
        """Start a watch: the events to send first, and a subscription for the live ones.

        `since=None` starts with a synthetic ADDED for every current object (what the real
        server does for resourceVersion "" and "0"); otherwise every event of the resource with
        a version above `since` (`HistoryCompacted` if that part of history is gone). Taken
        under the lock, so no event is lost or sent twice between the two.
        """
        with self._lock:
            self._bucket(resource)
            if since is None:
                items, _ = self.snapshot(resource)
                initial = [
                    HistoryEvent(
                        int(obj["metadata"]["resourceVersion"]), "ADDED", resource, obj, None
                    )
                    for _, obj in items
                ]
            else:
                if since < self._compacted:
                    raise HistoryCompacted(since, self._compacted)
                initial = self.history(resource, since)
            sub = Subscription(self, resource, wake)
            if since is not None:
                sub.start_version = since
            self._subscriptions.append(sub)
            return initial, sub

    def bookmark_version(self, subscription: Subscription) -> int | None:
        """The version a BOOKMARK may announce to this watcher: the current one, but only if
        every event up to it has been taken (else None: send the queued events first)."""
        with self._lock:
            return None if subscription._pending else self._rv

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscription.closed = True
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    @property
    def watcher_count(self) -> int:
        with self._lock:
            return len(self._subscriptions)

    # ---- writes --------------------------------------------------------------------------

    def create(self, resource: str, obj: Mapping[str, Any]) -> Object:
        """Store a new object; the server fills uid, resourceVersion, creationTimestamp,
        generation, the namespace ("default") and a generateName suffix. Returns a copy."""
        rtype = resource_type(resource)
        body: Object = copy.deepcopy(dict(obj))
        kind = body.get("kind")
        if kind and kind != rtype.kind:
            raise bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
            )
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        with self._lock:
            bucket = self._bucket(resource)
            if rtype.namespaced:
                meta["namespace"] = meta.get("namespace") or DEFAULT_NAMESPACE
            else:
                meta.pop("namespace", None)
            namespace = meta.get("namespace", "")
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise invalid(
                        rtype.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    )
                while True:
                    name = prefix + "".join(random.choices(_NAME_ALPHABET, k=5))
                    if object_key(rtype, namespace, name) not in bucket:
                        break
                meta["name"] = name
            key = object_key(rtype, namespace, meta["name"])
            if key in bucket:
                raise already_exists(rtype.plural, meta["name"], rtype.group)
            rv = self._next_rv()
            for managed in ("deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(managed, None)
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = str(rv)
            meta["creationTimestamp"] = rfc3339(self._clock())
            meta["generation"] = 1
            stored = _typed(rtype, body)
            bucket[key] = stored
            self._record(HistoryEvent(rv, "ADDED", resource, stored, None))
            return copy.deepcopy(stored)

    def update(self, resource: str, obj: Mapping[str, Any]) -> Object:
        """Replace an object. A `metadata.resourceVersion` in `obj` that is not the current one
        is a 409 Conflict (optimistic concurrency); none means unconditional. Server-managed
        metadata is kept. A no-op update changes nothing and emits no event, as on the real
        server."""
        rtype = resource_type(resource)
        body: Object = copy.deepcopy(dict(obj))
        meta = body.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise invalid(rtype.kind, "", "metadata.name: Required value: name is required")
        namespace = (meta.get("namespace") or DEFAULT_NAMESPACE) if rtype.namespaced else ""
        with self._lock:
            current = self._current(rtype, namespace, meta["name"])
            requested = str(meta.get("resourceVersion") or "")
            if requested and requested != current["metadata"]["resourceVersion"]:
                raise conflict(rtype.plural, meta["name"], rtype.group)
            return self._replace(rtype, current, body)

    def patch(
        self, resource: str, namespace: str, name: str, fn: Callable[[Object], object]
    ) -> Object:
        """Change an object with `fn`, which mutates a deep copy in place (its return value
        is ignored). Setting metadata.resourceVersion in `fn` to a stale value is a 409, like
        a resourceVersion in a patch body."""
        rtype = resource_type(resource)
        with self._lock:
            current = self._current(rtype, namespace, name)
            work = copy.deepcopy(current)
            fn(work)
            meta = work.get("metadata")
            if not isinstance(meta, dict):
                raise invalid(rtype.kind, name, "metadata: Required value")
            if meta.get("name") != name or (
                rtype.namespaced and meta.get("namespace") != current["metadata"]["namespace"]
            ):
                raise invalid(rtype.kind, name, "metadata.name: Invalid value: field is immutable")
            requested = str(meta.get("resourceVersion") or "")
            if requested and requested != current["metadata"]["resourceVersion"]:
                raise conflict(rtype.plural, name, rtype.group)
            return self._replace(rtype, current, work)

    def _replace(self, rtype: ResourceType, current: Object, body: Object) -> Object:
        old_meta = current["metadata"]
        meta = body["metadata"]
        if rtype.namespaced:
            meta["namespace"] = old_meta["namespace"]
        for managed in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if managed in old_meta:
                meta[managed] = old_meta[managed]
            else:
                meta.pop(managed, None)
        generation = int(old_meta.get("generation", 1))
        if body.get("spec") != current.get("spec"):
            generation += 1  # spec changes bump generation; status and metadata do not
        meta["generation"] = generation
        body = _typed(rtype, body)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if body == current:
            return copy.deepcopy(current)
        rv = self._next_rv()
        meta["resourceVersion"] = str(rv)
        key = object_key(rtype, old_meta.get("namespace", ""), old_meta["name"])
        self._bucket(rtype.plural)[key] = body
        self._record(HistoryEvent(rv, "MODIFIED", rtype.plural, body, current))
        return copy.deepcopy(body)

    def delete(
        self,
        resource: str,
        namespace: str,
        name: str,
        grace_period_seconds: int | None = None,
        *,
        preconditions: Mapping[str, str] | None = None,
    ) -> Object:
        """Delete an object; returns its state after the call.

        Pods are deleted gracefully, as by the real registry: the first delete sets
        deletionTimestamp (now + grace) and deletionGracePeriodSeconds (grace: the argument,
        else spec.terminationGracePeriodSeconds, else 30) and emits MODIFIED; deleting a
        terminating pod again with a shorter grace shortens it; a second delete without a
        grace period (what the kubelet does once containers stopped), grace 0, or `remove()`
        removes it, emitting DELETED. Unscheduled and finished pods go at once, as do objects
        of other resources. `preconditions` may carry uid and resourceVersion.
        """
        rtype = resource_type(resource)
        with self._lock:
            current = self._current(rtype, namespace, name)
            meta = current["metadata"]
            for field, value in (preconditions or {}).items():
                have = str(meta.get(field, ""))
                if value and value != have:
                    label = "UID" if field == "uid" else "ResourceVersion"
                    raise conflict(
                        rtype.plural,
                        name,
                        rtype.group,
                        f"Precondition failed: {label} in precondition: {value}, "
                        f"{label} in object meta: {have}",
                    )
            if rtype.plural != "pods":
                return self._remove(rtype, current)
            grace = grace_period_seconds
            if grace is not None and grace < 0:
                grace = 1  # the real server turns a negative grace period into 1 s
            if meta.get("deletionTimestamp"):
                if grace is None or grace == 0:
                    return self._remove(rtype, current)
                if grace >= int(meta.get("deletionGracePeriodSeconds", 0)):
                    return copy.deepcopy(current)
            elif grace is None:
                grace = int(
                    (current.get("spec") or {}).get(
                        "terminationGracePeriodSeconds", DEFAULT_POD_GRACE_SECONDS
                    )
                )
            spec, status = current.get("spec") or {}, current.get("status") or {}
            if not spec.get("nodeName") or status.get("phase") in ("Failed", "Succeeded"):
                grace = 0  # no kubelet has to stop anything
            if grace == 0:
                return self._remove(rtype, current)
            terminating = {**current, "metadata": dict(meta)}
            terminating["metadata"]["deletionTimestamp"] = rfc3339(self._clock() + grace)
            terminating["metadata"]["deletionGracePeriodSeconds"] = grace
            terminating["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            rv = self._next_rv()
            terminating["metadata"]["resourceVersion"] = str(rv)
            self._bucket(rtype.plural)[object_key(rtype, namespace, name)] = terminating
            self._record(HistoryEvent(rv, "MODIFIED", resource, terminating, current))
            return copy.deepcopy(terminating)

    def remove(self, resource: str, namespace: str, name: str) -> Object:
        """Remove an object at once (no grace period); emits DELETED with its last state."""
        rtype = resource_type(resource)
        with self._lock:
            return self._remove(rtype, self._current(rtype, namespace, name))

    def _remove(self, rtype: ResourceType, current: Object) -> Object:
        meta = current["metadata"]
        rv = self._next_rv()
        gone = {**current, "metadata": {**meta, "resourceVersion": str(rv)}}
        del self._bucket(rtype.plural)[object_key(rtype, meta.get("namespace", ""), meta["name"])]
        self._record(HistoryEvent(rv, "DELETED", rtype.plural, gone, current))
        return copy.deepcopy(gone)


__all__ = [
    "ApiError",
    "EventType",
    "HistoryCompacted",
    "HistoryEvent",
    "Store",
    "Subscription",
]
