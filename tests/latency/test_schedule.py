"""The open-loop schedule on a fake clock: a fixed grid per target, every intended start
handed out once even when the caller is late (coordinated-omission correctness), missed
runs past the deadline, phases spread over targets and nodes, and the ledger's series."""

from __future__ import annotations

import pytest

from exporter.core.catalog import TargetSpec
from exporter.core.histogram import layout_for
from exporter.core.probing import (
    DueProbe,
    FailureReason,
    ProbeLedger,
    ProbeSchedule,
    ProbeTarget,
    phase_fraction,
)
from exporter.core.services import ServiceRef

MS = 1_000_000
S = 1_000_000_000


def drain(schedule: ProbeSchedule[str], until: int, step: int) -> list[DueProbe[str]]:
    """Call `due` every `step` ns up to `until`, as a punctual prober would."""
    out: list[DueProbe[str]] = []
    now = 0
    while now <= until:
        due, missed = schedule.due(now)
        assert missed == []
        out += due
        now += step
    return out


def test_intended_starts_are_a_fixed_grid_handed_out_once() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule()
    schedule.add("a", interval_ns=100 * MS, timeout_ns=5 * S, phase_ns=30 * MS, now_ns=0)
    due = drain(schedule, until=1 * S, step=7 * MS)
    assert [d.intended_ns for d in due] == [30 * MS + k * 100 * MS for k in range(10)]
    assert all(d.deadline_ns == d.intended_ns + 5 * S for d in due)
    assert schedule.next_due_ns() == 1030 * MS


def test_a_late_caller_still_gets_every_intended_start_of_the_stall() -> None:
    """The prober stalls for 1 s at a 10 ms interval: 100 probes are due at once, each
    measured from its own intended start, so their latencies are ~1 s, 0.99 s, ... 0.01 s."""
    schedule: ProbeSchedule[str] = ProbeSchedule()
    schedule.add("a", interval_ns=10 * MS, timeout_ns=5 * S, phase_ns=0, now_ns=0)
    first, _ = schedule.due(0)
    assert [d.intended_ns for d in first] == [0]
    due, missed = schedule.due(1 * S)  # woke up 1 s late
    assert missed == []
    assert [d.intended_ns for d in due] == [k * 10 * MS for k in range(1, 101)]
    lateness = sorted((1 * S - d.intended_ns) / S for d in due)
    assert lateness[-1] == pytest.approx(0.99) and lateness[0] == 0.0


def test_starts_past_their_deadline_are_a_missed_run() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule()
    schedule.add("a", interval_ns=100 * MS, timeout_ns=250 * MS, phase_ns=0, now_ns=0)
    schedule.due(0)
    due, missed = schedule.due(1 * S)  # starts 100..700 ms are past intended + 250 ms
    assert [d.intended_ns for d in due] == [800 * MS, 900 * MS, 1000 * MS]
    [run] = missed
    assert (run.first_intended_ns, run.count, run.last_intended_ns) == (100 * MS, 7, 700 * MS)
    lower, upper = run.lags(1 * S)
    step = (upper - lower) / run.count
    placed = [lower + (j + 0.5) * step for j in range(run.count)]
    assert placed == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])  # each start's lag


def test_deadline_is_exclusive_and_lookahead_wakes_early() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule()
    schedule.add("a", interval_ns=100 * MS, timeout_ns=100 * MS, phase_ns=50 * MS, now_ns=0)
    assert schedule.due(49 * MS) == ([], [])
    due, _ = schedule.due(49 * MS, lookahead_ns=1 * MS)  # 1 ms early: start it now
    assert [d.intended_ns for d in due] == [50 * MS]
    due, missed = schedule.due(250 * MS)  # 150 ms: deadline 250 ms has come, missed
    assert [d.intended_ns for d in due] == [250 * MS]
    assert [(m.first_intended_ns, m.count) for m in missed] == [(150 * MS, 1)]


def test_launch_window_takes_the_starts_due_soon_in_one_wake_up() -> None:
    """With a 50 ms window, the wake-up for a start at 100 ms also hands out the starts up
    to 150 ms (started early, measured from their actual start); a key with a 100 ms interval
    is capped at 25 ms so its own probes stay apart."""
    schedule: ProbeSchedule[str] = ProbeSchedule(launch_window_ns=50 * MS)
    for key, phase in (("a", 100), ("b", 130), ("c", 149), ("d", 151)):
        schedule.add(key, interval_ns=S, timeout_ns=S, phase_ns=phase * MS, now_ns=0)
    schedule.add("fast", interval_ns=100 * MS, timeout_ns=S, phase_ns=30 * MS, now_ns=0)
    assert schedule.next_due_ns() == 30 * MS
    due, _ = schedule.due(30 * MS)
    assert [(d.key, d.intended_ns) for d in due] == [("fast", 30 * MS)]
    assert schedule.next_due_ns() == 100 * MS
    due, _ = schedule.due(100 * MS)
    assert [(d.key, d.intended_ns) for d in due] == [("a", 100 * MS), ("b", 130 * MS),
                                                      ("c", 149 * MS)]  # fmt: skip
    assert schedule.next_due_ns() == 130 * MS  # "fast": beyond its own 25 ms window
    due, _ = schedule.due(130 * MS)
    assert [(d.key, d.intended_ns) for d in due] == [("fast", 130 * MS), ("d", 151 * MS)]


