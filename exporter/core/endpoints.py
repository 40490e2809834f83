"""The cluster view of opted-in Services' endpoints, from EndpointSlices, as lifecycle events.

`EndpointTracker` keeps every EndpointSlice of the opted-in Services, merges the slices of
each Service, and reports the changes of its endpoints (docs/services.md, cluster view):
`added`, `ready`, `not_ready`, `terminating`, `removed`, `replaced` (the same pod identity
re-added, e.g. a StatefulSet pod recreated) and `moved` (re-added on another node: a
reschedule). Like the pod tracker it is pure, takes `now` with each call, keeps the first
list silent, and reports exactly the changes of a relist's gap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter.core.pods import MalformedObject
from exporter.core.services import ServiceRef

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: How long a Service's opt-in adopts new slices silently, and a slice removal that may be
#: the Service going (deleted or opted out) is held before it is reported.
DEFAULT_GRACE = 5.0


class EndpointEventKind(StrEnum):
    """Values of the `event` label of `tailwatch_endpoint_events_total` (contract)."""

    ADDED = "added"
    READY = "ready"
    NOT_READY = "not_ready"
    TERMINATING = "terminating"
    REMOVED = "removed"
    REPLACED = "replaced"
    MOVED = "moved"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address of a Service, as the EndpointSlice controller reports it."""

    identity: str  # "<namespace>/<pod>" for pod endpoints, else the address
    address: str
    pod: str  # "" when the endpoint has no Pod targetRef
    pod_uid: str
    node: str
    ready: bool
    serving: bool
    terminating: bool
    ports: tuple[tuple[str, int], ...] = ()  # (port name, port number) of its slice


@dataclass(frozen=True, slots=True)
class EndpointEvent:
    kind: EndpointEventKind
    at: float
    service: ServiceRef
    identity: str
    pod: str
    address: str
    node: str
    previous_node: str = ""  # for `moved`

    def as_log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "event": self.kind.value,
            "namespace": self.service.namespace,
            "service": self.service.name,
            "endpoint": self.identity,
            "address": self.address,
        }
        if self.node:
            fields["node"] = self.node
        if self.previous_node:
            fields["previous_node"] = self.previous_node
        return fields


@dataclass(frozen=True, slots=True)
class EndpointCounts:
    ready: int = 0
    serving: int = 0
    terminating: int = 0


@dataclass(frozen=True, slots=True)
class EndpointSliceSnapshot:
    uid: str
    service: ServiceRef
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class EndpointSyncResult:
    events: list[EndpointEvent] = field(default_factory=list)
    malformed: list[MalformedObject] = field(default_factory=list)


