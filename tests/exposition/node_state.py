"""A node's metric state, deterministic, held by the agent's own metric sources as agent.py
wires them: for the exposition tests (a fixture cgroup tree, a few Services) and the
benchmarks (the reference node of docs/design.md, *Reference load and budgets*: 110 pods,
330 containers, 20 Services).

Everything the sources read is set through the same objects the agent updates (the
metrics tables, the prober's ledger, the client latency series, a cgroup sampler over a
real tree), with fixed clocks and seeded latencies, so two builds render the same text.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from exporter.catalogue import EPISODE_P99_RATIO, EPISODE_RECOVERY, MetricSource
from exporter.cgroups import CgroupSampler, CgroupSource
from exporter.core.buckets import FixedBuckets
from exporter.core.correlation import Correlator
from exporter.core.endpoints import EndpointCounts
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT
from exporter.core.pods import PodSnapshot
from exporter.core.probing import FailureReason, ProbeLedger, ProbeTarget
from exporter.core.services import ServiceRef
from exporter.exposition import Exposition
from exporter.kube.watching import WatchHealth
from exporter.metrics import (
    AgentMetrics,
    AgentSource,
    ClientLatency,
    ClientLatencySource,
    EpisodeMetrics,
    ServiceSource,
)
from exporter.otlp import OtlpSource
from exporter.probe import ProbeSource
from exporter.process import ProcessSource

T0 = 1_790_000_000.0  # wall clock of the state (2026-09-21)
MONOTONIC = 5_000.0  # the agent's monotonic clock at the scrape
WALL = T0 + 60.0  # the wall clock at the scrape
SLO = 0.05
# A termination reason needing every escape of the exposition format.
ODD_REASON = 'Error: exit "1" in C:\\app\nretrying'
STATES = ("steady", "disrupted", "recovering")
#: A fixture /proc of an agent an hour after its start: its process_* families read from it
#: with a fixed page size and clock tick, the same on every machine.
PROC = Path(__file__).parents[1] / "fixtures" / "proc"


def _pass_timer() -> Iterator[float]:
    """A sampler timer under which every pass takes 2.1 ms."""
    for n in itertools.count():
        yield n * 0.0021
        yield n * 0.0021 + 0.0021


class NodeState:
    """The collectors of one agent over `pods` (mutable: a test removes pods from it) and
    `services` opted-in Services, each probed at its ClusterIP and at `endpoints_per_service`
    local endpoints, with client latency in every state."""

    def __init__(
        self,
        cgroup_root: Path,
        pods: Sequence[PodSnapshot],
        *,
        services: int,
        endpoints: int,
        samples_per_series: int = 200,
        seed: int = 7,
        classic_layout: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT,
    ) -> None:
        self.rng = random.Random(seed)
        self.pods = list(pods)
        self.refs = [ServiceRef("shop", f"svc-{i:02d}") for i in range(services)]
        self.metrics = AgentMetrics()
        self.sampler = CgroupSampler(
            cgroup_root, lambda: tuple(self.pods), timer=_pass_timer().__next__
        )
        self.state = dict.fromkeys(self.refs, "steady")
        self.ledger = ProbeLedger(
            state_of=lambda ns, svc: self.state[ServiceRef(ns, svc)], classic_layout=classic_layout
        )
        self.client = ClientLatency(
            slo_of=lambda ref: SLO,
            state_of=lambda ns, svc: self.state[ServiceRef(ns, svc)],
            classic_layout=classic_layout,
        )
        self.outcomes = {"accepted": 120_000, "unmapped": 12, "malformed": 1}
        self.healths = [
            WatchHealth("pods", synced=True, events={"ADDED": len(pods), "BOOKMARK": 9},
                        last_event_at=MONOTONIC - 2.5),
            WatchHealth("services", synced=True, events={"ADDED": services},
                        restarts={"closed": 2}, last_event_at=MONOTONIC - 40.0),
            WatchHealth("endpointslices", synced=True, events={"ADDED": services,
                        "MODIFIED": 31}, restarts={"gone": 1}, last_event_at=MONOTONIC - 0.25),
        ]  # fmt: skip
        self.episodes = EpisodeMetrics()
        self.correlator = Correlator(node="node-a")
        self.correlator.set_services(self.refs)
        self.targets = [
            ProbeTarget("shop", ref.name, "service", "", f"127.96.0.{i + 10}", 8080, "http",
                        "/healthz", slo=SLO)
            for i, ref in enumerate(self.refs)
        ] + [
            ProbeTarget("shop", self.refs[i % services].name, "endpoint",
                        self.pods[i % len(self.pods)].name, f"127.244.1.{i + 10}", 8080, "http",
                        "/healthz", slo=SLO)
            for i in range(endpoints)
        ]  # fmt: skip
        self.ledger.set_targets(self.targets)
        self.cgroup_source = CgroupSource(self.sampler)
        # In the agent's order (exporter/agent.py).
        self.sources: list[MetricSource] = [
            AgentSource(
                self.metrics,
                pods=lambda: self.pods,
                watches=lambda: self.healths,
                endpoints=self.endpoint_counts,
                extra_dropped=[self.sampler.dropped, lambda: {"otlp_body_too_large": 1}],
                clock=lambda: MONOTONIC,
                wall_clock=lambda: WALL,
            ),
            ClientLatencySource(self.client),
            self.cgroup_source,
            OtlpSource(lambda: self.outcomes),
            ProbeSource(self.ledger),
            ServiceSource(self.episodes, self.correlator, self.slos),
            ProcessSource(PROC, pagesize=4096, ticks=100),
        ]
        self.exposition = Exposition(self.sources)
        self._fill(samples_per_series)
        self.sample()

    def slos(self) -> dict[ServiceRef, float]:
        return dict.fromkeys(self.refs, SLO)

    def endpoint_counts(self) -> dict[ServiceRef, EndpointCounts]:
        return {ref: EndpointCounts(ready=12, serving=13, terminating=i % 2)
                for i, ref in enumerate(self.refs)}  # fmt: skip

    def _fill(self, samples_per_series: int) -> None:
        """Latency in every state, failures, lifecycle events and closed episodes."""
        for n, state in enumerate(STATES):
            # Every Service is steady; every third has been disrupted, then recovering.
            for i, ref in enumerate(self.refs):
                self.state[ref] = state if n == 0 or i % 3 == 0 else "steady"
            count = samples_per_series if n == 0 else samples_per_series // 4
            self.probe_round(count, slow=n == 1)
            self.client_round(count // 10, slow=n == 1)
        for ref in self.refs:
            self.state[ref] = "steady"
        for i, target in enumerate(self.targets[:4]):
            reason = (FailureReason.TIMEOUT, FailureReason.REFUSED)[i % 2]
            self.ledger.record(target, 0, 5.0, reason, at=T0)
        for i, pod in enumerate(self.pods[:6]):
            event = LifecycleEvent(PodEventKind.READY, T0, pod.namespace, pod.name, pod.uid,
                                   pod.workload, duration_seconds=1.5 + i * 7.0)  # fmt: skip
            self.metrics.record(event)
        first = self.pods[0]
        for reason in ("OOMKilled", "OOMKilled", "Error", ODD_REASON):
            container = first.containers[0].name if first.containers else "app"
            self.metrics.record(self.restart(first, container, reason))
        for ref in self.refs[:3]:
            key = (ref.namespace, ref.name, "rollout")
            self.episodes.episodes[(*key, "degraded")] = 2
            self.episodes.p99_ratio[key] = FixedBuckets.empty(EPISODE_P99_RATIO.buckets).observe(
                3.4
            )
            self.episodes.recovery[key] = FixedBuckets.empty(EPISODE_RECOVERY.buckets).observe(42)

    @staticmethod
    def restart(pod: PodSnapshot, container: str, reason: str) -> LifecycleEvent:
        return LifecycleEvent(
            PodEventKind.CONTAINER_RESTART,
            T0,
            pod.namespace,
            pod.name,
            pod.uid,
            pod.workload,
            reason=reason,
            container=container,
        )

    def probe_round(self, per_target: int = 1, *, slow: bool = False) -> None:
        """`per_target` probe results for every target, lognormal around 4 ms (40 ms if
        `slow`)."""
        mu = -3.2 if slow else -5.5
        for target in self.targets:
            for _ in range(per_target):
                self.ledger.record(target, 0, self.rng.lognormvariate(mu, 0.6), None, at=T0)
        self.ledger.lag.record(0.0004 * per_target)

    def client_round(self, points: int = 1, *, slow: bool = False) -> None:
        """`points` OTLP delta points per Service, 15 buckets of the semantic conventions."""
        bounds = (0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
        for ref in self.refs:
            for _ in range(points):
                counts = [self.rng.randint(0, 9 if slow and i > 3 else 20) for i in range(9)]
                ranges = [(lo, hi, n) for lo, hi, n in zip(bounds, bounds[1:], counts,
                                                              strict=False)]  # fmt: skip
                self.client.record(ref, ranges, sum(n * hi for _, hi, n in ranges) * 0.6)

    def sample(self) -> None:
        """One cgroup sampling pass."""
        self.sampler.sample(T0)

    def remove_pod(self, namespace: str, name: str) -> None:
        """A pod left the node, as the agent sees it: gone from the tracker, its restart
        series forgotten, its endpoint targets dropped, and the next sampling pass."""
        self.pods = [p for p in self.pods if (p.namespace, p.name) != (namespace, name)]
        self.metrics.forget_pod(namespace, name)
        self.targets = [t for t in self.targets if t.pod != name]
        self.ledger.set_targets(self.targets)
        self.sample()

    def close(self) -> None:
        self.sampler.close()
