"""Merging the agents' episodes into cluster-level records (exporter/core/merge.py): the
agents' documents are built from real `Episode` values, as `/api/v1/episodes` serves them."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.core.episodes import (
    Cause,
    Episode,
    Impact,
    LatencyImpact,
    Source,
    Status,
)
from exporter.core.histogram import FineHistogram
from exporter.core.merge import (
    Filters,
    cause_rank,
    merge,
    read_agent,
)
from exporter.core.quantiles import tail_of
from exporter.core.services import ServiceRef

T0 = 1_700_000_000.0  # the episodes' clock: wall seconds
WEB = ServiceRef("shop", "web")


def latency(ratio: float, baseline: int = 400, during: int = 100) -> dict[Source, LatencyImpact]:
    """A headline probe latency whose p99 went from 10 ms to `ratio` times that."""
    before, now = FineHistogram(), FineHistogram()
    before.record(0.010, baseline)
    now.record(0.010 * ratio, during)
    return {Source.SERVICE_PROBE: LatencyImpact(Source.SERVICE_PROBE, tail_of(before), during=now)}


def episode(
    opened: float,
    closed: float | None,
    cause: Cause = Cause.READINESS,
    *,
    service: ServiceRef = WEB,
    status: Status | None = None,
    impact: Impact | None = Impact.DEGRADED,
    recovered: float | None = None,
    ratio: float | None = 2.0,
    number: int = 1,
) -> dict[str, Any]:
    ep = Episode(
        id=f"{service}/{number}",
        service=service,
        opened_at=T0 + opened,
        latency=latency(ratio) if ratio is not None else {},
    )
    ep.cause = cause
    ep.causes = {cause}
    ep.closed_at = None if closed is None else T0 + closed
    ep.recovered_at = None if recovered is None else T0 + recovered
    ep.status = status or (
        Status.OPEN
        if closed is None
        else Status.RECOVERED
        if recovered is not None
        else Status.RECOVERING
    )
    ep.impact = None if closed is None else impact
    return ep.as_json()


def agent(node: str, *episodes: dict[str, Any], settle: float = 30.0) -> dict[str, Any]:
    """An agent's /api/v1/episodes document (Correlator.as_json's shape)."""
    return {
        "node": node,
        "generated_at": "2023-11-14T22:13:20.000Z",
        "settings": {"settle_seconds": settle},
        "open": [e for e in episodes if e["status"] == "open"],
        "recent": [e for e in episodes if e["status"] != "open"],
        # Sections other parts of the agent add beside the episodes are ignored.
        "rollouts": [{"anything": True}],
    }


def merged(*docs: dict[str, Any], now: float = 3600.0, filters: Filters | None = None) -> list:
    return merge([read_agent(d) for d in docs], T0 + now, filters)


def test_overlapping_episodes_of_three_nodes_are_one_record() -> None:
    # A container restart on node-a: its agent says restart, the others see the endpoint
    # go not ready, each at its own moment.
    (record,) = merged(
        agent("node-a", episode(10, 70, Cause.RESTART, recovered=80, ratio=3.0,
                                impact=Impact.SEVERE)),
        agent("node-b", episode(11, 75, Cause.READINESS, recovered=95, ratio=2.0)),
        agent("node-c", episode(12, 60, Cause.READINESS, recovered=70, ratio=1.5,
                                impact=Impact.NONE)),
    )  # fmt: skip
    assert (record.namespace, record.service) == ("shop", "web")
    assert record.opened_at == T0 + 10  # the earliest open
    assert record.closed_at == T0 + 75  # the latest close
    assert record.cause == "restart"  # the node hosting the pod saw the dominant cause
    assert record.impact == "severe"  # the worst
    assert record.p99_ratio == pytest.approx(3.0, rel=0.05)
    assert record.status == "recovered"
    assert record.recovered_at == T0 + 95  # the latest recovery
    assert record.recovery_seconds == pytest.approx(20.0)
    assert record.nodes == ["node-a", "node-b", "node-c"]
    views = {v.node: v for v in record.views}
    assert views["node-b"].cause == "readiness"
    assert views["node-b"].recovery_seconds == pytest.approx(20.0)
    assert views["node-a"].baseline_samples == 400
    assert views["node-a"].during_samples == 100

    doc = record.as_json()
    assert doc["opened_at"] == "2023-11-14T22:13:30.000Z"
    assert doc["duration_seconds"] == 65.0
    assert [n["node"] for n in doc["nodes"]] == ["node-a", "node-b", "node-c"]
    assert doc["nodes"][0]["samples"] == {"baseline": 400, "during": 100}


def test_disjoint_episodes_stay_apart_and_near_ones_join() -> None:
    records = merged(
        agent("node-a", episode(0, 20, number=1), episode(500, 520, number=2)),
        # Opened 25 s after node-a's closed: within the settle time, the same disruption.
        agent("node-b", episode(45, 60)),
    )
    assert [(r.opened_at - T0, r.closed_at - T0) for r in records] == [(0, 60), (500, 520)]
    assert [r.nodes for r in records] == [["node-a", "node-b"], ["node-a"]]


def test_the_largest_settle_time_of_the_agents_decides() -> None:
    short = merged(
        agent("node-a", episode(0, 20), settle=5.0), agent("node-b", episode(45, 60), settle=5.0)
    )
    assert len(short) == 2


def test_other_services_are_other_records() -> None:
    api = ServiceRef("shop", "api")
    records = merged(
        agent("node-a", episode(0, 20), episode(5, 25, service=api)),
        agent("node-b", episode(1, 21)),
    )
    assert sorted((r.service, len(r.nodes)) for r in records) == [("api", 1), ("web", 2)]


def test_a_record_is_open_while_any_agent_is_and_is_not_recovered_if_one_says_so() -> None:
    (still_open,) = merged(
        agent("node-a", episode(0, 30, recovered=40)),
        agent("node-b", episode(5, None)),
        now=100.0,
    )
    assert still_open.status == "open"
    assert still_open.closed_at is None
    assert still_open.recovered_at is None
    assert still_open.as_json()["duration_seconds"] is None
    # An open episode reaches until now: one that opens later, long after the other's
    # close, is still the same disruption.
    (joined,) = merged(
        agent("node-a", episode(0, None)), agent("node-b", episode(90, 95)), now=100.0
    )
    assert joined.nodes == ["node-a", "node-b"]

    (bad,) = merged(
        agent("node-a", episode(0, 30, recovered=40)),
        agent("node-b", episode(5, 30, status=Status.NOT_RECOVERED)),
    )
    assert bad.status == "not_recovered"
    assert bad.recovered_at is None


def test_recovered_when_the_others_could_not_judge() -> None:
    (record,) = merged(
        agent("node-a", episode(0, 30, recovered=40)),
        agent("node-b", episode(5, 30, status=Status.NO_BASELINE, impact=Impact.UNKNOWN,
                                ratio=None)),
    )  # fmt: skip
    assert record.status == "recovered"
    assert record.impact == "degraded"  # a measured impact beats unknown
    assert record.p99_ratio == pytest.approx(2.0, rel=0.05)


def test_cause_ranking_follows_the_core() -> None:
    order = ["rollout", "reschedule", "eviction", "node", "restart", "readiness", "scale",
             "resource_pressure", "unexplained", "from_a_newer_agent"]  # fmt: skip
    assert sorted(reversed(order), key=cause_rank) == order
    # Lifecycle causes dominate a spike's.
    (record,) = merged(
        agent("node-a", episode(0, 30, Cause.RESOURCE_PRESSURE)),
        agent("node-b", episode(2, 30, Cause.SCALE)),
    )
    assert record.cause == "scale"


def test_filters_by_namespace_service_and_since() -> None:
    other = ServiceRef("pay", "web")
    docs = (
        agent("node-a", episode(0, 20), episode(10, 30, service=other),
              episode(3000, 3010, number=2)),
    )  # fmt: skip
    assert len(merged(*docs)) == 3
    assert {r.namespace for r in merged(*docs, filters=Filters(namespace="pay"))} == {"pay"}
    assert len(merged(*docs, filters=Filters(service="web"))) == 3
    assert len(merged(*docs, filters=Filters(namespace="shop", service="web"))) == 2
    # Since 10 minutes ago (now is T0 + 3600): only the episode that ended after that.
    (recent,) = merged(*docs, filters=Filters(since=T0 + 3000.0))
    assert recent.opened_at == T0 + 3000
    # An open record is always recent.
    assert merged(agent("node-a", episode(0, None)), filters=Filters(since=T0 + 3500.0))


def test_malformed_episodes_are_counted_and_skipped() -> None:
    good = episode(0, 20)
    doc = agent("node-a", good)
    doc["recent"] += [
        {"id": "x"},  # no times
        {**good, "opened_at": "yesterday"},
        {**good, "namespace": 3},
        "not an object",
    ]
    read = read_agent(doc)
    assert read.malformed == 4
    assert "opened_at" in read.problem
    assert len(read.views) == 1
    assert read_agent({"node": "n", "open": "nope"}).malformed == 1
    # Unknown keys and missing optional parts are fine.
    bare = {k: good[k] for k in ("id", "namespace", "service", "cause", "status", "opened_at")}
    (record,) = merge([read_agent({"node": "n", "recent": [{**bare, "new": 1}]})], T0 + 100)
    assert record.p99_ratio is None and record.impact is None


def test_no_agents_no_records() -> None:
    assert merge([], T0) == []
