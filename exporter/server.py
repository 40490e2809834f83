"""The agent's HTTP endpoints: /metrics (text or OpenMetrics, gzip), /healthz, /readyz and
the JSON API routes the agent hands in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from exporter.exposition import Exposition
from exporter.settings import ListenAddress

Readiness = Callable[[], tuple[bool, str]]
JsonView = Callable[[], Any]


class ListenError(Exception):
    """An address the agent was told to listen on cannot be bound."""

    def __init__(self, what: str, listen: ListenAddress, exc: OSError) -> None:
        super().__init__(f"cannot listen on {listen} ({what}): {exc.strerror or exc}")


def build_app(
    exposition: Exposition, readiness: Readiness, api: Mapping[str, JsonView] | None = None
) -> web.Application:
    """/metrics from `exposition`, /healthz, /readyz from `readiness`, and one GET route per
    entry of `api` (path -> a callable returning JSON-able data, e.g. /api/v1/targets)."""

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

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for path, view in (api or {}).items():
        app.router.add_get(path, json_route(view))
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
