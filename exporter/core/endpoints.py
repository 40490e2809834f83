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

    `recent_window` seconds: how long a removed endpoint is remembered so that the same
    pod identity coming back is reported as `replaced` (same node) or `moved` (another
    node) instead of `added`. At most `max_recent` removed endpoints are remembered.
    """

    def __init__(self, *, recent_window: float = 600.0, max_recent: int = 4096) -> None:
        self._slices: dict[str, EndpointSliceSnapshot] = {}
        self._recent: OrderedDict[tuple[ServiceRef, str], tuple[float, Endpoint]] = OrderedDict()
        self._recent_window = recent_window
        self._max_recent = max_recent
        self._synced = False

    @property
    def synced(self) -> bool:
        return self._synced

    def view(self, service: ServiceRef) -> dict[str, Endpoint]:
        """The Service's endpoints by identity, merged over its slices."""
        merged: dict[str, Endpoint] = {}
        for snapshot in self._slices.values():
            if snapshot.service == service:
                for endpoint in snapshot.endpoints:
                    # The same pod in two slices (a slice being repacked): prefer ready.
                    held = merged.get(endpoint.identity)
                    if held is None or (endpoint.ready and not held.ready):
                        merged[endpoint.identity] = endpoint
        return merged

    def services(self) -> set[ServiceRef]:
        return {s.service for s in self._slices.values()}

    def counts(self) -> dict[ServiceRef, EndpointCounts]:
        out: dict[ServiceRef, EndpointCounts] = {}
        for service in self.services():
            endpoints = self.view(service).values()
            out[service] = EndpointCounts(
                ready=sum(e.ready for e in endpoints),
                serving=sum(e.serving for e in endpoints),
                terminating=sum(e.terminating for e in endpoints),
            )
        return out

    def service_of_address(self, address: str) -> ServiceRef | None:
        for snapshot in self._slices.values():
            if any(e.address == address for e in snapshot.endpoints):
                return snapshot.service
        return None

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
        if not self._synced:
            self._slices = fresh
            self._synced = True
            return result
        touched = {s.service for s in fresh.values()} | self.services()
        before = {service: self.view(service) for service in touched}
        self._slices = fresh
        for service in sorted(touched, key=str):
            result.events.extend(self._diff(service, before[service], now))
        return result

    def apply(self, event_type: str, obj: Mapping[str, Any], now: float) -> list[EndpointEvent]:
        """One watch event (ADDED, MODIFIED, DELETED); raises `MalformedObject`."""
        if event_type == "DELETED":
            uid = _slice_uid(obj)
            if uid is None:
                raise MalformedObject("missing_field", "endpointslice metadata.uid missing")
            gone = self._slices.get(uid)
            if gone is None:
                return []
            held = self.view(gone.service)
            del self._slices[uid]
            return self._diff(gone.service, held, now) if self._synced else []
        if event_type not in ("ADDED", "MODIFIED"):
            raise MalformedObject("bad_event_type", f"unknown watch event type {event_type!r}")
        snapshot = parse_endpoint_slice(obj)
        services = {snapshot.service}
        old = self._slices.get(snapshot.uid)
        if old is not None:
            services.add(old.service)
        views = {s: self.view(s) for s in services}
        self._slices[snapshot.uid] = snapshot
        if not self._synced:
            return []
        events: list[EndpointEvent] = []
        for service in sorted(services, key=str):
            events.extend(self._diff(service, views[service], now))
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
