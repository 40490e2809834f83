"""False tail-spike episodes on steady heavy-tailed latency, and how well real spikes are
seen, at the default settings (`CorrelationSettings()`). Run:
.venv/bin/python -m pytest tests/bench/test_false_episodes.py -m bench -s

Simulated time: each Service's probe latency comes from a profile of
tests/bench/steady_latency.py (heavy tails, a bimodal cache, GC-like pauses, a daily drift)
and is fed to its own `Correlator` through the public calls, a tick every second.

1. False episodes: `TAILWATCH_BENCH_SERVICE_DAYS` (default 4) Services x 24 h per profile
   at one probe per second (the default probe interval), and one Service x 24 h per profile
   at 10 probes/s. Nothing happens to these Services, so every episode is false. Reported
   per profile: episodes per Service per day and, for the 1/s runs, the Poisson 95% upper
   bound (3.0 / Service-days when none is seen). The target: under one per Service per day
   at 1/s, asserted after everything is printed.
2. Spikes: after 10 min of the same steady latency, an interval of 10, 30 or 120 s where
   every sample is k times slower (x2, x3, x5, x10: the p99 of the interval becomes k times
   the steady p99), or has k-1 times the steady p99 added (every sample slow), or where 30%
   of the samples are 10x (CPU throttling); 3 seeds per profile. Reported per case: detected
   or not (an episode detected between the start and a rolling window after the end), how
   many episodes it became (at most), detection delay (detection - true start), opened_at
   error (opened_at - true start), closed_at error (closed_at - true end), recovered_at -
   true end, and the episode's during-p99 against the true p99 of the injected samples.
   Cells are the median and the range over the runs that detected it.

Runs on `TAILWATCH_BENCH_WORKERS` processes (default: up to 2). `TAILWATCH_BENCH_OUT`: a
path to write every result to as JSON. Numbers go to docs/performance.md, "False episodes
and spike timing".
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from exporter.core.rules import CorrelationSettings
from tests.bench.steady_latency import PROFILES, SpikeSpec, nearest_rank, replay, steady_p99

pytestmark = [pytest.mark.bench, pytest.mark.timeout(3600)]

DAY = 86_400.0
SERVICE_DAYS = int(os.environ.get("TAILWATCH_BENCH_SERVICE_DAYS", "4"))
FAST_RATE = 10.0
WORKERS = int(os.environ.get("TAILWATCH_BENCH_WORKERS", str(min(2, os.cpu_count() or 1))))
OUT = os.environ.get("TAILWATCH_BENCH_OUT", "")
TARGET_PER_DAY = 1.0

WARMUP = 600.0  # a full baseline window and more before each spike
AFTER = 900.0  # room to close and to recover (recovery_max is 10 min)
SPIKE_SEEDS = (1, 2, 3)
DURATIONS = (10.0, 30.0, 120.0)
FACTORS = (2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class Case:
    """A kind of spike: `shape` is "scale" (x factor), "delay" (+ (factor-1) x steady p99) or
    "throttle" (30% of the samples x factor)."""

    shape: str
    factor: float
    duration: float

    @property
    def label(self) -> str:
        k = f"{self.factor:g}"
        what = {
            "scale": f"x{k}",
            "delay": f"+{self.factor - 1:g}*p99",
            "throttle": f"30% x{k}",
        }[self.shape]
        return f"{what}, {self.duration:g} s"

    def spec(self, p99: float) -> SpikeSpec:
        if self.shape == "scale":
            return SpikeSpec(WARMUP, self.duration, factor=self.factor)
        if self.shape == "delay":
            return SpikeSpec(WARMUP, self.duration, delay=(self.factor - 1) * p99)
        return SpikeSpec(WARMUP, self.duration, factor=self.factor, fraction=0.3)


CASES = [
    *(Case(shape, k, d) for shape in ("scale", "delay") for k in FACTORS for d in DURATIONS),
    *(Case("throttle", 10.0, d) for d in DURATIONS),
]


# -- the jobs (run in worker processes) ------------------------------------------------------


def steady_job(profile: str, seed: int, rate: float) -> dict[str, Any]:
    result = replay(PROFILES[profile], seed, DAY, rate)
    return {
        "profile": profile,
        "seed": seed,
        "rate": rate,
        "days": 1.0,
        "samples": result.samples,
        "cpu_seconds": result.cpu_seconds,
        "p99": steady_p99(PROFILES[profile], seed, DAY, rate),
        "episodes": [asdict(e) for e in result.episodes],
    }


def spike_job(profile: str, seed: int, case: Case) -> dict[str, Any]:
    p99 = steady_p99(PROFILES[profile], seed, WARMUP)
    spec = case.spec(p99)
    result = replay(PROFILES[profile], seed, WARMUP + case.duration + AFTER, spike=spec)
    window = CorrelationSettings().recovery_window
    before = [e for e in result.episodes if e.detected_at < spec.start]
    hits = [e for e in result.episodes if spec.start <= e.detected_at <= spec.end + window + 1]
    out: dict[str, Any] = {
        "profile": profile,
        "seed": seed,
        "case": asdict(case),
        "label": case.label,
        "steady_p99": p99,
        "true_p99": nearest_rank(sorted(result.in_spike), 0.99) if result.in_spike else None,
        "masked": bool(before),  # a false episode before the spike: not judged
        "detected": bool(hits) and not before,
        "cpu_seconds": result.cpu_seconds,
        "days": (WARMUP + case.duration + AFTER) / DAY,
    }
    if hits and not before:
        e = hits[0]
        out |= {
            "delay": e.detected_at - spec.start,
            "opened_error": e.opened_at - spec.start,
            "closed_error": None if e.closed_at is None else e.closed_at - spec.end,
            "recovered_error": None if e.recovered_at is None else e.recovered_at - spec.end,
            "during_p99": e.during_p99,
            "status": e.status,
            "pieces": len(hits),  # episodes the one spike became
        }
    return out


def _call(job: tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]) -> dict[str, Any]:
    fn, args = job
    return fn(*args)


def run_all(jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]]) -> list[dict]:
    if WORKERS <= 1:
        return [_call(job) for job in jobs]
    with ProcessPoolExecutor(WORKERS) as pool:
        return list(pool.map(_call, jobs, chunksize=1))


# -- statistics and tables ---------------------------------------------------------------------


def poisson_upper(k: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound of a Poisson mean after seeing k events."""

    def cdf(mean: float) -> float:
        term = total = math.exp(-mean)
        for i in range(1, k + 1):
            term *= mean / i
            total += term
        return total

    low, high = float(k), float(k) + 10.0 * math.sqrt(k + 1) + 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if cdf(mid) > 1 - confidence:
            low = mid
        else:
            high = mid
    return high


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.1f} ms"


