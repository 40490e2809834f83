"""Names and labels as the ecosystem has them: workload_type beside workload_kind (as
kubernetes-mixin's recording rules name it), the watches' last event as a unix timestamp
(as kube-state-metrics' timestamps), the commit on tailwatch_build_info (as
prometheus_build_info), read from /metrics as Prometheus reads it."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.events import LifecycleEvent, PodEventKind, Workload, workload_type
from exporter.exposition import Exposition
from exporter.kube.watching import WatchHealth
from exporter.metrics import REVISION_ENV, AgentMetrics, AgentSource


def samples(exposition: Exposition, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition.render())
        for s in family.samples
        if s.name == name
    }


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("Deployment", "deployment"),
        ("StatefulSet", "statefulset"),
        ("DaemonSet", "daemonset"),
        ("ReplicaSet", "replicaset"),
        ("Job", "job"),
        ("CronJob", "cronjob"),
        ("Pod", "barepod"),  # no controller: kubernetes-mixin's bare pod
        ("Node", "staticpod"),  # a static pod, owned by its Node
        ("Rollout", "rollout"),  # any other controller, lower-cased
    ],
)
def test_workload_type_is_kubernetes_mixins(kind: str, expected: str) -> None:
    assert workload_type(kind) == expected == Workload(kind, "x").type


def test_every_workload_series_has_its_workload_type() -> None:
    metrics = AgentMetrics()
    for kind, name in (("Deployment", "web"), ("Pod", "debug"), ("StatefulSet", "db")):
        workload = Workload(kind, name)
        metrics.record(
            LifecycleEvent(
                PodEventKind.READY, 0.0, "shop", f"{name}-0", "uid", workload, duration_seconds=2.0
            )
        )
    exposition = Exposition([AgentSource(metrics, pods=list, watches=list)])
    for family in ("tailwatch_pod_events_total", "tailwatch_pod_startup_seconds_count"):
        got = {
            (labels["workload_kind"], labels["workload_type"])
            for labels in map(dict, samples(exposition, family))
        }
        assert got == {
            ("Deployment", "deployment"),
            ("Pod", "barepod"),
            ("StatefulSet", "statefulset"),
        }, family
    # Forgetting a workload takes its typed series with it.
    metrics.forget_workload(("shop", "Deployment", "web"))
    assert len(samples(exposition, "tailwatch_pod_startup_seconds_count")) == 2


def test_the_watches_last_event_is_a_unix_timestamp() -> None:
    """Made from the monotonic time of the event and one wall clock reading: a dashboard
    shows its age as time() - x, and the value does not move between scrapes."""
    healths = [WatchHealth("pods", last_event_at=100.0), WatchHealth("services")]
    now = {"mono": 130.0, "wall": 1_800_000_030.0}
    source = AgentSource(
        AgentMetrics(),
        pods=list,
        watches=lambda: healths,
        clock=lambda: now["mono"],
        wall_clock=lambda: now["wall"],
    )
    exposition = Exposition([source])
    name = "tailwatch_watch_last_event_timestamp_seconds"
    assert samples(exposition, name) == {(("resource", "pods"),): 1_800_000_000.0}
    now["mono"] += 15
    now["wall"] += 15
    assert samples(exposition, name) == {(("resource", "pods"),): 1_800_000_000.0}


def test_build_info_carries_the_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)

    def revision() -> str:
        exposition = Exposition([AgentSource(AgentMetrics(), pods=list, watches=list)])
        ((labels, value),) = samples(exposition, "tailwatch_build_info").items()
        assert value == 1 and {k for k, _ in labels} == {"version", "revision", "python"}
        return dict(labels)["revision"]

    assert revision() == "unknown"
    monkeypatch.setenv(REVISION_ENV, "3f2c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b")
    assert revision() == "3f2c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
