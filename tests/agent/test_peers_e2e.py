"""k agents probe each Service address (docs/scale.md): five real agents against the
simulator, finding each other as their DaemonSet's ready pods."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from exporter import __version__
from exporter.agent import Agent
from exporter.core.peers import PeerSet
from exporter.core.services import ServiceRef
from exporter.simulator import ApiServer, objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service
from tests.agent.conftest import loopback_backend, probed_web_service, running_agent
from tests.conftest import wait_for

NAMESPACE = "tailwatch"
SELECTOR = "app.kubernetes.io/name=tailwatch"
SERVICE_IP = "127.41.0.1"
INTERVAL = 0.1  # probed_web_service probes every 100 ms
K = 3


def peer_pod(node: str) -> dict[str, Any]:
    return objects.daemonset_pod("tailwatch", namespace=NAMESPACE, node=node,
                                 labels={"app.kubernetes.io/name": "tailwatch"})  # fmt: skip


def probing(agents: dict[str, Agent]) -> list[str]:
    """The nodes whose agent probes the Service address now."""
    return sorted(
        node
        for node, agent in agents.items()
        if any(t.target == "service" for t in agent.prober.targets)
    )


def sharing_agent(
    kubeconfig: Path, root: Path, node: str
) -> contextlib.AbstractAsyncContextManager[Agent]:
    """An agent on `node` sharing Service addresses with the peers in NAMESPACE."""
    return running_agent(
        kubeconfig, root, node=node, service_probers=K, peer_selector=SELECTOR,
        pod_namespace=NAMESPACE,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def agents_on(
    nodes: list[str], kubeconfig: Path, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, Agent], dict[str, contextlib.AsyncExitStack]]]:
    """One agent per node, and the stack that stops each one."""
    async with contextlib.AsyncExitStack() as outer:
        agents: dict[str, Agent] = {}
        stops: dict[str, contextlib.AsyncExitStack] = {}
        for node in nodes:
            root = tmp_path / node
            root.mkdir()
            stops[node] = await outer.enter_async_context(contextlib.AsyncExitStack())
            agents[node] = await stops[node].enter_async_context(
                sharing_agent(kubeconfig, root, node)
            )
        yield agents, stops


async def test_k_agents_probe_the_address_and_another_takes_over(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    nodes = [f"node-{i}" for i in range(5)]
    for node in nodes:
        api.store.create("pods", peer_pod(node))
    async with loopback_backend(SERVICE_IP) as backend:
        api.store.create("services", probed_web_service(SERVICE_IP, backend.ports[0]))
        async with agents_on(nodes, kubeconfig, tmp_path) as (agents, stops):
            await wait_for(lambda: len(probing(agents)) == K or None, f"{K} probers")
            chosen = probing(agents)
            # Every agent listed from the API server's watch cache, none from storage.
            assert api.requests.storage_reads() == []
            assert {f"tailwatch/{__version__} node/{n}" for n in nodes} <= set(
                api.requests.clients()
            )
            # Every agent computes the same k from the same peers.
            for agent in agents.values():
                assert agent.peers is not None
                assert sorted(agent.peers.probers("default/web")) == chosen

            # The address sees k probes per interval, not one per agent.
            await wait_for(lambda: len(backend.arrivals) >= 40, "probes at the address")
            start = len(backend.arrivals) - 1
            await wait_for(lambda: backend.arrivals[-1] - backend.arrivals[start] >= 2.0 or None,
                           "two seconds of probes")  # fmt: skip
            window = backend.arrivals[start:]
            span = window[-1] - window[0]
            assert len(window) <= K * (span / INTERVAL + 1)
            assert len(window) >= (K - 0.5) * span / INTERVAL  # all k probe

            # One prober's node goes: its agent stops, then its pod is deleted.
            gone = chosen[0]
            await stops[gone].aclose()
            del agents[gone]
            pods = api.store.list("pods", NAMESPACE)
            name = next(p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == gone)
            api.store.delete("pods", NAMESPACE, name)
            before = len(backend.arrivals)
            await wait_for(lambda: len(probing(agents)) == K or None, "another agent taking over")
            taken_over = probing(agents)
            assert len(set(taken_over) - set(chosen)) == 1
            await wait_for(lambda: len(backend.arrivals) >= before + 20, "probes after")
            gaps = [b - a for a, b in zip(backend.arrivals, backend.arrivals[1:], strict=False)]
            assert max(gaps) < 15.0
            assert max(gaps) < 2.0  # in fact the watch carries the change in well under a second


async def test_with_no_peer_visible_an_agent_probes_alone_and_says_so(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    async with loopback_backend(SERVICE_IP) as backend:
        api.store.create("services", probed_web_service(SERVICE_IP, backend.ports[0]))
        async with sharing_agent(kubeconfig, tmp_path, "node-a") as agent:
            await wait_for(lambda: probing({"a": agent}) or None, "the agent probing alone")
            body = await targets(agent)
            assert body["address_probing"]["mode"] == "alone"
            assert "no ready pod matches" in body["address_probing"]["reason"]
            assert body["services"][0]["address_probed_here"] is True

            # Other agents appear, this one's pod not (yet) among them: it leaves it to them.
            for node in ("node-b", "node-c", "node-d"):
                api.store.create("pods", peer_pod(node))
            await wait_for(lambda: not probing({"a": agent}), "the others taking the address")
            body = await targets(agent)
            assert body["address_probing"]["mode"] == "waiting"
            assert body["address_probing"]["peers"] == 3
            assert body["services"][0]["address_probed_here"] is False


async def targets(agent: Agent) -> dict[str, Any]:
    url = f"http://{agent.settings.listen}/api/v1/targets"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_joining_the_peers_takes_exactly_this_agents_share(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    """The agent probes every address alone; then its own pod and three others become ready
    peers: its share is set up in steps (between which the loop runs the prober), and it
    ends up probing exactly the Services whose k probers include it."""
    refs = [ServiceRef("default", f"svc-{i}") for i in range(24)]
    for i, ref in enumerate(refs):
        api.store.create("services", service(ref.name, cluster_ip=f"127.42.0.{i + 1}"))
    async with sharing_agent(kubeconfig, tmp_path, "node-a") as agent:
        await wait_for(lambda: len(probing_refs(agent)) == len(refs) or None, "alone: all")
        for node in ("node-a", "node-b", "node-c", "node-d"):
            api.store.create("pods", peer_pod(node))
        peers = agent.peers
        assert peers is not None

        def settled() -> bool:
            return peers.peers == 4 and not peers.pending

        await wait_for(settled, "the peer set's setup")
        share = {r for r in refs if "node-a" in peers.probers(str(r))}
        assert 0 < len(share) < len(refs)  # 24 Services, 3 of 4 peers each: about 18
        await wait_for(lambda: probing_refs(agent) == share or None, "this agent's share")
        body = await targets(agent)
        assert body["address_probing"]["mode"] == "shared"
        here = {s["service"] for s in body["services"] if s["address_probed_here"]}
        assert here == {r.name for r in share}


def probing_refs(agent: Agent) -> set[ServiceRef]:
    return {
        ServiceRef(t.namespace, t.service) for t in agent.prober.targets if t.target == "service"
    }


async def test_the_node_that_loses_an_endpoint_sees_its_episode_through(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    """node-a is not one of the Service's k probers but hosts its endpoint: the endpoint
    goes not ready (an episode opens here) and its pod is rescheduled to node-b. node-a
    keeps the Service, its events and its episode until the episode is over."""
    for node in ("node-a", "node-b", "node-c", "node-d"):
        api.store.create("pods", peer_pod(node))
    name = next(f"db-{i}" for i in range(100) if "node-a" not in probers_of(f"default/db-{i}"))
    db = service(name, cluster_ip="127.43.0.1", ports=(("pg", 5432, 5432),))
    api.store.create("services", db)

    def slice_on(node: str, *, ready: bool = True) -> dict[str, Any]:
        pod = objects.statefulset_pod(name, 0, node=node, pod_ip="127.43.1.1", seed=ord(node[-1]))
        if not ready:
            pod = objects.mark_not_ready(pod, 10.0)
        return endpoint_slice(db, [endpoint_of_pod(pod)], ports=(("pg", 5432),))

    def put(body: dict[str, Any]) -> None:
        meta = body["metadata"]
        try:
            current = api.store.get("endpointslices", "default", meta["name"])
        except Exception:
            api.store.create("endpointslices", body)
            return
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        api.store.update("endpointslices", body)

    put(slice_on("node-a"))
    ref = ServiceRef("default", name)
    async with sharing_agent(kubeconfig, tmp_path, "node-a") as agent:
        await wait_for(lambda: agent.peers is not None and agent.peers.peers == 4
                       and not agent.peers.pending, "the peers")  # fmt: skip
        assert not agent.probes_address(ref) and agent.reports(ref)  # it hosts the endpoint
        put(slice_on("node-a", ready=False))
        await wait_for(lambda: agent.correlator.has_episode(ref) or None, "an episode here")
        put(slice_on("node-b"))  # rescheduled: gone from node-a, back on node-b
        await wait_for(lambda: "moved" in events_of(agent, ref) or None, "the move seen here")
        assert agent.reports(ref) and agent.correlator.has_episode(ref)


def events_of(agent: Agent, ref: ServiceRef) -> set[str]:
    return {k[2] for k in agent.metrics.endpoint_events if k[:2] == (ref.namespace, ref.name)}


def probers_of(key: str) -> list[str]:
    """The k probers of a Service among node-a to node-d, as every agent computes them."""
    peers = PeerSet("node-x", K)
    peers.sync([peer_pod(n) for n in ("node-a", "node-b", "node-c", "node-d")])
    return peers.probers(key)
