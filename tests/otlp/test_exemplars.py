"""Exemplars of OTLP histogram points: read only for the points that carry some, kept when
they have a trace id, in seconds, carried through the deltas to the client latency
series, which keeps the latest per classic bucket; OTLP/JSON's hex ids read as hex."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar as OtlpExemplar

from exporter.core.histogram import Exemplar, ExemplarSeries
from exporter.core.services import ServiceRef
from exporter.metrics import ClientLatency
from exporter.otlp.decode import Encoding, decode_request, to_wire
from exporter.otlp.points import MAX_EXEMPLARS_PER_POINT, HistogramIngest, Outcome
from tests.otlp.builders import (
    DELTA,
    SEMCONV_BOUNDS,
    T0,
    WEB,
    explicit_point,
    exponential_point,
    metric,
    request,
)

WEB_REF = ServiceRef("shop", "web")
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
S = 10**9


def resolve(host: str, port: int | None) -> ServiceRef | None:
    return WEB_REF if host == "web.shop" else None


def ingest() -> HistogramIngest:
    return HistogramIngest(resolve, started_unix_nano=T0 - S)


def exemplar(value: float | int, trace: bytes = TRACE, span: bytes = SPAN, time: int = T0 + S,
             ) -> OtlpExemplar:  # fmt: skip
    e = OtlpExemplar(trace_id=trace, span_id=span, time_unix_nano=time)
    if isinstance(value, int):
        e.as_int = value
    else:
        e.as_double = value
    return e


def counts(**by_bucket: int) -> list[int]:
    out = [0] * (len(SEMCONV_BOUNDS) + 1)
    for index, n in by_bucket.items():
        out[int(index.removeprefix("b"))] = n
    return out


def test_exemplars_with_a_trace_id_reach_the_delta_in_seconds() -> None:
    point = explicit_point(counts(b4=2, b6=1), total=0.3)
    point.exemplars.extend([
        exemplar(0.0731),
        exemplar(0.2, span=b"", time=0),  # no span id; no time: the point's
        exemplar(0.05, trace=b""),  # no trace id: links to nothing
        exemplar(0.05, trace=bytes(16)),  # the invalid all-zero trace id
        OtlpExemplar(trace_id=TRACE, time_unix_nano=T0),  # no value
    ])  # fmt: skip
    result = ingest().ingest(request(metric([point], temporality=DELTA)), 1.0)
    assert result.outcomes[Outcome.ACCEPTED] == 1
    (delta,) = result.merged()
    assert delta.exemplars == (
        Exemplar(0.0731, TRACE.hex(), SPAN.hex(), T0 + S),
        Exemplar(0.2, TRACE.hex(), "", T0 + S),
    )


def test_milliseconds_and_integer_values_and_exponential_points() -> None:
    explicit = explicit_point(counts(b5=1), bounds=[b * 1000 for b in SEMCONV_BOUNDS], total=80)
    explicit.exemplars.append(exemplar(80))  # as_int, in ms
    expo = exponential_point([1], scale=3, offset=-30, total=0.07,
                             attrs={"server.address": "web.shop", "route": "/b"})  # fmt: skip
    expo.exemplars.append(exemplar(0.07, time=T0 + 2 * S))
    ms = metric([explicit], unit="ms", temporality=DELTA)
    s = metric([expo], temporality=DELTA)
    result = ingest().ingest(request(ms, s), 1.0)
    assert result.rejected == 0
    found = sorted(e for d in result.merged() for e in d.exemplars)
    assert found == [Exemplar(0.07, TRACE.hex(), SPAN.hex(), T0 + 2 * S),
                     Exemplar(0.08, TRACE.hex(), SPAN.hex(), T0 + S)]  # fmt: skip


def test_merged_streams_keep_every_exemplar() -> None:
    points = []
    for n, route in enumerate(("/a", "/b", "/c")):
        point = explicit_point(counts(b3=1), total=0.02, attrs={**WEB, "route": route})
        if route != "/b":
            point.exemplars.append(exemplar(0.02, time=T0 + n))
        points.append(point)
    result = ingest().ingest(request(metric(points, temporality=DELTA)), 1.0)
    (delta,) = result.merged()  # one per Service, the points' counts added
    assert delta.count == 3
    assert [e.time_unix_nano for e in delta.exemplars] == [T0, T0 + 2]


def test_cumulative_streams_carry_the_exemplars_of_new_values_only() -> None:
    """The first point of a stream older than the agent only sets the baseline: neither its
    values nor its exemplars count; the next one's do."""
    first = explicit_point(counts(b3=5), total=0.1, start=T0 - 10 * S)
    first.exemplars.append(exemplar(0.02))
    receiver = ingest()
    assert not receiver.ingest(request(metric([first])), 1.0).pieces
    second = explicit_point(counts(b3=6), total=0.12, start=T0 - 10 * S, time=T0 + 2 * S)
    second.exemplars.append(exemplar(0.021, time=T0 + 2 * S))
    (delta,) = receiver.ingest(request(metric([second])), 2.0).merged()
    assert [e.value for e in delta.exemplars] == [0.021]


