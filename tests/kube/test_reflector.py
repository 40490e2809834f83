"""The list+watch layer against the API simulator over real HTTP, with injected faults.

After each fault the handler's view must equal the server's state, events must arrive in
resourceVersion order with none delivered twice, and backoff must stay bounded. Every test
on the `running` reflector runs with streaming lists and with lists + watch.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from exporter.kube import watching
from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.watching import (
    ApiSession,
    Reflector,
    ResourceSpec,
    WatchTiming,
    list_objects,
)
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.conftest import wait_for

FAST = WatchTiming(
    page_size=3,
    min_watch_timeout=30,
    inactivity_timeout=1.0,
    request_timeout=5,
    connect_timeout=2,
    backoff_initial=0.01,
    backoff_cap=0.05,
    short_watch=0.3,
)
NODE_A = ResourceSpec("pods", "/api/v1/pods", field_selector="spec.nodeName=node-a")


def _key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


class Recorder:
    """A handler that keeps the state it was told and checks the order of events."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # key -> resourceVersion
        self.lists = 0
        self.delivered: list[tuple[str, str, int]] = []
        self.duplicates: list[tuple[str, str, int]] = []
        self._last_rv = 0

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        self.lists += 1
        self.state = {_key(i): i["metadata"]["resourceVersion"] for i in items}
        self._last_rv = 0

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        entry = (event_type, _key(obj), rv)
        if rv <= self._last_rv:
            self.duplicates.append(entry)  # replayed or out of order
        self._last_rv = rv
        self.delivered.append(entry)
        if event_type == "DELETED":
            self.state.pop(_key(obj), None)
        else:
            self.state[_key(obj)] = obj["metadata"]["resourceVersion"]


def server_view(api: ApiServer, node: str = "node-a") -> dict[str, str]:
    return {
        _key(p): p["metadata"]["resourceVersion"]
        for p in api.store.list("pods")
        if p["spec"].get("nodeName") == node
    }


@pytest.fixture
def connection(kubeconfig: Path) -> KubeConnection:
    return load_connection(str(kubeconfig))


class Running:
    def __init__(self, reflector: Reflector, recorder: Recorder) -> None:
        self.reflector = reflector
        self.recorder = recorder
        self.health = reflector.health

    async def converged(self, api: ApiServer) -> None:
        """The handler holds the server's state, and a watch is open (after a list, the
        watch starts a moment later)."""
        want = server_view(api)
        await wait_for(lambda: self.recorder.state == server_view(api), f"state {want}")
        await wait_for(lambda: api.faults.open_watches >= 1, "an open watch")
        assert self.recorder.duplicates == []


@pytest.fixture(params=["stream", "list"])
async def running(
    api: ApiServer, connection: KubeConnection, request: pytest.FixtureRequest
) -> AsyncIterator[Running]:
    recorder = Recorder()
    async with ApiSession(connection, FAST) as session:
        reflector = Reflector(session, NODE_A, recorder, list_mode=request.param)
        task = asyncio.create_task(reflector.run())
        try:
            yield Running(reflector, recorder)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def add_pods(cluster: Cluster, n: int, node: str = "node-a", start: int = 0) -> list[str]:
    return [
        cluster.add(objects.bare_pod(f"p{node[-1]}{i}", node=node, seed=i))["metadata"]["name"]
        for i in range(start, start + n)
    ]


