"""Episodes from lifecycle events: one table row per cause, overlapping events, the close
and recovery rules of docs/correlation.md, with an explicit clock."""

from __future__ import annotations

import pytest

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import ChangeKind, Impact, ServiceState, Status
from exporter.core.events import PodEventKind as P
from exporter.core.events import Workload
from exporter.core.rules import CorrelationSettings

from .harness import CHECKOUT, SEARCH, World

OLD = "checkout-5d9f8c7b6"  # a Deployment's ReplicaSets
NEW = "checkout-7c6b5a498"


def steady_world(**settings: float) -> World:
    w = World(CorrelationSettings(**settings))
    w.seed(f"{OLD}-aaaaa", f"{OLD}-bbbbb", "db-0")
    w.seed("search-0", service=SEARCH)
    w.run(300)  # a full baseline window of 10 ms samples
    return w


def rollout(w: World) -> None:
    for old, new in ((f"{OLD}-aaaaa", f"{NEW}-ccccc"), (f"{OLD}-bbbbb", f"{NEW}-ddddd")):
        w.change(new, [E.ADDED])  # not ready yet
        w.pod_event(P.SCHEDULED, new)
        w.pod_event(P.ROLLOUT, new)
        w.run(5, 0.080)
        w.change(new, [E.READY], ready=True)
        w.change(old, [E.TERMINATING], ready=False, terminating=True)
        w.run(3, 0.080)
        w.change(old, [E.REMOVED], removed=True)


def rollout_elsewhere(w: World) -> None:
    """The same rollout on other nodes: only the cluster view (EndpointSlices) shows it."""
    for old, new in ((f"{OLD}-aaaaa", f"{NEW}-ccccc"), (f"{OLD}-bbbbb", f"{NEW}-ddddd")):
        w.change(new, [E.ADDED], node="node-2")
        w.run(5, 0.080)
        w.change(new, [E.READY], ready=True, node="node-2")
        w.change(old, [E.TERMINATING], ready=False, terminating=True)
        w.run(3, 0.080)
        w.change(old, [E.REMOVED], removed=True)


def reschedule(w: World) -> None:
    w.change("db-0", [E.TERMINATING], ready=False, terminating=True)
    w.run(2, 0.080)
    w.change("db-0", [E.REMOVED], removed=True)
    w.run(2, 0.080)
    w.change("db-0", [E.MOVED], node="node-3", previous_node="node-1")
    w.run(5, 0.080)
    w.change("db-0", [E.READY], ready=True, node="node-3")


def eviction(w: World) -> None:
    pod = f"{OLD}-aaaaa"
    w.pod_event(P.TERMINATING, pod, reason="EvictionByEvictionAPI")
    w.change(pod, [E.TERMINATING], ready=False, terminating=True)
    w.run(3, 0.080)
    w.change(pod, [E.REMOVED], removed=True)
    w.change(f"{OLD}-zzzzz", [E.ADDED], node="node-2")
    w.run(4, 0.080)
    w.change(f"{OLD}-zzzzz", [E.READY], ready=True, node="node-2")


def restart(w: World) -> None:
    pod = f"{OLD}-aaaaa"
    w.pod_event(P.CONTAINER_RESTART, pod, reason="OOMKilled", container="app")
    w.change(pod, [E.NOT_READY], ready=False)
    w.run(6, 0.080)
    w.change(pod, [E.READY], ready=True)


def oom_kill_without_restart(w: World) -> None:
    w.pod_event(P.OOM_KILL, f"{OLD}-aaaaa", container="app")
    w.run(6, 0.080)


def readiness(w: World) -> None:
    w.change(f"{OLD}-bbbbb", [E.NOT_READY], ready=False)
    w.run(6, 0.080)
    w.change(f"{OLD}-bbbbb", [E.READY], ready=True)


def scale(w: World) -> None:
    w.change(f"{OLD}-eeeee", [E.ADDED], node="node-2")
    w.run(6, 0.080)
    w.change(f"{OLD}-eeeee", [E.READY], ready=True, node="node-2")


