"""The OTLP/HTTP wire format of metrics: request bodies (protobuf or JSON, maybe gzip) to
`ExportMetricsServiceRequest`, and the response and `google.rpc.Status` bodies back. Pure.

Requests are read into `WireRequest`: OTLP's own messages, except that the attributes and
exemplars of data points stay serialized (see `wire_request_class`).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any as AnyJson

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsPartialSuccess,
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

MiB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 20 * MiB  # the OpenTelemetry Collector's default (docs/otlp.md)
_INFLATE_CHUNK = 1 * MiB  # output produced per decompression step: the memory overshoot


class Encoding(Enum):
    """How a request body, and so its response, is serialized."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"


class BodyRejected(ValueError):
    """A request refused as a whole; `status` is the HTTP status the OTLP spec asks for."""

    status = 400
    reason = "otlp_decode_error"  # the tailwatch_dropped_total reason


class BodyTooLarge(BodyRejected):
    status = 413
    reason = "otlp_body_too_large"


class UnsupportedMediaType(BodyRejected):
    status = 415
    reason = "otlp_unsupported_media_type"


class MalformedBody(BodyRejected):
    pass


# Content types receivers see in the wild: the spec's two, and `application/protobuf`, which
# some clients send and the Collector accepts too.
_ENCODINGS = {
    "application/x-protobuf": Encoding.PROTOBUF,
    "application/protobuf": Encoding.PROTOBUF,
    "application/json": Encoding.JSON,
}


