"""Realistic Pod objects: constructors and the status transitions the apiserver and kubelet make.

Used by the detector tests, the API simulator, the end-to-end tests and the demo. Every function
returns a new JSON-ready dict and never mutates its input; times are explicit epoch seconds.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict, Unpack

Pod = dict[str, Any]

# How far a constructor takes the pod: not yet bound; bound (PodScheduled); accepted by the
# kubelet with containers being created; containers running (not yet passing readiness
# probes); running and Ready.
PodState = Literal["unscheduled", "scheduled", "creating", "running", "ready"]
Runtime = Literal["containerd", "cri-o", "docker"]

EPOCH = 1_717_200_000.0  # 2024-06-01T00:00:00Z, the default creation time
RUNTIMES: tuple[Runtime, ...] = ("containerd", "cri-o", "docker")

# Messages of the DisruptionTarget condition as the component that sets it writes them.
DISRUPTION_MESSAGES: Mapping[str, str] = {
    "EvictionByEvictionAPI": "Eviction API: evicting",
    "PreemptionByScheduler": "default-scheduler: preempting to accommodate a higher priority pod",
    "DeletionByTaintManager": "Taint manager: deleting due to NoExecute taint",
    "DeletionByPodGC": "PodGC: node no longer exists",
    "TerminationByKubelet": "Pod was terminated in response to imminent node shutdown.",
}

# Exit codes that go with a termination reason when the caller does not give one.
EXIT_CODES: Mapping[str, int] = {
    "OOMKilled": 137,
    "Error": 1,
    "Completed": 0,
    "ContainerStatusUnknown": 137,
}

_TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_KUBELET_CONDITIONS = (
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
)
_TERMINAL_PHASES = ("Succeeded", "Failed")
# The kubelet's container restart back-off: 10s doubling up to 5 minutes.
_BACKOFF_INITIAL_SECONDS = 10
_BACKOFF_MAX_SECONDS = 300


# -- names, hashes, identifiers ------------------------------------------------------------

# Kubernetes' rand.SafeEncodeString alphabet: no vowels, no confusable digits.
_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def revision_hash(workload: str, revision: int = 1) -> str:
    """A pod-template-hash or ControllerRevision hash, shaped like the controllers' ones.

    The controllers hash the pod template to a 32-bit number and write its decimal digits
    through SafeEncodeString, so real hashes only use the characters 4-9, b, c, d, f.
    """
    number = int.from_bytes(_digest("revision", workload, revision)[:4], "big")
    return "".join(_ALPHANUMS[ord(ch) % len(_ALPHANUMS)] for ch in str(number))


def name_suffix(*seed: object, length: int = 5) -> str:
    """The random suffix of a generated name (generateName), deterministic from `seed`."""
    return "".join(_ALPHANUMS[b % len(_ALPHANUMS)] for b in _digest("suffix", *seed)[:length])


def object_uid(*seed: object) -> str:
    """A UUID shaped like the apiserver's metadata.uid, deterministic from `seed`."""
    return str(uuid.UUID(bytes=_digest("uid", *seed)[:16], version=4))


def container_id(uid: str, container: str, attempt: int, runtime: Runtime = "containerd") -> str:
    """`<runtime>://<64 hex>`, deterministic from pod uid, container name and attempt."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown container runtime {runtime!r}")
    return f"{runtime}://{_digest('container', uid, container, attempt).hex()}"


def default_pod_ip(uid: str) -> str:
    """A pod IP for `uid`. Loopback on purpose: nothing may ever send traffic off this machine."""
    d = _digest("pod-ip", uid)
    return f"127.{16 + d[0] % 224}.{d[1]}.{1 + d[2] % 254}"


def default_host_ip(node: str) -> str:
    """A node IP for `node`, in the loopback range for the same reason as `default_pod_ip`."""
    d = _digest("host-ip", node)
    return f"127.0.{d[0]}.{1 + d[1] % 254}"


def rfc3339(epoch: float) -> str:
    """metav1.Time as the apiserver serializes it: RFC 3339 in UTC, whole seconds."""
    return datetime.fromtimestamp(math.floor(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _go_duration(seconds: int) -> str:
    """time.Duration.String() for whole seconds: 10s, 1m20s, 5m0s."""
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _runtime_of(container_id_: str) -> Runtime:
    prefix = container_id_.split("://", 1)[0]
    for runtime in RUNTIMES:
        if prefix == runtime:
            return runtime
    return "containerd"


# -- resources and QoS ---------------------------------------------------------------------

_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))"
    r"(?:(?P<exp>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?)$"
)
_SUFFIXES: Mapping[str, Decimal] = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(text: str) -> Decimal:
    """The value of a resource.Quantity string such as `500m`, `256Mi`, `1.5` or `1e3`."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"not a quantity: {text!r}")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise ValueError(f"not a quantity: {text!r}") from exc
    if match["exp"]:
        return number * (Decimal(10) ** int(match["exp"][1:]))
    return number * _SUFFIXES[match["suffix"] or ""]


def qos_class(spec: Mapping[str, Any]) -> str:
    """The pod's QoS class, computed like the apiserver's GetPodQOS (cpu and memory only).

    Requests and limits are summed over all containers (init containers included) before
    they are compared, exactly as Kubernetes does.
    """
    requests: dict[str, Decimal] = {}
    limits: dict[str, Decimal] = {}
    guaranteed = True
    for container in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        resources = container.get("resources") or {}
        for name, quantity in (resources.get("requests") or {}).items():
            value = parse_quantity(str(quantity))
            if name in ("cpu", "memory") and value > 0:
                requests[name] = requests.get(name, Decimal(0)) + value
        found: set[str] = set()
        for name, quantity in (resources.get("limits") or {}).items():
            value = parse_quantity(str(quantity))
            if name in ("cpu", "memory") and value > 0:
                found.add(name)
                limits[name] = limits.get(name, Decimal(0)) + value
        if found != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if (
        guaranteed
        and len(requests) == len(limits)
        and all(limits.get(name) == value for name, value in requests.items())
    ):
        return "Guaranteed"
    return "Burstable"


