"""The agent's own Node end to end: the agent watches only its node (the API server's
request log shows the field selector), counts and logs its changes, drops a malformed one,
and a node-pressure eviction of a pod backing an opted-in Service ends as an episode with
cause `node` and the evicted resource, read over HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.services import endpoint_of_pod, endpoint_slice
from tests.agent.conftest import (
    LoopbackBackend,
    loopback_backend,
    probed_web_service,
    running_agent,
)
from tests.conftest import wait_for

NODE, OTHER = "node-a", "node-b"
CLUSTER_IP, POD_IP, THERE_IP, NEW_IP = "127.3.2.1", "127.3.2.2", "127.3.2.3", "127.3.2.4"
# The windows of tests/agent/test_episodes_e2e.py: a baseline from 8 s of probes at 0.5.
WINDOWS = {
    "episode_settle": 0.6,
    "baseline_window": 8.0,
    "quantile_confidence": 0.5,
    "recovery_window": 1.0,
    "recovery_tolerance": 3.0,
    "recovery_max": 30.0,
    "spike_ratio": 1000.0,  # about lifecycle episodes, not tail spikes
}
FAST, SLOW = 0.005, 1.0  # the backend's answers: steady, and short of a pod
LOADED = 60.0  # deadlines that wait on slow answers and the correlator, on a loaded machine


def samples(agent: Agent, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The series of one family on /metrics, by their sorted labels."""
    text = generate_latest(agent.registry).decode()
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def node_events(agent: Agent) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["event"], dict(labels)["reason"]): value
        for labels, value in samples(agent, "tailwatch_node_events_total").items()
    }


