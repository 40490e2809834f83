"""Client deltas are held and recorded merged, a tick's worth at a time: what a user sees of
them is what recording each on arrival showed (docs/otlp.md, "Cost")."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.core.services import ServiceRef
from exporter.otlp import LatencyDelta
from exporter.simulator.services import service
from tests.agent.conftest import idle_agent

WEB = ServiceRef("shop", "web")
METRIC = "http.client.request.duration"


def opted_in_agent(tmp_path: Path) -> Agent:
    agent = idle_agent(tmp_path)
    agent.catalog.apply_service("ADDED", service("web", namespace="shop"), 0.0)
    agent._services_changed(agent.catalog.take_changed())
    assert agent.catalog.opted_in(WEB)
    return agent


def counts_by_state(agent: Agent) -> dict[str, float]:
    return {
        s.labels["state"]: s.value
        for family in text_string_to_metric_families(agent.exposition.render())
        for s in family.samples
        if s.name == "tailwatch_client_request_duration_seconds_count"
    }


def delta(n: int) -> LatencyDelta:
    return LatencyDelta(WEB, METRIC, ((0.01, 0.025, n),), 0.02 * n, n)


def test_a_scrape_shows_the_deltas_that_came_before_it(tmp_path: Path) -> None:
    agent = opted_in_agent(tmp_path)
    for n in (1, 2, 3):  # three requests between two ticks
        agent.otlp.sink(delta(n))
    assert counts_by_state(agent) == {"steady": 6}
    agent.otlp.sink(delta(4))
    assert counts_by_state(agent) == {"steady": 10}


def test_held_deltas_are_recorded_under_the_state_they_came_in(tmp_path: Path) -> None:
    agent = opted_in_agent(tmp_path)
    state = {"now": "steady"}
    agent.client_latency.state_of = lambda namespace, name: state["now"]

    def opens_an_episode(event: object) -> list[object]:
        state["now"] = "disrupted"
        return []

    agent.correlator.on_pod_event = opens_an_episode  # type: ignore[method-assign,assignment]
    agent.otlp.sink(delta(2))  # came while steady, held
    agent._correlate_pod_event(object())  # type: ignore[arg-type]
    agent.otlp.sink(delta(5))  # came while disrupted
    assert counts_by_state(agent) == {"steady": 2, "disrupted": 5}


def test_held_deltas_reach_the_correlator_by_its_tick(tmp_path: Path) -> None:
    agent = opted_in_agent(tmp_path)
    agent.otlp.sink(delta(3))
    agent._record_client_deltas()  # what the tick does first
    pending = agent.correlator.services[WEB].latency.pending
    assert sum(pending[next(iter(pending))].values()) == 3
