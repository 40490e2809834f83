"""Invariants of the correlation core over random sequences of events and time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import LIFECYCLE_CAUSES, ChangeKind, Source
from exporter.core.events import PodEventKind as P
from exporter.core.rules import CorrelationSettings

from .harness import CHECKOUT, SEARCH, World

PODS = ("checkout-5d9f8c7b6-aaaaa", "checkout-5d9f8c7b6-bbbbb", "checkout-7c6b5a498-ccccc")
DISRUPTED_LATENCY = 0.5  # recorded only while the Service is not steady

endpoint_ops = st.tuples(
    st.just("endpoint"),
    st.sampled_from(PODS),
    st.sampled_from(["not_ready", "ready", "terminating", "remove", "add", "move"]),
)
pod_ops = st.tuples(
    st.just("pod"),
    st.sampled_from(PODS),
    st.sampled_from([P.CONTAINER_RESTART, P.OOM_KILL, P.ROLLOUT, P.NOT_READY, P.EVICTED]),
)
wait_ops = st.tuples(st.just("wait"), st.integers(1, 400), st.booleans())


def apply(w: World, op: tuple) -> None:
    kind = op[0]
    if kind == "wait":
        _, seconds, slow = op
        end = w.now + seconds
        while w.now < end:
            w.now += 1.0
            for service in (CHECKOUT, SEARCH):
                steady = w.c.state_of(service.namespace, service.name) == "steady"
                value = 0.008 if steady and not slow else (0.009 if steady else DISRUPTED_LATENCY)
                w.c.record_latency(service, Source.SERVICE_PROBE, value, w.now)
            w.changes.extend(w.c.tick(w.now))
        return
    _, pod, action = op
    key = f"shop/{pod}"
    held = w.endpoints[CHECKOUT].get(key)
    if kind == "pod":
        w.pod_event(action, pod)
    elif action == "add" and held is None:
        w.change(pod, [E.ADDED])
    elif action == "move" and held is None:
        w.change(pod, [E.MOVED], node="node-2", previous_node="node-1")
    elif action == "not_ready" and held is not None and held.ready and not held.terminating:
        w.change(pod, [E.NOT_READY], ready=False)
    elif action == "ready" and held is not None and not held.ready and not held.terminating:
        w.change(pod, [E.READY], ready=True)
    elif action == "terminating" and held is not None and not held.terminating:
        w.change(pod, [E.TERMINATING], ready=False, terminating=True)
    elif action == "remove" and held is not None:
        w.change(pod, [E.REMOVED], removed=True)


def check(w: World) -> None:
    held = [v.episode for v in w.c.services.values() if v.episode is not None]
    open_by_service: dict = {}
    for episode in w.c.open_episodes():
        open_by_service[episode.service] = open_by_service.get(episode.service, 0) + 1
    assert all(n == 1 for n in open_by_service.values())
    for episode in [*held, *w.c.recent]:
        assert episode.closed_at is None or episode.closed_at >= episode.opened_at
        recovery = episode.recovery_seconds
        assert recovery is None or recovery >= 0
        for impact in episode.latency.values():
            # Samples taken while disrupted or recovering never make a baseline.
            assert impact.baseline is None or impact.baseline.p999.value < DISRUPTED_LATENCY
    for change in w.changes:
        if change.kind is ChangeKind.CLOSED:
            episode = change.episode
            assert episode.cause is not None
            if not episode.spike:
                assert episode.cause in LIFECYCLE_CAUSES


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(endpoint_ops, pod_ops, wait_ops), min_size=1, max_size=40))
def test_invariants_hold_for_any_sequence(ops: list[tuple]) -> None:
    w = World(CorrelationSettings(settle=30, baseline=300, recovery_window=30, recovery_max=600))
    w.seed(*PODS[:2])
    w.seed("search-0", service=SEARCH)
    apply(w, ("wait", 300, False))
    for op in ops:
        apply(w, op)
        check(w)
    apply(w, ("wait", 1300, False))
    check(w)
    # Long after the last event every episode has closed and been judged.
    assert w.c.open_episodes() == []
    assert all(v.episode is None for v in w.c.services.values())
    # The Service nobody touched never had an episode.
    assert all(ch.episode.service == CHECKOUT for ch in w.changes)
