"""Soak: `tailwatch run` as a subprocess at the reference node load (docs/design.md) for
TAILWATCH_SOAK_SECONDS (default 600), its CPU and RSS sampled from /proc every 5 s.

Run: `TAILWATCH_SOAK_SECONDS=600 .venv/bin/python -m pytest tests/bench/test_agent_soak.py
-m bench -s -p no:randomly` (60 for a try-out, 3600 for the one-hour check).

The load is tests/bench/reference_load.py's, all of it real: the API simulator with 110 pods
(330 containers) and 20 opted-in Services probed every 1 s (250 endpoints, 25 on this node),
the probed servers in another process, the v2 cgroup tree whose files grow every second,
1,000 OTLP data points/s and a Prometheus-like scraper in its own process every 15 s.

Reported: the agent's CPU as a share of one core (utime + stime over wall time) after the
warm-up and in every 5 s step, RSS at the end of the warm-up, at the end and at one hour
when the run lasts that long, every RSS sample, the RSS slope after the warm-up and over the
second half (least squares) and whether that half is flat, and what the scrapes saw.
Budgets: docs/design.md, "Reference load and budgets" (RSS flat after warm-up, and the CPU
compared with blackbox_exporter in tests/bench/test_agent_cost.py). Numbers go to
docs/performance.md, "Soak".
"""

from __future__ import annotations

import asyncio
import gzip
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.bench.reference_load import (
    cpu_seconds,
    every,
    metric_totals,
    reference_load,
    rss_mib,
)
from tests.bench.test_agent_footprint import percentile

SOAK_SECONDS = float(os.environ.get("TAILWATCH_SOAK_SECONDS", "600"))
WARMUP_SECONDS = min(120.0, SOAK_SECONDS / 4)
SAMPLE_EVERY = 5.0
SCRAPE_EVERY = float(os.environ.get("TAILWATCH_SOAK_SCRAPE_SECONDS", "15"))
HOUR = 3600.0
# The second half is flat when the least-squares line over it rises by less than this: the
# allocator gives back and takes again about 1 MiB at a time, so a smaller rise is noise.
FLAT_MIB = 1.0

pytestmark = [pytest.mark.bench, pytest.mark.timeout(SOAK_SECONDS + 600)]


@dataclass
class Usage:
    at: list[float] = field(default_factory=list)  # seconds since the agent was ready
    cpu: list[float] = field(default_factory=list)  # cumulative CPU seconds
    rss: list[float] = field(default_factory=list)  # MiB


async def test_agent_soak_at_the_reference_node(tmp_path: Path) -> None:
    usage = Usage()
    async with reference_load(tmp_path, scrape_every=SCRAPE_EVERY) as load:
        pid = load.agent.pid

        async def sample_usage() -> None:
            usage.at.append(load.since_ready())
            usage.cpu.append(cpu_seconds(pid))
            usage.rss.append(rss_mib(pid))

        sampling = asyncio.Event()
        sampler = asyncio.create_task(every(SAMPLE_EVERY, sample_usage, sampling))
        await load.wait(SOAK_SECONDS - load.since_ready())
        sampling.set()
        await sampler
        if load.agent.returncode is None and usage.at[-1] < SOAK_SECONDS - SAMPLE_EVERY / 2:
            await sample_usage()  # the end of the run is a sample
        body = await load.finish()
    print(load.agent_log.read_text()[-2000:])  # the agent's warnings, if any
    scrapes = [{"seconds": s.seconds, "status": s.status} for s in load.scrapes]
    report(usage, scrapes, body, load.otlp_status)


def rss_slope(at: list[float], rss: list[float]) -> float:
    """Least-squares slope of RSS over time, MiB per second."""
    mean_t, mean_r = statistics.fmean(at), statistics.fmean(rss)
    return sum((t - mean_t) * (r - mean_r) for t, r in zip(at, rss, strict=True)) / sum(
        (t - mean_t) ** 2 for t in at
    )


def at_time(usage: Usage, seconds: float) -> float | None:
    """RSS of the first sample at `seconds` or later (within half a sample), if any."""
    return next((r for t, r in zip(usage.at, usage.rss, strict=True)
                 if t >= seconds - SAMPLE_EVERY / 2), None)  # fmt: skip