# -- spec ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerTemplate:
    """One container of a pod spec; `requests`/`limits` are quantities by resource name."""

    name: str
    image: str = ""  # "" -> registry.example.com/apps/<name>:v<revision>
    port: int | None = None
    port_name: str = "http"
    readiness_probe: bool = False  # an HTTP GET /healthz on the named port
    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)


ContainerArg = str | ContainerTemplate


class PodOptions(TypedDict, total=False):
    """Keyword arguments shared by every constructor.

    namespace: default "default". node: the node it is bound to (default "node-1"; None
    leaves it unscheduled). labels / annotations: extra metadata. containers: names or
    templates (default one container "app" serving on 8080 with a readiness probe; by name,
    only the first container gets the port and the probe). init_containers: run-to-completion
    init containers. sidecars: native sidecars (restartable init containers, listed first in
    spec.initContainers). requests / limits: applied to every container given by name.
    uid, created (epoch seconds), pod_ip, host_ip, runtime: identity and placement.
    state: how far the pod has got (default "ready"); the status timestamps are `created`
    (+0 bound, +1 kubelet accepted, +2 containers running, +5 ready).
    grace_period_seconds (default 30), service_account (default "default"), seed: varies the
    generated name and uid deterministically.
    """

    namespace: str
    node: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    containers: Sequence[ContainerArg]
    init_containers: Sequence[ContainerArg]
    sidecars: Sequence[ContainerArg]
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    uid: str
    created: float
    pod_ip: str
    host_ip: str
    runtime: Runtime
    state: PodState
    grace_period_seconds: int
    service_account: str
    seed: object


def _pull_policy(image: str) -> str:
    # The apiserver defaults imagePullPolicy to Always for :latest or untagged images.
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _resources(requests: Mapping[str, str], limits: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = dict(limits)
    defaulted = dict(requests)
    for name, value in limits.items():
        # The apiserver defaults a missing request to the limit.
        defaulted.setdefault(name, value)
    if defaulted:
        out["requests"] = defaulted
    return out


def _templates(
    args: Sequence[ContainerArg],
    *,
    serving: bool,
    revision: int,
    requests: Mapping[str, str],
    limits: Mapping[str, str],
) -> list[ContainerTemplate]:
    out: list[ContainerTemplate] = []
    for index, arg in enumerate(args):
        if isinstance(arg, ContainerTemplate):
            template = arg
        else:
            first = serving and index == 0
            template = ContainerTemplate(
                name=arg,
                port=8080 if first else None,
                readiness_probe=first,
                requests=requests,
                limits=limits,
            )
        if not template.image:
            template = replace(
                template, image=f"registry.example.com/apps/{template.name}:v{revision}"
            )
        out.append(template)
    return out


def _container_spec(template: ContainerTemplate, *, sidecar: bool, token_volume: str) -> Pod:
    container: Pod = {
        "name": template.name,
        "image": template.image,
        "imagePullPolicy": _pull_policy(template.image),
    }
    if template.port is not None:
        container["ports"] = [
            {"containerPort": template.port, "name": template.port_name, "protocol": "TCP"}
        ]
    if template.readiness_probe:
        if template.port is None:
            raise ValueError(f"container {template.name}: a readiness probe needs a port")
        container["readinessProbe"] = {
            "failureThreshold": 3,
            "httpGet": {"path": "/healthz", "port": template.port_name, "scheme": "HTTP"},
            "periodSeconds": 5,
            "successThreshold": 1,
            "timeoutSeconds": 1,
        }
    container["resources"] = _resources(template.requests, template.limits)
    if sidecar:
        container["restartPolicy"] = "Always"
    container["terminationMessagePath"] = "/dev/termination-log"
    container["terminationMessagePolicy"] = "File"
    container["volumeMounts"] = [
        {"mountPath": _TOKEN_MOUNT, "name": token_volume, "readOnly": True}
    ]
    return container


def _default_tolerations() -> list[Pod]:
    # Added to every pod by the DefaultTolerationSeconds admission plugin.
    return [
        {
            "effect": "NoExecute",
            "key": f"node.kubernetes.io/{key}",
            "operator": "Exists",
            "tolerationSeconds": 300,
        }
        for key in ("not-ready", "unreachable")
    ]


def _daemonset_tolerations() -> list[Pod]:
    # The DaemonSet controller adds these so its pods survive node conditions.
    tolerations: list[Pod] = [
        {"effect": "NoExecute", "key": f"node.kubernetes.io/{key}", "operator": "Exists"}
        for key in ("not-ready", "unreachable")
    ]
    tolerations += [
        {"effect": "NoSchedule", "key": f"node.kubernetes.io/{key}", "operator": "Exists"}
        for key in ("disk-pressure", "memory-pressure", "pid-pressure", "unschedulable")
    ]
    return tolerations


def _build(
    *,
    name: str,
    generate_name: str | None,
    labels: Mapping[str, str],
    owner: Pod | None,
    restart_policy: str,
    revision: int,
    serving: bool,
    tolerations: list[Pod],
    extra_spec: Mapping[str, Any] | None,
    extra_annotations: Mapping[str, str] | None,
    finalizers: Sequence[str] = (),
    options: PodOptions,
) -> Pod:
    namespace = options.get("namespace", "default")
    node = options.get("node", "node-1")
    created = options.get("created", EPOCH)
    seed = options.get("seed", 0)
    uid = options.get("uid") or object_uid(namespace, name, seed, created)
    requests = options.get("requests", {})
    limits = options.get("limits", {})
    state = options.get("state", "ready")
    token_volume = f"kube-api-access-{name_suffix('token', uid)}"

    def templates(args: Sequence[ContainerArg], serving_: bool) -> list[ContainerTemplate]:
        return _templates(
            args, serving=serving_, revision=revision, requests=requests, limits=limits
        )

    main = templates(options.get("containers", ("app",)), serving)
    sidecars = templates(options.get("sidecars", ()), False)
    inits = templates(options.get("init_containers", ()), False)
    names = [t.name for t in [*sidecars, *inits, *main]]
    if len(set(names)) != len(names) or not main:
        raise ValueError(f"container names must be unique and non-empty: {names}")

    metadata: Pod = {"name": name, "namespace": namespace, "uid": uid}
    if generate_name:
        metadata["generateName"] = generate_name
    metadata["creationTimestamp"] = rfc3339(created)
    metadata["labels"] = {**labels, **options.get("labels", {})}
    annotations = {**(extra_annotations or {}), **options.get("annotations", {})}
    if annotations:
        metadata["annotations"] = annotations
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    if finalizers:
        metadata["finalizers"] = list(finalizers)

    service_account = options.get("service_account", "default")
    spec: Pod = {
        "containers": [_container_spec(t, sidecar=False, token_volume=token_volume) for t in main],
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
    }
    if sidecars or inits:
        spec["initContainers"] = [
            *(_container_spec(t, sidecar=True, token_volume=token_volume) for t in sidecars),
            *(_container_spec(t, sidecar=False, token_volume=token_volume) for t in inits),
        ]
    spec.update(
        {
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": restart_policy,
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": service_account,
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": options.get("grace_period_seconds", 30),
            "tolerations": tolerations,
            "volumes": [
                {
                    "name": token_volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    "name": "kube-root-ca.crt",
                                }
                            },
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "fieldRef": {
                                                "apiVersion": "v1",
                                                "fieldPath": "metadata.namespace",
                                            },
                                            "path": "namespace",
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                }
            ],
        }
    )
    if extra_spec:
        spec.update(extra_spec)
    # The apiserver computes qosClass when it admits the pod.
    pod: Pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": qos_class(spec)},
    }

    if state == "unscheduled":
        return pod
    if node is None:
        raise ValueError(f"state {state!r} needs a node")
    pod = schedule(pod, node, created)
    if state in ("creating", "running", "ready"):
        pod = containers_creating(pod, created + 1, host_ip=options.get("host_ip"))
    if state in ("running", "ready"):
        pod = containers_running(
            pod,
            created + 2,
            pod_ip=options.get("pod_ip"),
            runtime=options.get("runtime", "containerd"),
        )
    if state == "ready":
        pod = mark_ready(pod, created + 5)
    return pod


