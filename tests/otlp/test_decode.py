"""Request bodies: protobuf and OTLP/JSON, gzip with a hard cap, and what is refused."""

from __future__ import annotations

import functools
import gzip
import json
import tracemalloc
import zlib

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from exporter.otlp.decode import (
    BodyTooLarge,
    Encoding,
    MalformedBody,
    MiB,
    UnsupportedMediaType,
    check_content_encoding,
    decode_request,
    encode_response,
    encode_status,
    inflate,
    request_encoding,
    to_wire,
)
from tests.otlp.builders import WEB, attributes, explicit_point, metric, request

REQUEST = request(metric([explicit_point([1, 2, 0], bounds=(0.1, 1), total=0.5)]))


def otlp(decoded: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest:
    """A decoded request as OTLP's own class reads it (decode_request leaves parts of the
    data points serialized)."""
    return ExportMetricsServiceRequest.FromString(decoded.SerializeToString())


@functools.cache
def gzip_bomb(gib: int = 1) -> bytes:
    """`gib` GiB of zeros as one gzip stream of about 1 MiB per GiB, built in milliseconds:
    after a full flush, every further MiB of zeros compresses to the same bytes."""
    zeros = bytes(MiB)
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024 * gib):
        crc = zlib.crc32(zeros, crc)
    size = (1024 * gib * MiB) & 0xFFFFFFFF
    tail = c.flush()[:-8] + crc.to_bytes(4, "little") + size.to_bytes(4, "little")
    return head + block * (1024 * gib - 1) + tail


def test_protobuf() -> None:
    body = REQUEST.SerializeToString()
    assert otlp(decode_request(body, Encoding.PROTOBUF)) == REQUEST
    assert otlp(decode_request(gzip.compress(body), Encoding.PROTOBUF, compressed=True)) == REQUEST


def test_json_as_the_sdks_write_it() -> None:
    body = json_format.MessageToJson(REQUEST).encode()
    assert otlp(decode_request(body, Encoding.JSON)) == REQUEST
    assert otlp(decode_request(zlib.compress(body), Encoding.JSON, compressed=True)) == REQUEST


def test_points_keep_their_attributes_serialized() -> None:
    """What the ingest reads: a point's attributes as the client serialized each KeyValue,
    whichever encoding the client used (so a stream is the same stream over protobuf and
    OTLP/JSON); the rest as OTLP's own class reads it."""
    proto = decode_request(REQUEST.SerializeToString(), Encoding.PROTOBUF)
    from_json = decode_request(json_format.MessageToJson(REQUEST).encode(), Encoding.JSON)
    assert proto.SerializeToString() == from_json.SerializeToString()
    point = proto.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    assert list(point.attributes) == [kv.SerializeToString() for kv in attributes(WEB)]
    assert (point.bucket_counts[:], point.explicit_bounds[:], point.count) == (
        [1, 2, 0],
        [0.1, 1],
        3,
    )
    assert to_wire(proto) is proto
    assert to_wire(REQUEST).SerializeToString() == proto.SerializeToString()


def test_attributes_are_not_parsed_with_the_body() -> None:
    """A body whose point attributes are not valid KeyValues is still a valid body: the
    ingest reads attributes only for a new stream, and refuses that point alone."""
    wire = to_wire(REQUEST)
    point = wire.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    point.attributes.append(b"\x0a\x01\xff")  # a key that is not UTF-8
    with pytest.raises(Exception, match="Error parsing"):
        KeyValue.FromString(point.attributes[-1])
    assert decode_request(wire.SerializeToString(), Encoding.PROTOBUF) == wire


