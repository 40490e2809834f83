"""The agent's HTTP endpoints: /metrics (text or OpenMetrics, gzip), /healthz and /readyz."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from exporter.settings import ListenAddress

Readiness = Callable[[], tuple[bool, str]]


class ListenError(Exception):
    """An address the agent was told to listen on cannot be bound."""

    def __init__(self, what: str, listen: ListenAddress, exc: OSError) -> None:
        super().__init__(f"cannot listen on {listen} ({what}): {exc.strerror or exc}")


JsonView = Callable[[], Any]


def build_app(
    registry: CollectorRegistry, readiness: Readiness, targets: JsonView | None = None
) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def healthz(_: web.Request) -> web.Response:
        # Answering at all proves the event loop runs; that is what liveness should mean.
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = readiness()
        return web.Response(text=detail + "\n", status=200 if ready else 503)

    async def api_targets(_: web.Request) -> web.Response:
        return web.json_response(targets() if targets else {})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/targets", api_targets)
    return app


async def start_server(app: web.Application, listen: ListenAddress) -> web.AppRunner:
    """Start serving `app`; raises ListenError if the address cannot be bound."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host=listen.host or None, port=listen.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError("--listen", listen, exc) from exc
    return runner