def restart_during_rollout(w: World) -> None:
    w.change(f"{NEW}-ccccc", [E.ADDED])
    w.run(2, 0.080)
    restart(w)
    w.change(f"{NEW}-ccccc", [E.READY], ready=True)
    w.change(f"{OLD}-bbbbb", [E.TERMINATING], ready=False, terminating=True)
    w.run(2, 0.080)
    w.change(f"{OLD}-bbbbb", [E.REMOVED], removed=True)


def readiness_then_reschedule(w: World) -> None:
    readiness(w)
    reschedule(w)


@pytest.mark.parametrize(
    ("story", "service", "cause"),
    [
        (rollout, CHECKOUT, "rollout"),
        (rollout_elsewhere, CHECKOUT, "rollout"),
        (reschedule, CHECKOUT, "reschedule"),
        (eviction, CHECKOUT, "eviction"),
        (restart, CHECKOUT, "restart"),
        (oom_kill_without_restart, CHECKOUT, "restart"),
        (readiness, CHECKOUT, "readiness"),
        (scale, CHECKOUT, "scale"),
        (restart_during_rollout, CHECKOUT, "rollout"),
        (readiness_then_reschedule, CHECKOUT, "reschedule"),
    ],
)
def test_each_cause_makes_one_episode_with_that_cause(story, service, cause) -> None:
    w = steady_world()
    story(w)
    w.run(120)  # settle, close, recover
    closed = w.closed()
    assert [(e.service, e.cause.value) for e in closed] == [(service, cause)]
    episode = closed[0]
    assert episode.status is Status.RECOVERED
    assert episode.impact is Impact.SEVERE  # 80 ms against a 10 ms baseline
    assert episode.p99_ratio() == pytest.approx(8.0, rel=0.03)
    # The unaffected Service saw nothing and stayed steady.
    assert all(ch.episode.service == CHECKOUT for ch in w.changes)
    assert w.c.state_of("shop", "search") == "steady"


def test_episode_closes_after_settle_and_recovery_is_when_latency_really_returned() -> None:
    w = steady_world(settle=30, recovery_window=30)
    restart(w)  # the endpoint is ready again at T+6
    ready_at = w.now
    w.run(30, 0.080)
    (episode,) = w.closed()
    assert episode.closed_at == pytest.approx(ready_at + 30)
    assert w.c.state_of("shop", "checkout") == ServiceState.RECOVERING
    w.run(8, 0.080)  # still slow for 8 s after the close (a lagging proxy, a cold cache)
    returned = w.now
    w.run(29.5)
    assert w.c.state_of("shop", "checkout") == ServiceState.RECOVERING  # not confirmed yet
    w.run(0.5)
    assert episode.status is Status.RECOVERED
    # When latency really returned (to within one probe, 0.5 s), not when a window noticed;
    # the confirmation a whole recovery window later is reported apart.
    assert episode.recovered_at == pytest.approx(returned, abs=0.5)
    assert episode.recovery_seconds == pytest.approx(8, abs=0.5)
    assert episode.detected_at == pytest.approx(returned + 30, abs=0.5)
    assert w.c.state_of("shop", "checkout") == ServiceState.STEADY


def test_latency_back_before_the_close_is_recovered_at_the_close() -> None:
    w = steady_world(settle=30, recovery_window=30)
    restart(w)
    w.run(10, 0.080)
    w.run(60)
    (episode,) = w.closed()
    assert episode.status is Status.RECOVERED
    assert episode.recovery_seconds == 0
    assert episode.detected_at == pytest.approx(episode.closed_at + 30, abs=0.5)


def test_one_slow_probe_after_the_close_does_not_hold_recovery() -> None:
    """80 samples, one of them slow: that is not a p99 over tolerance."""
    w = steady_world(settle=30, recovery_window=30)
    restart(w)
    w.run(40, 0.080)  # slow until 10 s after the close
    returned = w.now
    w.run(10)
    w.run(0.5, 0.500)  # one slow probe among the fast ones
    w.run(30)
    (episode,) = w.closed()
    assert episode.status is Status.RECOVERED
    assert episode.recovered_at == pytest.approx(returned, abs=0.5)


