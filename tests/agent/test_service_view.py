"""The cluster view of opted-in Services through the real watch protocol: endpoint events,
endpoint counts, skipped Services and /api/v1/targets."""

from __future__ import annotations

from typing import Any

import aiohttp

from exporter.agent import Agent
from exporter.core.endpoints import EndpointEvent
from exporter.core.services import ServiceRef
from exporter.simulator import ApiServer, objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service
from tests.conftest import wait_for

DB = service("db", namespace="data", cluster_ip=None, ports=(("pg", 5432, 5432),),
             annotations={"tailwatch.io/slo-latency": "20ms"})  # fmt: skip


def db_pod(node: str, seed: int, *, ready: bool = True) -> dict[str, Any]:
    pod = objects.statefulset_pod("db", 0, namespace="data", node=node, seed=seed,
                                  pod_ip=f"127.2.0.{seed + 1}")  # fmt: skip
    return pod if ready else objects.mark_not_ready(pod, 10.0)


def put_slice(api: ApiServer, *pods: dict[str, Any]) -> None:
    body = endpoint_slice(DB, [endpoint_of_pod(p) for p in pods], ports=(("pg", 5432),))
    name = body["metadata"]["name"]
    try:
        current = api.store.get("endpointslices", "data", name)
    except Exception:
        api.store.create("endpointslices", body)
        return
    body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    api.store.update("endpointslices", body)


def events(agent: Agent) -> dict[str, float]:
    return {k[2]: v for k, v in agent.metrics.endpoint_events.items() if k[:2] == ("data", "db")}


async def test_endpoint_churn_and_targets(api: ApiServer, agent: Agent) -> None:
    api.store.create("services", DB)
    api.store.create("services", service("bad", annotations={"tailwatch.io/probe-port": "nope"}))
    api.store.create("services", service("ignored", probe=False))
    put_slice(api, db_pod("node-a", 0))
    await wait_for(lambda: ServiceRef("data", "db") in agent.catalog.specs, "the Service")
    await wait_for(lambda: len(agent.catalog.targets()) == 1, "db-0's endpoint target")
    # The agent was already watching: db-0's endpoint really was added.
    await wait_for(lambda: events(agent) == {"added": 1, "ready": 1} or None, "added, ready")

    # Readiness flips, then the StatefulSet pod is rescheduled from node-a to node-b.
    put_slice(api, db_pod("node-a", 0, ready=False))
    put_slice(api, db_pod("node-a", 0))
    put_slice(api)
    put_slice(api, db_pod("node-b", 1, ready=False))
    put_slice(api, db_pod("node-b", 1))
    want = {"added": 1, "not_ready": 1, "ready": 3, "removed": 1, "moved": 1}
    await wait_for(lambda: events(agent) == want or None, f"endpoint events {want}")
    # The pod is on node-b now: this node-a agent has nothing of db to probe.
    assert agent.catalog.targets() == []
    counts = agent.catalog.endpoints.counts()[ServiceRef("data", "db")]
    assert (counts.ready, counts.serving, counts.terminating) == (1, 1, 0)

    url = f"http://{agent.settings.listen}"
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/v1/targets") as resp:
            body = await resp.json()
        async with http.get(url + "/metrics") as resp:
            text = await resp.text()
    states = {(s["service"], s["state"]) for s in body["services"]}
    assert states == {("db", "probed"), ("bad", "skipped")}
    bad = next(s for s in body["services"] if s["service"] == "bad")
    assert "tailwatch.io/probe-port: no port 'nope'" in bad["reason"]
    assert body["node"] == "node-a"
    assert ('tailwatch_endpoint_events_total{event="moved",namespace="data",service="db"} 1.0'
            in text)  # fmt: skip
    assert ('tailwatch_service_endpoints{condition="ready",namespace="data",service="db"} 1.0'
            in text)  # fmt: skip

    # Opting out removes the Service and its series.
    api.store.patch("services", "data", "db",
                    lambda o: o["metadata"]["labels"].pop("tailwatch.io/probe"))  # fmt: skip
    await wait_for(lambda: ServiceRef("data", "db") not in agent.catalog.specs, "opt-out")
    assert events(agent) == {}