def _controller_ref(api_version: str, kind: str, name: str, uid: str) -> Pod:
    return {
        "apiVersion": api_version,
        "blockOwnerDeletion": True,
        "controller": True,
        "kind": kind,
        "name": name,
        "uid": uid,
    }


# -- constructors ------------------------------------------------------------------------------


def deployment_pod(
    deployment: str,
    *,
    revision: int = 1,
    name: str | None = None,
    **options: Unpack[PodOptions],
) -> Pod:
    """A pod of Deployment `deployment`, owned by ReplicaSet `<deployment>-<pod-template-hash>`.

    `revision` selects the pod template (a new revision is a rollout: a new hash, a new
    ReplicaSet and a new image tag).
    """
    namespace = options.get("namespace", "default")
    template_hash = revision_hash(deployment, revision)
    replicaset = f"{deployment}-{template_hash}"
    pod_name = name or f"{replicaset}-{name_suffix(namespace, replicaset, options.get('seed', 0))}"
    return _build(
        name=pod_name,
        generate_name=f"{replicaset}-",
        labels={"app": deployment, "pod-template-hash": template_hash},
        owner=_controller_ref(
            "apps/v1", "ReplicaSet", replicaset, object_uid(namespace, replicaset)
        ),
        restart_policy="Always",
        revision=revision,
        serving=True,
        tolerations=_default_tolerations(),
        extra_spec=None,
        extra_annotations=None,
        options=options,
    )


def statefulset_pod(
    statefulset: str,
    ordinal: int,
    *,
    revision: int = 1,
    service_name: str | None = None,
    **options: Unpack[PodOptions],
) -> Pod:
    """Pod `<statefulset>-<ordinal>` with controller-revision-hash `<statefulset>-<hash>`."""
    namespace = options.get("namespace", "default")
    name = f"{statefulset}-{ordinal}"
    return _build(
        name=name,
        generate_name=None,
        labels={
            "app": statefulset,
            "apps.kubernetes.io/pod-index": str(ordinal),
            "controller-revision-hash": f"{statefulset}-{revision_hash(statefulset, revision)}",
            "statefulset.kubernetes.io/pod-name": name,
        },
        owner=_controller_ref(
            "apps/v1", "StatefulSet", statefulset, object_uid(namespace, statefulset)
        ),
        restart_policy="Always",
        revision=revision,
        serving=True,
        tolerations=_default_tolerations(),
        extra_spec={"hostname": name, "subdomain": service_name or statefulset},
        extra_annotations=None,
        options=options,
    )