async def test_the_first_list_comes_from_the_watch_cache_with_the_field_selector(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    add_pods(cluster, 7)
    add_pods(cluster, 3, node="node-b")
    await running.converged(api)
    assert len(running.recorder.state) == 7
    requests = api.requests.matching(resource="pods")
    assert all(r.params.get("fieldSelector") == "spec.nodeName=node-a" for r in requests)
    assert api.requests.storage_reads() == []
    first = requests[0].params
    if running.reflector.list_mode == "list":
        # resourceVersion=0 with a limit: the cache ignores it and answers in one page.
        assert (first["resourceVersion"], first["limit"]) == ("0", "3")
        assert len(api.requests.lists("pods")) == 1
    else:
        assert api.requests.lists("pods") == []
        assert first["sendInitialEvents"] == "true"
        assert first["resourceVersionMatch"] == "NotOlderThan"
        assert first["resourceVersion"] == ""
    watch = api.requests.watches("pods")[0].params
    assert watch["allowWatchBookmarks"] == "true"
    assert 30 <= int(watch["timeoutSeconds"]) < 60  # jittered in [min, 2*min)


async def test_a_consistent_list_follows_continue_tokens(
    api: ApiServer, cluster: Cluster, connection: KubeConnection
) -> None:
    """The one list that may come from etcd (after the cache refused our version) is read in
    pages of `page_size`."""
    add_pods(cluster, 7)
    add_pods(cluster, 3, node="node-b")
    async with ApiSession(connection, FAST) as session:
        items, rv = await list_objects(session, NODE_A)
    assert sorted(_key(i) for i in items) == sorted(server_view(api))
    assert rv == str(api.store.resource_version)
    lists = api.requests.lists("pods")
    assert [r.params.get("limit") for r in lists] == ["3", "3", "3"]
    assert ["continue" in r.params for r in lists] == [False, True, True]
    assert all(r.params.get("fieldSelector") == "spec.nodeName=node-a" for r in lists)


async def test_events_after_the_list_arrive_once_in_order(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    names = add_pods(cluster, 2)
    await running.converged(api)
    cluster.restart("default", names[0], "app", "OOMKilled")
    cluster.terminate("default", names[1])
    cluster.finish_termination("default", names[1])
    await running.converged(api)
    kinds = [(t, k) for t, k, _ in running.recorder.delivered]
    assert kinds == [
        ("MODIFIED", f"default/{names[0]}"),
        ("MODIFIED", f"default/{names[1]}"),
        ("DELETED", f"default/{names[1]}"),
    ]
    assert running.health.events == {"MODIFIED": 2, "DELETED": 1} | (
        {"BOOKMARK": running.health.events["BOOKMARK"]} if "BOOKMARK" in running.health.events
        else {}
    )  # fmt: skip


async def test_bookmarks_advance_so_a_resume_survives_compaction(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    add_pods(cluster, 1)
    await running.converged(api)
    # Only other nodes' pods change: this watch gets no event, yet its version must move on.
    add_pods(cluster, 5, node="node-b")
    target = api.store.resource_version
    await wait_for(
        lambda: int(running.health.resource_version or 0) >= target, "a bookmark at the new rv"
    )
    api.store.compact()  # history before `target` is gone
    api.faults.drop_watches()
    add_pods(cluster, 1, start=1)
    await running.converged(api)
    assert running.recorder.lists == 1, "resumed from the bookmark, no relist needed"
    assert "gone" not in running.health.restarts


async def test_connection_dropped_mid_stream(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    names = add_pods(cluster, 3)
    await running.converged(api)
    for round_ in range(3):
        cluster.restart("default", names[round_], "app", "Error")
        assert api.faults.drop_watches() >= 1
        cluster.flap_readiness("default", names[round_])
        await running.converged(api)
    assert running.recorder.lists == 1, "a dropped connection resumes, it does not relist"
    assert sum(running.health.restarts.values()) >= 3
    assert len(api.requests.watches("pods")) >= 4


async def test_history_compacted_while_changes_happen(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    names = add_pods(cluster, 3)
    await running.converged(api)
    api.faults.stall_watches()
    cluster.restart("default", names[0], "app", "OOMKilled")
    cluster.restart("default", names[0], "app", "OOMKilled")
    cluster.terminate("default", names[1])
    cluster.finish_termination("default", names[1])
    add_pods(cluster, 1, start=10)
    api.store.compact()
    api.faults.stall_watches(False)
    api.faults.expire_watches()
    await running.converged(api)
    assert running.health.restarts.get("gone", 0) >= 1
    assert running.recorder.lists == 2
    assert running.health.synced


async def test_burst_of_500s_backs_off_boundedly(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    add_pods(cluster, 1)
    await running.converged(api)
    api.faults.fail_next(5, 500)
    api.faults.drop_watches()
    add_pods(cluster, 1, start=1)
    await running.converged(api)
    assert running.health.restarts.get("server_error") == 5
    delays = running.reflector.delays
    assert len(delays) == 6  # the dropped connection, then the five 500s
    assert all(0.01 <= d < 2 * FAST.backoff_cap for d in delays), delays
    assert delays[-1] >= FAST.backoff_cap  # doubled up to the cap


async def test_slow_server(api: ApiServer, cluster: Cluster, running: Running) -> None:
    api.faults.delay = 0.3
    names = add_pods(cluster, 4)
    await running.converged(api)
    cluster.restart("default", names[0], "app", "Error")
    await running.converged(api)
    assert running.health.restarts.get("inactivity_timeout", 0) == 0


async def test_silent_connection_is_noticed_by_the_inactivity_timeout(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    names = add_pods(cluster, 1)
    await running.converged(api)
    api.faults.stall_watches()
    cluster.restart("default", names[0], "app", "Error")
    await wait_for(
        lambda: running.health.restarts.get("inactivity_timeout", 0) >= 1,
        "the inactivity timeout",
    )
    api.faults.stall_watches(False)
    await running.converged(api)
    restarts = [e for e in running.recorder.delivered if e[1] == f"default/{names[0]}"]
    assert len(restarts) == 1, "the change made during the stall arrives exactly once"


async def test_a_line_that_is_not_json_is_counted_and_relisted(
    api: ApiServer, cluster: Cluster, running: Running
) -> None:
    add_pods(cluster, 1)
    await running.converged(api)
    api.faults.inject_raw_line(b"<html>502 Bad Gateway</html>")
    add_pods(cluster, 1, start=1)
    await running.converged(api)
    await wait_for(lambda: running.recorder.lists == 2, "a relist after the bad line")
    assert running.health.dropped == {"watch_decode": 1}
    assert running.health.restarts.get("decode_error") == 1


async def test_forbidden_is_reported_and_retried(
    api: ApiServer, cluster: Cluster, connection: KubeConnection
) -> None:
    api.faults.forbid("pods")
    recorder = Recorder()
    async with ApiSession(connection, FAST) as session:
        reflector = Reflector(session, NODE_A, recorder)
        task = asyncio.create_task(reflector.run())
        try:
            await wait_for(
                lambda: reflector.health.restarts.get("forbidden", 0) >= 2, "403 retries"
            )
            assert not reflector.health.synced
            api.faults.permit("pods")
            await wait_for(lambda: reflector.health.synced, "sync once permitted")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_watch_that_ends_at_once_is_an_error(unused_tcp_port: int) -> None:
    """A server (or proxy) that closes every watch immediately must not cause a hot loop."""

    async def pods(request: web.Request) -> web.Response:
        if request.query.get("watch"):
            return web.Response(body=b"", content_type="application/json")
        return web.json_response({"kind": "PodList", "metadata": {"resourceVersion": "5"},
                                  "items": []})  # fmt: skip

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    connection = KubeConnection(f"http://127.0.0.1:{unused_tcp_port}", None, "test")
    try:
        async with ApiSession(connection, FAST) as session:
            reflector = Reflector(session, NODE_A, Recorder())
            task = asyncio.create_task(reflector.run())
            await wait_for(
                lambda: reflector.health.restarts.get("short_watch", 0) >= 3, "short watches"
            )
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(reflector.delays) >= 3, "each short watch was followed by a backoff"
    finally:
        await runner.cleanup()


async def test_a_burst_of_events_lets_the_event_loop_run_between_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of events can come in one read (a burst that deletes half the Services):
    the reflector hands them over a few at a time, so the prober and /healthz keep running.
    The stream here yields them without ever waiting, as one read's worth does."""
    n = 1000

    async def one_read(*args: object, **kwargs: object) -> AsyncIterator[tuple[str, Any]]:
        for i in range(n):
            meta = {"namespace": "default", "name": f"p{i}", "resourceVersion": str(i + 1)}
            yield "MODIFIED", {"metadata": meta}

    monkeypatch.setattr(watching, "stream_watch", one_read)
    recorder = Recorder()
    reflector = Reflector(SimpleNamespace(timing=FAST), NODE_A, recorder, list_mode="list")  # type: ignore[arg-type]
    reflector._need_list = False  # resume a watch
    turns: list[int] = []

    async def other_work() -> None:
        while True:
            turns.append(len(recorder.delivered))
            await asyncio.sleep(0)

    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    await reflector._watch()
    task.cancel()
    assert len(recorder.delivered) == n
    steps = [b - a for a, b in itertools.pairwise(turns)]
    assert max(steps) <= watching.YIELD_EVERY
