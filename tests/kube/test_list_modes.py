"""Where the reflector's lists come from: the watch cache, in every list mode and after every
relist, never a consistent read from etcd unless the cache cannot serve our version.

The simulator records, for each request, where a real API server would have served it
(`served_from`), so `storage_reads()` is what 5,000 agents would cost etcd.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.watching import (
    LIST_MODES,
    ApiSession,
    Reflector,
)
from exporter.settings import OPTIONS, ConfigError, load_settings
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.faults import RequestRecord
from tests.conftest import wait_for
from tests.kube.test_reflector import FAST, NODE_A

AGENT = "tailwatch/test node/node-a"


def _key(obj: Mapping[str, Any]) -> str:
    return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _rv(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"]["resourceVersion"])


class DiffRecorder:
    """A handler that reports changes the way the agent's handlers do: a relist is diffed
    against the state held, an event that changes nothing reports nothing."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # key -> resourceVersion
        self.lists = 0
        self.changes: list[tuple[str, str, str]] = []  # (change, key, resourceVersion)

    def on_list(self, items: list[Mapping[str, Any]]) -> None:
        new = {_key(i): _rv(i) for i in items}
        if self.lists:
            for key in sorted(self.state.keys() - new.keys()):
                self.changes.append(("deleted", key, self.state[key]))
            for key, rv in sorted(new.items()):
                if key not in self.state:
                    self.changes.append(("added", key, rv))
                elif self.state[key] != rv:
                    self.changes.append(("modified", key, rv))
        self.lists += 1
        self.state = new

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None:
        key, rv = _key(obj), _rv(obj)
        if event_type == "DELETED":
            if self.state.pop(key, None) is not None:
                self.changes.append(("deleted", key, rv))
            return
        if key not in self.state:
            self.changes.append(("added", key, rv))
        elif self.state[key] != rv:
            self.changes.append(("modified", key, rv))
        self.state[key] = rv


def server_view(api: ApiServer, node: str = "node-a") -> dict[str, str]:
    return {_key(p): _rv(p) for p in api.store.list("pods") if p["spec"].get("nodeName") == node}


def add_pods(cluster: Cluster, n: int, node: str = "node-a", start: int = 0) -> list[str]:
    return [
        cluster.add(objects.bare_pod(f"p{node[-1]}{i}", node=node, seed=i))["metadata"]["name"]
        for i in range(start, start + n)
    ]


@pytest.fixture
def connection(kubeconfig: Path) -> KubeConnection:
    return load_connection(str(kubeconfig))


@asynccontextmanager
async def reflecting(
    connection: KubeConnection, list_mode: str, recorder: DiffRecorder | None = None
) -> AsyncIterator[Reflector]:
    async with ApiSession(connection, FAST, user_agent=AGENT) as session:
        reflector = Reflector(session, NODE_A, recorder or DiffRecorder(), list_mode=list_mode)
        task = asyncio.create_task(reflector.run())
        try:
            yield reflector
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def converged(api: ApiServer, reflector: Reflector) -> None:
    handler = reflector.handler
    assert isinstance(handler, DiffRecorder)
    await wait_for(lambda: handler.state == server_view(api), f"state {server_view(api)}")


def streaming_lists(api: ApiServer) -> list[RequestRecord]:
    return [r for r in api.requests.watches("pods") if "sendInitialEvents" in r.params]


async def expire_with_a_gap(
    api: ApiServer, cluster: Cluster, names: list[str], cache_at: int | None = None
) -> set[Any]:
    """Changes the open watch never delivers, then 410 on it: only a relist can find them.
    With `cache_at`, the watch cache is then still at that resourceVersion. Returns the
    changes, as the handler must report them."""
    await wait_for(lambda: api.faults.open_watches == 1, "the watch after the list")
    api.faults.stall_watches()
    api.store.remove("pods", "default", names[1])
    cluster.restart("default", names[2], "app", "OOMKilled")
    (added,) = add_pods(cluster, 1, start=20)
    if cache_at is not None:
        api.faults.cache_lag = api.store.resource_version - cache_at
    assert api.faults.expire_watches() == 1  # sent before the gap's events once un-stalled
    api.faults.stall_watches(False)
    return {
        ("deleted", f"default/{names[1]}"),
        ("modified", f"default/{names[2]}", _rv(api.store.get("pods", "default", names[2]))),
        ("added", f"default/{added}", _rv(api.store.get("pods", "default", added))),
    }


def _without_deleted_rv(changes: list[tuple[str, str, str]]) -> set[Any]:
    return {c[:2] if c[0] == "deleted" else c for c in changes}


def held_bounds(api: ApiServer, reflector: Reflector) -> tuple[int, int]:
    """The versions the reflector may hold now: at least its handler's newest object, at most
    the store's (a bookmark in flight may still raise it)."""
    handler = reflector.handler
    assert isinstance(handler, DiffRecorder)
    return max(int(rv) for rv in handler.state.values()), api.store.resource_version