def report(usage: Usage, scrapes: list[dict[str, Any]], body: bytes, otlp: dict[int, int]) -> None:
    warm = next(i for i, t in enumerate(usage.at) if t >= WARMUP_SECONDS)
    at, cpu, rss = usage.at[warm:], usage.cpu[warm:], usage.rss[warm:]
    share = (cpu[-1] - cpu[0]) / (at[-1] - at[0])
    overall = (usage.cpu[-1] - usage.cpu[0]) / (usage.at[-1] - usage.at[0])
    steps = [(c1 - c0) / (t1 - t0) for t0, t1, c0, c1
             in zip(usage.at, usage.at[1:], usage.cpu, usage.cpu[1:], strict=False)]  # fmt: skip
    slope = rss_slope(at, rss)
    # The correlation core keeps 5 minutes of history (the baseline window): the second
    # half of a 10-minute run is the first stretch where every buffer is full.
    half = next(i for i, t in enumerate(usage.at) if t >= SOAK_SECONDS / 2)
    late_slope = rss_slope(usage.at[half:], usage.rss[half:])
    late_rise = late_slope * (usage.at[-1] - usage.at[half])
    flat = "flat" if late_rise < FLAT_MIB else "GROWING"
    hour = at_time(usage, HOUR)
    total = metric_totals(body)
    last_size = len(gzip.decompress(body))

    latencies = [s["seconds"] for s in scrapes if s["status"] == 200]
    print(
        f"\nsoak: {SOAK_SECONDS:.0f} s at the reference node, warm-up {WARMUP_SECONDS:.0f} s, "
        f"{len(usage.at)} samples every {SAMPLE_EVERY:.0f} s\n"
        "| measurement | value |\n| --- | --- |\n"
        f"| CPU, share of one core after warm-up | {share * 100:.2f}% |\n"
        f"| CPU, share of one core over the whole run | {overall * 100:.2f}% |\n"
        f"| CPU per {SAMPLE_EVERY:g} s step after warm-up, median / min / max | "
        f"{statistics.median(steps[warm:]) * 100:.1f}% / {min(steps[warm:]) * 100:.1f}% / "
        f"{max(steps[warm:]) * 100:.1f}% |\n"
        f"| RSS at the end of warm-up | {rss[0]:.1f} MiB |\n"
        f"| RSS at the end ({usage.at[-1]:.0f} s) | {rss[-1]:.1f} MiB |\n"
        f"| RSS at one hour | "
        f"{'not reached (TAILWATCH_SOAK_SECONDS=3600)' if hour is None else f'{hour:.1f} MiB'} |\n"
        f"| RSS max | {max(usage.rss):.1f} MiB |\n"
        f"| RSS slope after warm-up | {slope * 3600:+.2f} MiB/hour |\n"
        f"| RSS over the second half | {usage.rss[half]:.1f} -> {usage.rss[-1]:.1f} MiB, "
        f"slope {late_slope * 3600:+.2f} MiB/hour, fitted rise {late_rise:+.2f} MiB: "
        f"{flat} (flat: a fitted rise under {FLAT_MIB:g} MiB) |\n"
        f"| scrapes (every {SCRAPE_EVERY:g} s, OpenMetrics + gzip, another process) | "
        f"{len(scrapes)}, {sum(s['status'] != 200 for s in scrapes)} failed |\n"
        f"| scrape answer, median / p99 | {statistics.median(latencies) * 1e3:.1f} ms / "
        f"{percentile(latencies, 0.99) * 1e3:.1f} ms |\n"
        f"| /metrics size, last scrape | {last_size / 1e6:.2f} MB, "
        f"{len(body) / 1e3:.0f} kB gzipped |\n"
        f"| probes / failed | {total('tailwatch_probe_duration_seconds_count'):.0f} / "
        f"{total('tailwatch_probe_failures_total'):.0f} |\n"
        f"| OTLP requests (HTTP status: count) | {otlp} |\n"
        f"| OTLP data points accepted | "
        f"{total('tailwatch_otlp_datapoints_total', outcome='accepted'):.0f} |\n"
        f"| episodes closed | {total('tailwatch_episodes_total'):.0f} |"
    )
    print("RSS (MiB) every sample:", " ".join(f"{r:.1f}" for r in usage.rss))
    print(f"CPU (% of a core) every {SAMPLE_EVERY:g} s:", " ".join(f"{s * 100:.1f}" for s in steps))
    assert all(s["status"] == 200 for s in scrapes)
    assert total("tailwatch_probe_failures_total") == 0
    assert set(otlp) == {200}
    assert total("tailwatch_otlp_datapoints_total", outcome="accepted") > 0
