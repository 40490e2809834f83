"""A noisy neighbour end to end: the agent probes a Service whose pod shares node-a with a
batch pod; the simulator's cgroup tree of the node (exporter/simulator/nodecgroups.py,
cgroup v2, systemd, containerd) shows the batch container burning three cores and the
node's pods waiting for CPU while the Service's tail spikes. /api/v1/episodes must name the
batch container as the neighbour, apart from the Service's own containers, with the node's
CPU PSI over the spike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.simulator import ApiServer, objects
from exporter.simulator.load import ContainerLoad, MiB
from exporter.simulator.nodecgroups import NodeCgroups
from exporter.simulator.services import endpoint_of_pod, endpoint_slice
from tests.agent.conftest import loopback_backend, probed_web_service, running_agent
from tests.conftest import wait_for

CLUSTER_IP, POD_IP = "127.3.2.1", "127.3.2.2"
WINDOWS = {
    "episode_settle": 0.6,
    "baseline_window": 8.0,
    # A p99 is bounded from 69 samples at 0.5 (299 at the default 0.95): 8 s of probes
    # every 100 ms, the fastest the annotation allows. The statistics have their own tests.
    "quantile_confidence": 0.5,
    "recovery_window": 2.0,
    "recovery_tolerance": 0.5,
    "recovery_max": 30.0,
}
#: Steady and spiking answer times: slow is over twice what a loaded 2-core machine makes
#: of the steady p99 (up to ~250 ms), so the spike is one whatever the machine.
FAST, SLOW = 0.005, 0.8
HOG_CORES, NODE_WAIT = 3.0, 0.4
LOADED = 60.0


class NodeLoad:
    """What the node's containers do, for the cgroup tree: idle, or the batch container
    burning HOG_CORES while every other running container waits for a core NODE_WAIT of
    the time (the kernel's PSI `some`)."""

    def __init__(self, hog_pod: str) -> None:
        self.hog_pod = hog_pod
        self.hogging = False

    def __call__(self, namespace: str, pod: str, container: str) -> ContainerLoad:
        cores = 0.02
        wait = 0.0
        if self.hogging:
            cores = HOG_CORES if pod == self.hog_pod else cores
            wait = NODE_WAIT
        return ContainerLoad(container, cores, cores, 0.0, 0.0, wait, 0.0, 40 * MiB, None, 0, 0)


@pytest.fixture
async def node_a(api: ApiServer, tmp_path: Path) -> AsyncIterator[tuple[NodeLoad, Path, str]]:
    """The batch pod on node-a and the node's cgroup tree, kept up to date every 50 ms."""
    batch = api.store.create(
        "pods",
        objects.job_pod("cruncher", namespace="batch", node="node-a", containers=("cruncher",)),
    )
    load = NodeLoad(batch["metadata"]["name"])
    root = tmp_path / "cgroup"
    tree = NodeCgroups(root, api.store, "node-a", load, interval=0.05)
    tree.update()
    task = asyncio.create_task(tree.run())
    try:
        yield load, root, batch["metadata"]["name"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def episodes(listen: object) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{listen}/api/v1/episodes") as resp,
    ):
        assert resp.status == 200
        return dict(await resp.json())


async def test_a_cpu_hog_on_the_node_is_named_as_the_neighbour(
    api: ApiServer, kubeconfig: Path, node_a: tuple[NodeLoad, Path, str]
) -> None:
    load, root, hog_pod = node_a
    async with loopback_backend(CLUSTER_IP, POD_IP) as backend:
        backend.delay = FAST
        svc = probed_web_service(CLUSTER_IP, backend.ports[0])
        api.store.create("services", svc)
        # The Service's pod on node-a, with a mesh proxy injected first.
        web = api.store.create(
            "pods",
            objects.deployment_pod(
                "web", node="node-a", pod_ip=POD_IP, containers=("istio-proxy", "app")
            ),
        )
        api.store.create(
            "endpointslices",
            endpoint_slice(svc, [endpoint_of_pod(web)], ports=(("http", backend.ports[1]),)),
        )
        async with running_agent(kubeconfig, root, sample_interval=0.05, **WINDOWS) as agent:
            ref = next(iter(agent.correlator.services))

            def baseline_bounded() -> bool:
                baseline = agent.correlator.baseline_of(ref, agent.clock())
                return baseline is not None and baseline.p99.supported

            await wait_for(baseline_bounded, "a baseline that bounds its p99", timeout=LOADED)
            # The batch job starts burning CPU; the Service's answers slow down with it.
            load.hogging = True
            await asyncio.sleep(0.3)
            backend.delay = SLOW
            await wait_for(agent.correlator.open_episodes, "the spike to open", timeout=LOADED)
            await asyncio.sleep(2.0)  # slow for a while after the detection
            backend.delay = FAST
            await asyncio.sleep(SLOW + 0.3)  # the last slow probes end while it still hogs
            load.hogging = False

            async def closed() -> dict[str, Any] | None:
                doc = await episodes(agent.settings.listen)
                return next(iter(doc["recent"]), None)

            episode = await wait_for(closed, "the spike to close", timeout=LOADED)

    assert episode["spike"] is not None
    assert episode["cause"] == "resource_pressure", episode
    top = episode["neighbours"][0]
    assert (top["namespace"], top["pod"], top["container"]) == ("batch", hog_pod, "cruncher")
    assert "neighbour_cpu" in top["signals"]
    # Over the slow interval the hog ran throughout: its three cores, almost all above its
    # steady rate (the steady rate moved a little in the 0.3 s before the rise).
    assert top["cpu_cores"] == pytest.approx(HOG_CORES, rel=0.15), episode["neighbours"]
    assert top["cpu_cores_above_steady"] > 2.0
    assert episode["node_pressure"]["cpu_some"] == pytest.approx(NODE_WAIT, rel=0.25)
    assert all(n["pod"] != web["metadata"]["name"] for n in episode["neighbours"])
    # The Service's own containers are in its attribution, its injected proxy as a sidecar.
    own = {a["container"]: a["sidecar"] for a in episode["attribution"]}
    assert own == {"istio-proxy": True, "app": False}, episode["attribution"]
    assert f"noisy neighbour batch/{hog_pod}/cruncher burned" in episode["summary"]
