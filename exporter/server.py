"""The agent's HTTP endpoints: /metrics (text or OpenMetrics, gzip), /healthz, /readyz and
the JSON API routes the agent hands in; and how the agent's two listeners (this one and the
OTLP receiver) are served: TLS whose certificate is re-read when its files change, and
per-connection deadlines so that no client can hold the agent (docs/security.md).

The HTTP itself (parsing, keep-alive, the deadlines of every connection: head, busy, linger,
idle, shutdown) is exporter.httpserver's; its names are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any

from exporter.exposition import Exposition
from exporter.httpserver import (
    HEADER_TIMEOUT,
    IDLE_TIMEOUT,
    LINGER_TIMEOUT,
    REQUEST_TIMEOUT,
    SHUTDOWN_GRACE,
    App,
    Count,
    Listener,
    Middleware,
    Request,
    Response,
    Timeouts,
)
from exporter.httpserver import serve as serve_http
from exporter.settings import ConfigError, ListenAddress

__all__ = [
    "HEADER_TIMEOUT",
    "IDLE_TIMEOUT",
    "LINGER_TIMEOUT",
    "REQUEST_TIMEOUT",
    "SHUTDOWN_GRACE",
    "App",
    "ListenError",
    "Listener",
    "ReloadingCertificate",
    "Timeouts",
    "TlsError",
    "build_app",
    "load_pair",
    "serve",
    "start_server",
]

log = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]
JsonView = Callable[[], Any]

TLS_RELOAD_FAILED = "tls_reload_failed"  # the tailwatch_dropped_total reason
_JSON = "application/json; charset=utf-8"


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
) -> App:
    """/metrics from `exposition`, /healthz, /readyz from `readiness`, and one GET route per
    entry of `api` (path -> a callable returning JSON-able data, e.g. /api/v1/targets).
    `authorize` (exporter.auth.KubernetesAuth) guards every route; it leaves /healthz and
    /readyz open for the kubelet's probes."""

    async def metrics(request: Request) -> Response:
        headers = request.headers
        answer = exposition.answer(headers.get("accept", ""), headers.get("accept-encoding", ""))
        fields = {"Content-Encoding": "gzip"} if answer.gzipped else None
        return Response(200, answer.body, answer.content_type, fields)

    async def healthz(_: Request) -> Response:
        # Answering at all proves the event loop runs; that is what liveness should mean.
        return Response(200, b"ok\n")

    async def readyz(_: Request) -> Response:
        ready, detail = readiness()
        return Response(200 if ready else 503, f"{detail}\n".encode())

    def json_route(view: JsonView) -> Callable[[Request], Any]:
        async def handle(_: Request) -> Response:
            return Response(200, json.dumps(view()).encode(), _JSON)

        return handle

    app = App(middleware=authorize)
    app.add("GET", "/metrics", metrics)
    app.add("GET", "/healthz", healthz)
    app.add("GET", "/readyz", readyz)
    for path, view in (api or {}).items():
        app.add("GET", path, json_route(view))
    return app


async def start_server(
    app: App,
    listen: ListenAddress,
    *,
    tls: ReloadingCertificate | None = None,
    count: Count | None = None,
    timeouts: Timeouts | None = None,
) -> Listener:
    """Start serving `app` (over TLS with `tls`); raises ListenError if the address cannot be
    bound. Connections cut by a deadline are counted with `count` (`http_*_timeout`)."""
    try:
        return await serve(
            app, listen, name="http", count=count, timeouts=timeouts or Timeouts(), tls=tls
        )
    except OSError as exc:
        raise ListenError("--listen", listen, exc) from exc


async def serve(
    app: App,
    listen: ListenAddress,
    *,
    name: str,
    count: Count | None = None,
    timeouts: Timeouts,
    tls: ReloadingCertificate | None = None,
) -> Listener:
    """Serve `app` on `listen` with the deadlines of `timeouts` on every connection (counted
    as `<name>_header_timeout` and `<name>_request_timeout`), over TLS with `tls`. Raises
    OSError if the address cannot be bound. `await listener.cleanup()` stops serving within
    about timeouts.shutdown, whatever the clients are doing."""
    context = tls.context if tls is not None else None
    return await serve_http(
        app, listen.host or None, listen.port, name=name, count=count, timeouts=timeouts,
        tls=context,
    )  # fmt: skip


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
