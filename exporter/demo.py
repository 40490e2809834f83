"""`tailwatch demo`: a small simulated cluster with real traffic, the real agent pointed at it
by kubeconfig, a scripted scenario, a live view, and a report of the episodes it found.

Three nodes run four opted-in Services of a shop (`exporter.simulator.shop`, docs/demo.md):
`checkout` (a Deployment), `db` (a 3-replica StatefulSet), `recommend` (an app with a
CPU-hungry proxy sidecar) and `cart`, which the scenario never touches. Each pod serves
HTTP on its own loopback address with a latency model that queues when fewer endpoints
carry the load, starts cold, and stalls when a container on the request path is throttled;
kube-proxy serves every ClusterIP; an EndpointSlice controller follows the pods; the
agent's node has a cgroup tree consistent with that load; a client sends requests and
reports them over OTLP. The agent (in-process, through a kubeconfig, exactly as in
production) watches node `node-1`. The scenario: steady state, a rolling update of
checkout, an OOM-killed db container, a sidecar CPU burst in recommend, a drain of
node-3 that moves db-2 to node-1 while a noisy batch job on node-1 slows checkout, and
memory pressure on node-1 whose kubelet evicts a recommend pod.

`--speed` compresses time: the scenario's timings and the agent's windows are divided by
it (latencies are not: a request still takes its milliseconds). Probes are not: every
Service is probed every 100 ms (the shortest interval the annotation allows) at every
speed, so a faster run gives each window fewer probes. Before the script starts, the demo
waits until the agent's baseline of every Service can bound a p99 (a few hundred probes):
an episode judged against a baseline that cannot says `no_baseline`, not a ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from exporter import __version__
from exporter.agent import Agent
from exporter.core.endpoints import EndpointEvent
from exporter.core.episodes import EpisodeChange
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.histogram import FineHistogram
from exporter.core.nodes import NodeEvent
from exporter.core.quantiles import DEFAULT_CONFIDENCE, quantile_name, samples_needed
from exporter.core.services import MIN_INTERVAL, ServiceRef
from exporter.core.tails import TAIL_Q
from exporter.kube.config import load_connection
from exporter.logs import configure_logging
from exporter.report import Point, Report, TimeAxis, render_html, timelines_of_episodes
from exporter.server import ListenError
from exporter.settings import ListenAddress, Settings, check_settings, parse_listen
from exporter.simulator import ApiServer
from exporter.simulator.dataplane import DataPlane
from exporter.simulator.endpointslices import EndpointSliceController
from exporter.simulator.nodecgroups import NodeCgroups
from exporter.simulator.shop import (
    AGENT_NODE,
    DEFAULT_PORT,
    NAMESPACE,
    NODE_CORES,
    NODES,
    SCRIPT_SECONDS,
    SHOP,
    UNAFFECTED,
    DemoCluster,
    Disruption,
    Scenario,
    ScenarioClock,
    pick_port,
)
from exporter.simulator.traffic import ClientTarget, ServiceClient

DEFAULT_SPEED = 4.0
#: The agent's baseline window in scenario seconds (its default), divided by the speed like
#: every other window.
BASELINE_SECONDS = 300.0
#: Probes a baseline must hold to bound a p99 at the agent's default confidence (299 at
#: 0.95): with fewer, no episode can be judged against it.
BASELINE_PROBES = samples_needed(TAIL_Q, DEFAULT_CONFIDENCE)
#: Scenario seconds of steady probes in the tightest baseline of the script: db's when
#: node-3 is drained. Its window, 11 slots of 30 s, also spans db's OOM-kill episode and
#: that episode's recovery, about 80 s whose samples are not steady (runs at 8x and 7x
#: measured 322 and 370 probes in it: 258 and 259 scenario seconds' worth).
TIGHTEST_BASELINE_SECONDS = 250.0
#: Headroom for probes a loaded machine sends late, and for a longer episode before it.
BASELINE_HEADROOM = 1.1
#: The fastest speed: the tightest baseline, divided by it, still holds BASELINE_HEADROOM
#: times the probes a p99 bound needs, one every MIN_INTERVAL (7: 357 probes of 299).
MAX_SPEED = float(
    math.floor(TIGHTEST_BASELINE_SECONDS / (MIN_INTERVAL * BASELINE_PROBES * BASELINE_HEADROOM))
)
#: Real seconds the baselines may take before the script starts anyway: several times the
#: BASELINE_PROBES x MIN_INTERVAL (30 s) they take on an idle machine.
WARMUP_TIMEOUT = 120.0
REPORT_NAME = "tailwatch-demo-report.json"
#: After the script, up to this many scenario seconds for the last episodes to settle.
TAIL_SECONDS = 60.0
#: Scenario seconds each point of the HTML report's latency lines sums up: at the fastest
#: speed, still a dozen probes and the client's requests of them.
POINT_SECONDS = 5.0

log = logging.getLogger("tailwatch.demo")


# -- the live view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenEvent:
    t: float  # scenario seconds
    source: str  # pod | endpoint | kernel | node
    event: str
    subject: str
    detail: str


EVENT_STYLE = {
    "scheduled": "cyan",
    "ready": "green",
    "added": "cyan",
    "not_ready": "yellow",
    "container_restart": "red",
    "oom_kill": "bold red",
    "terminating": "magenta",
    "evicted": "bold magenta",
    "removed": "dim",
    "deleted": "dim",
    "rollout": "bold cyan",
    "moved": "bold blue",
    "replaced": "blue",
    "memory_pressure": "bold red",
    "disk_pressure": "bold red",
    "pid_pressure": "bold red",
    "pressure_cleared": "green",
    "cordoned": "magenta",
    "tainted": "bold magenta",
}
STATUS_STYLE = {
    "open": "bold yellow",
    "recovering": "yellow",
    "recovered": "green",
    "not_recovered": "red",
    "interrupted": "magenta",
    "no_baseline": "dim",
}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Warmup:
    """Before the script: how far the agent's baseline of each shop Service is from bounding
    a p99 (docs/demo.md, *Before the script*)."""

    needed: int  # probes a baseline needs to bound a p99 at the agent's confidence
    probes: dict[str, int] = dataclasses.field(default_factory=dict)  # by Service, so far
    supported: dict[str, bool] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # real seconds it took (or waited, when it timed out)
    done: bool = False  # every baseline bounds a p99

    def measure(self, agent: Agent) -> bool:
        """Read every Service's baseline now; True once each can bound a p99."""
        now = agent.clock()
        for s in SHOP:
            tail = agent.correlator.baseline_of(ServiceRef(NAMESPACE, s.name), now)
            self.probes[s.name] = 0 if tail is None else tail.samples
            self.supported[s.name] = tail is not None and tail.p99.supported
        self.done = all(self.supported.get(s.name, False) for s in SHOP)
        return self.done

    def progress(self) -> str:
        """`checkout 180/299, db 175/299, ... probes`: where each baseline is (✓: it
        bounds a p99)."""
        parts = [
            f"{name} {n}/{self.needed}" + (" ✓" if self.supported.get(name) else "")
            for name, n in self.probes.items()
        ]
        return (", ".join(parts) + " probes") if parts else "waiting for the first probes"

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "baselines_supported": self.done,
            "probes_needed": self.needed,
            "probes": dict(self.probes),
        }