def test_added_target_starts_on_its_grid_and_removed_one_stops() -> None:
    schedule: ProbeSchedule[str] = ProbeSchedule()
    schedule.add("a", interval_ns=S, timeout_ns=S, phase_ns=200 * MS, now_ns=5300 * MS)
    assert schedule.next_due_ns() == 6200 * MS  # the first grid point at or after now
    schedule.add("a", interval_ns=S, timeout_ns=S, phase_ns=0, now_ns=5300 * MS)  # kept as is
    assert schedule.next_due_ns() == 6200 * MS
    schedule.add("b", interval_ns=S, timeout_ns=S, phase_ns=2500 * MS, now_ns=5500 * MS)
    assert schedule.next_due_ns() == 5500 * MS  # phase taken modulo the interval
    schedule.remove("b")
    schedule.remove("a")
    assert schedule.next_due_ns() is None
    assert schedule.due(100 * S) == ([], [])
    assert len(schedule) == 0


def test_many_targets_churning_keep_the_heap_small() -> None:
    schedule: ProbeSchedule[int] = ProbeSchedule()
    for n in range(1000):
        schedule.add(n, interval_ns=S, timeout_ns=S, phase_ns=n * MS, now_ns=0)
        if n >= 10:
            schedule.remove(n - 10)
    assert len(schedule) == 10
    assert len(schedule._heap) <= 2 * 10 + 64 + 1


def test_phases_spread_45_targets_and_differ_between_nodes() -> None:
    keys = [f"ns/svc-{i // 3}/endpoint/pod-{i}" for i in range(45)]
    phases = sorted(phase_fraction("node-a", k) for k in keys)
    per_ms = [int(p * 1000) for p in phases]
    assert max(per_ms.count(ms) for ms in per_ms) <= 2  # never a burst in one millisecond
    assert phases[-1] - phases[0] > 0.8  # spread over the interval
    other = [phase_fraction("node-b", k) for k in keys]
    assert sum(abs(a - b) < 0.001 for a, b in zip(phases, sorted(other), strict=True)) < 10


# -- the ledger ----------------------------------------------------------------------------

WEB = ProbeTarget("shop", "web", "service", "", "127.96.0.7", 80, "http", "/healthz", slo=0.05)
POD1 = ProbeTarget("shop", "web", "endpoint", "web-1", "127.0.0.11", 8080, "http", slo=0.05)
POD2 = ProbeTarget("shop", "web", "endpoint", "web-2", "127.0.0.12", 8080, "http", slo=0.05)


def test_target_from_a_catalog_spec() -> None:
    spec = TargetSpec(ServiceRef("shop", "web"), "endpoint", "web-1", "127.0.0.11", 8080,
                      "http", "/", 1.0, 0.05)  # fmt: skip
    target = ProbeTarget.from_spec(spec, timeout=2.0)
    assert target.series == ("shop", "web", "endpoint", "web-1")
    assert (target.timeout, target.slo, target.host_port) == (2.0, 0.05, "127.0.0.11:8080")
    with pytest.raises(ValueError, match="protocol"):
        ProbeTarget("a", "b", "service", "", "::1", 1, "udp")
    assert ProbeTarget("a", "b", "service", "", "::1", 80).host_port == "[::1]:80"


def test_ledger_series_states_failures_and_removal() -> None:
    states = {"web": "steady"}
    ledger = ProbeLedger(state_of=lambda ns, svc: states[svc])
    ledger.set_targets([WEB, POD1, POD2])
    ledger.record(WEB, 0, 0.010, None, at=1.0)
    states["web"] = "disrupted"
    ledger.record(POD1, 0, 5.2, FailureReason.TIMEOUT, at=2.0, detail="no answer")
    ledger.record(POD2, 0, 0.002, FailureReason.REFUSED, at=2.0)
    assert set(ledger.durations) == {
        ("shop", "web", "service", "", "steady"),
        ("shop", "web", "endpoint", "web-1", "disrupted"),
        ("shop", "web", "endpoint", "web-2", "disrupted"),
    }
    assert ledger.durations[("shop", "web", "service", "", "steady")].bounds == layout_for(0.05)
    # a failure's time is in the tail of its series
    assert ledger.durations[("shop", "web", "endpoint", "web-1", "disrupted")].count == 1
    assert ledger.failures == {
        ("shop", "web", "endpoint", "timeout"): 1,
        ("shop", "web", "endpoint", "refused"): 1,
    }
    ledger.set_targets([WEB, POD2])  # web-1 left: its series go, the shared counter stays
    assert ("shop", "web", "endpoint", "web-1", "disrupted") not in ledger.durations
    assert ("shop", "web", "endpoint", "timeout") in ledger.failures
    assert ledger.record(POD1, 0, 1.0, None, at=3.0) is None  # a late result of a gone target
    ledger.set_targets([WEB])  # no endpoint left: its failure counters go too
    assert not any(k[2] == "endpoint" for k in ledger.failures)
    [status] = ledger.status_json()
    assert status["probes"] == 1 and status["last"]["ok"] is True
    assert status["latency_seconds"]["p50"] == pytest.approx(0.010, rel=0.01)


def test_ledger_series_budget_counts_what_it_drops() -> None:
    ledger = ProbeLedger(max_series=1)
    ledger.set_targets([POD1, POD2])
    ledger.record(POD1, 0, 0.01, None, at=0.0)
    ledger.record(POD2, 0, 0.01, None, at=0.0)
    assert len(ledger.durations) == 1
    assert ledger.dropped == {"probe_series_limit": 1}
    assert ledger.statuses[POD2].probes == 1  # counted all the same
