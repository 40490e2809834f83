"""OTLP/gRPC over real gRPC on loopback: the OpenTelemetry SDK's gRPC exporter as the
client, a raw gRPC channel for the answers the SDK does not show, and the counters."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import grpc.aio
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from exporter.otlp import LatencyDelta, OtlpReceiver, ReceiverLimits
from exporter.otlp.grpc_receiver import METHOD, GrpcListener, GrpcReceiver, peer_address
from exporter.settings import ListenAddress
from tests.otlp.builders import explicit_point, metric, request
from tests.otlp.test_receiver import ATTRS, VALUES, WEB, catalog, good_request, sdk_client


@dataclass
class Sources:
    """A sender policy: `allowed` may send; `known` says if the others are refused for good."""

    allowed: set[str] = field(default_factory=set)
    known_now: bool = True

    def allows(self, address: str) -> bool:
        return address in self.allowed

    def known(self) -> bool:
        return self.known_now


@dataclass
class Agent:
    receiver: OtlpReceiver
    grpc: GrpcReceiver
    listener: GrpcListener
    target: str
    deltas: list[LatencyDelta]

    def count(self) -> int:
        return sum(d.count for d in self.deltas)


@asynccontextmanager
async def serve(
    limits: ReceiverLimits | None = None, sources: Sources | None = None, max_waiting: int = 8
) -> AsyncIterator[Agent]:
    deltas: list[LatencyDelta] = []
    receiver = OtlpReceiver(catalog().resolve, deltas.append, limits=limits, sources=sources)
    front = GrpcReceiver(receiver, max_waiting=max_waiting)
    listener = await front.start(ListenAddress("127.0.0.1", 0))
    try:
        yield Agent(receiver, front, listener, f"127.0.0.1:{listener.addresses[0][1]}", deltas)
    finally:
        await listener.cleanup()


async def export(
    agent: Agent, body: bytes
) -> tuple[grpc.StatusCode, bytes | None, dict[str, bytes]]:
    """One raw Export call: (code, response bytes or None, trailers)."""
    async with grpc.aio.insecure_channel(agent.target) as channel:
        call = channel.unary_unary(METHOD)
        try:
            response = await call(body, timeout=10)
        except grpc.aio.AioRpcError as error:
            trailers = {k: v for k, v in (error.trailing_metadata() or ()) if isinstance(v, bytes)}
            return error.code(), None, trailers
        return grpc.StatusCode.OK, response, {}


def sdk_reader(
    target: str, *, compression: Compression | None = None
) -> PeriodicExportingMetricReader:
    exporter = OTLPMetricExporter(endpoint=target, insecure=True, timeout=10,
                                  compression=compression)  # fmt: skip
    return PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)


# -- the real client ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, Compression.Gzip])
async def test_sdk_grpc_exports_add_up_to_what_was_recorded(
    compression: Compression | None,
) -> None:
    async with serve() as agent:
        with sdk_client(sdk_reader(agent.target, compression=compression)) as (provider, hist):
            for value in VALUES:
                hist.record(value, ATTRS)
            assert await asyncio.to_thread(provider.force_flush, 10_000)
            hist.record(0.02, ATTRS)  # the second, cumulative export adds only this one
            hist.record(0.02, {"server.address": "api.example.com"})  # unmapped
            assert await asyncio.to_thread(provider.force_flush, 10_000)
        assert agent.count() == len(VALUES) + 1
        assert {d.service for d in agent.deltas} == {WEB}
        outcomes = agent.receiver.outcomes()
        assert (outcomes["accepted"], outcomes["unmapped"]) == (2, 1)
        assert agent.receiver.dropped() == {}


async def test_unmapped_points_are_a_partial_success_not_an_error() -> None:
    async with serve() as agent:
        unmapped = explicit_point([1, 0, 0], bounds=(0.1, 1), total=0.05,
                                  attrs={"server.address": "api.example.com"})  # fmt: skip
        code, body, _ = await export(agent, request(metric([unmapped])).SerializeToString())
        assert code == grpc.StatusCode.OK and body is not None
        partial = ExportMetricsServiceResponse.FromString(body).partial_success
        assert partial.rejected_data_points == 1
        assert "1 unmapped (server.address 'api.example.com' is not an opted-in" in (
            partial.error_message
        )


# -- refusals -----------------------------------------------------------------------------


async def test_an_undecodable_message_is_invalid_argument_and_counted() -> None:
    async with serve() as agent:
        code, _, trailers = await export(agent, b"\xff\xff\xff")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        status = Status.FromString(trailers["grpc-status-details-bin"])
        assert status.code == 3 and "not a valid protobuf" in status.message
        assert agent.receiver.dropped() == {"otlp_decode_error": 1}
        assert (await export(agent, good_request()))[0] == grpc.StatusCode.OK


async def test_a_message_over_the_size_limit_is_resource_exhausted() -> None:
    async with serve(ReceiverLimits(max_body_bytes=1024)) as agent:
        code, _, _ = await export(agent, b"\x00" * 4096)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await export(agent, good_request()))[0] == grpc.StatusCode.OK


async def test_a_sender_that_may_not_send_is_permission_denied() -> None:
    async with serve(sources=Sources()) as agent:
        code, _, trailers = await export(agent, good_request())
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "google.rpc.retryinfo-bin" not in trailers
        assert agent.receiver.dropped() == {"otlp_untrusted_source": 1}
        assert agent.count() == 0


async def test_unknown_sources_and_overload_are_retryable_with_retry_info() -> None:
    """UNAVAILABLE while the node's pods are not known, RESOURCE_EXHAUSTED when too many
    requests wait: both with a RetryInfo, in the Status' details (the Collector reads it
    there) and in a trailer of its own (the Python SDK reads that)."""
    sources = Sources(known_now=False)
    async with serve(sources=sources) as agent:
        code, _, trailers = await export(agent, good_request())
        assert code == grpc.StatusCode.UNAVAILABLE
        assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 2
        (detail,) = Status.FromString(trailers["grpc-status-details-bin"]).details
        info = RetryInfo()
        assert detail.Unpack(info) and info.retry_delay.seconds == 2
        sources.allowed.add("127.0.0.1")
        assert (await export(agent, good_request()))[0] == grpc.StatusCode.OK
    async with serve(max_waiting=0) as agent:
        code, _, trailers = await export(agent, good_request())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]).retry_delay.seconds == 2
        assert agent.receiver.dropped() == {"otlp_overloaded": 1}


async def test_a_taken_port_is_an_os_error() -> None:
    async with serve() as agent:
        port = agent.listener.addresses[0][1]
        with pytest.raises(OSError):
            await GrpcReceiver(agent.receiver).start(ListenAddress("127.0.0.1", port))


def test_peer_addresses() -> None:
    assert peer_address("ipv4:127.0.0.5:4711") == "127.0.0.5"
    assert peer_address("ipv6:[::1]:4711") == "::1"
    assert peer_address("ipv6:%5B::ffff:127.0.0.1%5D:4711") == "::ffff:127.0.0.1"
    assert peer_address("unix:/run/otlp.sock") == ""
