"""The agent's HTTP endpoints: /metrics (text or OpenMetrics, gzip), /healthz, /readyz and
the JSON API routes the agent hands in; and how the agent's two listeners (this one and the
OTLP receiver) are served: TLS whose certificate is re-read when its files change, and
per-connection deadlines so that no client can hold the agent (docs/security.md).

The deadlines, one at a time per connection, by what the connection is doing:

- head: from the connection's start, or from the first byte after an idle spell, to a
  complete request head: `HEADER_TIMEOUT`, then the connection is aborted and counted as
  `<name>_header_timeout` (tailwatch_dropped_total);
- busy: from the start of a request's handling to the last byte of its answer written:
  `REQUEST_TIMEOUT`, then aborted and counted as `<name>_request_timeout`;
- linger: from an answer written before its request's body was read (a request refused on
  its head: the OTLP receiver's 403, 413, 415 or 503) to the body's last byte, which is read
  and thrown away: `LINGER_TIMEOUT`, then closed (not counted). The body's bytes are not a
  new request's head; once the body is done, the connection is idle;
- idle: from an answer written (and its body done) to the next request's first byte:
  `IDLE_TIMEOUT`, then closed.

A client trickling its header a byte at a time gains nothing (data does not extend the
head's deadline), nor one that never reads its answer (the answer is written within the
request's deadline). A TLS handshake is bounded by `HEADER_TIMEOUT` too. The OTLP receiver
adds a deadline of its own for a request body (exporter.otlp.receiver).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler, Middleware

from exporter.exposition import Exposition
from exporter.logs import LogOnce
from exporter.settings import ConfigError, ListenAddress

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
JsonView = Callable[[], Any]
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
#: it is aborted. aiohttp alone would take up to twice this for a request in flight (it waits
#: `shutdown_timeout` for the handler, then as long again after cancelling it); the abort,
#: made by the listener's own timer (`_Guard.closing`), ends the connection first, and aiohttp
#: skips its second wait for a connection already lost. Both listeners stop within about
#: 1 s (1.1 s measured from SIGTERM to exit with stalled, unread and idle clients of both),
#: well within the 5 s the agent has from SIGTERM to its exit (exporter.cli).
SHUTDOWN_GRACE = 1.0

TLS_RELOAD_FAILED = "tls_reload_failed"  # the tailwatch_dropped_total reason


@dataclass(frozen=True)
class Timeouts:
    """The deadlines of one listener: the module's constants, unless a test shrinks them."""

    header: float = HEADER_TIMEOUT
    idle: float = IDLE_TIMEOUT
    request: float = REQUEST_TIMEOUT
    linger: float = LINGER_TIMEOUT
    shutdown: float = SHUTDOWN_GRACE


class ListenError(Exception):
    """An address the agent was told to listen on cannot be bound."""

    def __init__(self, what: str, listen: ListenAddress, exc: OSError) -> None:
        super().__init__(f"cannot listen on {listen} ({what}): {exc.strerror or exc}")


class TlsError(ConfigError):
    """--tls-cert-file/--tls-key-file cannot be used; at startup the CLI exits with 2."""


def build_app(
    exposition: Exposition,
    readiness: Readiness,
    api: Mapping[str, JsonView] | None = None,
    *,
    authorize: Middleware | None = None,
) -> web.Application:
    """/metrics from `exposition`, /healthz, /readyz from `readiness`, and one GET route per
    entry of `api` (path -> a callable returning JSON-able data, e.g. /api/v1/targets).
    `authorize` (exporter.auth.KubernetesAuth) guards every route; it leaves /healthz and
    /readyz open for the kubelet's probes."""

    async def metrics(request: web.Request) -> web.Response:
        answer = exposition.answer(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )
        headers = {"Content-Type": answer.content_type}
        if answer.gzipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=answer.body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop runs; that is what liveness should mean.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = readiness()
        return web.Response(text=detail + "\n", status=200 if ready else 503)

    def json_route(view: JsonView) -> Callable[[web.Request], Any]:
        async def handle(_: web.Request) -> web.Response:
            return web.json_response(view())

        return handle

    app = web.Application(middlewares=[authorize] if authorize is not None else [])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for path, view in (api or {}).items():
        app.router.add_get(path, json_route(view))
    return app


