"""A few kubelet- and controller-like actions on the simulator's store, for tests and the demo.

Each action applies one realistic transition from `objects` to a stored pod or node, so
scenarios read like what happens in a cluster: a pod arrives and becomes ready, a container
is OOM-killed, readiness flaps, a rollout replaces pods, a node comes under memory pressure
and its kubelet evicts a pod, a node is cordoned or tainted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from exporter.simulator import objects
from exporter.simulator.store import Store

Pod = dict[str, Any]
Transition = Callable[[Mapping[str, Any], float], Pod]


class Cluster:
    """Drives pods in a `Store` with the transitions of `objects`, timestamped by `clock`."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def transition(self, namespace: str, name: str, change: Transition) -> Pod:
        """Replace the stored pod by `change(pod, now)` (one MODIFIED event)."""
        now = self.clock()

        def apply(obj: Pod) -> None:
            new = change(obj, now)
            obj.clear()
            obj.update(new)

        return self.store.patch("pods", namespace, name, apply)

    def add(self, pod: Mapping[str, Any]) -> Pod:
        """Create a pod as built by a constructor of `objects` (any state)."""
        return self.store.create("pods", pod)

    def start(self, pod: Mapping[str, Any], *, ready: bool = True) -> Pod:
        """A pod bound to its node arrives, its containers start, then it becomes ready:
        ADDED then MODIFIED events, as a watcher on that node sees a new pod. `pod` must be
        built with state="scheduled"."""
        meta = pod["metadata"]
        if pod.get("status", {}).get("phase") != "Pending":
            raise ValueError("start() takes a pod built with state='scheduled'")
        created = self.add(objects.containers_creating(pod, self.clock()))
        ns, name = created["metadata"]["namespace"], meta["name"]
        running = self.transition(ns, name, objects.containers_running)
        return self.transition(ns, name, objects.mark_ready) if ready else running

    def restart(self, namespace: str, name: str, container: str, reason: str) -> Pod:
        return self.transition(
            namespace,
            name,
            lambda pod, now: objects.restart_container(pod, container, now, reason=reason),
        )

    def flap_readiness(self, namespace: str, name: str) -> Pod:
        self.transition(namespace, name, objects.mark_not_ready)
        return self.transition(namespace, name, objects.mark_ready)

    def crash_loop(self, namespace: str, name: str, container: str, reason: str = "Error") -> Pod:
        return self.transition(
            namespace,
            name,
            lambda pod, now: objects.crash_loop_back_off(pod, container, now, reason=reason),
        )

    def terminate(self, namespace: str, name: str, disruption: str | None = None) -> Pod:
        """Graceful deletion begins (deletionTimestamp set), e.g. by a rollout or a drain."""
        if disruption:
            self.transition(
                namespace, name, lambda pod, now: objects.disruption_target(pod, disruption, now)
            )
        return self.store.delete("pods", namespace, name)

    def finish_termination(self, namespace: str, name: str) -> Pod:
        """The kubelet stopped the containers and removes the pod (DELETED)."""
        return self.store.remove("pods", namespace, name)

    def evict(
        self,
        namespace: str,
        name: str,
        resource: str = "memory",
        usage: Mapping[str, str] | None = None,
    ) -> Pod:
        """Node-pressure eviction by the kubelet: the pod fails with reason Evicted."""
        return self.transition(
            namespace,
            name,
            lambda pod, now: objects.evict_by_kubelet(pod, now, resource=resource, usage=usage),
        )

    # -- nodes ---------------------------------------------------------------------------

    def add_node(self, node: Mapping[str, Any]) -> Pod:
        """Register a Node as built by `objects.node`."""
        return self.store.create("nodes", node)

    def node_transition(self, name: str, change: Transition) -> Pod:
        """Replace the stored Node by `change(node, now)` (one MODIFIED event)."""
        now = self.clock()

        def apply(obj: Pod) -> None:
            new = change(obj, now)
            obj.clear()
            obj.update(new)

        return self.store.patch("nodes", "", name, apply)

    def node_pressure(
        self, name: str, condition: str = "MemoryPressure", *, under: bool = True
    ) -> Pod:
        """The node comes under `condition` (MemoryPressure, DiskPressure, PIDPressure), or
        leaves it (`under=False`)."""
        return self.node_transition(
            name, lambda node, now: objects.node_pressure(node, condition, now, under=under)
        )

    def node_not_ready(self, name: str, *, unreachable: bool = False) -> Pod:
        return self.node_transition(
            name, lambda node, now: objects.node_not_ready(node, now, unreachable=unreachable)
        )

    def node_ready(self, name: str) -> Pod:
        return self.node_transition(name, objects.node_ready)

    def cordon(self, name: str) -> Pod:
        return self.node_transition(name, objects.cordon)

    def uncordon(self, name: str) -> Pod:
        return self.node_transition(name, objects.uncordon)

    def taint(self, name: str, key: str, effect: str = "NoExecute") -> Pod:
        return self.node_transition(
            name, lambda node, now: objects.add_taint(node, key, effect, now)
        )

    def untaint(self, name: str, key: str) -> Pod:
        return self.node_transition(name, lambda node, now: objects.remove_taint(node, key))

    def node_pressure_eviction(
        self,
        namespace: str,
        pod: str,
        *,
        resource: str = "memory",
        usage: Mapping[str, str] | None = None,
    ) -> Pod:
        """The kubelet's node-pressure eviction, as it happens: the pod's node reports the
        pressure condition of `resource` (memory: MemoryPressure), then the kubelet evicts
        the pod for it (phase Failed, reason Evicted, the resource in its message; `usage`
        names the containers over their requests). The pressure stays until
        `node_pressure(..., under=False)`: the kubelet clears it once the node has reclaimed
        enough. Returns the evicted pod."""
        node = self.store.get("pods", namespace, pod)["spec"]["nodeName"]
        self.node_pressure(node, objects.PRESSURE_CONDITIONS[resource])
        return self.evict(namespace, pod, resource, usage)
