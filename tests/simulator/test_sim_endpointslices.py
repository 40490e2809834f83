"""The simulator's EndpointSlice controller: slices consistent with the pods, by the real
controller's rules, and an agent-side endpoint view that follows pod changes."""

from __future__ import annotations

import asyncio
from typing import Any

import kubernetes_validate
import pytest

from exporter.core.endpoints import EndpointTracker
from exporter.simulator import Store, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.endpointslices import EndpointSliceController
from exporter.simulator.objects import ContainerTemplate
from exporter.simulator.services import service
from tests.conftest import wait_for

NOW = 1_800_000_000.0
WEB = (ContainerTemplate("app", port=8080, port_name="http", readiness_probe=True),)


def slices(store: Store, name: str = "web") -> list[dict[str, Any]]:
    return [
        s
        for s in store.list("endpointslices")
        if s["metadata"]["labels"]["kubernetes.io/service-name"] == name
    ]


def endpoints(store: Store, name: str = "web") -> dict[str, dict[str, Any]]:
    return {e["targetRef"]["name"]: e for s in slices(store, name) for e in s["endpoints"]}


def web_pod(seed: int, *, node: str = "node-a", state: str = "ready", ip: str = "") -> Any:
    options: dict[str, Any] = {"node": node, "seed": seed, "state": state, "containers": WEB}
    if ip:
        options["pod_ip"] = ip
    return objects.deployment_pod("web", **options)


@pytest.fixture
def store() -> Store:
    s = Store()
    s.create("services", service("web", cluster_ip="127.96.0.20", labels={"tier": "front"}))
    return s


def test_slices_follow_the_controllers_rules(store: Store) -> None:
    cluster = Cluster(store, clock=lambda: NOW)
    ready = store.create("pods", web_pod(1, ip="127.1.0.1"))
    running = store.create("pods", web_pod(2, state="running", ip="127.1.0.2"))
    leaving = store.create("pods", web_pod(3, node="node-b", ip="127.1.0.3"))
    cluster.terminate("default", leaving["metadata"]["name"])
    store.create("pods", web_pod(4, state="creating"))  # no IP yet: not an endpoint
    evicted = store.create("pods", web_pod(5, ip="127.1.0.5"))
    cluster.evict("default", evicted["metadata"]["name"])  # Failed: not an endpoint
    store.create("pods", objects.deployment_pod("other", node="node-a"))  # not selected
    controller = EndpointSliceController(store)
    assert controller.reconcile() == 1

    [slice_] = slices(store)
    got = endpoints(store)
    name = {p["metadata"]["name"]: p for p in (ready, running, leaving)}
    assert set(got) == set(name)
    conditions = {n: e["conditions"] for n, e in got.items()}
    assert conditions[ready["metadata"]["name"]] == {
        "ready": True, "serving": True, "terminating": False,
    }  # fmt: skip
    assert conditions[running["metadata"]["name"]] == {
        "ready": False, "serving": False, "terminating": False,
    }  # fmt: skip
    assert conditions[leaving["metadata"]["name"]] == {
        "ready": False, "serving": True, "terminating": True,
    }  # fmt: skip
    e = got[ready["metadata"]["name"]]
    assert e["addresses"] == ["127.1.0.1"] and e["nodeName"] == "node-a"
    assert e["targetRef"] == {
        "kind": "Pod", "name": ready["metadata"]["name"], "namespace": "default",
        "uid": ready["metadata"]["uid"],  # the stored pod's uid
    }  # fmt: skip
    # The named targetPort resolves to the pod's container port.
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    labels = slice_["metadata"]["labels"]
    assert labels["kubernetes.io/service-name"] == "web"
    assert labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert labels["tier"] == "front" and labels["tailwatch.io/probe"] == "true"
    owner = slice_["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Service", "web", True)
    kubernetes_validate.validate(slice_, "1.30", strict=True)

    # Nothing changed: nothing is written.
    assert controller.reconcile() == 0


def test_statefulset_endpoints_carry_their_hostname() -> None:
    store = Store()
    store.create("services", service("db", ports=(("http", 8080, 8080),)))
    store.create("pods", objects.statefulset_pod("db", 0, service_name="db", containers=WEB))
    EndpointSliceController(store).reconcile()
    assert endpoints(store, "db")["db-0"]["hostname"] == "db-0"


def test_publish_not_ready_addresses_and_slice_size() -> None:
    store = Store()
    svc = service("web", ports=(("http", 80, "http"),))
    svc["spec"]["publishNotReadyAddresses"] = True
    store.create("services", svc)
    for i in range(5):
        store.create("pods", web_pod(i, state="running", ip=f"10.1.0.{i + 1}"))
    EndpointSliceController(store, max_endpoints=2).reconcile()
    assert sorted(len(s["endpoints"]) for s in slices(store)) == [1, 2, 2]
    assert all(e["conditions"]["ready"] for e in endpoints(store).values())


def test_pods_and_services_going_away(store: Store) -> None:
    controller = EndpointSliceController(store)
    pod = store.create("pods", web_pod(1, ip="127.1.0.1"))
    controller.reconcile()
    store.remove("pods", "default", pod["metadata"]["name"])
    controller.reconcile()
    [slice_] = slices(store)
    assert slice_["endpoints"] == []  # a Service without endpoints keeps an empty slice
    store.delete("services", "default", "web")
    controller.reconcile()
    assert slices(store) == []


async def test_the_agents_endpoint_view_follows_pod_changes() -> None:
    """Run the controller on a store and feed its slices to the agent's EndpointTracker:
    readiness, a restart, termination and a StatefulSet pod recreated on another node."""
    store = Store()
    store.create("services", service("db", ports=(("http", 8080, 8080),)))
    cluster = Cluster(store)
    store.create("pods", objects.statefulset_pod("db", 0, node="node-a", containers=WEB))
    tracker = EndpointTracker()
    seen: list[tuple[str, str]] = []
    controller = EndpointSliceController(store)
    task = asyncio.create_task(controller.run())
    try:
        await wait_for(lambda: slices(store, "db"), "the first slice")
        tracker.sync(slices(store, "db"), NOW)
        since = store.resource_version

        def follow() -> list[tuple[str, str]]:
            nonlocal since
            for event in store.history("endpointslices", since):
                since = event.resource_version
                for e in tracker.apply(event.type, event.object, NOW):
                    seen.append((e.kind.value, e.node))
            return seen

        cluster.transition("default", "db-0", objects.mark_not_ready)
        await wait_for(lambda: ("not_ready", "node-a") in follow(), "not_ready")
        cluster.transition("default", "db-0", objects.mark_ready)
        await wait_for(lambda: ("ready", "node-a") in follow(), "ready again")
        cluster.terminate("default", "db-0", disruption="EvictionByEvictionAPI")
        await wait_for(lambda: ("terminating", "node-a") in follow(), "terminating")
        cluster.finish_termination("default", "db-0")
        await wait_for(lambda: ("removed", "node-a") in follow(), "removed")
        # The StatefulSet controller recreates db-0; the scheduler puts it on node-b.
        cluster.start(
            objects.statefulset_pod("db", 0, node="node-b", containers=WEB, state="scheduled")
        )
        await wait_for(lambda: ("moved", "node-b") in follow(), "moved to node-b")
        await wait_for(lambda: follow()[-1] == ("ready", "node-b"), "ready on node-b")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    kinds = [k for k, _ in seen]
    assert kinds == ["not_ready", "ready", "terminating", "removed", "moved", "ready"]
