"""/metrics at the reference node (docs/design.md: 110 pods, 330 containers, 20 opted-in
Services probed at their ClusterIP and 25 local endpoints, latency in several states, OTLP
client series), in its three formats side by side in one run: text 0.0.4, OpenMetrics 1.0.0
and protobuf (native histograms), plain and gzip; and prometheus_client's `generate_latest`
on the same sources, as server.py served /metrics before the fast exposition.

Run: `.venv/bin/python -m pytest tests/bench/test_exposition.py -m bench -s`

Interleaved request by request (one of each format in turn, so that the machine's noise
falls on all of them alike):
- *changed*: before every request the node moves as a busy node does between two scrapes:
  every container's cgroup files change (tests/bench/test_cgroup_sampling.py's `Churn`,
  "busy"), a sampling pass runs and its cgroup families are rendered (as the agent does in
  the sampler's thread, timed apart), every probe target gets a result and every Service a
  client data point. This is what each Prometheus scrape meets.
- *unchanged*: the same content asked again (a second scraper, a retry).

Measured: a full HTTP answer (aiohttp server and client on one event loop on loopback; the
client does not decompress), and the render alone. The ratio column is each row's median
over the text format's in the same case. Budget: a scrape answered in 10 ms median.
Numbers go to docs/performance.md.
"""

from __future__ import annotations

import gzip
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter.catalogue import Kind
from exporter.cgroups.synthetic import TreeLayout, pod_snapshots, reference_pods, write_tree
from exporter.exposition import Exposition
from exporter.server import build_app, start_server
from exporter.settings import ListenAddress
from tests.bench.test_agent_footprint import percentile
from tests.bench.test_cgroup_sampling import Churn
from tests.conftest import free_port
from tests.exposition.node_state import NodeState
from tests.exposition.test_exposition import PROMETHEUS_ACCEPT, PROTOBUF_ACCEPT

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]

REQUESTS = 150
REFERENCE_REQUESTS = 30  # generate_latest takes a quarter of a second per answer
WARMUP = 5
SERVICES = 20
LOCAL_ENDPOINTS = 25
TEXT = "text/plain;version=0.0.4"
FORMATS = {"text 0.0.4": TEXT, "OpenMetrics": PROMETHEUS_ACCEPT, "protobuf": PROTOBUF_ACCEPT}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[NodeState, Churn]]:
    layout = TreeLayout("v2", "systemd", "containerd")
    pods = reference_pods("containerd")
    write_tree(tmp_path, layout, pods)
    state = NodeState(tmp_path, pod_snapshots(layout, pods), services=SERVICES,
                      endpoints=LOCAL_ENDPOINTS)  # fmt: skip
    churn = Churn(tmp_path, "busy")
    yield state, churn
    churn.close()
    state.close()


