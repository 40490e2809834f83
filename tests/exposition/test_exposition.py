"""The fast /metrics renderer against prometheus_client's, on a fixed node state: a golden
file of the text (TAILWATCH_UPDATE_GOLDEN=1 rewrites it), the same families and samples as
`generate_latest` in both formats after every kind of change, content negotiation, gzip
bytes kept while nothing changes, series of gone pods gone, promtool clean."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.cgroups import CgroupCollector
from exporter.exposition import Exposition, negotiate, number
from tests.cgroups.cgroup_scenarios import FIXTURES, snapshots
from tests.exposition.node_state import ODD_REASON, NodeState

UPDATE = os.environ.get("TAILWATCH_UPDATE_GOLDEN") == "1"
GOLDEN = Path(__file__).parent / "golden"
SCENARIO = "v2-systemd-containerd"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_UNDERSCORES = OPENMETRICS + "; escaping=underscores"
# What Prometheus 2.x sends by default (it prefers OpenMetrics).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Families = dict[tuple[str, str, str], list[tuple[str, tuple[tuple[str, str], ...], float]]]


@pytest.fixture
def node() -> Iterator[NodeState]:
    state = NodeState(FIXTURES / SCENARIO, snapshots(SCENARIO), services=2, endpoints=2,
                      samples_per_series=40)  # fmt: skip
    yield state
    state.close()


def families(parsed: Iterable[Metric]) -> Families:
    """Every family with its type, help and samples: what a scraper reads."""
    return {
        (f.name, f.type, f.documentation): sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples
        )
        for f in parsed
    }


def assert_same_as_prometheus_client(exposition: Exposition) -> None:
    text, reference = exposition.render(), generate_latest(exposition.registry).decode()
    assert families(parse_text(text)) == families(parse_text(reference))
    assert text == reference  # in fact byte for byte
    om = exposition.render(openmetrics=True)
    om_reference = openmetrics_latest(exposition.registry).decode()  # type: ignore[no-untyped-call]
    assert families(parse_openmetrics(om)) == families(parse_openmetrics(om_reference))
    assert om == om_reference


def normalized(text: str) -> str:
    """The golden file must not change with the Python or tailwatch version."""
    return re.sub(r"tailwatch_build_info\{[^}]*\}", 'tailwatch_build_info{python="X",version="X"}',
                  text)  # fmt: skip


def test_golden_exposition(node: NodeState) -> None:
    """The whole /metrics catalogue on one page (OpenMetrics is checked against
    prometheus_client's encoder, byte for byte, below)."""
    golden = GOLDEN / "node.prom"
    text = normalized(node.exposition.render())
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), "run with TAILWATCH_UPDATE_GOLDEN=1 to create the golden file"
    assert text == golden.read_text(), (
        f"exposition differs from {golden}; if intended, rerun with TAILWATCH_UPDATE_GOLDEN=1"
    )


def test_same_families_and_samples_as_prometheus_client_through_changes(node: NodeState) -> None:
    ex = node.exposition
    assert_same_as_prometheus_client(ex)
    # Each kind of change the agent makes between scrapes; the cached parts must follow.
    node.probe_round(3)  # probe histograms move
    assert_same_as_prometheus_client(ex)
    node.state[node.refs[1]] = "disrupted"  # a new series appears
    node.probe_round(1, slow=True)
    node.client_round(2, slow=True)
    assert_same_as_prometheus_client(ex)
    node.sample()  # a new cgroup pass, same files: same samples reused
    assert_same_as_prometheus_client(ex)
    node.pods = node.pods[1:]  # a pass rendered ahead, from another thread, as the agent does
    node.sample()
    prepare = threading.Thread(target=ex.prepare_cgroups)
    prepare.start()
    prepare.join()
    assert_same_as_prometheus_client(ex)
    node.metrics.record(node.restart(node.pods[1], node.pods[1].containers[0].name, "Error"))
    node.outcomes["accepted"] += 100
    node.healths[0].events["MODIFIED"] = 1
    assert_same_as_prometheus_client(ex)
    node.remove_pod(node.pods[0].namespace, node.pods[0].name)
    assert_same_as_prometheus_client(ex)


class OpenMetricsFeatures(Collector):
    """Families the fast renderer leaves to prometheus_client's own encoders."""

    def collect(self) -> Iterator[Metric]:
        yield InfoMetricFamily("tailwatch_test_build", "Info.", value={"commit": "abc"})
        yield CounterMetricFamily("tailwatch_test_created", "With _created.", value=3, created=5)
        yield GaugeMetricFamily("tailwatch_test_temperature", "With a unit.", value=21.5,
                                unit="celsius")  # fmt: skip
        yield StateSetMetricFamily("tailwatch_test_state", "States.", value={"a": True, "b": False})
        yield GaugeHistogramMetricFamily(
            "tailwatch_test_queue",
            "Gauge histogram.",
            buckets=[("1.0", 4), ("+Inf", 5)],
            gsum_value=7,
        )
        summary = SummaryMetricFamily("tailwatch_test_summary", "Summary.", labels=["q"])
        summary.add_metric(["x"], count_value=4, sum_value=2.5)
        yield summary
        stamped = GaugeMetricFamily("tailwatch_test_stamped", "With a timestamp.", labels=["k"])
        stamped.add_metric(["v"], 1.0, timestamp=1_700_000_000.5)
        yield stamped


