"""Cost, side by side in one run: the whole agent at the reference node load
(tests/bench/reference_load.py) and Debian's blackbox_exporter probing the same 45 targets
(the 20 ClusterIPs and the 25 local endpoints the agent probes, same host:port, module
http_2xx, every 1 s) driven as Prometheus drives it (tests/bench/blackbox_driver.py, its
own process). The budget (docs/design.md, "Reference load and budgets"): the whole agent
costs less CPU than blackbox_exporter does for the probes alone.

Run: `.venv/bin/python -m pytest tests/bench/test_agent_cost.py -m bench -s -p no:randomly`
(TAILWATCH_COST_SECONDS, default 180, is the measured window after TAILWATCH_COST_WARMUP,
default 60). With TAILWATCH_PROFILE=DIR, py-spy records the agent over the window too
(DIR/agent.raw) and DIR/summary.txt gives the share of samples per area of the agent
(tests/bench/profile_summary.py); py-spy's own sampling takes CPU from the same two cores,
so take the CPU numbers from a run without it.

Both processes' CPU is utime + stime from /proc over the same window; the machine's whole
CPU use over the window is printed too, since a busy machine slows both. The agent's RSS is
sampled every 5 s from its start: with TAILWATCH_COST_SECONDS=3540 (and the default
warm-up) one run answers all three budgets at once: CPU against blackbox_exporter, RSS at
one hour and its slope over the second half, and the scrape median. Only correctness
is asserted (every probe and OTLP export succeeds): the numbers are reported, and
docs/performance.md records them.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.core.episodes import Cause, Impact
from tests.bench.profile_summary import summarize
from tests.bench.reference_load import (
    OTLP_POINTS_PER_SECOND,
    PROBE_INTERVAL,
    ROOT,
    ReferenceLoad,
    cpu_seconds,
    every,
    machine_busy_seconds,
    metric_totals,
    reference_load,
    rss_mib,
)
from tests.bench.test_agent_soak import FLAT_MIB, SAMPLE_EVERY, rss_slope
from tests.bench.test_prober_accuracy import (
    BLACKBOX,
    BLACKBOX_CONFIG,
    blackbox_binary,
    wait_for_blackbox,
)
from tests.conftest import free_port

COST_SECONDS = float(os.environ.get("TAILWATCH_COST_SECONDS", "180"))
WARMUP_SECONDS = float(os.environ.get("TAILWATCH_COST_WARMUP", "60"))
PROFILE = os.environ.get("TAILWATCH_PROFILE")
PROFILE_RATE = 100  # samples/s

pytestmark = [pytest.mark.bench, pytest.mark.timeout(WARMUP_SECONDS + COST_SECONDS + 600)]


@dataclass
class Snapshot:
    at: float  # time.monotonic()
    agent_cpu: float
    blackbox_cpu: float
    busy: tuple[float, float]  # machine_busy_seconds()
    driver: dict[str, Any]
    scrape: bytes  # the agent's /metrics, parsed after the window (parsing takes seconds)
    took: float  # seconds to take the counts after the CPU times


async def snapshot(
    load: ReferenceLoad, blackbox: int, driver: asyncio.subprocess.Process
) -> Snapshot:
    assert load.agent.returncode is None, f"the agent stopped: see {load.agent_log}"
    assert driver.stdin is not None and driver.stdout is not None
    at, agent, theirs, busy = (time.monotonic(), cpu_seconds(load.agent.pid),
                               cpu_seconds(blackbox), machine_busy_seconds())  # fmt: skip
    driver.stdin.write(b"mark\n")
    await driver.stdin.drain()
    counts = json.loads(await driver.stdout.readline())
    body = await load.scrape()
    return Snapshot(at, agent, theirs, busy, counts, body, time.monotonic() - at)


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed with `.[bench]`
    return str(beside) if beside.exists() else shutil.which("py-spy")


async def test_agent_cost_against_blackbox_exporter(tmp_path: Path) -> None:
    binary = blackbox_binary()
    if binary is None:
        pytest.skip(f"{BLACKBOX} is not installed and cannot be (make bench-deps)")
    config = tmp_path / "blackbox.yml"
    config.write_text(BLACKBOX_CONFIG)
    bb_url = f"http://127.0.0.1:{free_port()}"
    blackbox = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
        [binary, f"--config.file={config}", f"--web.listen-address={bb_url[7:]}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    profile_note = ""
    rss_at: list[tuple[float, float]] = []  # (seconds since the agent was ready, MiB)
    try:
        async with reference_load(tmp_path) as load:

            async def sample_rss() -> None:
                if load.agent.returncode is None:
                    rss_at.append((load.since_ready(), rss_mib(load.agent.pid)))

            sampling = asyncio.Event()
            sampler = asyncio.create_task(every(SAMPLE_EVERY, sample_rss, sampling))
            async with aiohttp.ClientSession() as session:
                await wait_for_blackbox(session, bb_url)
            targets = [f"http://{host}:{port}/" for host, port in load.targets]
            driver = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.blackbox_driver", bb_url,
                str(PROBE_INTERVAL), *targets,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            try:
                await load.wait(WARMUP_SECONDS)
                spy = None
                if PROFILE:
                    spy, profile_note = await start_profile(Path(PROFILE), load.agent.pid)
                before = await snapshot(load, blackbox.pid, driver)
                await load.wait(COST_SECONDS)
                after = await snapshot(load, blackbox.pid, driver)
                sampling.set()
                await sampler
                await sample_rss()  # the end of the window is a sample
                agent_rss, blackbox_rss = rss_mib(load.agent.pid), rss_mib(blackbox.pid)
                if spy is not None:
                    assert PROFILE is not None
                    share = (after.agent_cpu - before.agent_cpu) / (after.at - before.at)
                    profile_note = await finish_profile(spy, Path(PROFILE), share)
                final_body = await load.finish()
            finally:
                assert driver.stdin is not None and driver.stdout is not None
                driver.stdin.close()
                lines = (await driver.stdout.read()).splitlines()
                final = json.loads(lines[-1]) if lines else {}
                await driver.wait()
            assert blackbox.poll() is None, "blackbox_exporter stopped during the run"
    finally:
        blackbox.terminate()
        blackbox.wait(10)

    window = after.at - before.at
    agent_share = (after.agent_cpu - before.agent_cpu) / window
    blackbox_share = (after.blackbox_cpu - before.blackbox_cpu) / window
    busy = (after.busy[0] - before.busy[0]) / (after.busy[1] - before.busy[1])

    earlier, later = metric_totals(before.scrape), metric_totals(after.scrape)

    def delta(name: str, **labels: str) -> float:
        return float(later(name, **labels) - earlier(name, **labels))

    probes = delta("tailwatch_probe_duration_seconds_count")
    agent_failed = delta("tailwatch_probe_failures_total")
    bb = {k: after.driver[k] - before.driver[k] for k in ("scrapes", "ok", "failed", "dropped")}
    bb_probe_s = (after.driver["probe_seconds"] - before.driver["probe_seconds"]) / max(
        1, bb["scrapes"]
    )
    in_window = [s for s in load.scrapes if before.at <= load.started + s.at <= after.at]
    scrape_ms = [s.seconds * 1e3 for s in in_window if s.status == 200]
    points = delta("tailwatch_otlp_datapoints_total", outcome="accepted")
    rss_line = rss_report(rss_at, before.at - load.started)
    # The series behind the summary, to plot or fit again: RSS every 5 s, and every scrape.
    (tmp_path / "rss.csv").write_text("".join(f"{t:.1f},{r:.2f}\n" for t, r in rss_at))
    (tmp_path / "scrapes.csv").write_text(
        "".join(f"{s.at:.1f},{s.seconds:.4f},{s.status},{s.bytes}\n" for s in load.scrapes)
    )
    # What the exposition holds at the end: an episode adds the Services' disrupted and
    # recovering series, so RSS that rose with them is not growth.
    whole_run = metric_totals(final_body)
    text = gzip.decompress(final_body)
    (tmp_path / "final-metrics.txt").write_bytes(text)  # what the episodes were, and more
    exposed = text.splitlines()
    series = sum(1 for line in exposed if line and not line.startswith(b"#"))
    causes = episode_causes(whole_run)
    print(
        f"\ncost: {WARMUP_SECONDS:g} s warm-up, then {window:.0f} s measured, both in one run; "
        f"the machine's {os.cpu_count()} cores were {busy * 100:.0f}% busy over the window "
        f"(everything on it); the counts were taken {before.took * 1e3:.0f} and "
        f"{after.took * 1e3:.0f} ms after the CPU times\n"
        "| measurement | tailwatch (whole agent, reference load) "
        "| blackbox_exporter (45 probes/s alone) |\n| --- | --- | --- |\n"
        f"| CPU, share of one core | {agent_share * 100:.2f}% | {blackbox_share * 100:.2f}% |\n"
        f"| ratio agent / blackbox_exporter | {agent_share / blackbox_share:.2f} | |\n"
        f"| RSS at the end of the window | {agent_rss:.1f} MiB | {blackbox_rss:.1f} MiB |\n"
        f"| agent RSS every {SAMPLE_EVERY:g} s | {rss_line} | |\n"
        f"| probes in the window (failed) | {probes:.0f} ({agent_failed:.0f}) | "
        f"{bb['scrapes']} ({bb['failed']}; {bb['dropped']} ticks dropped, probe "
        f"{bb_probe_s * 1e3:.2f} ms mean) |\n"
        f"| /metrics scrapes in the window, median | "
        f"{statistics.median(scrape_ms) if scrape_ms else float('nan'):.1f} ms "
        f"({len(in_window)} scrapes) | |\n"
        f"| OTLP data points accepted in the window | {points:.0f} "
        f"({points / window:.0f}/s) | |\n"
        f"| probes failed over the whole run, warm-up included | "
        f"{whole_run('tailwatch_probe_failures_total'):.0f} | {final['failed']} |\n"
        f"| episodes closed over the whole run; samples in the last scrape | "
        f"{whole_run('tailwatch_episodes_total'):.0f}{causes}; {series} | |"
    )
    if points / window < 0.95 * OTLP_POINTS_PER_SECOND:
        print(
            f"the load fell behind ({points / window:.0f} OTLP points/s, not "
            f"{OTLP_POINTS_PER_SECOND}): the machine is too busy for this run to count"
        )
    print(
        f"RSS, scrapes and the last scrape: {tmp_path / 'rss.csv'}, {tmp_path / 'scrapes.csv'}, "
        f"{tmp_path / 'final-metrics.txt'}"
    )
    if PROFILE:
        print(profile_note)
    # Correctness over the measured window: every probe of both and every OTLP export
    # succeeded. (A probe that times out in the warm-up of a saturated machine is reported
    # above, not failed on.)
    assert all(s.status == 200 for s in load.scrapes)
    assert set(load.otlp_status) == {200}, load.otlp_status
    assert probes > 0 and points > 0 and bb["scrapes"] > 0
    assert agent_failed == 0
    # blackbox_exporter is the yardstick, not the subject: on a machine busy enough to delay
    # a few of its probes past its 0.5 s timeout (8 of 157,050 in one busy hour) the
    # comparison still holds; more than one in a thousand means the run does not count.
    assert bb["failed"] <= bb["scrapes"] / 1000, after.driver["failures"]


def rss_report(rss_at: list[tuple[float, float]], window_start: float) -> str:
    """The agent's RSS at the start of the window, at one hour when the run got there, its
    maximum, and its least-squares rise over the second half of the run: flat below
    FLAT_MIB, as the soak judges it."""
    at, rss = [t for t, _ in rss_at], [r for _, r in rss_at]
    start = next((r for t, r in rss_at if t >= window_start), rss[-1])
    hour = next((r for t, r in rss_at if t >= 3600 - SAMPLE_EVERY / 2), None)
    half = next(i for i, t in enumerate(at) if t >= at[-1] / 2)
    rise = rss_slope(at[half:], rss[half:]) * (at[-1] - at[half]) if len(at) - half > 2 else 0.0
    return (
        f"{start:.1f} MiB at the window's start, "
        + (f"{hour:.1f} MiB at one hour, " if hour is not None else "")
        + f"max {max(rss):.1f} MiB; second half ({at[half]:.0f}-{at[-1]:.0f} s) "
        f"{rss[half]:.1f} -> {rss[-1]:.1f} MiB, fitted rise {rise:+.2f} MiB: "
        + ("flat" if rise < FLAT_MIB else "GROWING")
    )


async def start_profile(out: Path, pid: int) -> tuple[asyncio.subprocess.Process | None, str]:
    """py-spy on the agent for the measured window, or why not."""
    binary = py_spy()
    if binary is None:
        return None, "profile skipped: py-spy is not installed (pip install -e '.[bench]')"
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before the window)
    spy = await asyncio.create_subprocess_exec(
        binary, "record", "--pid", str(pid), "--duration", f"{COST_SECONDS:.0f}",
        "--rate", str(PROFILE_RATE), "--format", "raw", "--threads", "--nonblocking",
        "-o", str(out / "agent.raw"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return spy, ""


async def finish_profile(spy: asyncio.subprocess.Process, out: Path, cpu_share: float) -> str:
    try:
        _, err = await asyncio.wait_for(spy.communicate(), 60)
    except TimeoutError:
        spy.kill()
        _, err = await spy.communicate()
    raw = out / "agent.raw"
    if spy.returncode != 0 or not raw.exists() or raw.stat().st_size == 0:
        why = err.decode(errors="replace").strip().splitlines()
        return (
            "profile skipped: py-spy could not sample the agent: "
            + (why[0] if why else f"exit status {spy.returncode}")
            + " (py-spy needs ptrace: root or CAP_SYS_PTRACE, and kernel.yama.ptrace_scope 0 "
            "or 1)"
        )
    summary = summarize(raw.read_text(), PROFILE_RATE, COST_SECONDS, cpu_share)
    (out / "summary.txt").write_text(summary)
    return f"profile: {raw} and {out / 'summary.txt'}\n{summary}"


def episode_causes(whole_run: Callable[..., float]) -> str:
    """The closed episodes by cause and impact, as " (unexplained/none 3, ...)", from the
    last scrape's totals: a quiet run's episodes are its own latency spikes, and each adds
    series."""
    counts = {
        f"{cause}/{impact}": n
        for cause in Cause
        for impact in Impact
        if (n := whole_run("tailwatch_episodes_total", cause=cause.value, impact=impact.value))
    }
    if not counts:
        return ""
    return " (" + ", ".join(f"{k} {n:.0f}" for k, n in sorted(counts.items())) + ")"
