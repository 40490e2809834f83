"""The OTLP/HTTP receiver on --otlp-listen: `POST /v1/metrics`, answered as the OTLP/HTTP
spec asks, with bodies decoded and points ingested on one worker thread, off the event loop.

Who may send (`--otlp-sources`): with `local` (the default), only the pods of this node and
the node itself (`LocalSources`); others get 403, or a retryable 503 while the agent may not
know every pod's address yet. No client can hold the receiver: besides
the deadlines of every listener (exporter.server: request heads, idle connections, a whole
request), a request body must arrive within `BODY_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from exporter.core.pods import TERMINAL_PHASES, PodSnapshot
from exporter.httpserver import App, Listener, Request, Response
from exporter.logs import LogOnce
from exporter.otlp.decode import (
    DEFAULT_MAX_BODY_BYTES,
    BodyRejected,
    BodyTooLarge,
    EncodedBody,
    Encoding,
    check_content_encoding,
    decode_request,
    encode_response,
    encode_status,
    inflate,
    request_encoding,
)
from exporter.otlp.points import (
    DEFAULT_METRICS,
    HistogramIngest,
    IngestLimits,
    IngestResult,
    LatencyDelta,
    Resolver,
)
from exporter.server import Timeouts, serve
from exporter.settings import ListenAddress

log = logging.getLogger(__name__)

Sink = Callable[[LatencyDelta], None]
PATH = "/v1/metrics"
#: A request this small once decoded (~140 data points) is decoded and ingested on the
#: event loop, when the worker has nothing queued: ~4 ms of work, no longer than the GIL's
#: switch interval for which the worker thread would hold the loop anyway, and without the
#: thread's three hand-offs and wake-ups (docs/performance.md, "Cost").
INLINE_DECODED_BYTES = 64 * 1024

#: A whole request body must arrive within this, or the request is answered 408, its
#: connection closed and counted (otlp_body_timeout). The largest body (20 MiB) in 30 s is
#: 0.7 MB/s: far below what a pod on the node sends at.
BODY_TIMEOUT = 30.0
#: The OTLP listener's deadlines (exporter.server): a request may take its body's deadline
#: and then wait for the worker behind other large bodies.
OTLP_TIMEOUTS = Timeouts(request=2 * BODY_TIMEOUT)
#: Retry-After of a 503 while the node's pods are not listed yet (--otlp-sources=local).
RETRY_AFTER = "2"
#: Seconds after a pod of the node was first seen without an IP during which an unknown
#: source gets a retryable 503, not a 403: the pod's IP may be on its way (the pod exports
#: before the watch delivered it), and OTLP SDKs do not retry a 403.
IP_GRACE = 30.0


@dataclass(frozen=True)
class ReceiverLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # before and after decompression
    ingest: IngestLimits = field(default_factory=IngestLimits)
    body_timeout: float = BODY_TIMEOUT
    timeouts: Timeouts = OTLP_TIMEOUTS


class BodyTimeout(BodyRejected):
    status = 408
    reason = "otlp_body_timeout"


class UntrustedSource(BodyRejected):
    status = 403
    reason = "otlp_untrusted_source"


class SourcesUnknown(BodyRejected):
    """The node's pods are not listed yet: a retryable 503, not a 403 that loses the data."""

    status = 503
    reason = "otlp_sources_unknown"


class SourcePolicy(Protocol):
    """Who may send OTLP (None in OtlpReceiver: anyone)."""

    def allows(self, address: str) -> bool: ...

    def known(self) -> bool:
        """False while the policy cannot tell yet (refusals are then retryable)."""
        ...


class _WatchHandler(Protocol):  # exporter.kube.watching.WatchHandler
    def on_list(self, items: list[Mapping[str, Any]]) -> None: ...

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None: ...


@functools.lru_cache(maxsize=4096)  # a rebuild after pod churn re-parses no address it saw
def normalize_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of a peer or of a pod status, as compared: an IPv4-mapped IPv6 address
    (`::ffff:a.b.c.d`, how a dual-stack socket shows an IPv4 peer) is its IPv4 address and
    a zone (`%eth0`) is dropped. None if `text` is not an address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0].strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: The node's own loopback addresses: a process on the node (or a hostNetwork pod) that