def web_service(name: str) -> dict[str, Any]:
    return service(name, namespace="shop", cluster_ip=None, ports=(("http", 80, 8080),))


def web_slice(name: str, *pods: dict[str, Any], labelled: bool = True) -> dict[str, Any]:
    body = endpoint_slice(web_service(name), [endpoint_of_pod(p) for p in pods],
                          ports=(("http", 8080),))  # fmt: skip
    if not labelled:
        del body["metadata"]["labels"]["tailwatch.io/probe"]
    return body


async def scrape(agent: Agent) -> str:
    url = f"http://{agent.settings.listen}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return await resp.text()


async def test_deletion_and_opt_out_take_every_series_in_either_order(
    api: ApiServer, agent: Agent
) -> None:
    """Kubernetes deletes a Service before its slices; opting out relabels the Service and
    then its slices, but the two watches may deliver them in either order."""
    agent.catalog.endpoints.grace = 60.0  # the slice watch may be this far ahead
    seen: list[EndpointEvent] = []
    agent.router.subscribe(EndpointEvent, seen.append)
    pods = [objects.deployment_pod("web", namespace="shop", node="node-a", seed=i,
                                   pod_ip=f"127.32.0.{i + 1}") for i in range(2)]  # fmt: skip
    names = ("deleted", "slices-first", "service-first")
    for name in names:
        api.store.create("services", web_service(name))
        api.store.create("endpointslices", web_slice(name, *pods))
    for name in names:
        ref = ServiceRef("shop", name)
        await wait_for(lambda r=ref: agent.catalog.endpoints.counts_of(r) is not None
                       and agent.catalog.endpoints.counts_of(r).ready == 2, name)  # type: ignore[union-attr]  # fmt: skip
    await wait_for(lambda: len(agent.prober.targets) == 6, "two endpoint targets per Service")
    text = await scrape(agent)
    for name in names:
        assert f'service="{name}"' in text

    def slice_name(name: str) -> str:
        return str(web_slice(name)["metadata"]["name"])

    # Deleted: the Service goes, then the garbage collector deletes its slice.
    api.store.delete("services", "shop", "deleted")
    await wait_for(lambda: not agent.catalog.opted_in(ServiceRef("shop", "deleted")), "deleted")
    api.store.delete("endpointslices", "shop", slice_name("deleted"))
    # Opted out, the slice watch first: the slice leaves the selector before the Service.
    api.store.patch("endpointslices", "shop", slice_name("slices-first"),
                    lambda o: o["metadata"]["labels"].pop("tailwatch.io/probe"))  # fmt: skip
    await wait_for(lambda: agent.catalog.endpoints.held == 1, "the slice's removal held")
    api.store.patch("services", "shop", "slices-first",
                    lambda o: o["metadata"]["labels"].pop("tailwatch.io/probe"))  # fmt: skip
    # Opted out, the Service first.
    api.store.patch("services", "shop", "service-first",
                    lambda o: o["metadata"]["labels"].pop("tailwatch.io/probe"))  # fmt: skip
    api.store.patch("endpointslices", "shop", slice_name("service-first"),
                    lambda o: o["metadata"]["labels"].pop("tailwatch.io/probe"))  # fmt: skip

    def all_gone() -> bool:
        return (
            not any(agent.catalog.opted_in(ServiceRef("shop", n)) for n in names)
            and agent.catalog.endpoints.held == 0
            and not agent.prober.targets
            and agent.slices_health.events.get("DELETED", 0) == 3
        )

    await wait_for(all_gone, "every Service and slice gone")
    text = await scrape(agent)
    leftovers = [line for line in text.splitlines() if 'namespace="shop"' in line]
    assert leftovers == []
    assert sorted({e.kind.value for e in seen}) == ["added", "ready"]  # none invented
