"""The OTLP/gRPC receiver on --otlp-grpc-listen (port 4317): the MetricsService's `Export`,
served by grpcio's asyncio server on the agent's own event loop, into the same ingest as
OTLP/HTTP (`OtlpReceiver.ingest_body`): the same size limit, the same trusted sources (by
the peer's socket address), the same answers with `partial_success`, the same counters.

Imported only when the option is set: grpcio costs the agent about 14 MiB of memory
(docs/otlp.md, "OTLP/gRPC"), which is why the option is off by default.

Status codes are the OTLP spec's: INVALID_ARGUMENT for a request that cannot be decoded
(not retryable), PERMISSION_DENIED for a sender that may not send, UNAVAILABLE while the
agent cannot tell yet who may send, RESOURCE_EXHAUSTED when too many requests wait for the
ingest; the last two carry a RetryInfo, so exporters retry them after its delay. gzip
(`grpc-encoding`) is grpcio's own and is inflated before the size limit applies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NoReturn

import grpc
import grpc.aio

from exporter.otlp.decode import (
    BodyRejected,
    Encoding,
    encode_grpc_status,
    encode_response,
    encode_retry_info,
)
from exporter.otlp.receiver import OtlpReceiver, SourcesUnknown, UntrustedSource
from exporter.settings import ListenAddress

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
METHOD = f"/{SERVICE}/Export"
#: Requests waiting for the ingest beyond this are refused with RESOURCE_EXHAUSTED and a
#: RetryInfo: each holds its whole message in memory until its turn.
MAX_WAITING = 8
#: The delay a refused exporter is asked to wait (RetryInfo), as the HTTP 503's Retry-After.
RETRY_AFTER = 2.0
#: Connections idle this long are closed (grpcio's max_connection_idle), like an idle
#: HTTP keep-alive connection.
IDLE_MS = 5 * 60 * 1000
#: At shutdown, calls in flight get this long, then are cancelled: the agent's listeners
#: all stop within about a second (exporter.server).
SHUTDOWN_GRACE = 1.0
_STATUS_DETAILS = "grpc-status-details-bin"
_RETRY_INFO = "google.rpc.retryinfo-bin"


class GrpcListener:
    """A running gRPC server: `addresses` are (host, port) as bound; `await cleanup()`
    stops it within about SHUTDOWN_GRACE."""

    def __init__(self, server: grpc.aio.Server, addresses: Sequence[tuple[str, int]]) -> None:
        self._server = server
        self.addresses = list(addresses)
        self._stopped = False

    async def cleanup(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self._server.stop(SHUTDOWN_GRACE)


class GrpcReceiver:
    """OTLP/gRPC in front of an `OtlpReceiver` (which owns the ingest, its worker thread
    and its counters)."""

    def __init__(self, receiver: OtlpReceiver, *, max_waiting: int = MAX_WAITING) -> None:
        self.receiver = receiver
        self.max_waiting = max_waiting
        self._waiting = 0

    async def start(self, listen: ListenAddress) -> GrpcListener:
        """Serve on `listen`; raises OSError if the address cannot be bound."""
        limit = self.receiver.limits.max_body_bytes
        server = grpc.aio.server(
            options=[
                # Refused by grpcio before the handler (RESOURCE_EXHAUSTED), inflated or not.
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_connection_idle_ms", IDLE_MS),
                ("grpc.so_reuseport", 0),  # a second agent on the port must fail to bind
            ]
        )
        # No (de)serializers: the message's bytes in (read by the agent's own decode),
        # the response's bytes out.
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._export
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )
        host = listen.host or "::"  # every interface, IPv4 too
        target = f"[{host}]:{listen.port}" if ":" in host else f"{host}:{listen.port}"
        try:
            port = server.add_insecure_port(target)
        except RuntimeError as exc:  # grpcio raises this when it cannot bind
            raise OSError(f"cannot bind {target}: {exc}") from None
        if not port:
            raise OSError(f"cannot bind {target}")
        await server.start()
        return GrpcListener(server, [(listen.host or "::", port)])

    async def _export(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        receiver = self.receiver
        try:
            receiver.check_peer(peer_address(context.peer()))
            if self._waiting >= self.max_waiting:
                receiver.refused(Overloaded(f"{self._waiting} requests are waiting already"))
                await _abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "the agent is ingesting other requests: retry later",
                    RETRY_AFTER,
                )
            self._waiting += 1
            try:
                result = await receiver.ingest_body(body, Encoding.PROTOBUF, False)
            finally:
                self._waiting -= 1
        except BodyRejected as exc:
            receiver.refused(exc)
            code, retry = grpc.StatusCode.INVALID_ARGUMENT, None
            if isinstance(exc, SourcesUnknown):
                code, retry = grpc.StatusCode.UNAVAILABLE, RETRY_AFTER
            elif isinstance(exc, UntrustedSource):
                code = grpc.StatusCode.PERMISSION_DENIED
            await _abort(context, code, str(exc), retry)
        rejected, message = receiver.answer(result)
        return encode_response(rejected, message, Encoding.PROTOBUF).body


class Overloaded(BodyRejected):
    reason = "otlp_overloaded"


async def _abort(
    context: grpc.aio.ServicerContext[bytes, bytes],
    code: grpc.StatusCode,
    message: str,
    retry_after: float | None,
) -> NoReturn:
    """End the call with `code`, and a google.rpc.Status (with a RetryInfo) in the trailers.
    The RetryInfo goes in a trailer of its own too: the Collector and the Go SDK read the
    Status' details, the Python SDK reads `google.rpc.retryinfo-bin`."""
    trailers: list[tuple[str, bytes]] = [
        (_STATUS_DETAILS, encode_grpc_status(code.value[0], message, retry_after))
    ]
    if retry_after is not None:
        trailers.append((_RETRY_INFO, encode_retry_info(retry_after)))
    await context.abort(code, message, trailing_metadata=tuple(trailers))
    raise AssertionError("unreachable: abort raises")


def peer_address(peer: str) -> str:
    """The IP address in grpcio's peer string (`ipv4:10.0.0.1:4711`, `ipv6:[::1]:4711`,
    URL-escaped in places); '' for any other kind of peer (a unix socket)."""
    kind, _, rest = peer.partition(":")
    rest = rest.replace("%5B", "[").replace("%5D", "]").replace("%25", "%")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


__all__ = ["METHOD", "GrpcListener", "GrpcReceiver", "peer_address"]
