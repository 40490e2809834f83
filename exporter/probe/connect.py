"""One probe over a new connection: a TCP connect, or a minimal HTTP/1.1 GET.

Every probe opens its own connection and closes it (`Connection: close`), so it measures
what a short-lived client sees: the TCP handshake, kube-proxy's choice of an endpoint for
that connection, and the full response. Errors become a `FailureReason`, never an exception.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from exporter import __version__
from exporter.core.probing import FailureReason, ProbeTarget

#: Bounds on what a probe reads: a health endpoint answers in far less.
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

ClockNs = Callable[[], int]

_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN}


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    reason: FailureReason | None = None  # None: success
    detail: str = ""
    completed_ns: int | None = None  # when the answer was complete, before closing


ProbeFunction = Callable[[ProbeTarget, ClockNs], Awaitable[ProbeOutcome]]


class _BadResponse(Exception):
    pass


def failure_of(exc: OSError) -> ProbeOutcome:
    """The failure reason of a socket error."""
    if isinstance(exc, ConnectionRefusedError):
        reason = FailureReason.REFUSED
    elif isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        reason = FailureReason.RESET
    elif isinstance(exc, TimeoutError):  # the kernel's ETIMEDOUT
        reason = FailureReason.TIMEOUT
    elif exc.errno in _UNREACHABLE:
        reason = FailureReason.UNREACHABLE
    else:
        reason = FailureReason.ERROR
    return ProbeOutcome(reason, exc.strerror or type(exc).__name__)


async def probe_target(target: ProbeTarget, clock_ns: ClockNs) -> ProbeOutcome:
    """Probe `target` once with its protocol."""
    if target.protocol == "http":
        return await probe_http(target, clock_ns)
    return await probe_tcp(target, clock_ns)


async def probe_tcp(target: ProbeTarget, clock_ns: ClockNs) -> ProbeOutcome:
    """Connect, then close: success is an established connection."""
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_connection(asyncio.Protocol, target.address, target.port)
    except OSError as exc:
        return failure_of(exc)
    completed = clock_ns()
    transport.close()
    return ProbeOutcome(completed_ns=completed)


@functools.lru_cache(maxsize=4096)
def _request(target: ProbeTarget) -> bytes:
    return (
        f"GET {target.path} HTTP/1.1\r\n"
        f"Host: {target.host_port}\r\n"
        f"User-Agent: tailwatch-prober/{__version__}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii", "replace")


class _State(enum.Enum):
    STATUS = enum.auto()
    HEADERS = enum.auto()
    LENGTH = enum.auto()  # a body of Content-Length bytes (up to MAX_BODY_BYTES)
    UNTIL_CLOSE = enum.auto()  # a body that the server's close ends
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    TRAILERS = enum.auto()


class _HttpExchange(asyncio.Protocol):
    """One probe's connection as a protocol: it sends the request when connected and
    parses the response as it arrives, resolving `done` once the response is whole (or
    cannot be). A protocol rather than asyncio's streams: no reader, writer and their
    awaits per line, a third less CPU per probe on the agent's loop (docs/performance.md,
    "Cost"); what a probe reads and how it judges is the same."""

    def __init__(self, request: bytes, clock_ns: ClockNs, done: asyncio.Future[ProbeOutcome]):
        self._request = request
        self._clock_ns = clock_ns
        self._done = done
        self._buffer = bytearray()
        self._state = _State.STATUS
        self._status = 0
        self._length: int | None = None
        self._chunked = False
        self._header_bytes = 0
        self._remaining = 0  # bytes still to read of a body or a chunk (with its CRLF)
        self._budget = MAX_BODY_BYTES  # of the body, for chunks and a close-ended body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes: no isinstance here.
        cast("asyncio.WriteTransport", transport).write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        self._buffer += data
        try:
            self._advance()
        except _BadResponse as exc:
            self._finish(ProbeOutcome(FailureReason.BAD_RESPONSE, str(exc)[:200]))

    def eof_received(self) -> bool:
        self._closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError):
            self._finish(failure_of(exc))
        self._closed()

    def _closed(self) -> None:
        """The server closed: the end of a close-ended body or of trailers; else early."""
        if self._state is _State.UNTIL_CLOSE or self._state is _State.TRAILERS:
            self._complete()
        else:
            self._finish(
                ProbeOutcome(FailureReason.RESET, "connection closed before a full response")
            )

    def _finish(self, outcome: ProbeOutcome) -> None:
        if not self._done.done():
            self._done.set_result(outcome)

    def _complete(self) -> None:
        completed = self._clock_ns()
        if 200 <= self._status < 400:
            self._finish(ProbeOutcome(completed_ns=completed))
        else:
            self._finish(ProbeOutcome(FailureReason.BAD_STATUS, f"HTTP {self._status}", completed))

    def _line(self) -> bytes | None:
        """The next whole line of the buffer (with its newline), or None for now."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        if end < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise _BadResponse(f"a line over {MAX_HEADER_BYTES} bytes")
            return None
        line = bytes(buffer[: end + 1])
        del buffer[: end + 1]
        return line

    def _take(self, limit: int) -> int:
        """Drop up to `limit` bytes of body from the buffer: how many."""
        n = min(limit, len(self._buffer))
        del self._buffer[:n]
        return n

    def _advance(self) -> None:
        while not self._done.done():
            state = self._state
            if state is _State.STATUS or state is _State.HEADERS or state is _State.CHUNK_SIZE:
                line = self._line()
                if line is None:
                    return
                if state is _State.STATUS:
                    self._status_line(line)
                elif state is _State.HEADERS:
                    self._header_line(line)
                else:
                    self._chunk_size(line)
            elif state is _State.TRAILERS:
                line = self._line()
                if line is None:
                    return
                if line in (b"\r\n", b"\n"):
                    self._complete()
            elif state is _State.LENGTH:
                self._remaining -= self._take(self._remaining)
                if self._remaining:
                    return
                self._complete()
            elif state is _State.UNTIL_CLOSE:
                self._budget -= self._take(self._budget)
                if self._budget > 0:
                    return
                self._complete()  # read enough: a health check's body is small
            else:  # CHUNK_DATA
                self._remaining -= self._take(self._remaining)
                if self._remaining:
                    return
                if self._budget <= 0:
                    self._complete()
                else:
                    self._state = _State.CHUNK_SIZE

    def _status_line(self, line: bytes) -> None:
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadResponse(f"not an HTTP/1.x status line: {line[:40]!r}")
        self._status = int(parts[1])
        self._header_bytes = len(line)
        self._state = _State.HEADERS

    def _header_line(self, line: bytes) -> None:
        self._header_bytes += len(line)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _BadResponse(f"headers over {MAX_HEADER_BYTES} bytes")
        if line in (b"\r\n", b"\n"):
            self._body_starts()
            return
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _BadResponse("bad Content-Length")
            self._length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True

    def _body_starts(self) -> None:
        if self._status in (204, 304):
            self._complete()
        elif self._chunked:
            self._state = _State.CHUNK_SIZE
        elif self._length is not None:
            self._remaining = min(self._length, MAX_BODY_BYTES)
            self._state = _State.LENGTH
        else:  # delimited by the server closing: Connection: close
            self._state = _State.UNTIL_CLOSE

    def _chunk_size(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadResponse("bad chunk size") from None
        if size == 0:
            self._state = _State.TRAILERS
        elif size > self._budget:
            self._complete()  # read enough: a health check's body is small
        else:
            self._remaining = size + 2
            self._budget -= size
            self._state = _State.CHUNK_DATA


async def probe_http(target: ProbeTarget, clock_ns: ClockNs) -> ProbeOutcome:
    """GET `target.path` on a new connection and read the whole response (body up to
    MAX_BODY_BYTES). Success is a status in 200-399, like a kubelet HTTP probe."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ProbeOutcome] = loop.create_future()
    request = _request(target)
    try:
        transport, _ = await loop.create_connection(
            lambda: _HttpExchange(request, clock_ns, done), target.address, target.port
        )
    except OSError as exc:
        return failure_of(exc)
    try:
        return await done
    finally:
        transport.close()
