"""The resource types the simulator serves, and the field labels each one can be selected on.

Adding a resource is one `ResourceType` line in `RESOURCES`; routing, discovery, storage
and list/watch all follow from this table.
"""

from __future__ import annotations

import re
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

# The node field labels the real apiserver accepts (pkg/registry/core/node/strategy.go): a
# cluster-scoped object has no metadata.namespace; spec.unschedulable is "true" or "false".
_NODE_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "spec.unschedulable": lambda obj: _path("spec", "unschedulable")(obj) or "false",
}

# The field labels events.k8s.io/v1 accepts: the core Event's, under their events.k8s.io names
# (pkg/apis/events/v1 field label conversions; `source` and the core spellings are refused).
_EVENT_FIELDS: dict[str, FieldGetter] = {
    **_METADATA_FIELDS,
    **{f"regarding.{key}": _path("regarding", key) for key in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
    "reason": _path("reason"),
    "reportingController": _path("reportingController"),
    "type": _path("type"),
}  # fmt: skip
# What an events.k8s.io/v1 create or update must satisfy (ValidateEventCreate/Update), and
# the fields an update cannot change.
_EVENT_LIMITS = {"reportingInstance": 128, "action": 128, "reason": 128}
_EVENT_IMMUTABLE = ("regarding", "related", "eventTime", "action", "reason",
                    "reportingController", "reportingInstance", "type", "note")  # fmt: skip
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _event_errors(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[str]:
    """The registry's validation of an events.k8s.io/v1 Event (a create when `old` is None)."""
    errors: list[str] = []
    if old is not None:
        errors += [f"{k}: Invalid value: field is immutable" for k in _EVENT_IMMUTABLE
                   if new.get(k) != old.get(k)]  # fmt: skip
    if not new.get("eventTime"):
        errors.append("eventTime: Required value")
    if new.get("type") not in ("Normal", "Warning"):
        errors.append(f"type: Invalid value: {new.get('type')!r}: has invalid value")
    controller = str(new.get("reportingController") or "")
    if not _QUALIFIED_NAME.match(controller):
        errors.append(f"reportingController: Invalid value: {controller!r}: not a qualified name")
    for key, limit in _EVENT_LIMITS.items():
        value = str(new.get(key) or "")
        if not value:
            errors.append(f"{key}: Required value")
        elif len(value) > limit:
            errors.append(f"{key}: Invalid value: can have at most {limit} characters")
    if len(str(new.get("note") or "").encode()) > 1024:
        errors.append("note: Invalid value: can have at most 1024 characters")
    series = new.get("series")
    if series is not None:
        count = series.get("count") if isinstance(series, Mapping) else None
        if not isinstance(count, int) or count < 2:
            errors.append("series.count: Invalid value: should be at least 2")
        if not isinstance(series, Mapping) or not series.get("lastObservedTime"):
            errors.append("series.lastObservedTime: Required value")
    if old is None:
        for key in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedSource"):
            if new.get(key):
                errors.append(f"{key}: Invalid value: needs to be unset")
        if new.get("deprecatedCount"):
            errors.append("deprecatedCount: Invalid value: needs to be unset")
    return errors


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
    #: The registry's validation of a write: the errors of `new` (replacing `old`, None for a
    #: create), answered 422 Invalid.
    check: Callable[[Mapping[str, Any], Mapping[str, Any] | None], list[str]] | None = None

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
        ResourceType(
            "nodes",
            "node",
            "Node",
            "",
            "v1",
            namespaced=False,
            short_names=("no",),
            has_status=True,
            field_labels=_NODE_FIELDS,
        ),
        ResourceType(
            "events",
            "event",
            "Event",
            "events.k8s.io",
            "v1",
            short_names=("ev",),
            field_labels=_EVENT_FIELDS,
            check=_event_errors,
        ),
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
