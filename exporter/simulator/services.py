"""Realistic Service and EndpointSlice bodies, as the apiserver and the EndpointSlice
controller write them, for tests and the demo."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

from exporter.core.services import PROBE_LABEL
from exporter.simulator.objects import name_suffix, object_uid

Obj = dict[str, Any]
MANAGED_BY = "endpointslice-controller.k8s.io"


class _Derived:
    """The type of `DERIVED`."""


#: `service(cluster_ip=DERIVED)`, the default: the Service's own `default_cluster_ip`.
DERIVED: Final = _Derived()


def default_cluster_ip(namespace: str, name: str) -> str:
    """A ClusterIP for `namespace/name`, stable across runs. Loopback on purpose, like every
    address the simulator makes up: the agent under test probes it, and nothing may ever
    leave this machine. 127.240.0.0/12 is used by no other builder (pod IPs are in
    127.16-239, node IPs in 127.0, the scale simulator's blocks start at 127.10), and
    Services of different names get different addresses, so a simulated kube-proxy can
    listen on all of them at once."""
    d = hashlib.sha256(f"cluster-ip\x1f{namespace}\x1f{name}".encode()).digest()
    return f"127.{240 + d[0] % 16}.{d[1]}.{1 + d[2] % 254}"


def service(
    name: str,
    *,
    namespace: str = "default",
    cluster_ip: str | _Derived | None = DERIVED,
    ports: Sequence[tuple[str, int, int | str]] = (("http", 80, "http"),),
    selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    probe: bool = True,
) -> Obj:
    """A ClusterIP Service (headless with cluster_ip=None, `default_cluster_ip` unless
    given); opted in unless probe=False."""
    if isinstance(cluster_ip, _Derived):
        cluster_ip = default_cluster_ip(namespace, name)
    all_labels = {"app": name, **(labels or {})}
    if probe:
        all_labels[PROBE_LABEL] = "true"
    spec: Obj = {
        "type": "ClusterIP",
        "selector": dict(selector or {"app": name}),
        "ports": [
            {"name": pname, "port": port, "protocol": "TCP", "targetPort": target}
            for pname, port, target in ports
        ],
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
        "clusterIP": cluster_ip or "None",
        "clusterIPs": [cluster_ip or "None"],
    }
    meta: Obj = {"name": name, "namespace": namespace, "labels": all_labels}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def endpoint_of_pod(pod: Mapping[str, Any]) -> Obj:
    """The endpoint the controller derives from a pod: ready = Ready and not terminating,
    serving = Ready, terminating = deletionTimestamp set."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    ready_condition = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])
    )
    terminating = meta.get("deletionTimestamp") is not None
    return {
        "addresses": [status.get("podIP", "")],
        "conditions": {
            "ready": ready_condition and not terminating,
            "serving": ready_condition,
            "terminating": terminating,
        },
        "nodeName": spec.get("nodeName", ""),
        "targetRef": {
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", object_uid(meta["namespace"], meta["name"])),
        },
    }


def endpoint_slice(
    svc: Mapping[str, Any],
    endpoints: Sequence[Mapping[str, Any]],
    *,
    ports: Sequence[tuple[str, int]] = (("http", 8080),),
    seed: object = 0,
) -> Obj:
    """An EndpointSlice of `svc` carrying its labels, as the controller writes it."""
    meta = svc["metadata"]
    name = meta["name"]
    labels = {
        **meta.get("labels", {}),
        "kubernetes.io/service-name": name,
        "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
    }
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-{name_suffix(meta['namespace'], name, seed)}",
            "namespace": meta["namespace"],
            "labels": labels,
            "generateName": f"{name}-",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": name,
                    "uid": meta.get("uid", object_uid(meta["namespace"], name, "svc")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4",
        "endpoints": [dict(e) for e in endpoints],
        "ports": [{"name": p, "port": n, "protocol": "TCP"} for p, n in ports],
    }
