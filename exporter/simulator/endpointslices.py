"""An EndpointSlice controller for the simulator: keeps the EndpointSlices of every Service
with a selector consistent with its pods, by the rules of kube-controller-manager's
controller, so a watcher of EndpointSlices (the agent) sees endpoints follow pod changes.

The rules it copies (pkg/controller/endpointslice, endpointslice/util): a pod is an
endpoint when it matches the selector, has an IP and is not terminal (Succeeded/Failed),
terminating pods included; `serving` = the pod is Ready, `terminating` = it has a
deletionTimestamp, `ready` = serving and not terminating (always true with
publishNotReadyAddresses); `nodeName`, a Pod `targetRef` with its uid, and `hostname` when
the pod's subdomain is the Service. Service ports are resolved against each pod's named
container ports; pods with the same resolved ports share a slice of at most
`max_endpoints` endpoints. Slices carry the Service's labels plus
`kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, and are written
only when they change.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.simulator.informer import StoreFollower
from exporter.simulator.services import MANAGED_BY, endpoint_of_pod, endpoint_slice
from exporter.simulator.status import ApiError
from exporter.simulator.store import Store

log = logging.getLogger("tailwatch.simulator.endpointslices")

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
# The controller's default --max-endpoints-per-slice.
MAX_ENDPOINTS_PER_SLICE = 100
_TERMINAL = ("Succeeded", "Failed")

Ports = tuple[tuple[str, int], ...]


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """A Service selector (equality on every key) against a pod's labels."""
    have = labels or {}
    return all(have.get(key) == value for key, value in selector.items())


def is_endpoint(pod: Mapping[str, Any]) -> bool:
    """ShouldPodBeInEndpoints with terminating pods included: an IP, and not terminal."""
    status = pod.get("status") or {}
    if status.get("phase") in _TERMINAL:
        return False
    return bool(status.get("podIP") or status.get("podIPs"))


