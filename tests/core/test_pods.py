"""parse_pod and workload_of: the fields detection needs, from realistic and from broken bodies."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from exporter.core.events import Workload
from exporter.core.pods import MalformedObject, parse_pod, parse_time, uid_of, workload_of
from exporter.simulator import objects as o
from tests.core.kube_schema import validate_pod

T0 = o.EPOCH


def test_parse_a_ready_deployment_pod() -> None:
    pod = o.deployment_pod(
        "checkout",
        namespace="shop",
        node="node-4",
        revision=2,
        sidecars=["proxy"],
        limits={"cpu": "1", "memory": "1Gi"},
    )
    validate_pod(pod)
    snap = parse_pod(pod)
    assert snap.uid == pod["metadata"]["uid"]
    assert snap.name == pod["metadata"]["name"]
    assert snap.namespace == "shop"
    assert snap.node == "node-4"
    assert snap.workload == Workload("Deployment", "checkout")
    assert snap.revision == o.revision_hash("checkout", 2)
    assert snap.phase == "Running"
    assert snap.ready is True
    assert snap.deleting is False
    assert snap.qos_class == "Guaranteed"
    assert snap.created_at == T0
    assert [(c.name, c.init, c.state, c.ready) for c in snap.containers] == [
        ("proxy", True, "running", True),
        ("app", False, "running", True),
    ]
    assert snap.container("app") is not None
    assert snap.container("app").container_id.startswith("containerd://")  # type: ignore[union-attr]
    assert snap.container("nope") is None


def test_parse_the_states_detection_looks_at() -> None:
    pod = o.crash_loop_back_off(
        o.restart_container(o.deployment_pod("api"), "app", T0 + 10, reason="OOMKilled"),
        "app",
        T0 + 20,
    )
    pod = o.begin_termination(pod, T0 + 30, disruption="PreemptionByScheduler")
    validate_pod(pod)
    snap = parse_pod(pod)
    app = snap.container("app")
    assert app is not None
    assert app.restart_count == 1
    assert app.state == "waiting"
    assert app.waiting_reason == "CrashLoopBackOff"
    assert app.last_terminated_reason == "Error"
    assert snap.ready is False
    assert snap.deleting is True
    assert snap.disruption_reason == "PreemptionByScheduler"

    evicted = parse_pod(o.evict_by_kubelet(o.deployment_pod("api"), T0 + 40))
    assert (evicted.phase, evicted.status_reason) == ("Failed", "Evicted")
    assert evicted.disruption_reason == "TerminationByKubelet"


def test_a_pod_not_yet_scheduled_has_defaults() -> None:
    snap = parse_pod(o.deployment_pod("api", state="unscheduled"))
    assert snap.node == ""
    assert snap.ready is None
    assert snap.phase == "Pending"
    assert snap.containers == ()


def test_a_false_disruption_target_is_no_disruption() -> None:
    pod = o.deployment_pod("api")
    pod["status"]["conditions"].insert(
        0, {"type": "DisruptionTarget", "status": "False", "reason": "EvictionByEvictionAPI"}
    )
    validate_pod(pod)
    assert parse_pod(pod).disruption_reason == ""


# -- workload identity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pod", "workload", "revision"),
    [
        (
            o.deployment_pod("checkout", revision=5),
            Workload("Deployment", "checkout"),
            o.revision_hash("checkout", 5),
        ),
        (
            o.statefulset_pod("web", 0, revision=2),
            Workload("StatefulSet", "web"),
            f"web-{o.revision_hash('web', 2)}",
        ),
        (
            o.daemonset_pod("node-agent"),
            Workload("DaemonSet", "node-agent"),
            o.revision_hash("node-agent", 1),
        ),
        (o.job_pod("backup"), Workload("Job", "backup"), ""),
        (o.bare_pod("debug"), Workload("Pod", "debug"), ""),
    ],
    ids=["deployment", "statefulset", "daemonset", "job", "bare"],
)
def test_workload_identity(pod: dict[str, Any], workload: Workload, revision: str) -> None:
    validate_pod(pod)
    snap = parse_pod(pod)
    assert snap.workload == workload
    assert snap.revision == revision


def _owned_by(kind: str, name: str, *, controller: bool = True) -> dict[str, Any]:
    return {
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": kind,
                "name": name,
                "uid": "u",
                "controller": controller,
            }
        ],
        "name": "p",
    }


@pytest.mark.parametrize(
    ("metadata", "labels", "workload"),
    [
        (
            _owned_by("ReplicaSet", "api-5d8f7c9b6"),
            {"pod-template-hash": "5d8f7c9b6"},
            ("Deployment", "api"),
        ),
        # A ReplicaSet made by hand: no hash label, or a name that does not end in the hash.
        (_owned_by("ReplicaSet", "api-5d8f7c9b6"), {}, ("ReplicaSet", "api-5d8f7c9b6")),
        (
            _owned_by("ReplicaSet", "frontend"),
            {"pod-template-hash": "5d8f7c9b6"},
            ("ReplicaSet", "frontend"),
        ),
        # The name must be longer than the suffix for a Deployment name to remain.
        (_owned_by("ReplicaSet", "-abc"), {"pod-template-hash": "abc"}, ("ReplicaSet", "-abc")),
        (
            _owned_by("StatefulSet", "db"),
            {"controller-revision-hash": "db-7c9"},
            ("StatefulSet", "db"),
        ),
        (_owned_by("Job", "backup-28512345"), {}, ("Job", "backup-28512345")),
        (_owned_by("Node", "node-1"), {}, ("Node", "node-1")),  # a static pod's mirror
        (_owned_by("ReplicaSet", "api-x", controller=False), {}, ("Pod", "p")),
        (
            {"ownerReferences": [{"kind": "ReplicaSet", "controller": True}], "name": "p"},
            {},
            ("Pod", "p"),
        ),
        ({"ownerReferences": ["junk"], "name": "p"}, {}, ("Pod", "p")),
        ({"name": "p"}, {}, ("Pod", "p")),
    ],
)
def test_workload_of(
    metadata: dict[str, Any], labels: dict[str, str], workload: tuple[str, str]
) -> None:
    assert workload_of(metadata, labels) == Workload(*workload)


def test_workload_of_rejects_owner_references_that_are_not_a_list() -> None:
    with pytest.raises(MalformedObject, match="ownerReferences"):
        workload_of({"ownerReferences": {"kind": "ReplicaSet"}, "name": "p"}, {})


# -- malformed bodies ---------------------------------------------------------------------------


def _break(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    pod = copy.deepcopy(o.deployment_pod("api"))
    change(pod)
    return pod


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(pod: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = pod
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is _DELETE:
            del node[key]
        else:
            node[key] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("body", "reason", "mentions"),
    [
        ([], "not_an_object", "object"),
        (_break(_set("metadata", _DELETE)), "missing_field", "pod.metadata"),
        (_break(_set("metadata", "x")), "missing_field", "pod.metadata"),
        (_break(_set("metadata.uid", _DELETE)), "missing_field", "metadata.uid"),
        (_break(_set("metadata.uid", "")), "missing_field", "metadata.uid"),
        (_break(_set("metadata.uid", 42)), "missing_field", "metadata.uid"),
        (_break(_set("metadata.name", None)), "missing_field", "metadata.name"),
        (_break(_set("metadata.namespace", _DELETE)), "missing_field", "metadata.namespace"),
        (_break(_set("metadata.labels", ["a"])), "bad_field", "metadata.labels"),
        (_break(_set("metadata.ownerReferences", "ReplicaSet")), "bad_field", "ownerReferences"),
        (_break(_set("spec", [])), "bad_field", "pod.spec"),
        (_break(_set("status", "Running")), "bad_field", "pod.status"),
        (_break(_set("status.conditions", {"type": "Ready"})), "bad_field", "conditions"),
        (_break(_set("status.conditions.0", "Ready")), "bad_field", "conditions[]"),
        (_break(_set("status.containerStatuses", "app")), "bad_field", "containerStatuses"),
        (_break(_set("status.containerStatuses.0", None)), "bad_field", "containerStatuses[]"),
        (_break(_set("status.containerStatuses.0.name", _DELETE)), "missing_field", "name"),
        (_break(_set("status.containerStatuses.0.restartCount", "3")), "bad_field", "restartCount"),
        (_break(_set("status.containerStatuses.0.restartCount", -1)), "bad_field", "restartCount"),
        (
            _break(_set("status.containerStatuses.0.restartCount", True)),
            "bad_field",
            "restartCount",
        ),
        (_break(_set("status.containerStatuses.0.ready", "true")), "bad_field", "ready"),
        (_break(_set("status.containerStatuses.0.state", "running")), "bad_field", "state"),
    ],
)
def test_malformed_bodies_raise_with_a_clear_reason(body: Any, reason: str, mentions: str) -> None:
    with pytest.raises(
        MalformedObject, match=mentions.replace("[", r"\[").replace("]", r"\]")
    ) as exc:
        parse_pod(body)
    assert exc.value.reason == reason
    assert str(exc.value).startswith(f"{reason}: ")


def test_unknown_and_odd_container_states_do_not_crash() -> None:
    pod = o.deployment_pod("api")
    status = pod["status"]["containerStatuses"][0]
    status["state"] = {"paused": {}}  # not a state Kubernetes has; a future one must not break us
    status["lastState"] = {"terminated": "OOMKilled"}
    snap = parse_pod(pod)
    app = snap.container("app")
    assert app is not None and app.state == "unknown" and app.last_terminated_reason == ""
    status["state"] = {"waiting": None}
    app = parse_pod(pod).container("app")
    assert app is not None and app.state == "waiting" and app.waiting_reason == ""
    status["state"] = {}
    status.pop("restartCount")
    app = parse_pod(pod).container("app")
    assert app is not None and app.state == "unknown" and app.restart_count == 0


def test_uid_of_reads_what_it_can() -> None:
    assert uid_of({"metadata": {"uid": "abc", "name": 5}}) == "abc"
    assert uid_of({"metadata": {"uid": ""}}) is None
    assert uid_of({"metadata": "x"}) is None
    assert uid_of(["x"]) is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2024-06-01T00:00:00Z", T0),
        ("2024-06-01T00:00:01.5Z", T0 + 1.5),
        ("2024-06-01T02:00:00+02:00", T0),
        ("2024-06-01T00:00:00", None),
        ("yesterday", None),
        (None, None),
        (17, None),
    ],
)
def test_parse_time(text: object, value: float | None) -> None:
    assert parse_time(text) == value