def reference_app(registry: CollectorRegistry) -> web.Application:
    """/metrics as server.py served it before the fast exposition."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://{ListenAddress('127.0.0.1', port)}/metrics"


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:.2f} ms | {percentile(values, 0.99) * 1e3:.2f} ms"


Measure = Callable[[], Awaitable[float]]


async def interleaved(
    rows: dict[str, Measure], change: Callable[[], None] | None, requests: int
) -> dict[str, list[float]]:
    """Each measurement `requests` times (after WARMUP), one of each in turn, the node moved
    before each one when `change` is given."""
    out: dict[str, list[float]] = {name: [] for name in rows}
    for i in range(WARMUP + requests):
        for name, measure in rows.items():
            if change is not None:
                change()
            seconds = await measure()
            if i >= WARMUP:
                out[name].append(seconds)
    return out


def prepare_alone(state: NodeState, churn: Churn, accept: str, passes: int) -> list[float]:
    """`prepare` after each pass in an exposition scraped in one format only."""
    exposition = Exposition(state.sources)
    exposition.answer(accept)
    out = []
    for _ in range(WARMUP + passes):
        churn.step()
        state.sample()
        t0 = time.perf_counter()
        exposition.prepare(state.cgroup_source)
        out.append(time.perf_counter() - t0)
    return out[WARMUP:]


async def test_metrics_latency_side_by_side(node: tuple[NodeState, Churn]) -> None:
    state, churn = node
    ex = state.exposition
    prepare: list[float] = []

    def tick() -> None:
        churn.step()
        state.sample()
        # As the agent does in the sampler's thread right after each pass.
        t0 = time.perf_counter()
        ex.prepare(state.cgroup_source)
        prepare.append(time.perf_counter() - t0)
        state.probe_round()
        state.client_round()

    fast_runner = await start_server(
        build_app(ex, lambda: (True, "ready")), ListenAddress("127.0.0.1", 0)
    )
    fast_url = f"http://{ListenAddress('127.0.0.1', fast_runner.addresses[0][1])}/metrics"
    ref_runner, ref_url = await serve(reference_app(ex.registry))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:

            def fetch(url: str, accept: str, encoding: str) -> Measure:
                headers = {"Accept": accept, "Accept-Encoding": encoding}

                async def timed() -> float:
                    t0 = time.perf_counter()
                    async with http.get(url, headers=headers) as resp:
                        await resp.read()
                    return time.perf_counter() - t0

                return timed

            def render(accept: str) -> Measure:
                async def timed() -> float:
                    t0 = time.perf_counter()
                    if accept == PROTOBUF_ACCEPT:
                        ex.render_protobuf()
                    else:
                        ex.render(openmetrics=accept == PROMETHEUS_ACCEPT)
                    return time.perf_counter() - t0

                return timed

            native_buckets: list[float] = []

            async def protobuf_alone() -> float:
                """The protobuf render without the sources' part: their native_buckets()
                (indexes and counts) timed apart."""
                t0 = time.perf_counter()
                for source in state.sources:
                    for snapshot in source.snapshot():
                        if snapshot.family.kind is Kind.HISTOGRAM:
                            for _, h in snapshot.series:
                                h.native_buckets()  # type: ignore[union-attr]
                native_buckets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ex.render_protobuf()
                return time.perf_counter() - t0

            for encoding in ("gzip", "identity"):
                rows = {name: fetch(fast_url, accept, encoding) for name, accept in FORMATS.items()}
                results[f"HTTP, {encoding}, changed"] = await interleaved(rows, tick, REQUESTS)
            rows = {name: fetch(fast_url, accept, "gzip") for name, accept in FORMATS.items()}
            results["HTTP, gzip, unchanged"] = await interleaved(rows, None, REQUESTS)
            rows = {name: render(accept) for name, accept in FORMATS.items()}
            rows["protobuf, native_buckets() apart"] = protobuf_alone
            results["render alone, changed"] = await interleaved(rows, tick, REQUESTS)
            results["render alone, changed"]["the sources' native_buckets()"] = native_buckets[
                WARMUP:
            ]
            rows = {
                "agent, OpenMetrics": fetch(fast_url, PROMETHEUS_ACCEPT, "gzip"),
                "generate_latest, OpenMetrics": fetch(ref_url, PROMETHEUS_ACCEPT, "gzip"),
            }
            reference = await interleaved(rows, tick, REFERENCE_REQUESTS)
    finally:
        await fast_runner.cleanup()
        await ref_runner.cleanup()

    ahead = {name: prepare_alone(state, churn, accept, 50) for name, accept in FORMATS.items()}

    text = ex.render()
    sizes = {name: (len(ex.answer(a).body), len(ex.answer(a, "gzip").body))
             for name, a in FORMATS.items()}  # fmt: skip
    samples = sum(1 for line in text.splitlines() if not line.startswith("#"))
    print(
        f"\n{text.count('# TYPE ')} families, {samples} samples; "
        + ", ".join(
            f"{n}: {p / 1e3:.0f} kB ({g / 1e3:.0f} kB gzipped)" for n, (p, g) in sizes.items()
        )
        + f"; {REQUESTS} requests per row, interleaved\n"
        "| measurement | format | median | p99 | ratio to text (median) |\n"
        "| --- | --- | --- | --- | --- |"
    )
    for case, rows_out in results.items():
        base = statistics.median(rows_out["text 0.0.4"])
        for name, values in rows_out.items():
            ratio = statistics.median(values) / base
            print(f"| {case} | {name} | {ms(values)} | {ratio:.2f} |")
    ours, theirs = reference.values()
    print(
        f"| HTTP, gzip, changed ({REFERENCE_REQUESTS} requests) | agent vs generate_latest, "
        f"OpenMetrics | {ms(ours)} vs {ms(theirs)} | "
        f"{statistics.median(theirs) / statistics.median(ours):.0f}x faster |"
    )
    print(
        "cgroup families rendered after each pass (the sampler's thread, not the scrape), "
        f"every format scraped: median {statistics.median(prepare) * 1e3:.2f} ms, p99 "
        f"{percentile(prepare, 0.99) * 1e3:.2f} ms; scraped in one format only: "
        + ", ".join(f"{n} {statistics.median(v) * 1e3:.2f} ms" for n, v in ahead.items())
    )
    for name in FORMATS:
        median = statistics.median(results["HTTP, gzip, changed"][name])
        print(f"budget 10 ms median, {name} + gzip: {'met' if median < 0.010 else 'MISSED'}")