async def start_server(
    app: web.Application,
    listen: ListenAddress,
    *,
    tls: ReloadingCertificate | None = None,
    count: Count | None = None,
    timeouts: Timeouts | None = None,
) -> web.AppRunner:
    """Start serving `app` (over TLS with `tls`); raises ListenError if the address cannot be
    bound. Connections cut by a deadline are counted with `count` (`http_*_timeout`)."""
    try:
        return await serve(
            app, listen, name="http", count=count, timeouts=timeouts or Timeouts(), tls=tls
        )
    except OSError as exc:
        raise ListenError("--listen", listen, exc) from exc


async def serve(
    app: web.Application,
    listen: ListenAddress,
    *,
    name: str,
    count: Count | None = None,
    timeouts: Timeouts,
    tls: ReloadingCertificate | None = None,
    **handler_args: Any,
) -> web.AppRunner:
    """Serve `app` on `listen` with the deadlines of `timeouts` on every connection (counted
    as `<name>_header_timeout` and `<name>_request_timeout`), over TLS with `tls`.
    `handler_args` go to aiohttp's connection handler (e.g. auto_decompress). Raises OSError
    if the address cannot be bound. `await runner.cleanup()` stops serving within about
    timeouts.shutdown, whatever the clients are doing."""
    # Outermost, so that the answer is written within the request's deadline (see
    # `_request_deadline`). Before setup: the app's middlewares are frozen then.
    app.middlewares.insert(0, _request_deadline)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=timeouts.shutdown)
    await runner.setup()
    server = runner.server
    assert server is not None  # set by setup()
    loop = asyncio.get_running_loop()
    guard = _Guard(name, timeouts, count or (lambda _: None))
    handler_args = {"access_log": None, **handler_args}

    def connection() -> GuardedConnection:
        return GuardedConnection(server, loop=loop, guard=guard, **handler_args)

    site = _GuardedSite(runner, listen, connection, tls, guard)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner


# -- deadlines ------------------------------------------------------------------------------

_HEAD, _BUSY, _LINGER, _IDLE, _CLOSING = "head", "busy", "linger", "idle", "closing"


@dataclass(eq=False)
class _Guard:
    """What the connections of one listener share: its name, deadlines and counter."""

    name: str
    timeouts: Timeouts
    count: Count
    log: LogOnce = field(default_factory=lambda: LogOnce(log))
    connections: set[GuardedConnection] = field(default_factory=set)

    def closing(self) -> None:
        """The listener stops: every connection gets `timeouts.shutdown` more, whatever its
        phase, then it is aborted. aiohttp's shutdown would wait up to twice that for a
        request in flight, and cannot end one stuck writing to a client that does not read."""
        for connection in list(self.connections):
            connection.close_within(self.timeouts.shutdown)

    def expired(self, phase: str, peer: object) -> None:
        reason = f"{self.name}_{'header' if phase == _HEAD else 'request'}_timeout"
        self.count(reason)
        seconds = self.timeouts.header if phase == _HEAD else self.timeouts.request
        what = "a request head" if phase == _HEAD else "a request and its answer"
        self.log.warning(
            reason, "closed a connection from %s: %s took over %gs", peer, what, seconds
        )


