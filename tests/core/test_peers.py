"""PeerSet: which k agents probe each Service address (exporter/core/peers.py).

The incremental answers are checked against a brute-force reference that applies the rule
of the module docstring to all the peers from scratch, over hypothesis-generated sequences
of peer and Service changes interleaved with steps of the pending setup (`setup_pending`),
a pending Service answering what it answered before it became pending; then the properties
the rule exists for: exactly min(k, peers) probers per Service when every agent computes it,
balance, stability when a peer goes, spread over zones, the two modes (alone, not ready) and
the setup in steps keeping the previous answers. The cost claims are checked by
counting hashes, never by timing.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core import peers as peers_module
from exporter.core.peers import SETUP_STEP, ZONE_LABEL, Peer, PeerSet, parse_peer, score
from exporter.core.pods import MalformedObject
from exporter.simulator import objects as o
from tests.core.kube_schema import validate_pod

NAMESPACE = "monitoring"


# -- the reference: the rule of the module docstring, from scratch ---------------------------


def weight(key: str, name: str) -> int:
    """The contract's hash, written out again: BLAKE2b-64 of "key\\0name", big-endian."""
    digest = hashlib.blake2b(f"{key}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def reference_probers(key: str, nodes: Mapping[str, str], k: int) -> list[str]:
    """Every peer sorted by score, then the zone rule: round-robin slots over the zones."""
    by_zone: dict[str, list[str]] = {}
    for node in sorted(nodes, key=lambda n: (weight(key, n), n), reverse=True):
        by_zone.setdefault(nodes[node], []).append(node)
    zones = sorted(by_zone, key=lambda z: (weight(key, "zone:" + z), z), reverse=True)
    slots = dict.fromkeys(zones, 0)
    given_out = 0
    while given_out < min(k, len(nodes)):
        for zone in zones:
            if given_out < min(k, len(nodes)) and slots[zone] < len(by_zone[zone]):
                slots[zone] += 1
                given_out += 1
    return [node for zone in zones for node in by_zone[zone][: slots[zone]]]


def reference_is_prober(self_node: str, key: str, nodes: Mapping[str, str], k: int) -> bool:
    if not nodes:
        return True  # alone: probe every Service address
    return self_node in reference_probers(key, nodes, k)


# -- pod bodies -------------------------------------------------------------------------------


def pod(
    name: str, node: str | None, zone: str = "", *, state: str = "ready", namespace: str = NAMESPACE
) -> dict[str, Any]:
    """A minimal agent pod as the API returns it; `state`: ready, unready, pending, deleting."""
    labels = {"app.kubernetes.io/name": "tailwatch"}
    if zone:
        labels[ZONE_LABEL] = zone
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if state == "deleting":
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ready = "False" if state == "unready" else "True"
    body: dict[str, Any] = {
        "metadata": metadata,
        "spec": {"nodeName": node} if node else {},
        "status": {
            "phase": "Pending" if state == "pending" else "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}]
            + ([] if state == "pending" else [{"type": "Ready", "status": ready}]),
        },
    }
    return body


def spread(count: int, zones: tuple[str, ...] = ("",)) -> dict[str, str]:
    """node -> zone for `count` nodes dealt over `zones`."""
    return {f"node-{i:04d}": zones[i % len(zones)] for i in range(count)}


def pods_of(nodes: Mapping[str, str]) -> list[dict[str, Any]]:
    return [pod(f"tw-{node}", node, zone) for node, zone in nodes.items()]


def services(count: int) -> list[str]:
    return [f"ns-{i % 7}/svc-{i:04d}" for i in range(count)]


def drain(peer_set: PeerSet, step: int = SETUP_STEP) -> set[str]:
    """Finish the pending setup, as the agent does between other work; the keys changed."""
    changed: set[str] = set()
    while peer_set.pending:
        changed |= peer_set.setup_pending(step)
    return changed


def agent(self_node: str, nodes: Mapping[str, str], keys: list[str], k: int) -> PeerSet:
    peer_set = PeerSet(self_node, k)
    for key in keys:
        peer_set.add_service(key)
    peer_set.sync(pods_of(nodes))
    drain(peer_set)
    return peer_set


# -- parse_peer -------------------------------------------------------------------------------


def test_a_ready_daemonset_pod_is_a_peer_with_its_zone() -> None:
    body = o.daemonset_pod(
        "tailwatch",
        namespace=NAMESPACE,
        node="node-4",
        labels={"app.kubernetes.io/name": "tailwatch", ZONE_LABEL: "eu-west-1b"},
    )
    validate_pod(body)
    peer = parse_peer(body)
    assert peer == Peer("node-4", "eu-west-1b", NAMESPACE, body["metadata"]["name"])
    assert peer.key == f"{NAMESPACE}/{body['metadata']['name']}"
    body["metadata"]["labels"].pop(ZONE_LABEL)
    assert parse_peer(body) == Peer("node-4", "", NAMESPACE, body["metadata"]["name"])


@pytest.mark.parametrize("state", ["unready", "pending", "deleting"])
def test_a_pod_not_running_ready_and_alive_is_not_a_peer(state: str) -> None:
    assert parse_peer(pod("tw-a", "node-a", state=state)) is None


def test_an_unscheduled_or_not_yet_reporting_pod_is_not_a_peer() -> None:
    assert parse_peer(pod("tw-a", None)) is None
    body = pod("tw-a", "node-a")
    del body["status"]
    assert parse_peer(body) is None
    real = o.daemonset_pod("tailwatch", node="node-4", state="running")
    assert parse_peer(real) is None  # containers running, the Ready condition not yet True


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b.pop("metadata"), "missing_field"),
        (lambda b: b["metadata"].pop("namespace"), "missing_field"),
        (lambda b: b["metadata"].update(name=""), "missing_field"),
        (lambda b: b["metadata"].update(labels=["a"]), "bad_field"),
        (lambda b: b["metadata"]["labels"].update({ZONE_LABEL: 3}), "bad_field"),
        (lambda b: b.update(spec=[]), "bad_field"),
        (lambda b: b["spec"].update(nodeName=7), "bad_field"),
        (lambda b: b.update(status="Running"), "bad_field"),
        (lambda b: b["status"].update(phase=1), "bad_field"),
        (lambda b: b["status"].update(conditions={}), "bad_field"),
        (lambda b: b["status"]["conditions"].append("Ready"), "bad_field"),
    ],
)
def test_malformed_pods_raise_with_a_reason(mutate: Any, reason: str) -> None:
    body = pod("tw-a", "node-a", "z")
    mutate(body)
    with pytest.raises(MalformedObject) as info:
        parse_peer(body)
    assert info.value.reason == reason
    with pytest.raises(MalformedObject):
        PeerSet("node-a", 3).apply("MODIFIED", body)


