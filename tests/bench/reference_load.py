"""The reference node's load (docs/design.md, "Reference load and budgets") around a real
`tailwatch run` subprocess, for the benchmarks that measure the whole agent: the soak
(test_agent_soak.py) and the cost comparison with blackbox_exporter (test_agent_cost.py).
One place builds it, so both measure the same thing.

All of it real:
- the API simulator with 110 pods (330 containers) on the agent's node, 20 opted-in Services
  (HTTP probes every 1 s, SLO 50 ms) with 250 endpoints, 25 of them pods of this node;
- every probed address (the 20 ClusterIPs and the 25 local endpoints, each its own 127.x
  address, one port) answered by a server in another process (tests/latency/targets.py), in
  2 ms;
- the reference node's cgroup tree (v2, systemd, containerd) for those pods, whose CPU,
  memory and CPU pressure files grow every second (`Growth`);
- 1,000 OTLP data points/s: 10 clients, each exporting 100 cumulative
  `http.client.request.duration` streams (20 Services x 5 methods) once a second,
  protobuf + gzip, as the OpenTelemetry SDK sends them;
- a Prometheus-like scrape of /metrics every 15 s (OpenMetrics, gzip) from its own process
  (tests/bench/scraper_process.py), so its timings never wait on this event loop.

`reference_load(tmp_path)` starts all of it, waits for the agent to be ready, starts the
load and yields a `ReferenceLoad`; `finish()` stops the load and takes a last scrape while
the agent still runs; leaving the block stops the agent and the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.cgroups.synthetic import TreeLayout, write_tree
from exporter.simulator import ApiServer, objects
from exporter.simulator import services as svc_objects
from tests.agent.test_cgroups_e2e import synthetic
from tests.bench.test_cgroup_sampling import Churn
from tests.bench.test_otlp_ingest import RESOURCE, stream_attrs
from tests.conftest import free_port, wait_for_ok
from tests.exposition.test_exposition import PROMETHEUS_ACCEPT
from tests.latency.targets import unused_port
from tests.otlp.builders import SEMCONV_BOUNDS, explicit_point, metric, request

NODE = "ref-node"
NAMESPACE = "shop"
PODS = 110
CONTAINERS = ("app", "envoy", "log-shipper")
SERVICES = 20
ENDPOINTS = 250
LOCAL_ENDPOINTS = 25
OTLP_CLIENTS = 10  # x 100 streams, each exporting once a second: 1,000 points/s
STREAMS = 100
OTLP_POINTS_PER_SECOND = OTLP_CLIENTS * STREAMS
PROBE_INTERVAL = 1.0
TARGET_DELAY = 0.002  # every probed server answers in 2 ms
LAYOUT = TreeLayout("v2", "systemd", "containerd")
ROOT = Path(__file__).parents[2]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def machine_busy_seconds() -> tuple[float, float]:
    """(CPU seconds used by everything on the machine, seconds of all cores) so far, from
    /proc/stat: how busy the shared machine was around a measurement."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # steal included, guest time is already in user
    return (total - idle) / TICKS, total / TICKS


def metric_totals(body: bytes) -> Callable[..., float]:
    """A gzipped OpenMetrics scrape -> `total(name, **labels)`: the sum of its samples of
    that name whose labels include `labels`."""
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(gzip.decompress(body).decode())
        for s in family.samples
    }

    def total(name: str, **match: str) -> float:
        return sum(v for (n, labels), v in samples.items()
                   if n == name and all((k, w) in labels for k, w in match.items()))  # fmt: skip

    return total


_LAST_NUMBER = re.compile(rb"(\d+)(\n?)\Z")


