"""Cost of choosing the k agents that probe each Service address (exporter/core/peers.py)
at the 5,000-node model: 1,000 opted-in Services, 5,000 peers in 3 zones, k = 3. Run:
.venv/bin/python -m pytest tests/bench/test_peer_selection.py -m bench -s

Measured, as process CPU time: the first list (the Services already added), which leaves the
full setup pending; the setup itself, drained in steps of `SETUP_STEP` Services as the agent
does, in all and its largest single step (what the event loop stalls for at most), and one
step of 64 Services for comparison; a peer joining and leaving this agent's zone (one hash
per Service); a peer joining and leaving another zone (no hashing); a Service added (one hash
per peer of this agent's zone); a relist that changes nothing; and `is_prober` over every
Service.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from exporter.core.peers import SETUP_STEP, ZONE_LABEL, PeerSet

pytestmark = pytest.mark.bench

PEERS = 5000
SERVICES = 1000
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
K = 3
ME = "node-00000"
REPEATS = 20


def pod(node: str, zone: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"tailwatch-{node}",
            "namespace": "monitoring",
            "labels": {"app.kubernetes.io/name": "tailwatch", ZONE_LABEL: zone},
        },
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


def cpu(action: Callable[[], object], repeats: int = 1) -> float:
    """Mean process CPU seconds of one `action`."""
    started = time.process_time()
    for _ in range(repeats):
        action()
    return (time.process_time() - started) / repeats


def test_peer_selection_cost() -> None:
    pods = [pod(f"node-{i:05d}", ZONES[i % len(ZONES)]) for i in range(PEERS)]
    keys = [f"ns-{i % 50}/service-{i:04d}" for i in range(SERVICES)]
    peer_set = PeerSet(ME, K)
    for key in keys:
        peer_set.add_service(key)
    first_list = cpu(lambda: peer_set.sync(pods))
    assert peer_set.ready and peer_set.peers == PEERS and peer_set.pending == SERVICES
    steps: list[float] = []
    while peer_set.pending:
        steps.append(cpu(lambda: peer_set.setup_pending(SETUP_STEP)))
    setup, largest = sum(steps), max(steps)
    probed = len(peer_set.probed())
    # One larger step, for the docstring's scale: the setup redone, 64 Services set up.
    peer_set.sync(pods[1:])
    peer_set.sync(pods)
    wide_step = cpu(lambda: peer_set.setup_pending(64))
    while peer_set.pending:
        peer_set.setup_pending(SETUP_STEP)
    assert len(peer_set.probed()) == probed

    mine, other = pod("node-new-a", ZONES[0]), pod("node-new-b", ZONES[1])

    def join_leave(body: dict[str, Any]) -> None:
        peer_set.apply("ADDED", body)
        peer_set.apply("DELETED", body)

    my_zone_event = cpu(lambda: join_leave(mine), REPEATS) / 2
    other_zone_event = cpu(lambda: join_leave(other), REPEATS) / 2
    added = iter(f"new/service-{i}" for i in range(REPEATS))
    add_service = cpu(lambda: peer_set.add_service(next(added)), REPEATS)
    relist = cpu(lambda: peer_set.sync(pods))
    lookups = cpu(lambda: [peer_set.is_prober(key) for key in keys], REPEATS) / SERVICES

    print(
        f"\npeer selection, {SERVICES} Services x {PEERS} peers in {len(ZONES)} zones, k={K}: "
        f"the first list {first_list * 1000:.0f} ms CPU, then the setup {setup * 1000:.0f} ms "
        f"CPU in {len(steps)} steps of {SETUP_STEP} Services, the largest "
        f"{largest * 1000:.1f} ms (a step of 64: {wide_step * 1000:.0f} ms); this agent probes "
        f"{probed}; "
        f"a peer event in this agent's zone {my_zone_event * 1000:.2f} ms, in another zone "
        f"{other_zone_event * 1000:.3f} ms; add_service {add_service * 1000:.2f} ms; "
        f"a relist with no change {relist * 1000:.0f} ms; is_prober {lookups * 1e9:.0f} ns"
    )
    # Deterministic sanity, not timing: about k x S/P (0.6) of the Services land here.
    assert probed < SERVICES * K * 10 / PEERS
