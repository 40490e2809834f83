"""A small HTTP/1.1 server on asyncio's Protocol: what the agent's two listeners (--listen
and --otlp-listen) need of HTTP and no more. A general framework costs the agent memory
(its modules and C extensions, mapped in every agent of every node) and CPU per request;
these listeners serve a handful of fixed routes to Prometheus, the kubelet and OTLP SDKs.

What it speaks: HTTP/1.1 and HTTP/1.0 (closed after the answer unless keep-alive is asked),
`Connection: close`, pipelined requests answered in order, request bodies by Content-Length
or chunked, `Expect: 100-continue` (the 100 is sent when the handler reads the body; an
answer given before that closes the connection, so that a body the client then holds back
is not waited for, nor one it sends anyway taken for a request). A malformed head gets 400,
a head over MAX_HEAD_BYTES 431, and the connection is closed. Reading stops while an answer
cannot be written (the client does not read) and while a body is not consumed: no client
makes the agent buffer more than about MAX_BUFFERED_BYTES per connection.

The deadlines, one at a time per connection, by what the connection is doing:

- head: from the connection's start, or from the first byte after an idle spell, to a
  complete request head: `HEADER_TIMEOUT`, then the connection is aborted and counted as
  `<name>_header_timeout` (tailwatch_dropped_total);
- busy: from a complete request head to the last byte of its answer handed to the kernel:
  `REQUEST_TIMEOUT`, then aborted and counted as `<name>_request_timeout`;
- linger: from an answer written before its request's body was read (a request refused on
  its head: the OTLP receiver's 403, 413, 415 or 503) to the body's last byte, which is read
  and thrown away: `LINGER_TIMEOUT`, then aborted (not counted). The body's bytes are not a
  new request's head; once the body is done, the connection is idle;
- idle: from an answer written (and its body done) to the next request's first byte:
  `IDLE_TIMEOUT`, then closed.

A client trickling its header a byte at a time gains nothing (data does not extend the
head's deadline), nor one that never reads its answer (the answer is written within the
request's deadline). At a deadline the connection is aborted, not closed: a close would
wait for a client that does not read to take what is still buffered for it. A TLS handshake
is bounded by `HEADER_TIMEOUT` too. `await listener.cleanup()` stops accepting, closes idle
connections at once and aborts every other one after `Timeouts.shutdown`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from exporter.logs import LogOnce

log = logging.getLogger(__name__)

#: Counts one thing refused or cut short, by its tailwatch_dropped_total reason
#: (AgentMetrics.count_dropped).
Count = Callable[[str], None]

#: A request head must be complete this long after the connection opened or after its first
#: byte arrived; so must a TLS handshake. Go's servers are commonly given the same.
HEADER_TIMEOUT = 10.0
#: A kept-alive connection without a request for this long is closed. Above the 1 minute
#: defaults of Prometheus's scrape interval and of the OpenTelemetry SDKs' export interval:
#: a client on defaults reuses its connection rather than racing its close.
IDLE_TIMEOUT = 90.0
#: From a complete request head to the last byte of its answer: the handler, the body it
#: reads and a client slow to read the answer all fit in it, or the connection is aborted.
REQUEST_TIMEOUT = 30.0
#: How long a body that was not read (a request refused on its head) is read and thrown away
#: after the answer, so that the client reads the answer rather than a connection reset.
LINGER_TIMEOUT = 2.0
#: At shutdown, every open connection gets this long (a request in flight, to finish), then
#: it is aborted; idle ones are closed at once. Both listeners stop within about 1 s,
#: well within the 5 s the agent has from SIGTERM to its exit (exporter.cli).
SHUTDOWN_GRACE = 1.0

#: A request head (request line and header fields) larger than this is refused with 431: a
#: bearer token (a service account's JWT, ~1 KiB) and the usual fields fit many times over.
MAX_HEAD_BYTES = 32 * 1024
#: Bytes read from a connection and not consumed yet (a body its handler has not taken, a
#: pipelined request) above which reading stops until they are.
MAX_BUFFERED_BYTES = 1024 * 1024
_MAX_CHUNK_LINE = 1024  # a chunk-size line with its extensions, or a trailer field


@dataclass(frozen=True)
class Timeouts:
    """The deadlines of one listener: the module's constants, unless a test shrinks them."""

    header: float = HEADER_TIMEOUT
    idle: float = IDLE_TIMEOUT
    request: float = REQUEST_TIMEOUT
    linger: float = LINGER_TIMEOUT
    shutdown: float = SHUTDOWN_GRACE


