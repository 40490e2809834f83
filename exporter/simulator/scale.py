"""A large cluster for the scale benchmarks, written into a `Store` as the apiserver and the
controllers would have written it: N nodes, pods spread over them, opted-in Services with
their EndpointSlices (at most 100 endpoints a slice, as the EndpointSlice controller cuts
them), and one tailwatch peer pod per node (the DaemonSet, Running and Ready).

Every address is loopback, each kind in its own block of 127.0.0.0/8, so nothing ever
leaves the machine and the addresses never collide with 127.0.0.1 (the simulator's and the
agents' own ports): ClusterIPs in 127.10+.x.y, pod IPs in 127.20+.x.y, node IPs (and the
peers' host-network pod IPs) in 127.30+.x.y. Services are probed over TCP on one port; a
benchmark may listen on the ClusterIPs. Endpoints are pods of one Deployment per Service,
spread round-robin over the nodes (endpoint g of the cluster on node g mod N).

The helpers after `build` make the changes a benchmark replays: flip one endpoint's
readiness (one EndpointSlice MODIFIED event), delete a Service and then its slices (the
order the garbage collector follows), restart a container of a pod.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator import objects
from exporter.simulator import services as service_objects
from exporter.simulator.endpointslices import MAX_ENDPOINTS_PER_SLICE
from exporter.simulator.store import Store

Obj = dict[str, Any]

PEER_NAMESPACE = "tailwatch"
PEER_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": "tailwatch"}
PEER_DAEMONSET = "tailwatch"

SERVICE_BLOCK = 10  # ClusterIPs: 127.10.0.1 onwards
POD_BLOCK = 20  # pod IPs: 127.20.0.1 onwards
NODE_BLOCK = 30  # node IPs: 127.30.0.1 onwards
_PER_OCTET = 256 * 254  # addresses per second octet: third octet 0-255, fourth 1-254
_BLOCK_OCTETS = 10  # each block may spill over into the next 9 second octets
# The apiserver's generateName alphabet (no vowels, no look-alikes).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def loopback(block: int, index: int) -> str:
    """The `index`-th address of a block: 127.<block>.0.1, 127.<block>.0.2, ..."""
    if index < 0 or index >= _PER_OCTET * _BLOCK_OCTETS:
        raise ValueError(f"address index {index} out of range")
    second, rest = divmod(index, _PER_OCTET)
    third, fourth = divmod(rest, 254)
    return f"127.{block + second}.{third}.{fourth + 1}"


def node_name(index: int) -> str:
    return f"node-{index:04d}"


def node_ip(index: int) -> str:
    return loopback(NODE_BLOCK, index)


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


@dataclass(frozen=True)
class ScaleSpec:
    """What to build. `endpoints_per_service` pods back each opted-in Service;
    `filler_pods_per_node` more pods per node belong to workloads no opted-in Service
    selects (what makes a node's pod list realistic)."""

    nodes: int
    services: int
    endpoints_per_service: int = 2
    filler_pods_per_node: int = 0
    namespace: str = "bench"
    port: int = 8080
    probe_interval: str = "1s"
    max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE
    peers: bool = True
    # The nodes with a peer pod: None for every node, n for the first n (where a benchmark
    # runs its n agents, so that every Ready peer is an agent that really probes).
    peer_nodes: int | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.services < 0 or self.endpoints_per_service < 0:
            raise ValueError("a cluster needs a node, and no negative counts")
        if not 1 <= self.max_endpoints_per_slice <= MAX_ENDPOINTS_PER_SLICE:
            raise ValueError(f"max_endpoints_per_slice must be 1 to {MAX_ENDPOINTS_PER_SLICE}")


@dataclass
class ScaleService:
    """One opted-in Service as built: its slices' names, in order, and its endpoint pods."""

    namespace: str
    name: str
    cluster_ip: str
    slices: list[str] = field(default_factory=list)
    endpoints: int = 0


@dataclass
class ScaleCluster:
    spec: ScaleSpec
    nodes: list[str]
    services: list[ScaleService]
    pods_by_node: dict[str, list[tuple[str, str]]]  # node -> (namespace, name) of its pods
    endpoint_pods: dict[tuple[str, str], str]  # (namespace, pod) of each endpoint -> its node
    endpoint_services: dict[tuple[str, str], int]  # (namespace, pod) -> index of its Service

    @property
    def pods(self) -> int:
        return sum(len(p) for p in self.pods_by_node.values())

    @property
    def endpoints(self) -> int:
        return sum(s.endpoints for s in self.services)

    @property
    def slices(self) -> int:
        return sum(len(s.slices) for s in self.services)

    def local_endpoints(self, node: str) -> int:
        return sum(1 for n in self.endpoint_pods.values() if n == node)

    def endpoints_on(self, node: str) -> list[tuple[ScaleService, str]]:
        """The endpoints on `node`: (their Service, the pod's name)."""
        return [
            (self.services[self.endpoint_services[key]], key[1])
            for key, n in self.endpoint_pods.items()
            if n == node
        ]


def opted_in_service(spec: ScaleSpec, index: int) -> Obj:
    """Service `index`: opted in, probed over TCP every `spec.probe_interval` on its ClusterIP."""
    return service_objects.service(
        service_name(index),
        namespace=spec.namespace,
        cluster_ip=loopback(SERVICE_BLOCK, index),
        ports=(("tcp", spec.port, spec.port),),
        annotations={
            "tailwatch.io/probe-protocol": "tcp",
            "tailwatch.io/probe-interval": spec.probe_interval,
        },
    )


def unique_suffix(index: int, length: int = 5) -> str:
    """A generated-name suffix (the apiserver's alphabet) that is distinct for every index,
    where hashed suffixes of a large cluster could collide."""
    alphabet = _NAME_ALPHABET
    out = []
    for _ in range(length):
        index, digit = divmod(index, len(alphabet))
        out.append(alphabet[digit])
    return "".join(reversed(out))


def build(store: Store, spec: ScaleSpec) -> ScaleCluster:
    """Write the cluster of `spec` into `store`; returns what was built."""
    nodes = [node_name(i) for i in range(spec.nodes)]
    pods_by_node: dict[str, list[tuple[str, str]]] = {n: [] for n in nodes}
    endpoint_pods: dict[tuple[str, str], str] = {}
    endpoint_services: dict[tuple[str, str], int] = {}
    built: list[ScaleService] = []
    pod_index = 0

    def add_pod(deployment: str, node_index: int) -> Obj:
        nonlocal pod_index
        node = nodes[node_index]
        name = f"{deployment}-{objects.revision_hash(deployment)}-{unique_suffix(pod_index)}"
        pod = objects.deployment_pod(
            deployment, name=name, namespace=spec.namespace, node=node, seed=pod_index,
            pod_ip=loopback(POD_BLOCK, pod_index), host_ip=node_ip(node_index),
        )  # fmt: skip
        pod_index += 1
        stored = store.create("pods", pod)
        pods_by_node[node].append((spec.namespace, stored["metadata"]["name"]))
        return stored

    for i in range(spec.services):
        service = store.create("services", opted_in_service(spec, i))
        name = service["metadata"]["name"]
        endpoints: list[Obj] = []
        for j in range(spec.endpoints_per_service):
            node_index = (i * spec.endpoints_per_service + j) % spec.nodes
            pod = add_pod(name, node_index)
            key = (spec.namespace, pod["metadata"]["name"])
            endpoint_pods[key] = nodes[node_index]
            endpoint_services[key] = i
            endpoints.append(service_objects.endpoint_of_pod(pod))
        entry = ScaleService(spec.namespace, name, loopback(SERVICE_BLOCK, i))
        cut = spec.max_endpoints_per_slice
        for part, start in enumerate(range(0, max(1, len(endpoints)), cut)):
            body = service_objects.endpoint_slice(
                service, endpoints[start : start + cut], ports=(("tcp", spec.port),), seed=part
            )
            entry.slices.append(store.create("endpointslices", body)["metadata"]["name"])
        entry.endpoints = len(endpoints)
        built.append(entry)

    for node_index, node in enumerate(nodes):
        for f in range(spec.filler_pods_per_node):
            add_pod(f"worker-{(node_index * spec.filler_pods_per_node + f) % 97:02d}", node_index)
        if spec.peers and (spec.peer_nodes is None or node_index < spec.peer_nodes):
            peer = objects.daemonset_pod(
                PEER_DAEMONSET, name=f"{PEER_DAEMONSET}-{unique_suffix(node_index)}",
                namespace=PEER_NAMESPACE, node=node, labels=PEER_LABELS,
                pod_ip=node_ip(node_index), host_ip=node_ip(node_index),
            )  # fmt: skip
            stored = store.create("pods", peer)
            pods_by_node[node].append((PEER_NAMESPACE, stored["metadata"]["name"]))
    return ScaleCluster(spec, nodes, built, pods_by_node, endpoint_pods, endpoint_services)


# -- changes ---------------------------------------------------------------------------------


def set_endpoint_ready(
    store: Store, namespace: str, slice_name: str, index: int, ready: bool
) -> Obj:
    """Endpoint `index` of a slice becomes ready (or not): one MODIFIED event, as the
    EndpointSlice controller writes when its pod's readiness changes."""

    def change(work: Obj) -> None:
        conditions = work["endpoints"][index]["conditions"]
        conditions["ready"] = ready
        conditions["serving"] = ready

    return store.patch("endpointslices", namespace, slice_name, change)


def flip_endpoint(store: Store, namespace: str, slice_name: str, index: int = 0) -> bool:
    """Flip endpoint `index`'s readiness; returns the new value."""
    current = store.get("endpointslices", namespace, slice_name)
    ready = not current["endpoints"][index]["conditions"].get("ready", False)
    set_endpoint_ready(store, namespace, slice_name, index, ready)
    return ready


def find_endpoint(store: Store, service: ScaleService, pod: str) -> tuple[str, int]:
    """The slice and the index in it of the endpoint of `pod`."""
    for name in service.slices:
        slice_ = store.get("endpointslices", service.namespace, name)
        for index, endpoint in enumerate(slice_.get("endpoints") or []):
            if (endpoint.get("targetRef") or {}).get("name") == pod:
                return name, index
    raise KeyError(f"no endpoint of pod {pod} in {service.namespace}/{service.name}")


def delete_service(store: Store, service: ScaleService) -> int:
    """Delete the Service, then its slices (what the garbage collector does after it);
    returns the number of DELETED events written."""
    store.delete("services", service.namespace, service.name)
    for name in service.slices:
        store.delete("endpointslices", service.namespace, name)
    return 1 + len(service.slices)


def restart_container(
    store: Store,
    namespace: str,
    pod: str,
    *,
    container: str = "app",
    reason: str = "Error",
    clock: Callable[[], float] = time.time,
) -> Obj:
    """The kubelet restarts a container of a pod (one MODIFIED pod event)."""
    now = clock()

    def change(work: Obj) -> None:
        new = objects.restart_container(work, container, now, reason=reason)
        work.clear()
        work.update(new)

    return store.patch("pods", namespace, pod, change)