#: dials the receiver on loopback. Exactly these two, not all of 127.0.0.0/8.
LOOPBACK = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})


class LocalSources:
    """`--otlp-sources=local`: the IPs of the pods on this node (status.podIPs; a hostNetwork
    pod's is the node's), the node's own addresses (every pod's status.hostIPs) and the
    node's loopback (127.0.0.1 and ::1).

    A request is checked in O(1): the set is built again only after the pods changed (the
    pod watch, wrapped by `watching`, marks it stale), at the first request after that.
    The pods are those the agent's PodLifecycleTracker holds (`pods`); `synced` says
    whether the pod watch has listed them and is up now.

    An address not in the set is refused for good (403) only when the set can be trusted to
    be complete: the watch is synced and up, and no pod of the node has been waiting for its
    IP for less than `grace` seconds (`clock`, monotonic; a pod is seen waiting when the set
    is built). Otherwise it may be a new pod's whose IP the watch has not delivered yet:
    `known()` is False, and the refusal is a retryable 503.
    """

    def __init__(
        self,
        pods: Callable[[], Iterable[PodSnapshot]],
        synced: Callable[[], bool] = lambda: True,
        *,
        grace: float = IP_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pods = pods
        self._synced = synced
        self._grace = grace
        self._clock = clock
        self._allowed: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] | None = None
        self._waiting: dict[str, float] = {}  # uid -> when first seen without an IP
        self._grace_until = -math.inf
        self.rebuilds = 0

    def changed(self) -> None:
        """The pods changed: the set is built again at the next request."""
        self._allowed = None

    def watching(self, handler: _WatchHandler) -> _WatchHandler:
        """`handler` (the pod watch), telling this policy of every change it applies."""
        return _Invalidating(handler, self)

    def known(self) -> bool:
        if not self._synced():
            return False
        if self._allowed is None:
            self._allowed = self._build()
        return self._clock() >= self._grace_until

    def allows(self, address: str) -> bool:
        peer = normalize_address(address)
        if peer is None:
            return False
        if peer in LOOPBACK:
            return True
        if self._allowed is None:
            self._allowed = self._build()
        return peer in self._allowed

    def _build(self) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        self.rebuilds += 1
        allowed = set()
        now = self._clock()
        waiting: dict[str, float] = {}
        for pod in self._pods():
            if not pod.pod_ips and not pod.deleting and pod.phase not in TERMINAL_PHASES:
                waiting[pod.uid] = self._waiting.get(pod.uid, now)
            for text in (*pod.pod_ips, *pod.host_ips):
                address = normalize_address(text)
                if address is not None:
                    allowed.add(address)
        self._waiting = waiting
        self._grace_until = max(waiting.values(), default=-math.inf) + self._grace
        return frozenset(allowed)


@dataclass
class _Invalidating:
    handler: _WatchHandler
    sources: LocalSources

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        try:
            self.handler.on_list(items)
        finally:
            self.sources.changed()

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        try:
            self.handler.on_event(event_type, obj)
        finally:
            self.sources.changed()


P = ParamSpec("P")
T = TypeVar("T")