class GuardedConnection(web.RequestHandler):
    """aiohttp's connection handler with one deadline at a time, by phase (see the module's
    docstring). At its deadline the connection is aborted, not closed: a close would wait
    for a client that does not read to take what is still buffered for it."""

    def __init__(
        self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, guard: _Guard, **kwargs: Any
    ) -> None:
        # aiohttp's own keep-alive timer stays on, set to the idle deadline.
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=guard.timeouts.idle,
            lingering_time=guard.timeouts.linger,
            **kwargs,
        )
        self._guard = guard
        self._guard_loop = loop
        self._phase = _HEAD
        self._deadline: asyncio.TimerHandle | None = None
        self._unread: StreamReader | None = None  # the body being thrown away (linger)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._guard.connections.add(self)
        self._arm(_HEAD, self._guard.timeouts.header)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.connections.discard(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The first byte after an idle spell starts a head; more bytes extend nothing.
        if data and self._phase == _IDLE:
            self._arm(_HEAD, self._guard.timeouts.header)
        super().data_received(data)
        # Bytes of a body that was not read: the connection is idle once it is all here (a
        # head pipelined in the same segment as its last byte gets the idle deadline).
        unread = self._unread
        if unread is not None and unread.is_eof() and self._phase == _LINGER:
            self.request_finished(None)

    def request_started(self) -> None:
        self._unread = None
        self._arm(_BUSY, self._guard.timeouts.request)

    def request_finished(self, body: StreamReader | None) -> None:
        """The answer is written; `body` is the request's, read to its end or not."""
        if body is not None and not body.is_eof():
            self._unread = body  # aiohttp reads it now (lingering), then keeps the connection
            self._arm(_LINGER, self._guard.timeouts.linger)
        else:
            self._unread = None
            self._arm(_IDLE, self._guard.timeouts.idle)

    def close_within(self, seconds: float) -> None:
        """The last deadline of this connection: nothing it does later extends it."""
        self._arm(_CLOSING, seconds)

    def _arm(self, phase: str, seconds: float) -> None:
        if self._phase == _CLOSING:
            return
        self._disarm()
        self._phase = phase
        if self.transport is not None:
            self._deadline = self._guard_loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return
        if self._phase in (_HEAD, _BUSY):
            peer = transport.get_extra_info("peername")
            self._guard.expired(self._phase, peer[0] if isinstance(peer, tuple) else peer)
        transport.abort()


@web.middleware
async def _request_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The busy phase of a guarded connection: from here to the answer written. aiohttp
    would write the answer after the handler returned, outside any deadline, so it is
    written here (aiohttp's own prepare and write_eof then do nothing)."""
    connection = request.protocol
    if not isinstance(connection, GuardedConnection):  # served some other way (a test's)
        return await handler(request)
    connection.request_started()
    try:
        response = await handler(request)
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went, or its deadline cut it; aiohttp sees the same and stops
        return response
    finally:
        connection.request_finished(request.content)


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections are GuardedConnections, and whose TLS handshakes (and
    TLS closes) are bounded: aiohttp's TCPSite leaves both at asyncio's 60 s and 30 s."""

    def __init__(
        self,
        runner: web.AppRunner,
        listen: ListenAddress,
        connection: Callable[[], GuardedConnection],
        tls: ReloadingCertificate | None,
        guard: _Guard,
    ) -> None:
        super().__init__(runner, ssl_context=tls.context if tls is not None else None)
        self._listen = listen
        self._connection = connection
        self._tls = tls
        self._guard = guard

    @property
    def name(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://{self._listen}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        tls: dict[str, Any] = {}
        if self._tls is not None:
            tls = {
                "ssl": self._tls.context,
                "ssl_handshake_timeout": self._guard.timeouts.header,
                "ssl_shutdown_timeout": self._guard.timeouts.linger,
            }
        # BaseSite.stop() closes `_server`; the runner's `addresses` read its sockets.
        self._server = await loop.create_server(
            self._connection, self._listen.host or None, self._listen.port, **tls
        )

    async def stop(self) -> None:
        """The first step of `runner.cleanup()`: no new connections, and a last deadline
        for those open."""
        await super().stop()
        self._guard.closing()


# -- TLS ------------------------------------------------------------------------------------

_Signature = tuple[tuple[int, int, int, int], ...] | tuple[str, str]


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key's password.
    raise _EncryptedKey


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION  # a client-driven CPU cost, of no use here
    return context


def load_pair(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with the certificate (and its chain) and key; raises TlsError with
    a one-line reason that names the file at fault."""
    try:
        # The certificate alone first, so that a bad one is not reported as a bad key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        raise TlsError(f"--tls-cert-file {cert_file}: not a PEM certificate") from None
    except OSError as exc:
        raise TlsError(f"--tls-cert-file {cert_file}: {exc.strerror or exc}") from None
    context = _server_context()
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKey:
        raise TlsError(
            f"--tls-key-file {key_file}: the key is encrypted; give it unencrypted"
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"--tls-key-file {key_file} is not the key of --tls-cert-file {cert_file}"
            ) from None
        raise TlsError(f"--tls-key-file {key_file}: not a PEM private key") from None
    except OSError as exc:
        raise TlsError(f"--tls-key-file {key_file}: {exc.strerror or exc}") from None
    return context


class ReloadingCertificate:
    """The TLS context of --listen, whose certificate and key are re-read when their files
    change: cert-manager or the kubelet rotate a Secret by replacing the files (often with
    a swap of the `..data` symlink), and the agent must serve the new pair without a
    restart.

    `context` is what the listener is given; its SNI callback runs at every handshake (with
    or without a server name), stats both files (two stat calls: the loaded pair is known by
    device, inode, mtime and size, through symlinks) and hands the handshake the context of
    the newest pair that loaded. A new pair that cannot be loaded (unreadable, not PEM, a
    key of another certificate, half-written) leaves the previous one served; it is counted
    once in tailwatch_dropped_total{reason="tls_reload_failed"} and logged once, and tried
    again when the files change again. Connections already open keep their certificate.
    """

    def __init__(self, cert_file: str, key_file: str, count: Count | None = None) -> None:
        """Loads the pair now: raises TlsError if it cannot be used."""
        self.cert_file = cert_file
        self.key_file = key_file
        self._count = count or (lambda _: None)
        try:
            self._loaded: _Signature = self._signature()
        except OSError as exc:
            flag = "--tls-cert-file" if exc.filename == cert_file else "--tls-key-file"
            raise TlsError(f"{flag} {exc.filename}: {exc.strerror or exc}") from None
        self._current = load_pair(cert_file, key_file)
        self._failed: _Signature | None = None
        self.reloads = 0
        self.context = _server_context()
        self.context.sni_callback = self._select

    def _signature(self) -> _Signature:
        stats = (os.stat(self.cert_file), os.stat(self.key_file))
        return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _select(self, ssl_object: ssl.SSLObject, _: str | None, __: ssl.SSLContext) -> None:
        try:
            self.check()
        except Exception as exc:  # a bug here must not fail every handshake
            log.exception("checking the TLS certificate files failed: %r", exc)
        ssl_object.context = self._current

    def check(self) -> bool:
        """Load the pair again if its files changed; True if a new pair is now served."""
        try:
            signature = self._signature()
        except OSError as exc:
            return self._failed_with(
                ("unreadable", str(exc.filename)), f"{exc.filename}: {exc.strerror or exc}"
            )
        if signature in (self._loaded, self._failed):
            return False
        try:
            context = load_pair(self.cert_file, self.key_file)
        except TlsError as exc:
            return self._failed_with(signature, str(exc))
        # A pair that changed again while it was read is read again at the next handshake.
        self._current, self._loaded, self._failed = context, signature, None
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": self.cert_file})
        return True

    def _failed_with(self, signature: _Signature, problem: str) -> bool:
        if signature != self._failed:
            self._failed = signature
            self._count(TLS_RELOAD_FAILED)
            log.warning(
                "TLS certificate not reloaded, the previous one is still served: %s", problem
            )
        return False
