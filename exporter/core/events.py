"""Lifecycle events: the node-local event names of the public contract (docs/lifecycle.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PodEventKind(StrEnum):
    """Values of the `event` label of `tailwatch_pod_events_total` (contract)."""

    SCHEDULED = "scheduled"
    READY = "ready"
    NOT_READY = "not_ready"
    CONTAINER_RESTART = "container_restart"
    CRASH_LOOP = "crash_loop"
    TERMINATING = "terminating"
    EVICTED = "evicted"
    DELETED = "deleted"
    ROLLOUT = "rollout"
    # A kernel OOM kill seen in a container's cgroup (memory.events oom_kill); it is
    # counted even when the container did not restart. Not a pod_events_total value:
    # it is exported as tailwatch_container_oom_kills_total.
    OOM_KILL = "oom_kill"


#: `workload_type` of the kinds kubernetes-mixin's namespace_workload_pod:kube_pod_owner:relabel
#: names: a pod without a controller is its "barepod", a static pod (owned by its Node) its
#: "staticpod"; any other kind is lower-cased.
_WORKLOAD_TYPES = {
    "Deployment": "deployment",
    "ReplicaSet": "replicaset",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
    "CronJob": "cronjob",
    "Pod": "barepod",
    "Node": "staticpod",
}


def workload_type(kind: str) -> str:
    """The `workload_type` label of a workload kind (`Deployment` -> `deployment`), beside
    `workload_kind` on every workload family, so a query can join our series with
    kubernetes-mixin's recording rules on (namespace, workload, workload_type)."""
    known = _WORKLOAD_TYPES.get(kind)
    return known if known is not None else kind.lower()


@dataclass(frozen=True, slots=True)
class Workload:
    """The controller a pod belongs to (docs/lifecycle.md); kind "Pod" when it has none."""

    kind: str
    name: str

    @property
    def type(self) -> str:
        """kubernetes-mixin's `workload_type` of the kind (`workload_type`)."""
        return workload_type(self.kind)


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One lifecycle change of one pod (or one of its containers), seen at `at`.

    `count` is how many times it happened since the agent last looked (a restart count
    that grew by two across a watch gap is one event with count=2). `duration_seconds` is
    the startup time on a pod's first `ready` (PodScheduled -> Ready, by the API's condition
    times) and the termination time on `deleted` (from the deletion request the API records
    to the moment the agent learns the pod is gone, by the agent's clock); None where they
    cannot be told (docs/lifecycle.md, *Durations*).
    """

    kind: PodEventKind
    at: float
    namespace: str
    pod: str
    uid: str
    workload: Workload
    node: str = ""
    revision: str = ""
    reason: str = ""
    container: str = ""
    count: int = 1
    duration_seconds: float | None = None
    # What the kubelet evicted the pod for (`evicted`, and `terminating` by the kubelet):
    # memory, ephemeral-storage, pids, ...; "" when not an eviction or not said.
    resource: str = ""

    def as_log_fields(self) -> dict[str, object]:
        """The fields of the structured log line for this event."""
        fields: dict[str, object] = {
            "event": self.kind.value,
            "namespace": self.namespace,
            "pod": self.pod,
            "workload_kind": self.workload.kind,
            "workload": self.workload.name,
        }
        for key, value in (
            ("node", self.node),
            ("revision", self.revision),
            ("reason", self.reason),
            ("container", self.container),
            ("resource", self.resource),
        ):
            if value:
                fields[key] = value
        if self.count != 1:
            fields["count"] = self.count
        if self.duration_seconds is not None:
            fields["duration_seconds"] = round(self.duration_seconds, 6)
        return fields