def daemonset_pod(
    daemonset: str,
    *,
    revision: int = 1,
    name: str | None = None,
    **options: Unpack[PodOptions],
) -> Pod:
    """A pod of DaemonSet `daemonset` pinned to its node, with controller-revision-hash."""
    namespace = options.get("namespace", "default")
    node = options.get("node", "node-1")
    if node is None:
        raise ValueError("a DaemonSet pod is made for one node: give node=")
    pod_name = (
        name or f"{daemonset}-{name_suffix(namespace, daemonset, node, options.get('seed', 0))}"
    )
    # The DaemonSet controller pins each pod to its node with a required node affinity.
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
                ]
            }
        }
    }
    return _build(
        name=pod_name,
        generate_name=f"{daemonset}-",
        labels={
            "app": daemonset,
            "controller-revision-hash": revision_hash(daemonset, revision),
            "pod-template-generation": str(revision),
        },
        owner=_controller_ref("apps/v1", "DaemonSet", daemonset, object_uid(namespace, daemonset)),
        restart_policy="Always",
        revision=revision,
        serving=True,
        tolerations=_daemonset_tolerations(),
        extra_spec={"affinity": affinity},
        extra_annotations=None,
        options=options,
    )


def job_pod(
    job: str,
    *,
    completion_index: int | None = None,
    restart_policy: Literal["Never", "OnFailure"] = "Never",
    name: str | None = None,
    **options: Unpack[PodOptions],
) -> Pod:
    """A pod of Job `job` with the batch.kubernetes.io labels (and index of an Indexed Job)."""
    namespace = options.get("namespace", "default")
    job_uid = object_uid(namespace, job)
    prefix = f"{job}-" if completion_index is None else f"{job}-{completion_index}-"
    pod_name = name or f"{prefix}{name_suffix(namespace, prefix, options.get('seed', 0))}"
    labels = {
        "batch.kubernetes.io/controller-uid": job_uid,
        "batch.kubernetes.io/job-name": job,
        "controller-uid": job_uid,
        "job-name": job,
    }
    annotations: dict[str, str] = {}
    extra_spec: dict[str, Any] = {}
    if completion_index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(completion_index)
        annotations["batch.kubernetes.io/job-completion-index"] = str(completion_index)
        extra_spec = {"hostname": f"{job}-{completion_index}"}
    if "containers" not in options:
        options = {**options, "containers": ("worker",)}
    return _build(
        name=pod_name,
        generate_name=prefix,
        labels=labels,
        owner=_controller_ref("batch/v1", "Job", job, job_uid),
        restart_policy=restart_policy,
        revision=1,
        serving=False,
        tolerations=_default_tolerations(),
        extra_spec=extra_spec,
        extra_annotations=annotations,
        finalizers=("batch.kubernetes.io/job-tracking",),
        options=options,
    )


def bare_pod(name: str, **options: Unpack[PodOptions]) -> Pod:
    """A pod with no controller (workload kind "Pod")."""
    return _build(
        name=name,
        generate_name=None,
        labels={"app": name},
        owner=None,
        restart_policy="Always",
        revision=1,
        serving=True,
        tolerations=_default_tolerations(),
        extra_spec=None,
        extra_annotations=None,
        options=options,
    )


# -- status helpers ----------------------------------------------------------------------------


def _copy(pod: Mapping[str, Any]) -> Pod:
    return copy.deepcopy(dict(pod))


def _statuses(status: Mapping[str, Any]) -> list[Pod]:
    return [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]


def _container_specs(spec: Mapping[str, Any]) -> dict[str, Pod]:
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec.get("containers", [])]}


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def _find_status(pod: Pod, container: str) -> Pod:
    for status in _statuses(pod["status"]):
        if status["name"] == container:
            return status
    raise ValueError(f"pod {pod['metadata']['name']} has no status for container {container!r}")


def _image_id(image: str, runtime: Runtime) -> str:
    repository = image.split("@", 1)[0]
    head, _, last = repository.rpartition("/")
    repository = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    reference = f"{repository}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"
    # cri-dockerd reports pulled images with this scheme; containerd and CRI-O do not.
    return f"docker-pullable://{reference}" if runtime == "docker" else reference


def _waiting_status(container: Mapping[str, Any], reason: str) -> Pod:
    return {
        "image": container["image"],
        "imageID": "",
        "lastState": {},
        "name": container["name"],
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"waiting": {"reason": reason}},
    }


def _start(
    status: Pod, container: Mapping[str, Any], uid: str, now: float, runtime: Runtime
) -> None:
    """Mark `status` as a freshly started container (a new containerID for this attempt)."""
    status["containerID"] = container_id(uid, status["name"], status["restartCount"], runtime)
    status["imageID"] = _image_id(container["image"], runtime)
    status["state"] = {"running": {"startedAt": rfc3339(now)}}
    status["started"] = True
    # Without a readiness probe the kubelet reports a running container ready at once.
    status["ready"] = "readinessProbe" not in container


def _terminate(status: Pod, now: float, reason: str, exit_code: int) -> Pod:
    """The `terminated` state of the container `status` currently describes, finishing now."""
    running = status["state"].get("running") or {}
    terminated: Pod = {
        "containerID": status.get("containerID", ""),
        "exitCode": exit_code,
        "finishedAt": rfc3339(now),
        "reason": reason,
        "startedAt": running.get("startedAt", rfc3339(now)),
    }
    return terminated


