"""Endpoint lifecycle from EndpointSlice changes: the cluster view (docs/services.md)."""

from __future__ import annotations

import copy
from typing import Any

from exporter.core.endpoints import EndpointEventKind as K
from exporter.core.endpoints import EndpointTracker
from exporter.core.services import ServiceRef
from exporter.simulator import objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service
from tests.core.kube_schema import validate_pod as validate

WEB = service("web", namespace="shop")
REF = ServiceRef("shop", "web")


def pod(name: str, node: str, *, ready: bool = True, uid_seed: int = 0) -> dict[str, Any]:
    p = objects.statefulset_pod("web", int(name.rsplit("-", 1)[1]), namespace="shop", node=node,
                                seed=uid_seed)  # fmt: skip
    if not ready:
        p = objects.mark_not_ready(p, 100.0)
    return p


def slice_of(*pods: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    obj = endpoint_slice(WEB, [endpoint_of_pod(p) for p in pods], seed=seed)
    obj["metadata"]["uid"] = f"slice-{seed}"
    validate(obj)
    return obj


def kinds(events: list[Any]) -> list[tuple[str, str]]:
    return [(e.kind.value, e.identity) for e in events]


def synced(*slices: dict[str, Any]) -> EndpointTracker:
    tracker = EndpointTracker()
    assert tracker.sync(list(slices), 0.0).events == []
    return tracker


def test_first_list_is_silent_and_counts_conditions() -> None:
    tracker = synced(slice_of(pod("web-0", "a"), pod("web-1", "b", ready=False)))
    counts = tracker.counts()[REF]
    assert (counts.ready, counts.serving, counts.terminating) == (1, 1, 0)


def test_readiness_flips() -> None:
    tracker = synced(slice_of(pod("web-0", "a")))
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "a", ready=False)), 1.0)
    assert kinds(events) == [("not_ready", "shop/web-0")]
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "a")), 2.0)
    assert kinds(events) == [("ready", "shop/web-0")]


def test_rolling_replacement_is_terminating_removed_added() -> None:
    old = objects.deployment_pod("web", namespace="shop", node="a", seed=1)
    new = objects.deployment_pod("web", revision=2, namespace="shop", node="a", seed=2)
    tracker = synced(slice_of(old))
    terminating = objects.begin_termination(old, 5.0)
    events = tracker.apply("MODIFIED", slice_of(terminating, new), 5.0)
    new_id = f"shop/{new['metadata']['name']}"
    old_id = f"shop/{old['metadata']['name']}"
    assert kinds(events) == [("terminating", old_id), ("added", new_id), ("ready", new_id)]
    events = tracker.apply("MODIFIED", slice_of(new), 6.0)
    assert kinds(events) == [("removed", old_id)]
    assert tracker.counts()[REF].terminating == 0


def test_statefulset_pod_recreated_on_the_same_node_is_replaced() -> None:
    tracker = synced(slice_of(pod("web-0", "a")))
    assert kinds(tracker.apply("MODIFIED", slice_of(), 1.0)) == [("removed", "shop/web-0")]
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "a", uid_seed=1)), 2.0)
    assert kinds(events) == [("replaced", "shop/web-0"), ("ready", "shop/web-0")]


def test_statefulset_pod_moving_node_is_moved() -> None:
    tracker = synced(slice_of(pod("web-0", "node-a")))
    tracker.apply("MODIFIED", slice_of(), 1.0)
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "node-b", uid_seed=1)), 2.0)
    assert kinds(events)[0] == ("moved", "shop/web-0")
    assert events[0].previous_node == "node-a"
    assert events[0].node == "node-b"


def test_recreated_within_one_update_is_replaced_not_silent() -> None:
    tracker = synced(slice_of(pod("web-0", "a")))
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "b", uid_seed=9)), 1.0)
    assert kinds(events) == [("moved", "shop/web-0"), ("ready", "shop/web-0")]


