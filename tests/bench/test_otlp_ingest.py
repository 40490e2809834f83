"""OTLP ingest cost: data points per second per core, and the decode cost per request.
Run: .venv/bin/python -m pytest tests/bench/test_otlp_ingest.py -m bench -s

Requests are shaped like the OpenTelemetry SDK's: one client resource (k8s and SDK
attributes), 100 `http.client.request.duration` points per request against 20 Services,
each point with the attributes HTTP client instrumentations set, semantic-convention bounds,
cumulative temporality, about a third of the buckets moving per export. Reported:

- in process: CPU time (process_time) of decode + checks + cumulative-to-delta + a sink, per
  data point and as points per second of one core, explicit and exponential histograms;
- decode alone per request: protobuf vs OTLP/JSON, with and without gzip;
- over HTTP: the receiver in a child process, its own CPU time (utime + stime from /proc)
  while this process posts gzip protobuf requests, the way the SDK sends them: everything
  the agent pays, HTTP included.

Budget context (docs/design.md, *Reference load and budgets*): 1,000 OTLP data points/s
within the agent's 2% of one core. Numbers go to docs/performance.md, "OTLP ingest".
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from exporter.core.services import ServiceRef
from exporter.otlp import IngestLimits, OtlpReceiver, ReceiverLimits
from exporter.otlp.decode import Encoding, decode_request
from exporter.otlp.points import HistogramIngest, LatencyDelta
from exporter.settings import ListenAddress
from tests.otlp.builders import (
    SEMCONV_BOUNDS,
    T0,
    explicit_point,
    exponential_point,
    metric,
    request,
)

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]

POINTS_PER_REQUEST = 100
SERVICES = 20
REQUESTS = 300  # per measured run: 30,000 points
RUNS = 3
RESOURCE = {
    "service.name": "checkout",
    "service.instance.id": "2f9c0a4e-6c1d-4a4e-9f5b-0d6b3f0c7e11",
    "k8s.namespace.name": "shop",
    "k8s.pod.name": "checkout-7d9c5b8f6-x2x9k",
    "k8s.node.name": "node-a",
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.45.2",
}
REFS = {f"svc{i}.shop": ServiceRef("shop", f"svc{i}") for i in range(SERVICES)}


def resolve(host: str, port: int | None) -> ServiceRef | None:
    return REFS.get(host)


def stream_attrs(i: int) -> dict[str, str | int]:
    return {
        "server.address": f"svc{i % SERVICES}.shop.svc.cluster.local",
        "server.port": 8080,
        "http.request.method": ("GET", "POST", "PUT", "DELETE", "PATCH")[i // SERVICES % 5],
        "http.response.status_code": 200,
        "network.protocol.version": "1.1",
    }


def cumulative_requests(
    n: int, exponential: bool = False, busy: float = 1.0
) -> list[ExportMetricsServiceRequest]:
    """`n` successive exports of the same 100 cumulative streams, of which the `busy`
    share has new measurements in each export (the others repeat their last point)."""
    rng = random.Random(7)
    width = 40 if exponential else len(SEMCONV_BOUNDS) + 1
    totals = [[0] * width for _ in range(POINTS_PER_REQUEST)]
    out = []
    for export in range(n):
        points = []
        for s, counts in enumerate(totals):
            if export == 0 or s < busy * POINTS_PER_REQUEST:
                for b in rng.sample(range(width), width // 3):
                    counts[b] += rng.randint(1, 20)
            t = T0 + (export + 1) * 10**9
            total = sum(counts) * 0.05
            if exponential:
                points.append(exponential_point(counts, scale=3, offset=-60, total=total,
                                                time=t, attrs=stream_attrs(s)))  # fmt: skip
            else:
                points.append(explicit_point(counts, total=total, time=t, attrs=stream_attrs(s),
                                             min_max=(0.001, 30.0)))  # fmt: skip
        out.append(request(metric(points), resource=RESOURCE))
    return out


def cpu_per_call(fn: Callable[[], object], calls: int) -> float:
    """Best-of-RUNS process CPU seconds per call."""
    best = float("inf")
    for _ in range(RUNS):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def ingest_cost(exponential: bool, busy: float = 1.0) -> float:
    """CPU seconds per data point of decode + ingest + sink, in steady state."""
    bodies = [r.SerializeToString() for r in cumulative_requests(REQUESTS + 1, exponential, busy)]
    best = float("inf")
    for _ in range(RUNS):
        seen: list[LatencyDelta] = []
        ingest = HistogramIngest(resolve, started_unix_nano=T0 - 1)
        ingest.ingest(decode_request(bodies[0], Encoding.PROTOBUF), 0.0)  # streams known
        start = time.process_time()
        for i, body in enumerate(bodies[1:]):
            result = ingest.ingest(decode_request(body, Encoding.PROTOBUF), float(i))
            seen.extend(result.deltas)
        best = min(best, (time.process_time() - start) / (REQUESTS * POINTS_PER_REQUEST))
        assert len(seen) == REQUESTS * round(busy * POINTS_PER_REQUEST)
    return best


def test_ingest_cost_in_process() -> None:
    print("\n| in process, steady state | µs CPU per point | points/s per core | "
          "share of a core at 1,000 points/s |")  # fmt: skip
    print("| --- | --- | --- | --- |")
    cases = (
        ("explicit buckets (15), every stream busy", False, 1.0),
        ("exponential (40 buckets), every stream busy", True, 1.0),
        ("explicit buckets, 10% of streams busy", False, 0.1),
    )
    for name, exponential, busy in cases:
        cost = ingest_cost(exponential, busy)
        print(f"| {name} | {cost * 1e6:.1f} | {1 / cost:,.0f} | {cost * 1000:.2%} |")


def test_decode_cost_per_request() -> None:
    msg = cumulative_requests(1)[0]
    raw = msg.SerializeToString()
    text = json_format.MessageToJson(msg).encode()
    cases = {
        "protobuf": (raw, False, Encoding.PROTOBUF),
        "protobuf + gzip": (gzip.compress(raw, 6), True, Encoding.PROTOBUF),
        "OTLP/JSON": (text, False, Encoding.JSON),
        "OTLP/JSON + gzip": (gzip.compress(text, 6), True, Encoding.JSON),
    }
    print(
        f"\n| decode, {POINTS_PER_REQUEST} points per request | body bytes | µs CPU per request |"
    )
    print("| --- | --- | --- |")
    for name, (body, compressed, encoding) in cases.items():
        calls = 50 if encoding is Encoding.JSON else 1000
        cost = cpu_per_call(lambda b=body, c=compressed, e=encoding:  # type: ignore[misc]
                            decode_request(b, e, compressed=c), calls)  # fmt: skip
        print(f"| {name} | {len(body):,} | {cost * 1e6:,.0f} |")


def test_thread_hop_cost() -> None:
    """What handing a request to the worker thread and back costs the event loop."""
    from concurrent.futures import ThreadPoolExecutor

    async def hops(n: int) -> float:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as worker:
            start = time.process_time()
            for _ in range(n):
                await loop.run_in_executor(worker, int)
            return (time.process_time() - start) / n

    cost = min(asyncio.run(hops(2000)) for _ in range(RUNS))
    print(f"\nthread hop (run_in_executor of a no-op): {cost * 1e6:.0f} µs CPU per request")


CHILD = """
import asyncio, sys
from exporter.core.services import ServiceRef
from exporter.otlp import OtlpReceiver
from exporter.settings import ListenAddress