def secs(values: Iterable[float | None]) -> str:
    """Median and range of seconds, or '-'."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return "-"
    median = statistics.median(got)
    if got[0] == got[-1]:
        return f"{median:+.0f}"
    return f"{median:+.0f} [{got[0]:+.0f}, {got[-1]:+.0f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def steady_table(results: list[dict[str, Any]]) -> tuple[str, dict[tuple[str, float], float]]:
    by: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[(r["profile"], r["rate"])].append(r)
    rows, rates = [], {}
    for (profile, rate), runs in by.items():
        days = sum(r["days"] for r in runs)
        episodes = [e for r in runs for e in r["episodes"]]
        rate_per_day = len(episodes) / days
        rates[(profile, rate)] = rate_per_day
        ratios = [
            e["during_p99"] / e["baseline_p99"]
            for e in episodes
            if e["during_p99"] and e["baseline_p99"]
        ]
        rows.append(
            [
                profile,
                f"{rate:g}/s",
                f"{days:g}",
                ms(statistics.median(r["p99"] for r in runs)),
                str(len(episodes)),
                f"{rate_per_day:.2f}",
                f"{poisson_upper(len(episodes)) / days:.2f}",
                "-" if not ratios else f"{statistics.median(ratios):.1f}x",
            ]
        )
    header = ["profile", "probes", "Service-days", "steady p99", "false episodes",
              "per Service-day", "95% upper", "their during/baseline p99"]  # fmt: skip
    return table(header, rows), rates


def spike_table(results: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["label"]].append(r)
    rows = []
    for label, runs in by.items():
        judged = [r for r in runs if not r["masked"]]
        hit = [r for r in judged if r["detected"]]
        missed = sorted({r["profile"] for r in judged if not r["detected"]})
        ratio = [r["during_p99"] / r["true_p99"] for r in hit if r["during_p99"] and r["true_p99"]]
        rows.append(
            [
                label,
                f"{len(hit)}/{len(judged)}" + (f" ({len(runs) - len(judged)} masked)"
                                               if len(judged) < len(runs) else ""),
                "-" if not hit else str(max(r["pieces"] for r in hit)),
                secs(r["delay"] for r in hit),
                secs(r["opened_error"] for r in hit),
                secs(r["closed_error"] for r in hit),
                secs(r["recovered_error"] for r in hit),
                "-" if not ratio else f"{statistics.median(ratio):.2f}",
                ", ".join(missed) or "-",
            ]
        )  # fmt: skip
    header = ["spike", "detected", "episodes (max)", "delay s", "opened_at err s",
              "closed_at err s", "recovered_at - end s", "during/true p99",
              "missed on"]  # fmt: skip
    return table(header, rows)


# -- the benchmark -----------------------------------------------------------------------------


def test_false_episodes_and_spike_detection() -> None:
    started = time.monotonic()
    steady_jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
        (steady_job, (profile, seed, 1.0))
        for profile in PROFILES
        for seed in range(1, SERVICE_DAYS + 1)
    ]
    steady_jobs += [(steady_job, (profile, 1, FAST_RATE)) for profile in PROFILES]
    spike_jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = [
        (spike_job, (profile, seed, case))
        for case in CASES
        for profile in PROFILES
        for seed in SPIKE_SEEDS
    ]
    steady = run_all(steady_jobs)
    spikes = run_all(spike_jobs)
    wall = time.monotonic() - started

    steady_text, rates = steady_table(steady)
    print("\nFalse episodes on steady latency, default settings, 24 h per Service:\n")
    print(steady_text)
    for r in steady:
        for e in r["episodes"][:2]:
            length = "-" if e["closed_at"] is None else f"{e['closed_at'] - e['opened_at']:.0f}"
            print(
                f"  {r['profile']} {r['rate']:g}/s seed {r['seed']}: {e['id']} detected at "
                f"{e['detected_at']:.0f} s, baseline p99 {ms(e['baseline_p99'])}, during p99 "
                f"{ms(e['during_p99'])}, open {length} s, {e['status']}"
            )
    print(f"\nInjected spikes, {len(PROFILES)} profiles x {len(SPIKE_SEEDS)} seeds at 1/s:\n")
    print(spike_table(spikes))
    days = sum(r["days"] for r in steady + spikes)
    cpu = sum(r["cpu_seconds"] for r in steady + spikes)
    speed_1 = [r["cpu_seconds"] / r["days"] for r in steady if r["rate"] == 1.0]
    speed_10 = [r["cpu_seconds"] / r["days"] for r in steady if r["rate"] == FAST_RATE]
    print(
        f"\n{days:.1f} simulated Service-days in {cpu:.0f} s CPU ({wall:.0f} s on {WORKERS} "
        f"processes): {statistics.median(speed_1):.1f} s CPU per Service-day at 1/s, "
        f"{statistics.median(speed_10):.1f} s at 10/s (generator included)"
    )
    if OUT:
        document = {"steady": steady, "spikes": spikes, "cpu_seconds": cpu, "wall_seconds": wall}
        Path(OUT).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"written to {OUT}")

    over = {p: r for (p, rate), r in rates.items() if rate == 1.0 and r >= TARGET_PER_DAY}
    assert not over, f"false episodes per Service per day at 1/s over {TARGET_PER_DAY}: {over}"
