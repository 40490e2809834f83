"""The Pod factories of exporter.simulator.objects: schema-valid and shaped like the real thing."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import kubernetes_validate
import pytest

from exporter.simulator import objects as o
from tests.core.kube_schema import SUPPORTED_VERSIONS, validate_pod

T0 = o.EPOCH
Pod = dict[str, Any]

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
CONTAINER_ID = re.compile(r"^(containerd|cri-o|docker)://[0-9a-f]{64}$")
TIME_FIELDS = {
    "creationTimestamp",
    "deletionTimestamp",
    "lastTransitionTime",
    "startTime",
    "startedAt",
    "finishedAt",
}
HASH_CHARS = set("456789bcdf")  # SafeEncodeString of decimal digits


def _running_deploy(**kw: Any) -> Pod:
    return o.deployment_pod("checkout", **kw)


def _terminating(reason: str) -> Callable[[], Pod]:
    return lambda: o.begin_termination(_running_deploy(), T0 + 60, disruption=reason)


def _scenarios() -> dict[str, Callable[[], Pod]]:
    """One builder per factory and per transition, each returning the object to check."""
    full = dict(
        sidecars=["istio-proxy"],
        init_containers=["migrate"],
        limits={"cpu": "500m", "memory": "256Mi"},
    )
    return {
        "deployment ready": _running_deploy,
        "deployment unscheduled": lambda: _running_deploy(state="unscheduled"),
        "deployment scheduled": lambda: _running_deploy(state="scheduled"),
        "deployment creating with inits": lambda: _running_deploy(state="creating", **full),
        "deployment running with inits": lambda: _running_deploy(state="running", **full),
        "deployment ready with sidecar": lambda: _running_deploy(**full),
        "deployment cri-o": lambda: _running_deploy(runtime="cri-o"),
        "deployment docker": lambda: _running_deploy(runtime="docker"),
        "deployment burstable": lambda: _running_deploy(requests={"cpu": "100m"}),
        "deployment explicit ips": lambda: _running_deploy(
            pod_ip="127.9.0.7", host_ip="127.0.0.9", uid="0f0f0f0f-0000-4000-8000-000000000001"
        ),
        "statefulset": lambda: o.statefulset_pod("web", 2, service_name="web-headless"),
        "daemonset": lambda: o.daemonset_pod("node-agent", node="node-7"),
        "job": lambda: o.job_pod("backup"),
        "indexed job": lambda: o.job_pod("render", completion_index=3, restart_policy="OnFailure"),
        "bare pod": lambda: o.bare_pod("debug", namespace="tools", labels={"team": "sre"}),
        "schedule": lambda: o.schedule(_running_deploy(state="unscheduled"), "node-2", T0 + 3),
        "unschedulable": lambda: o.unschedulable(_running_deploy(state="unscheduled"), T0 + 3),
        "not ready": lambda: o.mark_not_ready(_running_deploy(), T0 + 60),
        "restart OOMKilled": lambda: o.restart_container(
            _running_deploy(), "app", T0 + 60, reason="OOMKilled"
        ),
        "restart Error": lambda: o.restart_container(_running_deploy(), "app", T0 + 60),
        "restart Completed": lambda: o.restart_container(
            _running_deploy(), "app", T0 + 60, reason="Completed"
        ),
        "restart sidecar": lambda: o.restart_container(
            _running_deploy(**full), "istio-proxy", T0 + 60, reason="OOMKilled"
        ),
        "crash loop": lambda: o.crash_loop_back_off(_running_deploy(), "app", T0 + 60),
        "restart after crash loop": lambda: o.restart_container(
            o.crash_loop_back_off(_running_deploy(), "app", T0 + 60), "app", T0 + 70
        ),
        "terminating": lambda: o.begin_termination(_running_deploy(), T0 + 60),
        **{f"terminating {reason}": _terminating(reason) for reason in o.DISRUPTION_MESSAGES},
        "evicted": lambda: o.evict_by_kubelet(
            _running_deploy(**full), T0 + 60, usage={"app": "1213296Ki"}
        ),
        "job completed": lambda: o.complete(o.job_pod("backup"), T0 + 60),
        "job with sidecar completed": lambda: o.complete(
            o.job_pod("backup", sidecars=["log-shipper"]), T0 + 60
        ),
    }


SCENARIOS = _scenarios()


def _walk(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield f"{path}.{key}", value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}[{index}]")


def assert_consistent(pod: Mapping[str, Any]) -> None:
    """Invariants a real apiserver + kubelet keep that the JSON schema does not check."""
    for path, value in _walk(pod):
        key = path.rsplit(".", 1)[-1]
        if key in TIME_FIELDS:
            assert isinstance(value, str) and RFC3339.match(value), (path, value)
        if key == "containerID":
            assert isinstance(value, str) and CONTAINER_ID.match(value), (path, value)
    spec, status = pod["spec"], pod["status"]
    assert status["qosClass"] == o.qos_class(spec)
    types = [c["type"] for c in status.get("conditions", [])]
    assert len(types) == len(set(types)), types
    if "containerStatuses" in status:
        assert [s["name"] for s in status["containerStatuses"]] == [
            c["name"] for c in spec["containers"]
        ]
        assert [s["name"] for s in status.get("initContainerStatuses", [])] == [
            c["name"] for c in spec.get("initContainers", [])
        ]
    statuses = [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
    for container in statuses:
        assert set(container["state"]) <= {"waiting", "running", "terminated"}
        assert len(container["state"]) == 1
        if container["ready"]:
            assert "running" in container["state"], container
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    if "Ready" in conditions:
        serving = [
            s
            for s in statuses
            if s["name"] in {c["name"] for c in spec["containers"]}
            or any(
                c["name"] == s["name"] and c.get("restartPolicy") == "Always"
                for c in spec.get("initContainers", [])
            )
        ]
        all_ready = status["phase"] == "Running" and all(s["ready"] for s in serving)
        assert (conditions["Ready"]["status"] == "True") == all_ready
    if spec.get("nodeName"):
        assert conditions.get("PodScheduled", {}).get("status") == "True"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_every_factory_and_transition_is_a_valid_pod(name: str, version: str) -> None:
    pod = SCENARIOS[name]()
    kubernetes_validate.validate(pod, version, strict=True)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_factory_and_transition_is_consistent(name: str) -> None:
    assert_consistent(SCENARIOS[name]())


def test_the_strict_schema_would_catch_a_mistake() -> None:
    pod = _running_deploy()
    pod["status"]["containerStatuses"][0]["restarts"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_pod(pod)


# -- transitions are pure ---------------------------------------------------------------------

TRANSITIONS: dict[str, Callable[[Pod], Pod]] = {
    "schedule": lambda p: o.schedule(p, "node-2", T0 + 9),
    "unschedulable": lambda p: o.unschedulable(p, T0 + 9),
    "containers_creating": lambda p: o.containers_creating(p, T0 + 9),
    "containers_running": lambda p: o.containers_running(p, T0 + 9),
    "mark_ready": lambda p: o.mark_ready(p, T0 + 9),
    "mark_not_ready": lambda p: o.mark_not_ready(p, T0 + 9),
    "restart_container": lambda p: o.restart_container(p, "app", T0 + 9),
    "crash_loop_back_off": lambda p: o.crash_loop_back_off(p, "app", T0 + 9),
    "disruption_target": lambda p: o.disruption_target(p, "EvictionByEvictionAPI", T0 + 9),
    "begin_termination": lambda p: o.begin_termination(p, T0 + 9, disruption="DeletionByPodGC"),
    "evict_by_kubelet": lambda p: o.evict_by_kubelet(p, T0 + 9),
    "complete": lambda p: o.complete(p, T0 + 9),
}


@pytest.mark.parametrize("name", sorted(TRANSITIONS))
def test_a_transition_returns_a_new_pod_and_leaves_its_input_alone(name: str) -> None:
    pod = _running_deploy(sidecars=["proxy"])
    before = copy.deepcopy(pod)
    after = TRANSITIONS[name](pod)
    assert pod == before
    assert after is not pod
    # Nothing is shared: changing the result cannot reach the input.
    after["metadata"]["labels"]["changed"] = "yes"
    after["spec"]["containers"][0]["name"] = "changed"
    after["status"].setdefault("conditions", []).clear()
    assert pod == before
    validate_pod(TRANSITIONS[name](pod))


def test_factories_are_deterministic_and_seeded() -> None:
    assert _running_deploy() == _running_deploy()
    one, two = _running_deploy(seed=1), _running_deploy(seed=2)
    assert one["metadata"]["name"] != two["metadata"]["name"]
    assert one["metadata"]["uid"] != two["metadata"]["uid"]
    restarted = o.restart_container(_running_deploy(), "app", T0 + 60)
    assert restarted == o.restart_container(_running_deploy(), "app", T0 + 60)


# -- workload shapes --------------------------------------------------------------------------


def test_deployment_pod_is_owned_by_its_replicaset() -> None:
    pod = o.deployment_pod("checkout", namespace="shop", revision=3, seed=7)
    template_hash = o.revision_hash("checkout", 3)
    meta = pod["metadata"]
    assert set(template_hash) <= HASH_CHARS and 1 <= len(template_hash) <= 10
    assert meta["labels"]["pod-template-hash"] == template_hash
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "ReplicaSet" and owner["apiVersion"] == "apps/v1"
    assert owner["name"] == f"checkout-{template_hash}"
    assert owner["controller"] is True
    assert meta["generateName"] == f"checkout-{template_hash}-"
    assert re.fullmatch(rf"checkout-{template_hash}-[{o._ALPHANUMS}]{{5}}", meta["name"])
    assert pod["spec"]["containers"][0]["image"].endswith(":v3")
    assert pod["spec"]["restartPolicy"] == "Always"


def test_a_new_revision_is_a_new_template_hash() -> None:
    one = o.deployment_pod("checkout", revision=1)["metadata"]["labels"]["pod-template-hash"]
    two = o.deployment_pod("checkout", revision=2)["metadata"]["labels"]["pod-template-hash"]
    assert one != two


def test_statefulset_pod_has_ordinal_name_and_revision_label() -> None:
    pod = o.statefulset_pod("web", 2, revision=4)
    meta = pod["metadata"]
    assert meta["name"] == "web-2"
    assert "generateName" not in meta
    assert meta["labels"]["controller-revision-hash"] == f"web-{o.revision_hash('web', 4)}"
    assert meta["labels"]["statefulset.kubernetes.io/pod-name"] == "web-2"
    assert meta["labels"]["apps.kubernetes.io/pod-index"] == "2"
    assert meta["ownerReferences"][0]["kind"] == "StatefulSet"
    assert pod["spec"]["hostname"] == "web-2" and pod["spec"]["subdomain"] == "web"


def test_daemonset_pod_is_pinned_to_its_node() -> None:
    pod = o.daemonset_pod("node-agent", node="node-7", revision=2)
    meta = pod["metadata"]
    assert meta["labels"]["controller-revision-hash"] == o.revision_hash("node-agent", 2)
    assert meta["ownerReferences"][0]["kind"] == "DaemonSet"
    terms = pod["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-7"]
    keys = {t["key"] for t in pod["spec"]["tolerations"]}
    assert "node.kubernetes.io/memory-pressure" in keys
    assert pod["spec"]["nodeName"] == "node-7"
    with pytest.raises(ValueError, match="node"):
        o.daemonset_pod("node-agent", node=None)


def test_job_pod_carries_the_batch_labels() -> None:
    pod = o.job_pod("render", completion_index=3)
    meta = pod["metadata"]
    job_uid = meta["ownerReferences"][0]["uid"]
    assert meta["ownerReferences"][0]["kind"] == "Job"
    assert meta["labels"]["batch.kubernetes.io/job-name"] == "render"
    assert meta["labels"]["job-name"] == "render"
    assert meta["labels"]["batch.kubernetes.io/controller-uid"] == job_uid
    assert meta["annotations"]["batch.kubernetes.io/job-completion-index"] == "3"
    assert meta["name"].startswith("render-3-")
    assert meta["finalizers"] == ["batch.kubernetes.io/job-tracking"]
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "pod-template-hash" not in meta["labels"]


def test_bare_pod_has_no_owner() -> None:
    pod = o.bare_pod("debug")
    assert "ownerReferences" not in pod["metadata"]
    assert pod["metadata"]["name"] == "debug"


# -- resources --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "qos"),
    [
        ({}, "BestEffort"),
        ({"requests": {"cpu": "100m"}}, "Burstable"),
        ({"requests": {"cpu": "100m", "memory": "64Mi"}}, "Burstable"),
        ({"limits": {"cpu": "500m", "memory": "256Mi"}}, "Guaranteed"),
        (
            {
                "requests": {"cpu": "0.5", "memory": "268435456"},
                "limits": {"cpu": "500m", "memory": "256Mi"},
            },
            "Guaranteed",
        ),
        ({"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "256Mi"}}, "Burstable"),
        ({"limits": {"cpu": "1"}}, "Burstable"),
        ({"requests": {"ephemeral-storage": "1Gi"}}, "BestEffort"),
        (
            {
                "limits": {"cpu": "500m", "memory": "256Mi"},
                "sidecars": [o.ContainerTemplate("proxy")],
            },
            "Burstable",
        ),
        (
            {
                "limits": {"cpu": "500m", "memory": "256Mi"},
                "sidecars": ["proxy"],
                "init_containers": ["migrate"],
            },
            "Guaranteed",
        ),
    ],
)
def test_qos_class_follows_requests_and_limits(kwargs: dict[str, Any], qos: str) -> None:
    pod = _running_deploy(**kwargs)
    validate_pod(pod)
    assert pod["status"]["qosClass"] == qos


def test_a_limit_without_a_request_is_defaulted_like_the_apiserver_does() -> None:
    pod = _running_deploy(limits={"cpu": "500m", "memory": "256Mi"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"] == resources["limits"] == {"cpu": "500m", "memory": "256Mi"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Decimal("0.5")),
        ("1", Decimal(1)),
        ("1.5", Decimal("1.5")),
        ("256Mi", Decimal(256 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("2k", Decimal(2000)),
        ("1e3", Decimal(1000)),
        ("100n", Decimal("1e-7")),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert o.parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "5 Mi", "10Xi"])
def test_parse_quantity_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        o.parse_quantity(text)


# -- status -------------------------------------------------------------------------------------


def _conditions(pod: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pod["status"]["conditions"]}


def _status(pod: Mapping[str, Any], container: str = "app") -> dict[str, Any]:
    statuses = [
        *pod["status"].get("initContainerStatuses", []),
        *pod["status"]["containerStatuses"],
    ]
    (found,) = [s for s in statuses if s["name"] == container]
    return dict(found)


def test_unscheduled_then_scheduled() -> None:
    pod = _running_deploy(state="unscheduled")
    assert "nodeName" not in pod["spec"]
    assert pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}
    pending = o.unschedulable(pod, T0 + 1)
    assert _conditions(pending)["PodScheduled"]["reason"] == "Unschedulable"
    bound = o.schedule(pending, "node-3", T0 + 8)
    assert bound["spec"]["nodeName"] == "node-3"
    scheduled = _conditions(bound)["PodScheduled"]
    assert scheduled["status"] == "True" and scheduled["lastTransitionTime"] == o.rfc3339(T0 + 8)
    with pytest.raises(ValueError, match="schedule"):
        o.containers_creating(pod, T0 + 2)


def test_a_pod_with_init_containers_waits_in_pod_initializing() -> None:
    pod = _running_deploy(state="creating", init_containers=["migrate"])
    assert _status(pod)["state"] == {"waiting": {"reason": "PodInitializing"}}
    initialized = _conditions(pod)["Initialized"]
    assert initialized["status"] == "False"
    assert initialized["reason"] == "ContainersNotInitialized"
    assert initialized["message"] == "containers with incomplete status: [migrate]"
    plain = _running_deploy(state="creating")
    assert _status(plain)["state"] == {"waiting": {"reason": "ContainerCreating"}}
    assert _conditions(plain)["Ready"]["message"] == "containers with unready status: [app]"
    assert _conditions(plain)["PodReadyToStartContainers"]["status"] == "False"
    assert pod["status"]["phase"] == "Pending"


def test_running_then_ready() -> None:
    running = _running_deploy(state="running", sidecars=["proxy"])
    assert running["status"]["phase"] == "Running"
    # The app has a readiness probe, the sidecar none: only the sidecar is ready at once.
    assert _status(running)["ready"] is False
    assert _status(running, "proxy")["ready"] is True
    assert _conditions(running)["Ready"]["status"] == "False"
    ready = o.mark_ready(running, T0 + 20)
    assert _conditions(ready)["Ready"] == {
        "lastProbeTime": None,
        "lastTransitionTime": o.rfc3339(T0 + 20),
        "status": "True",
        "type": "Ready",
    }
    assert _conditions(ready)["ContainersReady"]["status"] == "True"
    assert _conditions(ready)["PodReadyToStartContainers"]["status"] == "True"
    assert ready["status"]["podIP"] == o.default_pod_ip(ready["metadata"]["uid"])


def test_readiness_transition_time_moves_only_when_the_status_changes() -> None:
    pod = _running_deploy()
    not_ready = o.mark_not_ready(pod, T0 + 60)
    condition = _conditions(not_ready)["Ready"]
    assert condition["status"] == "False"
    assert condition["reason"] == "ContainersNotReady"
    assert condition["message"] == "containers with unready status: [app]"
    assert condition["lastTransitionTime"] == o.rfc3339(T0 + 60)
    again = o.mark_not_ready(not_ready, T0 + 90)
    assert _conditions(again)["Ready"]["lastTransitionTime"] == o.rfc3339(T0 + 60)
    assert _conditions(again)["PodScheduled"] == _conditions(pod)["PodScheduled"]
    with pytest.raises(ValueError, match="no status"):
        o.mark_ready(pod, T0, containers=["nope"])


@pytest.mark.parametrize(
    ("reason", "exit_code"), [("OOMKilled", 137), ("Error", 1), ("Completed", 0)]
)
def test_restart_records_the_last_termination(reason: str, exit_code: int) -> None:
    pod = _running_deploy()
    old = _status(pod)
    restarted = o.restart_container(pod, "app", T0 + 60, reason=reason)
    new = _status(restarted)
    assert new["restartCount"] == old["restartCount"] + 1
    assert new["lastState"] == {
        "terminated": {
            "containerID": old["containerID"],
            "exitCode": exit_code,
            "finishedAt": o.rfc3339(T0 + 60),
            "reason": reason,
            "startedAt": old["state"]["running"]["startedAt"],
        }
    }
    assert new["state"] == {"running": {"startedAt": o.rfc3339(T0 + 60)}}
    assert new["containerID"] != old["containerID"]
    assert new["containerID"].startswith("containerd://")
    # Back, but not ready until its readiness probe passes.
    assert new["ready"] is False
    assert _conditions(restarted)["Ready"]["status"] == "False"


@pytest.mark.parametrize("runtime", o.RUNTIMES)
def test_a_restarted_container_keeps_its_runtime(runtime: o.Runtime) -> None:
    pod = _running_deploy(runtime=runtime)
    restarted = o.restart_container(pod, "app", T0 + 60, exit_code=2)
    assert _status(restarted)["containerID"].startswith(f"{runtime}://")
    assert _status(restarted)["lastState"]["terminated"]["exitCode"] == 2
    image_id = _status(pod)["imageID"]
    assert image_id.startswith("docker-pullable://") == (runtime == "docker")


def test_crash_loop_back_off_doubles_up_to_five_minutes() -> None:
    pod = _running_deploy(name="api-0", namespace="shop")
    uid = pod["metadata"]["uid"]
    backoffs = []
    now = T0 + 60
    for _ in range(7):
        looping = o.crash_loop_back_off(pod, "app", now, reason="OOMKilled")
        status = _status(looping)
        assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        message = status["state"]["waiting"]["message"]
        match = re.fullmatch(
            rf"back-off (\S+) restarting failed container=app pod=api-0_shop\({uid}\)", message
        )
        assert match, message
        backoffs.append(match[1])
        assert status["restartCount"] == _status(pod)["restartCount"]
        assert status["lastState"]["terminated"]["reason"] == "OOMKilled"
        assert status["lastState"]["terminated"]["exitCode"] == 137
        assert status["ready"] is False and status["started"] is False
        assert looping["status"]["phase"] == "Running"
        pod = o.restart_container(looping, "app", now + 10)
        now += 600
    assert backoffs == ["10s", "10s", "20s", "40s", "1m20s", "2m40s", "5m0s"]
    with pytest.raises(ValueError, match="lastState"):
        o.restart_container(o.crash_loop_back_off(pod, "app", now), "app", now + 1, reason="Error")


def test_restart_needs_a_started_container() -> None:
    with pytest.raises(ValueError, match="neither running"):
        o.restart_container(_running_deploy(state="creating"), "app", T0 + 9)
    with pytest.raises(ValueError, match="not running"):
        o.crash_loop_back_off(_running_deploy(state="creating"), "app", T0 + 9)


@pytest.mark.parametrize("grace", [None, 0, 5, 120])
def test_begin_termination_sets_the_deletion_timestamp_to_now_plus_grace(
    grace: int | None,
) -> None:
    pod = _running_deploy(grace_period_seconds=45)
    deleting = o.begin_termination(pod, T0 + 100, grace_period_seconds=grace)
    expected = 45 if grace is None else grace
    assert deleting["metadata"]["deletionTimestamp"] == o.rfc3339(T0 + 100 + expected)
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == expected
    assert "DisruptionTarget" not in _conditions(deleting)
    assert deleting["status"] == pod["status"]


@pytest.mark.parametrize("reason", sorted(o.DISRUPTION_MESSAGES))
def test_begin_termination_with_a_disruption_target(reason: str) -> None:
    deleting = o.begin_termination(_running_deploy(), T0 + 100, disruption=reason)
    first = deleting["status"]["conditions"][0]
    assert first == {
        "lastProbeTime": None,
        "lastTransitionTime": o.rfc3339(T0 + 100),
        "message": o.DISRUPTION_MESSAGES[reason],
        "reason": reason,
        "status": "True",
        "type": "DisruptionTarget",
    }


def test_kubelet_eviction() -> None:
    pod = _running_deploy(requests={"memory": "256Mi"}, sidecars=["proxy"])
    evicted = o.evict_by_kubelet(pod, T0 + 300, usage={"app": "1213296Ki"})
    status = evicted["status"]
    expected = (
        "The node was low on resource: memory. Threshold quantity: 100Mi, available: 62Mi. "
        "Container app was using 1213296Ki, request is 256Mi, has larger consumption of memory. "
    )
    assert status["phase"] == "Failed"
    assert status["reason"] == "Evicted"
    assert status["message"] == expected
    for name in ("app", "proxy"):
        terminated = _status(evicted, name)["state"]["terminated"]
        assert terminated["exitCode"] == 137 and terminated["reason"] == "Error"
        assert terminated["containerID"] == _status(pod, name)["containerID"]
    conditions = _conditions(evicted)
    assert conditions["DisruptionTarget"]["reason"] == "TerminationByKubelet"
    assert conditions["DisruptionTarget"]["message"] == expected
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodFailed"
    assert conditions["PodReadyToStartContainers"]["status"] == "False"
    assert "deletionTimestamp" not in evicted["metadata"]
    with pytest.raises(ValueError, match="no container"):
        o.evict_by_kubelet(pod, T0, usage={"ghost": "1Gi"})


def test_a_job_pod_completes() -> None:
    done = o.complete(o.job_pod("backup", init_containers=["fetch"]), T0 + 300)
    status = done["status"]
    assert status["phase"] == "Succeeded"
    terminated = _status(done, "worker")["state"]["terminated"]
    assert terminated["reason"] == "Completed" and terminated["exitCode"] == 0
    conditions = _conditions(done)
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["ContainersReady"]["reason"] == "PodCompleted"
    assert conditions["Initialized"] == {
        **conditions["Initialized"],
        "status": "True",
        "reason": "PodCompleted",
    }


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        _running_deploy(containers=["app"], sidecars=["app"])
    with pytest.raises(ValueError, match="port"):
        _running_deploy(containers=[o.ContainerTemplate("app", readiness_probe=True)])
    with pytest.raises(ValueError, match="runtime"):
        o.container_id("uid", "app", 0, "rkt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no status"):
        o.restart_container(_running_deploy(), "ghost", T0)


def test_default_addresses_stay_on_this_machine() -> None:
    pod = _running_deploy()
    assert pod["status"]["podIP"].startswith("127.")
    assert pod["status"]["hostIP"].startswith("127.")