def _condition(
    old: Mapping[str, Any] | None,
    ctype: str,
    status: str,
    now: float,
    *,
    reason: str | None = None,
    message: str | None = None,
) -> Pod:
    # lastTransitionTime moves only when the status changes, as the kubelet keeps it.
    same = old is not None and old.get("status") == status and old.get("lastTransitionTime")
    condition: Pod = {
        "lastProbeTime": None,
        "lastTransitionTime": old["lastTransitionTime"] if same and old else rfc3339(now),
        "status": status,
        "type": ctype,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _names(names: Sequence[str]) -> str:
    return "[" + " ".join(names) + "]"  # Go's %s of a []string


def _initialized(
    spec: Mapping[str, Any], statuses: Mapping[str, Pod], phase: str
) -> tuple[str, str | None, str | None]:
    unknown: list[str] = []
    incomplete: list[str] = []
    for container in spec.get("initContainers", []):
        status = statuses.get(container["name"])
        if status is None:
            unknown.append(container["name"])
        elif _is_sidecar(container):
            if not status.get("started"):
                incomplete.append(container["name"])
        elif (status["state"].get("terminated") or {}).get("exitCode", -1) != 0:
            incomplete.append(container["name"])
    if phase == "Succeeded" and not unknown:
        return "True", "PodCompleted", None
    # A regular container that ever started means the pod was initialized before (a sidecar
    # restarting later does not un-initialize it).
    regular = {c["name"] for c in spec.get("containers", [])}
    for name, status in statuses.items():
        if name in regular and ("running" in status["state"] or "terminated" in status["state"]):
            return "True", None, None
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_names(unknown)}")
    if incomplete:
        messages.append(f"containers with incomplete status: {_names(incomplete)}")
    if messages:
        return "False", "ContainersNotInitialized", ", ".join(messages)
    return "True", None, None


def _containers_ready(
    spec: Mapping[str, Any], statuses: Mapping[str, Pod], phase: str
) -> tuple[str, str | None, str | None]:
    unknown: list[str] = []
    unready: list[str] = []
    relevant = [c for c in spec.get("initContainers", []) if _is_sidecar(c)]
    for container in [*relevant, *spec.get("containers", [])]:
        status = statuses.get(container["name"])
        if status is None:
            unknown.append(container["name"])
        elif not status.get("ready"):
            unready.append(container["name"])
    if phase == "Succeeded" and not unknown:
        return "False", "PodCompleted", None
    if phase == "Failed":
        return "False", "PodFailed", None
    messages = []
    if unknown:
        messages.append(f"containers with unknown status: {_names(unknown)}")
    if unready:
        messages.append(f"containers with unready status: {_names(unready)}")
    if messages:
        return "False", "ContainersNotReady", ", ".join(messages)
    return "True", None, None


def _refresh_conditions(pod: Pod, now: float) -> None:
    """Recompute the kubelet-owned conditions from the container statuses, like the kubelet.

    Conditions others own (DisruptionTarget, readiness gates) keep their place in front, as
    the kubelet's status merge leaves them.
    """
    spec, status = pod["spec"], pod["status"]
    old = status.get("conditions", [])
    by_type = {c["type"]: c for c in old}
    if "startTime" not in status:
        return  # the kubelet has not reported yet
    phase = status.get("phase", "Pending")
    statuses = {s["name"]: s for s in _statuses(status)}
    sandbox = "True" if status.get("podIP") and phase not in _TERMINAL_PHASES else "False"
    ready = _containers_ready(spec, statuses, phase)
    wanted = {
        "PodReadyToStartContainers": (sandbox, None, None),
        "Initialized": _initialized(spec, statuses, phase),
        "Ready": ready,
        "ContainersReady": ready,
        "PodScheduled": ("True", None, None),
    }
    conditions = [c for c in old if c["type"] not in _KUBELET_CONDITIONS]
    for ctype in _KUBELET_CONDITIONS:
        if ctype == "PodScheduled" and ctype in by_type:
            conditions.append(by_type[ctype])
            continue
        cstatus, reason, message = wanted[ctype]
        conditions.append(
            _condition(by_type.get(ctype), ctype, cstatus, now, reason=reason, message=message)
        )
    status["conditions"] = conditions


