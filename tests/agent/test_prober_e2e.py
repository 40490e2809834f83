"""Probing through the Service view: the agent probes an opted-in Service's ClusterIP and
its endpoint on this node (real loopback servers), and its series go with the Service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.simulator import ApiServer, objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice
from tests.agent.conftest import loopback_backend, probed_web_service
from tests.conftest import wait_for

CLUSTER_IP, POD_IP = "127.3.0.1", "127.3.0.2"


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int, list[str]]]:
    """An HTTP server on the 'ClusterIP' and one on the 'pod IP'; records who was asked."""
    async with loopback_backend(CLUSTER_IP, POD_IP) as backend:
        yield backend.ports[0], backend.ports[1], backend.seen


def probe_counts(agent: Agent) -> dict[tuple[str, str], float]:
    text = generate_latest(agent.registry).decode()
    return {
        (s.labels["target"], s.labels["pod"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "tailwatch_probe_duration_seconds_count"
    }


async def test_service_and_local_endpoint_are_probed(
    api: ApiServer, agent: Agent, servers: tuple[int, int, list[str]]
) -> None:
    service_port, pod_port, seen = servers
    svc = probed_web_service(CLUSTER_IP, service_port)
    api.store.create("services", svc)
    here = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, seed=1)
    elsewhere = objects.deployment_pod("web", node="node-b", pod_ip="127.3.0.9", seed=2)
    endpoints = [endpoint_of_pod(here), endpoint_of_pod(elsewhere)]
    api.store.create("endpointslices", endpoint_slice(svc, endpoints, ports=(("http", pod_port),)))

    pod = here["metadata"]["name"]
    await wait_for(
        lambda: (
            (c := probe_counts(agent)).get(("service", ""), 0) >= 3
            and c.get(("endpoint", pod), 0) >= 3
        ),
        "probes of the service and of the local endpoint",
    )
    assert set(probe_counts(agent)) == {("service", ""), ("endpoint", pod)}  # not node-b's
    assert f"{CLUSTER_IP}:{service_port}" in seen and f"{POD_IP}:{pod_port}" in seen

    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{agent.settings.listen}/api/v1/targets") as resp,
    ):
        body = await resp.json()
    by_target = {t["target"]: t for t in body["targets"]}
    assert set(by_target) == {"service", "endpoint"}
    assert by_target["service"]["last"]["ok"] is True
    assert by_target["endpoint"]["pod"] == pod

    api.store.remove("services", "default", "web")
    await wait_for(lambda: probe_counts(agent) == {}, "the series of the removed Service")