def test_not_an_object_and_unknown_event_types_raise() -> None:
    with pytest.raises(MalformedObject, match="not_an_object"):
        parse_peer("pod")  # type: ignore[arg-type]
    with pytest.raises(MalformedObject, match="bad_event_type"):
        PeerSet("node-a", 3).apply("BOOKMARK", pod("tw-a", "node-a"))
    with pytest.raises(ValueError, match="at least 1"):
        PeerSet("node-a", 0)


# -- the hash is part of the contract ---------------------------------------------------------


def test_the_score_is_blake2b_64_big_endian_of_key_nul_name() -> None:
    # Pinned: an agent that computes anything else disagrees with its peers.
    assert score("shop/checkout", "node-a") == weight("shop/checkout", "node-a")
    assert score("shop/checkout", "node-a") == int(
        hashlib.blake2b(b"shop/checkout\x00node-a", digest_size=8).hexdigest(), 16
    )
    assert score("shop/checkout", "node-a") == 0x38473231B6D91C0F


# -- incremental answers == the reference, over generated histories --------------------------

SELF = "n1"
NODE_NAMES = [f"n{i}" for i in range(12)]
ZONE_NAMES = ["", "a", "b", "c"]
POD_NAMES = [f"tw-{i}" for i in range(16)]
KEYS = [f"ns/svc-{i}" for i in range(10)]
# A start the history may begin from: 12 ready peers, 4 in each of zones a, b and unknown,
# this agent among them, every Service added.
BASE = [("sync", [(f"tw-{i}", f"n{i}", ("a", "b", "")[i % 3], "ready") for i in range(12)])] + [
    ("add", key) for key in KEYS
]