def resolve_ports(service: Mapping[str, Any], pod: Mapping[str, Any]) -> Ports:
    """The slice ports of `pod` for `service`: each Service port's targetPort, a number or
    the name of one of the pod's container ports (a name the pod lacks drops the port)."""
    named: dict[str, int] = {}
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name"):
                named.setdefault(str(port["name"]), int(port["containerPort"]))
    out: list[tuple[str, int]] = []
    for port in service.get("spec", {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, int):
            out.append((str(port.get("name") or ""), target))
        elif isinstance(target, str) and target.isdigit():
            out.append((str(port.get("name") or ""), int(target)))
        elif isinstance(target, str) and target in named:
            out.append((str(port.get("name") or ""), named[target]))
    return tuple(out)


def endpoint(service: Mapping[str, Any], pod: Mapping[str, Any]) -> Obj:
    """The endpoint the controller writes for `pod` of `service`."""
    out = endpoint_of_pod(pod)
    if service.get("spec", {}).get("publishNotReadyAddresses"):
        out["conditions"]["ready"] = True
    spec = pod.get("spec", {})
    if spec.get("hostname") and spec.get("subdomain") == service["metadata"]["name"]:
        out["hostname"] = spec["hostname"]
    return out


def _comparable(slice_: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = slice_.get("metadata", {})
    return (
        meta.get("labels"),
        slice_.get("endpoints") or [],
        slice_.get("ports") or [],
        slice_.get("addressType"),
    )


class EndpointSliceController:
    """Writes the EndpointSlices of the Services in `store` from their pods.

    `reconcile()` brings every Service's slices up to date at once (tests call it after
    changing pods); `run()` does it on every pod or Service change until cancelled.
    """

    def __init__(self, store: Store, *, max_endpoints: int = MAX_ENDPOINTS_PER_SLICE) -> None:
        if max_endpoints < 1:
            raise ValueError("max_endpoints must be at least 1")
        self.store = store
        self.max_endpoints = max_endpoints
        self.writes = 0  # slices created, updated or deleted: a test checks no-op passes

    def reconcile(self, namespace: str | None = None) -> int:
        """Update the slices of every Service (of `namespace`); returns the writes made."""
        before = self.writes
        services = self._read("services", namespace)
        names = {s["metadata"]["name"] for s in services}
        for service in services:
            self._reconcile_service(service)
        # A Service that is gone takes its slices with it (the garbage collector follows
        # their ownerReferences on a real cluster).
        for slice_ in self._read("endpointslices", namespace):
            labels = slice_["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and (
                labels.get(SERVICE_NAME_LABEL) not in names
            ):
                self._delete(slice_)
        return self.writes - before

    def _read(self, resource: str, namespace: str | None) -> list[Mapping[str, Any]]:
        """The stored objects themselves (no copies: the controller only reads them)."""
        items, _ = self.store.snapshot(resource)
        return [o for _, o in items if namespace is None or o["metadata"]["namespace"] == namespace]

    def _owned_slices(self, service: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        meta = service["metadata"]
        return [
            s
            for s in self._read("endpointslices", meta["namespace"])
            if (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == meta["name"]
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
        ]

    def desired(self, service: Mapping[str, Any]) -> list[Obj]:
        """The slices `service` should have now, in a stable order."""
        meta = service["metadata"]
        selector = service.get("spec", {}).get("selector") or {}
        groups: dict[Ports, list[Obj]] = {}
        for pod in sorted(self._read("pods", meta["namespace"]), key=_pod_name):
            if not selector_matches(selector, pod["metadata"].get("labels")):
                continue
            if not is_endpoint(pod):
                continue
            groups.setdefault(resolve_ports(service, pod), []).append(endpoint(service, pod))
        if not groups:
            # The controller keeps one empty slice for a Service without endpoints.
            groups[resolve_ports(service, {})] = []
        slices: list[Obj] = []
        for index, (ports, endpoints) in enumerate(sorted(groups.items())):
            chunks = [
                endpoints[i : i + self.max_endpoints]
                for i in range(0, max(1, len(endpoints)), self.max_endpoints)
            ]
            for part, chunk in enumerate(chunks):
                slices.append(endpoint_slice(service, chunk, ports=ports, seed=(index, part)))
        return slices

    def _reconcile_service(self, service: Mapping[str, Any]) -> None:
        if not (service.get("spec", {}).get("selector")):
            return  # endpoints of a Service without selector are managed by its owner
        held = {s["metadata"]["name"]: s for s in self._owned_slices(service)}
        for want in self.desired(service):
            name = want["metadata"]["name"]
            have = held.pop(name, None)
            if have is None:
                self._write("create", want)
            elif _comparable(have) != _comparable(want):
                want["metadata"]["resourceVersion"] = str(have["metadata"]["resourceVersion"])
                self._write("update", want)
        for stale in held.values():
            self._delete(stale)

    def _write(self, verb: str, body: Obj) -> None:
        try:
            if verb == "create":
                self.store.create("endpointslices", body)
            else:
                self.store.update("endpointslices", body)
            self.writes += 1
        except ApiError as exc:  # a conflict: the next pass writes the current state
            log.debug("endpointslice %s failed: %s", verb, exc)

    def _delete(self, slice_: Mapping[str, Any]) -> None:
        meta = slice_["metadata"]
        try:
            self.store.delete("endpointslices", meta["namespace"], meta["name"])
            self.writes += 1
        except ApiError as exc:
            log.debug("endpointslice delete failed: %s", exc)

    async def run(self) -> None:
        """Reconcile now and after every change of pods or Services, until cancelled."""
        with StoreFollower(self.store, ("pods", "services")) as follower:
            self.reconcile()
            while True:
                events = await follower.changes()
                for namespace in sorted(_namespaces(events)):
                    self.reconcile(namespace)


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def _namespaces(events: Sequence[Any]) -> set[str]:
    return {str(e.object["metadata"].get("namespace") or "") for e in events}
