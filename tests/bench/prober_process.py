"""Runs tailwatch's prober alone in a process, for the benchmarks: its CPU and its event loop
are then its own, as in the agent. `python -m tests.bench.prober_process SPEC.json`.

SPEC: {"targets": [ProbeTarget fields...], "seed", "start_ns", "end_ns",
       "launch_window": seconds (optional, else the prober's default),
       "otlp_points_per_second": n (optional), "otlp_batches_per_second": m}
Prints one JSON line: every result of an intended start in [start_ns, end_ns), the lag
quantiles, and the CPU seconds used in that window (and the part spent on the OTLP load).

The OTLP load is a stand-in for the receiver: every batch re-buckets its data points with
`LatencySeries.record_ranges` (15 client buckets each) on the prober's event loop, so the
prober's timers compete with that work as they would in the agent.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

from exporter.core.histogram import LatencySeries, layout_for
from exporter.core.probing import NS_PER_S, ProbeResult, ProbeTarget, phase_fraction
from exporter.probe import Prober

CLIENT_BOUNDS = (0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


async def otlp_load(points_per_second: int, batches_per_second: int, cpu: list[float]) -> None:
    """Re-bucket `points_per_second` client histogram points, in batches, forever."""
    per_batch = max(1, points_per_second // batches_per_second)
    series = [LatencySeries(layout_for(0.05)) for _ in range(20)]
    bounds = (*CLIENT_BOUNDS, math.inf)
    counts = (0, 3, 6, 9, 12, 6, 3, 2, 1, 1, 0, 1, 0, 0, 0)  # a delta point: ~44 requests
    ranges = [(lo, hi, n) for lo, hi, n in zip(bounds, bounds[1:], counts, strict=False)]
    interval = 1.0 / batches_per_second
    next_at = time.perf_counter()
    n = 0
    while True:
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        c0 = time.process_time()
        for _ in range(per_batch):
            series[n % len(series)].record_ranges(ranges, total=2.1)
            n += 1
        cpu[0] += time.process_time() - c0


def intended_starts(target: ProbeTarget, seed: str, start_ns: int, end_ns: int) -> range:
    """The target's intended starts in [start_ns, end_ns): its grid, as the prober lays it."""
    interval_ns = round(target.interval * NS_PER_S)
    phase_ns = int(phase_fraction(seed, str(target)) * interval_ns)
    return range(start_ns + (phase_ns - start_ns) % interval_ns, end_ns, interval_ns)


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    targets = [ProbeTarget(**t) for t in spec["targets"]]
    index = {t: i for i, t in enumerate(targets)}
    start_ns, end_ns = spec["start_ns"], spec["end_ns"]
    results: list[ProbeResult] = []
    options = {"launch_window": spec["launch_window"]} if "launch_window" in spec else {}
    prober = Prober(phase_seed=spec["seed"], on_result=results.append, **options)
    prober.set_targets(targets)
    run = asyncio.create_task(prober.run())
    otlp_cpu = [0.0]
    load = None
    if spec.get("otlp_points_per_second"):
        load = asyncio.create_task(
            otlp_load(spec["otlp_points_per_second"], spec["otlp_batches_per_second"], otlp_cpu)
        )
    await asyncio.sleep(max(0.0, (start_ns - time.perf_counter_ns()) / NS_PER_S))
    cpu0, wall0, lag0 = time.process_time(), time.perf_counter(), prober.ledger.lag.fine.copy()
    otlp0 = otlp_cpu[0]
    await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / NS_PER_S))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    lag = prober.ledger.lag.fine.subtract(lag0)  # the lags of the measured window
    otlp = otlp_cpu[0] - otlp0
    # Let the probes of the window finish (within their timeout).
    deadline = time.perf_counter() + max(t.timeout for t in targets) + 1
    want = sum(len(intended_starts(t, spec["seed"], start_ns, end_ns)) for t in targets)
    while time.perf_counter() < deadline:
        if sum(start_ns <= r.intended_ns < end_ns for r in results) >= want:
            break
        await asyncio.sleep(0.05)
    for task in (run, load):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    p50, p99, p999, top = lag.quantiles((0.5, 0.99, 0.999, 1.0))
    return {
        "results": [
            [index[r.target], r.intended_ns, r.latency, r.reason.value if r.reason else None]
            for r in results
            if start_ns <= r.intended_ns < end_ns
        ],
        "cpu_seconds": cpu,
        "otlp_cpu_seconds": otlp,
        "wall_seconds": wall,
        "lag": {"count": lag.count, "p50": p50, "p99": p99, "p999": p999, "max": top},
        "peak_connections": prober.peak_connections,
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(asyncio.run(main(json.load(f)))), flush=True)
