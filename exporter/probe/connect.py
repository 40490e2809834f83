"""One probe over a new connection: a TCP connect, or a minimal HTTP/1.1 GET.

Every probe opens its own connection and closes it (`Connection: close`), so it measures
what a short-lived client sees: the TCP handshake, kube-proxy's choice of an endpoint for
that connection, and the full response. Errors become a `FailureReason`, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


def _request(target: ProbeTarget) -> bytes:
    return (
        f"GET {target.path} HTTP/1.1\r\n"
        f"Host: {target.host_port}\r\n"
        f"User-Agent: tailwatch-prober/{__version__}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii", "replace")


async def _read_headers(reader: asyncio.StreamReader) -> tuple[int, int | None, bool]:
    """Status code, Content-Length (None if absent) and whether the body is chunked."""
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _BadResponse(f"not an HTTP/1.x status line: {line[:40]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    size = len(line)
    while True:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise _BadResponse(f"headers over {MAX_HEADER_BYTES} bytes")
        if line in (b"\r\n", b"\n"):
            return status, length, chunked
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            if not value.strip().isdigit():
                raise _BadResponse("bad Content-Length")
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True


async def _read_chunked(reader: asyncio.StreamReader, budget: int) -> None:
    while budget > 0:
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadResponse("bad chunk size") from None
        if size == 0:
            while (line := await reader.readline()) not in (b"\r\n", b"\n"):  # trailers
                if not line:
                    return  # closed after the last chunk: the body is complete
            return
        if size > budget:
            return  # read enough: a health check's body is small
        await reader.readexactly(size + 2)
        budget -= size


async def _read_body(
    reader: asyncio.StreamReader, status: int, length: int | None, chunked: bool
) -> None:
    if status in (204, 304):
        return
    if chunked:
        await _read_chunked(reader, MAX_BODY_BYTES)
    elif length is not None:
        await reader.readexactly(min(length, MAX_BODY_BYTES))
    else:  # delimited by the server closing: Connection: close
        budget = MAX_BODY_BYTES
        while budget > 0 and (data := await reader.read(budget)):
            budget -= len(data)


async def probe_http(target: ProbeTarget, clock_ns: ClockNs) -> ProbeOutcome:
    """GET `target.path` on a new connection and read the whole response (body up to
    MAX_BODY_BYTES). Success is a status in 200-399, like a kubelet HTTP probe."""
    try:
        reader, writer = await asyncio.open_connection(
            target.address, target.port, limit=MAX_HEADER_BYTES
        )
    except OSError as exc:
        return failure_of(exc)
    outcome: ProbeOutcome
    try:
        writer.write(_request(target))
        status, length, chunked = await _read_headers(reader)
        await _read_body(reader, status, length, chunked)
        completed = clock_ns()
        if 200 <= status < 400:
            outcome = ProbeOutcome(completed_ns=completed)
        else:
            outcome = ProbeOutcome(FailureReason.BAD_STATUS, f"HTTP {status}", completed)
    except asyncio.IncompleteReadError:
        outcome = ProbeOutcome(FailureReason.RESET, "connection closed before a full response")
    except (_BadResponse, asyncio.LimitOverrunError, ValueError) as exc:
        # StreamReader.readline raises ValueError for a line over its limit
        outcome = ProbeOutcome(FailureReason.BAD_RESPONSE, str(exc)[:200])
    except OSError as exc:
        outcome = failure_of(exc)
    finally:
        writer.close()
    with contextlib.suppress(OSError):  # reset while closing: the outcome is already known
        await writer.wait_closed()
    return outcome