async def measure_baselines(
    agent: Agent, warmup: Warmup, timeout: float, poll: float = 0.25
) -> Warmup:
    """Wait until the agent's baseline of every shop Service can bound a p99, at most
    `timeout` real seconds; `warmup.done` says which it was."""
    started = time.monotonic()
    deadline = started + max(0.0, timeout)
    # Polled: the baselines grow with every probe, and nothing announces a probe.
    while not warmup.measure(agent):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        await asyncio.sleep(min(poll, left))
    warmup.seconds = time.monotonic() - started
    return warmup


class LiveView:
    """What the terminal shows while the scenario plays (and, before it, the warm-up)."""

    def __init__(self, clock: ScenarioClock, agent: Agent) -> None:
        self.clock = clock
        self.agent = agent
        self.events: list[SeenEvent] = []
        self.warmup: Warmup | None = None  # shown until the script starts
        self.step = "steady state: the agent learns each Service's baseline"
        agent.router.subscribe(LifecycleEvent, self.on_pod_event)
        agent.router.subscribe(EndpointEvent, self.on_endpoint_event)
        agent.router.subscribe(NodeEvent, self.on_node_event)

    def on_pod_event(self, e: LifecycleEvent) -> None:
        source = "kernel" if e.kind is PodEventKind.OOM_KILL else "pod"
        detail = ": ".join(part for part in (e.container, e.reason) if part)
        if e.duration_seconds is not None:
            took = f"after {e.duration_seconds * self.clock.speed:.0f}s"
            detail = f"{detail} {took}".strip()
        self.events.append(
            SeenEvent(
                self.clock.of_wall(e.at), source, e.kind.value, f"{e.namespace}/{e.pod}", detail
            )
        )

    def on_node_event(self, e: NodeEvent) -> None:
        # At when the agent saw it (the API's times are whole seconds: a scenario second
        # is a fraction of one at speed).
        self.events.append(
            SeenEvent(self.clock.now(), "node", e.kind.value, e.node, e.taint or e.reason)
        )

    def on_endpoint_event(self, e: EndpointEvent) -> None:
        detail = f"{e.node}" + (f" (was {e.previous_node})" if e.previous_node else "")
        self.events.append(
            SeenEvent(
                self.clock.of_wall(e.at), "endpoint", e.kind.value, f"{e.service}: {e.pod}", detail
            )
        )

    def episodes(self) -> dict[str, Any]:
        return episodes_of(self.agent)

    def render(self) -> Group:
        if self.warmup is not None:
            header = Text.assemble(
                ("warm-up ", "bold"),
                (f"(x{self.clock.speed:g}) ", "dim"),
                ("▶ ", "bold"),
                ("measuring baselines: ", "bold"),
                (self.warmup.progress(), ""),
            )
        else:
            header = Text.assemble(
                (f"t+{self.clock.now():5.0f}s ", "bold"),
                (f"(x{self.clock.speed:g}) ", "dim"),
                ("▶ ", "bold"),
                (self.step, "bold"),
            )
        events = Table(title="lifecycle events seen by the agent on node-1", expand=True)
        for column, justify in (("t+s", "right"), ("source", "left"), ("event", "left"),
                                ("pod / endpoint", "left"), ("detail", "left")):  # fmt: skip
            events.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
        for e in self.events[-14:]:
            events.add_row(
                f"{e.t:.0f}", e.source, Text(e.event, style=EVENT_STYLE.get(e.event, "")),
                e.subject, e.detail,
            )  # fmt: skip
        return Group(header, events, episode_table(self.episodes(), self.clock, live=True))


