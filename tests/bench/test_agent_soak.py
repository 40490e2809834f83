"""Soak: `tailwatch run` as a subprocess at the reference node load (docs/design.md) for
TAILWATCH_SOAK_SECONDS (default 600), its CPU and RSS sampled from /proc every few seconds.

Run: `TAILWATCH_SOAK_SECONDS=600 .venv/bin/python -m pytest tests/bench/test_agent_soak.py
-m bench -s` (60 for a try-out).

The load, all of it real:
- the API simulator with 110 pods (330 containers) on the agent's node, 20 opted-in Services
  (HTTP probes every 1 s, SLO 50 ms) with 250 endpoints, 25 of them pods of this node;
- every probed address (the 20 ClusterIPs and the 25 local endpoints, each its own 127.x
  address) answered by a server in another process (tests/latency/targets.py), in 2 ms;
- the reference node's cgroup tree (v2, systemd, containerd) for those pods, whose CPU,
  memory and CPU pressure files grow every second (test_cgroup_sampling.py's `Churn`);
- 1,000 OTLP data points/s: 10 clients, each exporting 100 cumulative
  `http.client.request.duration` streams (20 Services x 5 methods) once a second,
  protobuf + gzip, as the OpenTelemetry SDK sends them;
- a Prometheus-like scrape of /metrics every 15 s (OpenMetrics, gzip).

Reported: the agent's CPU as a share of one core (utime + stime over wall time) after the
warm-up, RSS at the end of the warm-up and at the end, the RSS slope after the warm-up (least
squares), and what the scrapes saw. Budget: 2% of a core, 96 MiB RSS after an hour, no RSS
growth after warm-up. Numbers go to docs/performance.md, "Soak".
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.cgroups.synthetic import TreeLayout, write_tree
from exporter.simulator import ApiServer, objects
from exporter.simulator import services as svc_objects
from tests.agent.test_cgroups_e2e import synthetic
from tests.bench.test_agent_footprint import percentile, rss_mib
from tests.bench.test_cgroup_sampling import Churn
from tests.bench.test_otlp_ingest import RESOURCE, stream_attrs
from tests.conftest import free_port, wait_for
from tests.exposition.test_exposition import PROMETHEUS_ACCEPT
from tests.latency.targets import unused_port
from tests.otlp.builders import SEMCONV_BOUNDS, explicit_point, metric, request

SOAK_SECONDS = float(os.environ.get("TAILWATCH_SOAK_SECONDS", "600"))
WARMUP_SECONDS = min(120.0, SOAK_SECONDS / 4)
SAMPLE_EVERY = 5.0
SCRAPE_EVERY = float(os.environ.get("TAILWATCH_SOAK_SCRAPE_SECONDS", "15"))
NODE = "ref-node"
NAMESPACE = "shop"
PODS = 110
CONTAINERS = ("app", "envoy", "log-shipper")
SERVICES = 20
ENDPOINTS = 250
LOCAL_ENDPOINTS = 25
OTLP_CLIENTS = 10  # x 100 streams, each exporting once a second: 1,000 points/s
STREAMS = 100
LAYOUT = TreeLayout("v2", "systemd", "containerd")
ROOT = Path(__file__).parents[2]
TICKS = os.sysconf("SC_CLK_TCK")

pytestmark = [pytest.mark.bench, pytest.mark.timeout(SOAK_SECONDS + 600)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat(5)


@dataclass
class Usage:
    at: list[float] = field(default_factory=list)  # seconds since the agent was ready
    cpu: list[float] = field(default_factory=list)  # cumulative CPU seconds
    rss: list[float] = field(default_factory=list)  # MiB


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


async def test_agent_soak_at_the_reference_node(tmp_path: Path) -> None:
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
        spec.write_text(json.dumps({"servers": [{"host": h, "port": port, "constant": 0.002}
                                                for h in hosts]}))  # fmt: skip
        servers = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
            [sys.executable, "-m", "tests.latency.targets", str(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert servers.stdout is not None
        assert json.loads(servers.stdout.readline())["ports"] == [port] * len(hosts)
        listen, otlp_port = free_port(), free_port()
        agent_log = (tmp_path / "agent.log").open("wb")
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "exporter", "run", "--kubeconfig", str(kubeconfig),
            "--node-name", NODE, "--listen", f"127.0.0.1:{listen}",
            "--otlp-listen", f"127.0.0.1:{otlp_port}", "--cgroup-root", str(tmp_path / "cgroup"),
            "--log-level", "warning",
            stdout=asyncio.subprocess.DEVNULL, stderr=agent_log,
            env={**os.environ, "KUBERNETES_SERVICE_HOST": ""}, cwd=ROOT,
        )  # fmt: skip
        usage, otlp_status = Usage(), {}
        stop = asyncio.Event()
        try:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                metrics_url = f"http://127.0.0.1:{listen}/metrics"

                async def ready() -> bool:
                    try:
                        async with http.get(f"http://127.0.0.1:{listen}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_for(ready, "the agent to be ready", timeout=60)
                started = time.monotonic()
                # Prometheus is another process: so is the scraper, whose timings must not
                # wait on this event loop's own work.
                scraper = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.bench.scraper_process", metrics_url,
                    str(SCRAPE_EVERY), stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE, cwd=ROOT,
                )  # fmt: skip

                async def every(interval: float, action: Any) -> None:
                    next_at = time.monotonic()
                    while not stop.is_set():
                        await action()
                        next_at += interval
                        delay = max(0.0, next_at - time.monotonic())
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), delay)

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
                        otlp_status[resp.status] = otlp_status.get(resp.status, 0) + 1

                async def last_scrape() -> bytes:
                    headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
                    async with http.get(metrics_url, headers=headers) as resp:
                        assert resp.status == 200
                        return await resp.read()

                async def sample_usage() -> None:
                    usage.at.append(time.monotonic() - started)
                    usage.cpu.append(cpu_seconds(agent.pid))
                    usage.rss.append(rss_mib(agent.pid))

                tasks = [
                    asyncio.create_task(every(1.0, grow_cgroups)),
                    asyncio.create_task(every(1.0 / OTLP_CLIENTS, send_otlp)),
                    asyncio.create_task(every(SAMPLE_EVERY, sample_usage)),
                ]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SOAK_SECONDS)
                stop.set()
                await asyncio.gather(*tasks)
                assert agent.returncode is None, "the agent stopped during the soak"
                assert scraper.stdin is not None
                scraper.stdin.close()
                out, _ = await scraper.communicate()
                scrapes = [json.loads(line) for line in out.splitlines()]
                body = await last_scrape()
        finally:
            if agent.returncode is None:
                agent.terminate()
                await agent.wait()
            assert servers.stdin is not None
            servers.stdin.close()
            servers.wait(10)
            servers.stdout.close()
            growth.close()
            agent_log.close()

    print((tmp_path / "agent.log").read_text()[-2000:])  # the agent's warnings, if any
    report(usage, scrapes, body, otlp_status)


def rss_slope(at: list[float], rss: list[float]) -> float:
    """Least-squares slope of RSS over time, MiB per second."""
    mean_t, mean_r = statistics.fmean(at), statistics.fmean(rss)
    return sum((t - mean_t) * (r - mean_r) for t, r in zip(at, rss, strict=True)) / sum(
        (t - mean_t) ** 2 for t in at
    )


def report(usage: Usage, scrapes: list[dict[str, Any]], body: bytes, otlp: dict[int, int]) -> None:
    warm = next(i for i, t in enumerate(usage.at) if t >= WARMUP_SECONDS)
    at, cpu, rss = usage.at[warm:], usage.cpu[warm:], usage.rss[warm:]
    share = (cpu[-1] - cpu[0]) / (at[-1] - at[0])
    overall = (usage.cpu[-1] - usage.cpu[0]) / (usage.at[-1] - usage.at[0])
    slope = rss_slope(at, rss)
    # The correlation core keeps 5 minutes of history (the baseline window): the second
    # half of a 10-minute run is the first stretch where every buffer is full.
    half = next(i for i, t in enumerate(usage.at) if t >= SOAK_SECONDS / 2)
    late_slope = rss_slope(usage.at[half:], usage.rss[half:])
    last = gzip.decompress(body).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(last)
        for s in family.samples
    }

    def total(name: str, **match: str) -> float:
        return sum(v for (n, labels), v in samples.items()
                   if n == name and all((k, w) in labels for k, w in match.items()))  # fmt: skip

    latencies = [s["seconds"] for s in scrapes if s["status"] == 200]
    print(
        f"\nsoak: {SOAK_SECONDS:.0f} s at the reference node, warm-up {WARMUP_SECONDS:.0f} s, "
        f"{len(usage.at)} samples every {SAMPLE_EVERY:.0f} s\n"
        "| measurement | value |\n| --- | --- |\n"
        f"| CPU, share of one core after warm-up | {share * 100:.2f}% |\n"
        f"| CPU, share of one core over the whole run | {overall * 100:.2f}% |\n"
        f"| RSS at the end of warm-up | {rss[0]:.1f} MiB |\n"
        f"| RSS at the end | {rss[-1]:.1f} MiB |\n"
        f"| RSS max | {max(usage.rss):.1f} MiB |\n"
        f"| RSS slope after warm-up | {slope * 3600:+.2f} MiB/hour |\n"
        f"| RSS over the second half | {usage.rss[half]:.1f} -> {usage.rss[-1]:.1f} MiB, "
        f"slope {late_slope * 3600:+.2f} MiB/hour |\n"
        f"| scrapes (every {SCRAPE_EVERY:g} s, OpenMetrics + gzip, another process) | "
        f"{len(scrapes)}, {sum(s['status'] != 200 for s in scrapes)} failed |\n"
        f"| scrape answer, median / p99 | {statistics.median(latencies) * 1e3:.1f} ms / "
        f"{percentile(latencies, 0.99) * 1e3:.1f} ms |\n"
        f"| /metrics size, last scrape | {len(last) / 1e6:.2f} MB, "
        f"{len(body) / 1e3:.0f} kB gzipped |\n"
        f"| probes / failed | {total('tailwatch_probe_duration_seconds_count'):.0f} / "
        f"{total('tailwatch_probe_failures_total'):.0f} |\n"
        f"| OTLP requests (HTTP status: count) | {otlp} |\n"
        f"| OTLP data points accepted | "
        f"{total('tailwatch_otlp_datapoints_total', outcome='accepted'):.0f} |\n"
        f"| episodes closed | {total('tailwatch_episodes_total'):.0f} |"
    )
    print("RSS (MiB) every sample:", " ".join(f"{r:.1f}" for r in usage.rss))
    assert all(s["status"] == 200 for s in scrapes)
    assert set(otlp) == {200}
    assert total("tailwatch_otlp_datapoints_total", outcome="accepted") > 0
