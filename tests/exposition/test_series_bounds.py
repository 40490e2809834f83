"""--series-limit: a family at the limit gets no new label set (its existing ones count on);
each refused update is counted in tailwatch_dropped_total{reason="series_limit"} and logged
once per family. What the per-module caps drop (OTLP streams) is in tailwatch_dropped_total
too."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from exporter.catalogue import CLIENT_DURATION, POD_EVENTS, POD_STARTUP
from exporter.core.events import LifecycleEvent, PodEventKind, Workload
from exporter.core.services import ServiceRef
from exporter.exposition import Exposition
from exporter.metrics import (
    AgentMetrics,
    AgentSource,
    ClientLatency,
    ClientLatencySource,
    SeriesLimit,
)
from exporter.otlp.points import IngestLimits
from tests.agent.conftest import idle_agent
from tests.otlp.builders import explicit_point, metric, request

LIMIT = 3


def event(
    workload: str, kind: PodEventKind = PodEventKind.SCHEDULED, **kw: object
) -> LifecycleEvent:
    fields: dict[str, object] = {
        "kind": kind,
        "at": 0.0,
        "namespace": "default",
        "pod": f"{workload}-0",
        "uid": f"uid-{workload}",
        "workload": Workload("Job", workload),
        "node": "node-a",
        "revision": "",
        **kw,
    }
    return LifecycleEvent(**fields)  # type: ignore[arg-type]


def samples(exposition: Exposition, name: str) -> list[str]:
    return [line for line in exposition.render().splitlines() if line.startswith(name)]


def limit_warnings(caplog: pytest.LogCaptureFixture, family: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage().startswith(f"{family} has")
    ]


def test_a_family_at_the_limit_gets_no_new_label_sets(caplog: pytest.LogCaptureFixture) -> None:
    metrics = AgentMetrics(series_limit=LIMIT, series_ttl=60, clock=lambda: 0.0)
    exposition = Exposition([AgentSource(metrics, pods=list, watches=list)])
    for round_ in range(2):
        for i in range(5):
            metrics.record(event(f"job-{i}"))
            metrics.record(event(f"job-{i}", PodEventKind.READY, duration_seconds=1.0 + round_))
    # The first LIMIT workloads have their series, counting every update.
    assert sorted(k[2] for k in metrics.pod_events) == ["job-0", "job-0", "job-1"]
    assert metrics.pod_events[("default", "Job", "job-0", "scheduled", "", "job")] == 2
    assert sorted(k[2] for k in metrics.startup) == ["job-0", "job-1", "job-2"]
    assert metrics.startup[("default", "Job", "job-2", "job")].count == 2
    # Refused: 7 pod event updates per round, 2 startup observations per round.
    refused = 2 * 7 + 2 * 2
    assert metrics.dropped == {"series_limit": refused}
    assert len(samples(exposition, "tailwatch_pod_events_total")) == LIMIT
    assert samples(exposition, "tailwatch_dropped_total") == [
        f'tailwatch_dropped_total{{reason="series_limit"}} {refused}.0'
    ]
    # Logged once per family, naming it.
    assert len(limit_warnings(caplog, POD_EVENTS.name)) == 1
    assert len(limit_warnings(caplog, POD_STARTUP.name)) == 1

    # Series that go (a workload's TTL, a pod's) make room for new label sets.
    metrics.forget_workload(("default", "Job", "job-0"))
    metrics.record(event("job-4"))
    assert ("default", "Job", "job-4", "scheduled", "", "job") in metrics.pod_events


def test_restart_series_are_limited_too() -> None:
    metrics = AgentMetrics(series_limit=2)
    for i in range(4):
        metrics.record(
            event("api", PodEventKind.CONTAINER_RESTART, container=f"c{i}", reason="Error")
        )
    assert len(metrics.restarts) == 2 and len(metrics.pod_events) == 1
    assert metrics.dropped == {"series_limit": 2}
    # A pod that goes frees its restart series.
    metrics.forget_pod("default", "api-0")
    assert metrics.restarts == {}


def test_client_latency_is_limited_per_family(caplog: pytest.LogCaptureFixture) -> None:
    dropped: list[str] = []
    latency = ClientLatency(slo_of=lambda ref: 0.1, limit=SeriesLimit(2, dropped.append))
    for name in ("a", "b", "c", "d"):
        latency.record(ServiceRef("shop", name), [(0.01, 0.025, 1)], 0.02)
    latency.record(ServiceRef("shop", "a"), [(0.01, 0.025, 1)], 0.02)
    assert sorted(k[1] for k in latency.series) == ["a", "b"]
    assert latency.series[("shop", "a", "steady")].count == 2
    assert dropped == ["series_limit"] * 2
    text = Exposition([ClientLatencySource(latency)]).render()
    assert 'service="c"' not in text and 'service="a"' in text
    assert len(limit_warnings(caplog, CLIENT_DURATION.name)) == 1


def test_otlp_stream_cap_drops_are_in_dropped_total(tmp_path: Path) -> None:
    agent = idle_agent(tmp_path)
    ingest = agent.otlp.ingest
    ingest.limits = IngestLimits(max_streams_per_service=2)
    ingest.resolve = lambda host, port: ServiceRef("shop", "web")
    points = [
        explicit_point([0, 1] + [0] * 13, total=0.01, attrs={"server.address": "web.shop", "i": i})
        for i in range(5)
    ]
    ingest.ingest(request(metric(points)), now=0)
    text = agent.exposition.render()
    assert 'tailwatch_otlp_datapoints_total{outcome="over_limit"} 3.0' in text
    assert 'tailwatch_dropped_total{reason="otlp_stream_limit"} 3.0' in text
