"""Prober self-noise at the reference node (docs/design.md): 45 targets (20 Service
addresses + 25 local endpoints) probed every 1 s with 1,000 OTLP data points/s of
re-bucketing on the same event loop; the schedule lag (tailwatch_probe_schedule_lag_seconds)
and the CPU of the prober's process. A second run at 10x the rate (every 100 ms) gives the
lag distribution ten times the samples and the CPU cost per probe; then the launch window's
trade-off (fewer event-loop wake-ups against small bursts of probes) at the reference rate.

Run: `.venv/bin/python -m pytest tests/bench/test_prober_self_noise.py -m bench -s`

Every target is an HTTP server answering in 2 ms on its own 127.x address, in a separate
process; the prober runs alone in its own process (tests/bench/prober_process.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.core.probing import NS_PER_S, ProbeTarget
from tests.latency.quantiles import exact_quantile
from tests.latency.targets import unused_port

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]

SERVICES = 20
ENDPOINTS = 25
OTLP_POINTS_PER_SECOND = 1000
OTLP_BATCHES_PER_SECOND = 10  # 100 data points per request, as an SDK's periodic export
LAUNCH_WINDOWS = (0.0, 0.02, 0.05, 0.1)
ROOT = Path(__file__).parents[2]


def reference_targets(ports: list[int], hosts: list[str], interval: float) -> list[ProbeTarget]:
    targets = []
    for i, (host, port) in enumerate(zip(hosts, ports, strict=True)):
        service = f"svc-{i % SERVICES}"
        if i < SERVICES:
            targets.append(ProbeTarget("ref", service, "service", "", host, port, "http",
                                       "/healthz", interval, 5.0, 0.05))  # fmt: skip
        else:
            targets.append(ProbeTarget("ref", service, "endpoint", f"{service}-pod-{i}", host,
                                       port, "http", "/healthz", interval, 5.0, 0.05))  # fmt: skip
    return targets


async def run_prober(
    tmp: Path,
    targets: list[ProbeTarget],
    duration: float,
    otlp: bool,
    launch_window: float | None = None,
) -> dict[str, Any]:
    start_ns = time.perf_counter_ns() + 3 * NS_PER_S
    spec = tmp / "prober.json"
    options = {} if launch_window is None else {"launch_window": launch_window}
    spec.write_text(json.dumps({
        "targets": [dataclasses.asdict(t) for t in targets], "seed": "reference-node",
        "start_ns": start_ns, "end_ns": start_ns + round(duration * NS_PER_S),
        "otlp_points_per_second": OTLP_POINTS_PER_SECOND if otlp else 0,
        "otlp_batches_per_second": OTLP_BATCHES_PER_SECOND, **options,
    }))  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.bench.prober_process", str(spec),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    report: dict[str, Any] = json.loads(out)
    return report


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f} ms"


async def test_prober_self_noise_at_the_reference_node(tmp_path: Path) -> None:
    hosts = [f"127.0.1.{i + 1}" for i in range(SERVICES + ENDPOINTS)]
    ports = [unused_port(h) for h in hosts]
    spec = tmp_path / "targets.json"
    spec.write_text(json.dumps({"servers": [
        {"host": h, "port": p, "constant": 0.002} for h, p in zip(hosts, ports, strict=True)
    ]}))  # fmt: skip
    servers = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [sys.executable, "-m", "tests.latency.targets", str(spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert servers.stdout is not None
        assert json.loads(servers.stdout.readline())["ports"] == ports
        runs = {
            "45 targets every 1 s + 1,000 OTLP points/s (reference)": await run_prober(
                tmp_path, reference_targets(ports, hosts, 1.0), 60.0, otlp=True
            ),
            "45 targets every 1 s, no OTLP load": await run_prober(
                tmp_path, reference_targets(ports, hosts, 1.0), 60.0, otlp=False
            ),
            "45 targets every 100 ms (10x) + 1,000 OTLP points/s": await run_prober(
                tmp_path, reference_targets(ports, hosts, 0.1), 30.0, otlp=True
            ),
        }
        windows = {
            window: await run_prober(
                tmp_path, reference_targets(ports, hosts, 1.0), 30.0, False, window
            )
            for window in LAUNCH_WINDOWS
        }
    finally:
        assert servers.stdin is not None and servers.stdout is not None
        servers.stdin.close()
        servers.wait(10)
        servers.stdout.close()

    print("\n| run | probes | failed | lag p50 | lag p99 | lag p99.9 | lag max | CPU (process) "
          "| of which OTLP stand-in | prober CPU per probe |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in runs.items():
        probes = len(r["results"])
        failed = sum(reason is not None for *_, reason in r["results"])
        share = r["cpu_seconds"] / r["wall_seconds"]
        otlp = r["otlp_cpu_seconds"] / r["wall_seconds"]
        per_probe = (r["cpu_seconds"] - r["otlp_cpu_seconds"]) / probes
        lag = r["lag"]
        print(f"| {name} | {probes} | {failed} | {ms(lag['p50'])} | {ms(lag['p99'])} | "
              f"{ms(lag['p999'])} | {ms(lag['max'])} | {share * 100:.2f}% of a core | "
              f"{otlp * 100:.2f}% | {per_probe * 1e6:.0f} µs |")  # fmt: skip
        assert failed == 0

    print("\nLaunch window (45 targets every 1 s answering in 2 ms, no OTLP load):")
    print("| launch window | probe latency p50 | p99 | CPU (process) | CPU per probe |")
    print("| --- | --- | --- | --- | --- |")
    for window, r in windows.items():
        latencies = [latency for _, _, latency, _ in r["results"]]
        share = r["cpu_seconds"] / r["wall_seconds"]
        print(f"| {window * 1000:g} ms | {ms(exact_quantile(latencies, 0.5))} | "
              f"{ms(exact_quantile(latencies, 0.99))} | {share * 100:.2f}% of a core | "
              f"{r['cpu_seconds'] / len(latencies) * 1e6:.0f} µs |")  # fmt: skip