def test_json_leniency_the_spec_asks_for() -> None:
    # lowerCamelCase and original names, int64 as strings and numbers, the enum as an int,
    # fields this version does not know.
    body = {
        "resourceMetrics": [{"scopeMetrics": [{"metrics": [{
            "name": "http.client.request.duration", "unit": "s", "futureField": {"x": 1},
            "histogram": {"aggregationTemporality": 2, "dataPoints": [{
                "start_time_unix_nano": "1800000000000000000", "timeUnixNano": 1800000001000000000,
                "count": "3", "sum": 0.5, "bucketCounts": ["1", 2, "0"], "explicitBounds": [0.1, 1],
                "attributes": [{"key": "server.address", "value": {"stringValue": "web.shop"}}],
            }]},
        }]}]}]
    }  # fmt: skip
    decoded = otlp(decode_request(json.dumps(body).encode(), Encoding.JSON))
    point = decoded.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    assert (point.count, list(point.bucket_counts), point.start_time_unix_nano) == (
        3,
        [1, 2, 0],
        1_800_000_000_000_000_000,
    )


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"\x0a\xff\xff", Encoding.PROTOBUF),
        (b"not protobuf at all, just some text", Encoding.PROTOBUF),
        (b"{not json", Encoding.JSON),
        (b'{"resourceMetrics": 5}', Encoding.JSON),
        (b'{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"histogram": {"dataPoints": '
         b'[{"count": "many"}]}}]}]}]}', Encoding.JSON),
        (b"\xff\xfe", Encoding.JSON),
        (b"[" * 100_000 + b"]" * 100_000, Encoding.JSON),
    ],
)  # fmt: skip
def test_invalid_bodies(body: bytes, encoding: Encoding) -> None:
    with pytest.raises(MalformedBody, match="not a valid") as info:
        decode_request(body, encoding)
    assert info.value.status == 400


def test_bad_gzip() -> None:
    body = gzip.compress(REQUEST.SerializeToString())
    with pytest.raises(MalformedBody, match="truncated"):
        decode_request(body[:-10], Encoding.PROTOBUF, compressed=True)
    with pytest.raises(MalformedBody, match="not valid gzip"):
        decode_request(b"plain text", Encoding.PROTOBUF, compressed=True)


def test_concatenated_gzip_members() -> None:
    body = REQUEST.SerializeToString()
    assert inflate(gzip.compress(body[:10]) + gzip.compress(body[10:]), MiB) == body


def test_size_limits_before_and_after_decompression() -> None:
    body = REQUEST.SerializeToString()
    with pytest.raises(BodyTooLarge) as info:
        decode_request(body, Encoding.PROTOBUF, max_bytes=len(body) - 1)
    assert info.value.status == 413
    packed = gzip.compress(body + bytes(1000))
    assert len(packed) < 1000
    with pytest.raises(BodyTooLarge, match="decompressed"):
        decode_request(packed, Encoding.PROTOBUF, compressed=True, max_bytes=1000)


def test_a_gzip_bomb_is_refused_in_bounded_memory() -> None:
    bomb = gzip_bomb(1)
    assert len(bomb) < 2 * MiB
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            decode_request(bomb, Encoding.PROTOBUF, compressed=True, max_bytes=20 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB  # the limit and its growth, never the 1 GiB


def test_the_bomb_is_a_real_gzip_stream() -> None:
    small = gzip_bomb(1)[: 4 * 1024]  # check the head only: inflating it all takes a while
    d = zlib.decompressobj(wbits=31)
    assert d.decompress(small, 2 * MiB) == bytes(2 * MiB)


@pytest.mark.parametrize(
    ("content_type", "encoding"),
    [
        ("application/x-protobuf", Encoding.PROTOBUF),
        ("application/protobuf", Encoding.PROTOBUF),
        ("Application/JSON; charset=utf-8", Encoding.JSON),
    ],
)
def test_content_types(content_type: str, encoding: Encoding) -> None:
    assert request_encoding(content_type) is encoding


def test_unsupported_media() -> None:
    for content_type in ("text/plain", "", None, "application/grpc"):
        with pytest.raises(UnsupportedMediaType) as info:
            request_encoding(content_type)
        assert info.value.status == 415
    assert not check_content_encoding(None) and not check_content_encoding("identity")
    assert check_content_encoding("gzip") and check_content_encoding("deflate")
    with pytest.raises(UnsupportedMediaType, match="br"):
        check_content_encoding("br")


def test_responses() -> None:
    body = encode_response(2, "2 malformed", Encoding.PROTOBUF)
    response = ExportMetricsServiceResponse.FromString(body.body)
    assert response.partial_success.rejected_data_points == 2
    assert response.partial_success.error_message == "2 malformed"
    assert encode_response(0, "", Encoding.PROTOBUF).body == b""  # no partial_success at all
    assert json.loads(encode_status("bad", Encoding.JSON).body) == {"code": 3, "message": "bad"}