def request_encoding(content_type: str | None) -> Encoding:
    """The encoding named by a Content-Type header (parameters such as charset ignored)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        return _ENCODINGS[media]
    except KeyError:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media or '(none)'!r}: send application/x-protobuf "
            "or application/json"
        ) from None


def check_content_encoding(content_encoding: str | None) -> bool:
    """True if the body is compressed (gzip, or zlib's deflate); raises for anything else."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return False
    if coding in ("gzip", "x-gzip", "deflate"):
        return True
    raise UnsupportedMediaType(f"unsupported Content-Encoding {coding!r}: send gzip or none")


def inflate(body: bytes | bytearray, max_bytes: int) -> bytearray:
    """Decompress a gzip or zlib body, refusing as soon as the output passes `max_bytes`.

    The output grows by at most `_INFLATE_CHUNK` per step, so a gzip bomb costs at most
    `max_bytes` plus one chunk of memory and the time to inflate `max_bytes`, never its full
    size. Concatenated gzip members (which `gzip` itself writes for appended files) are read
    one after the other.
    """
    out = bytearray()
    data = body
    while data:
        # wbits 32 + 15: detect a gzip or a zlib header, with the largest window.
        inflater = zlib.decompressobj(wbits=47)
        try:
            while data:
                out += inflater.decompress(data, _INFLATE_CHUNK)
                if len(out) > max_bytes:
                    raise BodyTooLarge(
                        f"decompressed body is larger than the limit of {max_bytes} bytes"
                    )
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                out += inflater.flush()
                if not inflater.eof:
                    raise MalformedBody("compressed body is truncated")
        except zlib.error as exc:
            raise MalformedBody(f"body is not valid gzip: {exc}") from None
        data = inflater.unused_data
        if len(out) > max_bytes:
            raise BodyTooLarge(f"decompressed body is larger than the limit of {max_bytes} bytes")
    return out  # not copied to bytes: both parsers read a bytearray


# The fields of data points left serialized in a `WireRequest`: by message, by name.
_RAW_FIELDS = {
    "NumberDataPoint": ("attributes", "exemplars"),
    "HistogramDataPoint": ("attributes", "exemplars"),
    "ExponentialHistogramDataPoint": ("attributes", "exemplars"),
    "SummaryDataPoint": ("attributes",),
}


def wire_request_class() -> type[Message]:
    """ExportMetricsServiceRequest as tailwatch reads it: the same fields and numbers, but a
    data point's attributes are a list of serialized `KeyValue`s (bytes) and its exemplars
    are left unread, which the wire format allows since a message and bytes share their
    encoding.

    Why: the attributes are what identifies a stream, and the bytes are that identity as
    they are: a stream seen before then costs a sort and a dict lookup, where reading the
    attributes as messages made an object of each and serialized it again (the dearest
    part of a point). Parsing a request is also over twice as cheap without the attribute
    and exemplar messages, which matters for the other metrics of a client's export too
    (skipped, but parsed). Built in a private pool, like `_Status`, so it cannot clash
    with the OTLP classes the rest of the process uses."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, metrics_pb2, metrics_service_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        for message in proto.message_type:
            for field in message.field:
                if field.name in _RAW_FIELDS.get(message.name, ()):
                    field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                    field.ClearField("type_name")
        pool.Add(proto)
    cls: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName(ExportMetricsServiceRequest.DESCRIPTOR.full_name)
    )
    return cls


#: What `decode_request` returns. The type checker sees OTLP's ExportMetricsServiceRequest,
#: whose fields it has but for the raw ones; exporter.otlp.points reads those as bytes.
WireRequest = wire_request_class()


def to_wire(request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest:
    """A request built in memory (tests, tools) as `decode_request` would have read it."""
    if request.DESCRIPTOR is WireRequest.DESCRIPTOR:
        return request
    wire: ExportMetricsServiceRequest = WireRequest.FromString(request.SerializeToString())
    return wire


def decode_request(
    body: bytes | bytearray,
    encoding: Encoding,
    *,
    compressed: bool = False,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> ExportMetricsServiceRequest:
    """A `WireRequest` from a request body; raises `BodyRejected`."""
    if len(body) > max_bytes:
        raise BodyTooLarge(f"body is larger than the limit of {max_bytes} bytes")
    if compressed:
        body = inflate(body, max_bytes)
    request: ExportMetricsServiceRequest = WireRequest()
    try:
        if encoding is Encoding.PROTOBUF:
            request.ParseFromString(body)
        else:
            # OTLP/JSON is proto3's JSON mapping with lowerCamelCase keys and enums as
            # integers, both of which json_format reads; unknown fields are skipped, as the
            # spec asks of receivers, so newer clients keep working. JSON holds attributes
            # as objects, so it is read into OTLP's own classes first (it is 350 times
            # dearer than protobuf already: docs/otlp.md asks clients for protobuf).
            parsed = ExportMetricsServiceRequest()
            if b"exemplars" in body:
                # OTLP/JSON writes trace and span ids as hex, not as proto3 JSON's base64.
                js = hex_ids_as_base64(json.loads(body))
                json_format.ParseDict(js, parsed, ignore_unknown_fields=True)
            else:
                json_format.Parse(body, parsed, ignore_unknown_fields=True)
            request.ParseFromString(parsed.SerializeToString())
    except Exception as exc:  # the parsers raise more than DecodeError (RecursionError, ...)
        kind = "protobuf" if encoding is Encoding.PROTOBUF else "OTLP/JSON"
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise MalformedBody(
            f"body is not a valid {kind} ExportMetricsServiceRequest: {detail}"
        ) from None
    return request


_DATA_KINDS = ("histogram", "exponentialHistogram", "exponential_histogram", "sum", "gauge")
_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id")


def _objects(parent: AnyJson, *keys: str) -> Iterator[dict[str, AnyJson]]:
    """The objects in the list under `keys` (lowerCamelCase or the proto field name: a
    receiver reads both) of a JSON object; none for anything else."""
    if isinstance(parent, dict):
        for key in keys:
            items = parent.get(key)
            if isinstance(items, list):
                yield from (item for item in items if isinstance(item, dict))


def hex_ids_as_base64(request: AnyJson) -> AnyJson:
    """An OTLP/JSON ExportMetricsServiceRequest with its exemplars' trace and span ids
    rewritten from the hex the OTLP/JSON spec writes them in to the base64 that proto3's
    JSON mapping (json_format) reads bytes as; changed in place. An id that is not hex
    is dropped, so its exemplar is skipped like one without a trace id: a client that
    wrote base64 loses its exemplars, not its request."""
    for rm in _objects(request, "resourceMetrics", "resource_metrics"):
        for sm in _objects(rm, "scopeMetrics", "scope_metrics"):
            for metric in _objects(sm, "metrics"):
                for kind in _DATA_KINDS:
                    for point in _objects(metric.get(kind), "dataPoints", "data_points"):
                        for exemplar in _objects(point, "exemplars"):
                            for key in _ID_KEYS:
                                text = exemplar.get(key)
                                if not isinstance(text, str):
                                    continue
                                try:
                                    ids = bytes.fromhex(text)
                                except ValueError:
                                    del exemplar[key]
                                    continue
                                exemplar[key] = base64.b64encode(ids).decode()
    return request


def _status_class() -> type[Message]:
    """google.rpc.Status, the error body OTLP/HTTP asks for, built from its descriptor in a
    private pool so the agent needs no googleapis package and cannot clash with one a
    client library loaded. `details` (field 3, repeated google.protobuf.Any) is read as
    serialized bytes, which the wire format allows: only OTLP/gRPC sends one (RetryInfo)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="tailwatch/google_rpc_status.proto", package="google.rpc", syntax="proto3"
    )
    status = proto.message_type.add(name="Status")
    status.field.add(name="code", number=1, type=5, label=1, json_name="code")  # int32
    status.field.add(name="message", number=2, type=9, label=1, json_name="message")  # string
    status.field.add(name="details", number=3, type=12, label=3, json_name="details")  # bytes
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls: type[Message] = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.rpc.Status")
    )
    return cls


