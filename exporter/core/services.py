"""Opted-in Services: the `tailwatch.io/*` label and annotations (docs/services.md) as probe specs.

`parse_service` turns a Service body into a `ServiceSpec`, or raises `ServiceSkipped` with
the reason a user sees in /api/v1/targets when an annotation is wrong. A bad annotation
never stops the agent: that Service is skipped, every other one is probed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exporter.core.units import parse_duration

PROBE_LABEL = "tailwatch.io/probe"
ANNOTATION_PORT = "tailwatch.io/probe-port"
ANNOTATION_PROTOCOL = "tailwatch.io/probe-protocol"
ANNOTATION_PATH = "tailwatch.io/probe-path"
ANNOTATION_INTERVAL = "tailwatch.io/probe-interval"
ANNOTATION_SLO = "tailwatch.io/slo-latency"

DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.1  # a probe every 100 ms per target is already a load test
MAX_INTERVAL = 3600.0
MAX_SLO = 600.0
PROTOCOLS = ("tcp", "http")


class ServiceSkipped(ValueError):
    """An opted-in Service that cannot be probed; the message says why, for the user."""


@dataclass(frozen=True, slots=True)
class ServiceRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or the name of a container port


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """How to probe one Service."""

    ref: ServiceRef
    uid: str
    cluster_ip: str  # "" for a headless Service: then only its endpoints are probed
    port: ServicePort  # the probed port
    protocol: str  # "tcp" | "http"
    path: str
    interval: float
    slo: float | None  # seconds; the "slow" threshold for SLO and fan-out math

    @property
    def key(self) -> ServiceRef:
        return self.ref


def _ports(spec: Mapping[str, Any]) -> list[ServicePort]:
    ports: list[ServicePort] = []
    for raw in spec.get("ports") or []:
        if not isinstance(raw, Mapping):
            continue
        port = raw.get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            continue
        if str(raw.get("protocol") or "TCP") != "TCP":
            continue  # the prober speaks TCP and HTTP only
        target = raw.get("targetPort", port)
        ports.append(
            ServicePort(
                name=str(raw.get("name") or ""),
                port=port,
                target_port=target if isinstance(target, (int, str)) else port,
            )
        )
    return ports


def _choose_port(ports: list[ServicePort], wanted: str | None) -> ServicePort:
    if not ports:
        raise ServiceSkipped("the Service has no TCP port")
    if wanted is None:
        return ports[0]
    wanted = wanted.strip()
    for port in ports:
        if port.name and port.name == wanted:
            return port
    if wanted.isdigit():
        for port in ports:
            if port.port == int(wanted):
                return port
    known = ", ".join(p.name or str(p.port) for p in ports)
    raise ServiceSkipped(f"{ANNOTATION_PORT}: no port {wanted!r} on the Service (has {known})")


def _seconds(annotations: Mapping[str, str], key: str, low: float, high: float) -> float | None:
    text = annotations.get(key)
    if text is None:
        return None
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise ServiceSkipped(f"{key}: {exc}") from exc
    if not low <= value <= high:
        raise ServiceSkipped(f"{key}: {text!r} must be between {low:g}s and {high:g}s")
    return value


def is_opted_in(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(PROBE_LABEL) == "true"


def service_ref(obj: Mapping[str, Any]) -> ServiceRef | None:
    """The namespace/name of a Service body, if it has them."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if isinstance(name, str) and name and isinstance(namespace, str) and namespace:
        return ServiceRef(namespace, name)
    return None


def parse_service(obj: Mapping[str, Any]) -> ServiceSpec:
    """The probe spec of an opted-in Service; raises `ServiceSkipped` with the reason."""
    ref = service_ref(obj)
    if ref is None:
        raise ServiceSkipped("the Service has no metadata.name or metadata.namespace")
    meta = obj["metadata"]
    raw_annotations = meta.get("annotations") or {}
    if not isinstance(raw_annotations, Mapping):
        raise ServiceSkipped("metadata.annotations is not a map")
    annotations = {str(k): str(v) for k, v in raw_annotations.items()}
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ServiceSkipped("the Service has no spec")
    if spec.get("type") == "ExternalName":
        raise ServiceSkipped("an ExternalName Service has no endpoints to probe")

    protocol = annotations.get(ANNOTATION_PROTOCOL, "tcp").strip().lower()
    if protocol not in PROTOCOLS:
        raise ServiceSkipped(f"{ANNOTATION_PROTOCOL}: {protocol!r} is not one of tcp, http")
    path = annotations.get(ANNOTATION_PATH, "/").strip()
    if not path.startswith("/") or any(c.isspace() for c in path):
        raise ServiceSkipped(f"{ANNOTATION_PATH}: {path!r} must be an absolute path like /healthz")
    interval = _seconds(annotations, ANNOTATION_INTERVAL, MIN_INTERVAL, MAX_INTERVAL)
    slo = _seconds(annotations, ANNOTATION_SLO, 1e-6, MAX_SLO)
    port = _choose_port(_ports(spec), annotations.get(ANNOTATION_PORT))

    cluster_ip = str(spec.get("clusterIP") or "")
    if cluster_ip == "None":
        cluster_ip = ""  # headless
    return ServiceSpec(
        ref=ref,
        uid=str(meta.get("uid") or ""),
        cluster_ip=cluster_ip,
        port=port,
        protocol=protocol,
        path=path,
        interval=interval if interval is not None else DEFAULT_INTERVAL,
        slo=slo,
    )
