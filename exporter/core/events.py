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


@dataclass(frozen=True, slots=True)
class Workload:
    """The controller a pod belongs to (docs/lifecycle.md); kind "Pod" when it has none."""

    kind: str
    name: str


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
