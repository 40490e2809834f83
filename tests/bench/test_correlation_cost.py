"""Cost of the correlation core at the reference node (docs/design.md), steady and with
episodes, side by side in one run. Run:
.venv/bin/python -m pytest tests/bench/test_correlation_cost.py -m bench -s

Simulated time (the core takes `now`): 20 opted-in Services, 45 probe targets (20 service
+ 25 endpoint) at 1/s, 1,000 OTLP data points/s of 15 buckets each spread over the
Services, a cgroup pass of 330 containers (75 of them in pods backing a Service) and a
tick every second. Measured: process CPU time per simulated second, i.e. the share of one
core in real time, for a steady run and for the same run with rollouts; the difference
divided by the number of episodes is the cost of one episode. Numbers go to
docs/performance.md, "Correlation".
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace

import pytest

from exporter.core.correlation import Correlator
from exporter.core.endpoints import Endpoint, EndpointEvent, EndpointEventKind
from exporter.core.episodes import ChangeKind, Source
from exporter.core.rules import CorrelationSettings
from exporter.core.services import ServiceRef

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

NODE = "node-1"
SECONDS = 600
SERVICES = [ServiceRef("shop", f"svc-{i:02d}") for i in range(20)]
OTLP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


@dataclass
class Reading:
    namespace: str
    pod: str
    container: str
    cpu_usage_seconds: float = 0.0
    cpu_periods: int = 0
    cpu_throttled_periods: int = 0
    memory_working_set_bytes: int = 100 << 20
    memory_limit_bytes: int = 1 << 30
    pressure: tuple = ()


def endpoints_of(i: int) -> dict[str, Endpoint]:
    """12-13 endpoints per Service, 25 of all of them on this node (one or two each)."""
    out = {}
    for j in range(12 + (i % 2)):
        pod = f"svc-{i:02d}-5d9f8c7b6-{j:05d}"
        node = NODE if j < (1 + (i % 4 == 0)) else f"node-{2 + j}"
        out[f"shop/{pod}"] = Endpoint(f"shop/{pod}", f"10.{i}.0.{j}", pod, f"u{i}-{j}", node,
                                      True, True, False)  # fmt: skip
    return out


def otlp_point(rng: random.Random) -> tuple[tuple[float, float, int], ...]:
    counts = [rng.randint(0, 3) for _ in OTLP_BUCKETS]
    bounds = (0.0, *OTLP_BUCKETS)
    return tuple((bounds[k], bounds[k + 1], c) for k, c in enumerate(counts[:-1]) if c)


def run(episodes_every: int | None) -> tuple[float, int, float]:
    rng = random.Random(1)
    c = Correlator(CorrelationSettings(), node=NODE)
    now = 1_800_000_000.0
    c.set_services(SERVICES)
    views = {ref: endpoints_of(i) for i, ref in enumerate(SERVICES)}
    for ref, view in views.items():
        c.endpoints_changed(ref, view)
    readings = [  # the local backing pods' containers, then other pods' up to 330
        Reading("shop", e.pod, name)
        for view in views.values()
        for e in view.values()
        if e.node == NODE
        for name in ("app", "proxy", "init")
    ]
    readings += [Reading("shop", f"pod-{p}", f"c{k}") for p in range(110) for k in range(3)]
    readings = readings[:330]
    points = [otlp_point(rng) for _ in range(64)]
    closed = 0
    cpu = 0.0
    episode_cpu = 0.0  # event handling, the ticks that changed an episode, its JSON
    for second in range(SECONDS):
        now += 1.0
        latency_scale = 1.0
        started = time.process_time()
        if episodes_every and second > 300 and second % episodes_every == 0:
            event_started = time.process_time()
            ref = SERVICES[second % len(SERVICES)]
            view = views[ref]
            old = next(iter(view))
            new_pod = f"{ref.name}-7c6b5a498-{second:05d}"
            gone = view.pop(old)
            view[f"shop/{new_pod}"] = replace(gone, identity=f"shop/{new_pod}", pod=new_pod,
                                              pod_uid=new_pod)  # fmt: skip
            c.endpoints_changed(ref, view)
            added, ready, removed = (
                EndpointEventKind.ADDED, EndpointEventKind.READY, EndpointEventKind.REMOVED
            )  # fmt: skip
            for kind, pod in ((added, new_pod), (ready, new_pod), (removed, gone.pod)):
                c.on_endpoint_event(EndpointEvent(kind, now, ref, f"shop/{pod}", pod, "", NODE))
            latency_scale = 5.0
            episode_cpu += time.process_time() - event_started
        for i, ref in enumerate(SERVICES):
            scale = latency_scale if c.state_of(ref.namespace, ref.name) != "steady" else 1.0
            c.record_latency(ref, Source.SERVICE_PROBE, 0.004 * scale * (1 + rng.random()), now)
            if i < 25 - 20 or i % 4 == 0:
                c.record_latency(ref, Source.ENDPOINT_PROBE, 0.003 * (1 + rng.random()), now)
        for k in range(1000):
            c.record_latency_ranges(SERVICES[k % 20], Source.CLIENT, points[k % 64])
        for r in readings:
            r.cpu_usage_seconds += 0.01
            r.cpu_periods += 10
        c.observe_resources(now, readings, {})
        tick_started = time.process_time()
        changes = c.tick(now)
        for ch in changes:
            if ch.kind is ChangeKind.CLOSED:
                closed += 1
                ch.episode.as_json()  # what the log line and /api/v1/episodes cost
        if changes:
            episode_cpu += time.process_time() - tick_started
        cpu += time.process_time() - started
    return cpu / SECONDS, closed, episode_cpu


def test_correlation_cost_steady_and_per_episode() -> None:
    steady_share, none, _ = run(None)
    busy_share, episodes, episode_cpu = run(episodes_every=7)
    assert none == 0 and episodes > 10
    print(
        f"\ncorrelation at the reference node: steady {steady_share * 100:.2f}% of a core; "
        f"with {episodes} episodes in {SECONDS - 300} s: {busy_share * 100:.2f}%; "
        f"one episode's own work (events, the ticks that open/close/recover it, its JSON): "
        f"{episode_cpu / episodes * 1000:.2f} ms CPU"
    )