def test_an_old_removal_is_forgotten_after_the_window() -> None:
    tracker = EndpointTracker(recent_window=60)
    tracker.sync([slice_of(pod("web-0", "a"))], 0.0)
    tracker.apply("MODIFIED", slice_of(), 1.0)
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "a", uid_seed=1)), 100.0)
    assert kinds(events)[0] == ("added", "shop/web-0")


def test_slices_of_one_service_are_merged() -> None:
    tracker = synced(slice_of(pod("web-0", "a"), seed=1), slice_of(pod("web-1", "a"), seed=2))
    assert set(tracker.view(REF)) == {"shop/web-0", "shop/web-1"}
    # The controller moves web-1 into the first slice: no endpoint changed.
    events = tracker.apply("MODIFIED", slice_of(pod("web-0", "a"), pod("web-1", "a"), seed=1), 1)
    assert events == []
    events = tracker.apply("DELETED", slice_of(seed=2), 2.0)
    assert events == []
    # Deleting the last slice would remove both: held, since the Service may be going.
    assert tracker.apply("DELETED", slice_of(seed=1), 3.0) == []
    assert set(tracker.view(REF)) == {"shop/web-0", "shop/web-1"}
    assert tracker.flush(3.0 + tracker.grace - 0.1) == []
    events = tracker.flush(3.0 + tracker.grace)
    assert sorted(kinds(events)) == [("removed", "shop/web-0"), ("removed", "shop/web-1")]
    assert {e.at for e in events} == {3.0}  # when the slice went, not when it was reported
    assert tracker.view(REF) == {}


def test_relist_reports_the_gap_once() -> None:
    tracker = synced(slice_of(pod("web-0", "a"), pod("web-1", "a")))
    after_gap = slice_of(pod("web-0", "a", ready=False), pod("web-2", "b"))
    events = tracker.sync([after_gap], 10.0).events
    assert sorted(kinds(events)) == [
        ("added", "shop/web-2"), ("not_ready", "shop/web-0"), ("ready", "shop/web-2"),
        ("removed", "shop/web-1"),
    ]  # fmt: skip
    assert tracker.sync([copy.deepcopy(after_gap)], 11.0).events == []
    assert tracker.apply("MODIFIED", after_gap, 12.0) == []


def test_malformed_slices_are_reported_and_keep_the_known_state() -> None:
    good = slice_of(pod("web-0", "a"))
    tracker = synced(good)
    broken = copy.deepcopy(good)
    broken["endpoints"] = "nope"
    result = tracker.sync([broken], 1.0)
    assert result.events == []
    assert [m.reason for m in result.malformed] == ["bad_field"]
    assert set(tracker.view(REF)) == {"shop/web-0"}


def test_address_lookup_for_otlp_mapping() -> None:
    p = pod("web-0", "a")
    tracker = synced(slice_of(p))
    assert tracker.service_of_address(p["status"]["podIP"]) == REF
    assert tracker.service_of_address("127.0.2.1") is None


def test_nil_conditions_follow_the_api_semantics() -> None:
    raw = slice_of(pod("web-0", "a"))
    raw["endpoints"][0]["conditions"] = {}
    tracker = synced(raw)
    endpoint = tracker.view(REF)["shop/web-0"]
    assert (endpoint.ready, endpoint.serving, endpoint.terminating) == (True, True, False)
    assert K.MOVED.value == "moved"


def test_endpoints_sharing_an_address_are_kept_apart() -> None:
    """hostNetwork pods of one workload on one node share the node's address (a surge
    during a rollout): both are endpoints, and the address still maps to the Service."""
    old = pod("web-0", "a")
    new = pod("web-1", "a")
    new["status"]["podIP"] = old["status"]["podIP"]
    tracker = synced(slice_of(old, new))
    assert set(tracker.view(REF)) == {"shop/web-0", "shop/web-1"}
    events = tracker.apply("MODIFIED", slice_of(new), 1.0)
    assert kinds(events) == [("removed", "shop/web-0")]
    assert tracker.service_of_address(new["status"]["podIP"]) == REF
    assert tracker.apply("MODIFIED", slice_of(), 2.0) != []
    assert tracker.service_of_address(new["status"]["podIP"]) is None