def test_any_collector_renders_as_prometheus_client_does() -> None:
    assert_same_as_prometheus_client(Exposition([OpenMetricsFeatures()]))


class CgroupsAndMore(CgroupCollector):
    def collect(self) -> Iterator[Metric]:
        yield from super().collect()
        yield GaugeMetricFamily("tailwatch_test_extra", "A family its renderer lacks.", value=1)


def test_a_family_missing_from_a_fast_renderer_is_still_served(
    node: NodeState, caplog: pytest.LogCaptureFixture
) -> None:
    """A family added to a collector and not to its fast renderer falls back to the
    collector's own collect(), with a warning, instead of going missing from /metrics."""
    ex = Exposition([CgroupsAndMore(node.sampler)])
    assert "tailwatch_test_extra 1.0\n" in ex.render()
    assert_same_as_prometheus_client(ex)
    assert "fast renderer out of date" in caplog.text


@given(
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 999_999, 10**6, 2**53 - 1, 2**53, 2**53 + 1, 10**16, True, -0.0])
)
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert number(value) == floatToGoString(value)


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", TEXT),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("application/openmetrics-text", OPENMETRICS),
        (PROMETHEUS_ACCEPT, OPENMETRICS_UNDERSCORES),
        ("application/openmetrics-text; version=1.0.0", OPENMETRICS_UNDERSCORES),
        (
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
            "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
        ),
        (
            "text/plain;version=1.0.0;escaping=underscores",
            "text/plain; version=1.0.0; charset=utf-8; escaping=underscores",
        ),
    ],
)
def test_negotiation_follows_prometheus_client(
    node: NodeState, accept: str, content_type: str
) -> None:
    answer = node.exposition.answer(accept)
    assert answer.content_type == content_type
    encoder, expected_type = negotiate(accept).encoder, negotiate(accept).content_type
    assert expected_type == content_type
    assert answer.body == encoder(node.exposition.registry)
    assert answer.body.decode().endswith("# EOF\n") == content_type.startswith("application/")


def test_escaping_schemes_only_prometheus_client_knows_are_left_to_it(node: NodeState) -> None:
    accept = "application/openmetrics-text;version=1.0.0;escaping=dots"
    answer = node.exposition.answer(accept, "gzip")
    assert "escaping=dots" in answer.content_type
    body = gzip.decompress(answer.body).decode()
    assert body == negotiate(accept).encoder(node.exposition.registry).decode()
    assert "tailwatch__pod__events" in body  # dots escaping doubles underscores


def test_gzip_is_the_same_content_and_kept_while_nothing_changes(node: NodeState) -> None:
    ex = node.exposition
    first = ex.answer(PROMETHEUS_ACCEPT, "gzip, deflate")
    assert first.gzipped
    assert gzip.decompress(first.body) == ex.answer(PROMETHEUS_ACCEPT).body
    again = ex.answer(PROMETHEUS_ACCEPT, "gzip")
    assert again.body is first.body  # served from the kept bytes, not compressed again
    plain = ex.answer("", "identity")
    assert not plain.gzipped
    assert plain.body is ex.answer("").body
    node.probe_round(1)
    moved = ex.answer(PROMETHEUS_ACCEPT, "gzip")
    assert moved.body != first.body
    assert gzip.decompress(moved.body) == openmetrics_latest(ex.registry)  # type: ignore[no-untyped-call]


def test_series_of_a_gone_pod_leave_and_new_events_show(node: NodeState) -> None:
    ex = node.exposition
    gone = node.pods[0]
    before = ex.render()
    assert f'pod="{gone.name}"' in before
    assert ODD_REASON.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") in before
    survivor = node.pods[1]
    restart = node.restart(survivor, survivor.containers[0].name, "OOMKilled")
    node.metrics.record(restart)
    node.remove_pod(gone.namespace, gone.name)
    after = ex.render()
    # Its containers, its pod_info, its restarts and its endpoint's probe series are gone.
    assert f'pod="{gone.name}"' not in after
    assert (
        "tailwatch_container_restarts_total{container="
        f'"{survivor.containers[0].name}",namespace="{survivor.namespace}",'
        f'pod="{survivor.name}",reason="OOMKilled"}} 1.0'
    ) in after
    assert_same_as_prometheus_client(ex)


def test_exposition_passes_promtool(node: NodeState) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; make system-deps)")
    run = subprocess.run([promtool, "check", "metrics"], input=node.exposition.answer().body,
                         capture_output=True, timeout=30, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    assert run.stdout.decode().strip() == ""  # no lint remarks either
