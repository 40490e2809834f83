"""Exemplars of the client latency histogram on /metrics: on the bucket line their value
falls in, in OpenMetrics only, byte for byte as prometheus_client writes the same exemplars;
none in the text format 0.0.4; in the protobuf format as the native histogram's exemplars,
which the reference decoder reads back. A series whose exemplar changed is rendered again.
And a real Prometheus (Debian's, --enable-feature=exemplar-storage) scraping the exposition
of an OTLP point's exemplar stores it: /api/v1/query_exemplars gives the trace id back."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)

from exporter.catalogue import CLIENT_DURATION, PROBE_DURATION
from exporter.core.histogram import Exemplar, ExemplarSeries, LatencySeries
from exporter.core.services import ServiceRef
from exporter.exposition import Exposition
from exporter.metrics import ClientLatency, ClientLatencySource
from exporter.otlp.points import HistogramIngest
from tests.exposition.serving import serving
from tests.exposition.test_exposition import Table, assert_same_as_prometheus_client
from tests.exposition.test_protobuf import assert_native, decoded
from tests.mixin.prometheus import running_prometheus, wait_until
from tests.otlp.builders import DELTA, SEMCONV_BOUNDS, explicit_point, metric, request
from tests.otlp.test_exemplars import exemplar

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
T = 1_733_212_345_123_000_000  # 2024-12-03T07:52:25.123Z
CHECKOUT = ("shop", "checkout", "steady")
BUCKET = "tailwatch_client_request_duration_seconds_bucket"


def client_table() -> tuple[Table, ExemplarSeries]:
    """The client latency family with one series that has exemplars and one that has none,
    beside a probe histogram (whose series never have any)."""
    table = Table([CLIENT_DURATION, PROBE_DURATION])
    series = ExemplarSeries.of_service(0.1)
    series.record_ranges([(0.05, 0.075, 40), (0.25, 0.5, 2)], 3.1)
    series.add_exemplars([Exemplar(0.0731, TRACE, SPAN, T), Exemplar(0.3, "ab" * 16, "", T)])
    quiet = ExemplarSeries.of_service(None)
    quiet.record(0.02, 5)
    table[CLIENT_DURATION].update({CHECKOUT: series, ("shop", "cart", "steady"): quiet})
    probe = LatencySeries.of_service(0.1)
    probe.record(0.01)
    table[PROBE_DURATION][("shop", "checkout", "127.0.0.1:8080", "", "steady")] = probe
    return table, series


def bucket_lines(text: str, service: str = "checkout") -> dict[str, str]:
    """`le` -> the rest of the line after the sample value, of one series' bucket lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith(BUCKET) and f'service="{service}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = line.split("} ", 1)[1].split(" ", 1)[1] if " # " in line else ""
    return out


def test_openmetrics_writes_each_exemplar_on_its_bucket_line() -> None:
    table, _ = client_table()
    ex = Exposition([table])
    assert_same_as_prometheus_client(ex)  # OpenMetrics with exemplars, 0.0.4 without
    om = ex.render(openmetrics=True)
    line = f'{BUCKET}{{le="0.1",namespace="shop",service="checkout",state="steady"}} 40.0'
    assert f'{line} # {{span_id="{SPAN}",trace_id="{TRACE}"}} 0.0731 1733212345.123000000\n' in om
    lines = bucket_lines(om)
    # A value on a bound is in that bucket (le: less or equal); without a span, no span_id.
    assert lines["0.3"] == f'# {{trace_id="{"ab" * 16}"}} 0.3 1733212345.123000000'
    assert [le for le, rest in lines.items() if rest] == ["0.1", "0.3"]
    assert not any(bucket_lines(om, "cart").values())  # a series without exemplars
    assert " # " not in ex.render()  # the text format 0.0.4 has no exemplars
    assert "trace_id" not in om.split("tailwatch_probe_duration_seconds", 1)[1]
    # A scraper's OpenMetrics parser reads them back, on the right bucket.
    family = next(f for f in parse_openmetrics(om) if f.name == CLIENT_DURATION.name)
    exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.exemplar}
    assert exemplars["0.1"].labels == {"trace_id": TRACE, "span_id": SPAN}
    assert exemplars["0.1"].value == 0.0731
    assert float(exemplars["0.1"].timestamp) == 1733212345.123