# ---- normal operation: the cache serves everything -----------------------------------------


@pytest.mark.parametrize("mode", LIST_MODES)
async def test_no_storage_read_in_normal_operation_nor_after_a_410(
    api: ApiServer, cluster: Cluster, connection: KubeConnection, mode: str
) -> None:
    names = add_pods(cluster, 4)
    add_pods(cluster, 2, node="node-b")
    async with reflecting(connection, mode) as reflector:
        await converged(api, reflector)
        cluster.restart("default", names[0], "app", "Error")
        await converged(api, reflector)
        api.faults.drop_watches()  # a resumed watch
        cluster.flap_readiness("default", names[0])
        await converged(api, reflector)
        low, high = held_bounds(api, reflector)
        api.store.compact()
        api.faults.expire_watches()  # 410: relist
        add_pods(cluster, 1, start=10)
        await converged(api, reflector)
        assert reflector.handler.lists == 2  # type: ignore[attr-defined]
    assert api.requests.storage_reads() == []
    assert api.requests.clients() == {AGENT}
    if mode == "list":
        first, relist = (r.params for r in api.requests.lists("pods"))
        assert first["resourceVersion"] == "0"
        assert "limit" not in relist, "older servers send a version with a limit to etcd"
        assert streaming_lists(api) == []
    else:
        assert api.requests.lists("pods") == []
        first, relist = (r.params for r in streaming_lists(api))
        assert first["resourceVersion"] == ""
    # Never older than the state the handler holds.
    assert low <= int(relist["resourceVersion"]) <= high
    assert relist["resourceVersionMatch"] == "NotOlderThan"
    assert reflector.health.restarts.get("gone") == 1


@pytest.mark.parametrize("mode", ["stream", "list"])
async def test_a_relist_from_a_lagging_cache_reports_exactly_the_gap(
    api: ApiServer, cluster: Cluster, connection: KubeConnection, mode: str
) -> None:
    """With a watch cache behind what the agent already saw, a relist at resourceVersion=0
    would go back in time: pods deleted and added again, restarts undone and redone. The
    relist asks for a state not older than its own, so it reports the gap and nothing else."""
    names = add_pods(cluster, 4)
    async with reflecting(connection, mode) as reflector:
        await converged(api, reflector)
        before = api.store.resource_version
        cluster.restart("default", names[0], "app", "OOMKilled")
        add_pods(cluster, 1, start=4)
        await converged(api, reflector)
        handler = reflector.handler
        assert isinstance(handler, DiffRecorder)
        seen = len(handler.changes)
        # The cache still holds the state before the restart of names[0] and the new pod.
        gap = await expire_with_a_gap(api, cluster, names, cache_at=before)
        await wait_for(lambda: handler.lists == 2, "the relist")
        await converged(api, reflector)
        after = handler.changes[seen:]
    assert _without_deleted_rv(after) == gap
    assert len(after) == len(gap), f"phantom or repeated changes: {after}"
    assert api.requests.storage_reads() == []


# ---- the relist the cache cannot serve: one consistent list --------------------------------


@pytest.mark.parametrize("mode", ["stream", "list"])
async def test_a_relist_answered_410_is_retried_once_as_a_consistent_list(
    api: ApiServer, cluster: Cluster, connection: KubeConnection, mode: str
) -> None:
    names = add_pods(cluster, 3)
    async with reflecting(connection, mode) as reflector:
        await converged(api, reflector)
        verb = "list" if mode == "list" else "watch"
        api.faults.fail_next(1, 410, "pods", verbs=(verb,), in_stream=True)
        gap = await expire_with_a_gap(api, cluster, names)
        await converged(api, reflector)
        changes = reflector.handler.changes  # type: ignore[attr-defined]
    assert _without_deleted_rv(changes) == gap
    assert reflector.health.restarts == {"gone": 2}  # the watch, then the relist
    assert reflector.delays == [], "both retried at once"
    if mode == "list":
        relists = api.requests.lists("pods")[1:]
        assert api.requests.storage_reads() == relists[1:], "only the consistent list"
    else:
        relists = streaming_lists(api)[1:]
        assert api.requests.storage_reads() == []
    assert [r.status for r in relists] == [410 if mode == "list" else 200, 200]
    at_version, consistent = (r.params for r in relists)
    assert at_version["resourceVersion"] not in ("", "0")
    assert at_version["resourceVersionMatch"] == "NotOlderThan"
    assert consistent.get("resourceVersion", "") == ""