def test_every_change_restarts_the_settle_clock() -> None:
    w = steady_world(settle=30)
    readiness(w)
    w.run(20)
    readiness(w)  # flaps again before the episode settled: the same episode
    w.run(20)
    assert w.closed() == []
    w.run(30)
    (episode,) = w.closed()
    assert episode.counts == {"endpoint/not_ready": 2, "endpoint/ready": 2}


def test_an_endpoint_not_ready_keeps_the_episode_open() -> None:
    w = steady_world(settle=30, recovery_max=600)
    w.change(f"{OLD}-aaaaa", [E.NOT_READY], ready=False)
    w.run(300)
    assert w.closed() == []
    assert w.c.state_of("shop", "checkout") == "disrupted"
    # ... up to recovery_max: a Service left with a broken endpoint is not disrupted forever.
    w.run(310)
    (episode,) = w.closed()
    assert episode.cause.value == "readiness"


def test_not_recovered_after_recovery_max() -> None:
    w = steady_world(recovery_max=120)
    restart(w)
    w.run(200, 0.050)  # latency stays high after the endpoints settled
    kinds = [ch.kind for ch in w.changes]
    assert kinds == [ChangeKind.OPENED, ChangeKind.CLOSED, ChangeKind.NOT_RECOVERED]
    assert w.changes[-1].episode.status is Status.NOT_RECOVERED
    assert w.changes[-1].episode.recovery_seconds is None


def test_a_new_episode_during_recovery_interrupts_the_previous_one() -> None:
    w = steady_world()
    restart(w)
    w.run(31, 0.080)  # closed at the end of settle, latency still high
    assert w.c.state_of("shop", "checkout") == "recovering"
    readiness(w)
    first, second = w.changes[0].episode, w.changes[-1].episode
    assert [ch.kind for ch in w.changes] == [
        ChangeKind.OPENED, ChangeKind.CLOSED, ChangeKind.INTERRUPTED, ChangeKind.OPENED
    ]  # fmt: skip
    assert first.status is Status.INTERRUPTED and first.interrupted_by == second.id
    # The second episode's baseline is the steady one from before the first episode.
    headline = second.headline()
    assert headline is not None and headline.baseline is not None
    assert headline.baseline.p99.value == pytest.approx(0.010, rel=0.02)


def test_impact_levels() -> None:
    for latency, impact in ((0.011, Impact.NONE), (0.02, Impact.DEGRADED), (0.05, Impact.SEVERE)):
        w = steady_world()
        w.change(f"{OLD}-aaaaa", [E.NOT_READY], ready=False)
        w.run(10, latency)
        w.change(f"{OLD}-aaaaa", [E.READY], ready=True)
        w.run(31, latency)
        (episode,) = w.closed()
        assert episode.impact is impact, latency


def test_no_baseline_is_said_not_invented() -> None:
    w = World()
    w.seed(f"{OLD}-aaaaa")
    readiness(w)  # before any steady sample
    w.run(40)
    (episode,) = w.closed()
    assert episode.impact is Impact.UNKNOWN
    assert episode.status is Status.NO_BASELINE
    assert "no baseline" in episode.summary()


def test_events_of_pods_not_backing_a_service_are_ignored() -> None:
    w = steady_world()
    w.pod_event(P.CONTAINER_RESTART, "batch-1", namespace="jobs", workload=Workload("Job", "batch"))
    w.pod_event(P.READY, f"{OLD}-aaaaa")  # not disruptive on its own
    w.run(60)
    assert w.changes == []


def test_pod_of_a_known_workload_counts_before_its_endpoint_exists() -> None:
    w = steady_world()
    w.workloads[("shop", f"{OLD}-aaaaa")] = Workload("Deployment", "checkout")
    w.c.endpoints_changed(CHECKOUT, w.endpoints[CHECKOUT])  # learn the workload
    w.pod_event(P.CRASH_LOOP, f"{NEW}-xxxxx", reason="CrashLoopBackOff", container="app")
    assert [ch.kind for ch in w.changes] == [ChangeKind.OPENED]
    assert w.changes[0].episode.cause.value == "restart"