def test_exemplar_bytes_that_are_not_an_exemplar_reject_the_point() -> None:
    """A `WireRequest` leaves exemplars unread: bytes that turn out invalid make that point
    malformed (the rest of the request is taken), as a whole-request parse would have."""
    good = explicit_point(counts(b3=1), total=0.02, attrs={**WEB, "route": "/ok"})
    bad = explicit_point(counts(b3=1), total=0.02, attrs={**WEB, "route": "/bad"})
    wire = to_wire(request(metric([good, bad], temporality=DELTA)))
    wire.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[1].exemplars.append(
        b"\x0a\xff"
    )
    result = ingest().ingest(wire, 1.0)
    assert result.outcomes[Outcome.ACCEPTED] == 1
    assert result.outcomes[Outcome.MALFORMED] == 1
    assert "exemplars are not valid" in result.error_message()


def test_a_point_with_very_many_exemplars_is_read_up_to_the_cap() -> None:
    point = explicit_point(counts(b3=1), total=0.02)
    point.exemplars.extend(exemplar(0.02, time=T0 + n) for n in range(200))
    (delta,) = ingest().ingest(request(metric([point], temporality=DELTA)), 1.0).merged()
    assert len(delta.exemplars) == MAX_EXEMPLARS_PER_POINT


def otlp_json(message: Any) -> bytes:
    """The OTLP/JSON encoding of a request: proto3's JSON mapping, but trace and span ids
    written as hex, as the OTLP specification asks (not base64)."""
    js = json_format.MessageToDict(message)
    for rm in js["resourceMetrics"]:
        for sm in rm["scopeMetrics"]:
            for m in sm["metrics"]:
                for point in m["histogram"]["dataPoints"]:
                    for e in point.get("exemplars", ()):
                        for key in ("traceId", "spanId"):
                            if key in e:
                                e[key] = base64.b64decode(e[key]).hex()
    return json.dumps(js).encode()


def test_otlp_json_ids_are_hex() -> None:
    point = explicit_point(counts(b4=1), total=0.07)
    point.exemplars.append(exemplar(0.07))
    body = otlp_json(request(metric([point], temporality=DELTA)))
    assert TRACE.hex().encode() in body
    (delta,) = ingest().ingest(decode_request(body, Encoding.JSON), 1.0).merged()
    assert delta.exemplars == (Exemplar(0.07, TRACE.hex(), SPAN.hex(), T0 + S),)


def test_otlp_json_ids_that_are_not_hex_lose_the_exemplar_not_the_request() -> None:
    point = explicit_point(counts(b4=1), total=0.07)
    point.exemplars.append(exemplar(0.07))
    body = json_format.MessageToJson(request(metric([point], temporality=DELTA)))  # base64 ids
    result = ingest().ingest(decode_request(body.encode(), Encoding.JSON), 1.0)
    (delta,) = result.merged()
    assert delta.count == 1 and delta.exemplars == ()


def test_the_series_keeps_the_latest_exemplar_of_each_bucket() -> None:
    series = ExemplarSeries.of_service(0.1)  # ..., 0.07, 0.1, 0.15, ...
    assert series.exemplars is None  # nothing held before the first
    version = series.version
    late = Exemplar(0.08, "aa" * 16, "", 20)
    series.add_exemplars([late, Exemplar(0.09, "bb" * 16, "", 10)])  # same bucket, older
    series.add_exemplars([Exemplar(0.1, "cc" * 16, "", 5)])  # the bound: the same bucket
    assert series.exemplars is not None
    assert list(series.exemplars.values()) == [late]
    assert series.version != version  # an exemplar alone changes the version
    version = series.version
    series.add_exemplars([late])  # a cumulative point's repeat: nothing changes
    assert series.version == version
    series.add_exemplars([Exemplar(99.0, "dd" * 16, "", 1)])  # +Inf bucket
    assert sorted(series.exemplars) == [series.bounds.index(0.1), len(series.bounds)]


def test_client_latency_keeps_exemplars_with_its_series() -> None:
    latency = ClientLatency(slo_of=lambda ref: None)
    ex = Exemplar(0.02, "aa" * 16, "", 1)
    latency.record(WEB_REF, [(0.015, 0.02, 1)], 0.02, [ex])
    (series,) = latency.series.values()
    assert series.exemplars is not None and list(series.exemplars.values()) == [ex]
    latency.forget(WEB_REF)  # the Service leaves: its series and exemplars with it
    assert not latency.series
