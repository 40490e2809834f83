"""Agent footprint at the reference node (docs/design.md): RSS with 110 pods / 330 containers,
and the time from a watch event to its metric being visible on /metrics.

Run with `make bench` (or `.venv/bin/python -m pytest tests/bench/test_agent_footprint.py
-m bench -s`). Two agents run side by side in one run against one simulator: one on the
reference node, one on an empty node, so the cost of the pods is the difference.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.conftest import free_port, wait_for

pytestmark = pytest.mark.bench

PODS = 110
CONTAINERS = ("app", "envoy", "log-shipper")
OTHER_NODES_PODS = 1000  # pods on other nodes: must not cost this agent anything
EVENTS = 300


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def start_agent(
    kubeconfig: Path, node: str, tmp: Path
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "run", "--kubeconfig", str(kubeconfig),
        "--node-name", node, "--listen", f"127.0.0.1:{port}", "--otlp-listen", "",
        "--cgroup-root", str(tmp), "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "KUBERNETES_SERVICE_HOST": ""},
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def test_agent_footprint(tmp_path: Path) -> None:
    api = ApiServer(token="bench", bookmark_interval=1.0)
    async with api:
        cluster = Cluster(api.store)
        for i in range(PODS):
            cluster.add(objects.deployment_pod(f"svc{i % 20}", node="ref-node", seed=i,
                                               containers=CONTAINERS))  # fmt: skip
        for i in range(OTHER_NODES_PODS):
            cluster.add(objects.deployment_pod(f"svc{i % 20}", node=f"n{i % 50}", seed=1000 + i))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ref, ref_url = await start_agent(kubeconfig, "ref-node", tmp_path)
        idle, idle_url = await start_agent(kubeconfig, "empty-node", tmp_path)
        try:
            async with aiohttp.ClientSession() as http:

                async def ready(url: str) -> bool:
                    try:
                        async with http.get(url + "/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_for(lambda: ready(ref_url), "reference agent ready", timeout=60)
                await wait_for(lambda: ready(idle_url), "idle agent ready", timeout=60)

                async def scrape(url: str) -> str:
                    async with http.get(url + "/metrics") as resp:
                        return await resp.text()

                scrape_times = []
                for _ in range(50):
                    t0 = time.perf_counter()
                    await scrape(ref_url)
                    scrape_times.append(time.perf_counter() - t0)

                latencies = []
                names = [p["metadata"]["name"] for p in api.store.list("pods")
                         if p["spec"]["nodeName"] == "ref-node"]  # fmt: skip
                for i in range(EVENTS):
                    name = names[i % len(names)]
                    count = i // len(names) + 1
                    needle = (
                        f'tailwatch_container_restarts_total{{container="app",namespace="default",'
                        f'pod="{name}",reason="OOMKilled"}} {count:.1f}'
                    )
                    t0 = time.perf_counter()
                    cluster.restart("default", name, "app", "OOMKilled")
                    while needle not in await scrape(ref_url):
                        pass
                    latencies.append(time.perf_counter() - t0)

                ref_rss, idle_rss = rss_mib(ref.pid), rss_mib(idle.pid)
        finally:
            for proc in (ref, idle):
                proc.terminate()
                await proc.wait()

    ms = [x * 1000 for x in latencies]
    scrape_ms = [x * 1000 for x in scrape_times]
    print(
        "\n| measurement | value |\n| --- | --- |\n"
        f"| RSS, agent on the reference node ({PODS} pods, {PODS * len(CONTAINERS)} containers) "
        f"| {ref_rss:.1f} MiB |\n"
        f"| RSS, agent on an empty node (same cluster) | {idle_rss:.1f} MiB |\n"
        f"| ratio reference / empty | {ref_rss / idle_rss:.2f} |\n"
        f"| watch event to /metrics, median ({EVENTS} events) | {statistics.median(ms):.1f} ms |\n"
        f"| watch event to /metrics, p99 | {percentile(ms, 0.99):.1f} ms |\n"
        f"| one /metrics scrape (part of the above), median "
        f"| {statistics.median(scrape_ms):.1f} ms |\n"
    )
