"""Episodes that outlive the agent (docs/correlation.md): an agent's episodes written as
records (what its Events carry), read back by a restarted agent, and going on from there by
the usual rules: an open one closes against its restored baseline, a recovering one recovers
or not, finished ones return to the recent list, and new ids continue after the old ones."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.core.endpoints import EndpointEventKind as E
from exporter.core.episodes import Cause, ChangeKind, Episode, Impact, ServiceState, Status
from exporter.core.restore import (
    MAX_COUNTS,
    EpisodeRecord,
    episode_record,
    parse_record,
    plan_restore,
)
from exporter.core.rules import CorrelationSettings
from exporter.core.services import ServiceRef

from .harness import CHECKOUT, SEARCH, World

POD = "checkout-5d9f8c7b6-aaaaa"
SETTINGS = CorrelationSettings()
FACTOR = SETTINGS.recovery_threshold_factor


def steady_world(now: float | None = None) -> World:
    w = World(SETTINGS) if now is None else World(SETTINGS, now=now)
    w.seed(POD, "checkout-5d9f8c7b6-bbbbb")
    w.seed("search-0", service=SEARCH)
    return w


def record_of(episode: Episode, observed_at: float) -> EpisodeRecord:
    """What a restarted agent reads back: the record through JSON, as the annotation holds
    it, for the Service the Event regards."""
    text = json.dumps(episode_record(episode, FACTOR))
    return parse_record(json.loads(text), episode.service, observed_at)


def restarted(w: World, records: list[EpisodeRecord], downtime: float = 5.0) -> World:
    """A new agent on the same node `downtime` seconds later: it restores first, then sees
    the endpoints as they are now (its first lists)."""
    fresh = steady_world(now=w.now + downtime)
    fresh.endpoints = {s: dict(eps) for s, eps in w.endpoints.items()}
    live = fresh.c.restore(records, fresh.now)
    assert all(e.restored for e in live)
    for service in fresh.services:
        fresh.c.endpoints_changed(service, fresh.endpoints[service])
    return fresh


def readiness_flap(w: World, slow: float = 0.200) -> Episode:
    """The pod goes not ready while the Service answers slowly: an open episode."""
    w.run(300)  # a full baseline of 10 ms samples
    w.change(POD, [E.NOT_READY], ready=False)
    w.run(10, slow)
    (episode,) = w.c.open_episodes()
    return episode


def test_an_open_episode_comes_back_open_and_closes_against_its_restored_baseline() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    records = [record_of(episode, episode.opened_at)]

    fresh = restarted(w, records)
    (back,) = fresh.c.open_episodes()
    assert back.id == episode.id and back.restored
    assert back.opened_at == episode.opened_at and back.cause is episode.cause
    assert fresh.c.state_of(CHECKOUT.namespace, CHECKOUT.name) == ServiceState.DISRUPTED.value
    headline = back.headline()
    assert headline is not None and headline.baseline is not None
    original = episode.headline()
    assert original is not None and original.baseline is not None
    assert headline.baseline.p99.value == pytest.approx(original.baseline.p99.value, rel=1e-6)
    assert headline.baseline.p99.supported
    assert back.as_json()["restored"] is True

    fresh.run(5, 0.200)  # still slow, and seen so by the new agent
    assert fresh.changes == []  # nothing is announced again: its Opened Event is written
    fresh.change(POD, [E.READY], ready=True)
    fresh.run(SETTINGS.settle + 2, 0.010)
    (closed,) = fresh.closed()
    assert closed.id == episode.id
    assert closed.impact is Impact.SEVERE  # 200 ms against the restored 10 ms baseline
    assert closed.closed_at is not None and closed.closed_at > fresh.now - SETTINGS.settle - 3
    assert closed.status is Status.RECOVERING


def test_an_open_episode_does_not_close_while_its_endpoint_is_still_not_ready() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    fresh = restarted(w, [record_of(episode, episode.opened_at)])
    fresh.run(SETTINGS.settle * 2, 0.200)
    assert [e.id for e in fresh.c.open_episodes()] == [episode.id]
    assert fresh.closed() == []


def test_a_recovering_episode_recovers_against_its_restored_threshold_after_the_restart() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.200)  # closed, latency still high
    assert episode.status is Status.RECOVERING
    records = [
        record_of(episode, episode.opened_at),
        record_of(episode, episode.closed_at or 0.0),  # its Opened and Closed Events
    ]

    fresh = restarted(w, records, downtime=20.0)
    assert fresh.c.open_episodes() == []
    (back,) = fresh.c.closed_episodes()
    assert back.status is Status.RECOVERING and back.restored
    assert fresh.c.state_of(CHECKOUT.namespace, CHECKOUT.name) == ServiceState.RECOVERING.value
    assert back.impact is episode.impact and back.p99_ratio() == pytest.approx(episode.p99_ratio())
    restart_at = fresh.now
    fresh.run(10, 0.200)  # still over the threshold (10 ms x 1.2): not recovered yet
    assert fresh.changes == []
    fresh.run(SETTINGS.recovery_window * 3, 0.010)
    assert [(c.kind, c.episode.id) for c in fresh.changes] == [(ChangeKind.RECOVERED, episode.id)]
    assert back.recovered_at is not None and back.recovered_at >= restart_at + 10
    assert back.recovery_seconds is not None and back.recovery_seconds > 30


def test_a_recovering_episode_not_back_within_recovery_max_of_its_close_is_not_recovered() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.200)
    closed_at = episode.closed_at or 0.0

    fresh = restarted(w, [record_of(episode, closed_at)], downtime=60.0)
    fresh.run(closed_at + SETTINGS.recovery_max - fresh.now - 1, 0.200)
    assert fresh.changes == []
    fresh.run(2, 0.200)  # judged from its close, not from the restart
    assert [(c.kind, c.episode.id) for c in fresh.changes] == [
        (ChangeKind.NOT_RECOVERED, episode.id)
    ]


def test_a_recovering_episode_with_too_little_recovery_max_left_ends_interrupted() -> None:
    """Restarted with less than one recovery window of --recovery-max left: nothing can
    confirm a recovery in that time, and calling it "not recovered" would judge what no
    agent measured. It returns to the recent list, interrupted by the restart, and nothing
    is announced (so no Event, no not-recovered count)."""
    w = steady_world()
    episode = readiness_flap(w)
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.200)
    closed_at = episode.closed_at or 0.0
    downtime = closed_at + SETTINGS.recovery_max - SETTINGS.recovery_window / 2 - w.now
    fresh = restarted(w, [record_of(episode, closed_at)], downtime=downtime)
    assert fresh.c.state_of(CHECKOUT.namespace, CHECKOUT.name) == ServiceState.STEADY.value
    fresh.run(SETTINGS.recovery_window * 2)
    assert fresh.changes == []
    (back,) = fresh.c.closed_episodes()
    assert (back.id, back.status, back.interrupted_by) == (
        episode.id,
        Status.INTERRUPTED,
        "agent restart",
    )


def test_finished_episodes_return_to_the_recent_list_with_their_words() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.010)
    w.run(SETTINGS.recovery_window * 3, 0.010)
    assert episode.status is Status.RECOVERED
    before = episode.as_json()

    fresh = restarted(w, [record_of(episode, episode.detected_at or 0.0)])
    assert fresh.c.open_episodes() == []
    (back,) = fresh.c.closed_episodes()
    after = back.as_json()
    assert after["restored"] is True and before["restored"] is False
    for key in ("id", "cause", "status", "impact", "opened_at", "closed_at", "recovered_at",
                "recovery_seconds", "detected_at", "duration_seconds", "summary",
                "event_counts"):  # fmt: skip
        assert after[key] == before[key], key
    assert after["latency"]["ratios"]["p99"] == before["latency"]["ratios"]["p99"]
    assert after["latency"]["baseline"] == before["latency"]["baseline"]
    assert after["events"] == []  # the evidence is not kept, its counts are
    assert fresh.c.state_of(CHECKOUT.namespace, CHECKOUT.name) == ServiceState.STEADY.value


def test_new_episode_ids_continue_after_the_restored_ones() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.010)
    w.run(SETTINGS.recovery_window * 3, 0.010)
    assert episode.id == "shop/checkout/1"
    # A Service this agent does not keep now (no view), whose old episode is read back.
    other = ServiceRef("shop", "payments")
    theirs = record_of(
        Episode(id="shop/payments/7", service=other, opened_at=w.now - 100, latency={},
                closed_at=w.now - 90, status=Status.NO_BASELINE),
        w.now - 90,
    )  # fmt: skip

    fresh = restarted(w, [record_of(episode, w.now), theirs])
    fresh.run(300)
    fresh.change(POD, [E.NOT_READY], ready=False)
    fresh.run(2, 0.010)
    assert [e.id for e in fresh.c.open_episodes()] == ["shop/checkout/2"]
    fresh.c.add_service(other)  # it is kept later: its ids continue too
    fresh.c.endpoints_changed(other, {})
    assert fresh.c.services[other].seq == 7


def test_restore_keeps_the_newest_live_episode_and_ends_an_older_one_whose_end_was_lost() -> None:
    w = steady_world()
    old = readiness_flap(w)
    old_record = record_of(old, old.opened_at)  # its Closed Event was lost
    w.change(POD, [E.READY], ready=True)
    w.run(SETTINGS.settle + 1, 0.200)
    w.change(POD, [E.NOT_READY], ready=False)  # interrupts its recovery: a new episode
    w.run(3, 0.200)
    (new,) = w.c.open_episodes()
    assert new.id == "shop/checkout/2"

    fresh = restarted(w, [old_record, record_of(new, new.opened_at)])
    assert [e.id for e in fresh.c.open_episodes()] == [new.id]
    (ended,) = fresh.c.closed_episodes()
    assert ended.id == old.id and ended.status is Status.INTERRUPTED
    assert ended.interrupted_by == new.id
    assert f"another episode ({new.id}) began" in ended.summary()


def _record(seq: int, status: Status, observed_at: float, **fields: Any) -> EpisodeRecord:
    return EpisodeRecord(
        id=f"shop/checkout/{seq}",
        service=CHECKOUT,
        seq=seq,
        status=status,
        cause=fields.pop("cause", Cause.READINESS),
        opened_at=observed_at - 10,
        observed_at=observed_at,
        **fields,
    )


def test_the_plan_takes_the_most_advanced_record_of_each_episode() -> None:
    now = 10_000.0
    opened = _record(3, Status.OPEN, now - 50)
    recovered = _record(3, Status.RECOVERED, now - 20, closed_at=now - 40, recovered_at=now - 30)
    plan = plan_restore([recovered, opened], now, lookback=630)
    assert plan.live == [] and plan.finished == [recovered]
    plan = plan_restore([opened], now, lookback=630)
    assert plan.live == [opened] and plan.seq == {CHECKOUT: 3}


def test_the_plan_leaves_out_what_was_judged_before_the_lookback_but_not_an_open_episode() -> None:
    now = 10_000.0
    old_finished = _record(1, Status.RECOVERED, now - 700)
    old_recovering = _record(2, Status.RECOVERING, now - 700, closed_at=now - 705,
                             threshold=0.012)  # fmt: skip
    assert plan_restore([old_finished], now, lookback=630).finished == []
    plan = plan_restore([old_finished, old_recovering], now, lookback=630)
    assert plan.live == [] and plan.finished == [] and plan.seq == {CHECKOUT: 2}
    long_open = _record(4, Status.OPEN, now - 3000)
    assert plan_restore([old_finished, long_open], now, lookback=630).live == [long_open]


def test_a_record_is_bounded() -> None:
    w = steady_world()
    episode = readiness_flap(w)
    episode.counts = {f"endpoint/kind_{i:03d}": i for i in range(200)}
    episode.interrupted_by = "x" * 5000  # words far over any note
    record = episode_record(episode, FACTOR)
    assert len(record["counts"]) == MAX_COUNTS
    assert min(record["counts"].values()) == 200 - MAX_COUNTS  # the most frequent kept
    assert len(json.dumps(record)) < 4096 + 5000  # the summary is capped, the id is not


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"id": "shop/other/1"},
        {"id": "shop/checkout/x"},
        {"status": "sleeping"},
        {"cause": "gremlins"},
        {"opened_at": "yesterday"},
        {"baseline": {"q": [1, 2], "lo": [], "hi": [], "n": 3, "c": 0.95}},
        {"baseline": {"q": [1, 2, 3], "lo": [1, 2, 3], "hi": [1, 2, 3], "n": 0, "c": 0.95}},
        {"counts": {"endpoint/ready": "many"}},
        {"spike": [1.0]},
        {"status": "recovering", "threshold": None},
    ],
    ids=",".join,
)
def test_a_record_that_cannot_be_read_is_refused(change: dict[str, Any]) -> None:
    w = steady_world()
    episode = readiness_flap(w)
    doc = {**episode_record(episode, FACTOR), "status": "recovering", "threshold": 0.012}
    parse_record(doc, CHECKOUT, w.now)  # the valid one
    doc.update(change)
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(ValueError):
        parse_record(doc, CHECKOUT, w.now)