class _DaemonWorker(Executor):
    """One daemon thread running the submitted calls in order. The interpreter waits at exit
    for a ThreadPoolExecutor's threads, not for this one: a large body being decoded when
    SIGTERM comes is abandoned rather than finished, and the exit stays bounded."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while (item := self._queue.get_nowait()) is not None:
                    item[0].cancel()
        self._queue.put(None)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)


class OtlpReceiver:
    """Receives client histograms and hands each stream's delta to `sink`, on the event
    loop's thread, in the order the requests were ingested.

    Decoding and ingesting run on a single worker thread: a 20 MiB body takes a good part
    of a second to decode and must not stall the prober's schedule, and one thread keeps
    the per-stream state free of locks. A small request (INLINE_DECODED_BYTES) that finds
    the worker with nothing queued is decoded and ingested on the loop instead: the usual
    export of a few hundred points then costs no thread hand-offs. The sink is called back
    on the loop, so it needs no locking either.

    `sources` decides who may send (LocalSources for --otlp-sources=local); None: anyone.
    """

    def __init__(
        self,
        resolve: Resolver,
        sink: Sink,
        *,
        metrics: Iterable[str] = DEFAULT_METRICS,
        limits: ReceiverLimits | None = None,
        sources: SourcePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.limits = limits or ReceiverLimits()
        self.sink = sink
        self.sources = sources
        self.clock = clock
        self.ingest = HistogramIngest(
            resolve,
            started_unix_nano=wall_clock_ns(),
            metrics=metrics,
            limits=self.limits.ingest,
        )
        self._dropped: dict[str, int] = {}
        self._log = LogOnce(log)
        self._worker: _DaemonWorker | None = None
        self._queued = 0  # requests handed to the worker and not ingested yet

    # -- what the metrics read ---------------------------------------------------------

    def outcomes(self) -> Mapping[str, int]:
        """Data points by outcome, for tailwatch_otlp_datapoints_total."""
        return {outcome.value: n for outcome, n in self.ingest.outcomes.items()}

    def dropped(self) -> Mapping[str, int]:
        """Requests refused as a whole, by reason, for tailwatch_dropped_total: their data
        points cannot be counted, since they were never read."""
        return dict(self._dropped)

    # -- HTTP --------------------------------------------------------------------------

    def build_app(self) -> App:
        """The application: gzip request bodies reach the receiver as sent, and are inflated
        by its own capped inflate."""
        app = App()
        app.add("POST", PATH, self._export)
        app.on_cleanup.append(self._stop_worker)
        return app

    async def start(self, listen: ListenAddress) -> Listener:
        """Serve the receiver on `listen`; raises OSError if the address cannot be bound.
        `await listener.cleanup()` stops it and its worker thread, within about 1 s whatever
        the clients are doing."""
        return await serve(
            self.build_app(),
            listen,
            name="otlp",
            count=self._count,
            timeouts=self.limits.timeouts,
        )

    async def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None

    def _count(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def refused(self, exc: BodyRejected) -> None:
        """A request refused as a whole: counted in tailwatch_dropped_total, logged once."""
        self._count(exc.reason)
        self._log.warning(exc.reason, "OTLP request refused (%d): %s", exc.status, exc)

    async def _export(self, request: Request) -> Response:
        encoding = Encoding.JSON  # for a refusal, when the request's own is unknown
        with contextlib.suppress(BodyRejected):
            encoding = request_encoding(request.headers.get("content-type"))
        try:
            # The source first: a stranger learns nothing else of its request.
            self.check_peer(request.peer)
            encoding = request_encoding(request.headers.get("content-type"))
            compressed = check_content_encoding(request.headers.get("content-encoding"))
            body = await self._read_body(request)
            result = await self.ingest_body(body, encoding, compressed)
        except BodyRejected as exc:
            self.refused(exc)
            response = _respond(exc.status, encode_status(str(exc), encoding))
            if isinstance(exc, BodyTimeout):
                # Closed at once: the rest of a body that stalled is not waited for.
                response.close, response.linger = True, False
            elif isinstance(exc, UntrustedSource):
                response.close = True  # no kept-alive connection for a stranger
            elif isinstance(exc, SourcesUnknown):
                response.headers["Retry-After"] = RETRY_AFTER
            return response

        rejected, message = self.answer(result)
        return _respond(200, encode_response(rejected, message, encoding))

    async def ingest_body(self, body: bytes, encoding: Encoding, compressed: bool) -> IngestResult:
        """A request body decoded and ingested, on the loop when it is small and the worker
        idle, else on the worker; raises `BodyRejected`. The HTTP and gRPC paths share it,
        so both keep requests in the order they came and the stream state on one thread."""
        result = self._ingest_here(body, encoding, compressed) if not self._queued else None
        if result is None:
            result = await self._ingest_on_worker(body, encoding, compressed)
        return result

    def answer(self, result: IngestResult) -> tuple[int, str]:
        """(rejected_data_points, error_message) of a decoded request's answer, its problems
        logged once per kind.

        A decoded request is always a success (HTTP 200, gRPC OK), with `partial_success`
        when points were rejected, even all of them: the OTLP spec keeps errors for requests
        that cannot be processed, and an exporter (a Collector's above all) treats a 400
        as permanent and drops the whole batch, the points of every other metric and
        Service with it, and counts it as a failed export. Why points were rejected is
        in the message (each kind of problem with its first instance) and in
        tailwatch_otlp_datapoints_total{outcome}."""
        for kind, (outcome, _, message) in result.problems.items():
            self._log.warning(f"otlp_{kind}", "OTLP data points %s: %s", outcome.value, message)
        rejected = result.rejected
        return rejected, result.error_message() if rejected else ""

    def check_peer(self, address: str) -> None:
        """Raises `UntrustedSource` or `SourcesUnknown` unless the peer may send; the address
        is the socket's own (never a header's)."""
        if self.sources is None:
            return
        if self.sources.allows(address):
            return
        if not self.sources.known():
            raise SourcesUnknown(
                f"{address} is not known yet as a pod of this node: the agent's list of them "
                "is not complete yet (not listed, the watch reconnecting, or a new pod without "
                "its IP yet); retry"
            )
        raise UntrustedSource(
            f"{address or 'an unknown address'} is neither a pod of this node nor the node "
            "(--otlp-sources=local)"
        )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(
                f"body of {request.content_length} bytes is over the limit of {limit} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        timeout = self.limits.body_timeout
        try:
            async with asyncio.timeout(timeout):
                async for chunk in request.chunks():
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(f"body is over the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            declared = request.content_length
            of = f" of {declared}" if declared is not None else ""
            raise BodyTimeout(
                f"the body did not arrive within {timeout:g}s ({size}{of} bytes did)"
            ) from None
        return b"".join(chunks)

    def _ingest_here(
        self, body: bytes, encoding: Encoding, compressed: bool
    ) -> IngestResult | None:
        """A small request, decoded and ingested on the event loop; None if it is not small
        (INLINE_DECODED_BYTES). Only when the worker has nothing queued: requests are
        ingested in the order they came, and the stream state is never shared."""
        if len(body) > INLINE_DECODED_BYTES:
            return None
        limit = self.limits.max_body_bytes
        decoded: bytes | bytearray = body
        if compressed:
            try:
                decoded = inflate(body, min(INLINE_DECODED_BYTES, limit))
            except BodyTooLarge:
                if limit > INLINE_DECODED_BYTES:
                    return None  # large once inflated: the worker's
                raise
        request = decode_request(decoded, encoding, max_bytes=limit)
        result = self.ingest.ingest(request, self.clock())
        if result.pieces:
            self._deliver(result.merged())
        return result

    async def _ingest_on_worker(
        self, body: bytes, encoding: Encoding, compressed: bool
    ) -> IngestResult:
        if self._worker is None:
            self._worker = _DaemonWorker("otlp-ingest")
        loop = asyncio.get_running_loop()
        self._queued += 1
        try:
            return await loop.run_in_executor(
                self._worker, self._decode_and_ingest, loop, body, encoding, compressed
            )
        finally:
            self._queued -= 1

    def _decode_and_ingest(
        self, loop: asyncio.AbstractEventLoop, body: bytes, encoding: Encoding, compressed: bool
    ) -> IngestResult:
        """On the worker thread. The deltas go to the loop from here, not from the handler,
        so a request whose handler is cancelled (the client went away) still delivers what
        its points changed in the stream state."""
        request = decode_request(
            body, encoding, compressed=compressed, max_bytes=self.limits.max_body_bytes
        )
        result = self.ingest.ingest(request, self.clock())
        if result.pieces:
            loop.call_soon_threadsafe(self._deliver, result.merged())
        return result

    def _deliver(self, deltas: Sequence[LatencyDelta]) -> None:
        for delta in deltas:
            try:
                self.sink(delta)
            except Exception as exc:  # a bug downstream must not take the receiver with it
                self._log.warning("otlp_sink_error", "OTLP latency sink failed: %r", exc)


def _respond(status: int, encoded: EncodedBody) -> Response:
    return Response(status, encoded.body, encoded.content_type)