class BadRequest(Exception):
    """The request cannot be understood (its head, or a chunked body's framing): answered
    with `status` and the connection closed, since where the next request starts is lost."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- requests and answers -------------------------------------------------------------------


class Response:
    """An answer: written with one `transport.write` of its head and body.

    `close`: the connection is closed after it; a body not read yet is still read and thrown
    away for the linger deadline first (so that the client reads the answer, not a reset),
    unless `linger` is False (the body stalled: waiting for it is pointless)."""

    __slots__ = ("body", "close", "content_type", "headers", "linger", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
        *,
        close: bool = False,
        linger: bool = True,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers) if headers else {}
        self.close = close
        self.linger = linger


def text_response(
    text: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(status, text.encode(), headers=headers)


Handler = Callable[["Request"], Awaitable[Response]]
#: Wraps every request's handler (exporter.auth.KubernetesAuth): it may answer instead.
Middleware = Callable[["Request", Handler], Awaitable[Response]]


class Request:
    """One request: its head parsed, its body read on demand (`chunks`, `read`).

    `headers` are keyed by lower-cased name; a repeated field's values are joined with ", ".
    `path` is percent-decoded, `route` the path of the route that serves the request (None:
    none does, the answer is 404 or 405). `peer` is the socket's peer address."""

    __slots__ = (
        "_body",
        "_connection",
        "content_length",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "route",
        "version",
    )

    def __init__(
        self,
        connection: _Connection,
        *,
        method: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        body: _Body | None,
    ) -> None:
        self._connection = connection
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self._body = body
        self.content_length = body.remaining if body is not None and body.length else None
        self.peer = connection.peer
        self.route: str | None = None
        if version == "HTTP/1.1":
            self.keep_alive = "close" not in headers.get("connection", "").lower()
        else:
            self.keep_alive = "keep-alive" in headers.get("connection", "").lower()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (none for a request without a body). Raises
        BadRequest on a chunked body's bad framing, ConnectionError if the client went."""
        body = self._body
        if body is None:
            return
        self._connection.reading_body(body)
        while True:
            if body.parts:
                yield self._connection.take(body)
            elif body.error is not None:
                raise body.error
            elif body.done:
                return
            else:
                await self._connection.wait_for_body(body)

    async def read(self) -> bytes:
        """The whole body (see `chunks`): for small bodies; the OTLP receiver reads its own
        with a limit."""
        return b"".join([chunk async for chunk in self.chunks()])


