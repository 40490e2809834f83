"""A bug in a handler of the agent's router (an event handler, the OTLP latency sink) or a
step of the correlation tick is logged with its traceback and counted in
tailwatch_dropped_total{reason="internal_error"}; the other handlers still hear the event,
and the agent keeps going."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from exporter.core.episodes import ChangeKind, Episode, EpisodeChange
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.services import ServiceRef
from exporter.metrics import ERROR_LOG_INTERVAL, AgentMetrics
from exporter.otlp import LatencyDelta
from exporter.runtime import Router
from exporter.simulator import objects as o
from exporter.simulator.cluster import Cluster
from tests.agent.conftest import idle_agent, running_agent
from tests.conftest import wait_for

# Every test here makes a listener fail on purpose and asserts on the logged traceback.
pytestmark = pytest.mark.expect_logged_errors

NODE = "node-a"


class Bug(Exception):
    pass


def failing(*args: object) -> None:
    raise Bug(f"cannot handle {args[0]!r}" if args else "cannot tick")


def error_records(caplog: pytest.LogCaptureFixture, what: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.ERROR and what in r.getMessage()]


def internal_errors(text: str) -> float:
    prefix = 'tailwatch_dropped_total{reason="internal_error"} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


async def test_a_failing_event_listener_is_counted_and_the_others_still_hear(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_agent(kubeconfig, tmp_path) as agent:
        heard: list[LifecycleEvent] = []
        calls: list[LifecycleEvent] = []

        def bug(event: LifecycleEvent) -> None:
            calls.append(event)
            failing(event)

        # Before the correlator, and a listener after it: both must still hear every event.
        agent.router.subscribe(LifecycleEvent, bug, first=True)
        agent.router.subscribe(LifecycleEvent, heard.append)
        cluster.start(o.deployment_pod("api", node=NODE, state="scheduled"))
        await wait_for(lambda: [e.kind for e in heard][-1:] == [PodEventKind.READY], "ready")
        assert agent.correlator.state_of("default", "api") == "steady"  # it ran, unharmed
        # The watch goes on: a later pod is tracked and heard too.
        cluster.start(o.deployment_pod("api", node=NODE, seed=2, state="scheduled"))
        await wait_for(lambda: len(agent.tracker.pods()) == 2, "the second pod")
        await wait_for(lambda: len(heard) == 4, "its events")
        assert [e.pod for e in calls] == [e.pod for e in heard]
        assert agent.readiness()[0]
        assert "handler_error" not in agent.pods_health.dropped

        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{agent.settings.listen}/metrics") as resp,
        ):
            assert internal_errors(await resp.text()) == len(calls) == 4

    # Logged with its traceback, once: the same bug again within ERROR_LOG_INTERVAL is
    # counted, not logged again.
    [record] = error_records(caplog, "event handler")
    assert "bug" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is Bug


def test_the_router_counts_each_failure_and_logs_it_at_most_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    metrics = AgentMetrics(clock=lambda: now[0])
    router = Router(metrics.internal_error)
    heard: list[str] = []
    router.subscribe(str, failing)
    router.subscribe(str, heard.append)
    for event in ("a", "b"):
        router.publish(event)
    assert heard == ["a", "b"]
    assert metrics.dropped == {"internal_error": 2}
    assert router.failures == {"failing": 2}
    assert len(error_records(caplog, "event handler failing failed")) == 1

    now[0] += ERROR_LOG_INTERVAL
    router.publish("c")
    first, second = error_records(caplog, "event handler failing failed")
    assert not hasattr(first, "suppressed") and second.suppressed == 1  # type: ignore[attr-defined]
    assert second.exc_info is not None and "cannot handle 'c'" in str(second.exc_info[1])
    assert metrics.dropped == {"internal_error": 3}


def test_a_failing_otlp_sink_is_counted_and_the_receiver_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = idle_agent(tmp_path)
    monkeypatch.setattr(agent.client_latency, "record", failing)
    web = ServiceRef("shop", "web")
    delta = LatencyDelta(web, "http.client.request.duration", ((0.01, 0.025, 1),), 0.02, 1)
    for _ in range(2):  # the receiver's sink, as it hands each delta over
        agent.otlp.sink(delta)
    assert agent.metrics.dropped == {"internal_error": 2}
    assert 'tailwatch_dropped_total{reason="internal_error"} 2.0' in agent.exposition.render()
    [record] = error_records(caplog, "recording the client latency failed")
    assert record.exc_info is not None and record.exc_info[0] is Bug


async def test_a_failing_correlation_tick_does_not_stop_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = idle_agent(tmp_path, episode_settle=1.0)  # a tick every 0.1 s
    monkeypatch.setattr(agent.correlator, "tick", failing)
    stop = asyncio.Event()
    loop = asyncio.create_task(agent._correlate(stop))
    await wait_for(lambda: agent.metrics.dropped.get("internal_error", 0) >= 3, "three ticks")
    assert not loop.done()
    stop.set()
    await loop
    assert len(error_records(caplog, "the correlation tick failed")) == 1


def opened(service: ServiceRef) -> EpisodeChange:
    episode = Episode(id=service.name, service=service, opened_at=1.0, latency={})
    return EpisodeChange(ChangeKind.OPENED, episode)


async def test_a_change_that_fails_does_not_drop_the_others_of_its_tick(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    logged_errors: Callable[[], list[logging.LogRecord]],
) -> None:
    """Two episodes open in one tick; recording the first fails (a bug): the second is still
    recorded and logged, both are heard by the other handlers (the Event emitter, the demo),
    and only the first is counted as an internal error."""
    agent = idle_agent(tmp_path, episode_settle=1.0)  # a tick every 0.1 s
    changes = [opened(ServiceRef("shop", "web")), opened(ServiceRef("shop", "cart"))]
    ticks = [changes]
    monkeypatch.setattr(agent.correlator, "tick", lambda now: ticks.pop() if ticks else [])
    record = agent.episode_metrics.record
    recorded: list[EpisodeChange] = []

    def record_but_the_first(change: EpisodeChange) -> None:
        if change is changes[0]:
            failing(change)
        record(change)
        recorded.append(change)

    monkeypatch.setattr(agent.episode_metrics, "record", record_but_the_first)
    heard: list[EpisodeChange] = []
    agent.router.subscribe(EpisodeChange, heard.append)
    stop = asyncio.Event()
    loop = asyncio.create_task(agent._correlate(stop))
    await wait_for(lambda: not ticks, "the tick with both changes")
    stop.set()
    await loop
    assert recorded == [changes[1]]
    assert heard == changes
    assert agent.metrics.dropped == {"internal_error": 1}
    [error] = logged_errors()
    assert "Agent._on_episode_change" in error.getMessage()