REFS = {f"svc{i}.shop": ServiceRef("shop", f"svc{i}") for i in range(%d)}
seen = [0]

def sink(delta):
    seen[0] += delta.count

async def main():
    receiver = OtlpReceiver(lambda host, port: REFS.get(host), sink)
    runner = await receiver.start(ListenAddress("127.0.0.1", 0))
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await runner.cleanup()

asyncio.run(main())
"""


def child_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_ingest_cost_over_http() -> None:
    bodies = [gzip.compress(r.SerializeToString(), 6) for r in cumulative_requests(REQUESTS * 2)]
    root = Path(__file__).resolve().parents[2]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD % SERVICES],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, text=True,
    ) as child:  # fmt: skip
        assert child.stdout is not None and child.stdin is not None
        url = f"http://127.0.0.1:{int(child.stdout.readline())}/v1/metrics"
        headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}

        async def send(batch: list[bytes]) -> None:
            async with aiohttp.ClientSession() as session:
                for body in batch:
                    async with session.post(url, data=body, headers=headers) as response:
                        assert response.status == 200, await response.text()

        try:
            asyncio.run(send(bodies[:REQUESTS]))  # warm up: the streams' baselines
            before = child_cpu_seconds(child.pid)
            started = time.perf_counter()
            asyncio.run(send(bodies[REQUESTS:]))
            wall = time.perf_counter() - started
            cpu = child_cpu_seconds(child.pid) - before
        finally:
            child.stdin.close()  # the child stops when its stdin closes
            child.wait(timeout=30)
    points = REQUESTS * POINTS_PER_REQUEST
    per_point = cpu / points
    print(f"\nover HTTP (gzip protobuf, {POINTS_PER_REQUEST} points per request, {REQUESTS} "
          f"requests in {wall:.2f} s): {cpu / REQUESTS * 1e6:,.0f} µs agent CPU per request, "
          f"{per_point * 1e6:.1f} µs per point, {1 / per_point:,.0f} points/s per core, "
          f"{per_point * 1000:.2%} of a core at 1,000 points/s")  # fmt: skip


def test_event_loop_stall_on_a_large_request() -> None:
    """A request at the data point limit (10,000 points, about 4.5 MB): how long it takes,
    and the longest the event loop waited meanwhile (a 1 ms ticker on the same loop)."""
    streams = 10_000
    start = time.time_ns()
    points = [
        explicit_point([1] * 15, total=0.75, start=start, attrs={**stream_attrs(i), "i": i})
        for i in range(streams)
    ]
    body = request(metric(points), resource=RESOURCE).SerializeToString()

    async def run() -> tuple[float, float]:
        limits = ReceiverLimits(ingest=IngestLimits(max_streams_per_service=streams))
        receiver = OtlpReceiver(resolve, lambda delta: None, limits=limits)
        runner = await receiver.start(ListenAddress("127.0.0.1", 0))
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/metrics"
        worst = 0.0
        done = False

        async def ticker() -> None:
            nonlocal worst
            while not done:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - before - 0.001)

        tick = asyncio.create_task(ticker())
        try:
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                async with session.post(
                    url, data=io.BytesIO(body), headers={"Content-Type": "application/x-protobuf"}
                ) as response:
                    assert response.status == 200, await response.text()
                elapsed = time.perf_counter() - started
        finally:
            done = True
            await tick
            await runner.cleanup()
        return elapsed, worst

    elapsed, worst = asyncio.run(run())
    print(f"\n{streams:,} points, {len(body) / 1e6:.1f} MB: answered in {elapsed * 1e3:.0f} ms; "
          f"longest event loop stall meanwhile {worst * 1e3:.1f} ms")  # fmt: skip