def test_episode_json_has_every_number() -> None:
    w = steady_world()
    rollout(w)
    w.run(120)
    doc = w.c.as_json(w.now)
    assert doc["open"] == []
    (episode,) = doc["recent"]
    assert episode["id"] == "shop/checkout/1"
    assert episode["cause"] == "rollout"
    assert episode["status"] == "recovered"
    assert episode["impact"] == "severe"
    latency = episode["latency"]
    assert latency["source"] == "probe"
    assert latency["baseline"]["p99"] == pytest.approx(0.010, rel=0.02)
    assert latency["during"]["p99"] == pytest.approx(0.080, rel=0.02)
    assert latency["ratios"]["p99"] == pytest.approx(8.0, rel=0.03)
    assert episode["recovery_seconds"] >= 0
    assert episode["detected_at"] is not None and episode["spike"] is None
    # Every quantile carries its sample count and order-statistic bounds; 600 steady
    # samples bound a p99 but not a p99.9, and the JSON says so.
    baseline = latency["baseline"]
    assert baseline["samples"] >= 500 and baseline["confidence"] == 0.95
    assert baseline["supported"] == {"p50": True, "p99": True, "p999": False}
    lower, upper = baseline["bounds"]["p99"]
    assert lower <= baseline["p99"] <= upper
    assert baseline["notes"] == [
        f"p99.9 from {baseline['samples']} samples is the maximum (2995 are needed to bound it)"
    ]
    assert latency["during"]["supported"]["p99"] is False  # 60 s of probes every 0.5 s
    assert latency["ratios"]["bounds"]["p99"][1] is None
    assert episode["event_counts"]["endpoint/added"] == 2
    assert episode["event_counts"]["pod/rollout"] == 2
    assert episode["summary"].startswith("A rollout of shop/checkout raised p99 from 9.9")
    assert "(8.0x)" in episode["summary"]
    assert doc["settings"]["settle_seconds"] == 30


def test_events_just_before_the_first_disruption_join_the_episode() -> None:
    """A rollout's new pod arrives (scheduled, rollout) before any endpoint is disrupted:
    those events belong to the episode they lead to, if it opens within settle."""
    w = steady_world()
    w.workloads[("shop", f"{OLD}-aaaaa")] = Workload("Deployment", "checkout")  # on this node
    w.pod_event(P.SCHEDULED, f"{NEW}-ccccc")
    w.pod_event(P.ROLLOUT, f"{NEW}-ccccc")
    w.run(5)
    w.change(f"{OLD}-aaaaa", [E.TERMINATING], ready=False, terminating=True)
    w.run(3, 0.080)
    w.change(f"{OLD}-aaaaa", [E.REMOVED], removed=True)
    w.run(120)
    (episode,) = w.closed()
    assert episode.cause.value == "rollout"
    assert episode.counts["pod/rollout"] == 1
    assert episode.evidence[0].event == "scheduled"


def test_old_events_do_not_join_a_later_episode() -> None:
    w = steady_world()
    w.pod_event(P.ROLLOUT, f"{NEW}-ccccc")
    w.run(60)  # longer than settle
    readiness(w)
    w.run(120)
    (episode,) = w.closed()
    assert episode.cause.value == "readiness"
    assert "pod/rollout" not in episode.counts


def test_summary_of_an_episode_that_did_not_hurt() -> None:
    w = steady_world()
    w.change(f"{OLD}-bbbbb", [E.NOT_READY], ready=False)
    w.run(6, 0.008)
    w.change(f"{OLD}-bbbbb", [E.READY], ready=True)
    w.run(40, 0.008)
    (episode,) = w.closed()
    assert episode.impact.value == "none"
    assert "did not raise p99" in episode.summary()
