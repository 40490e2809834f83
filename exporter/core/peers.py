"""Which agents probe a Service's address: k peers per Service, by rendezvous hashing.

A Service's address (`target="service"`) is probed by k agents (`--service-probers`), not by
every agent (docs/design.md, *Architecture*). The agents' peers are the pods matching
`--peer-selector` in their own namespace that are Running and Ready; each agent watches them
and computes the same choice from the same inputs, with no coordination beyond the watch.
`PeerSet` is that computation, pure and incremental: fed like the other trackers (`sync`
with a full list, `apply` with one watch event) and told the opted-in Services
(`add_service`, `remove_service`), it answers `is_prober(key)` in O(1).

Peers (`parse_peer`)
    A pod is a peer when it has `spec.nodeName`, `status.phase` Running, condition Ready
    "True" and no `metadata.deletionTimestamp`. Peers are counted by node: two ready pods on
    one node (a rollout's surge) are one peer, which stays as long as either is ready. A
    node's zone is its pods' label `topology.kubernetes.io/zone` (clusters that copy node
    topology labels onto pods set it), "" when unknown; should two pods of one node
    disagree, the greatest value wins (a known zone over "").

Selection (the contract: every agent must compute exactly this)
    score(key, name) = the 8-byte BLAKE2b digest (`hashlib.blake2b(..., digest_size=8)`) of
    the UTF-8 bytes of f"{key}\\0{name}", read as a big-endian unsigned 64-bit integer, where
    key is the Service's "namespace/name". Candidates are ranked by (score, name), highest
    first (the name only breaks exact ties).

    1. The zones are the distinct zones of the peers ("" is one zone; with every zone unknown
       this is plain rendezvous hashing). They are ranked for the Service by
       (score(key, "zone:" + zone), zone).
    2. k' = min(k, number of peers) slots are handed out round-robin over the zones in that
       order, one per zone per round, skipping a zone once all its peers have a slot, until
       k' slots are given. Zone z gets q_z slots.
    3. Zone z's q_z slots go to its q_z peers of highest (score(key, node), node).

    So with k = 3 and three zones each Service is probed once in every zone; a zone with
    fewer peers than its share passes the rest on; and removing a peer changes only the
    Services it probed (each gets exactly one new prober, from the same zone while that zone
    keeps at least k peers), which is what rendezvous hashing is for.

Cost (a DaemonSet at 5,000 nodes, 1,000+ opted-in Services, a few zones)
    Recomputing the choice on every peer event would cost O(Services x peers) hashes per
    event (5 million BLAKE2b calls, seconds of CPU) and every agent sees every peer event.
    Instead, per Service this agent keeps only what its own answer depends on:

    - `above`: the number of peers *in this agent's zone* ranked above this agent. Within a
      zone the ranking is fixed by the hash, so this agent is one of its zone's q probers
      exactly when above < q.
    - the zone order (a tuple of the zones, shared between Services with the same order)
      and this agent's zone's quota q, looked up in a cache keyed by zone order: it depends
      only on that order, the zones' sizes and k, so there are at most (zones)! distinct
      values to compute, not one per Service.

    Then `is_prober(key)` is one comparison, and:

    - a peer joining or leaving this agent's zone costs one hash per Service (is it above
      this agent?), O(Services);
    - a peer joining or leaving another zone costs no hashing: only the quotas may change,
      and not even those while the zone keeps at least k peers (a zone with k peers or more
      is never short of peers for its slots), which is the common case at scale;
    - a zone appearing or disappearing re-ranks the zones: O(Services x zones) hashes;
    - `add_service` costs O(1) and, at the Service's `setup_pending` step, O(peers in this
      agent's zone) hashes; `remove_service` O(1);
    - the full setup, when this agent first becomes a ready peer (normally once, after the
      first list), costs O(Services x peers in this agent's zone) hashes: about 1.7 million
      for 1,000 Services and 5,000 peers in 3 zones, about a second of CPU, once. A relist
      (`sync`) that changes fewer peers than this agent's zone has applies them one by one;
      one that changes more, or moves this agent itself, redoes the full setup.

    The full setup is not done in one call: the agent's event loop also runs the latency
    prober, and a second's stall would show as false tail latency in every probe of the
    node. The call that needs it only marks every Service *pending* (O(Services), no
    hashing); the caller then drains them in bounded steps, yielding to the loop between:

        while peers.pending:
            changed = peers.setup_pending(SETUP_STEP)
            ...  # start and stop the probes of `changed`
            await asyncio.sleep(0)

    One step of N Services costs N x (peers in this agent's zone + zones) hashes: N = 64 at
    1,667 peers a zone is about 70 ms of CPU; the default `SETUP_STEP` = 12 about 12 ms, so
    the whole setup takes 84 steps. A pending Service keeps the `is_prober` answer it had
    before it became pending until its step sets it up; the step then reports it if its
    answer changed. So when this agent first becomes ready it takes on no Service before its
    step comes, the other agents covering its share as they did before; when it becomes
    ready while alone, it keeps probing everything until then; and a relist that redoes the
    setup (many peers changed, or this agent rejoined in another zone) leaves its probes as
    they were. Were its share paused instead, every agent relisting the same change at once
    would leave the Services with no prober at all for the second the drain takes; keeping
    the old answers that long only means k-1 or k+1 probers meanwhile. A Service added while
    a setup is pending has no answer to keep: it is not probed (`alone` cannot hold while a
    setup is pending) and joins the queue. Peer events skip pending Services (their setup
    starts from scratch anyway), so they cost no more than before. After the last step every
    answer is exactly what a computation from scratch gives, whatever happened between the
    steps.

    Measured by tests/bench/test_peer_selection.py at that size: the setup 1.0 to 1.1 s of
    CPU in all (as much as in one call), in 84 steps of about 12 ms, the largest 18 ms; a
    peer event in this agent's zone 0.6 ms, in another zone 6 us, `add_service` 1 ms, a
    relist with no change 23 ms (parsing the 5,000 pods), `is_prober` 60 ns. On a busy
    host all of these take about 1.5 times as long (the largest step 22 ms).

    Only changed answers are reported: every mutating call returns the keys whose
    `is_prober` answer changed, so the caller starts and stops only those probes.

Modes
    - No peers visible at all (the selector matches nothing, or before the first list):
      `alone`, and this agent probes every Service address itself.
    - Peers visible but this agent is not one of them (its pod not ready yet, or not
      matching the selector): it probes no Service address; the others do.
    - This agent a ready peer: it probes its share. When it becomes ready (from either mode
      above) it takes its share step by step (the full setup above), each Service keeping
      its previous answer till its step: not probed if it was not ready, probed if alone.
      The other way, becoming not ready or alone, takes effect at once for every Service,
      any pending setup dropped: that answer needs no hashing, so it does not wait.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from exporter.core.pods import MalformedObject, opt_mapping

ZONE_LABEL = "topology.kubernetes.io/zone"
ZONE_PREFIX = "zone:"
# Services set up per `PeerSet.setup_pending` step by default: about 12 ms of CPU at 5,000
# peers in 3 zones (module docstring, *Cost*), short enough not to stall the event loop.
SETUP_STEP = 12


@dataclass(frozen=True, slots=True)
class Peer:
    """One ready agent pod: the node it runs on, that node's zone ("" if unknown)."""

    node: str
    zone: str
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def score(key: str, name: str) -> int:
    """The rendezvous weight of `name` (a node, or "zone:" + a zone) for Service `key`."""
    digest = blake2b(f"{key}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _scorer(key: str) -> blake2b:
    """A BLAKE2b state holding f"{key}\\0", to be copied and fed a name (`_score_from`)."""
    return blake2b(f"{key}\0".encode(), digest_size=8)


def _score_from(prefix: blake2b, name: bytes) -> int:
    """`score(key, name)` from `_scorer(key)` and the encoded name: a third cheaper."""
    h = prefix.copy()
    h.update(name)
    return int.from_bytes(h.digest(), "big")


def _pod_key(obj: Mapping[str, Any]) -> str:
    """The "namespace/name" of a pod body; raises `MalformedObject`."""
    if not isinstance(obj, Mapping):
        raise MalformedObject("not_an_object", "pod is not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise MalformedObject("missing_field", "pod.metadata is missing")
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name or not isinstance(namespace, str) or not namespace:
        raise MalformedObject("missing_field", "pod metadata.name/namespace missing")
    return f"{namespace}/{name}"


def parse_peer(obj: Mapping[str, Any]) -> Peer | None:
    """The peer a pod body is, or None if it is not one now; raises `MalformedObject`."""
    _pod_key(obj)
    meta = obj["metadata"]
    labels = opt_mapping(meta, "labels", "pod.metadata")
    spec = opt_mapping(obj, "spec", "pod")
    status = opt_mapping(obj, "status", "pod")
    node = spec.get("nodeName")
    if node is not None and not isinstance(node, str):
        raise MalformedObject("bad_field", "pod spec.nodeName is not a string")
    phase = status.get("phase")
    if phase is not None and not isinstance(phase, str):
        raise MalformedObject("bad_field", "pod status.phase is not a string")
    conditions = status.get("conditions")
    if conditions is None:
        conditions = []
    elif not isinstance(conditions, list):
        raise MalformedObject("bad_field", "pod status.conditions is not a list")
    ready = False
    for condition in conditions:
        if not isinstance(condition, Mapping):
            raise MalformedObject("bad_field", "pod status.conditions[] is not an object")
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    zone = labels.get(ZONE_LABEL, "")
    if not isinstance(zone, str):
        raise MalformedObject("bad_field", f"pod label {ZONE_LABEL} is not a string")
    if not node or phase != "Running" or not ready or meta.get("deletionTimestamp") is not None:
        return None
    return Peer(node, zone, str(meta["namespace"]), str(meta["name"]))


def quotas(order: Sequence[str], sizes: Mapping[str, int], k: int) -> dict[str, int]:
    """Slots per zone: min(k, peers) handed out round-robin over `order` (rule 2)."""
    left = min(k, sum(sizes[z] for z in order))
    given = dict.fromkeys(order, 0)
    while left:
        for zone in order:
            if left and given[zone] < sizes[zone]:
                given[zone] += 1
                left -= 1
    return given


def zone_order(key: str, zones: Iterable[str]) -> tuple[str, ...]:
    """The zones ranked for Service `key` (rule 1)."""
    return tuple(sorted(zones, key=lambda z: (score(key, ZONE_PREFIX + z), z), reverse=True))


class _Service:
    __slots__ = ("above", "key", "order", "pending", "prefix", "prober", "quota", "self_score")

    def __init__(self, key: str, self_node: bytes) -> None:
        self.key = key
        self.prefix = _scorer(key)
        self.self_score = _score_from(self.prefix, self_node)
        self.above = 0  # peers of this agent's zone ranked above this agent
        self.order: tuple[str, ...] = ()  # the zones, ranked for this Service
        self.quota = 0  # slots of this agent's zone
        self.prober = False
        # Waiting for its setup: above, order and quota are stale, prober the answer kept.
        self.pending = False


# A node's membership: absent (None) or present in a zone.
_Change = tuple[str, str | None, str | None]  # (node, zone before, zone after)


class PeerSet:
    """The peers of this agent (`self_node`) and, per Service, whether it is one of k probers.

    Keys are Services' "namespace/name". `sync`, `apply`, `add_service`, `remove_service`
    and `setup_pending` return the keys whose `is_prober` answer changed (a Service not added
    counts as not probed). `apply` raises `MalformedObject`; `sync` skips malformed items,
    keeping what was known of their pods, and leaves them in `last_malformed`.

    The full setup is left *pending* by the call that needs it, to be done in steps by
    `setup_pending` (module docstring, *Cost*); a pending Service keeps the answer it had
    before it became pending (False if it was added meanwhile) until its step. Pending
    Services exist only while this agent is ready.
    """

    def __init__(self, self_node: str, k: int) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        self.self_node = self_node
        self.k = k
        self.last_malformed: tuple[MalformedObject, ...] = ()
        self._self_name = self_node.encode()
        self._pods: dict[str, Peer] = {}  # pod key -> the peer it is (ready pods only)
        self._node_pods: dict[str, dict[str, Peer]] = {}  # node -> its ready pods
        self._nodes: dict[str, str] = {}  # peer node -> its zone
        self._zones: dict[str, set[str]] = {}  # zone -> its peer nodes
        self._services: dict[str, _Service] = {}
        self._quota_cache: dict[tuple[str, ...], int] = {}  # zone order -> my zone's quota
        self._orders: dict[tuple[str, ...], tuple[str, ...]] = {}  # one copy of each order
        self._pending: OrderedDict[str, _Service] = OrderedDict()  # waiting, oldest first

    # -- queries ----------------------------------------------------------------------------

    @property
    def peers(self) -> int:
        """Peers visible (nodes with a ready agent pod), this agent included if it is one."""
        return len(self._nodes)

    @property
    def alone(self) -> bool:
        """No peer visible at all: this agent probes every Service address itself."""
        return not self._nodes

    @property
    def ready(self) -> bool:
        """This agent is itself a peer (its pod is ready and matches the selector)."""
        return self.self_node in self._nodes

    @property
    def zones(self) -> dict[str, int]:
        """Peers per zone ("" for unknown)."""
        return {zone: len(nodes) for zone, nodes in self._zones.items()}

    @property
    def pending(self) -> int:
        """Services waiting for their setup (`setup_pending`), each keeping its previous
        answer meanwhile; 0 once it is done."""
        return len(self._pending)

    def is_prober(self, key: str) -> bool:
        """Whether this agent probes Service `key`'s address, in O(1); KeyError if not added.

        While the Service is pending (waiting for `setup_pending`), the answer it had before it
        became pending (False if it was added meanwhile): what this agent probed goes on
        being probed, and what it did not stays with the other agents, until its step.
        """
        return self._services[key].prober

    def probed(self) -> set[str]:
        """The keys of the Services this agent probes."""
        return {key for key, service in self._services.items() if service.prober}

    def probers(self, key: str) -> list[str]:
        """The nodes chosen for Service `key` (added or not), in zone order then rank: O(peers).

        Empty when no peer is visible (every agent that sees none probes by itself). Computed
        from scratch: it includes this agent when chosen, whatever a pending Service answers.
        """
        if not self._nodes:
            return []
        order = zone_order(key, self._zones)
        slots = quotas(order, self.zones, self.k)
        chosen: list[str] = []
        for zone in order:
            chosen += heapq.nlargest(
                slots[zone], self._zones[zone], key=lambda node: (score(key, node), node)
            )
        return chosen

    # -- Services ---------------------------------------------------------------------------

    def add_service(self, key: str) -> set[str]:
        """Track Service `key`: O(1). Returns {key} if probed.

        While this agent is a ready peer, its setup (O(peers in this agent's zone)) joins the
        queue of `setup_pending`, answering False till its step (it has no previous answer to
        keep): a first list of many Services is then set up in steps too, never in one call.
        """
        if key in self._services:
            return set()
        service = _Service(key, self._self_name)
        self._services[key] = service
        if self._pending or self.ready:
            service.pending = True
            self._pending[key] = service
        return self._evaluate([service])

    def remove_service(self, key: str) -> set[str]:
        """Forget Service `key`: O(1). Returns {key} if this agent was probing it."""
        service = self._services.pop(key, None)
        if service is not None and service.pending:
            del self._pending[key]
        return {key} if service is not None and service.prober else set()

    def setup_pending(self, limit: int = SETUP_STEP) -> set[str]:
        """Set up at most `limit` pending Services, oldest first: O(limit x peers in this
        agent's zone) hashes. Returns the keys whose answer changed from the one each kept
        while pending: now probed, or no longer."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not self._pending:
            return set()
        others = self._my_zone_others()
        batch: list[_Service] = []
        while self._pending and len(batch) < limit:
            _, service = self._pending.popitem(last=False)
            service.pending = False
            self._setup(service, others)
            batch.append(service)
        return self._evaluate(batch)

    # -- peers ------------------------------------------------------------------------------

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> set[str]:
        """One watch event of the peer pods (ADDED, MODIFIED, DELETED)."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            raise MalformedObject("bad_event_type", f"unknown watch event type {event_type!r}")
        pod = _pod_key(obj)
        peer = None if event_type == "DELETED" else parse_peer(obj)
        return self._replay(self._changes(self._set_pod(pod, peer)))

    def sync(self, items: Iterable[Mapping[str, Any]]) -> set[str]:
        """A full list of the peer pods. A few changed nodes are applied one by one; many (the
        first list) at once, leaving the full setup pending (`setup_pending`)."""
        fresh: dict[str, Peer] = {}
        malformed: list[MalformedObject] = []
        for obj in items:
            try:
                pod = _pod_key(obj)
            except MalformedObject as exc:
                malformed.append(exc)
                continue
            try:
                peer = parse_peer(obj)
            except MalformedObject as exc:
                malformed.append(exc)
                if pod in self._pods:
                    fresh[pod] = self._pods[pod]  # unreadable now: keep what we knew
                continue
            if peer is not None:
                fresh[pod] = peer
        self.last_malformed = tuple(malformed)
        touched: set[str] = set()
        for pod in self._pods.keys() - fresh.keys():
            touched |= self._set_pod(pod, None)
        for pod, peer in fresh.items():
            touched |= self._set_pod(pod, peer)
        changes = self._changes(touched)
        if not changes:
            return set()
        # One by one costs up to O(Services) hashes per change, the full setup O(Services x
        # peers in this agent's zone): replay when there are fewer changes than such peers.
        # (A change of this agent's own pods that leaves its membership alone, a surge pod,
        # changes nothing kept: replayed, answers and any pending setup stay as they are.)
        if not self.ready or len(changes) <= len(self._zones[self._nodes[self.self_node]]):
            return self._replay(changes)
        return self._rebuild_with(changes)

    # -- internals --------------------------------------------------------------------------

    def _set_pod(self, pod: str, peer: Peer | None) -> set[str]:
        """Record one pod's state (None: not a peer); the nodes whose pods changed."""
        old = self._pods.get(pod)
        if old == peer:
            return set()
        if old is not None:
            del self._pods[pod]
            on_node = self._node_pods[old.node]
            del on_node[pod]
            if not on_node:
                del self._node_pods[old.node]
        if peer is not None:
            self._pods[pod] = peer
            self._node_pods.setdefault(peer.node, {})[pod] = peer
        return {p.node for p in (old, peer) if p is not None}

    def _changes(self, nodes: Iterable[str]) -> list[_Change]:
        """The membership changes of `nodes` that their pods imply, not yet placed."""
        changes: list[_Change] = []
        for node in sorted(nodes):
            pods = self._node_pods.get(node)
            after = max(p.zone for p in pods.values()) if pods else None
            before = self._nodes.get(node)
            if before != after:
                changes.append((node, before, after))
        return changes

    def _replay(self, changes: list[_Change]) -> set[str]:
        """Place and reconcile the changes one at a time; the keys whose answer changed. A
        change of this agent's own membership starts the full setup over instead."""
        if any(node == self.self_node for node, _, _ in changes):
            return self._rebuild_with(changes)
        changed: set[str] = set()
        for node, before, after in changes:
            self._place(node, after)
            changed ^= self._reconcile(node, before, after)  # a double flip is no change
        return changed

    def _rebuild_with(self, changes: list[_Change]) -> set[str]:
        """Place all the changes, then start the full setup over (`_rebuild`): the Services
        made pending keep the answers they had before these changes, not ones of a change
        half applied."""
        for node, _, after in changes:
            self._place(node, after)
        return self._rebuild()

    def _place(self, node: str, zone: str | None) -> None:
        """Set a node's membership: absent (None) or present in `zone`."""
        old = self._nodes.pop(node, None)
        if old is not None:
            members = self._zones[old]
            members.discard(node)
            if not members:
                del self._zones[old]
        if zone is not None:
            self._nodes[node] = zone
            self._zones.setdefault(zone, set()).add(node)

    def _size_before(self, zone: str, before: str | None, after: str | None) -> int:
        """Peers `zone` had before one node moved from `before` to `after`."""
        return len(self._zones.get(zone, ())) - (after == zone) + (before == zone)

    def _reconcile(self, node: str, before: str | None, after: str | None) -> set[str]:
        """Bring the per-Service state up to date after `node` went from `before` to `after`
        (a zone, or None: absent), not this agent; `_nodes` and `_zones` already hold `after`.
        Pending Services are skipped: their setup starts from scratch anyway."""
        if not self.ready:
            # Nothing is kept: only `alone` can have changed, and then every answer flips.
            was_alone = len(self._nodes) + (before is not None) - (after is not None) == 0
            return self._evaluate(self._services.values()) if was_alone != self.alone else set()
        my_zone = self._nodes[self.self_node]
        dirty: list[_Service] = []
        delta = (after == my_zone) - (before == my_zone)
        if delta:  # one hash per Service set up: is the node ranked above this agent?
            name, beats_on_tie = node.encode(), node > self.self_node
            for service in self._services.values():
                if service.pending:
                    continue
                theirs = _score_from(service.prefix, name)
                if theirs > service.self_score or (theirs == service.self_score and beats_on_tie):
                    service.above += delta
                    dirty.append(service)
        new_zone = after is not None and self._size_before(after, before, after) == 0
        if new_zone or (before is not None and before not in self._zones):
            self._orders.clear()
            self._quota_cache.clear()
            for service in self._services.values():
                if not service.pending:
                    service.order = self._intern(zone_order(service.key, self._zones))
                    service.quota = self._my_quota(service.order)
            return self._evaluate(self._services.values())
        # A zone's size matters to the quotas only while it is below k (module docstring).
        sizes = [
            size
            for zone in {before, after}
            if zone is not None
            for size in (len(self._zones[zone]), self._size_before(zone, before, after))
        ]
        if min(sizes) < self.k:
            self._quota_cache.clear()
            for service in self._services.values():
                if not service.pending:
                    service.quota = self._my_quota(service.order)
            return self._evaluate(self._services.values())
        return self._evaluate(dirty)

    def _intern(self, order: tuple[str, ...]) -> tuple[str, ...]:
        return self._orders.setdefault(order, order)

    def _my_quota(self, order: tuple[str, ...]) -> int:
        quota = self._quota_cache.get(order)
        if quota is None:
            quota = quotas(order, self.zones, self.k)[self._nodes[self.self_node]]
            self._quota_cache[order] = quota
        return quota

    def _my_zone_others(self) -> list[tuple[str, bytes]]:
        zone = self._nodes[self.self_node]
        return [(n, n.encode()) for n in self._zones[zone] if n != self.self_node]

    def _setup(self, service: _Service, others: list[tuple[str, bytes]]) -> None:
        """Everything kept for one Service, from scratch: O(peers in this agent's zone)."""
        own, me, prefix = service.self_score, self.self_node, service.prefix
        above = 0
        for node, name in others:
            theirs = _score_from(prefix, name)
            if theirs > own or (theirs == own and node > me):
                above += 1
        service.above = above
        service.order = self._intern(zone_order(service.key, self._zones))
        service.quota = self._my_quota(service.order)

    def _rebuild(self) -> set[str]:
        """Start the full setup over: every Service pending if this agent is ready, keeping
        its answer till `setup_pending` sets it up (so nothing changes now); none if not
        ready (nothing is kept then), every answer then given at once (`alone` or not).
        O(Services), no hash."""
        self._orders.clear()
        self._quota_cache.clear()
        if self.ready:  # those already waiting keep their place at the head of the queue
            for key, service in self._services.items():
                if not service.pending:
                    service.pending = True
                    self._pending[key] = service
        else:
            for service in self._pending.values():
                service.pending = False
            self._pending.clear()
        return self._evaluate(self._services.values())

    def _evaluate(self, services: Iterable[_Service]) -> set[str]:
        """Recompute the answers of `services`; the keys whose answer changed. A pending
        Service keeps its answer (and only exists while this agent is ready)."""
        changed: set[str] = set()
        if self.alone or not self.ready:
            answer = self.alone
            for service in services:
                if service.prober != answer:
                    service.prober = answer
                    changed.add(service.key)
            return changed
        for service in services:
            if service.pending:
                continue
            prober = service.above < service.quota
            if prober != service.prober:
                service.prober = prober
                changed.add(service.key)
        return changed