async def episodes(agent: Agent) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{agent.settings.listen}/api/v1/episodes") as resp,
    ):
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_the_agent_watches_its_own_node_only(
    api: ApiServer,
    cluster: Cluster,
    kubeconfig: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tailwatch.events")
    cluster.add_node(objects.node(NODE, ip="127.0.7.1"))
    cluster.add_node(objects.node(OTHER, ip="127.0.7.2"))
    async with running_agent(kubeconfig, tmp_path, node=NODE) as agent:
        cluster.node_not_ready(OTHER)  # not this agent's node: never seen
        cluster.cordon(OTHER)
        cluster.node_pressure(NODE, "MemoryPressure")
        cluster.cordon(NODE)
        want = {
            ("memory_pressure", "KubeletHasInsufficientMemory"): 1.0,
            ("cordoned", ""): 1.0,
        }
        await wait_for(lambda: node_events(agent) == want, "the node's two events on /metrics")
        cluster.node_pressure(NODE, "MemoryPressure", under=False)
        cluster.uncordon(NODE)
        await wait_for(
            lambda: node_events(agent).get(("uncordoned", "")) == 1, "the uncordon on /metrics"
        )
        assert node_events(agent) == {
            **want,
            ("pressure_cleared", "MemoryPressure"): 1.0,
            ("uncordoned", ""): 1.0,
        }
        assert [e.kind.value for e in agent.node_tracker.degraded()] == []
        assert agent.readiness() == (True, "ready")

    # Lists and watches of the node (a watch streams the list in the default list mode),
    # each with the agent's node as its field selector: node-b's changes never reach it.
    node_requests = api.requests.matching(resource="nodes")
    assert node_requests and {r.verb for r in node_requests} <= {"list", "watch"}
    assert {r.params.get("fieldSelector") for r in node_requests} == {f"metadata.name={NODE}"}
    logged = [r for r in caplog.records if r.getMessage() == "node event"]
    assert [(r.__dict__["event"], r.__dict__["node"]) for r in logged] == [
        ("memory_pressure", NODE),
        ("cordoned", NODE),
        ("pressure_cleared", NODE),
        ("uncordoned", NODE),
    ]


async def test_a_malformed_node_is_dropped_and_counted(
    api: ApiServer, cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.add_node(objects.node(NODE, ip="127.0.7.1"))
    async with running_agent(kubeconfig, tmp_path, node=NODE) as agent:

        def break_it(obj: dict[str, Any]) -> None:
            obj["spec"]["taints"] = "everything"

        api.store.patch("nodes", "", NODE, break_it)
        await wait_for(
            lambda: samples(agent, "tailwatch_dropped_total").get(
                (("reason", "malformed_node_bad_field"),)
            ),
            "the malformed node counted",
        )
        # The watch goes on: the next good version is read.
        cluster.node_transition(NODE, lambda n, now: objects.cordon({**n, "spec": {}}, now))
        await wait_for(lambda: node_events(agent).get(("cordoned", "")) == 1, "the cordon")


@pytest.fixture
async def backend() -> AsyncIterator[tuple[LoopbackBackend, int, int]]:
    """The 'ClusterIP' and 'pod IP' servers, answering after `delay` seconds."""
    async with loopback_backend(CLUSTER_IP, POD_IP) as state:
        state.delay = FAST
        yield state, state.ports[0], state.ports[1]


async def test_a_node_pressure_eviction_is_an_episode_caused_by_the_node(
    api: ApiServer,
    cluster: Cluster,
    kubeconfig: Path,
    tmp_path: Path,
    backend: tuple[LoopbackBackend, int, int],
) -> None:
    state, service_port, pod_port = backend
    svc = probed_web_service(CLUSTER_IP, service_port)
    api.store.create("services", svc)
    cluster.add_node(objects.node(NODE, ip="127.0.7.1"))
    here = cluster.add(objects.deployment_pod("web", node=NODE, pod_ip=POD_IP, seed=1))
    there = objects.deployment_pod("web", node=OTHER, pod_ip=THERE_IP, seed=2)
    name = here["metadata"]["name"]
    # The EndpointSlice as the controller keeps it: the pods that are endpoints.
    slice_ = endpoint_slice(
        svc, [endpoint_of_pod(here), endpoint_of_pod(there)], ports=(("http", pod_port),)
    )
    api.store.create("endpointslices", slice_)

    def endpoints(*pods: dict[str, Any]) -> None:
        def apply(obj: dict[str, Any]) -> None:
            obj["endpoints"] = [endpoint_of_pod(p) for p in pods]

        api.store.patch("endpointslices", "default", slice_["metadata"]["name"], apply)

    async with running_agent(kubeconfig, tmp_path, node=NODE, **WINDOWS) as agent:
        await wait_for(
            lambda: (
                sum(
                    v
                    for labels, v in samples(
                        agent, "tailwatch_probe_duration_seconds_count"
                    ).items()
                    if ("state", "steady") in labels and ("target", "service") in labels
                )
                >= 90
            ),
            "a steady baseline (9 s of probes)",
        )
        # The node runs short of memory and its kubelet evicts the pod for it; the one
        # left queues the Service's requests until a replacement is ready elsewhere.
        state.delay = SLOW
        evicted = cluster.node_pressure_eviction("default", name, usage={"app": "900Mi"})
        assert evicted["status"]["reason"] == "Evicted"
        endpoints(there)  # a Failed pod is no endpoint
        await wait_for(
            lambda: (
                samples(agent, "tailwatch_service_disrupted").get(
                    (("cause", "node"), ("namespace", "default"), ("service", "web"))
                )
                == 1
            ),
            "the episode open with cause node",
            timeout=LOADED,
        )
        replacement = objects.deployment_pod("web", node=OTHER, pod_ip=NEW_IP, seed=3)
        endpoints(there, objects.mark_not_ready(replacement, 0.0))
        cluster.node_pressure(NODE, "MemoryPressure", under=False)
        endpoints(there, replacement)
        state.delay = FAST
        await wait_for(
            lambda: any(
                ("cause", "node") in labels for labels in samples(agent, "tailwatch_episodes_total")
            ),
            "the episode closed",
            timeout=LOADED,
        )
        doc = await episodes(agent)

    (episode,) = [*doc["open"], *doc["recent"]]
    assert (episode["service"], episode["cause"]) == ("web", "node"), episode
    by_event = {(e["source"], e["event"]): e for e in episode["events"]}
    pod_evicted = by_event[("pod", "evicted")]
    assert (pod_evicted["pod"], pod_evicted["resource"], pod_evicted["node"]) == (
        name, "memory", NODE,
    )  # fmt: skip
    pressure = by_event[("node", "memory_pressure")]
    assert (pressure["node"], pressure["reason"]) == (NODE, "KubeletHasInsufficientMemory")
    assert ("node", "pressure_cleared") in by_event
    assert f"node {NODE} under MemoryPressure" in episode["summary"]
    assert f"the kubelet evicted default/{name} for memory" in episode["summary"]
    assert node_events(agent) == {
        ("memory_pressure", "KubeletHasInsufficientMemory"): 1.0,
        ("pressure_cleared", "MemoryPressure"): 1.0,
    }
