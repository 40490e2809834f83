"""The opted-in Services this agent knows, their endpoints, and what it should probe.

`ServiceCatalog` joins the Service watch (specs, or the reason a Service is skipped) with
the EndpointSlice tracker, and answers the two questions the latency sources ask: which
targets does this node probe (`targets`), and which Service does a client's
`server.address` name (`resolve`). Pure: no I/O, time passed in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.core.endpoints import DEFAULT_GRACE, Endpoint, EndpointTracker
from exporter.core.pods import MalformedObject, parse_time
from exporter.core.services import (
    ServiceRef,
    ServiceSkipped,
    ServiceSpec,
    is_opted_in,
    parse_service,
    service_ref,
)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """One thing to probe: the Service address (`target="service"`) or one endpoint of it
    whose pod runs on this node (`target="endpoint"`)."""

    service: ServiceRef
    target: str  # "service" | "endpoint"
    pod: str  # "" for the service target
    address: str
    port: int
    protocol: str
    path: str
    interval: float
    slo: float | None


def _endpoint_port(spec: ServiceSpec, endpoint: Endpoint) -> int | None:
    """The port to probe on an endpoint: the slice port named like the Service port, or the
    numeric targetPort."""
    by_name = dict(endpoint.ports)
    if spec.port.name and spec.port.name in by_name:
        return by_name[spec.port.name]
    if isinstance(spec.port.target_port, int):
        return spec.port.target_port
    if isinstance(spec.port.target_port, str) and spec.port.target_port.isdigit():
        return int(spec.port.target_port)
    if len(endpoint.ports) == 1:
        return endpoint.ports[0][1]
    return None


def split_service_name(address: str, cluster_domain: str = "cluster.local") -> ServiceRef | None:
    """`name.namespace[.svc[.<cluster domain>]]` as a Service reference, else None."""
    host = address.strip().rstrip(".").lower()
    for suffix in (f".svc.{cluster_domain}", ".svc"):
        if host.endswith(suffix):
            host = host[: -len(suffix)]
            break
    parts = host.split(".")
    if len(parts) != 2 or not all(parts):
        return None
    return ServiceRef(namespace=parts[1], name=parts[0])


class ServiceCatalog:
    """Opted-in Services (valid and skipped) and their endpoints.

    Each change costs O(the Service it touches); `take_changed` tells the caller which
    Services changed since it last asked, so that it updates only those (docs/scale.md).
    """

    def __init__(
        self, node: str, cluster_domain: str = "cluster.local", *, grace: float = DEFAULT_GRACE
    ) -> None:
        self.node = node
        self.cluster_domain = cluster_domain
        self.specs: dict[ServiceRef, ServiceSpec] = {}
        self.skipped: dict[ServiceRef, str] = {}
        self.endpoints = EndpointTracker(opted_in_only=True, grace=grace)
        self._by_ip: dict[str, ServiceRef] = {}
        self._changed: set[ServiceRef] = set()
        self._services_synced = False

    @property
    def synced(self) -> bool:
        return self._services_synced and self.endpoints.synced

    def opted_in(self, ref: ServiceRef) -> bool:
        return ref in self.specs or ref in self.skipped

    def take_changed(self) -> set[ServiceRef]:
        """The Services whose spec, opt-in or endpoints changed since the last call."""
        changed = self._changed | self.endpoints.take_touched()
        self._changed = set()
        return changed

    # -- the Service watch -------------------------------------------------------------

    def _forget(self, ref: ServiceRef) -> None:
        spec = self.specs.pop(ref, None)
        if spec is not None and spec.cluster_ip and self._by_ip.get(spec.cluster_ip) == ref:
            del self._by_ip[spec.cluster_ip]
        self.skipped.pop(ref, None)

    def _remove(self, ref: ServiceRef) -> None:
        """The Service was deleted or opted out: it goes with its endpoints, silently."""
        if self.opted_in(ref):
            self._forget(ref)
            self.endpoints.opt_out(ref)
            self._changed.add(ref)

    def _adopts(self, obj: Mapping[str, Any], now: float) -> bool:
        """Is this a Service that existed before it was opted in (its endpoints are then not
        new), rather than one just created? Before the first list, every one is."""
        if not self._services_synced:
            return True
        meta = obj.get("metadata")
        created = parse_time(meta.get("creationTimestamp")) if isinstance(meta, Mapping) else None
        return created is None or created < now - self.endpoints.grace

    @staticmethod
    def _ref(obj: Mapping[str, Any]) -> ServiceRef:
        ref = service_ref(obj)
        if ref is None:
            raise MalformedObject("missing_field", "service metadata.name/namespace missing")
        return ref

    def _put(self, obj: Mapping[str, Any], now: float) -> ServiceRef:
        ref = self._ref(obj)
        if not is_opted_in(obj):
            self._remove(ref)  # the label was removed: not ours any more
            return ref
        was = self.opted_in(ref)
        before = (self.specs.get(ref), self.skipped.get(ref))
        self._forget(ref)
        try:
            spec = parse_service(obj)
        except ServiceSkipped as exc:
            self.skipped[ref] = str(exc)
        else:
            self.specs[ref] = spec
            if spec.cluster_ip:
                self._by_ip[spec.cluster_ip] = ref
        if not was:
            self.endpoints.opt_in(ref, now, adopt=self._adopts(obj, now))
        if (self.specs.get(ref), self.skipped.get(ref)) != before:
            self._changed.add(ref)
        return ref

    def sync_services(
        self, objects: Iterable[Mapping[str, Any]], now: float
    ) -> list[MalformedObject]:
        """A full list of the opted-in Services: those missing from it are gone."""
        malformed: list[MalformedObject] = []
        seen: set[ServiceRef] = set()
        for obj in objects:
            try:
                seen.add(self._put(obj, now))
            except MalformedObject as exc:  # no name: nothing known of it to keep
                malformed.append(exc)
        for ref in [r for r in (*self.specs, *self.skipped) if r not in seen]:
            self._remove(ref)
        self._services_synced = True
        return malformed

    def apply_service(self, event_type: str, obj: Mapping[str, Any], now: float) -> None:
        """One Service watch event; raises `MalformedObject`."""
        if event_type == "DELETED":
            self._remove(self._ref(obj))
            return
        self._put(obj, now)

    # -- questions -------------------------------------------------------------------

    def targets(self) -> list[TargetSpec]:
        """What this node probes: every Service's address, and its endpoints on this node."""
        return [t for ref in sorted(self.specs, key=str) for t in self.targets_of(ref)]

    def targets_of(self, ref: ServiceRef, *, address: bool = True) -> list[TargetSpec]:
        """What this node probes of one Service: its address (unless `address` is False: other
        agents probe it), and its endpoints on this node."""
        spec = self.specs.get(ref)
        if spec is None:
            return []
        out: list[TargetSpec] = []

        def target(kind: str, pod: str, ip: str, port: int) -> None:
            out.append(
                TargetSpec(
                    ref, kind, pod, ip, port, spec.protocol, spec.path, spec.interval, spec.slo
                )
            )

        if spec.cluster_ip and address:
            target("service", "", spec.cluster_ip, spec.port.port)
        for endpoint in sorted(self.local_endpoints(ref), key=lambda e: e.identity):
            port = _endpoint_port(spec, endpoint)
            if port is not None:
                target("endpoint", endpoint.pod or endpoint.address, endpoint.address, port)
        return out

    def local_endpoints(self, ref: ServiceRef) -> list[Endpoint]:
        """The Service's endpoints on this node."""
        return [e for e in self.endpoints.view(ref).values() if e.node == self.node]

    def resolve(self, address: str, port: int | None = None) -> ServiceRef | None:
        """The opted-in Service a client's `server.address` (and `server.port`) names: a DNS
        name (`name.namespace`, `.svc`, `.svc.<domain>`), a ClusterIP or an endpoint IP."""
        del port  # one Service per address is enough to map a stream; the port is not needed
        try:
            ip = str(ipaddress.ip_address(address.strip().strip("[]")))
        except ValueError:
            ref = split_service_name(address, self.cluster_domain)
            return ref if ref in self.specs else None
        ref = self._by_ip.get(ip) or self.endpoints.service_of_address(ip)
        return ref if ref in self.specs else None