def _put_condition(
    pod: Pod,
    ctype: str,
    cstatus: str,
    now: float,
    *,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    conditions: list[Pod] = pod["status"].setdefault("conditions", [])
    for index, existing in enumerate(conditions):
        if existing["type"] == ctype:
            conditions[index] = _condition(
                existing, ctype, cstatus, now, reason=reason, message=message
            )
            return
    # A condition owned by someone other than the kubelet goes before the kubelet's ones.
    position = len(conditions)
    for index, existing in enumerate(conditions):
        if existing["type"] in _KUBELET_CONDITIONS and ctype not in _KUBELET_CONDITIONS:
            position = index
            break
    conditions.insert(
        position, _condition(None, ctype, cstatus, now, reason=reason, message=message)
    )


def _exit_code(reason: str, exit_code: int | None) -> int:
    if exit_code is not None:
        return exit_code
    return EXIT_CODES.get(reason, 1)


# -- transitions -------------------------------------------------------------------------------


def schedule(pod: Mapping[str, Any], node: str, now: float) -> Pod:
    """The scheduler binds the pod to `node`: spec.nodeName and PodScheduled=True."""
    new = _copy(pod)
    new["spec"]["nodeName"] = node
    _put_condition(new, "PodScheduled", "True", now)
    return new


def unschedulable(
    pod: Mapping[str, Any],
    now: float,
    message: str = (
        "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: "
        "3 No preemption victims found for incoming pod."
    ),
) -> Pod:
    """The scheduler found no node: PodScheduled=False, reason Unschedulable."""
    new = _copy(pod)
    _put_condition(new, "PodScheduled", "False", now, reason="Unschedulable", message=message)
    return new


def containers_creating(pod: Mapping[str, Any], now: float, *, host_ip: str | None = None) -> Pod:
    """The kubelet accepted the pod: startTime, hostIP, containers waiting to be created."""
    new = _copy(pod)
    node = new["spec"].get("nodeName")
    if not node:
        raise ValueError("the kubelet only reports pods bound to its node: schedule() first")
    status = new["status"]
    host = host_ip or default_host_ip(node)
    status["hostIP"] = host
    status["hostIPs"] = [{"ip": host}]
    status["startTime"] = rfc3339(now)
    status["phase"] = "Pending"
    inits = new["spec"].get("initContainers", [])
    # With init containers the kubelet's default waiting reason is PodInitializing.
    reason = "PodInitializing" if inits else "ContainerCreating"
    if inits:
        status["initContainerStatuses"] = [_waiting_status(c, reason) for c in inits]
    status["containerStatuses"] = [_waiting_status(c, reason) for c in new["spec"]["containers"]]
    _refresh_conditions(new, now)
    return new


def containers_running(
    pod: Mapping[str, Any],
    now: float,
    *,
    pod_ip: str | None = None,
    runtime: Runtime = "containerd",
) -> Pod:
    """Init containers completed, sidecars and containers running; phase Running, podIP set.

    Containers with a readiness probe start not ready (see `mark_ready`).
    """
    new = _copy(pod) if "startTime" in pod.get("status", {}) else containers_creating(pod, now)
    uid = new["metadata"]["uid"]
    specs = _container_specs(new["spec"])
    status = new["status"]
    for container_status in status.get("initContainerStatuses", []):
        container = specs[container_status["name"]]
        _start(container_status, container, uid, now, runtime)
        if not _is_sidecar(container):
            container_status["state"] = {
                "terminated": _terminate(container_status, now, "Completed", 0)
            }
            container_status["ready"] = False
            container_status["started"] = False
    for container_status in status.get("containerStatuses", []):
        _start(container_status, specs[container_status["name"]], uid, now, runtime)
    ip = pod_ip or default_pod_ip(uid)
    status["podIP"] = ip
    status["podIPs"] = [{"ip": ip}]
    status["phase"] = "Running"
    _refresh_conditions(new, now)
    return new


def _set_ready(
    pod: Mapping[str, Any], now: float, containers: Sequence[str] | None, ready: bool
) -> Pod:
    new = _copy(pod)
    for status in _statuses(new["status"]):
        if containers is not None and status["name"] not in containers:
            continue
        if ready and "running" not in status["state"]:
            if containers is not None:
                raise ValueError(f"container {status['name']} is not running; it cannot be ready")
            continue
        status["ready"] = ready
    if containers is not None:
        known = {s["name"] for s in _statuses(new["status"])}
        missing = set(containers) - known
        if missing:
            raise ValueError(f"no status for containers {sorted(missing)}")
    _refresh_conditions(new, now)
    return new


def mark_ready(pod: Mapping[str, Any], now: float, containers: Sequence[str] | None = None) -> Pod:
    """Readiness probes pass: the named (default: all running) containers become ready."""
    return _set_ready(pod, now, containers, True)


def mark_not_ready(
    pod: Mapping[str, Any], now: float, containers: Sequence[str] | None = None
) -> Pod:
    """Readiness probes fail: the named (default: all) containers become not ready."""
    return _set_ready(pod, now, containers, False)


def restart_container(
    pod: Mapping[str, Any],
    container: str,
    now: float,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
) -> Pod:
    """The container exited and the kubelet started it again.

    From a running container: lastState.terminated records it (`reason`, default "Error",
    with its usual exit code: OOMKilled 137, Error 1, Completed 0). From CrashLoopBackOff the
    dead container is already in lastState, so `reason` must not be given. Either way
    restartCount grows by one and the new container gets a new containerID.
    """
    new = _copy(pod)
    status = _find_status(new, container)
    spec = _container_specs(new["spec"])[container]
    state = status["state"]
    if "running" in state:
        why = reason or "Error"
        status["lastState"] = {
            "terminated": _terminate(status, now, why, _exit_code(why, exit_code))
        }
    elif "waiting" in state and "terminated" in status.get("lastState", {}):
        if reason is not None or exit_code is not None:
            raise ValueError("the container already terminated: its reason is in lastState")
    else:
        raise ValueError(f"container {container} is neither running nor backing off")
    runtime = _runtime_of(status.get("containerID", ""))
    status["restartCount"] += 1
    _start(status, spec, new["metadata"]["uid"], now, runtime)
    new["status"]["phase"] = "Running"
    _refresh_conditions(new, now)
    return new


def crash_loop_back_off(
    pod: Mapping[str, Any],
    container: str,
    now: float,
    *,
    reason: str = "Error",
    exit_code: int | None = None,
) -> Pod:
    """The running container exited and the kubelet holds its restart back (CrashLoopBackOff).

    state.waiting carries the kubelet's back-off message; lastState.terminated the exit;
    restartCount only grows when the back-off ends (`restart_container`).
    """
    new = _copy(pod)
    status = _find_status(new, container)
    if "running" not in status["state"]:
        raise ValueError(f"container {container} is not running")
    status["lastState"] = {
        "terminated": _terminate(status, now, reason, _exit_code(reason, exit_code))
    }
    # The back-off doubles with each restart: 10s before the second restart, then 20s, ...
    backoff = min(
        _BACKOFF_INITIAL_SECONDS * 2 ** max(status["restartCount"] - 1, 0), _BACKOFF_MAX_SECONDS
    )
    meta = new["metadata"]
    status["state"] = {
        "waiting": {
            "message": (
                f"back-off {_go_duration(backoff)} restarting failed container={container} "
                f"pod={meta['name']}_{meta['namespace']}({meta['uid']})"
            ),
            "reason": "CrashLoopBackOff",
        }
    }
    status["ready"] = False
    status["started"] = False
    _refresh_conditions(new, now)
    return new


def disruption_target(
    pod: Mapping[str, Any], reason: str, now: float, message: str | None = None
) -> Pod:
    """Add the DisruptionTarget=True condition the evicting component writes (Kubernetes 1.26+)."""
    new = _copy(pod)
    text = message if message is not None else DISRUPTION_MESSAGES.get(reason, "")
    _put_condition(new, "DisruptionTarget", "True", now, reason=reason, message=text or None)
    return new


def begin_termination(
    pod: Mapping[str, Any],
    now: float,
    *,
    grace_period_seconds: int | None = None,
    disruption: str | None = None,
    message: str | None = None,
) -> Pod:
    """Graceful deletion starts: deletionTimestamp = now + grace, deletionGracePeriodSeconds.

    With `disruption` (EvictionByEvictionAPI, PreemptionByScheduler, DeletionByTaintManager,
    ...) the DisruptionTarget condition is set first, as those components do before deleting.
    """
    new = disruption_target(pod, disruption, now, message) if disruption else _copy(pod)
    grace = grace_period_seconds
    if grace is None:
        grace = int(new["spec"].get("terminationGracePeriodSeconds", 30))
    new["metadata"]["deletionTimestamp"] = rfc3339(now + grace)
    new["metadata"]["deletionGracePeriodSeconds"] = grace
    return new


def evict_by_kubelet(
    pod: Mapping[str, Any],
    now: float,
    *,
    resource: str = "memory",
    threshold: str = "100Mi",
    available: str = "62Mi",
    usage: Mapping[str, str] | None = None,
    container_reason: str = "Error",
    exit_code: int = 137,
) -> Pod:
    """Node-pressure eviction: phase Failed, reason Evicted, containers killed.

    `usage` names the containers that used more than they requested (container -> quantity)
    for the message. The kubelet sets DisruptionTarget TerminationByKubelet with the same
    message. Hard eviction kills with a 1 s grace, hence the default exit code 137.
    """
    new = _copy(pod)
    message = (
        f"The node was low on resource: {resource}. "
        f"Threshold quantity: {threshold}, available: {available}. "
    )
    specs = _container_specs(new["spec"])
    for name, used in (usage or {}).items():
        if name not in specs:
            raise ValueError(f"no container {name!r}")
        request = (specs[name].get("resources", {}).get("requests") or {}).get(resource, "0")
        message += (
            f"Container {name} was using {used}, request is {request}, "
            f"has larger consumption of {resource}. "
        )
    status = new["status"]
    status["phase"] = "Failed"
    status["reason"] = "Evicted"
    status["message"] = message
    for container_status in _statuses(status):
        if "running" in container_status["state"]:
            container_status["state"] = {
                "terminated": _terminate(container_status, now, container_reason, exit_code)
            }
        container_status["ready"] = False
        container_status["started"] = False
    _put_condition(
        new, "DisruptionTarget", "True", now, reason="TerminationByKubelet", message=message
    )
    _refresh_conditions(new, now)
    return new


def complete(pod: Mapping[str, Any], now: float) -> Pod:
    """Every container exited 0 (sidecars are stopped after them): phase Succeeded."""
    new = _copy(pod)
    status = new["status"]
    for container_status in _statuses(status):
        if "running" in container_status["state"]:
            container_status["state"] = {
                "terminated": _terminate(container_status, now, "Completed", 0)
            }
        container_status["ready"] = False
        container_status["started"] = False
    status["phase"] = "Succeeded"
    _refresh_conditions(new, now)
    return new


# -- nodes -------------------------------------------------------------------------------------

Node = dict[str, Any]

# The kubelet's node conditions, by type: (reason, message) when True and when False.
_NODE_CONDITIONS: Mapping[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "MemoryPressure": (
        ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
        ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ),
    "DiskPressure": (
        ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ),
    "PIDPressure": (
        ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ),
    "Ready": (
        ("KubeletReady", "kubelet is posting ready status"),
        ("KubeletNotReady", "container runtime network not ready: NetworkReady=false"),
    ),
}
# The taints the node lifecycle controller mirrors the conditions as (a moment after them).
PRESSURE_TAINTS: Mapping[str, str] = {
    "MemoryPressure": "node.kubernetes.io/memory-pressure",
    "DiskPressure": "node.kubernetes.io/disk-pressure",
    "PIDPressure": "node.kubernetes.io/pid-pressure",
}
PRESSURE_CONDITIONS: Mapping[str, str] = {
    "memory": "MemoryPressure",
    "ephemeral-storage": "DiskPressure",
    "nodefs": "DiskPressure",
    "imagefs": "DiskPressure",
    "pids": "PIDPressure",
}
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"


def node(
    name: str,
    *,
    ip: str | None = None,
    zone: str = "zone-a",
    now: float = EPOCH,
    cpu: str = "8",
    memory: str = "32Gi",
    kubelet_version: str = "v1.30.2",
) -> Node:
    """A Node as a healthy kubelet registers it: Ready, no pressure, schedulable. `ip` is its
    InternalIP, loopback by default (`default_host_ip`), so nothing can reach past this
    machine."""
    address = ip or default_host_ip(name)
    conditions = [
        _condition(None, ctype, "True" if ctype == "Ready" else "False", now,
                   reason=(true if ctype == "Ready" else false)[0],
                   message=(true if ctype == "Ready" else false)[1])
        for ctype, (true, false) in _NODE_CONDITIONS.items()
    ]  # fmt: skip
    for condition in conditions:
        del condition["lastProbeTime"]
        condition["lastHeartbeatTime"] = condition["lastTransitionTime"]
    allocatable_memory = parse_quantity(memory) - parse_quantity("800Mi")
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": object_uid("node", name),
            "creationTimestamp": rfc3339(now - 86400),
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": zone,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": address},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": {
                "cpu": f"{int(parse_quantity(cpu) * 1000) - 100}m",
                "ephemeral-storage": "95491281146",
                "memory": f"{int(allocatable_memory / 1024)}Ki",
                "pods": "110",
            },
            "capacity": {
                "cpu": cpu,
                "ephemeral-storage": "103609120Ki",
                "memory": memory,
                "pods": "110",
            },
            "conditions": conditions,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": object_uid("boot", name),
                "containerRuntimeVersion": "containerd://1.7.18",
                "kernelVersion": "6.1.0-21-cloud-amd64",
                "kubeProxyVersion": kubelet_version,
                "kubeletVersion": kubelet_version,
                "machineID": _digest("machine", name).hex()[:32],
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": object_uid("system", name),
            },
        },
    }


