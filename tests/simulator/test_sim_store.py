"""The store: etcd-like versions and history, and the registry's create/update/delete rules."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from exporter.simulator import ApiError, HistoryCompacted, Store
from exporter.simulator.store import rfc3339


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_create_fills_server_managed_metadata(make_pod: Callable[..., dict[str, Any]]) -> None:
    clock = FakeClock()
    store = Store(clock=clock)
    body = make_pod("web-1")
    del body["metadata"]["namespace"]
    created = store.create("pods", body)
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"] == rfc3339(clock.now) == "2023-11-14T22:13:20Z"
    assert meta["generation"] == 1
    assert rv(created) == store.resource_version
    assert created["kind"] == "Pod" and created["apiVersion"] == "v1"
    assert "namespace" not in body["metadata"], "the caller's dict is not modified"


def test_one_global_resource_version_orders_every_change(
    make_pod: Callable[..., dict[str, Any]], make_service: Callable[..., dict[str, Any]]
) -> None:
    store = Store()
    versions = [
        rv(store.create("pods", make_pod("a"))),
        rv(store.create("services", make_service("s"))),
        rv(store.patch("pods", "default", "a", lambda o: o["metadata"]["labels"].update(x="1"))),
        rv(store.remove("services", "default", "s")),
    ]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert [(e.resource, e.type) for e in store.history()] == [
        ("pods", "ADDED"),
        ("services", "ADDED"),
        ("pods", "MODIFIED"),
        ("services", "DELETED"),
    ]


def test_create_errors(make_pod: Callable[..., dict[str, Any]]) -> None:
    store = Store()
    store.create("pods", make_pod("a"))
    with pytest.raises(ApiError) as caught:
        store.create("pods", make_pod("a"))
    assert caught.value.code == 409 and caught.value.reason == "AlreadyExists"
    assert caught.value.message == 'pods "a" already exists'
    nameless = make_pod("")
    with pytest.raises(ApiError) as caught:
        store.create("pods", nameless)
    assert caught.value.code == 422
    with pytest.raises(ApiError) as caught:
        store.create("services", make_pod("b"))
    assert caught.value.code == 400
    with pytest.raises(KeyError):
        store.create("configmaps", {"metadata": {"name": "n"}})


def test_generate_name(make_pod: Callable[..., dict[str, Any]]) -> None:
    store = Store()
    body = make_pod("")
    body["metadata"]["generateName"] = "web-"
    names = {store.create("pods", body)["metadata"]["name"] for _ in range(5)}
    assert len(names) == 5
    assert all(n.startswith("web-") and len(n) == 9 for n in names)


def test_update_is_optimistic_and_keeps_server_fields(
    make_pod: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    created = store.create("pods", make_pod("a"))
    stale = dict(created)
    changed = store.update("pods", {**created, "status": {"phase": "Failed"}})
    assert rv(changed) > rv(created)
    assert changed["metadata"]["uid"] == created["metadata"]["uid"]
    assert changed["metadata"]["generation"] == 1, "a status change does not bump generation"
    with pytest.raises(ApiError) as caught:
        store.update("pods", stale)
    assert caught.value.code == 409 and caught.value.reason == "Conflict"
    assert "the object has been modified" in caught.value.message
    # Without a resourceVersion the update is unconditional.
    body = store.get("pods", "default", "a")
    del body["metadata"]["resourceVersion"]
    body["metadata"]["uid"] = "forged"
    body["spec"]["nodeName"] = "node-b"
    updated = store.update("pods", body)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 2, "a spec change bumps generation"


def test_a_no_op_write_changes_nothing(make_pod: Callable[..., dict[str, Any]]) -> None:
    store = Store()
    created = store.create("pods", make_pod("a"))
    before = store.resource_version
    assert store.update("pods", created) == created
    assert store.patch("pods", "default", "a", lambda o: None) == created
    assert store.resource_version == before and len(store.history()) == 1


def test_patch_mutates_a_copy_and_checks_a_resource_version_it_sets(
    make_pod: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    created = store.create("pods", make_pod("a"))

    def ready(obj: dict[str, Any]) -> None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True"}]

    patched = store.patch("pods", "default", "a", ready)
    assert patched["status"]["conditions"][0]["type"] == "Ready"
    patched["status"]["phase"] = "mutated by the caller"
    assert store.get("pods", "default", "a")["status"]["phase"] == "Running"

    def stale(obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
        obj["metadata"]["labels"]["x"] = "y"

    with pytest.raises(ApiError) as caught:
        store.patch("pods", "default", "a", stale)
    assert caught.value.code == 409
    with pytest.raises(ApiError) as caught:
        store.patch("pods", "default", "missing", ready)
    assert caught.value.code == 404 and caught.value.message == 'pods "missing" not found'


def test_graceful_pod_deletion(make_pod: Callable[..., dict[str, Any]]) -> None:
    clock = FakeClock()
    store = Store(clock=clock)
    store.create("pods", make_pod("a", grace=45))
    terminating = store.delete("pods", "default", "a")
    meta = terminating["metadata"]
    assert meta["deletionTimestamp"] == rfc3339(clock.now + 45)
    assert meta["deletionGracePeriodSeconds"] == 45
    assert meta["generation"] == 2
    assert store.history()[-1].type == "MODIFIED"
    # A longer grace period changes nothing, a shorter one shortens it.
    assert store.delete("pods", "default", "a", grace_period_seconds=60) == terminating
    shorter = store.delete("pods", "default", "a", grace_period_seconds=5)
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 5
    assert shorter["metadata"]["deletionTimestamp"] == rfc3339(clock.now + 5)
    # The second plain delete (the kubelet's confirmation) removes it.
    gone = store.delete("pods", "default", "a")
    last = store.history()[-1]
    assert last.type == "DELETED" and last.object == gone
    assert rv(gone) == store.resource_version > rv(shorter)
    assert gone["metadata"]["deletionGracePeriodSeconds"] == 5
    with pytest.raises(ApiError):
        store.get("pods", "default", "a")


@pytest.mark.parametrize(
    ("pod_kwargs", "grace"),
    [
        ({}, 0),  # grace 0: at once
        ({"node": None}, None),  # never scheduled: no kubelet to wait for
        ({"phase": "Succeeded"}, None),  # finished
        ({"phase": "Failed"}, 30),
    ],
)
def test_pods_that_go_at_once(
    make_pod: Callable[..., dict[str, Any]], pod_kwargs: dict[str, Any], grace: int | None
) -> None:
    store = Store()
    store.create("pods", make_pod("a", **pod_kwargs))
    store.delete("pods", "default", "a", grace_period_seconds=grace)
    assert store.history()[-1].type == "DELETED"
    assert store.list("pods") == []


def test_other_resources_delete_at_once_and_preconditions(
    make_service: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    svc = store.create("services", make_service("s"))
    with pytest.raises(ApiError) as caught:
        store.delete("services", "default", "s", preconditions={"uid": "other"})
    assert caught.value.code == 409 and "Precondition failed: UID" in caught.value.message
    store.delete("services", "default", "s", preconditions={"uid": svc["metadata"]["uid"]})
    assert store.list("services") == []


def test_list_is_in_key_order_and_filters_by_namespace(
    make_pod: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    for ns, name in [("b", "x"), ("a", "y"), ("a-b", "z"), ("a", "x")]:
        store.create("pods", make_pod(name, namespace=ns))
    # Keys sort like etcd's "/registry/pods/<ns>/<name>": '-' sorts before '/'.
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in store.list("pods")] == [
        ("a-b", "z"),
        ("a", "x"),
        ("a", "y"),
        ("b", "x"),
    ]
    assert [p["metadata"]["name"] for p in store.list("pods", namespace="a")] == ["x", "y"]


def test_snapshot_rebuilds_past_states_until_compacted(
    make_pod: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    store.create("pods", make_pod("a"))
    store.create("pods", make_pod("b"))
    at = store.resource_version
    store.patch("pods", "default", "a", lambda o: o["metadata"]["labels"].update(v="2"))
    store.remove("pods", "default", "b")
    store.create("pods", make_pod("c"))

    def names(version: int | None) -> list[tuple[str, dict[str, str]]]:
        items, _ = store.snapshot("pods", version)
        return [(o["metadata"]["name"], o["metadata"]["labels"]) for _, o in items]

    assert names(at) == [("a", {}), ("b", {})]
    assert names(None) == [("a", {"v": "2"}), ("c", {})]
    store.compact(at)
    assert names(at) == [("a", {}), ("b", {})], "the compacted version itself is readable"
    with pytest.raises(HistoryCompacted):
        store.snapshot("pods", at - 1)
    store.compact()
    with pytest.raises(HistoryCompacted):
        store.snapshot("pods", at)
    assert store.history() == []
    assert store.compacted_resource_version == store.resource_version


def test_history_limit_compacts_automatically(make_pod: Callable[..., dict[str, Any]]) -> None:
    store = Store(history_limit=3)
    for i in range(5):
        store.create("pods", make_pod(f"p{i}"))
    assert [e.resource_version for e in store.history()] == [4, 5, 6]
    assert store.compacted_resource_version == 3
    with pytest.raises(HistoryCompacted):
        store.watch("pods", 2, lambda: None)
    events, sub = store.watch("pods", 3, lambda: None)
    assert [e.resource_version for e in events] == [4, 5, 6]
    sub.close()


def test_watch_subscription_from_a_version_and_from_now(
    make_pod: Callable[..., dict[str, Any]], make_service: Callable[..., dict[str, Any]]
) -> None:
    store = Store()
    store.create("pods", make_pod("a"))
    start = store.resource_version
    store.create("pods", make_pod("b"))
    store.create("services", make_service("s"))
    wakes: list[int] = []
    events, sub = store.watch("pods", start, lambda: wakes.append(1))
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [("ADDED", "b")]
    initial, now_sub = store.watch("pods", None, lambda: None)
    assert [(e.type, e.object["metadata"]["name"]) for e in initial] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]
    assert now_sub.start_version == store.resource_version
    store.create("services", make_service("t"))
    assert wakes == [] and store.bookmark_version(sub) == store.resource_version
    store.remove("pods", "default", "a")
    assert wakes == [1] and store.bookmark_version(sub) is None
    assert [e.type for e in sub.take()] == ["DELETED"]
    assert store.bookmark_version(sub) == store.resource_version
    assert store.watcher_count == 2
    sub.close()
    now_sub.close()
    assert store.watcher_count == 0


def test_concurrent_writers_reach_a_watcher_in_order_exactly_once(
    make_pod: Callable[..., dict[str, Any]],
) -> None:
    store = Store()
    _, sub = store.watch("pods", None, lambda: None)

    def write(prefix: str) -> None:
        for i in range(50):
            store.create("pods", make_pod(f"{prefix}-{i}"))
            store.patch(
                "pods", "default", f"{prefix}-{i}", lambda o: o["metadata"]["labels"].update(x="y")
            )

    threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = [e.resource_version for e in sub.take()]
    assert versions == list(range(2, 2 + 400))
    sub.close()
