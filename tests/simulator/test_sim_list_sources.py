"""Where a real API server serves each list and watch (its watch cache or etcd), what each
client cost, a watch cache that lags, streaming lists and servers without them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from exporter.simulator import ApiServer
from exporter.simulator.faults import RequestRecord
from tests.simulator.test_sim_protocol import Factory, get_json, names


def last(server: ApiServer) -> RequestRecord:
    return server.requests.records[-1]


async def open_watch(
    http: aiohttp.ClientSession, path: str = "/api/v1/pods", **params: str
) -> aiohttp.ClientResponse:
    resp = await http.get(path, params={"watch": "1", **params})
    assert resp.status == 200, await resp.text()
    return resp


STREAMING_LIST = {
    "sendInitialEvents": "true",
    "resourceVersionMatch": "NotOlderThan",
    "allowWatchBookmarks": "true",
}


# ---- where each request is served ----------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "served_from", "one_page"),
    [
        ({}, "storage", True),  # a consistent read
        ({"limit": "2"}, "storage", False),
        ({"resourceVersion": "0"}, "cache", True),
        ({"resourceVersion": "0", "limit": "2"}, "cache", True),  # the cache ignores limit
        ({"resourceVersion": "OLD", "resourceVersionMatch": "NotOlderThan"}, "cache", True),
        (
            {"resourceVersion": "OLD", "resourceVersionMatch": "NotOlderThan", "limit": "2"},
            "cache",
            True,
        ),
        ({"resourceVersion": "OLD"}, "cache", True),  # no limit, no match: not older than
        ({"resourceVersion": "OLD", "limit": "2"}, "storage", True),  # legacy exact
        ({"resourceVersion": "OLD", "resourceVersionMatch": "Exact"}, "storage", True),
    ],
)
async def test_where_each_list_is_served(
    http: aiohttp.ClientSession,
    server: ApiServer,
    make_pod: Factory,
    params: dict[str, str],
    served_from: str,
    one_page: bool,
) -> None:
    server.store.create("pods", make_pod("a"))
    old = str(server.store.resource_version)
    for name in ("b", "c", "d"):
        server.store.create("pods", make_pod(name))
    params = {k: old if v == "OLD" else v for k, v in params.items()}
    code, body = await get_json(http, "/api/v1/pods", **params)
    assert code == 200
    assert last(server).served_from == served_from
    assert ("continue" not in body["metadata"]) is one_page
    if served_from == "storage" and "resourceVersion" in params:
        assert names(body) == ["a"], "read exactly at the version"
    elif one_page:
        assert names(body) == ["a", "b", "c", "d"]
    if "continue" in body["metadata"]:
        await get_json(
            http, "/api/v1/pods", limit="2", **{"continue": body["metadata"]["continue"]}
        )
        assert last(server).served_from == "storage", "the watch cache keeps no continuation"
    reads = server.requests.storage_reads("pods")
    assert reads == [r for r in server.requests.lists() if r.served_from == "storage"]
    assert bool(reads) is (served_from == "storage")


async def test_every_watch_is_served_from_the_cache(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    server.store.create("pods", make_pod("a"))
    at = str(server.store.resource_version)
    for params in ({}, {"resourceVersion": "0"}, {"resourceVersion": at}, STREAMING_LIST):
        async with await open_watch(http, **params):
            pass
    assert [r.served_from for r in server.requests.watches("pods")] == ["cache"] * 4
    assert server.requests.storage_reads() == []
    assert len(server.requests.cache_reads("pods")) == 4
    await get_json(http, "/api/v1/pods/nothing")
    await get_json(http, "/version")
    assert [r.served_from for r in server.requests.records[-2:]] == ["", ""]


async def test_a_refused_or_injected_failure_is_no_read(
    http: aiohttp.ClientSession, server: ApiServer
) -> None:
    code, _ = await get_json(http, "/api/v1/pods", resourceVersion="0", resourceVersionMatch="x")
    assert code == 400
    server.faults.fail_next(1, 500, "pods")
    code, _ = await get_json(http, "/api/v1/pods")
    assert code == 500
    assert [r.served_from for r in server.requests.lists()] == ["", ""]
    future = str(server.store.resource_version + 5)
    code, _ = await get_json(http, "/api/v1/pods", resourceVersion=future)
    assert code == 504 and last(server).served_from == "cache"  # the cache waited for it


# ---- what each client cost -----------------------------------------------------------------


async def test_requests_record_the_client_bytes_and_events(
    server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    server.store.create("pods", make_pod("b"))
    auth = {"Authorization": "Bearer sim-token"}
    read = bytearray()
    seen: dict[str, int] = {}

    async def next_event(watch: Any) -> dict[str, Any]:
        line = await watch.line()
        read.extend(line)
        event: dict[str, Any] = json.loads(line)
        seen[event["type"]] = seen.get(event["type"], 0) + 1
        return event

    async with (
        aiohttp.ClientSession(server.url, headers={**auth, "User-Agent": "lister"}) as lister,
        aiohttp.ClientSession(server.url, headers={**auth, "User-Agent": "watcher"}) as watcher,
    ):
        async with lister.get("/api/v1/pods", params={"resourceVersion": "0"}) as resp:
            listed = await resp.read()
        async with await open_watch(watcher, **STREAMING_LIST) as resp:
            watch = reader(resp)
            event = await next_event(watch)
            while event["object"]["metadata"].get("annotations") is None:  # the end marker
                event = await next_event(watch)
            server.store.create("pods", make_pod("c"))
            while event["object"]["metadata"].get("name") != "c":
                event = await next_event(watch)
            server.faults.close_all()  # a clean end: everything sent gets read
            while line := await watch.line():
                read.extend(line)
                event = json.loads(line)
                seen[event["type"]] = seen.get(event["type"], 0) + 1
    log = server.requests
    assert log.clients() == {"lister", "watcher"}
    assert log.bytes_sent(client="lister") == len(listed)
    assert log.bytes_sent(client="watcher") == len(read)
    assert log.events_sent(client="watcher") == seen
    assert seen["ADDED"] == 3 and seen["BOOKMARK"] >= 1
    (watch_record,) = log.matching("watch", "pods", client="watcher")
    assert watch_record.events_total == sum(seen.values())
    assert log.events_sent(client="lister") == {}


# ---- a lagging watch cache -----------------------------------------------------------------


async def test_a_lagging_cache_answers_old_lists_but_never_older_than_asked(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory
) -> None:
    store = server.store
    store.create("pods", make_pod("a"))
    at_a = store.resource_version
    store.create("pods", make_pod("b"))
    store.create("pods", make_pod("c"))
    server.faults.cache_lag = store.resource_version - at_a
    _, body = await get_json(http, "/api/v1/pods", resourceVersion="0")
    assert names(body) == ["a"] and body["metadata"]["resourceVersion"] == str(at_a)
    _, body = await get_json(
        http, "/api/v1/pods", resourceVersion=str(at_a + 1), resourceVersionMatch="NotOlderThan"
    )
    assert names(body) == ["a", "b"], "the cache catches up to the version asked for"
    _, body = await get_json(http, "/api/v1/pods")
    assert names(body) == ["a", "b", "c"], "storage does not lag"
    store.compact()
    _, body = await get_json(http, "/api/v1/pods", resourceVersion="0")
    assert names(body) == ["a", "b", "c"], "never older than the compacted history"
    server.faults.clear()
    assert server.faults.cache_lag == 0


# ---- streaming lists -----------------------------------------------------------------------


async def test_a_streaming_list_is_not_older_than_its_version(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    store = server.store
    store.create("pods", make_pod("a", node="node-a"))
    old = str(store.resource_version)
    store.create("pods", make_pod("b", node="node-b"))
    store.create("pods", make_pod("c", node="node-a"))
    store.compact()  # a streaming list from an old version is no 410: it is the state now
    async with await open_watch(
        http, resourceVersion=old, fieldSelector="spec.nodeName=node-a", **STREAMING_LIST
    ) as resp:
        watch = reader(resp)
        events = [await watch.event() for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "c"),
        ("BOOKMARK", None),
    ]
    assert events[2]["object"]["metadata"] == {
        "resourceVersion": str(store.resource_version),
        "annotations": {"k8s.io/initial-events-end": "true"},
    }
    future = str(store.resource_version + 1)
    code, body = await get_json(
        http, "/api/v1/pods", watch="1", resourceVersion=future, **STREAMING_LIST
    )
    assert code == 504 and body["reason"] == "Timeout"
    assert body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


async def test_a_server_without_streaming_lists_refuses_them(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    server.faults.watch_list_unsupported = "refuse"
    code, body = await get_json(http, "/api/v1/pods", watch="1", **STREAMING_LIST)
    assert code == 422 and body["reason"] == "Invalid"
    assert "sendInitialEvents is forbidden for watch" in body["message"]
    assert server.requests.cache_reads() == []  # refused: nothing was read
    async with await open_watch(http) as resp:  # plain watches still work
        assert (await reader(resp).event())["type"] == "ADDED"
    server.faults.clear()
    assert server.faults.watch_list_unsupported == ""
    with pytest.raises(ValueError, match="not '', 'refuse' or 'ignore'"):
        server.faults.watch_list_unsupported = "maybe"  # type: ignore[assignment]


async def test_a_server_that_ignores_streaming_lists_sends_no_end_marker(
    http: aiohttp.ClientSession, server: ApiServer, make_pod: Factory, reader: Any
) -> None:
    server.store.create("pods", make_pod("a"))
    server.faults.watch_list_unsupported = "ignore"
    async with await open_watch(http, **STREAMING_LIST) as resp:
        watch = reader(resp)
        added = await watch.event()
        bookmark = await watch.until(lambda e: e["type"] == "BOOKMARK")
    assert added["type"] == "ADDED"
    assert "annotations" not in bookmark["object"]["metadata"]
