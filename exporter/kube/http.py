"""A minimal async HTTP/1.1 client for the Kubernetes API server, on asyncio streams.

Why not aiohttp: the agent's API traffic is a few long watches, lists at start, Events and
token reviews, and aiohttp with its dependencies was ~10 MiB of the agent's resident memory
for it. This is the part of HTTP/1.1 that traffic needs, on the stdlib alone:

- one `HttpClient` per API server (base URL, SSL context, the name the certificate must
  carry), with a keep-alive pool: a request takes an idle connection or opens one (at most
  `limit` in use at once, as aiohttp's connector limit); a response read to its end gives
  its connection back, one left unread (a watch closed early, an error) closes it, and
  `close()` closes every connection;
- responses framed by Content-Length, chunked, or ended by the server closing
  (`Connection: close`); no compression is asked for, so none is decoded;
- a pooled connection the server closed while it was idle is never used: it is noticed
  before the request is written. If one fails after the write with no byte of an answer
  (the server closed it at that very moment), an idempotent request (GET) is sent again
  once on a fresh connection; a POST or PATCH is not, since the server may have acted on it;
- timeouts as aiohttp's `ClientTimeout` names them (and that type is accepted): `total`
  for the whole request, body included, `connect` to get a connection (a free slot
  included), `sock_connect` for the TCP and TLS handshakes, `sock_read` between two reads
  (a watch's inactivity timeout). Any of them raises TimeoutError.

Errors are OSError subclasses, as the socket's own: `ConnectError` (no connection; its
`TlsError` for a refused handshake), `HttpError` (a connection lost or an answer that is
not HTTP/1.1 before the body) and `PayloadError` (a body cut short or badly framed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

#: Connections in use at once, per client (aiohttp's connector default).
CONNECTION_LIMIT = 100
#: Seconds an idle connection stays in the pool (aiohttp's keep-alive default).
KEEPALIVE = 15.0
#: The largest piece of a body handed over at once, and the stream's buffer limit.
READ_SIZE = 64 * 1024
#: Methods sent again when a reused connection fails before any byte of the answer.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class HttpError(OSError):
    """A request failed below HTTP: the connection was lost, or the answer is not HTTP/1.1."""


class ConnectError(HttpError):
    """No connection to the server: refused, unreachable, or a name that does not resolve."""


class TlsError(ConnectError):
    """The TLS handshake failed: a certificate that does not verify, or the server refused
    ours."""


class PayloadError(HttpError):
    """A response body cut short or badly framed (the server or a proxy died mid-way)."""


class TimeoutSpec(Protocol):
    """What `Timeout` holds; aiohttp's `ClientTimeout` has the same fields."""

    @property
    def total(self) -> float | None: ...

    @property
    def connect(self) -> float | None: ...

    @property
    def sock_read(self) -> float | None: ...

    @property
    def sock_connect(self) -> float | None: ...


@dataclass(frozen=True)
class Timeout:
    """Seconds, None for no limit (see the module's docstring)."""

    total: float | None = None
    connect: float | None = None
    sock_read: float | None = None
    sock_connect: float | None = None


def _earliest(*deadlines: float | None) -> float | None:
    known = [d for d in deadlines if d is not None]
    return min(known) if known else None