class LatencyRecorder:
    """Each shop Service's headline latency over time, for the HTML report: p50 and p99 per
    POINT_SECONDS of scenario time, read from the in-process agent's fine tracks. Those
    keep only the last minute or so (what the agent's decisions need), so they are read
    as the demo runs, every slot once it is closed. The agent keeps no more for it: this is
    the demo's own memory."""

    def __init__(self, agent: Agent, speed: float) -> None:
        self.agent = agent
        self.width = POINT_SECONDS / speed  # real seconds a point sums up
        self.points: dict[str, list[Point]] = {f"{NAMESPACE}/{s.name}": [] for s in SHOP}
        self._read: dict[str, int] = {}  # the newest fine slot read, per Service
        self._bucket: dict[str, tuple[int, FineHistogram]] = {}

    def poll(self) -> None:
        now = self.agent.clock()
        for s in SHOP:
            name = f"{NAMESPACE}/{s.name}"
            view = self.agent.correlator.services.get(ServiceRef(NAMESPACE, s.name))
            source = None if view is None else view.latency.primary()
            if view is None or source is None:
                continue
            fine = view.latency.timelines[source].fine
            current = math.floor(now / fine.width)  # still written: read once it closes
            read = self._read.get(name, -1)
            for slot in fine:
                if read < slot.index < current:
                    self._add(name, math.floor(slot.start / self.width), slot.histogram)
                    read = slot.index
            self._read[name] = read

    def _add(self, name: str, bucket: int, histogram: FineHistogram) -> None:
        held = self._bucket.get(name)
        if held is not None and held[0] != bucket:
            self._close(name)
            held = None
        if held is None:
            held = self._bucket[name] = (bucket, FineHistogram())
        held[1].merge(histogram)

    def _close(self, name: str) -> None:
        bucket, histogram = self._bucket.pop(name)
        if histogram.count:
            p50, p99 = histogram.quantiles([0.5, TAIL_Q])
            at = (bucket + 0.5) * self.width
            self.points[name].append(Point(at, p50, p99, histogram.count))

    def finish(self) -> dict[str, list[Point]]:
        self.poll()
        for name in list(self._bucket):
            self._close(name)
        return self.points

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(min(1.0, self.width))


def html_report(
    report: dict[str, Any], points: dict[str, list[Point]], clock: ScenarioClock
) -> str:
    """The report as a page: a timeline per shop Service (docs/demo.md, *The picture*)."""
    demo = report["tailwatch_demo"]
    finished = _parse_iso(demo["finished_at"]) or time.time()
    axis = TimeAxis(clock.t0_wall, clock.speed, "offset")
    services = [f"{NAMESPACE}/{s.name}" for s in SHOP]
    missed = [m for m in report["disruptions"] if m["started_at"] and not m["episode"]]
    notes = [
        f"The agent on {demo['agent_node']}, seed {demo['seed']}, speed x{clock.speed:g}. "
        "Times are scenario seconds from the start of the script (the agent's durations "
        "multiplied by the speed).",
        f"Lines: the p50 and p99 of each Service's headline latency (its probes of the "
        f"Service address) per {POINT_SECONDS:g} scenario seconds. Bands: episodes, open to "
        "close; the green stretch after one is the wait until latency really recovered.",
    ]
    if missed:
        notes.append("Not detected: " + ", ".join(m["kind"] for m in missed) + ".")
    return render_html(
        Report(
            title="tailwatch demo: latency, episodes and lifecycle events per Service",
            subtitle=f"{len(report['disruptions'])} disruptions played, "
            f"{len(_all_episodes(report['episodes']))} episodes found; "
            f"{NAMESPACE}/{UNAFFECTED} was never touched.",
            axis=axis,
            start=clock.t0_wall,
            end=max(finished, clock.t0_wall + 1e-3),
            services=timelines_of_episodes(report["episodes"], services, axis, points),
            notes=notes,
        )
    )