def _node_condition_list(node_: Node) -> list[Node]:
    conditions: list[Node] = node_.setdefault("status", {}).setdefault("conditions", [])
    return conditions


def set_node_condition(
    node_: Mapping[str, Any],
    ctype: str,
    status: str,
    now: float,
    *,
    reason: str | None = None,
    message: str | None = None,
) -> Node:
    """The kubelet (or, for Ready=Unknown, the node controller) sets a condition: its
    lastTransitionTime moves when its status changes; the kubelet's own writes also move
    lastHeartbeatTime, the node controller's do not."""
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status {status!r}")
    new = _copy(node_)
    if ctype in _NODE_CONDITIONS and (reason is None or message is None):
        true, false = _NODE_CONDITIONS[ctype]
        default = true if status == "True" else false
        if ctype == "Ready" and status == "Unknown":
            default = ("NodeStatusUnknown", "Kubelet stopped posting node status.")
        reason = default[0] if reason is None else reason
        message = default[1] if message is None else message
    conditions = _node_condition_list(new)
    old = next((c for c in conditions if c.get("type") == ctype), None)
    condition = _condition(old, ctype, status, now, reason=reason, message=message)
    del condition["lastProbeTime"]
    heartbeat = old.get("lastHeartbeatTime") if old and status == "Unknown" else None
    condition["lastHeartbeatTime"] = heartbeat or rfc3339(now)
    if old is None:
        conditions.append(condition)
    else:
        conditions[conditions.index(old)] = condition
    return new