def _bool(conditions: Mapping[str, Any], key: str, default: bool) -> bool:
    value = conditions.get(key)
    return value if isinstance(value, bool) else default


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSliceSnapshot:
    """The endpoints of one EndpointSlice; raises `MalformedObject`."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise MalformedObject("missing_field", "endpointslice.metadata is missing")
    uid, namespace = meta.get("uid"), meta.get("namespace")
    if not isinstance(uid, str) or not uid or not isinstance(namespace, str) or not namespace:
        raise MalformedObject("missing_field", "endpointslice metadata.uid/namespace missing")
    labels = meta.get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, Mapping) else None
    if not isinstance(service, str) or not service:
        raise MalformedObject("missing_field", f"endpointslice has no {SERVICE_NAME_LABEL} label")
    ports: list[tuple[str, int]] = []
    for port in obj.get("ports") or []:
        if isinstance(port, Mapping) and isinstance(port.get("port"), int):
            ports.append((str(port.get("name") or ""), int(port["port"])))
    endpoints: list[Endpoint] = []
    if obj.get("addressType", "IPv4") in ("IPv4", "IPv6"):
        raw_endpoints = obj.get("endpoints") or []
        if not isinstance(raw_endpoints, list):
            raise MalformedObject("bad_field", "endpointslice.endpoints is not a list")
        for raw in raw_endpoints:
            if not isinstance(raw, Mapping):
                raise MalformedObject("bad_field", "endpointslice.endpoints[] is not an object")
            addresses = raw.get("addresses")
            if (
                not isinstance(addresses, list)
                or not addresses
                or not isinstance(addresses[0], str)
            ):
                raise MalformedObject("missing_field", "an endpoint has no addresses")
            conditions = raw.get("conditions") or {}
            if not isinstance(conditions, Mapping):
                raise MalformedObject("bad_field", "endpoint conditions is not an object")
            # API semantics: ready nil = true, serving nil = ready, terminating nil = false.
            ready = _bool(conditions, "ready", True)
            ref = raw.get("targetRef") or {}
            pod = ""
            pod_uid = ""
            pod_ns = namespace
            if isinstance(ref, Mapping) and ref.get("kind") == "Pod":
                pod = str(ref.get("name") or "")
                pod_uid = str(ref.get("uid") or "")
                pod_ns = str(ref.get("namespace") or namespace)
            address = addresses[0]
            endpoints.append(
                Endpoint(
                    identity=f"{pod_ns}/{pod}" if pod else address,
                    address=address,
                    pod=pod,
                    pod_uid=pod_uid,
                    node=str(raw.get("nodeName") or ""),
                    ready=ready,
                    serving=_bool(conditions, "serving", ready),
                    terminating=_bool(conditions, "terminating", False),
                    ports=tuple(ports),
                )
            )
    return EndpointSliceSnapshot(uid, ServiceRef(namespace, service), tuple(endpoints))


def _slice_uid(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    return uid if isinstance(uid, str) and uid else None


class EndpointTracker:
    """All endpoints of the opted-in Services, diffed per Service on every change.

    Every change costs O(the Service it touches): slices are indexed by Service, and each
    Service's merged view, counts and addresses are kept and recomputed only when one of
    its slices changes (docs/scale.md).

    `recent_window` seconds: how long a removed endpoint is remembered so that the same
    pod identity coming back is reported as `replaced` (same node) or `moved` (another
    node) instead of `added`. At most `max_recent` removed endpoints are remembered.

    With `opted_in_only`, only the Services marked with `opt_in` are reported (events and
    counts); the slices of other Services are kept silently, since a slice can arrive
    before its Service. Opting in and out is silent both ways (docs/services.md):
    - a Service opted in adopts its endpoints as its starting state, and so do slices that
      first appear within `grace` seconds after that (the EndpointSlice controller copies
      the label to them after the Service);
    - a Service opted out or deleted takes its state with it. Its slices may go before it
      does, so a deleted slice that would remove endpoints of an opted-in Service is held
      for `grace` seconds (`flush`): dropped silently if the Service goes meanwhile, else
      reported `removed` with the time the slice went.
    """

    def __init__(
        self,
        *,
        recent_window: float = 600.0,
        max_recent: int = 4096,
        opted_in_only: bool = False,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self._slices: dict[str, EndpointSliceSnapshot] = {}
        self._by_service: dict[ServiceRef, dict[str, EndpointSliceSnapshot]] = {}
        self._views: dict[ServiceRef, dict[str, Endpoint]] = {}
        self._counts: dict[ServiceRef, EndpointCounts] = {}
        self._addresses: dict[str, set[ServiceRef]] = {}  # the Services of each address
        self._recent: OrderedDict[tuple[ServiceRef, str], tuple[float, Endpoint]] = OrderedDict()
        self._recent_window = recent_window
        self._max_recent = max_recent
        self._opted_in_only = opted_in_only
        self._adopt_until: dict[ServiceRef, float] = {}  # the opted-in Services
        self._held: dict[str, tuple[float, EndpointSliceSnapshot]] = {}  # uid: (went at, slice)
        self.grace = grace
        self._synced = False
        self._touched: set[ServiceRef] = set()

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def held(self) -> int:
        """Slice removals waiting for their grace to pass."""
        return len(self._held)

    # -- which Services are reported ---------------------------------------------------

    def _reported(self, service: ServiceRef) -> bool:
        return not self._opted_in_only or service in self._adopt_until

    def opt_in(self, service: ServiceRef, now: float, *, adopt: bool = True) -> None:
        """Report `service` from now on; its endpoints now are its starting state. With
        `adopt` (a Service that existed before it was opted in), so are the slices that
        first appear within the grace; else (a new Service) their endpoints are `added`."""
        if service not in self._adopt_until:
            self._adopt_until[service] = now + self.grace if adopt else now
            self._touched.add(service)

    def opt_out(self, service: ServiceRef) -> None:
        """Stop reporting `service` (deleted, or its label removed), silently."""
        if self._adopt_until.pop(service, None) is None:
            return
        for uid in [u for u, (_, s) in self._held.items() if s.service == service]:
            del self._held[uid]
            self._unstore(uid)
        self._merge(service)
        self._touched.add(service)

    def take_touched(self) -> set[ServiceRef]:
        """The Services whose view or reporting changed since the last call."""
        touched, self._touched = self._touched, set()
        return touched

    # -- views ---------------------------------------------------------------------------

    def view(self, service: ServiceRef) -> dict[str, Endpoint]:
        """The Service's endpoints by identity, merged over its slices."""
        return self._views.get(service, {})

    def services(self) -> set[ServiceRef]:
        return {s for s in self._views if self._reported(s)}

    def counts(self) -> dict[ServiceRef, EndpointCounts]:
        """Ready, serving and terminating endpoints of each reported Service (an opted-in
        Service without slices has none of each)."""
        if not self._opted_in_only:
            return dict(self._counts)
        return {s: self._counts.get(s, EndpointCounts()) for s in self._adopt_until}

    def counts_of(self, service: ServiceRef) -> EndpointCounts | None:
        if not self._reported(service):
            return None
        return self._counts.get(service, EndpointCounts())

    def service_of_address(self, address: str) -> ServiceRef | None:
        services = self._addresses.get(address, ())
        return min((s for s in services if self._reported(s)), key=str, default=None)

    # -- storage (views are recomputed by `_merge`) ------------------------------------------

    def _store(self, snapshot: EndpointSliceSnapshot) -> None:
        if snapshot.uid in self._slices:
            self._unstore(snapshot.uid)
        self._slices[snapshot.uid] = snapshot
        self._by_service.setdefault(snapshot.service, {})[snapshot.uid] = snapshot

    def _unstore(self, uid: str) -> None:
        old = self._slices.pop(uid)
        slices = self._by_service[old.service]
        del slices[uid]
        if not slices:
            del self._by_service[old.service]

    def _merge(self, service: ServiceRef) -> None:
        """Recompute the Service's view, counts and addresses from its slices."""
        # Endpoints of one Service may share an address (hostNetwork pods on one node).
        for address in {e.address for e in self._views.pop(service, {}).values()}:
            refs = self._addresses[address]
            refs.discard(service)
            if not refs:
                del self._addresses[address]
        self._counts.pop(service, None)
        slices = self._by_service.get(service)
        if slices is None:
            return
        merged: dict[str, Endpoint] = {}
        for snapshot in slices.values():
            for endpoint in snapshot.endpoints:
                # The same pod in two slices (a slice being repacked): prefer ready.
                held = merged.get(endpoint.identity)
                if held is None or (endpoint.ready and not held.ready):
                    merged[endpoint.identity] = endpoint
        self._views[service] = merged
        for endpoint in merged.values():
            self._addresses.setdefault(endpoint.address, set()).add(service)
        values = merged.values()
        self._counts[service] = EndpointCounts(
            ready=sum(e.ready for e in values),
            serving=sum(e.serving for e in values),
            terminating=sum(e.terminating for e in values),
        )

    # -- changes ---------------------------------------------------------------------------

    def _commit(
        self, services: set[ServiceRef], now: float, quiet: set[ServiceRef]
    ) -> list[EndpointEvent]:
        """Merge the stored changes of `services` and report them, but for those in `quiet`.
        Until merged, `_views` still holds each Service's state before the change."""
        events: list[EndpointEvent] = []
        for service in sorted(services, key=str):
            before = self._views.get(service, {})
            self._merge(service)
            self._touched.add(service)
            if self._synced and service not in quiet and self._reported(service):
                events.extend(self._diff(service, before, now))
        return events

    def _adopting(self, snapshot: EndpointSliceSnapshot, now: float) -> bool:
        """A slice new to its Service within the grace after the Service was opted in."""
        until = self._adopt_until.get(snapshot.service)
        old = self._slices.get(snapshot.uid)
        new = old is None or old.service != snapshot.service
        return new and until is not None and now < until

    def _would_remove(self, uid: str) -> bool:
        """Would deleting this slice remove an endpoint of a reported Service?"""
        snapshot = self._slices[uid]
        if not self._synced or not self._reported(snapshot.service):
            return False
        others = {
            e.identity
            for other, s in self._by_service[snapshot.service].items()
            if other != uid
            for e in s.endpoints
        }
        return any(e.identity not in others for e in snapshot.endpoints)

    def _put(self, snapshot: EndpointSliceSnapshot, now: float, changed: set[ServiceRef],
             quiet: set[ServiceRef]) -> None:  # fmt: skip
        self._held.pop(snapshot.uid, None)  # deleted and back: it left the selector and returned
        changed.add(snapshot.service)
        old = self._slices.get(snapshot.uid)
        if old is not None:
            changed.add(old.service)
        if self._adopting(snapshot, now):
            quiet.add(snapshot.service)
        self._store(snapshot)

    def _remove(self, uid: str, now: float, changed: set[ServiceRef]) -> None:
        if uid not in self._slices or uid in self._held:
            return
        if self._would_remove(uid):
            self._held[uid] = (now, self._slices[uid])  # `flush` reports it later
            return
        changed.add(self._slices[uid].service)
        self._unstore(uid)

    def sync(self, objects: Iterable[Mapping[str, Any]], now: float) -> EndpointSyncResult:
        """A full list: silent the first time, else the changes of the gap."""
        result = EndpointSyncResult()
        fresh: dict[str, EndpointSliceSnapshot] = {}
        for obj in objects:
            try:
                snapshot = parse_endpoint_slice(obj)
            except MalformedObject as exc:
                result.malformed.append(exc)
                uid = _slice_uid(obj)
                if uid is not None and uid in self._slices:
                    fresh[uid] = self._slices[uid]  # unreadable now: keep what we knew
                continue
            fresh[snapshot.uid] = snapshot
        changed: set[ServiceRef] = set()
        quiet: set[ServiceRef] = set()
        for uid, snapshot in fresh.items():
            if uid in self._held or self._slices.get(uid) != snapshot:  # held: it came back
                self._put(snapshot, now, changed, quiet)
        for uid in [u for u in self._slices if u not in fresh]:
            self._remove(uid, now, changed)
        result.events.extend(self._commit(changed, now, quiet))
        self._synced = True
        return result

    def apply(self, event_type: str, obj: Mapping[str, Any], now: float) -> list[EndpointEvent]:
        """One watch event (ADDED, MODIFIED, DELETED); raises `MalformedObject`."""
        changed: set[ServiceRef] = set()
        quiet: set[ServiceRef] = set()
        if event_type == "DELETED":
            uid = _slice_uid(obj)
            if uid is None:
                raise MalformedObject("missing_field", "endpointslice metadata.uid missing")
            self._remove(uid, now, changed)
        elif event_type in ("ADDED", "MODIFIED"):
            self._put(parse_endpoint_slice(obj), now, changed, quiet)
        else:
            raise MalformedObject("bad_event_type", f"unknown watch event type {event_type!r}")
        return self.flush(now) + self._commit(changed, now, quiet)

    def flush(self, now: float) -> list[EndpointEvent]:
        """Report the held slice removals whose grace has passed, at the time each went."""
        events: list[EndpointEvent] = []
        for uid, (went, snapshot) in list(self._held.items()):
            if now - went >= self.grace:
                del self._held[uid]
                self._unstore(uid)
                events.extend(self._commit({snapshot.service}, went, set()))
        return events

    def _remember_removed(self, service: ServiceRef, endpoint: Endpoint, now: float) -> None:
        key = (service, endpoint.identity)
        self._recent[key] = (now, endpoint)
        self._recent.move_to_end(key)
        while len(self._recent) > self._max_recent:
            self._recent.popitem(last=False)

    def _returning(self, service: ServiceRef, identity: str, now: float) -> Endpoint | None:
        held = self._recent.pop((service, identity), None)
        if held is None or now - held[0] > self._recent_window:
            return None
        return held[1]

    def _diff(
        self, service: ServiceRef, before: Mapping[str, Endpoint], now: float
    ) -> list[EndpointEvent]:
        after = self.view(service)
        events: list[EndpointEvent] = []

        def event(kind: EndpointEventKind, e: Endpoint, previous_node: str = "") -> None:
            events.append(
                EndpointEvent(
                    kind, now, service, e.identity, e.pod, e.address, e.node, previous_node
                )
            )

        for identity, gone in before.items():
            if identity not in after:
                event(EndpointEventKind.REMOVED, gone)
                self._remember_removed(service, gone, now)
        for identity, new in after.items():
            old = before.get(identity)
            if old is not None and old.pod_uid and new.pod_uid and old.pod_uid != new.pod_uid:
                # The pod was recreated under the same name within one update.
                self._remember_removed(service, old, now)
                old = None
            if old is None:
                previous = self._returning(service, identity, now)
                if previous is None:
                    event(EndpointEventKind.ADDED, new)
                elif previous.node and new.node and previous.node != new.node:
                    event(EndpointEventKind.MOVED, new, previous_node=previous.node)
                else:
                    event(EndpointEventKind.REPLACED, new)
                if new.ready:
                    event(EndpointEventKind.READY, new)
                if new.terminating:
                    event(EndpointEventKind.TERMINATING, new)
                continue
            if new.terminating and not old.terminating:
                event(EndpointEventKind.TERMINATING, new)
            if new.ready and not old.ready:
                event(EndpointEventKind.READY, new)
            elif old.ready and not new.ready and not new.terminating:
                event(EndpointEventKind.NOT_READY, new)
        return events