@pytest.mark.parametrize("mode", ["stream", "list"])
async def test_a_server_behind_our_version_gets_one_consistent_list(
    tmp_path: Path, unused_tcp_port: int, mode: str
) -> None:
    """The API server at our address comes back with a history that ends before our
    resourceVersion (etcd restored from a backup): it answers "Too large resource version"
    (504, cause ResourceVersionTooLarge) to the resumed watch and to the relist at our
    version; one consistent list recovers."""
    first = ApiServer(port=unused_tcp_port, token="t", bookmark_interval=0.2)
    await first.start()
    try:
        connection = load_connection(str(first.write_kubeconfig(tmp_path / "kubeconfig")))
        add_pods(Cluster(first.store), 4)
        async with reflecting(connection, mode) as reflector:
            await converged(first, reflector)
            await first.stop()
            restored = ApiServer(port=unused_tcp_port, token="t", bookmark_interval=0.2)
            async with restored:
                add_pods(Cluster(restored.store), 2, start=5)
                await converged(restored, reflector)
                requests = restored.requests.matching(resource="pods")
    finally:
        await first.stop()
    assert reflector.health.restarts.get("too_large_resource_version") == 2
    too_large = [r for r in requests if r.status == 504]
    assert len(too_large) == 2, "the resumed watch, then the relist at our version"
    assert all(
        int(r.params["resourceVersion"]) > restored.store.resource_version for r in too_large
    )
    (consistent,) = [r for r in requests if r.params.get("resourceVersion", "") == ""]
    assert consistent.status == 200
    if mode == "list":
        assert consistent.served_from == "storage"
        assert restored.requests.storage_reads() == [consistent]
    else:
        assert consistent.params["sendInitialEvents"] == "true"
        assert restored.requests.storage_reads() == []


# ---- servers without streaming lists -------------------------------------------------------


@pytest.mark.parametrize("support", ["refuse", "ignore"])
async def test_auto_falls_back_to_lists_for_good_on_a_server_without_streaming_lists(
    api: ApiServer,
    cluster: Cluster,
    connection: KubeConnection,
    caplog: pytest.LogCaptureFixture,
    support: str,
) -> None:
    api.faults.watch_list_unsupported = support  # type: ignore[assignment]
    names = add_pods(cluster, 3)
    caplog.set_level(logging.WARNING, logger="tailwatch.watch")
    async with reflecting(connection, "auto") as reflector:
        await converged(api, reflector)
        assert reflector.streaming is False
        await wait_for(
            lambda: api.faults.open_watches == 1 and len(api.requests.watches("pods")) == 2,
            "the watch after the list",
        )
        api.store.compact()
        assert api.faults.expire_watches() == 1
        cluster.restart("default", names[0], "app", "Error")
        await wait_for(lambda: reflector.handler.lists == 2, "the relist")  # type: ignore[attr-defined]
        await converged(api, reflector)
    assert reflector.health.restarts == {"watch_list_unsupported": 1, "gone": 1}
    assert reflector.delays == [], "the fallback is immediate"
    assert len(streaming_lists(api)) == 1, "tried once, never again"
    first, relist = (r.params for r in api.requests.lists("pods"))
    assert first["resourceVersion"] == "0"
    assert relist["resourceVersionMatch"] == "NotOlderThan"
    assert api.requests.storage_reads() == []
    fallbacks = [r for r in caplog.records if "from now on" in r.getMessage()]
    assert len(fallbacks) == 1


async def test_stream_mode_never_falls_back(
    api: ApiServer, cluster: Cluster, connection: KubeConnection
) -> None:
    api.faults.watch_list_unsupported = "refuse"
    add_pods(cluster, 1)
    async with reflecting(connection, "stream") as reflector:
        await wait_for(
            lambda: reflector.health.restarts.get("watch_list_unsupported", 0) >= 3,
            "refused streaming lists",
        )
        assert not reflector.health.synced
        assert len(reflector.delays) >= 3, "each refusal backs off"
        api.faults.watch_list_unsupported = ""
        await converged(api, reflector)
    assert api.requests.lists("pods") == []


def test_an_unknown_list_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'watch' is not one of auto, stream, list"):
        Reflector(None, NODE_A, DiffRecorder(), list_mode="watch")  # type: ignore[arg-type]


# ---- the setting ----------------------------------------------------------------------------


def test_list_mode_setting(tmp_path: Path) -> None:
    flags: dict[str, str | None] = {"cgroup_root": str(tmp_path)}
    env = {"NODE_NAME": "node-a"}
    assert load_settings(flags, env).list_mode == "auto"
    assert load_settings(flags, {**env, "TAILWATCH_LIST_MODE": "list"}).list_mode == "list"
    assert load_settings({**flags, "list_mode": "stream"}, env).list_mode == "stream"
    with pytest.raises(ConfigError, match=r"^TAILWATCH_LIST_MODE: 'poll' is not one of auto"):
        load_settings(flags, {**env, "TAILWATCH_LIST_MODE": "poll"})
    option = next(o for o in OPTIONS if o.attr == "list_mode")
    for mode in LIST_MODES:  # every value the flag accepts, the reflector takes
        assert option.parse(mode) == mode
