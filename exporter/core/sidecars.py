"""Which containers of a pod are sidecars: one rule, for the correlator's attribution and the
mixin's dashboards and alerts (docs/correlation.md, *Attribution*).

A container is a sidecar when

1. the pod's annotation `tailwatch.io/sidecars` (comma-separated container names) names it.
   The annotation is the documented override: when a pod has it, it is the whole answer
   (an empty value says the pod has none);
2. else, it is a native sidecar: an init container with `restartPolicy: Always`, which the
   kubelet starts before the application and keeps running beside it;
3. else, its name is one that meshes, injectors and well-known agents give their sidecars
   (`WELL_KNOWN`), or says it is one (`NAME_PATTERNS`: `*-sidecar`, ...). Not a classic
   init container: one that runs to completion before the pod starts is neither.

Every other regular container is an application container, and a pod may have several.
Nothing depends on the order of the containers: a mesh that injects its proxy first in the
list still has its proxy recognised as the sidecar and the application as the application.

The mixin reads no pod spec nor annotation, only the `container` label: its dashboards and
alerts use `CONTAINER_PATTERN`, the regular expression made from the same names, so both
sides of tailwatch mean the same containers by "sidecar" unless a pod overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol

#: The pod annotation that names a pod's sidecars (comma-separated container names).
ANNOTATION = "tailwatch.io/sidecars"

#: Container names that mean a sidecar whatever the pod, each with why. A name is kept here
#: only when the project that injects it (or documents it) uses it for a helper beside an
#: application, never for the application itself: `kube-proxy` or `nginx-proxy` are
#: applications (a DaemonSet, a reverse proxy Deployment), so there is no `*-proxy` rule.
WELL_KNOWN: tuple[tuple[str, str], ...] = (
    ("istio-proxy", "Istio's injected Envoy"),
    ("linkerd-proxy", "Linkerd's injected proxy"),
    ("envoy", "the Envoy of AWS App Mesh, Consul and hand-made meshes"),
    ("consul-dataplane", "Consul's injected dataplane (Consul 1.14 and later)"),
    ("daprd", "the Dapr runtime beside each Dapr application"),
    ("cloud-sql-proxy", "Google's Cloud SQL Auth Proxy (v2)"),
    ("cloudsql-proxy", "Google's Cloud SQL Proxy (v1)"),
    ("vault-agent", "HashiCorp Vault Agent Injector's agent"),
    ("oauth2-proxy", "an authenticating proxy in front of an application"),
    ("kube-rbac-proxy", "an authorising proxy in front of an operator's metrics"),
    ("otc-container", "the OpenTelemetry Operator's injected collector"),
    ("otel-collector", "an OpenTelemetry Collector beside the application"),
    ("jaeger-agent", "Jaeger's injected agent"),
    ("fluent-bit", "a log shipper beside the application"),
    ("config-reloader", "the Prometheus Operator's configuration reloader"),
)

#: Patterns of names that say "sidecar" themselves (anchored, as PromQL's `=~` is): the
#: word `sidecar` alone or between dashes.
NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    ("(.*-)?sidecar(-.*)?", "the name says it: envoy-sidecar, kuma-sidecar, gke-gcsfuse-sidecar"),
)

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Names are DNS labels: nothing in them needs escaping in a regular expression.
assert all(_DNS_LABEL.fullmatch(name) for name, _ in WELL_KNOWN)

#: The regular expression of the sidecar names (RE2 and Python alike), for PromQL's
#: `container=~"..."`: the well-known names, then the patterns.
CONTAINER_PATTERN = "|".join([*(name for name, _ in WELL_KNOWN), *(p for p, _ in NAME_PATTERNS)])

_WELL_KNOWN = frozenset(name for name, _ in WELL_KNOWN)
_PATTERN = re.compile(f"(?:{'|'.join(p for p, _ in NAME_PATTERNS)})")


class ContainerLike(Protocol):
    """What the rule reads of a container (`exporter.core.pods.ContainerSnapshot`)."""

    @property
    def name(self) -> str: ...
    @property
    def init(self) -> bool: ...
    @property
    def native_sidecar(self) -> bool: ...


def well_known(name: str) -> bool:
    """Does the name alone say sidecar (rule 3)?"""
    return name in _WELL_KNOWN or _PATTERN.fullmatch(name) is not None


def parse_annotation(value: object) -> frozenset[str] | None:
    """The container names of a `tailwatch.io/sidecars` value; None when there is none (or
    it is not a string, which the API never sends: annotations are strings)."""
    if not isinstance(value, str):
        return None
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def sidecars_of(
    annotation: frozenset[str] | None, containers: Iterable[ContainerLike]
) -> frozenset[str]:
    """The names of a pod's sidecar containers, by the rule above: `annotation` is the
    pod's parsed `tailwatch.io/sidecars` (None when absent), `containers` its containers."""
    if annotation is not None:
        return annotation
    return frozenset(
        c.name for c in containers if c.native_sidecar or (not c.init and well_known(c.name))
    )


def is_sidecar(
    name: str, annotation: frozenset[str] | None, *, init: bool = False, native: bool = False
) -> bool:
    """One container by the rule: `init` for an init container, `native` for one with
    `restartPolicy: Always`."""
    if annotation is not None:
        return name in annotation
    return native or (not init and well_known(name))