def test_a_new_exemplar_renders_its_series_again() -> None:
    """The exposition keeps a series' lines while its version is the same: a newer
    exemplar in a bucket (with or without new values) changes it."""
    table, series = client_table()
    ex = Exposition([table])
    before = ex.render(openmetrics=True)
    series.add_exemplars([Exemplar(0.08, "cd" * 16, SPAN, T + 10**9)])  # no new values
    assert_same_as_prometheus_client(ex)
    after = ex.render(openmetrics=True)
    assert bucket_lines(after)["0.1"] == (
        f'# {{span_id="{SPAN}",trace_id="{"cd" * 16}"}} 0.08 1733212346.123000000'
    )
    assert bucket_lines(after)["0.3"] == bucket_lines(before)["0.3"]
    series.add_exemplars([Exemplar(0.09, "ef" * 16, SPAN, T)])  # older than the bucket's
    assert bucket_lines(ex.render(openmetrics=True)) == bucket_lines(after)
    series.record(0.2)  # new values, same exemplars
    assert_same_as_prometheus_client(ex)
    assert bucket_lines(ex.render(openmetrics=True))["0.1"] == bucket_lines(after)["0.1"]


def label_pairs(exemplar: Any) -> dict[str, str]:
    return {pair.name: pair.value for pair in exemplar.label}


def test_protobuf_carries_them_as_the_native_histograms_exemplars() -> None:
    table, series = client_table()
    ex = Exposition([table])
    families = {f.name: f for f in decoded(ex.render_protobuf())}  # same bytes as reference
    metrics = {
        tuple(p.value for p in m.label): m.histogram for m in families[CLIENT_DURATION.name].metric
    }
    h = metrics[("shop", "checkout", "steady")]
    assert_native(h, series)  # still only a native histogram
    got = [(label_pairs(e), e.value, e.timestamp.seconds, e.timestamp.nanos) for e in h.exemplars]
    assert got == [
        ({"span_id": SPAN, "trace_id": TRACE}, 0.0731, 1733212345, 123_000_000),
        ({"trace_id": "ab" * 16}, 0.3, 1733212345, 123_000_000),
    ]
    assert not metrics[("shop", "cart", "steady")].exemplars
    probe = families[PROBE_DURATION.name].metric[0].histogram
    assert not probe.exemplars
    series.add_exemplars([Exemplar(0.3, "cd" * 16, "", T + 1)])  # a newer one: encoded again
    again = {f.name: f for f in decoded(ex.render_protobuf())}[CLIENT_DURATION.name]
    newest = [e for m in again.metric for e in m.histogram.exemplars]
    assert [label_pairs(e)["trace_id"] for e in newest] == [TRACE, "cd" * 16]
    assert newest[1].timestamp.nanos == 123_000_001


def test_a_real_prometheus_stores_the_exemplar(tmp_path: Path) -> None:
    """An OTLP point with an exemplar, ingested and recorded as the agent does, then scraped
    by Prometheus (which asks for OpenMetrics): the exemplar is stored on the bucket series
    of its value, with its trace and span ids, value and time (to the millisecond)."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; make system-deps)")
    web = ServiceRef("shop", "web")
    ingest = HistogramIngest(lambda host, port: web, started_unix_nano=0)
    now = time.time_ns()
    counts = [0] * (len(SEMCONV_BOUNDS) + 1)
    counts[5] = 3  # (0.075, 0.1]
    point = explicit_point(counts, total=0.25, start=now - 10**9, time=now)
    point.exemplars.append(exemplar(0.0831, time=now - 10**6))
    latency = ClientLatency(slo_of=lambda ref: None)
    for delta in ingest.ingest(request(metric([point], temporality=DELTA)), 1.0).merged():
        latency.record(delta.service, delta.buckets, delta.sum_seconds, delta.exemplars)
    exchanges: list[tuple[str, str]] = []
    with serving(Exposition([ClientLatencySource(latency)]), exchanges=exchanges) as address:
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "tailwatch", "static_configs": [{"targets": [address]}]}
            ],
        }
        with running_prometheus(tmp_path, config, features=("exemplar-storage",)) as prometheus:
            found = wait_until(
                lambda: prometheus.exemplars(BUCKET, now / 1e9 - 60, now / 1e9 + 60),
                "the exemplar stored",
                30,
            )
    (series,) = found
    assert series["seriesLabels"]["le"] == "0.1"  # the agent's layout: ..., 0.07, 0.1, ...
    assert series["seriesLabels"]["service"] == "web"
    (stored,) = series["exemplars"]
    assert stored["labels"] == {"trace_id": TRACE, "span_id": SPAN}
    assert float(stored["value"]) == 0.0831
    assert stored["timestamp"] == pytest.approx((now - 10**6) / 1e9, abs=1e-3)
    assert {t.split(";")[0] for _, t in exchanges} == {"application/openmetrics-text"}