class Growth(Churn):
    """Churn's files ("busy": cpu.stat, memory.current, cpu.pressure of every container),
    with their last number growing at every step instead of flipping: counters only rise."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "busy")
        self.steps = 0
        self.deltas = [_last(b) - _last(a) for _, a, b in self.variants]

    def step(self) -> None:
        self.steps += 1
        for (fd, a, _), delta in zip(self.variants, self.deltas, strict=True):
            grown = delta * self.steps
            data = _LAST_NUMBER.sub(lambda m, g=grown: b"%d%s" % (int(m[1]) + g, m[2]), a)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))


def _last(data: bytes) -> int:
    found = _LAST_NUMBER.search(data)
    assert found is not None
    return int(found[1])


def opted_in_service(i: int, port: int) -> dict[str, Any]:
    return svc_objects.service(
        f"svc{i}", namespace=NAMESPACE, cluster_ip=f"127.0.2.{i + 1}",
        ports=(("http", port, "http"),),
        annotations={"tailwatch.io/probe-protocol": "http", "tailwatch.io/probe-path": "/",
                     "tailwatch.io/slo-latency": "50ms"},
    )  # fmt: skip


def otlp_body(client: int, totals: list[list[int]], export: int, rng: random.Random) -> bytes:
    """One export of a client: every stream, cumulative, a third of its buckets moved."""
    points = []
    width = len(SEMCONV_BOUNDS) + 1
    for s, counts in enumerate(totals):
        for b in rng.sample(range(width), width // 3):
            counts[b] += rng.randint(1, 5)
        points.append(explicit_point(counts, total=sum(counts) * 0.02,
                                     time=(1_800_000_000 + export) * 10**9,
                                     attrs=stream_attrs(s)))  # fmt: skip
    resource = {**RESOURCE, "service.instance.id": f"client-{client}"}
    return gzip.compress(request(metric(points), resource=resource).SerializeToString(), 1)


async def every(
    interval: float, action: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """`action` on a fixed schedule until `stop`; a late action does not shift the ones after."""
    next_at = time.monotonic()
    while not stop.is_set():
        await action()
        next_at += interval
        delay = max(0.0, next_at - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


@dataclass
class Scrape:
    at: float  # seconds since the agent was ready, when the scraper reported it
    seconds: float  # the answer time the scraper measured
    status: int
    bytes: int


@dataclass
class ReferenceLoad:
    """The running load. `targets` are the 45 addresses the agent probes, as (host, port):
    the 20 ClusterIPs, then the 25 local endpoints."""

    agent: asyncio.subprocess.Process
    http: aiohttp.ClientSession
    metrics_url: str
    targets: list[tuple[str, int]]
    agent_log: Path
    started: float = 0.0  # time.monotonic() when the agent was ready
    otlp_status: dict[int, int] = field(default_factory=dict)
    scrapes: list[Scrape] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    scraper: asyncio.subprocess.Process | None = None

    def since_ready(self) -> float:
        return time.monotonic() - self.started

    async def wait(self, seconds: float) -> None:
        """Let the load run for `seconds`; returns early if the agent dies."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.agent.wait(), seconds)

    async def scrape(self) -> bytes:
        """One /metrics from this process (OpenMetrics, gzip), for counts, not timings."""
        headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        async with self.http.get(self.metrics_url, headers=headers) as resp:
            assert resp.status == 200
            return await resp.read()

    async def finish(self) -> bytes:
        """Stops the load and the scraper, checks the agent is still up, and returns a last
        scrape of its /metrics."""
        self.stop.set()
        await asyncio.gather(*self.tasks)
        assert self.agent.returncode is None, f"the agent stopped: see {self.agent_log}"
        return await self.scrape()


async def _read_scrapes(load: ReferenceLoad, scraper: asyncio.subprocess.Process) -> None:
    assert scraper.stdout is not None
    while line := await scraper.stdout.readline():
        s = json.loads(line)
        load.scrapes.append(Scrape(load.since_ready(), s["seconds"], s["status"], s["bytes"]))


