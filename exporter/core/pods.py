"""Pod snapshots: the few fields of a Pod object that lifecycle detection and cgroup mapping need.

`parse_pod` turns a raw Pod (the JSON body of the API, a dict) into a `PodSnapshot`, or
raises `MalformedObject` with a short reason when a field it cannot do without is missing
or of the wrong type. Fields that may legitimately be absent (status of a pod not yet
started, conditions, container statuses) default to "unknown" instead, and so do timestamps
that cannot be read: a bad time costs a duration, never the pod.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.core.events import Workload
from exporter.core.sidecars import ANNOTATION as SIDECARS_ANNOTATION
from exporter.core.sidecars import parse_annotation, sidecars_of

REVISION_LABELS = ("pod-template-hash", "controller-revision-hash")
#: Phases a pod never leaves: its containers will not run again, and it gets no IP.
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class MalformedObject(ValueError):
    """A Kubernetes object that lacks a field we need; `reason` is a short stable slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ContainerSnapshot:
    """State of one container as reported in the pod status."""

    name: str
    restart_count: int = 0
    ready: bool = False
    container_id: str = ""  # "containerd://<id>", "cri-o://<id>", "docker://<id>" or ""
    state: str = "unknown"  # waiting | running | terminated | unknown
    waiting_reason: str = ""
    last_terminated_reason: str = ""
    init: bool = False
    # An init container with restartPolicy Always (spec.initContainers[]): a native sidecar,
    # started before the application and kept running beside it.
    native_sidecar: bool = False


@dataclass(frozen=True, slots=True)
class PodSnapshot:
    """What the agent keeps of one pod."""

    uid: str
    namespace: str
    name: str
    node: str
    workload: Workload
    revision: str
    phase: str = "Unknown"
    status_reason: str = ""
    ready: bool | None = None  # None: the Ready condition is not reported yet
    deleting: bool = False
    disruption_reason: str = ""  # reason of a DisruptionTarget condition that is True
    # What the kubelet evicted the pod for (memory, ephemeral-storage, pids, inodes, ...),
    # read from status.message of an Evicted pod or the DisruptionTarget condition's message
    # (`eviction_resource`); "" when neither says.
    eviction_resource: str = ""
    qos_class: str = ""
    containers: tuple[ContainerSnapshot, ...] = field(default_factory=tuple)
    created_at: float | None = None  # metadata.creationTimestamp; None if absent or unreadable
    # The API's own times of the pod's lifecycle, epoch seconds (None if absent or unreadable),
    # for startup and termination times that do not depend on when the agent looked
    # (docs/lifecycle.md, *Durations*). Condition times and deletionTimestamp have whole-second
    # resolution: the API server writes them truncated to the second.
    scheduled_at: float | None = None  # lastTransitionTime of PodScheduled, when it is True
    # lastTransitionTime of the Ready condition: when it took its current status (`ready`).
    # Only the latest transition is kept by the API: after a flap it is the flap's time.
    ready_since: float | None = None
    started_at: float | None = None  # status.startTime: when the kubelet first reported the pod
    deletion_at: float | None = None  # metadata.deletionTimestamp: when it is to be gone
    deletion_grace_seconds: float | None = None  # metadata.deletionGracePeriodSeconds
    # status.podIPs (or podIP) and status.hostIPs (or hostIP), as written: who may send OTLP
    # under --otlp-sources=local (exporter.otlp.receiver.LocalSources).
    pod_ips: tuple[str, ...] = ()
    host_ips: tuple[str, ...] = ()
    # The container names of the `tailwatch.io/sidecars` annotation; None when it is absent
    # (exporter/core/sidecars.py).
    sidecar_annotation: frozenset[str] | None = None

    @property
    def key(self) -> str:
        return self.uid

    @property
    def ready_at(self) -> float | None:
        """When the pod last became Ready, if it is Ready now."""
        return self.ready_since if self.ready is True else None

    @property
    def deletion_requested_at(self) -> float | None:
        """When the graceful deletion was requested, as the API tells it: deletionTimestamp is
        the request's time plus the grace period (deletionGracePeriodSeconds)."""
        if self.deletion_at is None or self.deletion_grace_seconds is None:
            return None
        return self.deletion_at - self.deletion_grace_seconds

    def container(self, name: str) -> ContainerSnapshot | None:
        for c in self.containers:
            if c.name == name:
                return c
        return None

    @property
    def sidecars(self) -> frozenset[str]:
        """Its sidecar containers, by the one rule of exporter/core/sidecars.py."""
        return sidecars_of(self.sidecar_annotation, self.containers)


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise MalformedObject("missing_field", f"{where}.{key} is missing or not a {kind.__name__}")
    return value