def episodes_of(agent: Agent) -> dict[str, Any]:
    """The agent's /api/v1/episodes document."""
    get = getattr(agent, "episodes_json", None)
    if get is None:
        return {"open": [], "recent": []}
    doc: dict[str, Any] = get()
    return doc


def _all_episodes(doc: dict[str, Any]) -> list[dict[str, Any]]:
    episodes = [*doc.get("open", []), *doc.get("recent", [])]
    return sorted(episodes, key=lambda e: e.get("opened_at") or "")


def _p99s(episode: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    latency = episode.get("latency") or {}
    baseline = (latency.get("baseline") or {}).get("p99")
    during = (latency.get("during") or {}).get("p99")
    ratio = (latency.get("ratios") or {}).get("p99")
    return baseline, during, ratio


def _top(episode: dict[str, Any]) -> str:
    attribution = episode.get("attribution") or []
    if not attribution:
        return ""
    top = attribution[0]
    parts = [f"{top['pod']}/{top['container']}" + (" (sidecar)" if top.get("sidecar") else "")]
    if top.get("throttled_ratio") is not None:
        parts.append(f"throttled {top['throttled_ratio']:.0%}")
    if top.get("psi_cpu_some"):
        parts.append(f"cpu psi {top['psi_cpu_some']:.0%}")
    if top.get("pod_cpu_share") is not None and top.get("sidecar"):
        parts.append(f"{top['pod_cpu_share']:.0%} of pod cpu")
    if top.get("memory_limit_ratio") and top["memory_limit_ratio"] >= 0.9:
        parts.append(f"memory {top['memory_limit_ratio']:.0%} of limit")
    return ", ".join(parts)


def episode_table(doc: dict[str, Any], clock: ScenarioClock, *, live: bool = False) -> Table:
    title = "episodes (open and recent)" if live else "episodes found by the agent"
    table = Table(title=title, expand=True)
    for column in ("episode", "cause", "status", "t+s", "lasted", "p99 before → during",
                   "impact", "recovery", "strongest pressure"):  # fmt: skip
        table.add_column(column, overflow="fold")
    for e in _all_episodes(doc):
        opened = _parse_iso(e.get("opened_at"))
        baseline, during, ratio = _p99s(e)
        p99 = f"{_ms(baseline)} → {_ms(during)}" + (f" ({ratio:.1f}x)" if ratio else "")
        duration = e.get("duration_seconds")
        recovery = e.get("recovery_seconds")
        table.add_row(
            e["id"],
            Text(e["cause"], style="bold"),
            Text(e["status"], style=STATUS_STYLE.get(e["status"], "")),
            "" if opened is None else f"{clock.of_wall(opened):.0f}",
            "" if duration is None else f"{duration * clock.speed:.0f}s",
            p99,
            e.get("impact") or "",
            "" if recovery is None else f"{recovery * clock.speed:.0f}s",
            _top(e),
        )
    return table


def rollout_line(rollout: dict[str, Any], clock: ScenarioClock) -> str:
    """One rollout of /api/v1/episodes in words, its duration in scenario seconds."""
    r = rollout
    line = (
        f"[bold]rollout of {r['namespace']}/{r['workload']}[/] ({r['workload_kind']}, "
        f"{r['from_revision'] or '?'} → {r['to_revision'] or '?'}): {r['state']}"
    )
    if r["duration_seconds"] is not None:
        line += f" in {r['duration_seconds'] * clock.speed:.0f}s"
    return line + f" ({r['ready_new']} of {r['total']} endpoints ready on the new revision)"


# -- the report ------------------------------------------------------------------------------


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def match_disruptions(
    disruptions: list[Disruption],
    started: dict[str, float],
    doc: dict[str, Any],
    clock: ScenarioClock,
) -> list[dict[str, Any]]:
    """Each disruption that ran, with the episode the agent reported it in: the episode of its
    Service still open when it began (its events join that one: a tail spike of a loaded
    machine just before, say), else the first opened after it began (less a second) and
    before the next disruption of the same Service."""
    episodes = _all_episodes(doc)
    out: list[dict[str, Any]] = []
    for d in disruptions:
        began = started.get(d.kind)
        entry: dict[str, Any] = {
            "kind": d.kind,
            "service": f"{NAMESPACE}/{d.service}",
            "description": d.description,
            "scheduled_t": d.at,
            "started_at": None if began is None else _iso(began),
            "expected_cause": d.expected_cause,
            "episode": None,
            "detected_cause": None,
        }
        if began is not None:
            later = [
                started[o.kind]
                for o in disruptions
                if o.service == d.service and o.kind in started and started[o.kind] > began
            ]
            until = min(later) if later else math.inf
            for e in episodes:
                opened = _parse_iso(e.get("opened_at"))
                if e["service"] != d.service or opened is None:
                    continue
                closed = _parse_iso(e.get("closed_at"))
                still_open = opened < began and (closed is None or closed >= began)
                if still_open or began - 1.0 / clock.speed <= opened < until:
                    entry["episode"] = e["id"]
                    entry["detected_cause"] = e["cause"]
                    break
        out.append(entry)
    return out


def _top_neighbour(matched: list[dict[str, Any]], doc: dict[str, Any]) -> str | None:
    """namespace/pod/container of the neighbour the noisy neighbour's episode names first."""
    played = next((m for m in matched if m["kind"] == "noisy_neighbour"), None)
    if played is None or played["episode"] is None:
        return None
    episode = next(e for e in _all_episodes(doc) if e["id"] == played["episode"])
    top = (episode.get("neighbours") or [None])[0]
    return None if top is None else f"{top['namespace']}/{top['pod']}/{top['container']}"


def build_report(
    *,
    disruptions: list[Disruption],
    started: dict[str, float],
    doc: dict[str, Any],
    clock: ScenarioClock,
    seed: int,
    finished: float,
    cut_short: bool,
    warmup: Warmup | None = None,
) -> dict[str, Any]:
    matched = match_disruptions(disruptions, started, doc, clock)
    ran = [m for m in matched if m["started_at"] is not None]
    quiet = [e["id"] for e in _all_episodes(doc) if e["service"] == UNAFFECTED]
    burst = next((m for m in matched if m["kind"] == "sidecar_burst"), None)
    sidecar_top = None
    if burst is not None and burst["episode"] is not None:
        episode = next(e for e in _all_episodes(doc) if e["id"] == burst["episode"])
        if episode.get("attribution"):
            top = episode["attribution"][0]
            sidecar_top = f"{top['pod']}/{top['container']}"
    return {
        "tailwatch_demo": {
            "version": __version__,
            "seed": seed,
            "speed": clock.speed,
            "agent_node": AGENT_NODE,
            "started_at": _iso(clock.t0_wall),
            "finished_at": _iso(finished),
            "cut_short": cut_short,
            "warmup": None if warmup is None else warmup.as_json(),
            "note": "times in `episodes` are the agent's (real seconds); multiply durations "
            "by `speed` for scenario time; scenario times (`scheduled_t`) count from "
            "`started_at`, the end of the warm-up",
        },
        "disruptions": matched,
        "unaffected_service": f"{NAMESPACE}/{UNAFFECTED}",
        "checks": {
            "every_disruption_detected": all(
                m["detected_cause"] == m["expected_cause"] for m in ran
            ),
            "unaffected_service_quiet": not quiet,
            "sidecar_burst_top_container": sidecar_top,
            "noisy_neighbour_named": _top_neighbour(matched, doc),
        },
        "episodes": doc,
    }


def disruption_table(report: dict[str, Any]) -> Table:
    table = Table(title="what was injected, and what the agent reported")
    for column in ("t+s", "disruption", "service", "expected", "reported", "episode"):
        table.add_column(column, overflow="fold")
    for m in report["disruptions"]:
        ok = m["detected_cause"] == m["expected_cause"]
        reported = m["detected_cause"] or ("not run" if m["started_at"] is None else "nothing")
        table.add_row(
            f"{m['scheduled_t']:.0f}",
            m["description"],
            m["service"],
            m["expected_cause"],
            Text(reported, style="green" if ok else "bold red"),
            m["episode"] or "",
        )
    return table


def default_report_path() -> Path:
    """`tailwatch-demo-report.json` in the current directory, else in the temp directory."""
    cwd = Path.cwd()
    if os.access(cwd, os.W_OK):
        return cwd / REPORT_NAME
    return Path(tempfile.gettempdir()) / REPORT_NAME


# -- running it ------------------------------------------------------------------------------


def demo_settings(
    speed: float, kubeconfig: Path, cgroup_root: Path, listen: ListenAddress, otlp: ListenAddress
) -> Settings:
    """The agent's settings, its windows divided by `speed` (fields this version of the
    agent lacks are left out), checked as `tailwatch run` checks its own: scaling keeps the
    windows' order, so they pass at every speed the demo takes."""
    values: dict[str, Any] = {
        "node_name": AGENT_NODE,
        "kubeconfig": str(kubeconfig),
        "cgroup_root": cgroup_root,
        "listen": listen,
        "otlp_listen": otlp,
        "sample_interval": 1.0 / speed,
        "log_level": "warning",
        "episode_settle": 30.0 / speed,
        "baseline_window": BASELINE_SECONDS / speed,
        "recovery_window": 30.0 / speed,
        "recovery_tolerance": 0.2,
        "recovery_max": 600.0 / speed,
        "rollout_stuck": 600.0 / speed,
        "spike_ratio": 2.0,
    }
    known = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in values.items() if k in known})
    check_settings(settings)
    return settings


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DemoOptions:
    speed: float = DEFAULT_SPEED
    duration: float | None = None  # real seconds; None: the whole script and its tail
    seed: int = 1
    hold: bool = False
    listen: str = "127.0.0.1:9808"
    report: Path | None = None
    port: int = DEFAULT_PORT  # of pods and Services; 0 picks a free one
    client_rate: float = 5.0  # requests/s to each Service
    live: bool = True
    warmup_timeout: float = WARMUP_TIMEOUT  # real seconds; then the script starts anyway


