"""The raw HTTP protocol: discovery, Status errors, auth, lists with pagination, watches."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from exporter.simulator import ApiServer
from exporter.simulator.status import CONTINUE_EXPIRED, LIST_EXPIRED

Factory = Callable[..., dict[str, Any]]


async def get_json(http: aiohttp.ClientSession, path: str, **params: str) -> tuple[int, Any]:
    async with http.get(path, params=params) as resp:
        return resp.status, await resp.json()


def names(body: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in body["items"]]


def status(code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        **extra,
        "code": code,
    }
    return body


# ---- discovery, auth, errors -------------------------------------------------------------------


async def test_discovery_documents(http: aiohttp.ClientSession, server: ApiServer) -> None:
    code, version = await get_json(http, "/version")
    assert code == 200 and version["major"] == "1" and version["gitVersion"].startswith("v1.")
    _, api = await get_json(http, "/api")
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    _, groups = await get_json(http, "/apis")
    assert [g["name"] for g in groups["groups"]] == ["discovery.k8s.io", "events.k8s.io"]
    assert groups["groups"][0]["preferredVersion"]["groupVersion"] == "discovery.k8s.io/v1"
    _, core = await get_json(http, "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["kind"] == "Pod" and by_name["pods"]["namespaced"] is True
    assert "watch" in by_name["pods"]["verbs"] and by_name["pods"]["shortNames"] == ["po"]
    assert {"pods", "pods/status", "services", "services/status"} <= set(by_name)
    _, discovery = await get_json(http, "/apis/discovery.k8s.io/v1")
    assert discovery["groupVersion"] == "discovery.k8s.io/v1"
    assert [r["name"] for r in discovery["resources"]] == ["endpointslices"]


async def test_unknown_paths_and_methods_get_status_bodies(http: aiohttp.ClientSession) -> None:
    code, body = await get_json(http, "/api/v1/configmaps")
    assert code == 404
    assert body == status(404, "NotFound", "the server could not find the requested resource")
    code, body = await get_json(http, "/apis/discovery.k8s.io/v1/pods")
    assert code == 404
    async with http.post("/api/v1/pods", json={}) as resp:
        assert resp.status == 405
        assert (await resp.json())["reason"] == "MethodNotAllowed"
    async with http.delete("/api/v1/namespaces/default/pods") as resp:
        assert resp.status == 405


async def test_bearer_token_is_required(server: ApiServer) -> None:
    async with aiohttp.ClientSession(base_url=server.url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            async with anonymous.get("/api/v1/pods", headers=headers) as resp:
                assert resp.status == 401
                assert await resp.json() == status(401, "Unauthorized", "Unauthorized")
        async with anonymous.get(
            "/api/v1/pods", headers={"Authorization": "bearer sim-token"}
        ) as resp:
            assert resp.status == 200


async def test_a_server_without_a_token_needs_no_credentials() -> None:
    async with (
        ApiServer() as open_server,
        aiohttp.ClientSession(base_url=open_server.url) as http,
        http.get("/api/v1/pods") as resp,
    ):
        assert resp.status == 200


# ---- lists -------------------------------------------------------------------------------------


async def test_list_shape_like_the_real_server(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    make_service: Factory,
    make_endpoint_slice: Factory,
) -> None:
    server.store.create("pods", make_pod("b", namespace="prod"))
    server.store.create("pods", make_pod("a", namespace="prod"))
    server.store.create("pods", make_pod("c", namespace="dev"))
    server.store.create("services", make_service("web"))
    server.store.create("endpointslices", make_endpoint_slice("web-abc", "web"))
    code, body = await get_json(http, "/api/v1/pods")
    assert code == 200
    assert body["kind"] == "PodList" and body["apiVersion"] == "v1"
    assert body["metadata"] == {"resourceVersion": str(server.store.resource_version)}
    assert names(body) == ["c", "a", "b"]
    assert all("kind" not in i and "apiVersion" not in i for i in body["items"])
    _, body = await get_json(http, "/api/v1/namespaces/prod/pods")
    assert names(body) == ["a", "b"]
    _, one = await get_json(http, "/api/v1/namespaces/prod/pods/a")
    assert one["kind"] == "Pod" and one["apiVersion"] == "v1" and one["metadata"]["name"] == "a"
    code, missing = await get_json(http, "/api/v1/namespaces/dev/pods/a")
    assert code == 404
    assert missing == status(
        404, "NotFound", 'pods "a" not found', details={"name": "a", "kind": "pods"}
    )
    _, services = await get_json(http, "/api/v1/services")
    assert services["kind"] == "ServiceList" and names(services) == ["web"]
    _, slices = await get_json(http, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")
    assert slices["kind"] == "EndpointSliceList"
    assert slices["apiVersion"] == "discovery.k8s.io/v1" and names(slices) == ["web-abc"]
    code, missing = await get_json(
        http, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/x"
    )
    assert missing["message"] == 'endpointslices.discovery.k8s.io "x" not found'


async def test_selectors_on_lists(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, make_endpoint_slice: Factory
) -> None:
    server.store.create("pods", make_pod("a", node="node-a", labels={"app": "web", "tier": "fe"}))
    server.store.create("pods", make_pod("b", node="node-b", labels={"app": "web"}))
    server.store.create("pods", make_pod("c", node="node-a", labels={"app": "db"}, phase="Pending"))
    server.store.create("pods", make_pod("d", node=None, labels={}))
    cases = {
        "fieldSelector=spec.nodeName%3Dnode-a": ["a", "c"],
        "fieldSelector=spec.nodeName%3D": ["d"],
        "fieldSelector=spec.nodeName!%3Dnode-a": ["b", "d"],
        "fieldSelector=status.phase%3DRunning,spec.nodeName%3Dnode-a": ["a"],
        "fieldSelector=metadata.name%3Db": ["b"],
        "labelSelector=app%20in%20(web,db),!tier": ["b", "c"],
        "labelSelector=app%20notin%20(web)": ["c", "d"],
        "labelSelector=tier&fieldSelector=spec.nodeName%3Dnode-a": ["a"],
    }
    for query, expected in cases.items():
        async with http.get(f"/api/v1/pods?{query}") as resp:
            assert resp.status == 200, query
            assert names(await resp.json()) == expected, query
    server.store.create("endpointslices", make_endpoint_slice("web-1", "web"))
    server.store.create("endpointslices", make_endpoint_slice("db-1", "db"))
    _, body = await get_json(
        http,
        "/apis/discovery.k8s.io/v1/endpointslices",
        labelSelector="kubernetes.io/service-name=web",
    )
    assert names(body) == ["web-1"]


async def test_selector_errors_are_bad_requests(http: aiohttp.ClientSession) -> None:
    code, body = await get_json(http, "/api/v1/pods", fieldSelector="spec.foo=x")
    assert code == 400
    assert body == status(400, "BadRequest", "field label not supported: spec.foo")
    code, body = await get_json(
        http, "/apis/discovery.k8s.io/v1/endpointslices", fieldSelector="spec.nodeName=x"
    )
    assert code == 400 and body["message"] == "field label not supported: spec.nodeName"
    code, body = await get_json(http, "/api/v1/pods", labelSelector="app in (")
    assert code == 400 and body["reason"] == "BadRequest"
    code, body = await get_json(http, "/api/v1/pods", fieldSelector="nonsense")
    assert code == 400 and "can't understand 'nonsense'" in body["message"]
    code, body = await get_json(http, "/api/v1/pods", watch="maybe")
    assert code == 400


async def test_pages_stay_consistent_while_objects_change(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    store = server.store
    for i in range(5):
        store.create("pods", make_pod(f"p{i}"))
    _, first = await get_json(http, "/api/v1/pods", limit="2")
    snapshot_rv = first["metadata"]["resourceVersion"]
    assert names(first) == ["p0", "p1"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    assert json.loads(base64.urlsafe_b64decode(token + "==")) == {
        "v": "meta.k8s.io/v1",
        "rv": int(snapshot_rv),
        "start": "default/p1\x00",
    }
    # Change everything the next pages would show.
    store.patch("pods", "default", "p2", lambda o: o["metadata"]["labels"].update(changed="yes"))
    store.remove("pods", "default", "p3")
    store.create("pods", make_pod("p25"))
    store.create("pods", make_pod("p9"))
    _, second = await get_json(http, "/api/v1/pods", limit="2", **{"continue": token})
    assert names(second) == ["p2", "p3"]
    assert second["items"][0]["metadata"]["labels"] == {}, "the state at the first page's version"
    assert second["metadata"]["resourceVersion"] == snapshot_rv
    assert second["metadata"]["remainingItemCount"] == 1
    _, third = await get_json(
        http, "/api/v1/pods", limit="2", **{"continue": second["metadata"]["continue"]}
    )
    assert names(third) == ["p4"]
    assert third["metadata"] == {"resourceVersion": snapshot_rv}
    # A fresh list sees the changes.
    _, fresh = await get_json(http, "/api/v1/pods")
    assert names(fresh) == ["p0", "p1", "p2", "p25", "p4", "p9"]


async def test_pages_with_selectors_have_no_remaining_count(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    for i in range(6):
        server.store.create("pods", make_pod(f"p{i}", node="node-a" if i % 2 else "node-b"))
    seen: list[str] = []
    params = {"limit": "2", "fieldSelector": "spec.nodeName=node-a"}
    while True:
        _, page = await get_json(http, "/api/v1/pods", **params)
        assert "remainingItemCount" not in page["metadata"]
        seen += names(page)
        if not page["metadata"].get("continue"):
            break
        params["continue"] = page["metadata"]["continue"]
    assert seen == ["p1", "p3", "p5"]


async def test_an_expired_continue_token_is_410_with_an_inconsistent_token(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    for i in range(4):
        server.store.create("pods", make_pod(f"p{i}"))
    _, first = await get_json(http, "/api/v1/pods", limit="2")
    server.store.remove("pods", "default", "p3")
    server.store.compact()
    code, body = await get_json(
        http, "/api/v1/pods", limit="2", **{"continue": first["metadata"]["continue"]}
    )
    assert code == 410
    assert body["reason"] == "Expired" and body["code"] == 410
    assert body["message"] == CONTINUE_EXPIRED
    assert body["message"].startswith(
        "The provided continue parameter is too old to display a consistent list result. "
        "You can start a new list without the continue parameter"
    )
    # The token in the Status continues at the latest version, without p3.
    code, rest = await get_json(
        http, "/api/v1/pods", limit="2", **{"continue": body["metadata"]["continue"]}
    )
    assert code == 200 and names(rest) == ["p2"]
    assert rest["metadata"]["resourceVersion"] == str(server.store.resource_version)


async def test_list_parameter_errors(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    server.store.create("pods", make_pod("a"))
    server.store.create("pods", make_pod("b"))
    _, first = await get_json(http, "/api/v1/pods", limit="1")
    code, body = await get_json(
        http, "/api/v1/pods", resourceVersion="1", **{"continue": first["metadata"]["continue"]}
    )
    assert code == 400 and "not allowed when using continue" in body["message"]
    code, body = await get_json(http, "/api/v1/pods", **{"continue": "not-a-token"})
    assert code == 400 and body["message"].startswith("continue key is not valid")
    code, body = await get_json(http, "/api/v1/pods", limit="x")
    assert code == 400
    code, body = await get_json(http, "/api/v1/pods", resourceVersion="abc")
    assert code == 400


async def test_list_resource_version_semantics(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    store = server.store
    store.create("pods", make_pod("a"))
    old = store.resource_version
    store.create("pods", make_pod("b"))
    now = str(store.resource_version)
    _, exact = await get_json(
        http, "/api/v1/pods", resourceVersion=str(old), resourceVersionMatch="Exact"
    )
    assert names(exact) == ["a"] and exact["metadata"]["resourceVersion"] == str(old)
    _, legacy = await get_json(http, "/api/v1/pods", resourceVersion=str(old), limit="10")
    assert names(legacy) == ["a"], "a version with a limit reads exactly at it"
    for params in (
        {"resourceVersion": str(old)},
        {"resourceVersion": "0"},
        {"resourceVersion": str(old), "resourceVersionMatch": "NotOlderThan"},
    ):
        _, body = await get_json(http, "/api/v1/pods", **params)
        assert names(body) == ["a", "b"] and body["metadata"]["resourceVersion"] == now, params
    code, body = await get_json(http, "/api/v1/pods", resourceVersion=str(int(now) + 10))
    assert code == 504 and body["reason"] == "Timeout"
    assert body["message"] == f"Too large resource version: {int(now) + 10}, current: {now}"
    store.compact()
    code, body = await get_json(
        http, "/api/v1/pods", resourceVersion=str(old), resourceVersionMatch="Exact"
    )
    assert code == 410 and body == status(410, "Expired", LIST_EXPIRED)
    code, body = await get_json(http, "/api/v1/pods", resourceVersionMatch="Exact")
    assert code == 400


# ---- watches -------------------------------------------------------------------------------


async def open_watch(
    http: aiohttp.ClientSession, path: str = "/api/v1/pods", **params: str
) -> aiohttp.ClientResponse:
    resp = await http.get(path, params={"watch": "true", **params})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    return resp


async def test_watch_from_a_resource_version_replays_history_then_goes_live(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    store = server.store
    store.create("pods", make_pod("before"))
    start = store.resource_version
    store.create("pods", make_pod("a"))
    store.patch("pods", "default", "a", lambda o: o["status"].update(phase="Succeeded"))
    async with await open_watch(http, resourceVersion=str(start)) as resp:
        watch = reader(resp)
        replayed = await watch.events(2)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in replayed] == [
            ("ADDED", "a"),
            ("MODIFIED", "a"),
        ]
        assert (
            replayed[0]["object"]["kind"] == "Pod" and replayed[0]["object"]["apiVersion"] == "v1"
        )
        store.delete("pods", "default", "a")  # finished: goes at once
        (deleted,) = await watch.events(1)
        assert deleted["type"] == "DELETED"
        assert deleted["object"]["metadata"]["resourceVersion"] == str(store.resource_version)
        assert deleted["object"]["status"]["phase"] == "Succeeded", "the last state"


@pytest.mark.parametrize("resource_version", [None, "0"])
async def test_watch_without_a_version_starts_with_the_current_state(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    reader: Any,
    resource_version: str | None,
) -> None:
    server.store.create("pods", make_pod("a", namespace="prod"))
    server.store.create("pods", make_pod("b", namespace="dev"))
    server.store.create("pods", make_pod("c", namespace="prod"))
    params = {} if resource_version is None else {"resourceVersion": resource_version}
    async with await open_watch(http, "/api/v1/namespaces/prod/pods", **params) as resp:
        watch = reader(resp)
        initial = await watch.events(2)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [
            ("ADDED", "a"),
            ("ADDED", "c"),
        ]
        server.store.create("pods", make_pod("d", namespace="dev"))
        server.store.create("pods", make_pod("e", namespace="prod"))
        (live,) = await watch.events(1)
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "e")


async def test_objects_entering_and_leaving_a_selector_are_added_and_deleted(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    store = server.store
    store.create("pods", make_pod("a", labels={"app": "web"}))
    start = store.resource_version

    def relabel(app: str) -> Callable[[dict[str, Any]], None]:
        return lambda o: o["metadata"]["labels"].update(app=app)

    async with await open_watch(http, resourceVersion=str(start), labelSelector="app=web") as resp:
        watch = reader(resp)
        store.patch("pods", "default", "a", relabel("api"))
        left_rv = store.resource_version
        store.patch("pods", "default", "a", lambda o: o["status"].update(phase="Failed"))  # unseen
        store.patch("pods", "default", "a", relabel("web"))
        store.patch("pods", "default", "a", lambda o: o["metadata"]["labels"].update(x="1"))
        events = await watch.events(3)
    assert [e["type"] for e in events] == ["DELETED", "ADDED", "MODIFIED"]
    left = events[0]["object"]
    assert left["metadata"]["labels"] == {"app": "web"}, "the last state that matched"
    assert left["metadata"]["resourceVersion"] == str(left_rv), "at the change's version"
    assert events[1]["object"]["status"]["phase"] == "Failed"


async def test_bookmarks_advance_with_the_global_version(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    make_service: Factory,
    reader: Any,
) -> None:
    server.store.create("pods", make_pod("a", node="node-a"))
    start = server.store.resource_version
    async with await open_watch(
        http,
        resourceVersion=str(start),
        allowWatchBookmarks="true",
        fieldSelector="spec.nodeName=node-a",
    ) as resp:
        watch = reader(resp)
        first = await watch.until(lambda e: e["type"] == "BOOKMARK")
        assert first["object"] == {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(start)},
        }
        # Nothing this watch selects changes, yet its bookmarks must follow the global version.
        server.store.create("services", make_service("unrelated"))
        server.store.create("pods", make_pod("elsewhere", node="node-b"))
        target = str(server.store.resource_version)
        advanced = await watch.until(
            lambda e: (
                e["type"] == "BOOKMARK" and e["object"]["metadata"]["resourceVersion"] == target
            )
        )
        assert advanced["object"]["kind"] == "Pod"


async def test_timeout_seconds_ends_the_watch_cleanly_and_no_unasked_bookmarks(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    started = time.monotonic()
    async with await open_watch(http, timeoutSeconds="1") as resp:
        lines = []
        async with asyncio.timeout(5):
            async for line in resp.content:
                lines.append(json.loads(line))
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 4
    assert [e["type"] for e in lines] == ["ADDED"], "no BOOKMARK unless allowWatchBookmarks"


async def test_watch_from_a_compacted_version_gets_an_expired_error_event(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    old = server.store.resource_version
    server.store.create("pods", make_pod("b"))
    compacted = server.store.compact()
    async with await open_watch(http, resourceVersion=str(old - 1)) as resp:
        watch = reader(resp)
        event = await watch.event()
        assert event == {
            "type": "ERROR",
            "object": status(410, "Expired", f"too old resource version: {old - 1} ({compacted})"),
        }
        await watch.end()
    async with await open_watch(http, resourceVersion=str(compacted)) as resp:
        server.store.create("pods", make_pod("c"))
        (event,) = await reader(resp).events(1)
        assert event["object"]["metadata"]["name"] == "c"


async def test_watch_from_a_future_version_is_refused(
    http: aiohttp.ClientSession, server: ApiServer
) -> None:
    future = server.store.resource_version + 5
    code, body = await get_json(http, "/api/v1/pods", watch="1", resourceVersion=str(future))
    assert code == 504 and body["message"].startswith("Too large resource version")


async def test_send_initial_events_ends_with_an_annotated_bookmark(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    at = str(server.store.resource_version)
    async with await open_watch(
        http,
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    ) as resp:
        watch = reader(resp)
        added, end = await watch.event(), await watch.event()
    assert added["type"] == "ADDED"
    assert end == {
        "type": "BOOKMARK",
        "object": {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "resourceVersion": at,
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        },
    }
    code, _ = await get_json(http, "/api/v1/pods", watch="1", sendInitialEvents="true")
    assert code == 422


async def test_events_reach_watchers_in_order_exactly_once(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    start = server.store.resource_version
    async with (
        await open_watch(http, resourceVersion=str(start)) as a,
        await open_watch(http, resourceVersion=str(start)) as b,
    ):

        def write() -> None:
            for i in range(100):
                server.store.create("pods", make_pod(f"p{i}"))
                server.store.patch(
                    "pods", "default", f"p{i}", lambda o: o["metadata"]["labels"].update(x="y")
                )

        await asyncio.to_thread(write)
        for resp in (a, b):
            events = await reader(resp).events(200)
            versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
            assert versions == list(range(start + 1, start + 201))


async def test_a_watch_whose_client_left_is_released(
    http: aiohttp.ClientSession, server: ApiServer, async_wait_until: Any
) -> None:
    resp = await open_watch(http)
    await async_wait_until(lambda: server.store.watcher_count == 1, what="the watch to open")
    resp.close()
    await async_wait_until(lambda: server.store.watcher_count == 0, what="the watch to be released")
    assert server.faults.open_watches == 0


async def test_stop_ends_open_watches(make_pod: Factory, reader: Any) -> None:
    srv = ApiServer()
    await srv.start()
    async with aiohttp.ClientSession(base_url=srv.url) as http, await open_watch(http) as resp:
        started = time.monotonic()
        await srv.stop()
        await reader(resp).end()
        assert time.monotonic() - started < 2


# ---- writes --------------------------------------------------------------------------------


async def test_create_get_update_patch_delete_over_http(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    base = "/api/v1/namespaces/default/pods"
    async with http.post(base, json=make_pod("a", grace=10)) as resp:
        assert resp.status == 201
        created = await resp.json()
    async with http.post(base, json=make_pod("a")) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "AlreadyExists"
    async with http.post("/api/v1/namespaces/other/pods", json=make_pod("b")) as resp:
        assert resp.status == 400
    # PUT: a stale version conflicts; status cannot change through the main resource.
    stale = dict(created)
    fresh = {
        **created,
        "metadata": {**created["metadata"], "labels": {"v": "2"}},
        "status": {"phase": "Failed"},
    }
    async with http.put(f"{base}/a", json=fresh) as resp:
        assert resp.status == 200
        updated = await resp.json()
    assert updated["metadata"]["labels"] == {"v": "2"} and updated["status"]["phase"] == "Running"
    async with http.put(f"{base}/a", json=stale) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "Conflict"
    async with http.put(
        f"{base}/a/status",
        json={
            **updated,
            "status": {"phase": "Pending"},
            "metadata": {**updated["metadata"], "labels": {}},
        },
    ) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"]["phase"] == "Pending" and body["metadata"]["labels"] == {"v": "2"}
    # PATCH flavours.
    merge = {"Content-Type": "application/merge-patch+json"}
    async with http.patch(
        f"{base}/a", data=json.dumps({"metadata": {"labels": {"v": None, "w": "1"}}}), headers=merge
    ) as resp:
        assert (await resp.json())["metadata"]["labels"] == {"w": "1"}
    strategic = {"Content-Type": "application/strategic-merge-patch+json"}
    sidecar = {"spec": {"containers": [{"name": "sidecar", "image": "proxy:1"}]}}
    async with http.patch(f"{base}/a", data=json.dumps(sidecar), headers=strategic) as resp:
        containers = (await resp.json())["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app", "sidecar"], "merged by name"
    json_patch = {"Content-Type": "application/json-patch+json"}
    ops = [
        {"op": "test", "path": "/metadata/labels/w", "value": "1"},
        {"op": "add", "path": "/metadata/labels/z", "value": "2"},
    ]
    async with http.patch(f"{base}/a", data=json.dumps(ops), headers=json_patch) as resp:
        assert (await resp.json())["metadata"]["labels"] == {"w": "1", "z": "2"}
    ops = [{"op": "test", "path": "/metadata/labels/w", "value": "nope"}]
    async with http.patch(f"{base}/a", data=json.dumps(ops), headers=json_patch) as resp:
        assert resp.status == 422
    async with http.patch(
        f"{base}/a", data="{}", headers={"Content-Type": "application/apply-patch+yaml"}
    ) as resp:
        assert resp.status == 415
    async with http.patch(
        f"{base}/a/status", data=json.dumps({"status": {"podIP": "127.0.10.9"}}), headers=merge
    ) as resp:
        assert (await resp.json())["status"] == {"phase": "Pending", "podIP": "127.0.10.9"}
    # DELETE: graceful (body DeleteOptions), repeated (no-op), then grace 0.
    async with http.delete(
        f"{base}/a", json={"kind": "DeleteOptions", "gracePeriodSeconds": 7}
    ) as resp:
        terminating = await resp.json()
    assert terminating["metadata"]["deletionGracePeriodSeconds"] == 7
    async with http.delete(f"{base}/a") as resp:
        assert await resp.json() == terminating, "a plain repeat changes nothing on the real server"
    async with http.delete(f"{base}/a", params={"gracePeriodSeconds": "0"}) as resp:
        assert resp.status == 200
    assert server.store.list("pods") == []
    async with http.delete(f"{base}/a") as resp:
        assert resp.status == 404