def _name(obj: Mapping[str, Any], key: str) -> str:
    """A non-empty string field of metadata (uid, name, namespace)."""
    value = _get(obj, key, str, "metadata")
    if not value:
        raise MalformedObject("missing_field", f"metadata.{key} is empty")
    return str(value)


def parse_time(value: object) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp as the API writes it, or None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # the API always writes UTC with a Z; anything else is not a timestamp of ours
    return parsed.timestamp()


def parse_seconds(value: object) -> float | None:
    """A count of seconds as the API writes it (an integer, 0 or more), or None if unreadable."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    return float(value)


def uid_of(obj: object) -> str | None:
    """metadata.uid of a body if it can be read at all, even from an otherwise malformed one."""
    if not isinstance(obj, Mapping):
        return None
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    uid = metadata.get("uid")
    return uid if isinstance(uid, str) and uid else None


def opt_mapping(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MalformedObject("bad_field", f"{where}.{key} is not an object")
    return value


def opt_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedObject("bad_field", f"{where}.{key} is not a list")
    return value


def workload_of(metadata: Mapping[str, Any], labels: Mapping[str, str]) -> Workload:
    """The controller owner of a pod (docs/lifecycle.md), with ReplicaSets mapped to Deployments.

    A ReplicaSet becomes its Deployment only when its name is `<deployment>-<pod-template-hash>`;
    one made by hand (no hash label, or a name that does not end in it) stays a ReplicaSet.
    """
    refs = metadata.get("ownerReferences")
    if refs is None:
        refs = []
    if not isinstance(refs, list):
        raise MalformedObject("bad_field", "metadata.ownerReferences is not a list")
    for ref in refs:
        if not isinstance(ref, Mapping) or ref.get("controller") is not True:
            continue
        kind = str(ref.get("kind") or "")
        name = str(ref.get("name") or "")
        if not kind or not name:
            continue
        if kind == "ReplicaSet":
            template_hash = labels.get("pod-template-hash", "")
            suffix = f"-{template_hash}"
            if template_hash and name.endswith(suffix) and len(name) > len(suffix):
                return Workload("Deployment", name[: -len(suffix)])
        return Workload(kind, name)
    return Workload("Pod", str(metadata.get("name") or ""))


def _container(status: Mapping[str, Any], init: bool, native: bool) -> ContainerSnapshot:
    name = status.get("name")
    if not isinstance(name, str) or not name:
        raise MalformedObject("missing_field", "containerStatuses[].name is missing")
    restart_count = status.get("restartCount", 0)
    if not isinstance(restart_count, int) or isinstance(restart_count, bool) or restart_count < 0:
        raise MalformedObject("bad_field", f"container {name}: restartCount is not a count")
    state_obj = status.get("state") or {}
    if not isinstance(state_obj, Mapping):
        raise MalformedObject("bad_field", f"container {name}: state is not an object")
    state = "unknown"
    waiting_reason = ""
    for candidate in ("running", "waiting", "terminated"):
        if candidate in state_obj:
            state = candidate
            break
    if state == "waiting":
        waiting = state_obj.get("waiting") or {}
        if isinstance(waiting, Mapping):
            waiting_reason = str(waiting.get("reason") or "")
    last = status.get("lastState") or {}
    last_reason = ""
    if isinstance(last, Mapping):
        terminated = last.get("terminated") or {}
        if isinstance(terminated, Mapping):
            last_reason = str(terminated.get("reason") or "")
    ready = status.get("ready", False)
    if not isinstance(ready, bool):
        raise MalformedObject("bad_field", f"container {name}: ready is not a boolean")
    return ContainerSnapshot(
        name=name,
        restart_count=restart_count,
        ready=ready,
        container_id=str(status.get("containerID") or ""),
        state=state,
        waiting_reason=waiting_reason,
        last_terminated_reason=last_reason,
        init=init,
        native_sidecar=native,
    )


def _ips(status: Mapping[str, Any], plural: str, singular: str) -> tuple[str, ...]:
    """`status.podIPs[].ip` (or hostIPs), else `status.podIP` (hostIP). What is not in that
    shape is left out rather than refused: the pod's lifecycle does not depend on it."""
    entries = status.get(plural)
    ips = []
    if isinstance(entries, list):
        ips = [entry.get("ip") for entry in entries if isinstance(entry, Mapping)]
    if not ips:
        ips = [status.get(singular)]
    return tuple(dict.fromkeys(ip for ip in ips if isinstance(ip, str) and ip))


#: The kubelet's eviction messages (pkg/kubelet/eviction): node pressure ("The node was low
#: on resource: memory. Threshold quantity: ..."), and a pod over its own ephemeral-storage
#: limits ("Pod ephemeral local storage usage exceeds ...", "Container app exceeded its
#: local ephemeral storage limit ...", "Usage of EmptyDir volume ... exceeds the limit").
_LOW_ON = re.compile(r"low on resource: ([A-Za-z][A-Za-z0-9_-]{0,62})")
_STORAGE_LIMIT = re.compile(r"ephemeral local storage|local ephemeral storage|EmptyDir volume")