async def _wait_agent_ready(agent: Agent, task: asyncio.Task[None], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not (agent.readiness()[0] and agent.prober.targets):
        if task.done():
            await task  # raises the agent's failure (e.g. its address is taken)
            raise RuntimeError("the agent stopped before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not sync with the simulated cluster")
        await asyncio.sleep(0.05)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _warmup_failed(warmup: Warmup, *, budget_spent: bool) -> str:
    """What a user should know when the script starts before every baseline could bound a
    p99: which Services, and what that does to their episodes."""
    short = [name for name, ok in warmup.supported.items() if not ok] or [s.name for s in SHOP]
    why = "--duration left no more time" if budget_spent else "the time allowed for it is over"
    return (
        f"[bold yellow]baselines not measured[/] after {warmup.seconds:.0f} s ({why}): "
        f"{warmup.progress()}. The agent cannot bound the {quantile_name(TAIL_Q)} of "
        f"{', '.join(short)} yet, so their episodes will close [bold]no_baseline[/] (impact "
        f"unknown, recovery not judged) until they can. The script starts anyway."
    )


def _warmup_summary(warmup: Warmup) -> str:
    if warmup.done:
        return (
            f"[dim]Before the script, {warmup.seconds:.0f} s of steady traffic gave every "
            f"Service's baseline the {warmup.needed} probes that bound its "
            f"{quantile_name(TAIL_Q)}.[/]"
        )
    return (
        f"[yellow]The script started after {warmup.seconds:.0f} s without every baseline "
        f"able to bound a {quantile_name(TAIL_Q)} ({warmup.progress()}).[/]"
    )


def speed_for(duration: float) -> float:
    """The speed that fits the warm-up, the script and its tail into `duration` real
    seconds, within [1, MAX_SPEED] (at MAX_SPEED a shorter run is cut short)."""
    warmup = BASELINE_PROBES * MIN_INTERVAL  # real seconds, whatever the speed
    # The warm-up also waits for the baseline slot it is in to end: 30 scenario seconds.
    scenario = SCRIPT_SECONDS + TAIL_SECONDS + BASELINE_SECONDS / 10
    if duration <= warmup:
        return MAX_SPEED
    return min(MAX_SPEED, max(1.0, scenario / (duration - warmup)))


def speed_refused(speed: float) -> str | None:
    """Why `speed` is refused, or None when the demo takes it."""
    if 0 < speed <= MAX_SPEED:
        return None
    probes = TIGHTEST_BASELINE_SECONDS / MIN_INTERVAL
    return (
        f"--speed must be above 0 and at most {MAX_SPEED:g}. The agent's windows are divided "
        f"by the speed and each Service is probed every {MIN_INTERVAL * 1000:g} ms, so at "
        f"speed X the script's tightest baseline (db's before the drain) holds about "
        f"{probes:g}/X probes; a {quantile_name(TAIL_Q)} needs {BASELINE_PROBES} to be bounded "
        f"at {DEFAULT_CONFIDENCE:.0%} confidence, and the agent judges no "
        f"episode against a baseline with fewer (it ends no_baseline)."
    )


def _settled(doc: dict[str, Any]) -> bool:
    """No episode is open or still waiting for recovery."""
    return not doc.get("open") and not any(
        e["status"] == "recovering" for e in doc.get("recent", [])
    )


async def run(options: DemoOptions, console: Console) -> dict[str, Any]:
    """Run the demo; returns the report (also written to `options.report`)."""
    speed = options.speed
    with tempfile.TemporaryDirectory(prefix="tailwatch-demo-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            api = ApiServer(bookmark_interval=1.0)
            await stack.enter_async_context(api)
            kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
            clock = ScenarioClock(speed)
            demo = DemoCluster(api, clock, pick_port(options.port))
            demo.seed()
            controller = EndpointSliceController(api.store)
            controller.reconcile()
            background: list[asyncio.Task[Any]] = []
            stack.push_async_callback(_cancel, background)
            background.append(asyncio.create_task(controller.run(), name="endpointslices"))
            dataplane = DataPlane(
                api.store,
                [s.profile.compressed(speed) for s in SHOP],
                seed=options.seed,
                node_cores=NODE_CORES,
                sync_delay=1.0 / speed,
                tick=min(0.25, max(0.05, 1.0 / speed)),
                memory_period=120.0 / speed,
            )
            await stack.enter_async_context(dataplane)
            demo.dataplane = dataplane
            cgroups = NodeCgroups(
                Path(tmp) / "cgroup", api.store, AGENT_NODE, dataplane.load_of,
                interval=max(0.05, 1.0 / speed),
            )  # fmt: skip
            demo.cgroups = cgroups
            cgroups.update()
            background.append(asyncio.create_task(cgroups.run(), name="cgroups"))

            otlp = ListenAddress("127.0.0.1", _free_local_port())
            settings = demo_settings(
                speed, kubeconfig, Path(tmp) / "cgroup", parse_listen(options.listen), otlp
            )
            agent = Agent(settings, connection=load_connection(str(kubeconfig)))
            stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(stop), name="agent")

            async def stop_agent() -> None:
                stop.set()
                with contextlib.suppress(Exception):
                    await agent_task

            stack.push_async_callback(stop_agent)
            view = LiveView(clock, agent)
            await _wait_agent_ready(agent, agent_task)
            client = ServiceClient(
                [
                    ClientTarget(
                        f"{s.name}.{NAMESPACE}.svc.cluster.local", s.cluster_ip, demo.port, s.path
                    )
                    for s in SHOP
                ],
                rate=options.client_rate,
                otlp_url=f"http://{otlp}/v1/metrics",
                export_interval=max(0.25, 2.0 / speed),
                seed=options.seed,
                service_name="shop-frontend",
            )
            background.append(asyncio.create_task(client.run(), name="client"))
            recorder = LatencyRecorder(agent, speed)
            background.append(asyncio.create_task(recorder.run(), name="latency"))
            console.print(
                f"[bold]tailwatch demo[/] (seed {options.seed}, speed x{speed:g}): a shop on "
                f"{len(NODES)} simulated nodes, API at {api.url}; the agent watches "
                f"[cyan]{AGENT_NODE}[/] and serves http://{settings.listen}/metrics and "
                f"/api/v1/episodes"
            )

            # Everything is built: move it out of the garbage collector's way, so a full
            # collection does not stall the event loop (and every latency) for 100 ms.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            began = time.monotonic()
            budget = math.inf if options.duration is None else options.duration
            warmup = Warmup(samples_needed(TAIL_Q, agent.correlator.settings.confidence))
            view.warmup = warmup
            console.print(
                f"First the agent measures each Service's baseline until it can bound a "
                f"{quantile_name(TAIL_Q)}: {warmup.needed} probes, one every "
                f"{MIN_INTERVAL * 1000:g} ms (about {warmup.needed * MIN_INTERVAL:.0f} s). Then "
                f"the script starts at t+0."
            )
            scenario = Scenario(demo)
            disruptions = scenario.disruptions()
            cut_short = False
            steps: list[asyncio.Task[None]] = []
            stack.push_async_callback(_cancel, steps)

            changed = asyncio.Event()  # an episode changed
            agent.router.subscribe(EpisodeChange, lambda change: changed.set())

            with Live(
                view.render(), console=console, refresh_per_second=4, transient=False,
                auto_refresh=False,
            ) if options.live else contextlib.nullcontext() as live:  # fmt: skip

                async def shown(task: asyncio.Task[Any]) -> Any:
                    """The task's result, the live view refreshed while it runs."""
                    while not task.done():
                        if live is not None:
                            live.update(view.render(), refresh=True)
                        await asyncio.wait({task}, timeout=0.5)
                    if live is not None:
                        live.update(view.render(), refresh=True)
                    return await task

                # Before the script: every Service's baseline must bound a p99, or no
                # episode of it could be judged (the steady state of the script adds to it).
                await shown(
                    asyncio.create_task(
                        measure_baselines(agent, warmup, min(options.warmup_timeout, budget))
                    )
                )
                view.warmup = None
                if not warmup.done:
                    console.print(
                        _warmup_failed(warmup, budget_spent=budget < options.warmup_timeout)
                    )
                # Scenario time starts now: the script's times count from here.
                clock.restart()
                deadline = (budget - (time.monotonic() - began)) * speed

                async def play(d: Disruption) -> None:
                    await clock.until(d.at)
                    scenario.started[d.kind] = time.time()
                    view.step = f"{d.kind}: {d.description}"
                    await d.act()

                for d in disruptions:
                    if d.at < deadline:
                        steps.append(asyncio.create_task(play(d), name=d.kind))
                    else:
                        cut_short = True

                async def scripted() -> None:
                    await asyncio.gather(*steps)
                    await clock.until(min(SCRIPT_SECONDS, deadline))
                    view.step = "the script is over: waiting for the last episodes to settle"
                    end = min(SCRIPT_SECONDS + TAIL_SECONDS, deadline)
                    while clock.now() < end and not _settled(episodes_of(agent)):
                        changed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(changed.wait(), (end - clock.now()) / speed)

                await shown(asyncio.create_task(scripted()))
            if clock.now() >= deadline:
                cut_short = True

            doc = episodes_of(agent)
            report = build_report(
                disruptions=disruptions,
                started=scenario.started,
                doc=doc,
                clock=clock,
                seed=options.seed,
                finished=time.time(),
                cut_short=cut_short,
                warmup=warmup,
            )
            path = options.report or default_report_path()
            # Beside the JSON: same name, .html (a --report FILE.html is not overwritten).
            page = path.with_suffix(".html" if path.suffix != ".html" else ".timelines.html")
            report["tailwatch_demo"]["html_report"] = str(page)
            path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
            page.write_text(html_report(report, recorder.finish(), clock))
            console.print()
            console.print(episode_table(doc, clock))
            console.print(disruption_table(report))
            console.print(
                f"[dim]In the agent's words (its durations are real seconds: the scenario "
                f"ran {speed:g}x faster):[/]"
            )
            for e in _all_episodes(doc):
                console.print(f"[bold]{e['id']}[/]: {e.get('summary', '')}")
            for r in doc.get("rollouts", []):
                console.print(rollout_line(r, clock))
            console.print(_warmup_summary(warmup))
            console.print(
                f"report written to [bold]{path}[/]"
                + ("" if options.report else " (default location; --report FILE to change)")
            )
            console.print(f"timelines of every Service: [bold]{page}[/] (open it in a browser)")
            if options.hold:
                console.print(
                    f"[bold]holding[/]: the agent keeps serving http://{settings.listen}/metrics "
                    f"and /api/v1/episodes, the API simulator {api.url} (kubeconfig "
                    f"{kubeconfig}); Ctrl-C to stop"
                )
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            return report


def run_demo(
    *,
    duration: float | None = None,
    listen: str = "127.0.0.1:9808",
    seed: int = 1,
    hold: bool = False,
    speed: float | None = None,
    report: str | None = None,
) -> int:
    """`tailwatch demo`: returns the exit status."""
    if duration is not None and not duration > 0:
        print("tailwatch demo: --duration must be a number of seconds above 0")
        return 2
    if speed is None:
        speed = DEFAULT_SPEED if duration is None else speed_for(duration)
    refused = speed_refused(speed)
    if refused is not None:
        print(f"tailwatch demo: {refused}")
        return 2
    try:
        parse_listen(listen)
    except ValueError as exc:
        print(f"tailwatch demo: --listen: {exc}")
        return 2
    configure_logging("warning")
    logging.getLogger("tailwatch").setLevel(logging.ERROR)
    console = Console()
    options = DemoOptions(
        speed=speed,
        duration=duration,
        seed=seed,
        hold=hold,
        listen=listen,
        report=Path(report) if report else None,
    )

    async def main() -> None:
        # SIGTERM (a supervisor, a test harness) ends the demo as cleanly as Ctrl-C does:
        # every server closed, the temporary directory removed.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await run(options, console)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        console.print("\nstopped: everything is closed and cleaned up")
        if hold:
            return 0
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except ListenError as exc:
        console.print(f"tailwatch demo: error: {exc}")
        return 1
    return 0