class App:
    """Routes by exact path and method; a GET route answers HEAD too (without the body).
    `middleware` wraps every handler, including the 404 and 405 answers."""

    def __init__(self, middleware: Middleware | None = None) -> None:
        self.middleware = middleware
        self.routes: dict[str, dict[str, Handler]] = {}
        self.on_cleanup: list[Callable[[], Awaitable[None]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes.setdefault(path, {})[method] = handler
        if method == "GET":
            self.routes[path]["HEAD"] = handler

    async def dispatch(self, request: Request) -> Response:
        methods = self.routes.get(request.path)
        handler: Handler
        if methods is None:
            handler = _not_found
        elif (found := methods.get(request.method)) is None:
            allow = ", ".join(methods)

            async def not_allowed(_: Request) -> Response:
                return Response(405, b"Method Not Allowed\n", headers={"Allow": allow})

            handler = not_allowed
        else:
            request.route = request.path
            handler = found
        if self.middleware is None:
            return await handler(request)
        return await self.middleware(request, handler)


async def _not_found(_: Request) -> Response:
    return Response(404, b"Not Found\n")


# -- the listener ---------------------------------------------------------------------------


class Listener:
    """A listening socket and its connections. `addresses` are the bound socket addresses;
    `await cleanup()` stops serving within about `Timeouts.shutdown` whatever the clients
    are doing, then runs the app's `on_cleanup` callbacks."""

    def __init__(self, server: asyncio.Server, guard: _Guard, app: App) -> None:
        self._server = server
        self._guard = guard
        self._app = app
        self.addresses = [sock.getsockname() for sock in server.sockets]
        self._cleaned = False

    @property
    def connections(self) -> int:
        return len(self._guard.connections)

    async def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        self._server.close()
        await self._guard.closing()
        for callback in self._app.on_cleanup:
            await callback()


async def serve(
    app: App,
    host: str | None,
    port: int,
    *,
    name: str,
    count: Count | None = None,
    timeouts: Timeouts,
    tls: ssl.SSLContext | None = None,
) -> Listener:
    """Serve `app` on host:port with the deadlines of `timeouts` on every connection (counted
    as `<name>_header_timeout` and `<name>_request_timeout`), over TLS with `tls`. Raises
    OSError if the address cannot be bound."""
    loop = asyncio.get_running_loop()
    guard = _Guard(name, timeouts, count or (lambda _: None), app, loop)
    options: dict[str, Any] = {}
    if tls is not None:
        options = {
            "ssl": tls,
            "ssl_handshake_timeout": timeouts.header,
            "ssl_shutdown_timeout": timeouts.linger,
        }
    server = await loop.create_server(lambda: _Connection(guard), host, port, **options)
    return Listener(server, guard, app)


# -- connections ----------------------------------------------------------------------------

_HEAD, _BUSY, _LINGER, _IDLE, _CLOSING = "head", "busy", "linger", "idle", "closing"


@dataclass(eq=False)
class _Guard:
    """What the connections of one listener share: its name, deadlines, counter and app."""

    name: str
    timeouts: Timeouts
    count: Count
    app: App
    loop: asyncio.AbstractEventLoop
    log: LogOnce = field(default_factory=lambda: LogOnce(log))
    connections: set[_Connection] = field(default_factory=set)
    stopping: bool = False
    _gone: asyncio.Event | None = None

    def lost(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.connections and self._gone is not None:
            self._gone.set()

    async def closing(self) -> None:
        """The listener stops: idle connections are closed now; every other one gets
        `timeouts.shutdown` more, whatever its phase, then it is aborted."""
        self.stopping = True
        self._gone = asyncio.Event()
        for connection in list(self.connections):
            connection.close_within(self.timeouts.shutdown)
        if self.connections:
            # The abort is the deadline's; this bound only guards against a lost callback.
            try:
                async with asyncio.timeout(self.timeouts.shutdown + 1.0):
                    await self._gone.wait()
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()

    def expired(self, phase: str, peer: object) -> None:
        reason = f"{self.name}_{'header' if phase == _HEAD else 'request'}_timeout"
        self.count(reason)
        seconds = self.timeouts.header if phase == _HEAD else self.timeouts.request
        what = "a request head" if phase == _HEAD else "a request and its answer"
        self.log.warning(
            reason, "closed a connection from %s: %s took over %gs", peer, what, seconds
        )


class _Body:
    """A request body as it is read off the connection's buffer: by Content-Length
    (`length`, `remaining` bytes to come) or chunked (`chunk` bytes left of the current
    chunk; -1 before a size line, -2 in the trailer)."""

    __slots__ = (
        "chunk",
        "discard",
        "done",
        "error",
        "expect_continue",
        "length",
        "parts",
        "pending",
        "remaining",
        "started",
        "waiter",
    )

    def __init__(self, length: int | None, expect_continue: bool) -> None:
        self.length = length is not None
        self.remaining = length or 0
        self.chunk = -1
        self.done = length == 0
        self.parts: list[bytes] = []
        self.pending = 0  # bytes in `parts`
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.discard = False  # lingering: read and thrown away
        self.expect_continue = expect_continue  # and the 100 not sent yet
        self.started = False  # the handler asked for it

    def feed(self, buffer: bytearray) -> bool:
        """Take what belongs to the body from the front of `buffer`; True once it is all
        there."""
        if self.length:
            take = min(self.remaining, len(buffer))
            if take:
                if not self.discard:
                    self._add(bytes(buffer[:take]))
                del buffer[:take]
                self.remaining -= take
            self.done = self.remaining == 0
            return self.done
        while not self.done and buffer:
            if self.chunk > 0:
                take = min(self.chunk, len(buffer))
                if not self.discard:
                    self._add(bytes(buffer[:take]))
                del buffer[:take]
                self.chunk -= take
                if self.chunk == 0:
                    self.chunk = -3  # the CRLF after the data
            elif self.chunk == -3:
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise BadRequest("chunked body: no CRLF after a chunk's data")
                del buffer[:2]
                self.chunk = -1
            else:
                end = buffer.find(b"\r\n", 0, _MAX_CHUNK_LINE)
                if end < 0:
                    if len(buffer) >= _MAX_CHUNK_LINE:
                        raise BadRequest("chunked body: a chunk-size or trailer line too long")
                    break
                line = bytes(buffer[:end])
                del buffer[: end + 2]
                if self.chunk == -2:  # the trailer, up to an empty line; its fields ignored
                    self.done = not line
                    continue
                size = line.split(b";", 1)[0].strip()
                if not size or size.strip(b"0123456789abcdefABCDEF"):
                    raise BadRequest("chunked body: a bad chunk size")
                self.chunk = int(size, 16)
                if self.chunk == 0:
                    self.chunk = -2
        return self.done

    def _add(self, data: bytes) -> None:
        self.parts.append(data)
        self.pending += len(data)

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class _Date:
    """The Date field, formatted once per second rather than per answer."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = f"Date: {formatdate(second, usegmt=True)}\r\n".encode()
        return cls.value


class _Connection(asyncio.Protocol):
    """One client connection: parses heads off its buffer, runs one request's handler at a
    time, writes the answers in order, and holds one deadline at a time (the module's
    docstring)."""

    def __init__(self, guard: _Guard) -> None:
        self._guard = guard
        self._loop = guard.loop
        self._transport: asyncio.Transport | None = None
        self.peer: str = ""
        self._buffer = bytearray()
        self._phase = _HEAD
        self._deadline: asyncio.TimerHandle | None = None
        self._body: _Body | None = None  # of the request being served or lingered over
        self._task: asyncio.Task[None] | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._close_after = False  # close once the lingered body is done
        self._eof = False  # the client sent its last byte
        self._scanned = 0  # bytes of the buffer searched for a head's end already

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")
        self._guard.connections.add(self)
        if self._guard.stopping:
            self._arm(_CLOSING, 0)
        else:
            self._arm(_HEAD, self._guard.timeouts.header)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._transport = None
        self._disarm()
        body = self._body
        if body is not None and not body.done and body.error is None:
            body.error = ConnectionResetError("the client closed the connection")
            body.wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)  # the handler's task is cancelled below
        if self._task is not None:
            self._task.cancel()
        self._guard.lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._flow()

    def data_received(self, data: bytes) -> None:
        if self._phase == _IDLE:
            # The first byte after an idle spell starts a head; more bytes extend nothing.
            self._arm(_HEAD, self._guard.timeouts.header)
        self._buffer += data
        self._advance()

    def eof_received(self) -> bool | None:
        self._eof = True
        body = self._body
        if body is not None and not body.done and body.error is None:
            body.error = ConnectionResetError("the client closed the connection mid-body")
            body.wake()
        if self._phase in (_IDLE, _HEAD, _LINGER):
            return None  # closed by the transport
        return True  # busy: the answer is still written, then the connection closed

    # -- reading --------------------------------------------------------------------------

    def _advance(self) -> None:
        """Hand the buffer to the body being read, or parse the next head when none is."""
        body = self._body
        if body is not None and not body.done:
            done = False
            try:
                done = body.feed(self._buffer)
            except BadRequest as exc:
                body.error = exc
                self._buffer.clear()
            body.wake()
            if self._phase == _LINGER:
                if body.error is not None:
                    self._close()
                elif done:
                    self._body = None
                    self._finished()
                return
        if self._phase == _HEAD and self._task is None:
            self._parse()
        self._flow()

    def _flow(self) -> None:
        """Stop reading while an answer cannot be written or what was read is not taken."""
        transport = self._transport
        if transport is None:
            return
        held = len(self._buffer) + (self._body.pending if self._body is not None else 0)
        pause = self._write_paused or held > MAX_BUFFERED_BYTES
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _parse(self) -> None:
        buffer = self._buffer
        while buffer[:2] == b"\r\n":  # empty lines before a request line are ignored
            del buffer[:2]
            self._scanned = 0
        # A head trickled in small pieces is searched once, not once per piece.
        end = buffer.find(b"\r\n\r\n", max(0, self._scanned - 3), MAX_HEAD_BYTES + 4)
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > MAX_HEAD_BYTES:
                self._refuse(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
            return
        self._scanned = 0
        head = bytes(buffer[:end])
        del buffer[: end + 4]
        try:
            request = self._request(head)
        except BadRequest as exc:
            self._refuse(exc.status, str(exc))
            return
        self._arm(_BUSY, self._guard.timeouts.request)
        self._body = body = request._body
        if body is not None:
            try:
                body.feed(buffer)
            except BadRequest as exc:
                body.error = exc
                buffer.clear()
        self._task = self._loop.create_task(self._serve(request))

    def _request(self, head: bytes) -> Request:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise BadRequest("a malformed request line")
        method_b, target_b, version_b = parts
        if version_b not in (b"HTTP/1.1", b"HTTP/1.0"):
            if version_b.startswith(b"HTTP/"):
                raise BadRequest("only HTTP/1.0 and HTTP/1.1 are served", 505)
            raise BadRequest("a malformed request line")
        if not method_b or not _TOKEN_CHARS.issuperset(method_b):
            raise BadRequest("a malformed method")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name_b, sep, value_b = line.partition(b":")
            if not sep or not name_b or not _TOKEN_CHARS.issuperset(name_b):
                raise BadRequest("a malformed header field")
            name = name_b.decode("ascii").lower()
            value = value_b.strip(b" \t").decode("latin-1")
            if name in headers:
                if name in ("content-length", "host", "transfer-encoding"):
                    raise BadRequest(f"{name} given twice")
                headers[name] += ", " + value
            else:
                headers[name] = value
        target = target_b.decode("latin-1")
        if not target.startswith("/"):
            raise BadRequest("the request target is not a path")
        path, _, query = target.partition("?")
        if "%" in path:
            try:
                path = unquote(path, errors="strict")
            except UnicodeDecodeError:
                raise BadRequest("the path is not UTF-8 once decoded") from None
        body = self._request_body(headers)
        version = version_b.decode("ascii")
        return Request(
            self, method=method_b.decode("ascii"), path=path, query=query, version=version,
            headers=headers, body=body,
        )  # fmt: skip

    @staticmethod
    def _request_body(headers: dict[str, str]) -> _Body | None:
        expect = headers.get("expect")
        expect_continue = expect is not None and expect.lower() == "100-continue"
        coding = headers.get("transfer-encoding")
        if coding is not None:
            if "content-length" in headers:
                raise BadRequest("both Transfer-Encoding and Content-Length")
            if coding.lower() != "chunked":
                raise BadRequest(f"transfer-encoding {coding!r} is not served", 501)
            return _Body(None, expect_continue)
        length = headers.get("content-length")
        if length is None:
            return None
        if not length.isdigit() or not length.isascii():
            raise BadRequest("a malformed Content-Length")
        size = int(length)
        return _Body(size, expect_continue) if size else None

    def _refuse(self, status: int, message: str) -> None:
        """A head that cannot be served: answered and the connection closed."""
        self._disarm()
        self._phase = _CLOSING
        self._buffer.clear()
        self._write(Response(status, f"{message}\n".encode(), close=True), None, close=True)
        self._close()

    # -- the body, for Request ------------------------------------------------------------

    def reading_body(self, body: _Body) -> None:
        if body.started:
            return
        body.started = True
        if body.expect_continue and self._transport is not None:
            body.expect_continue = False
            if not body.done and not body.parts:
                self._transport.write(_CONTINUE)

    def take(self, body: _Body) -> bytes:
        data = body.parts[0] if len(body.parts) == 1 else b"".join(body.parts)
        body.parts.clear()
        body.pending = 0
        self._flow()
        return data

    async def wait_for_body(self, body: _Body) -> None:
        body.waiter = self._loop.create_future()
        try:
            await body.waiter
        finally:
            body.waiter = None

    # -- answering ------------------------------------------------------------------------

    async def _serve(self, request: Request) -> None:
        try:
            try:
                response = await self._guard.app.dispatch(request)
            except BadRequest as exc:
                response = Response(exc.status, f"{exc}\n".encode(), close=True, linger=False)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                what = f"{request.method} {request.path}"
                self._guard.log.log(
                    logging.ERROR, "handler_error", "%s failed: %r", what, exc, exc_info=exc
                )
                response = Response(500, b"Internal Server Error\n", close=True)
            body = self._body
            unread = body is not None and not body.done
            close = response.close or not request.keep_alive or self._phase == _CLOSING
            if unread and body is not None and body.expect_continue:
                close = True  # the client holds its body back until a 100 that never comes
                response.linger = False
            if self._guard.stopping or self._eof:
                close = True
            self._write(response, request, close=close)
            if self._write_paused:
                self._drained = self._loop.create_future()
                await self._drained
        except (ConnectionError, asyncio.CancelledError):
            return  # the client went, or a deadline aborted the connection
        finally:
            self._task = None
            self._drained = None
        if self._transport is None:
            return
        if close:
            if unread and body is not None and response.linger:
                self._close_after = True
                self._linger(body)
            else:
                self._close()
            return
        if unread and body is not None:
            self._linger(body)
        else:
            self._body = None
            self._finished()

    def _linger(self, body: _Body) -> None:
        """Read the rest of an unread body and throw it away, within the linger deadline."""
        body.discard = True
        body.parts.clear()
        body.pending = 0
        if self._phase != _CLOSING:
            self._arm(_LINGER, self._guard.timeouts.linger)
        self._flow()

    def _finished(self) -> None:
        """The request is done, answer and body: next is a pipelined head, or idleness."""
        if self._close_after:
            self._close()
            return
        if self._guard.stopping:
            self._close()
            return
        if self._buffer:
            self._arm(_HEAD, self._guard.timeouts.header)
            self._advance()
        else:
            self._arm(_IDLE, self._guard.timeouts.idle)
            self._flow()

    def _write(self, response: Response, request: Request | None, *, close: bool) -> None:
        """The answer's head and body in one write. `Connection: keep-alive` is said only to
        an HTTP/1.0 client, for which it is not the default."""
        transport = self._transport
        if transport is None:
            return
        if close:
            connection = "Connection: close\r\n"
        elif request is not None and request.version == "HTTP/1.0":
            connection = "Connection: keep-alive\r\n"
        else:
            connection = ""
        status = response.status
        line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
        fields = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
        body = response.body
        head = (
            line
            + _Date.now()
            + (
                f"Content-Type: {response.content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{fields}{connection}\r\n"
            ).encode("latin-1")
        )
        head_only = request is not None and request.method == "HEAD"
        transport.write(head if head_only or not body else head + body)

    def _close(self) -> None:
        """Close after what is written is sent; a client that does not take it is aborted at
        the linger deadline."""
        transport = self._transport
        if transport is None:
            return
        self._arm(_CLOSING, self._guard.timeouts.linger)
        transport.close()

    # -- deadlines ------------------------------------------------------------------------

    def close_within(self, seconds: float) -> None:
        """The listener stops: an idle connection is closed now; any other gets `seconds`,
        and nothing it does later extends it."""
        if self._phase == _IDLE and not self._buffer:
            self._arm(_CLOSING, seconds)
            if self._transport is not None:
                self._transport.close()
            return
        self._arm(_CLOSING, seconds)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == _CLOSING and phase != _CLOSING:
            return
        if self._phase == _CLOSING and self._deadline is not None:
            return  # the last deadline stands
        self._disarm()
        self._phase = phase
        if self._transport is not None:
            self._deadline = self._loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is None:
            return
        if self._phase in (_HEAD, _BUSY):
            self._guard.expired(self._phase, self.peer)
        transport.abort()