def eviction_resource(message: object) -> str:
    """The resource an eviction message names ("memory", "ephemeral-storage", "pids",
    "inodes", ...), or "" for any other message or none: the words may change between
    Kubernetes versions, and an unread resource costs only the resource."""
    if not isinstance(message, str):
        return ""
    found = _LOW_ON.search(message)
    if found is not None:
        return found.group(1)
    return "ephemeral-storage" if _STORAGE_LIMIT.search(message) else ""


def parse_pod(obj: Mapping[str, Any]) -> PodSnapshot:
    """Extract a `PodSnapshot` from a Pod body; raises `MalformedObject`."""
    if not isinstance(obj, Mapping):
        raise MalformedObject("not_an_object", "pod is not a JSON object")
    metadata = _get(obj, "metadata", Mapping, "pod")
    uid = _name(metadata, "uid")
    name = _name(metadata, "name")
    namespace = _name(metadata, "namespace")
    raw_labels = opt_mapping(metadata, "labels", "metadata")
    labels = {str(k): str(v) for k, v in raw_labels.items()}
    spec = opt_mapping(obj, "spec", "pod")
    status = opt_mapping(obj, "status", "pod")

    ready: bool | None = None
    ready_since: float | None = None
    scheduled_at: float | None = None
    disruption_reason = ""
    disruption_message: object = None
    for cond in opt_list(status, "conditions", "status"):
        if not isinstance(cond, Mapping):
            raise MalformedObject("bad_field", "status.conditions[] is not an object")
        ctype = cond.get("type")
        cstatus = cond.get("status")
        if ctype == "Ready":
            ready = cstatus == "True"
            ready_since = parse_time(cond.get("lastTransitionTime"))
        elif ctype == "PodScheduled":
            scheduled_at = parse_time(cond.get("lastTransitionTime")) if cstatus == "True" else None
        elif ctype == "DisruptionTarget" and cstatus == "True":
            disruption_reason = str(cond.get("reason") or "")
            disruption_message = cond.get("message")

    native = _native_sidecars(spec)
    containers: list[ContainerSnapshot] = []
    for key, init in (("initContainerStatuses", True), ("containerStatuses", False)):
        for cs in opt_list(status, key, "status"):
            if not isinstance(cs, Mapping):
                raise MalformedObject("bad_field", f"status.{key}[] is not an object")
            container_name = cs.get("name")
            sidecar = init and isinstance(container_name, str) and container_name in native
            containers.append(_container(cs, init, sidecar))

    revision = ""
    for label in REVISION_LABELS:
        if labels.get(label):
            revision = labels[label]
            break

    return PodSnapshot(
        uid=uid,
        namespace=namespace,
        name=name,
        node=str(spec.get("nodeName") or ""),
        workload=workload_of(metadata, labels),
        revision=revision,
        phase=str(status.get("phase") or "Unknown"),
        status_reason=str(status.get("reason") or ""),
        ready=ready,
        deleting=metadata.get("deletionTimestamp") is not None,
        disruption_reason=disruption_reason,
        eviction_resource=(
            eviction_resource(status.get("message")) or eviction_resource(disruption_message)
        ),
        qos_class=str(status.get("qosClass") or ""),
        containers=tuple(containers),
        created_at=parse_time(metadata.get("creationTimestamp")),
        scheduled_at=scheduled_at,
        ready_since=ready_since,
        started_at=parse_time(status.get("startTime")),
        deletion_at=parse_time(metadata.get("deletionTimestamp")),
        deletion_grace_seconds=parse_seconds(metadata.get("deletionGracePeriodSeconds")),
        pod_ips=_ips(status, "podIPs", "podIP"),
        host_ips=_ips(status, "hostIPs", "hostIP"),
        sidecar_annotation=_sidecar_annotation(metadata),
    )


def _native_sidecars(spec: Mapping[str, Any]) -> frozenset[str]:
    """Names of the init containers with restartPolicy Always. What is not in that shape is
    left out rather than refused: it costs the sidecar rule one hint, never the pod."""
    inits = spec.get("initContainers")
    if not isinstance(inits, list):
        return frozenset()
    return frozenset(
        str(c.get("name"))
        for c in inits
        if isinstance(c, Mapping) and c.get("restartPolicy") == "Always"
    )


def _sidecar_annotation(metadata: Mapping[str, Any]) -> frozenset[str] | None:
    annotations = metadata.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    return parse_annotation(annotations.get(SIDECARS_ANNOTATION))
