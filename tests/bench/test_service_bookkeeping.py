"""Service bookkeeping: what one EndpointSlice or Service event costs a real agent, as a
function of the number of opted-in Services S (docs/design.md: an EndpointSlice update
costs O(that Service), never O(all Services)).

Run: `.venv/bin/python -m pytest tests/bench/test_service_bookkeeping.py -m bench -s`
Environment: TAILWATCH_BENCH_SERVICES (default 100,1000,5000), TAILWATCH_BENCH_EVENTS (the
most slice events in a burst, default 1000), TAILWATCH_BENCH_EVENT_CPU_SECONDS (the CPU a
slice burst is sized to take, default 15), TAILWATCH_BENCH_CAP_SECONDS (the longest wait for
the delete burst, default 60; twice that for a slice burst). About 7 minutes when the
bookkeeping is O(S) per event, 1 when it is O(1).

For each S, side by side in one run: one `tailwatch run` process on node-0000 of a
simulated cluster (tests/bench/cluster.py) of 200 nodes and S opted-in Services, each with
2 endpoints spread round-robin over the nodes (so node-0000 hosts S/100 of them), a TCP
listener on every ClusterIP, a tailwatch peer pod on every node (so that, with k probers per
Service address, this agent sees the 200 peers it would see in such a cluster), and:

0. At rest: the agent's CPU over IDLE_SECONDS, then the CPU of one /metrics scrape (the
   benchmark's own polls cost the agent that much each; at thousands of Services an O(S)
   agent spends seconds on one).
1. Per-event CPU. E EndpointSlice MODIFIED events (one endpoint's readiness flipped, spread
   over the Services) are written to the simulator at once, and /metrics is polled until
   `tailwatch_watch_events_total{resource="endpointslices",type="MODIFIED"}` has grown by E.
   CPU per event = (CPU used - idle rate x wall time - scrapes x one scrape) / E. A first
   burst of 3 events sizes E so that the measured burst takes about TARGET_CPU of CPU (up to
   MAX_EVENTS): enough events for the CPU clock's 10 ms ticks when events are cheap, few
   enough to end when they cost seconds (if the 3 took a third of TARGET_CPU already, they
   are the measurement). A burst not handled within SLICE_WAIT_SECONDS gives a lower bound
   (the CPU used divided by every event written), and a fresh agent takes over for step 2
   (the old one still has a backlog). While it handles a burst, a busy agent may not answer
   /metrics at all (its event loop does not yield between the events of one read): a scrape
   waits as long as the wait allows.
2. A burst that deletes half of the Services (each Service, then its slices: the order of
   the garbage collector). A poller in its own process asks /healthz every 10 ms (a new
   connection each time) while the agent absorbs the burst; absorb time runs from the first
   write until an answer of /metrics shows every DELETED event of the burst handled
   (so it is late by up to one poll), capped at CAP_SECONDS. Afterwards, the series on
   /metrics that still name a deleted Service are counted (when absorbed).

Services are probed every PROBE_INTERVAL (60 s, not the default 1 s): at S = 5,000 an agent
probing every Service address every second would spend its whole core on the probes, and
the per-event cost would drown in it. Timed assertions never live here: the numbers are
printed as a table (docs/performance.md).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.simulator.scale import ScaleSpec, delete_service, flip_endpoint
from tests.bench.cluster import Agent, BenchCluster, HealthzPoller, Metrics, percentile

SERVICE_COUNTS = tuple(
    int(s) for s in os.environ.get("TAILWATCH_BENCH_SERVICES", "100,1000,5000").split(",")
)
MAX_EVENTS = int(os.environ.get("TAILWATCH_BENCH_EVENTS", "1000"))
TARGET_CPU = float(os.environ.get("TAILWATCH_BENCH_EVENT_CPU_SECONDS", "15"))
CAP_SECONDS = float(os.environ.get("TAILWATCH_BENCH_CAP_SECONDS", "60"))
SLICE_WAIT_SECONDS = 2 * CAP_SECONDS  # the longest wait for a slice burst
CALIBRATION_EVENTS = 3
NODES = 200
ENDPOINTS_PER_SERVICE = 2
PROBE_INTERVAL = "60s"
IDLE_SECONDS = 4.0
IDLE_SCRAPES = 3
MIN_POLL_SECONDS = 0.1  # /metrics polls while waiting for the agent, at least this apart,
POLL_OVERHEAD = 0.1  # far enough apart that they take at most this share of a core,
MAX_POLL_SECONDS = 5.0  # but at most this far apart (their CPU is subtracted anyway)
HEALTHZ_PAUSE = 0.01
HEALTHZ_TIMEOUT = 10.0
KUBELET_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds of a liveness probe
HEALTHZ_MIN_WINDOW = 2.0  # seconds of /healthz polls kept at least, from the burst's start
AGENT_NODE = "node-0000"

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]


@dataclass
class Costs:
    """The agent at rest: CPU seconds per second, and CPU seconds per /metrics scrape."""

    idle: float
    scrape: float

    @property
    def poll_every(self) -> float:
        return min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, self.scrape / POLL_OVERHEAD))


def rest_costs(agent: Agent) -> Costs:
    t0, c0 = time.monotonic(), agent.cpu()
    time.sleep(IDLE_SECONDS)  # a fixed measuring window
    t1, c1 = time.monotonic(), agent.cpu()
    idle = (c1 - c0) / (t1 - t0)
    for _ in range(IDLE_SCRAPES):
        agent.metrics(timeout=120)
        time.sleep(0.2)
    t2, c2 = time.monotonic(), agent.cpu()
    return Costs(idle, max(0.0, (c2 - c1 - idle * (t2 - t1)) / IDLE_SCRAPES))


@dataclass
class Poll:
    metrics: Metrics | None  # the last answer (None: none)
    done: bool
    answered_at: float  # monotonic time of that answer
    scrapes: int  # asked for, answered or not


def poll_until(agent: Agent, done: Callable[[Metrics], bool], cap: float, every: float) -> Poll:
    """Scrape every `every` seconds until `done(metrics)` or `cap` seconds have passed. A
    busy agent may not answer at all: each scrape waits up to the time left."""
    start = time.monotonic()
    deadline = start + cap
    last = Poll(None, False, start, 0)
    scrapes = 0
    while True:
        scrapes += 1
        metrics = agent.try_metrics(timeout=max(1.0, deadline - time.monotonic()))
        if metrics is not None:
            last = Poll(metrics, done(metrics), time.monotonic(), scrapes)
            if last.done:
                return last
        now = time.monotonic()
        if now >= deadline:
            last.scrapes = scrapes
            return last
        time.sleep(min(every, deadline - now))  # paces the polls


@dataclass
class SliceBurst:
    events: int
    handled: int | None  # None: the agent did not answer /metrics within the wait
    seconds: float  # until the answer that showed the last event handled, or the wait
    cpu: float  # CPU seconds used, less the idle rate and the scrapes
    complete: bool
    answered_seconds: float  # when the last answer of /metrics came (from the first write)

    @property
    def per_event(self) -> float:
        """CPU per handled event; when not all were handled (or with no answer), a lower
        bound: as if all were."""
        if not self.complete or self.handled is None:
            return self.cpu / self.events
        return self.cpu / max(1, self.handled)


def slice_burst(bench: BenchCluster, agent: Agent, events: int, costs: Costs) -> SliceBurst:
    """Flip one endpoint in `events` slices (spread over the Services) at once; wait until
    the agent has handled them."""
    services = bench.cluster.services
    before = agent.metrics(timeout=120).watch_events("endpointslices", "MODIFIED")
    picked = [services[(k * len(services)) // events % len(services)] for k in range(events)]
    t0, c0 = time.monotonic(), agent.cpu()
    for service in picked:
        flip_endpoint(bench.store, service.namespace, service.slices[0])
    poll = poll_until(
        agent,
        lambda m: m.watch_events("endpointslices", "MODIFIED") >= before + events,
        SLICE_WAIT_SECONDS,
        costs.poll_every,
    )
    t1 = poll.answered_at if poll.done else time.monotonic()
    cpu = agent.cpu() - c0 - costs.idle * (t1 - t0) - costs.scrape * poll.scrapes
    handled = None
    if poll.metrics is not None:
        handled = poll.metrics.watch_events("endpointslices", "MODIFIED") - before
    return SliceBurst(events, handled, t1 - t0, cpu, poll.done, poll.answered_at - t0)


@dataclass
class Row:
    services: int
    local_endpoints: int
    sync_seconds: float
    costs: Costs
    burst: SliceBurst
    delete_events: int
    delete_handled: int | None  # at the last answer of /metrics; None: no answer
    absorb_seconds: float | None  # None: not absorbed within the cap
    delete_seconds: float  # the measured part of the burst (absorbed, or the cap)
    healthz: list[float]  # seconds of every poll started during the burst, answered or not
    healthz_failed: int  # of which unanswered within HEALTHZ_TIMEOUT
    leftover: dict[str, int] | None  # family -> series of deleted Services; None: not checked


def measure(services: int, workdir: Path) -> Row:
    spec = ScaleSpec(
        nodes=NODES,
        services=services,
        endpoints_per_service=ENDPOINTS_PER_SERVICE,
        probe_interval=PROBE_INTERVAL,
    )
    with BenchCluster(spec, workdir) as bench:
        cluster, store = bench.cluster, bench.store
        started = time.monotonic()
        (agent,) = bench.start_agents([AGENT_NODE], timeout=300)
        sync_seconds = time.monotonic() - started
        costs = rest_costs(agent)

        # -- 1: EndpointSlice MODIFIED events: a small burst sizes the measured one -------
        burst = slice_burst(bench, agent, CALIBRATION_EVENTS, costs)
        if burst.complete and burst.cpu < TARGET_CPU / 3:
            per_event = max(burst.per_event, 1e-5)
            events = max(CALIBRATION_EVENTS, min(MAX_EVENTS, int(TARGET_CPU / per_event)))
            burst = slice_burst(bench, agent, events, costs)
        if not burst.complete:
            # A backlog is left: a fresh agent (synced from the current state) for step 2.
            bench.stop_agents([agent])
            (agent,) = bench.start_agents([AGENT_NODE], timeout=300)

        # -- 2: delete half of the Services, /healthz polled meanwhile --------------------
        gone = cluster.services[::2]
        metrics = agent.metrics(timeout=120)
        base_services = metrics.watch_events("services", "DELETED")
        base_slices = metrics.watch_events("endpointslices", "DELETED")
        want = len(gone) + sum(len(s.slices) for s in gone)

        def handled(m: Metrics) -> int:
            return (
                m.watch_events("services", "DELETED")
                - base_services
                + m.watch_events("endpointslices", "DELETED")
                - base_slices
            )

        poller = HealthzPoller(agent.url + "/healthz", HEALTHZ_PAUSE, HEALTHZ_TIMEOUT)
        try:
            b0 = time.monotonic()
            for service in gone:
                delete_service(store, service)
            poll = poll_until(agent, lambda m: handled(m) >= want, CAP_SECONDS, costs.poll_every)
            b1 = poll.answered_at if poll.done else time.monotonic()
            if b1 < b0 + HEALTHZ_MIN_WINDOW:
                time.sleep(b0 + HEALTHZ_MIN_WINDOW - b1)  # a fixed measuring window
        finally:
            samples = poller.stop()
        # At least HEALTHZ_MIN_WINDOW of polls, when the burst is absorbed at once.
        during = [(s, c) for t, s, c in samples if b0 <= t <= max(b1, b0 + HEALTHZ_MIN_WINDOW)]
        leftover = None
        if poll.done:
            final = agent.metrics()
            leftover = dict(final.service_series(spec.namespace, [s.name for s in gone]))
        return Row(
            services=services,
            local_endpoints=cluster.local_endpoints(AGENT_NODE),
            sync_seconds=sync_seconds,
            costs=costs,
            burst=burst,
            delete_events=want,
            delete_handled=handled(poll.metrics) if poll.metrics is not None else None,
            absorb_seconds=b1 - b0 if poll.done else None,
            delete_seconds=b1 - b0,
            healthz=[s for s, _ in during],
            healthz_failed=sum(1 for _, c in during if c != 200),
            leftover=leftover,
        )


def ms(seconds: float) -> str:
    value = seconds * 1000
    if math.isnan(value):
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} ms"


def poll_ms(seconds: float) -> str:
    """A /healthz poll's time; one that got no answer shows as at least the timeout."""
    return f">= {HEALTHZ_TIMEOUT:g} s" if seconds >= HEALTHZ_TIMEOUT else ms(seconds)


