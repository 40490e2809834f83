"""Each injected fault, seen from a raw HTTP client, and the request log tests assert on."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from exporter.simulator import ApiServer

Factory = Callable[..., dict[str, Any]]


async def open_watch(
    http: aiohttp.ClientSession, path: str = "/api/v1/pods", **params: str
) -> aiohttp.ClientResponse:
    resp = await http.get(path, params={"watch": "1", **params})
    assert resp.status == 200, await resp.text()
    return resp


async def opened(server: ApiServer, count: int, wait: Any) -> None:
    await wait(lambda: server.faults.open_watches == count, what=f"{count} open watch(es)")


async def test_drop_watches_cuts_streams_mid_way(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    reader: Any,
    async_wait_until: Any,
) -> None:
    server.store.create("pods", make_pod("a"))
    async with (
        await open_watch(http) as pods,
        await open_watch(http, "/api/v1/services") as services,
    ):
        watch = reader(pods)
        await watch.event()
        await opened(server, 2, async_wait_until)
        assert server.faults.drop_watches("endpointslices") == 0
        assert server.faults.drop_watches("pods") == 1
        with pytest.raises(aiohttp.ClientPayloadError):
            await watch.line()  # not a clean end: the stream was cut with no last chunk
        await async_wait_until(lambda: server.faults.open_watches == 1, what="one watch left")
        assert server.store.watcher_count == 1
        assert server.faults.drop_watches() == 1
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader(services).line()


async def test_fail_next_answers_the_next_requests_with_a_status(
    http: aiohttp.ClientSession, server: ApiServer
) -> None:
    server.faults.fail_next(2, 503, resource="pods")
    server.faults.fail_next(1)  # any resource, 500
    outcomes = []
    for path in [
        "/api/v1/pods",
        "/api/v1/services",
        "/api/v1/pods",
        "/api/v1/pods",
        "/api/v1/services",
    ]:
        async with http.get(path, params={"watch": "true"} if len(outcomes) == 2 else {}) as resp:
            body = await resp.json()
            outcomes.append((resp.status, body.get("reason") or body.get("kind")))
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "1"
                assert body["details"] == {"retryAfterSeconds": 1}
    assert outcomes == [
        (503, "ServiceUnavailable"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),  # a watch counts too
        (200, "PodList"),
        (200, "ServiceList"),
    ]
    server.faults.fail_next(1, 500, message="etcdserver: request timed out")
    async with http.get("/api/v1/namespaces/default/pods/x") as resp:
        assert resp.status == 404, "a get is not a list or a watch"
    async with http.get("/api/v1/pods") as resp:
        assert (await resp.json())["message"] == "etcdserver: request timed out"


async def test_fail_next_in_stream_sends_an_error_event(
    http: aiohttp.ClientSession, server: ApiServer, reader: Any
) -> None:
    server.faults.fail_next(1, 500, in_stream=True)
    async with await open_watch(http) as resp:
        watch = reader(resp)
        event = await watch.event()
        assert event["type"] == "ERROR" and event["object"]["code"] == 500
        assert event["object"]["kind"] == "Status"
        await watch.end()


async def test_forbidden_resources_answer_403_like_rbac(
    http: aiohttp.ClientSession, server: ApiServer
) -> None:
    server.faults.forbid("pods", verbs=["watch"])
    async with http.get("/api/v1/pods") as resp:
        assert resp.status == 200
    async with http.get("/api/v1/namespaces/prod/pods", params={"watch": "1"}) as resp:
        assert resp.status == 403
        assert await resp.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": 'pods is forbidden: User "tailwatch" cannot watch resource "pods" in API '
            'group "" in the namespace "prod"',
            "reason": "Forbidden",
            "details": {"kind": "pods"},
            "code": 403,
        }
    server.faults.forbid("endpointslices")
    async with http.get("/apis/discovery.k8s.io/v1/endpointslices") as resp:
        assert (await resp.json())["message"] == (
            'endpointslices is forbidden: User "tailwatch" cannot list resource "endpointslices" '
            'in API group "discovery.k8s.io" at the cluster scope'
        )
    server.faults.permit("endpointslices")
    async with http.get("/apis/discovery.k8s.io/v1/endpointslices") as resp:
        assert resp.status == 200


async def test_delay_slows_every_response(http: aiohttp.ClientSession, server: ApiServer) -> None:
    server.faults.delay = 0.2
    started = time.monotonic()
    async with http.get("/api/v1/pods") as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.2
    server.faults.clear()
    assert server.faults.delay == 0


async def test_stalled_watches_send_nothing_and_lose_nothing(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    reader: Any,
    async_wait_until: Any,
) -> None:
    start = str(server.store.resource_version)
    async with await open_watch(http, resourceVersion=start, allowWatchBookmarks="true") as resp:
        watch = reader(resp)
        await watch.until(lambda e: e["type"] == "BOOKMARK")
        server.faults.stall_watches()
        server.store.create("pods", make_pod("a"))
        # Bookmarks are due every 0.05 s; a stalled stream must stay silent far longer.
        with pytest.raises(TimeoutError):
            await watch.line(timeout=0.3)
        server.faults.stall_watches(False)
        (event,) = await watch.events(1)
        assert event["object"]["metadata"]["name"] == "a"


async def test_a_stalled_watch_trips_the_client_inactivity_timeout_and_the_next_watch_catches_up(
    server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.faults.stall_watches()
    start = str(server.store.resource_version)
    timeout = aiohttp.ClientTimeout(sock_read=0.2)
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": "Bearer sim-token"}, timeout=timeout
    ) as http:
        async with await open_watch(
            http, resourceVersion=start, allowWatchBookmarks="true"
        ) as resp:
            server.store.create("pods", make_pod("a"))
            with pytest.raises(aiohttp.SocketTimeoutError):
                await resp.content.readline()
        server.faults.stall_watches(False)
        async with await open_watch(http, resourceVersion=start) as resp:
            (event,) = await reader(resp).events(1)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "a")


async def test_inject_raw_line(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    reader: Any,
    async_wait_until: Any,
) -> None:
    async with await open_watch(http) as resp:
        watch = reader(resp)
        await opened(server, 1, async_wait_until)
        server.faults.inject_raw_line(b"this is not json")
        assert await watch.line() == b"this is not json\n"
        server.store.create("pods", make_pod("a"))
        assert (await watch.event())["type"] == "ADDED"
    await async_wait_until(lambda: server.faults.open_watches == 0, what="the watch to close")
    # With no watch open, the next one to open gets the line first.
    server.faults.inject_raw_line(b'{"type":"ADDED"')
    async with await open_watch(http) as resp:
        watch = reader(resp)
        assert await watch.line() == b'{"type":"ADDED"\n'
        assert json.loads(await watch.line())["object"]["metadata"]["name"] == "a"


async def test_expire_watches_ends_them_with_410(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    reader: Any,
    async_wait_until: Any,
) -> None:
    server.store.create("pods", make_pod("a"))
    start = server.store.resource_version
    async with await open_watch(http, resourceVersion=str(start)) as resp:
        watch = reader(resp)
        await opened(server, 1, async_wait_until)
        server.store.create("pods", make_pod("b"))
        (added,) = await watch.events(1)
        seen = int(added["object"]["metadata"]["resourceVersion"])
        server.store.create("services", {"metadata": {"name": "s"}})
        compacted = server.store.compact()
        assert server.faults.expire_watches() == 1
        event = await watch.event()
        assert event["type"] == "ERROR"
        assert event["object"]["reason"] == "Expired" and event["object"]["code"] == 410
        assert event["object"]["message"] == f"too old resource version: {seen} ({compacted})"
        await watch.end()
    async with await open_watch(http, resourceVersion=str(seen)) as resp:
        assert (await reader(resp).event())["object"]["code"] == 410, "the client must relist"


async def test_the_request_log_records_verbs_resources_and_parameters(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    server.store.create("pods", make_pod("a"))
    server.store.create("pods", make_pod("b"))
    async with http.get(
        "/api/v1/pods", params={"limit": "1", "fieldSelector": "spec.nodeName=node-a"}
    ) as resp:
        token = (await resp.json())["metadata"]["continue"]
    async with http.get("/api/v1/pods", params={"limit": "1", "continue": token}):
        pass
    async with http.get(
        "/api/v1/pods",
        params={
            "watch": "1",
            "resourceVersion": "3",
            "timeoutSeconds": "1",
            "allowWatchBookmarks": "true",
        },
    ) as resp:
        assert resp.status == 200  # leaving closes the watch
    async with http.get("/apis/discovery.k8s.io/v1/endpointslices"):
        pass
    async with http.get("/version"):
        pass
    log = server.requests
    assert log.count("list", "pods") == 2 and log.count("watch", "pods") == 1
    assert log.count("list") == 3 and log.count() == 5
    first, second = log.lists("pods")
    assert first.params == {"limit": "1", "fieldSelector": "spec.nodeName=node-a"}
    assert second.params["continue"] == token
    (watch,) = log.watches()
    assert watch.status == 200 and watch.path == "/api/v1/pods"
    assert watch.params == {
        "watch": "1",
        "resourceVersion": "3",
        "timeoutSeconds": "1",
        "allowWatchBookmarks": "true",
    }
    assert log.records[-1].verb == "get" and log.records[-1].resource == ""
    log.clear()
    assert log.count() == 0


async def test_faults_from_another_thread_wake_the_watch(
    http: aiohttp.ClientSession, server: ApiServer, reader: Any, async_wait_until: Any
) -> None:
    async with await open_watch(http) as resp:
        await opened(server, 1, async_wait_until)
        await asyncio.to_thread(server.faults.inject_raw_line, b"from a thread")
        assert await reader(resp).line() == b"from a thread\n"
        await asyncio.to_thread(server.faults.drop_watches)
        with pytest.raises(aiohttp.ClientPayloadError):
            await reader(resp).line()
