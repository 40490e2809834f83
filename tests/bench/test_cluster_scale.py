"""Cluster scale: many real agents against one API simulator holding a large cluster, to see
which of an agent's costs grow with the number of agents M (the cluster's size) and which
stay flat (docs/design.md: an agent's API load and memory grow with the pods on its node and
the opted-in endpoints, never with nodes x pods; probe load per Service stays k/interval
whatever the cluster's size; docs/scale.md: the s·N·S term).

Run: `.venv/bin/python -m pytest tests/bench/test_cluster_scale.py -m bench -s`
Environment: TAILWATCH_BENCH_AGENTS (default 10,20,40), TAILWATCH_BENCH_WINDOW (seconds,
default 30), TAILWATCH_BENCH_OUT (a path: the results as JSON). About 1-2 minutes per M.

For each M, a fresh simulator (tests/bench/cluster.py) holds 200 nodes with 25 pods of
other workloads each, 50 opted-in Services probed over TCP every 1 s with 20 endpoints each
(1,000 endpoints, 5 per node, spread round-robin; their pod IPs have no listener, so the
probes of a node's endpoints are refused at once), a listener on every ClusterIP counting
the connections it accepts, and M agents as their own processes on node-0000 ... each with
its tailwatch peer pod (namespace tailwatch, Running and Ready). Only the nodes with an
agent have a peer pod: a Ready peer is an agent that probes, as in a cluster where the
DaemonSet runs everywhere (peers without an agent would leave their share of the Service
addresses unprobed). WARMUP seconds after the last agent is ready, a WINDOW-second window
with churn: SLICE_UPDATES_PER_SECOND EndpointSlice updates (one endpoint's readiness
flipped in a random Service) and, a third of the way in, a container restart of a pod of
node-0000 that backs a Service (its endpoint not ready, then ready again 2 s later).

Per agent: API bytes until the window (the initial lists or streaming lists: "sync") and
during it, by verb and served_from; watch events handled (the agent's own counter); Service
address probes sent; series on its text /metrics; RSS; CPU. Per Service: connections
accepted per second at its ClusterIP, i.e. the probes of its address by every agent. Rates
of what the churn causes (events, API bytes) are per second of churn; the others per second
of each agent's window (between its two scrapes, taken side by side for all agents). The
benchmark's own CPU (the simulator and the proxies in this process, the listeners in
theirs) is reported too: on the 2-core machine it shares the cores with the agents. The
table ends with each quantity's exponent of M (least squares in log-log over the points):
|b| < 0.15 is "flat".
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator.scale import (
    ScaleSpec,
    find_endpoint,
    flip_endpoint,
    restart_container,
    set_endpoint_ready,
)
from tests.bench.cluster import Agent, AgentSnapshot, BenchCluster, Traffic, cpu_seconds

AGENT_COUNTS = tuple(
    int(m) for m in os.environ.get("TAILWATCH_BENCH_AGENTS", "10,20,40").split(",")
)
WINDOW = float(os.environ.get("TAILWATCH_BENCH_WINDOW", "30"))
OUT = os.environ.get("TAILWATCH_BENCH_OUT", "")
SPEC = ScaleSpec(
    nodes=200,
    services=50,
    endpoints_per_service=20,
    filler_pods_per_node=25,
    probe_interval="1s",
)
WARMUP = 5.0
SLICE_UPDATES_PER_SECOND = 3.0
READY_TIMEOUT = 240.0
FLAT = 0.15  # |exponent of M| below this: flat

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]


@dataclass
class AgentResult:
    node: str
    cpu: float  # share of a core over the window
    rss_mib: float
    series: int
    probes_per_second: float  # Service-address probes sent (recorded, less missed)
    endpoint_probes_per_second: float
    missed: int  # Service-address probes never sent in the window
    failures: dict[str, int]  # Service-address probes failed in the window, by reason
    events_per_second: float  # watch events handled, every resource, per second of churn
    events_by_resource: dict[str, int]
    sync: Traffic
    window: Traffic
    window_seconds: float  # between this agent's two scrapes
    churn_seconds: float  # the churn, which every agent's window holds

    @property
    def api_bytes_per_second(self) -> float:
        """API bytes in the window per second of churn (events are what costs bytes)."""
        return self.window.total_bytes / self.churn_seconds

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("sync", "window")}
        out["api_bytes_per_second"] = self.api_bytes_per_second
        out["sync"] = self.sync.as_json()
        out["window"] = self.window.as_json()
        return out


@dataclass
class Point:
    agents: int
    results: list[AgentResult]
    per_service: list[float]  # connections accepted per second, each ClusterIP
    window_seconds: float
    bench_cpu: float  # the benchmark process and its listeners' process, share of a core
    start_seconds: float  # from the first agent started until all were ready
    loadavg: float
    churn: Counter[str] = field(default_factory=Counter)

    def mean(self, key: str) -> float:
        return statistics.fmean(float(getattr(r, key)) for r in self.results)

    def spread(self, key: str) -> tuple[float, float]:
        values = [float(getattr(r, key)) for r in self.results]
        return min(values), max(values)

    def quantities(self) -> dict[str, float]:
        """The numbers the growth table compares between the points (per agent: means)."""
        sync = statistics.fmean(r.sync.total_bytes for r in self.results)
        window = statistics.fmean(r.api_bytes_per_second for r in self.results)
        return {
            "sync bytes per agent": sync,
            "API bytes/s per agent during the churn": window,
            "watch events handled/s per agent during the churn": self.mean("events_per_second"),
            "address probes sent/s per agent": self.mean("probes_per_second"),
            "series per agent": self.mean("series"),
            "RSS MiB per agent": self.mean("rss_mib"),
            "CPU per agent (share of a core)": self.mean("cpu"),
            "probe connections/s per Service": statistics.fmean(self.per_service),
            "API bytes/s, all agents": window * self.agents,
            "benchmark CPU (simulator, proxies, listeners)": self.bench_cpu,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "agents": self.agents,
            "window_seconds": self.window_seconds,
            "start_seconds": self.start_seconds,
            "bench_cpu": self.bench_cpu,
            "loadavg": self.loadavg,
            "churn": dict(self.churn),
            "per_service_connections_per_second": self.per_service,
            "summary": self.quantities(),
            "per_agent": [r.as_json() for r in self.results],
        }


def agent_result(
    agent: Agent,
    start: AgentSnapshot,
    end: AgentSnapshot,
    traffic: tuple[Traffic, Traffic],
    churn_seconds: float,
) -> AgentResult:
    sync, total = traffic
    seconds = end.at - start.at
    recorded0, missed0 = start.metrics.probes("service")
    recorded1, missed1 = end.metrics.probes("service")
    endpoint0 = start.metrics.probes("endpoint")[0]
    endpoint1 = end.metrics.probes("endpoint")[0]
    resources = sorted(
        {s.labels.get("resource", "") for s in end.metrics.samples}
        & {"pods", "services", "endpointslices", "peers"}
    )
    events = {r: end.metrics.watch_events(r) - start.metrics.watch_events(r) for r in resources}
    return AgentResult(
        node=agent.node,
        cpu=(end.cpu - start.cpu) / seconds,
        rss_mib=agent.rss(),
        series=end.metrics.series,
        probes_per_second=((recorded1 - missed1) - (recorded0 - missed0)) / seconds,
        endpoint_probes_per_second=(endpoint1 - endpoint0) / seconds,
        missed=missed1 - missed0,
        failures=dict(end.metrics.probe_failures() - start.metrics.probe_failures()),
        events_per_second=sum(events.values()) / churn_seconds,
        events_by_resource=events,
        sync=sync,
        window=total.minus(sync),
        window_seconds=seconds,
        churn_seconds=churn_seconds,
    )


def churn(bench: BenchCluster, agents: list[Agent], seed: int) -> tuple[Counter[str], float]:
    """WINDOW seconds of changes: slice updates at a steady rate, one container restart.
    Returns what was done and how long it took."""
    store, cluster = bench.store, bench.cluster
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    service, pod = cluster.endpoints_on(agents[0].node)[0]
    restart_at, ready_again_at = WINDOW / 3, WINDOW / 3 + 2
    restarted = False
    start = time.monotonic()
    ticks = 0
    while (now := time.monotonic() - start) < WINDOW:
        if not restarted and now >= restart_at:
            restart_container(store, service.namespace, pod)
            slice_name, index = find_endpoint(store, service, pod)
            set_endpoint_ready(store, service.namespace, slice_name, index, False)
            done["pod restarts"] += 1
            restarted = True
        if restarted and now >= ready_again_at and not done["ready again"]:
            slice_name, index = find_endpoint(store, service, pod)
            set_endpoint_ready(store, service.namespace, slice_name, index, True)
            done["ready again"] += 1
        target = rng.choice(cluster.services)
        flip_endpoint(store, target.namespace, target.slices[0], rng.randrange(target.endpoints))
        done["slice updates"] += 1
        ticks += 1
        time.sleep(max(0.0, start + ticks / SLICE_UPDATES_PER_SECOND - time.monotonic()))
    return done, time.monotonic() - start


def run_point(agents_wanted: int, workdir: Path) -> Point:
    # A peer pod where an agent runs, and nowhere else: every Ready peer really probes.
    spec = dataclasses.replace(SPEC, peer_nodes=agents_wanted)
    with BenchCluster(spec, workdir) as bench:
        assert bench.listeners is not None
        started = time.monotonic()
        agents = bench.start_agents(bench.cluster.nodes[:agents_wanted], READY_TIMEOUT)
        start_seconds = time.monotonic() - started
        # The measured window starts WARMUP s after the last agent is ready (a fixed
        # boundary: the startup transients stay out of the window).
        time.sleep(WARMUP)

        sync = bench.traffic(agents)
        listen0 = bench.listeners.snapshot()
        bench0 = time.process_time() + cpu_seconds(bench.listeners.pid)
        first = bench.snapshot(agents)
        done, churn_seconds = churn(bench, agents, seed=agents_wanted)
        last = bench.snapshot(agents)
        bench1 = time.process_time() + cpu_seconds(bench.listeners.pid)
        listen1 = bench.listeners.snapshot()
        total = bench.traffic(agents)

        seconds = listen1[0] - listen0[0]
        per_service = [(b - a) / seconds for a, b in zip(listen0[1], listen1[1], strict=True)]
        results = [
            agent_result(a, s, e, (sync[a.node], total[a.node]), churn_seconds)
            for a, s, e in zip(agents, first, last, strict=True)
        ]
        return Point(
            agents=agents_wanted,
            results=results,
            per_service=per_service,
            window_seconds=seconds,
            bench_cpu=(bench1 - bench0) / seconds,
            start_seconds=start_seconds,
            loadavg=os.getloadavg()[0],
            churn=done,
        )


def exponent(ms: list[int], values: list[float]) -> float | None:
    """b of value ~ M^b, least squares in log-log; None if a value is not positive."""
    if len(ms) < 2 or any(v <= 0 for v in values):
        return None
    xs = [math.log(m) for m in ms]
    ys = [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else None


def verdict(b: float | None) -> str:
    if b is None:
        return "-"
    if abs(b) < FLAT:
        return "flat"
    return f"grows with M (~M^{b:.2f})" if b > 0 else f"falls with M (~M^{b:.2f})"


def number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n >= 10 * 1024 else f"{n / 1024:,.1f} KiB"


def test_cluster_scale(tmp_path: Path) -> None:
    points = [run_point(m, tmp_path / f"m{m}") for m in AGENT_COUNTS]

    print(
        f"\n{SPEC.nodes} nodes, {SPEC.nodes * (SPEC.filler_pods_per_node + 1) + 1000:,} pods, "
        f"{SPEC.services} opted-in Services probed every {SPEC.probe_interval} (tcp), "
        f"{SPEC.services * SPEC.endpoints_per_service:,} endpoints; window {WINDOW:g} s with "
        f"{SLICE_UPDATES_PER_SECOND:g} slice updates/s and a container restart. Per agent: "
        "mean (min-max).\n"
    )
    for p in points:
        rs = p.results
        sources = sorted({r.sync.source for r in rs})
        served = Traffic("all", served=sum((r.sync.served for r in rs), Counter()))
        cache = served.served_share("cache")
        verbs = sorted({v for r in rs for v in (r.sync.bytes | r.window.bytes)})
        print(
            f"M = {p.agents}: all ready {p.start_seconds:.1f} s after the first start; "
            f"window {p.window_seconds:.1f} s (churn {p.results[0].churn_seconds:.1f} s: "
            f"{dict(p.churn)}); failures {dict(sum((Counter(r.failures) for r in rs), Counter()))}"
            f"; bytes from {sources}"
            f" (sync served from cache: {'-' if math.isnan(cache) else f'{cache:.0%}'}; "
            f"verbs {verbs}); load average {p.loadavg:.1f}; benchmark (simulator, proxies, "
            f"listeners) {p.bench_cpu:.0%} of a core.\n"
        )
        print("| per agent | mean | min | max |\n| --- | ---: | ---: | ---: |")

        def row(label: str, values: list[float], fmt: Any) -> None:
            print(
                f"| {label} | {fmt(statistics.fmean(values))} | {fmt(min(values))} "
                f"| {fmt(max(values))} |"
            )

        row("API bytes to sync", [r.sync.total_bytes for r in rs], kib)
        row(
            "API bytes/s during the churn",
            [r.api_bytes_per_second for r in rs],
            lambda v: f"{v:,.0f} B/s",
        )
        row(
            "watch events handled/s during the churn",
            [r.events_per_second for r in rs],
            lambda v: f"{v:.2f}",
        )
        row(
            "Service-address probes sent/s",
            [r.probes_per_second for r in rs],
            lambda v: f"{v:.1f}",
        )
        row("endpoint probes sent/s", [r.endpoint_probes_per_second for r in rs], "{:.1f}".format)
        row("probes missed in the window", [r.missed for r in rs], "{:.0f}".format)
        row(
            "probes failed in the window (missed included)",
            [sum(r.failures.values()) for r in rs],
            "{:.0f}".format,
        )
        row("series (text /metrics)", [r.series for r in rs], "{:,.0f}".format)
        row("RSS", [r.rss_mib for r in rs], "{:.1f} MiB".format)
        row("CPU", [r.cpu for r in rs], "{:.1%}".format)
        per = p.per_service
        print(
            f"| *per Service:* probe connections/s at its ClusterIP | {statistics.fmean(per):.1f} "
            f"| {min(per):.1f} | {max(per):.1f} |\n"
        )

    ms = [p.agents for p in points]
    names = list(points[0].quantities())
    print("| quantity | " + " | ".join(f"M = {m}" for m in ms) + " | exponent of M | verdict |")
    print("| --- | " + " | ".join("---:" for _ in ms) + " | ---: | --- |")
    growth: dict[str, dict[str, Any]] = {}
    for name in names:
        values = [p.quantities()[name] for p in points]
        b = exponent(ms, values)
        growth[name] = {"values": values, "exponent": b, "verdict": verdict(b)}
        shown = " | ".join(number(v) for v in values)
        print(f"| {name} | {shown} | {'-' if b is None else f'{b:.2f}'} | {verdict(b)} |")

    if OUT:
        document = {
            "spec": SPEC.__dict__,
            "window_seconds": WINDOW,
            "slice_updates_per_second": SLICE_UPDATES_PER_SECOND,
            "points": [p.as_json() for p in points],
            "growth": growth,
        }
        Path(OUT).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"\nwritten to {OUT}")