def add_taint(
    node_: Mapping[str, Any], key: str, effect: str, now: float, *, value: str | None = None
) -> Node:
    """A taint on the node (once per key and effect); NoExecute taints get timeAdded, as the
    API server sets it."""
    if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"taint effect {effect!r}")
    new = _copy(node_)
    taints: list[Node] = new.setdefault("spec", {}).setdefault("taints", [])
    if any(t["key"] == key and t["effect"] == effect for t in taints):
        return new
    taint: Node = {"key": key, "effect": effect}
    if value is not None:
        taint["value"] = value
    if effect == "NoExecute":
        taint["timeAdded"] = rfc3339(now)
    taints.append(taint)
    return new


def remove_taint(node_: Mapping[str, Any], key: str, effect: str | None = None) -> Node:
    """The node loses the taint `key` (of `effect`, or of any effect)."""
    new = _copy(node_)
    spec = new.setdefault("spec", {})
    kept = [
        t for t in spec.get("taints", [])
        if not (t["key"] == key and (effect is None or t["effect"] == effect))
    ]  # fmt: skip
    if kept:
        spec["taints"] = kept
    else:
        spec.pop("taints", None)
    return new


def node_pressure(node_: Mapping[str, Any], ctype: str, now: float, *, under: bool = True) -> Node:
    """The kubelet reports `ctype` (MemoryPressure, DiskPressure, PIDPressure) True (`under`)
    or False again, and the node controller mirrors it as its NoSchedule taint."""
    if ctype not in PRESSURE_TAINTS:
        raise ValueError(f"not a pressure condition: {ctype!r}")
    new = set_node_condition(node_, ctype, "True" if under else "False", now)
    taint = PRESSURE_TAINTS[ctype]
    return add_taint(new, taint, "NoSchedule", now) if under else remove_taint(new, taint)


def node_not_ready(node_: Mapping[str, Any], now: float, *, unreachable: bool = False) -> Node:
    """The node goes NotReady: the kubelet reports Ready=False (`unreachable`: it stopped
    posting, and the node controller sets Ready=Unknown); the node controller taints it
    not-ready (or unreachable), NoSchedule and NoExecute."""
    new = set_node_condition(node_, "Ready", "Unknown" if unreachable else "False", now)
    key = "node.kubernetes.io/unreachable" if unreachable else "node.kubernetes.io/not-ready"
    return add_taint(add_taint(new, key, "NoSchedule", now), key, "NoExecute", now)


def node_ready(node_: Mapping[str, Any], now: float) -> Node:
    """The kubelet posts Ready=True again; the node controller lifts its not-ready taints."""
    new = set_node_condition(node_, "Ready", "True", now)
    new = remove_taint(new, "node.kubernetes.io/not-ready")
    return remove_taint(new, "node.kubernetes.io/unreachable")


def cordon(node_: Mapping[str, Any], now: float) -> Node:
    """kubectl cordon: spec.unschedulable, and the node controller's unschedulable taint."""
    new = _copy(node_)
    new.setdefault("spec", {})["unschedulable"] = True
    return add_taint(new, UNSCHEDULABLE_TAINT, "NoSchedule", now)


def uncordon(node_: Mapping[str, Any], now: float) -> Node:
    """kubectl uncordon: spec.unschedulable cleared, and the taint with it."""
    new = remove_taint(node_, UNSCHEDULABLE_TAINT)
    new.setdefault("spec", {}).pop("unschedulable", None)
    return new


def node_heartbeat(node_: Mapping[str, Any], now: float) -> Node:
    """The kubelet's periodic status update: every condition's lastHeartbeatTime moves,
    nothing else changes."""
    new = _copy(node_)
    for condition in _node_condition_list(new):
        if condition.get("status") != "Unknown":
            condition["lastHeartbeatTime"] = rfc3339(now)
    return new
