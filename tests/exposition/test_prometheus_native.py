"""A real Prometheus (Debian's 2.42, --enable-feature=native-histograms) scrapes an
`Exposition` served on loopback: it negotiates the protobuf format, stores one series per
label set of a histogram family (a native histogram, the empty one too: no _bucket, _count
or _sum series), and its histogram_quantile over the native buckets is within 15% of the
exact quantile of the recorded values."""

from __future__ import annotations

import math
import random
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.catalogue import Family, FamilySnapshot, Kind
from exporter.core.histogram import LatencySeries
from exporter.exposition import PROTOBUF_CONTENT_TYPE, Exposition
from tests.exposition.serving import serving
from tests.exposition.test_exposition import PROTOBUF_ACCEPT
from tests.mixin.prometheus import Prometheus, running_prometheus, wait_until

LATENCY = Family("test_native_latency_seconds", Kind.HISTOGRAM, "Recorded latency.", ("service",))
RECORDED = Family("test_recorded_total", Kind.COUNTER, "Values recorded.", ("service",))
VALUES = 20_000


class Recorder:
    """A MetricSource of two latency series: `a` gets the values, `b` stays empty."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # a scrape does not read a series being recorded into
        self.series = {("a",): LatencySeries(), ("b",): LatencySeries()}

    def snapshot(self) -> list[FamilySnapshot]:
        return [
            FamilySnapshot(LATENCY, list(self.series.items())),
            FamilySnapshot(RECORDED, [(k, s.count) for k, s in self.series.items()]),
        ]


@pytest.fixture
def served() -> Iterator[tuple[Recorder, str, list[tuple[str, str]]]]:
    """The exposition of a Recorder on 127.0.0.1: (the recorder, host:port, the Accept
    header of each scrape with the content type of its answer)."""
    recorder = Recorder()
    exposition = Exposition([recorder])
    exchanges: list[tuple[str, str]] = []

    with serving(exposition, lock=recorder.lock, exchanges=exchanges) as address:
        yield recorder, address, exchanges


def scalar(prometheus: Prometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def count(prometheus: Prometheus, service: str) -> float | None:
    """The count of the latest native histogram of `service` (None: none stored)."""
    return scalar(prometheus, f'histogram_count({LATENCY.name}{{service="{service}"}})')


def test_prometheus_stores_one_native_histogram_per_label_set(
    served: tuple[Recorder, str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; make system-deps)")
    recorder, target, exchanges = served
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1m"},
        "scrape_configs": [{"job_name": "tailwatch", "static_configs": [{"targets": [target]}]}],
    }
    data = tmp_path / "prometheus"
    data.mkdir()
    with running_prometheus(data, config, native_histograms=True) as prometheus:
        # Both series scraped while empty: native histograms of count 0.
        for service in ("a", "b"):
            wait_until(
                lambda s=service: count(prometheus, s) == 0, f"empty native histogram {service}"
            )
        rng = random.Random(42)
        values = [rng.lognormvariate(-4.0, 0.8) for _ in range(VALUES)]
        with recorder.lock:
            for v in values:
                recorder.series[("a",)].record(v)
        wait_until(lambda: count(prometheus, "a") == VALUES, "the recorded values scraped")

        ordered = sorted(values)
        for q in (0.5, 0.99):
            exact = ordered[math.ceil(q * VALUES) - 1]
            expr = f'histogram_quantile({q}, rate({LATENCY.name}{{service="a"}}[1m]))'
            estimate = scalar(prometheus, expr)
            assert estimate is not None, expr
            assert abs(estimate - exact) <= 0.15 * exact, (q, estimate, exact)

        # One series per label set: no classic _bucket, _count or _sum series.
        found = prometheus.series(f'{{__name__=~"{LATENCY.name}.*"}}', 0, 4_102_444_800)
        assert sorted((s["__name__"], s["service"]) for s in found) == [
            (LATENCY.name, "a"), (LATENCY.name, "b")]  # fmt: skip
        assert scalar(prometheus, f'{RECORDED.name}{{service="a"}}') == VALUES
        (health,) = prometheus.targets()
        assert health["health"] == "up", health
        assert health["lastError"] == ""
    # What Prometheus 2.42 asks for with native histograms on, and what it got.
    assert {accept for accept, _ in exchanges} == {PROTOBUF_ACCEPT}
    assert {content_type for _, content_type in exchanges} == {PROTOBUF_CONTENT_TYPE}