class _Connection:
    """One socket to the server; `reused` once it has carried a response."""

    __slots__ = ("idle_since", "reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.idle_since = 0.0

    def usable(self) -> bool:
        """False once the server closed it or it failed (noticed by the loop while idle)."""
        reader = self.reader
        return not (self.writer.is_closing() or reader.at_eof() or reader.exception() is not None)


class Response:
    """The status and headers of an answer; its body is read with `read`, `json` or
    `iter_any`, once. Use it as `async with`: leaving gives the connection back to the pool
    if the body was read to its end, and closes it otherwise."""

    def __init__(
        self,
        client: HttpClient,
        connection: _Connection,
        status: int,
        reason: str,
        headers: dict[str, str],
        *,
        framing: str,
        length: int,
        keep_alive: bool,
        deadline: float | None,
        sock_read: float | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # names in lower case
        self._client = client
        self._connection: _Connection | None = connection
        self._framing = framing  # "length", "chunked" or "eof"
        self._remaining = length
        self._keep_alive = keep_alive
        self._deadline = deadline
        self._sock_read = sock_read
        self._started = False
        if framing == "length" and length == 0:
            self._done()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the connection back (body read to its end) or close it (anything else)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._discard(connection)

    def _done(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._keep_alive:
            self._client._put_back(connection)
        else:
            self._client._discard(connection)

    def _timer(self) -> asyncio.Timeout:
        loop_time = asyncio.get_running_loop().time()
        idle = None if self._sock_read is None else loop_time + self._sock_read
        return asyncio.timeout_at(_earliest(self._deadline, idle))

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (a piece never spans two chunks)."""
        if self._started:
            raise RuntimeError("the response body was already read")
        self._started = True
        connection = self._connection
        if connection is None:
            return
        reader = connection.reader
        try:
            if self._framing == "chunked":
                async for piece in self._chunked(reader):
                    yield piece
            else:
                while self._framing == "eof" or self._remaining > 0:
                    async with self._timer():
                        piece = await reader.read(
                            READ_SIZE if self._framing == "eof" else min(self._remaining, READ_SIZE)
                        )
                    if not piece:
                        if self._framing == "eof":
                            break
                        raise PayloadError(
                            f"the response ended {self._remaining} bytes short of its length"
                        )
                    self._remaining -= len(piece)
                    yield piece
        except (TimeoutError, PayloadError):
            self.release()
            raise
        except EOFError as exc:
            self.release()
            raise PayloadError("the connection closed in the middle of the response body") from exc
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            self.release()
            raise PayloadError(f"the response body was cut short: {exc!r}") from exc
        except BaseException:
            self.release()  # cancelled, or the consumer stopped early: the rest is unread
            raise
        self._done()

    async def _chunked(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        while True:
            async with self._timer():
                line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)  # ValueError: a PayloadError
            if size < 0:
                raise PayloadError("negative chunk size")
            if size == 0:
                while True:  # trailers, up to the empty line
                    async with self._timer():
                        if await reader.readuntil(b"\r\n") == b"\r\n":
                            return
            while size > 0:
                async with self._timer():
                    piece = await reader.read(min(size, READ_SIZE))
                if not piece:
                    raise PayloadError("the chunked response ended in the middle of a chunk")
                size -= len(piece)
                yield piece
            async with self._timer():
                if await reader.readexactly(2) != b"\r\n":
                    raise PayloadError("a chunk does not end with CRLF")

    async def read(self) -> bytes:
        """The whole body."""
        return b"".join([piece async for piece in self.iter_any()])

    async def json(self) -> Any:
        """The body as JSON (ValueError if it is not)."""
        return json.loads(await self.read())


class HttpClient:
    """Requests to one server, over a keep-alive pool (see the module's docstring)."""

    def __init__(
        self,
        base_url: str,
        ssl_context: ssl.SSLContext | None = None,
        *,
        server_name: str | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = CONNECTION_LIMIT,
        keepalive: float = KEEPALIVE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if url.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context if url.scheme == "https" else None
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._server_name = server_name
        self._authority = url.netloc.rpartition("@")[2]
        self._prefix = url.path.rstrip("/")  # a server URL with a path (behind a gateway)
        self._headers = dict(headers or {})
        self._slots = asyncio.Semaphore(limit)
        self._keepalive = keepalive
        self._clock = clock
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._closed = False
        self.connections_opened = 0  # for tests and logs

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: TimeoutSpec | None = None,
    ) -> Response:
        """Send one request; returns once the answer's status and headers are in. Raises
        HttpError (ConnectError, TlsError) or TimeoutError."""
        timeout = timeout or Timeout()
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = None if timeout.total is None else start + timeout.total
        head = self._head(method, path, params, headers, body)
        for attempt in (1, 2):
            connection = await self._acquire(timeout, deadline, fresh=attempt == 2)
            reused = connection.reused
            try:
                connection.writer.write(head)
                if body:
                    connection.writer.write(body)
                idle = None if timeout.sock_read is None else loop.time() + timeout.sock_read
                async with asyncio.timeout_at(_earliest(deadline, idle)):
                    await connection.writer.drain()
                    return await self._answer(method, connection, deadline, timeout.sock_read)
            except _NoAnswer as exc:
                self._discard(connection)
                if reused and attempt == 1 and method in IDEMPOTENT:
                    continue  # the server closed it as we wrote: once more, on a new one
                raise HttpError(f"the connection closed before an answer: {exc.cause!r}") from (
                    exc.cause
                )
            except BaseException:
                self._discard(connection)
                raise
        raise AssertionError("unreachable")

    def _head(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
        body: bytes | None,
    ) -> bytes:
        target = quote(self._prefix + path, safe="/:@!$&'()*+,;=-._~%?")
        if params:
            target += ("&" if "?" in target else "?") + urlencode(dict(params), quote_via=quote)
        fields = {"Host": self._authority, **self._headers, **(headers or {})}
        if body is not None:
            fields["Content-Length"] = str(len(body))
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in fields.items():
            if any(c in value or c in name for c in "\r\n"):
                raise ValueError(f"a newline in the HTTP header {name}")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _answer(
        self, method: str, connection: _Connection, deadline: float | None, sock_read: float | None
    ) -> Response:
        """Read the answer's head (skipping 1xx interim answers)."""
        reader = connection.reader
        received = False
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                received = True
                lines = raw.decode("latin-1").split("\r\n")
                version, _, rest = lines[0].partition(" ")
                code, _, reason = rest.partition(" ")
                if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
                    raise HttpError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
                status = int(code)
                if 100 <= status < 200 and status != 101:
                    continue
                break
        except asyncio.IncompleteReadError as exc:
            if received or exc.partial:
                raise HttpError("the connection closed in the middle of an answer") from exc
            raise _NoAnswer(exc) from exc
        except asyncio.LimitOverrunError as exc:
            raise HttpError("the answer's head is too long") from exc
        except ssl.SSLError as exc:
            # An alert after the handshake: the server refused our certificate (TLS 1.3).
            raise TlsError(f"the server ended the TLS connection: {exc}") from exc
        except (ConnectionError, OSError) as exc:
            if received or isinstance(exc, (TimeoutError, HttpError)):
                raise
            raise _NoAnswer(exc) from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"a malformed header in the answer: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = version == "HTTP/1.1" and "close" not in tokens
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise HttpError(f"an answer compressed ({headers['content-encoding']}) unasked")
        framing, length = "eof", 0
        if method == "HEAD" or status in (204, 304):
            framing = "length"
        elif "transfer-encoding" in headers:
            if headers["transfer-encoding"].rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise HttpError(f"unsupported Transfer-Encoding {headers['transfer-encoding']}")
            framing = "chunked"
        elif "content-length" in headers:
            text = headers["content-length"]
            if not text.isdigit():
                raise HttpError(f"a bad Content-Length: {text[:40]!r}")
            framing, length = "length", int(text)
        if framing == "eof":
            keep_alive = False
        return Response(
            self,
            connection,
            status,
            reason,
            headers,
            framing=framing,
            length=length,
            keep_alive=keep_alive,
            deadline=deadline,
            sock_read=sock_read,
        )

    async def _acquire(
        self, timeout: TimeoutSpec, deadline: float | None, *, fresh: bool = False
    ) -> _Connection:
        """An idle connection still open, or a new one (always with `fresh`)."""
        if self._closed:
            raise HttpError("the HTTP client is closed")
        loop = asyncio.get_running_loop()
        start = loop.time()
        connect_by = _earliest(
            deadline, None if timeout.connect is None else start + timeout.connect
        )
        async with asyncio.timeout_at(connect_by):
            await self._slots.acquire()
        try:
            now = self._clock()
            while self._idle and not fresh:
                connection = self._idle.pop()
                if connection.usable() and now - connection.idle_since < self._keepalive:
                    return connection
                self._discard(connection, release=False)
            socket_by = _earliest(
                connect_by,
                None if timeout.sock_connect is None else loop.time() + timeout.sock_connect,
            )
            async with asyncio.timeout_at(socket_by):
                return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    async def _connect(self) -> _Connection:
        if self._ssl is not None:
            tls: dict[str, Any] = {
                "ssl": self._ssl,
                "server_hostname": self._server_name or self._host,
            }
        else:
            tls = {}
        where = f"{self._host}:{self._port}"
        try:
            reader, writer = await asyncio.open_connection(
                self._host, self._port, limit=READ_SIZE, **tls
            )
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake with {where} failed: {exc}") from exc
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        connection = _Connection(reader, writer)
        if self._closed:  # closed while connecting
            writer.transport.abort()
            raise HttpError("the HTTP client is closed")
        self._open.add(connection)
        self.connections_opened += 1
        return connection

    def idle(self) -> int:
        """Idle connections in the pool that are still open (as far as the loop has seen)."""
        return sum(1 for connection in self._idle if connection.usable())

    def _put_back(self, connection: _Connection) -> None:
        """A connection whose answer was read to its end: idle, for the next request."""
        self._slots.release()
        if self._closed or not connection.usable():
            self._discard(connection, release=False)
            return
        connection.reused = True
        connection.idle_since = self._clock()
        self._idle.append(connection)

    def _discard(self, connection: _Connection, *, release: bool = True) -> None:
        """Close a connection at once (no TLS goodbye: its state may be unknown)."""
        if release:
            self._slots.release()
        self._open.discard(connection)
        connection.writer.transport.abort()

    async def close(self) -> None:
        """Close every connection, idle or in use; later requests raise HttpError."""
        self._closed = True
        connections = list(self._open)
        self._idle.clear()
        self._open.clear()
        for connection in connections:
            connection.writer.transport.abort()
        for connection in connections:
            # Aborted: their sockets close on the loop's next turn; wait for that here, so
            # that none outlives the client.
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()
        # Connections discarded earlier were aborted too: their sockets close on this turn.
        await asyncio.sleep(0)


class _NoAnswer(Exception):
    """The connection ended before any byte of an answer (internal: a retry may follow)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause
