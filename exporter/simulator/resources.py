"""The resource types the simulator serves, and the field labels each one can be selected on.

Adding a resource is one `ResourceType` line in `RESOURCES`; routing, discovery, storage
and list/watch all follow from this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Object = dict[str, Any]
FieldGetter = Callable[[Mapping[str, Any]], str]


def _path(*keys: str) -> FieldGetter:
    """A field label's value: the string at `keys`, "" when absent (as the real server does)."""

    def get(obj: Mapping[str, Any]) -> str:
        value: Any = obj
        for key in keys:
            if not isinstance(value, Mapping):
                return ""
            value = value.get(key)
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return get


def _pod_ips(obj: Mapping[str, Any]) -> str:
    ips = (obj.get("status") or {}).get("podIPs") or []
    return ",".join(str(ip.get("ip", "")) for ip in ips if isinstance(ip, Mapping))


# Every resource supports these two, like ObjectMetaFieldsSet on the real server.
_METADATA_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}

# The pod field labels the real apiserver accepts (pkg/registry/core/pod/strategy.go).
_POD_FIELDS: dict[str, FieldGetter] = {
    **_METADATA_FIELDS,
    "spec.nodeName": _path("spec", "nodeName"),
    "spec.restartPolicy": _path("spec", "restartPolicy"),
    "spec.schedulerName": _path("spec", "schedulerName"),
    "spec.serviceAccountName": _path("spec", "serviceAccountName"),
    "spec.hostNetwork": lambda obj: _path("spec", "hostNetwork")(obj) or "false",
    "status.phase": _path("status", "phase"),
    "status.podIP": _path("status", "podIP"),
    "status.podIPs": _pod_ips,
    "status.nominatedNodeName": _path("status", "nominatedNodeName"),
}

_SERVICE_FIELDS: dict[str, FieldGetter] = {
    **_METADATA_FIELDS,
    "spec.clusterIP": _path("spec", "clusterIP"),
    "spec.type": _path("spec", "type"),
}


@dataclass(frozen=True)
class ResourceType:
    """One API resource: where it lives in the URL space and how it is named."""

    plural: str  # pods: the URL segment and the store's key
    singular: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    has_status: bool = False  # a /status subresource exists
    field_labels: Mapping[str, FieldGetter] = field(default_factory=lambda: _METADATA_FIELDS)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def base_path(self) -> str:
        """The group-version prefix: /api/v1 or /apis/GROUP/VERSION."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def fields(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return {name: get(obj) for name, get in self.field_labels.items()}


RESOURCES: dict[str, ResourceType] = {
    r.plural: r
    for r in (
        ResourceType(
            "pods",
            "pod",
            "Pod",
            "",
            "v1",
            short_names=("po",),
            has_status=True,
            field_labels=_POD_FIELDS,
        ),
        ResourceType(
            "services",
            "service",
            "Service",
            "",
            "v1",
            short_names=("svc",),
            has_status=True,
            field_labels=_SERVICE_FIELDS,
        ),
        ResourceType("endpointslices", "endpointslice", "EndpointSlice", "discovery.k8s.io", "v1"),
    )
}

VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


def resource_type(plural: str) -> ResourceType:
    try:
        return RESOURCES[plural]
    except KeyError:
        raise KeyError(f"the simulator does not serve {plural!r}") from None


def resource_for_kind(kind: str) -> ResourceType:
    for rtype in RESOURCES.values():
        if rtype.kind == kind:
            return rtype
    raise KeyError(f"the simulator does not serve kind {kind!r}")


def object_key(rtype: ResourceType, namespace: str, name: str) -> str:
    """The object's storage key; keys sort like the real server's etcd keys."""
    return f"{namespace}/{name}" if rtype.namespaced else name
