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

from exporter.core.endpoints import Endpoint, EndpointTracker
from exporter.core.pods import MalformedObject
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
    """Opted-in Services (valid and skipped) and their endpoints."""

    def __init__(self, node: str, cluster_domain: str = "cluster.local") -> None:
        self.node = node
        self.cluster_domain = cluster_domain
        self.specs: dict[ServiceRef, ServiceSpec] = {}
        self.skipped: dict[ServiceRef, str] = {}
        self.endpoints = EndpointTracker()
        self._services_synced = False

    @property
    def synced(self) -> bool:
        return self._services_synced and self.endpoints.synced

    # -- the Service watch -------------------------------------------------------------

    def _put(self, obj: Mapping[str, Any]) -> None:
        ref = service_ref(obj)
        if ref is None:
            raise MalformedObject("missing_field", "service metadata.name/namespace missing")
        self.specs.pop(ref, None)
        self.skipped.pop(ref, None)
        if not is_opted_in(obj):
            return  # the label was removed: not ours any more
        try:
            self.specs[ref] = parse_service(obj)
        except ServiceSkipped as exc:
            self.skipped[ref] = str(exc)

    def sync_services(self, objects: Iterable[Mapping[str, Any]]) -> list[MalformedObject]:
        malformed: list[MalformedObject] = []
        self.specs.clear()
        self.skipped.clear()
        for obj in objects:
            try:
                self._put(obj)
            except MalformedObject as exc:
                malformed.append(exc)
        self._services_synced = True
        return malformed

    def apply_service(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One Service watch event; raises `MalformedObject`."""
        if event_type == "DELETED":
            ref = service_ref(obj)
            if ref is None:
                raise MalformedObject("missing_field", "service metadata.name/namespace missing")
            self.specs.pop(ref, None)
            self.skipped.pop(ref, None)
            return
        self._put(obj)

    # -- questions -------------------------------------------------------------------

    def targets(self) -> list[TargetSpec]:
        """What this node probes: every Service's address, and its endpoints on this node."""
        out: list[TargetSpec] = []
        for ref in sorted(self.specs, key=str):
            spec = self.specs[ref]

            def target(kind: str, pod: str, address: str, port: int, s: ServiceSpec = spec) -> None:
                out.append(
                    TargetSpec(
                        s.ref, kind, pod, address, port, s.protocol, s.path, s.interval, s.slo
                    )
                )

            if spec.cluster_ip:
                target("service", "", spec.cluster_ip, spec.port.port)
            for endpoint in sorted(self.endpoints.view(ref).values(), key=lambda e: e.identity):
                if endpoint.node != self.node:
                    continue
                port = _endpoint_port(spec, endpoint)
                if port is not None:
                    target("endpoint", endpoint.pod or endpoint.address, endpoint.address, port)
        return out

    def resolve(self, address: str, port: int | None = None) -> ServiceRef | None:
        """The opted-in Service a client's `server.address` (and `server.port`) names: a DNS
        name (`name.namespace`, `.svc`, `.svc.<domain>`), a ClusterIP or an endpoint IP."""
        del port  # one Service per address is enough to map a stream; the port is not needed
        try:
            ip = str(ipaddress.ip_address(address.strip().strip("[]")))
        except ValueError:
            ref = split_service_name(address, self.cluster_domain)
            return ref if ref in self.specs else None
        for spec in self.specs.values():
            if spec.cluster_ip == ip:
                return spec.ref
        ref = self.endpoints.service_of_address(ip)
        return ref if ref in self.specs else None