def test_service_bookkeeping(tmp_path: Path) -> None:
    rows = [measure(s, tmp_path / f"s{s}") for s in SERVICE_COUNTS]

    print(
        f"\nOne agent on {AGENT_NODE}, {NODES} nodes, {ENDPOINTS_PER_SERVICE} endpoints per "
        f"Service, probes every {PROBE_INTERVAL}. Slice burst: sized by {CALIBRATION_EVENTS} "
        f"events to ~{TARGET_CPU:g} s of CPU (at most {MAX_EVENTS} events). Delete burst: half "
        f"the Services, then their slices. Waits capped at {CAP_SECONDS:g} s. /healthz every "
        f"{HEALTHZ_PAUSE * 1000:g} ms during the delete burst (unanswered: no answer in "
        f"{HEALTHZ_TIMEOUT:g} s; over 1 s: what the kubelet's default probe timeout fails).\n"
    )
    print(
        "| S | local endpoints | sync | idle CPU | one /metrics | CPU per slice event "
        "| slice burst | healthz p50 | p99 | max | over 1 s | delete burst absorbed "
        "| leftover series |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- "
        "| --- |"
    )
    for r in rows:
        b = r.burst
        if b.handled is None:
            cpu = f">= {ms(b.per_event)}"
            burst = f"no answer on /metrics in {b.seconds:.0f} s ({b.events} events)"
        elif b.complete:
            cpu = ms(b.per_event)
            burst = f"{b.handled}/{b.events} events in {b.seconds:.1f} s"
        else:
            cpu = f">= {ms(b.cpu / b.events)}"
            burst = (
                f"not in {b.seconds:.0f} s: {b.handled}/{b.events} events at the last answer "
                f"of /metrics ({b.answered_seconds:.0f} s)"
            )
        if r.absorb_seconds is not None:
            absorb = f"{ms(r.absorb_seconds)} ({r.delete_events} events)"
        elif r.delete_handled is None:
            absorb = f"no: no answer on /metrics in {r.delete_seconds:.0f} s"
        else:
            absorb = f"no: {r.delete_handled}/{r.delete_events} in {r.delete_seconds:.0f} s"
        if r.leftover is None:
            leftover = "not checked"
        elif not r.leftover:
            leftover = "0"
        else:
            leftover = f"{sum(r.leftover.values())}: " + ", ".join(
                f"{name} {n}" for name, n in sorted(r.leftover.items())
            )
        failed = f" ({r.healthz_failed} unanswered)" if r.healthz_failed else ""
        slow = sum(1 for x in r.healthz if x > KUBELET_TIMEOUT)
        print(
            f"| {r.services:,} | {r.local_endpoints} | {r.sync_seconds:.1f} s "
            f"| {r.costs.idle:.1%} | {ms(r.costs.scrape)} | {cpu} | {burst} "
            f"| {poll_ms(percentile(r.healthz, 0.5))} | {poll_ms(percentile(r.healthz, 0.99))} "
            f"| {poll_ms(max(r.healthz, default=math.nan))}{failed} | {slow}/{len(r.healthz)} "
            f"| {absorb} | {leftover} |"
        )
