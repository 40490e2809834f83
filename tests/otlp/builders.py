"""OTLP metric requests built by hand, shaped like the SDKs' (for the cases a real SDK never
sends, and for the benchmark)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
# Semantic conventions' recommended boundaries for http.client.request.duration (seconds).
SEMCONV_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
T0 = 1_800_000_000 * 10**9  # a start time after any test's receiver started
WEB = {"server.address": "web.shop.svc.cluster.local", "server.port": 8080}

Attrs = Mapping[str, str | int | float | bool]


def attributes(attrs: Attrs) -> list[KeyValue]:
    out = []
    for key, value in attrs.items():
        if isinstance(value, bool):
            any_value = AnyValue(bool_value=value)
        elif isinstance(value, int):
            any_value = AnyValue(int_value=value)
        elif isinstance(value, float):
            any_value = AnyValue(double_value=value)
        else:
            any_value = AnyValue(string_value=value)
        out.append(KeyValue(key=key, value=any_value))
    return out


def explicit_point(
    counts: Sequence[int],
    *,
    bounds: Sequence[float] = SEMCONV_BOUNDS,
    total: float | None = None,
    count: int | None = None,
    start: int = T0,
    time: int = T0 + 10**9,
    attrs: Attrs = WEB,
    min_max: tuple[float, float] | None = None,
) -> HistogramDataPoint:
    point = HistogramDataPoint(
        attributes=attributes(attrs),
        start_time_unix_nano=start,
        time_unix_nano=time,
        count=sum(counts) if count is None else count,
        bucket_counts=list(counts),
        explicit_bounds=list(bounds),
    )
    if total is not None:
        point.sum = total
    if min_max is not None:
        point.min, point.max = min_max
    return point


def exponential_point(
    counts: Sequence[int],
    *,
    scale: int,
    offset: int,
    zero_count: int = 0,
    total: float,
    negative: Sequence[int] = (),
    start: int = T0,
    time: int = T0 + 10**9,
    attrs: Attrs = WEB,
) -> ExponentialHistogramDataPoint:
    point = ExponentialHistogramDataPoint(
        attributes=attributes(attrs),
        start_time_unix_nano=start,
        time_unix_nano=time,
        count=zero_count + sum(counts) + sum(negative),
        sum=total,
        scale=scale,
        zero_count=zero_count,
    )
    point.positive.offset = offset
    point.positive.bucket_counts.extend(counts)
    point.negative.bucket_counts.extend(negative)
    return point


def metric(
    points: Sequence[HistogramDataPoint | ExponentialHistogramDataPoint],
    *,
    name: str = "http.client.request.duration",
    unit: str = "s",
    temporality: int = CUMULATIVE,
) -> Metric:
    m = Metric(name=name, unit=unit)
    if points and isinstance(points[0], ExponentialHistogramDataPoint):
        m.exponential_histogram.CopyFrom(
            ExponentialHistogram(data_points=points, aggregation_temporality=temporality)
        )
    else:
        m.histogram.CopyFrom(Histogram(data_points=points, aggregation_temporality=temporality))
    return m


def request(*metrics: Metric, resource: Attrs | None = None) -> ExportMetricsServiceRequest:
    resource_attrs = {"service.name": "checkout", "service.instance.id": "pod-1"}
    resource_attrs.update(resource or {})
    return ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(
                resource=Resource(attributes=attributes(resource_attrs)),
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope(name="opentelemetry.instrumentation.httpx"),
                        metrics=list(metrics),
                    )
                ],
            )
        ]
    )