_Status = _status_class()
INVALID_ARGUMENT = 3  # google.rpc.Code: none of our errors is worth a retry


_RETRY_INFO_URL = "type.googleapis.com/google.rpc.RetryInfo"


def encode_grpc_status(code: int, message: str, retry_after: float | None = None) -> bytes:
    """A google.rpc.Status for gRPC's `grpc-status-details-bin` trailer: with a RetryInfo
    detail when `retry_after` is given, which is what tells an OTLP/gRPC exporter that a
    RESOURCE_EXHAUSTED may be retried, and after how long (the OTLP spec, "Failures")."""
    details = []
    if retry_after is not None:
        retry_info = encode_retry_info(retry_after)
        details.append(Any(type_url=_RETRY_INFO_URL, value=retry_info).SerializeToString())
    status: bytes = _Status(code=code, message=message, details=details).SerializeToString()
    return status


def encode_retry_info(retry_after: float) -> bytes:
    """A serialized google.rpc.RetryInfo: its one field (1) is the delay, a Duration."""
    delay = Duration()
    delay.FromNanoseconds(int(retry_after * 1e9))
    encoded: bytes = delay.SerializeToString()
    return b"\x0a" + _varint(len(encoded)) + encoded


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@dataclass(frozen=True)
class EncodedBody:
    body: bytes
    content_type: str


def _encode(msg: Message, encoding: Encoding) -> EncodedBody:
    if encoding is Encoding.PROTOBUF:
        return EncodedBody(msg.SerializeToString(), encoding.value)
    text = json_format.MessageToJson(msg, indent=None, preserving_proto_field_name=False)
    return EncodedBody(text.encode(), encoding.value)


def encode_status(message: str, encoding: Encoding) -> EncodedBody:
    """The body of a 4xx response: a google.rpc.Status in the request's encoding."""
    return _encode(_Status(code=INVALID_ARGUMENT, message=message), encoding)


def encode_response(rejected: int, error_message: str, encoding: Encoding) -> EncodedBody:
    """The body of a 200: an ExportMetricsServiceResponse, with `partial_success` set only
    when points were rejected, as the spec asks."""
    response = ExportMetricsServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(
            ExportMetricsPartialSuccess(rejected_data_points=rejected, error_message=error_message)
        )
    return _encode(response, encoding)
