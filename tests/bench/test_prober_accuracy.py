"""Prober accuracy, side by side in one run: tailwatch's open-loop prober and Debian's
prometheus-blackbox-exporter probe the same loopback targets at the same rate, and both are
compared with the ground truth computed from the intended schedule.

Run: `.venv/bin/python -m pytest tests/bench/test_prober_accuracy.py -m bench -s`

Each target pod runs in its own process on its own 127.x address. Two groups of 10
pods: one with a known latency distribution (`tests.latency.targets.mixture_delays`:
lognormal around 10 ms, 1% at 100-200 ms, 0.2% at 400 ms, scripted per time slot of one
probe interval), and the same with a 1 s stall of every pod in the middle of the run. The
latency a client starting at t sees is known in advance (`SlotScript.truth(t)`), so the
truth is the distribution over every intended start of every pod's schedule. One more pod
answers at once: its latency is the floor this machine adds to any request (loopback,
process wake-ups, the Python server), which the truth does not contain.

blackbox_exporter is driven the way Prometheus drives it: one /probe call at a time per
target on a fixed tick, a tick that comes while the previous call is still running is
dropped (a Go ticker, a scrape loop). Its samples are its own probe_duration_seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from exporter.core.histogram import LatencySeries, cumulative_buckets, layout_for
from exporter.core.probing import NS_PER_S, ProbeTarget, phase_fraction
from tests.bench.prober_process import intended_starts
from tests.conftest import free_port, wait_for_ok
from tests.latency.quantiles import buckets, exact_quantile, histogram_quantile
from tests.latency.targets import SlotScript, Stall, mixture_delays, unused_port

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]

PODS = 10  # per group
INTERVAL = 0.2  # per pod: 50 probes/s per group, for each prober
DURATION = 90.0  # seconds of schedule measured
WARMUP = 3.0
STALL_AT = 45.0
SLOTS = 2_000  # distinct scripted slots per pod (400 s) before the script repeats
SEED = 20261124
QUANTILES = (0.5, 0.99, 0.999)
NODE = "bench-node"
BLACKBOX = "prometheus-blackbox-exporter"
BLACKBOX_CONFIG = """\
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
"""


def blackbox_binary() -> str | None:
    """The Debian package's binary, installed here if missing and possible."""
    found = shutil.which(BLACKBOX)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", BLACKBOX], check=False, env=env,
                       capture_output=True)  # fmt: skip
        found = shutil.which(BLACKBOX)
    return found


async def wait_for_blackbox(session: aiohttp.ClientSession, url: str) -> None:
    """Until blackbox_exporter at `url` answers its health check."""
    await wait_for_ok(session, f"{url}/-/healthy", "blackbox_exporter up", timeout=30)


class Pod:
    """One target pod: its address, tailwatch target, grid, script and both probers' samples."""

    def __init__(self, group: str, index: int, host: str, stall: Stall | None) -> None:
        self.group = group
        self.host = host
        self.port = unused_port(host)
        self.target = ProbeTarget("bench", group, "endpoint", f"pod-{index}", host,
                                  self.port, "http", "/", INTERVAL, 5.0, 0.05)  # fmt: skip
        self.interval_ns = round(INTERVAL * NS_PER_S)
        self.phase_ns = int(phase_fraction(NODE, str(self.target)) * self.interval_ns)
        # Slots centred on the intended starts: a probe sent a little early or late still
        # gets the delay of its own slot.
        origin = (self.phase_ns - self.interval_ns / 2) / NS_PER_S
        self.seed = SEED + index
        delays = [0.0] if group == "floor" else mixture_delays(SLOTS, self.seed)
        self.script = SlotScript(origin, INTERVAL, delays, stall)
        self.blackbox: list[tuple[int, float, bool]] = []

    def spec(self) -> dict[str, object]:
        if self.group == "floor":
            return {"host": self.host, "port": self.port, "constant": 0.0}
        stall = self.script.stall
        return {"host": self.host, "port": self.port, "origin": self.script.origin,
                "width": INTERVAL, "slots": SLOTS, "seed": self.seed,
                "stall": [stall.start, stall.end] if stall else None}  # fmt: skip

    def starts(self, start_ns: int, end_ns: int) -> range:
        return intended_starts(self.target, NODE, start_ns, end_ns)


