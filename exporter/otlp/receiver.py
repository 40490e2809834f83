"""The OTLP/HTTP receiver on --otlp-listen: `POST /v1/metrics`, answered as the OTLP/HTTP
spec asks, with bodies decoded and points ingested on one worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import hdrs, web

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
    request_encoding,
)
from exporter.otlp.points import (
    DEFAULT_METRICS,
    HistogramIngest,
    IngestLimits,
    IngestResult,
    LatencyDelta,
    Outcome,
    Resolver,
)
from exporter.settings import ListenAddress

log = logging.getLogger(__name__)

Sink = Callable[[LatencyDelta], None]
PATH = "/v1/metrics"
_READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ReceiverLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # before and after decompression
    ingest: IngestLimits = field(default_factory=IngestLimits)


class OtlpReceiver:
    """Receives client histograms and hands each stream's delta to `sink`, on the event
    loop's thread, in the order the requests were ingested.

    Decoding and ingesting run on a single worker thread: a 20 MiB body takes a good part
    of a second to decode and must not stall the prober's schedule, and one thread keeps
    the per-stream state free of locks. The sink is called back on the loop, so it needs no
    locking either.
    """

    def __init__(
        self,
        resolve: Resolver,
        sink: Sink,
        *,
        metrics: Iterable[str] = DEFAULT_METRICS,
        limits: ReceiverLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.limits = limits or ReceiverLimits()
        self.sink = sink
        self.clock = clock
        self.ingest = HistogramIngest(
            resolve,
            started_unix_nano=wall_clock_ns(),
            metrics=metrics,
            limits=self.limits.ingest,
        )
        self._dropped: dict[str, int] = {}
        self._log = LogOnce(log)
        self._worker: ThreadPoolExecutor | None = None

    # -- what the metrics read ---------------------------------------------------------

    def outcomes(self) -> Mapping[str, int]:
        """Data points by outcome, for tailwatch_otlp_datapoints_total."""
        return {outcome.value: n for outcome, n in self.ingest.outcomes.items()}

    def dropped(self) -> Mapping[str, int]:
        """Requests refused as a whole, by reason, for tailwatch_dropped_total: their data
        points cannot be counted, since they were never read."""
        return dict(self._dropped)

    # -- HTTP --------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The application. Serve it with `auto_decompress=False`, as `start` does: aiohttp
        would otherwise inflate gzip bodies itself, before the receiver's capped inflate."""
        app = web.Application()
        app.router.add_post(PATH, self._export)
        app.on_cleanup.append(self._stop_worker)
        return app

    async def start(self, listen: ListenAddress) -> web.AppRunner:
        """Serve the receiver on `listen`; raises OSError if the address cannot be bound.
        `await runner.cleanup()` stops it and its worker thread."""
        runner = web.AppRunner(
            self.build_app(), access_log=None, handle_signals=False, auto_decompress=False
        )
        await runner.setup()
        site = web.TCPSite(runner, host=listen.host or None, port=listen.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    async def _stop_worker(self, _: web.Application) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
            self._worker = None

    async def _export(self, request: web.Request) -> web.Response:
        encoding = Encoding.JSON  # for a 415, when the request's own is unknown
        try:
            encoding = request_encoding(request.headers.get(hdrs.CONTENT_TYPE))
            compressed = check_content_encoding(request.headers.get(hdrs.CONTENT_ENCODING))
            body = await self._read_body(request)
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="otlp-ingest")
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._worker, self._decode_and_ingest, loop, body, encoding, compressed
            )
        except BodyRejected as exc:
            self._dropped[exc.reason] = self._dropped.get(exc.reason, 0) + 1
            self._log.warning(exc.reason, "OTLP request refused (%d): %s", exc.status, exc)
            return _respond(exc.status, encode_status(str(exc), encoding))

        for kind, (outcome, _, message) in result.problems.items():
            self._log.warning(f"otlp_{kind}", "OTLP data points %s: %s", outcome.value, message)
        if result.rejected and not result.outcomes[Outcome.ACCEPTED]:
            # Nothing of it could be used: a plain 400 that the client's SDK logs as an
            # error, rather than a 200 that SDKs tend to log quietly.
            return _respond(400, encode_status(result.error_message(), encoding))
        message = result.error_message() if result.rejected else ""
        return _respond(200, encode_response(result.rejected, message, encoding))

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.limits.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge(
                f"body of {request.content_length} bytes is over the limit of {limit} bytes"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

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
        if result.deltas:
            loop.call_soon_threadsafe(self._deliver, result.deltas)
        return result

    def _deliver(self, deltas: Sequence[LatencyDelta]) -> None:
        for delta in deltas:
            try:
                self.sink(delta)
            except Exception as exc:  # a bug downstream must not take the receiver with it
                self._log.warning("otlp_sink_error", "OTLP latency sink failed: %r", exc)


def _respond(status: int, encoded: EncodedBody) -> web.Response:
    return web.Response(status=status, body=encoded.body, content_type=encoded.content_type)