@contextlib.asynccontextmanager
async def reference_load(
    tmp_path: Path, *, scrape_every: float = 15.0
) -> AsyncIterator[ReferenceLoad]:
    api = ApiServer(token="soak", bookmark_interval=5.0)
    async with api:
        # -- the cluster: pods of this node, Services, endpoints ---------------------------
        hosts = [f"127.0.2.{i + 1}" for i in range(SERVICES)]
        hosts += [f"127.0.3.{i + 1}" for i in range(LOCAL_ENDPOINTS)]
        port = unused_port(hosts[0])
        pods = [
            api.store.create("pods", objects.deployment_pod(
                f"svc{i % SERVICES}", namespace=NAMESPACE, node=NODE, seed=i,
                containers=CONTAINERS, requests={"cpu": "100m", "memory": "128Mi"},
                limits={"cpu": "500m", "memory": "256Mi"},
                pod_ip=f"127.0.3.{i + 1}" if i < LOCAL_ENDPOINTS else f"10.244.0.{i + 1}"))
            for i in range(PODS)
        ]  # fmt: skip
        endpoints: dict[int, list[dict[str, Any]]] = {i: [] for i in range(SERVICES)}
        for i, pod in enumerate(pods[:LOCAL_ENDPOINTS]):
            endpoints[i % SERVICES].append(svc_objects.endpoint_of_pod(pod))
        for j in range(ENDPOINTS - LOCAL_ENDPOINTS):  # pods of other nodes: never probed here
            elsewhere = objects.deployment_pod(f"svc{j % SERVICES}", namespace=NAMESPACE,
                                               node=f"node-{j % 50}", seed=1000 + j)  # fmt: skip
            endpoints[j % SERVICES].append(svc_objects.endpoint_of_pod(elsewhere))
        for i in range(SERVICES):
            service = api.store.create("services", opted_in_service(i, port))
            api.store.create("endpointslices", svc_objects.endpoint_slice(
                service, endpoints[i], ports=(("http", port),), seed=i))  # fmt: skip
        write_tree(tmp_path / "cgroup", LAYOUT, [synthetic(p, cpu_s=10.0) for p in pods])
        growth = Growth(tmp_path / "cgroup")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        # -- the pods' servers and the agent ------------------------------------------------
        spec = tmp_path / "targets.json"
        spec.write_text(json.dumps({"servers": [
            {"host": h, "port": port, "constant": TARGET_DELAY} for h in hosts]}))  # fmt: skip
        servers = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
            [sys.executable, "-m", "tests.latency.targets", str(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert servers.stdout is not None
        assert json.loads(servers.stdout.readline())["ports"] == [port] * len(hosts)
        listen, otlp_port = free_port(), free_port()
        log_path = tmp_path / "agent.log"
        agent_log = log_path.open("wb")
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "run", "--kubeconfig", str(kubeconfig),
            "--node-name", NODE, "--listen", f"127.0.0.1:{listen}",
            "--otlp-listen", f"127.0.0.1:{otlp_port}", "--cgroup-root", str(tmp_path / "cgroup"),
            "--log-level", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=agent_log,
            env={**os.environ, "KUBERNETES_SERVICE_HOST": ""}, cwd=ROOT,
        )  # fmt: skip
        scraper: asyncio.subprocess.Process | None = None
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                load = ReferenceLoad(agent, http, f"http://127.0.0.1:{listen}/metrics",
                                     [(h, port) for h in hosts], log_path)  # fmt: skip

                await wait_for_ok(http, f"http://127.0.0.1:{listen}/readyz",
                                  "the agent to be ready", timeout=60)  # fmt: skip
                load.started = time.monotonic()
                scraper = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.bench.scraper_process", load.metrics_url,
                    str(scrape_every), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, cwd=ROOT,
                )  # fmt: skip
                reader = asyncio.create_task(_read_scrapes(load, scraper))

                async def grow_cgroups() -> None:
                    growth.step()

                rng = random.Random(11)
                totals = [[[0] * (len(SEMCONV_BOUNDS) + 1) for _ in range(STREAMS)]
                          for _ in range(OTLP_CLIENTS)]  # fmt: skip
                exports = [0]

                async def send_otlp() -> None:
                    # One client every 100 ms: each exports once a second.
                    client = exports[0] % OTLP_CLIENTS
                    exports[0] += 1
                    body = otlp_body(client, totals[client], exports[0], rng)
                    async with http.post(
                        f"http://127.0.0.1:{otlp_port}/v1/metrics", data=body,
                        headers={"Content-Type": "application/x-protobuf",
                                 "Content-Encoding": "gzip"},
                    ) as resp:  # fmt: skip
                        await resp.read()
                        load.otlp_status[resp.status] = load.otlp_status.get(resp.status, 0) + 1

                load.tasks += [
                    asyncio.create_task(every(1.0, grow_cgroups, load.stop)),
                    asyncio.create_task(every(1.0 / OTLP_CLIENTS, send_otlp, load.stop)),
                ]
                try:
                    yield load
                finally:
                    load.stop.set()
                    await asyncio.gather(*load.tasks, return_exceptions=True)
                    assert scraper.stdin is not None
                    scraper.stdin.close()
                    await scraper.wait()
                    await reader
        finally:
            if scraper is not None and scraper.returncode is None:
                scraper.kill()
                await scraper.wait()
            if agent.returncode is None:
                agent.terminate()
                await agent.wait()
            assert servers.stdin is not None
            servers.stdin.close()
            servers.wait(10)
            servers.stdout.close()
            growth.close()
            agent_log.close()