async def drive_blackbox(
    session: aiohttp.ClientSession, base_url: str, pod: Pod, start_ns: int, end_ns: int
) -> None:
    """Prometheus-style: call /probe at each tick; drop the ticks that pass during a call."""
    ticks = pod.starts(start_ns, end_ns)
    tick = ticks.start
    params = {"module": "http_2xx", "target": f"http://{pod.host}:{pod.port}/"}
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": "5"}
    while tick < end_ns:
        wait = (tick - time.perf_counter_ns()) / NS_PER_S
        if wait > 0:
            await asyncio.sleep(wait)
        async with session.get(f"{base_url}/probe", params=params, headers=headers) as resp:
            text = await resp.text()
        values = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("probe_duration_seconds ", "probe_success "))
        }
        pod.blackbox.append((tick, values["probe_duration_seconds"], values["probe_success"] == 1))
        now = time.perf_counter_ns()
        tick += ticks.step
        if tick < now:  # the ticker dropped the ticks that came during the call
            tick += -((tick - now) // ticks.step) * ticks.step


def row(name: str, truth: float | None, value: float) -> str:
    err = "" if truth is None else f" ({(value - truth) / truth * 100:+.1f}%)"
    return f"{value * 1000:.1f} ms{err}"


async def test_prober_accuracy_against_blackbox_exporter(tmp_path: Path) -> None:
    binary = blackbox_binary()
    if binary is None:
        pytest.skip(f"{BLACKBOX} is not installed and cannot be (apt-get install {BLACKBOX})")

    start = time.perf_counter() + WARMUP
    start_ns = round(start * NS_PER_S)
    end_ns = start_ns + round(DURATION * NS_PER_S)
    stall = Stall(start + STALL_AT, start + STALL_AT + 1.0)
    groups = {
        "distribution": [Pod("distribution", i, f"127.0.0.{2 + i}", None) for i in range(PODS)],
        "distribution + 1 s stall": [
            Pod("stall", i, f"127.0.0.{2 + PODS + i}", stall) for i in range(PODS)
        ],
        "floor (answers at once)": [Pod("floor", 0, "127.0.0.99", None)],
    }
    pods = [pod for group in groups.values() for pod in group]
    # One process per pod, as pods are: a burst of probes to several pods is not served by
    # one Python event loop in turn.
    servers = []
    for n, pod in enumerate(pods):
        spec = tmp_path / f"pod-{n}.json"
        spec.write_text(json.dumps({"servers": [pod.spec()]}))
        servers.append(
            subprocess.Popen(  # noqa: ASYNC220 (started before anything is measured)
                [sys.executable, "-m", "tests.latency.targets", str(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=Path(__file__).parents[2],
            )
        )
    config = tmp_path / "blackbox.yml"
    config.write_text(BLACKBOX_CONFIG)
    bb_url = f"http://127.0.0.1:{free_port()}"
    blackbox = subprocess.Popen(  # noqa: ASYNC220
        [binary, f"--config.file={config}", f"--web.listen-address={bb_url[7:]}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    prober_spec = tmp_path / "prober.json"
    prober_spec.write_text(
        json.dumps(
            {"targets": [dataclasses.asdict(pod.target) for pod in pods], "seed": NODE,
             "start_ns": start_ns, "end_ns": end_ns}
        )
    )  # fmt: skip
    try:
        for server, pod in zip(servers, pods, strict=True):
            assert server.stdout is not None
            assert json.loads(server.stdout.readline())["ports"] == [pod.port]
        async with aiohttp.ClientSession() as session:
            await wait_for_blackbox(session, bb_url)
            tailwatch = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.bench.prober_process", str(prober_spec),
                stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2],
            )  # fmt: skip
            await asyncio.gather(
                *(drive_blackbox(session, bb_url, pod, start_ns, end_ns) for pod in pods)
            )
            out, _ = await tailwatch.communicate()
            assert tailwatch.returncode == 0
    finally:
        blackbox.terminate()
        blackbox.wait(10)
        for server in servers:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.close()
            server.wait(10)
            server.stdout.close()
    report = json.loads(out)
    results = [(pods[i], intended, latency, reason) for i, intended, latency, reason
               in report["results"]]  # fmt: skip

    cpu = report["cpu_seconds"] / report["wall_seconds"]
    print(f"\n{PODS} pods per group, one probe every {INTERVAL:g} s per pod and prober, "
          f"{DURATION:g} s of schedule; tailwatch's prober process: {cpu * 100:.1f}% of a core, "
          f"schedule lag p99 {report['lag']['p99'] * 1000:.2f} ms")  # fmt: skip
    print("| target | quantile | truth | tailwatch (agent) | tailwatch (/metrics) "
          "| blackbox_exporter |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name, group in groups.items():
        truth: list[float] = []
        mine: list[float] = []
        failed = 0
        theirs: list[float] = []
        for pod in group:
            truth += [pod.script.truth(t / NS_PER_S) for t in pod.starts(start_ns, end_ns)]
            ours = [(latency, reason) for p, _, latency, reason in results if p is pod]
            mine += [latency for latency, _ in ours]
            failed += sum(reason is not None for _, reason in ours)
            theirs += [d for t, d, _ in pod.blackbox if start_ns <= t < end_ns]
        assert len(mine) == len(truth)  # one sample per intended start
        series = LatencySeries(layout_for(0.05))
        for latency in mine:
            series.record(latency)
        cumulative = buckets(cumulative_buckets(series.bounds, series.bucket_counts))
        bb_failed = sum(not ok for pod in group for _, _, ok in pod.blackbox)
        print(f"| {name} | samples | {len(truth)} | {len(mine)} ({failed} failed) | "
              f"{len(mine)} | {len(theirs)} ({bb_failed} failed) |")  # fmt: skip
        for q in QUANTILES:
            t = exact_quantile(truth, q) if name != "floor (answers at once)" else None
            fine = series.quantile(q)
            assert fine is not None
            print(f"| {name} | p{q * 100:g} | {'-' if t is None else f'{t * 1000:.1f} ms'} | "
                  f"{row(name, t, fine)} | {row(name, t, histogram_quantile(q, cumulative))} | "
                  f"{row(name, t, exact_quantile(theirs, q))} |")  # fmt: skip