# Biased towards this agent being a ready peer, where the incremental bookkeeping is.
pod_specs = st.tuples(
    st.sampled_from(POD_NAMES),
    st.one_of(st.just(SELF), st.sampled_from(NODE_NAMES)),
    st.sampled_from(ZONE_NAMES),
    st.sampled_from(["ready"] * 6 + ["unready", "pending", "deleting"]),
)
operations = st.one_of(
    st.tuples(st.just("event"), st.sampled_from(["ADDED", "MODIFIED"]), pod_specs),
    st.tuples(st.just("event"), st.just("MODIFIED"), pod_specs),
    st.tuples(st.just("delete"), st.sampled_from(POD_NAMES)),
    st.tuples(st.just("sync"), st.lists(pod_specs, max_size=12)),
    st.tuples(st.just("relist"), pod_specs),  # the pods as they are, one of them changed
    st.tuples(st.just("add"), st.sampled_from(KEYS)),
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    # Steps of the pending setup, between the changes (twice as likely as one kind of change).
    st.tuples(st.just("step"), st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("step"), st.integers(min_value=1, max_value=4)),
)


class Model:
    """The pods as the API has them, and the Services added: the reference's inputs."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, str, str]] = {}
        self.keys: set[str] = set()

    def nodes(self) -> dict[str, str]:
        """Peer nodes and their zones: nodes with a ready pod, the greatest zone of those."""
        zones: dict[str, str] = {}
        for node, zone, state in self.pods.values():
            if state == "ready":
                zones[node] = max(zones.get(node, zone), zone)
        return zones

    def answers(self, k: int) -> dict[str, bool]:
        nodes = self.nodes()
        return {key: reference_is_prober(SELF, key, nodes, k) for key in self.keys}


def answers_of(peer_set: PeerSet, keys: set[str]) -> dict[str, bool]:
    return {key: peer_set.is_prober(key) for key in keys}


def pending_keys(peer_set: PeerSet) -> list[str]:
    """The Services waiting for their setup, oldest first (white box: the public API only
    counts them)."""
    keys = list(peer_set._pending)
    assert len(keys) == peer_set.pending
    return keys


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.booleans(),
    st.lists(operations, max_size=50),
    st.integers(min_value=1, max_value=5),
)
def test_incremental_answers_match_the_reference(
    k: int, base: bool, history: list[Any], final_step: int
) -> None:
    peer_set = PeerSet(SELF, k)
    model = Model()
    kept: dict[str, bool] = {}  # pending key -> the answer it had before it became pending
    for op in (BASE if base else []) + history:
        before = {key: False for key in KEYS} | answers_of(peer_set, model.keys)
        waiting = pending_keys(peer_set)
        if op[0] == "event":
            _, event_type, (name, node, zone, state) = op
            model.pods[name] = (node, zone, state)
            changed = peer_set.apply(event_type, pod(name, node, zone, state=state))
        elif op[0] == "delete":
            node, zone, state = model.pods.pop(op[1], ("n0", "", "ready"))
            changed = peer_set.apply("DELETED", pod(op[1], node, zone, state=state))
        elif op[0] in ("sync", "relist"):
            specs = op[1] if op[0] == "sync" else [(n, *s) for n, s in model.pods.items()] + [op[1]]
            listed = {name: (node, zone, state) for name, node, zone, state in specs}
            model.pods = listed
            changed = peer_set.sync(
                [pod(n, *spec[:2], state=spec[2]) for n, spec in listed.items()]
            )
        elif op[0] == "add":
            model.keys.add(op[1])
            changed = peer_set.add_service(op[1])
        elif op[0] == "remove":
            model.keys.discard(op[1])
            changed = peer_set.remove_service(op[1])
        else:
            changed = peer_set.setup_pending(op[1])
            # At most that many set up, the oldest first; the rest keep their order.
            assert pending_keys(peer_set) == waiting[op[1] :]
        # A Service that became pending in this call keeps its answer from before the call
        # (False if it was not added yet); one still pending keeps the one it kept.
        kept = {key: kept.get(key, before[key]) for key in pending_keys(peer_set)}
        check_against_the_reference(peer_set, model, k, before, changed, kept)
    # Drained, every answer is the reference's, whatever happened between the steps.
    while peer_set.pending:
        before = {key: False for key in KEYS} | answers_of(peer_set, model.keys)
        changed = peer_set.setup_pending(final_step)
        kept = {key: kept[key] for key in pending_keys(peer_set)}
        check_against_the_reference(peer_set, model, k, before, changed, kept)
    assert answers_of(peer_set, model.keys) == model.answers(k)
    assert peer_set.setup_pending(final_step) == set()


def check_against_the_reference(
    peer_set: PeerSet,
    model: Model,
    k: int,
    before: dict[str, bool],
    changed: set[str],
    kept: Mapping[str, bool],
) -> None:
    """Every Service set up answers as the reference does, every pending one what it answered
    before it became pending (`kept`); `changed` is exactly the keys whose answer changed."""
    nodes = model.nodes()
    waiting = set(pending_keys(peer_set))
    assert waiting == set(kept) and waiting <= model.keys
    assert not waiting or SELF in nodes  # a setup is only pending while this agent is ready
    expected = {key: kept.get(key, probed) for key, probed in model.answers(k).items()}
    assert answers_of(peer_set, model.keys) == expected
    after = {key: False for key in KEYS} | expected
    assert changed == {key for key in KEYS if before[key] != after[key]}
    assert peer_set.peers == len(nodes)
    assert peer_set.alone == (not nodes)
    assert peer_set.ready == (SELF in nodes)
    assert peer_set.probed() == {key for key, probed in expected.items() if probed}
    for key in KEYS:
        assert peer_set.probers(key) == (reference_probers(key, nodes, k) if nodes else [])


def test_two_ready_pods_on_one_node_are_one_peer() -> None:
    peer_set = agent("node-a", {"node-a": "", "node-b": ""}, services(20), k=1)
    assert peer_set.peers == 2
    surge = pod("tw-node-b-new", "node-b")
    assert peer_set.apply("ADDED", surge) == set()
    assert peer_set.peers == 2
    assert peer_set.apply("DELETED", pod("tw-node-b", "node-b")) == set()  # the new one stays
    assert peer_set.peers == 2
    changed = peer_set.apply("MODIFIED", pod("tw-node-b-new", "node-b", state="unready"))
    assert peer_set.peers == 1
    assert changed and all(peer_set.is_prober(key) for key in services(20))


def test_sync_skips_malformed_items_and_keeps_what_it_knew() -> None:
    peer_set = agent("node-a", {"node-a": "", "node-b": ""}, services(10), k=1)
    broken = pod("tw-node-b", "node-b")
    broken["status"]["conditions"] = "Ready"
    nameless = pod("x", "node-c")
    del nameless["metadata"]["name"]
    assert peer_set.sync([pod("tw-node-a", "node-a"), broken, nameless]) == set()
    assert peer_set.peers == 2
    assert [m.reason for m in peer_set.last_malformed] == ["bad_field", "missing_field"]
    assert peer_set.sync([pod("tw-node-a", "node-a")])  # node-b gone: its Services move
    assert peer_set.peers == 1 and peer_set.last_malformed == ()


# -- the properties the rule is for -----------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5, 20])
@pytest.mark.parametrize("zones", [("",), ("a", "b", "c"), ("a", "b", "b", "b", "c", "", "")])
def test_every_agent_computing_it_gives_exactly_min_k_peers_probers(
    k: int, zones: tuple[str, ...]
) -> None:
    nodes = spread(13, zones)
    keys = services(150)
    agents = [agent(node, nodes, keys, k) for node in nodes]
    for key in keys:
        claiming = [a.self_node for a in agents if a.is_prober(key)]
        assert len(claiming) == min(k, len(nodes))
        assert sorted(claiming) == sorted(agents[0].probers(key))


# Balance: 50 peers, 2,000 Services, k = 3: each peer's expected share is k*S/P = 120. The
# share is binomial-like (sd about 10.6); the hash is deterministic, so the band below cannot
# flake: these inputs give 99 to 143 today, and a bound of +-1/3 (80 to 160, about 4 sd)
# would only fail if the hash or the rule changed.
BALANCE_PEERS, BALANCE_SERVICES, BALANCE_K = 50, 2000, 3


@pytest.mark.parametrize("zones", [("",), ("a", "b", "c")])
def test_balance_each_peer_probes_about_k_s_over_p(zones: tuple[str, ...]) -> None:
    nodes = spread(BALANCE_PEERS, zones)
    peer_set = PeerSet("node-0000", BALANCE_K)
    peer_set.sync(pods_of(nodes))
    load = Counter(node for key in services(BALANCE_SERVICES) for node in peer_set.probers(key))
    mean = BALANCE_K * BALANCE_SERVICES / BALANCE_PEERS
    assert set(load) == set(nodes)
    assert sum(load.values()) == BALANCE_K * BALANCE_SERVICES
    assert mean * 2 / 3 <= min(load.values()) and max(load.values()) <= mean * 4 / 3, load


@pytest.mark.parametrize("zones", [("",), ("a", "b", "c")])
def test_a_peer_going_moves_only_its_services_each_to_exactly_one_new_prober(
    zones: tuple[str, ...],
) -> None:
    nodes = spread(30, zones)  # 10 per zone: every zone keeps at least k peers
    keys = services(400)
    observer = agent("node-0007", nodes, keys, 3)
    before = {key: set(observer.probers(key)) for key in keys}
    gone = "node-0004"
    changed = observer.apply("DELETED", pod(f"tw-{gone}", gone, nodes[gone]))
    moved = 0
    for key in keys:
        after = set(observer.probers(key))
        if gone in before[key]:
            assert len(after - before[key]) == 1 and before[key] - after == {gone}
            moved += 1
            if after - before[key] == {"node-0007"}:
                assert key in changed
        else:
            assert after == before[key]
            assert key not in changed
    assert moved > 0
    assert changed == {key for key in keys if "node-0007" in set(observer.probers(key))} - {
        key for key in keys if "node-0007" in before[key]
    }


@pytest.mark.parametrize(("sizes", "k"), [((5, 2, 9), 3), ((1, 1, 1), 3), ((4, 4, 4), 3)])
def test_three_zones_and_k_3_probe_once_in_every_zone(sizes: tuple[int, ...], k: int) -> None:
    nodes = {
        f"{zone}-{i}": zone for zone, size in zip("abc", sizes, strict=True) for i in range(size)
    }
    peer_set = PeerSet("a-0", k)
    peer_set.sync(pods_of(nodes))
    for key in services(300):
        assert sorted(nodes[n] for n in peer_set.probers(key)) == ["a", "b", "c"]


def test_a_small_zone_passes_its_unused_slots_on() -> None:
    nodes = {"a-0": "a"} | {f"b-{i}": "b" for i in range(5)} | {f"c-{i}": "c" for i in range(5)}
    peer_set = agent("a-0", nodes, services(200), 6)
    for key in services(200):
        per_zone = Counter(nodes[n] for n in peer_set.probers(key))
        assert per_zone["a"] == 1 and sorted([per_zone["b"], per_zone["c"]]) == [2, 3]
        assert peer_set.is_prober(key)  # the only peer of its zone


def test_alone_every_service_is_probed_until_a_peer_is_visible() -> None:
    keys = services(50)
    peer_set = PeerSet("node-a", 3)
    assert peer_set.alone and peer_set.peers == 0
    assert all(peer_set.add_service(key) == {key} for key in keys)
    assert peer_set.probed() == set(keys) and peer_set.probers(keys[0]) == []
    # Only pods that are not peers (not ready, pending): still alone.
    not_peers = [pod("tw-a", "node-a", state="unready"), pod("tw-b", "node-b", state="pending")]
    assert peer_set.sync(not_peers) == set()
    assert peer_set.alone and peer_set.probed() == set(keys)
    # Another agent becomes ready, this one is not: it hands every Service over.
    assert peer_set.apply("MODIFIED", pod("tw-b", "node-b")) == set(keys)
    assert not peer_set.alone and not peer_set.ready and peer_set.probed() == set()
    # It goes: alone again, every Service back.
    assert peer_set.apply("DELETED", pod("tw-b", "node-b")) == set(keys)
    assert peer_set.alone and peer_set.probed() == set(keys)


def test_an_agent_not_ready_itself_probes_nothing_then_takes_its_share() -> None:
    nodes = spread(6)
    keys = services(300)
    peer_set = PeerSet("node-0000", 2)
    for key in keys:
        peer_set.add_service(key)
    others = {n: z for n, z in nodes.items() if n != "node-0000"}
    peer_set.sync([*pods_of(others), pod("tw-node-0000", "node-0000", state="unready")])
    assert peer_set.peers == 5 and not peer_set.ready and peer_set.probed() == set()
    assert all("node-0000" not in peer_set.probers(key) for key in keys)
    # Ready: its share is set up step by step; till then the others cover it.
    assert peer_set.apply("MODIFIED", pod("tw-node-0000", "node-0000")) == set()
    assert peer_set.ready and peer_set.pending == len(keys) and peer_set.probed() == set()
    share = {key for key in keys if "node-0000" in reference_probers(key, nodes, 2)}
    assert drain(peer_set) == share == peer_set.probed()
    assert 0 < len(share) < len(keys)
    # Removed Services report a change only if they were probed here.
    some = next(iter(share))
    assert peer_set.remove_service(some) == {some}
    assert peer_set.remove_service(some) == set()
    with pytest.raises(KeyError):
        peer_set.is_prober(some)


# -- the setup in steps ----------------------------------------------------------------------


def test_the_setup_is_pending_until_done_in_steps_oldest_first() -> None:
    nodes = spread(30, ("a", "b", "c"))
    keys = services(40)
    peer_set = PeerSet("node-0000", 3)
    for key in keys:
        peer_set.add_service(key)
    assert peer_set.pending == 0 and peer_set.probed() == set(keys)  # alone: nothing to set up
    # Peers visible and this agent one of them: every Service waits for its step, still
    # probed here as it was while alone.
    assert peer_set.sync(pods_of(nodes)) == set()
    assert peer_set.ready and peer_set.pending == len(keys) and peer_set.probed() == set(keys)
    share = {key for key in keys if "node-0000" in reference_probers(key, nodes, 3)}
    assert 0 < len(share) < len(keys)
    # A Service added or removed meanwhile joins or leaves the queue. The one added has no
    # answer to keep: not probed till its step; the one removed was still probed.
    assert peer_set.add_service("late/one") == set()
    assert not peer_set.is_prober("late/one")
    assert peer_set.remove_service(keys[1]) == {keys[1]}
    queue = [key for key in keys if key != keys[1]] + ["late/one"]
    kept = {key: key != "late/one" for key in queue}
    assert peer_set.pending == len(queue)
    with pytest.raises(ValueError, match="at least 1"):
        peer_set.setup_pending(0)
    done: list[str] = []
    while peer_set.pending:
        step = queue[len(done) : len(done) + 7]
        changed = peer_set.setup_pending(7)
        done += step
        # The oldest first; exactly those of the step whose answer differs from the kept one.
        now = {k: "node-0000" in reference_probers(k, nodes, 3) for k in step}
        assert changed == {k for k in step if now[k] != kept[k]}
        assert peer_set.pending == len(queue) - len(done)
        assert peer_set.probed() == {k for k in done if "node-0000" in peer_set.probers(k)} | {
            k for k in queue[len(done) :] if kept[k]
        }
    assert done == queue
    assert peer_set.setup_pending(7) == set()
    assert peer_set.probed() == (share - {keys[1]}) | (
        {"late/one"} if "node-0000" in peer_set.probers("late/one") else set()
    )
    # A Service added later waits for its step too (never a setup inside add_service).
    extra = next(f"extra/{i}" for i in range(100) if "node-0000" in peer_set.probers(f"extra/{i}"))
    assert peer_set.add_service(extra) == set() and peer_set.pending == 1
    assert peer_set.setup_pending(7) == {extra} and peer_set.pending == 0


def test_leaving_while_pending_drops_the_setup_and_returning_starts_it_over() -> None:
    nodes = spread(9, ("a", "b", "c"))
    keys = services(30)
    peer_set = PeerSet("node-0000", 3)
    for key in keys:
        peer_set.add_service(key)
    peer_set.sync(pods_of(nodes))
    peer_set.setup_pending(10)
    assert peer_set.pending == 20
    probed = peer_set.probed()
    assert set(pending_keys(peer_set)) <= probed  # still probed as while alone
    # Not ready any more: nothing is kept, nothing waits, every answer False at once.
    assert peer_set.apply("MODIFIED", pod("tw-node-0000", "node-0000", "a", state="unready")) == (
        probed
    )
    assert peer_set.pending == 0 and peer_set.probed() == set()
    # Ready again, in another zone: the whole setup again, in steps, not probed meanwhile.
    assert peer_set.apply("MODIFIED", pod("tw-node-0000", "node-0000", "b")) == set()
    assert peer_set.pending == len(keys) and peer_set.probed() == set()
    nodes["node-0000"] = "b"
    share = {key for key in keys if "node-0000" in reference_probers(key, nodes, 3)}
    assert drain(peer_set, 4) == share == peer_set.probed()


def test_becoming_alone_takes_effect_at_once_and_ready_again_keeps_probing_all() -> None:
    nodes = spread(9, ("a", "b", "c"))
    keys = services(60)
    peer_set = agent("node-0000", nodes, keys, 3)
    share = peer_set.probed()
    assert 0 < len(share) < len(keys)
    # Every peer gone, this agent too (one relist): alone, every Service probed at once.
    assert peer_set.sync([]) == set(keys) - share
    assert peer_set.alone and peer_set.pending == 0 and peer_set.probed() == set(keys)
    # The peers back: each Service keeps the True it had while alone till its step.
    assert peer_set.sync(pods_of(nodes)) == set()
    assert peer_set.pending == len(keys) and peer_set.probed() == set(keys)
    assert peer_set.setup_pending(7) == {key for key in keys[:7] if key not in share}
    assert peer_set.probed() == set(keys) - (set(keys[:7]) - share)
    # Alone again halfway: at once again, the rest of the setup dropped.
    assert peer_set.sync([]) == set(keys[:7]) - share
    assert peer_set.pending == 0 and peer_set.probed() == set(keys)
    peer_set.sync(pods_of(nodes))
    assert drain(peer_set) == set(keys) - share and peer_set.probed() == share


def test_a_relist_that_redoes_the_setup_keeps_the_answers_till_each_step() -> None:
    nodes = spread(9, ("a", "b", "c"))  # 3 a zone
    keys = services(200)
    peer_set = agent("node-0000", nodes, keys, 3)
    probed = peer_set.probed()
    # More new peers than this agent's zone has: the full setup again, the answers kept.
    grown = nodes | {f"node-new-{i}": ("a", "b", "c")[i % 3] for i in range(12)}
    assert peer_set.sync(pods_of(grown)) == set()
    assert peer_set.pending == len(keys) and peer_set.probed() == probed
    share = {key for key in keys if "node-0000" in reference_probers(key, grown, 3)}
    assert share != probed
    done: list[str] = []
    while peer_set.pending:
        step = keys[len(done) : len(done) + 9]
        # Each step reports exactly the keys whose answer differs from the one kept.
        assert peer_set.setup_pending(9) == {
            key for key in step if (key in share) != (key in probed)
        }
        done += step
        pending = set(keys[len(done) :])
        assert peer_set.probed() == (share - pending) | (probed & pending)
    assert peer_set.probed() == share
    # This agent rejoining in another zone (its pod replaced): the same, in steps.
    assert peer_set.apply("MODIFIED", pod("tw-node-0000", "node-0000", "b")) == set()
    assert peer_set.pending == len(keys) and peer_set.probed() == share
    moved = grown | {"node-0000": "b"}
    after = {key for key in keys if "node-0000" in reference_probers(key, moved, 3)}
    assert drain(peer_set, 5) == share ^ after and peer_set.probed() == after


def test_every_agent_relisting_the_same_change_leaves_no_service_without_probers() -> None:
    nodes = spread(12, ("a", "b", "c"))
    keys = services(150)
    agents = [agent(node, nodes, keys, 3) for node in nodes]
    grown = nodes | {f"node-new-{i}": ("a", "b", "c")[i % 3] for i in range(15)}
    for each in agents:
        assert each.sync(pods_of(grown)) == set() and each.pending == len(keys)
    # Till their steps, the agents probe what they probed: every Service keeps its 3 probers
    # (had they paused instead, no Service would have any).
    for key in keys:
        assert sorted(a.self_node for a in agents if a.is_prober(key)) == sorted(
            reference_probers(key, nodes, 3)
        )
    for each in agents:
        drain(each)
    for key in keys:
        chosen = set(reference_probers(key, grown, 3))
        assert {a.self_node for a in agents if a.is_prober(key)} == chosen & set(nodes)


def test_services_made_pending_keep_the_answers_from_before_the_call() -> None:
    # One event changing two nodes, this agent's among them, is applied as one change: the
    # Services keep their answers from before it, not from halfway (n0 gone and n1 not yet
    # there would be `alone`). The generated histories move pods between nodes like this.
    peer_set = PeerSet("n1", 3)
    peer_set.add_service("ns/a")
    assert peer_set.sync([pod("tw-x", "n0")]) == {"ns/a"}  # a peer, not this agent
    assert not peer_set.is_prober("ns/a")
    assert peer_set.apply("MODIFIED", pod("tw-x", "n1")) == set()
    assert peer_set.ready and peer_set.pending == 1 and not peer_set.is_prober("ns/a")
    assert peer_set.setup_pending() == {"ns/a"} and peer_set.is_prober("ns/a")  # the only peer


def test_a_surge_pod_of_this_agent_in_a_relist_starts_no_setup_over() -> None:
    nodes = spread(9, ("a", "b", "c"))
    keys = services(30)
    peer_set = agent("node-0000", nodes, keys, 3)
    probed = peer_set.probed()
    assert probed
    surge = [*pods_of(nodes), pod("tw-node-0000-new", "node-0000", "a")]
    assert peer_set.sync(surge) == set()
    assert peer_set.pending == 0 and peer_set.probed() == probed
    assert peer_set.sync(surge[1:]) == set()  # the old pod gone, the new one stays
    assert peer_set.pending == 0 and peer_set.probed() == probed


# -- the cost claims, counted in hashes -------------------------------------------------------


@contextmanager
def counting_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    counts: Counter[str] = Counter()
    score_from, full = peers_module._score_from, peers_module.score

    def counted_score_from(prefix: Any, name: bytes) -> int:
        counts["hash"] += 1
        return score_from(prefix, name)

    def counted_score(key: str, name: str) -> int:
        counts["hash"] += 1
        return full(key, name)

    with monkeypatch.context() as patch:
        patch.setattr(peers_module, "_score_from", counted_score_from)
        patch.setattr(peers_module, "score", counted_score)
        yield counts


def test_the_cost_of_each_change_in_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = spread(60, ("a", "b", "c"))  # 20 per zone
    keys = services(100)
    me = "node-0000"  # zone a
    with counting_hashes(monkeypatch) as counts:
        peer_set = PeerSet(me, 3)
        for key in keys:
            peer_set.add_service(key)  # this agent's own score: one hash each
        assert counts["hash"] == len(keys)
        counts.clear()
        # The first list leaves the setup pending: no hash. A peer event meanwhile skips the
        # pending Services: no hash either.
        peer_set.sync(pods_of(nodes))
        peer_set.apply("ADDED", pod("tw-node-a-tmp", "node-a-tmp", "a"))
        peer_set.apply("DELETED", pod("tw-node-a-tmp", "node-a-tmp", "a"))
        assert counts["hash"] == 0 and peer_set.pending == len(keys)
        # One step of n Services: one hash per Service and other peer of my zone (19), plus
        # the zone order (3 zones) per Service.
        peer_set.setup_pending(7)
        assert counts["hash"] == 7 * (19 + 3)
        drain(peer_set)
        assert counts["hash"] == len(keys) * (19 + 3)
        counts.clear()
        # A peer joining or leaving another zone that keeps k peers or more: no hash at all.
        peer_set.apply("ADDED", pod("tw-node-b-new", "node-b-new", "b"))
        peer_set.apply("DELETED", pod("tw-node-0001", "node-0001", "b"))
        assert counts["hash"] == 0
        # A peer joining or leaving my zone: one hash per Service.
        peer_set.apply("ADDED", pod("tw-node-a-new", "node-a-new", "a"))
        assert counts["hash"] == len(keys)
        counts.clear()
        # A new zone: the zones re-ranked for every Service (4 zones now).
        peer_set.apply("ADDED", pod("tw-node-d", "node-d", "d"))
        assert counts["hash"] == len(keys) * 4
        counts.clear()
        # A Service added: its own score now; at its step one per peer of my zone and its
        # zone order.
        peer_set.add_service("new/service")
        assert counts["hash"] == 1
        peer_set.setup_pending(1)
        assert counts["hash"] == 1 + 20 + 4
        counts.clear()
        # A relist that changes nothing costs nothing; one that changes a peer costs that
        # change only, as the event would.
        current = {n: z for n, z in nodes.items() if n != "node-0001"}
        current |= {"node-a-new": "a", "node-b-new": "b", "node-d": "d"}
        assert peer_set.sync(pods_of(current)) == set()
        peer_set.sync(pods_of(current | {"node-0001": "b"}))
        assert counts["hash"] == 0
        peer_set.sync(pods_of({n: z for n, z in current.items() if n != "node-0003"}))
        assert counts["hash"] == len(keys) + 1
