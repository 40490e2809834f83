"""The pods/proxy subresource of the simulated API server (exporter/simulator/proxy.py), seen
from a raw HTTP client: what reaches the pod, and each refusal in the real server's words."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.simulator import ApiServer, objects
from exporter.simulator.objects import ContainerTemplate
from tests.conftest import free_port

POD_IP = "127.62.0.1"


@dataclass
class Seen:
    """What the pod's server received."""

    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def pod_server() -> AsyncIterator[tuple[Seen, int]]:
    seen = Seen()

    async def anything(request: web.Request) -> web.Response:
        seen.paths.append(request.path_qs)
        seen.headers.append(dict(request.headers))
        if request.path == "/missing":
            return web.Response(status=404, text="no such page")
        return web.json_response({"path": request.path, "query": dict(request.query)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, POD_IP, port).start()
    try:
        yield seen, port
    finally:
        await runner.cleanup()


def pod(port: int, ip: str = POD_IP, name: str = "agent") -> dict[str, Any]:
    return objects.bare_pod(
        name,
        namespace="ops",
        pod_ip=ip,
        containers=[ContainerTemplate("agent", port=port, port_name="metrics")],
    )


async def test_a_get_reaches_the_pod_without_the_callers_credentials(
    server: ApiServer, http: aiohttp.ClientSession, pod_server: tuple[Seen, int]
) -> None:
    seen, port = pod_server
    server.store.create("pods", pod(port))
    async with http.get(f"/api/v1/namespaces/ops/pods/agent:{port}/proxy/api/v1/x?a=1") as resp:
        assert resp.status == 200
        assert await resp.json() == {"path": "/api/v1/x", "query": {"a": "1"}}
    assert seen.paths == ["/api/v1/x?a=1"]
    # The API server authenticated the caller and does not hand its token on.
    assert "Authorization" not in seen.headers[0]
    (record,) = server.requests.matching(resource="pods/proxy")
    assert (record.verb, record.namespace, record.name, record.status) == (
        "get",
        "ops",
        f"agent:{port}",
        200,
    )

    # Without a port: the pod's first container port. The pod's own status passes through.
    async with http.get("/api/v1/namespaces/ops/pods/agent/proxy/missing") as resp:
        assert resp.status == 404
        assert await resp.text() == "no such page"


async def test_refusals_in_the_real_servers_words(
    server: ApiServer, http: aiohttp.ClientSession, pod_server: tuple[Seen, int]
) -> None:
    seen, port = pod_server
    server.store.create("pods", pod(port))
    # Not a loopback address (the unspecified one: no host anywhere): refused, never dialled.
    server.store.create("pods", pod(port, ip="0.0.0.0", name="elsewhere"))
    closed = free_port()

    async def status(path: str, method: str = "GET") -> tuple[int, str]:
        async with http.request(method, path) as resp:
            body = await resp.json()
            assert body["kind"] == "Status"
            return resp.status, body["message"]

    base = "/api/v1/namespaces/ops/pods"
    assert await status(f"{base}/nobody:{port}/proxy/") == (404, 'pods "nobody" not found')
    assert await status(f"{base}/ftp:agent:{port}/proxy/") == (
        400,
        f'invalid pod request "ftp:agent:{port}"',
    )
    code, message = await status(f"{base}/agent:{closed}/proxy/")
    assert code == 503
    assert message == f"error trying to reach service: dial tcp {POD_IP}:{closed}: connect: " + (
        "connection refused"
    )
    # Only loopback pods are proxied to; nothing else is even dialled.
    code, message = await status(f"{base}/elsewhere:{port}/proxy/")
    assert code == 400
    assert message.startswith("address not allowed") and "0.0.0.0" in message
    assert (await status(f"{base}/agent:{port}/proxy/", "POST"))[0] == 405

    server.faults.forbid("pods/proxy")
    assert await status(f"{base}/agent:{port}/proxy/") == (
        403,
        f'pods "agent:{port}" is forbidden: User "tailwatch" cannot get resource "pods/proxy" '
        'in API group "" in the namespace "ops"',
    )
    # Forbidding the proxy leaves the pods themselves readable.
    async with http.get(f"{base}/agent") as resp:
        assert resp.status == 200
    assert seen.paths == []
