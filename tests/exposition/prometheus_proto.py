"""The io.prometheus.client messages (prometheus/client_model, io/prometheus/client/
metrics.proto, proto2), built at test time from a FileDescriptorProto: the reference decoder
of the agent's protobuf exposition, with no protoc and no generated code.

Only what the agent writes and Prometheus reads is declared, with the numbers and types of
the real file: MetricFamily, Metric, LabelPair, Gauge, Counter, Histogram (classic bucket
and native fields, exemplars), BucketSpan, Exemplar, and google.protobuf.Timestamp's two
fields (declared here as `Timestamp`: the wire format knows numbers, not names). Repeated
scalars are unpacked, as proto2 declares them without [packed=true]: re-serializing a parsed
message gives the bytes client_golang would write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "io.prometheus.client"

_F = descriptor_pb2.FieldDescriptorProto
OPTIONAL = _F.LABEL_OPTIONAL
REPEATED = _F.LABEL_REPEATED

# (name, number, label, type, message or enum type name)
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "LabelPair": [
        ("name", 1, OPTIONAL, _F.TYPE_STRING, ""),
        ("value", 2, OPTIONAL, _F.TYPE_STRING, ""),
    ],
    "Gauge": [("value", 1, OPTIONAL, _F.TYPE_DOUBLE, "")],
    "Counter": [("value", 1, OPTIONAL, _F.TYPE_DOUBLE, "")],
    "Untyped": [("value", 1, OPTIONAL, _F.TYPE_DOUBLE, "")],
    "Timestamp": [
        ("seconds", 1, OPTIONAL, _F.TYPE_INT64, ""),
        ("nanos", 2, OPTIONAL, _F.TYPE_INT32, ""),
    ],
    "Exemplar": [
        ("label", 1, REPEATED, _F.TYPE_MESSAGE, "LabelPair"),
        ("value", 2, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("timestamp", 3, OPTIONAL, _F.TYPE_MESSAGE, "Timestamp"),
    ],
    "Bucket": [
        ("cumulative_count", 1, OPTIONAL, _F.TYPE_UINT64, ""),
        ("upper_bound", 2, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("exemplar", 3, OPTIONAL, _F.TYPE_MESSAGE, "Exemplar"),
        ("cumulative_count_float", 4, OPTIONAL, _F.TYPE_DOUBLE, ""),
    ],
    "BucketSpan": [
        ("offset", 1, OPTIONAL, _F.TYPE_SINT32, ""),
        ("length", 2, OPTIONAL, _F.TYPE_UINT32, ""),
    ],
    "Histogram": [
        ("sample_count", 1, OPTIONAL, _F.TYPE_UINT64, ""),
        ("sample_sum", 2, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("bucket", 3, REPEATED, _F.TYPE_MESSAGE, "Bucket"),
        ("sample_count_float", 4, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("schema", 5, OPTIONAL, _F.TYPE_SINT32, ""),
        ("zero_threshold", 6, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("zero_count", 7, OPTIONAL, _F.TYPE_UINT64, ""),
        ("zero_count_float", 8, OPTIONAL, _F.TYPE_DOUBLE, ""),
        ("negative_span", 9, REPEATED, _F.TYPE_MESSAGE, "BucketSpan"),
        ("negative_delta", 10, REPEATED, _F.TYPE_SINT64, ""),
        ("negative_count", 11, REPEATED, _F.TYPE_DOUBLE, ""),
        ("positive_span", 12, REPEATED, _F.TYPE_MESSAGE, "BucketSpan"),
        ("positive_delta", 13, REPEATED, _F.TYPE_SINT64, ""),
        ("positive_count", 14, REPEATED, _F.TYPE_DOUBLE, ""),
        ("exemplars", 16, REPEATED, _F.TYPE_MESSAGE, "Exemplar"),
    ],
    "Metric": [
        ("label", 1, REPEATED, _F.TYPE_MESSAGE, "LabelPair"),
        ("gauge", 2, OPTIONAL, _F.TYPE_MESSAGE, "Gauge"),
        ("counter", 3, OPTIONAL, _F.TYPE_MESSAGE, "Counter"),
        ("untyped", 5, OPTIONAL, _F.TYPE_MESSAGE, "Untyped"),
        ("timestamp_ms", 6, OPTIONAL, _F.TYPE_INT64, ""),
        ("histogram", 7, OPTIONAL, _F.TYPE_MESSAGE, "Histogram"),
    ],
    "MetricFamily": [
        ("name", 1, OPTIONAL, _F.TYPE_STRING, ""),
        ("help", 2, OPTIONAL, _F.TYPE_STRING, ""),
        ("type", 3, OPTIONAL, _F.TYPE_ENUM, "MetricType"),
        ("metric", 4, REPEATED, _F.TYPE_MESSAGE, "Metric"),
    ],
}
METRIC_TYPES = {"COUNTER": 0, "GAUGE": 1, "SUMMARY": 2, "UNTYPED": 3, "HISTOGRAM": 4,
                "GAUGE_HISTOGRAM": 5}  # fmt: skip


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(
        name="tailwatch_test/io/prometheus/client/metrics.proto", package=PACKAGE, syntax="proto2"
    )
    enum = f.enum_type.add(name="MetricType")
    for name, number in METRIC_TYPES.items():
        enum.value.add(name=name, number=number)
    for message, fields in _MESSAGES.items():
        m = f.message_type.add(name=message)
        for name, number, label, type_, type_name in fields:
            field = m.field.add(name=name, number=number, label=label, type=type_)
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
MetricFamily: Any = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{PACKAGE}.MetricFamily")
)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint at `pos`: (its value, the position after it)."""
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def delimited(data: bytes) -> Iterator[tuple[bytes, Any]]:
    """Each length-delimited MetricFamily of `data`: (its bytes with the length prefix, the
    parsed message)."""
    pos = 0
    while pos < len(data):
        size, start = read_varint(data, pos)
        end = start + size
        assert end <= len(data), "a message runs past the end of the body"
        family = MetricFamily()
        family.ParseFromString(data[start:end])
        yield data[pos:end], family
        pos = end


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def native_buckets(h: Any) -> list[tuple[int, int]]:
    """The (index, count) pairs of a decoded native histogram's positive buckets: every
    bucket its spans cover."""
    out: list[tuple[int, int]] = []
    deltas = iter(h.positive_delta)
    index = count = 0
    for n, span in enumerate(h.positive_span):
        index = span.offset if n == 0 else index + span.offset
        for _ in range(span.length):
            count += next(deltas)
            out.append((index, count))
            index += 1
    assert next(deltas, None) is None, "more deltas than the spans hold"
    return out
