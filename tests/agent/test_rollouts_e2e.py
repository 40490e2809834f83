"""Rollouts end to end in the agent: a Deployment behind an opted-in Service rolls out on
other nodes than the agent's, through the simulator's API and its EndpointSlice controller;
the agent's start, finish, duration and stuck state are read over HTTP (/metrics and
/api/v1/episodes) and from its logs (docs/lifecycle.md, *Rollouts*)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.endpointslices import EndpointSliceController
from tests.agent.conftest import (
    LoopbackBackend,
    loopback_backend,
    probed_web_service,
    running_agent,
)
from tests.conftest import wait_for

CLUSTER_IP = "127.3.5.1"
REV1, REV2 = objects.revision_hash("web", 1), objects.revision_hash("web", 2)
IN_PROGRESS, STUCK = "tailwatch_rollout_in_progress", "tailwatch_rollout_stuck"
WORKLOAD = {"namespace": "default", "workload_kind": "Deployment", "workload": "web"}
#: The finish is confirmed once it has held for --episode-settle: short here.
FAST = {"episode_settle": 0.3}


@pytest.fixture
async def backend() -> AsyncIterator[LoopbackBackend]:
    """The Service's address answers, so the agent probes it and reports the Service."""
    async with loopback_backend(CLUSTER_IP) as state:
        yield state


class Shop:
    """The Service `web` and its Deployment's pods, with the EndpointSlice controller
    writing the slices after every change, as kube-controller-manager would."""

    def __init__(self, api: ApiServer, port: int) -> None:
        self.store = api.store
        self.cluster = Cluster(api.store)
        self.controller = EndpointSliceController(api.store)
        self.store.create("services", probed_web_service(CLUSTER_IP, port))

    def pod(self, revision: int, seed: int, node: str, *, ready: bool = True) -> str:
        pod = objects.deployment_pod(
            "web", revision=revision, seed=seed, node=node, state="scheduled",
            created=time.time(),
        )  # fmt: skip
        self.cluster.start(pod, ready=ready)
        self.controller.reconcile()
        return str(pod["metadata"]["name"])

    def ready(self, name: str) -> None:
        self.cluster.transition("default", name, objects.mark_ready)
        self.controller.reconcile()

    def retire(self, name: str) -> None:
        """An old pod is deleted: terminating, then gone."""
        self.cluster.terminate("default", name)
        self.controller.reconcile()
        self.cluster.finish_termination("default", name)
        self.controller.reconcile()


async def scrape(agent: Agent) -> dict[tuple[str, str], float]:
    """The rollout series of `web` on /metrics (text format), by (name, workload_kind)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{agent.settings.listen}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            rollout = s.name.startswith("tailwatch_rollout_") and "le" not in s.labels
            if rollout and s.labels.get("workload") == "web":
                assert {k: s.labels[k] for k in WORKLOAD} == WORKLOAD
                out[(s.name, s.labels["workload_kind"])] = s.value
    return out


async def rollouts(agent: Agent) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{agent.settings.listen}/api/v1/episodes") as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    assert "open" in doc and "recent" in doc  # the episodes are still there, beside
    found: list[dict[str, Any]] = doc["rollouts"]
    return found


async def shows(agent: Agent, name: str, value: float) -> dict[tuple[str, str], float]:
    """The agent's rollout series, once `name` has `value` (else nothing)."""
    series = await scrape(agent)
    return series if series.get((name, "Deployment")) == value else {}


def knows(agent: Agent, revision: str) -> bool:
    return agent.rollouts.revision_of(("default", "Deployment", "web")) == revision


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_a_rollout_is_reported_finished_with_its_duration_by_each_agent(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    backend: LoopbackBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The agent of node-a, where no pod of web runs, sees the rollout through the
    EndpointSlices alone; the agent of node-b also sees a new pod arrive on its node. Each
    reports it started and finished, and its duration."""
    caplog.set_level(logging.INFO, logger="tailwatch.rollouts")
    shop = Shop(api, backend.ports[0])
    old = [shop.pod(1, 0, "node-b"), shop.pod(1, 1, "node-c")]
    async with (
        running_agent(kubeconfig, tmp_path, node="node-a", **FAST) as elsewhere,
        running_agent(kubeconfig, tmp_path, node="node-b", **FAST) as with_pods,
    ):
        agents = (elsewhere, with_pods)
        for agent in agents:
            await wait_for(partial(knows, agent, REV1), "the baseline")
            assert await rollouts(agent) == []

        # maxSurge 1, maxUnavailable 0: a new pod, ready, then an old one goes; twice.
        created = time.time()
        new = [shop.pod(2, 10, "node-b", ready=False)]
        for agent in agents:
            await wait_for(partial(shows, agent, IN_PROGRESS, 1), "the rollout to start")
        seen_started = time.time()
        for agent in agents:
            (doc,) = await rollouts(agent)
            assert doc["state"] == "progressing" and doc["start_seen"] is True
            assert (doc["from_revision"], doc["to_revision"]) == (REV1, REV2)
            assert (doc["ready_old"], doc["old"]) == (2, 2)
            assert doc["services"] == ["default/web"]
        shop.ready(new[0])
        shop.retire(old[0])
        new.append(shop.pod(2, 11, "node-c"))
        shop.retire(old[1])
        retired = time.time()

        durations = []
        for agent in agents:
            finished = partial(shows, agent, "tailwatch_rollout_duration_seconds_count", 1)
            series = await wait_for(finished, "the rollout to finish")
            seen_finished = time.time()
            assert series[("tailwatch_rollout_in_progress", "Deployment")] == 0
            assert series[("tailwatch_rollout_stuck", "Deployment")] == 0
            (doc,) = await rollouts(agent)
            assert doc["state"] == "finished" and doc["rolled_back"] is False
            assert (doc["ready_new"], doc["old"], doc["total"]) == (2, 0, 2)
            duration = doc["duration_seconds"]
            durations.append(duration)
            assert duration == pytest.approx(
                seconds(doc["finished_at"]) - seconds(doc["started_at"]), abs=0.002
            )
            # Started after the first new pod was created and before the agent said so;
            # done once the last old pod was gone, and said so later.
            assert retired - seen_started <= duration <= seen_finished - created
            total = series[("tailwatch_rollout_duration_seconds_sum", "Deployment")]
            assert total == pytest.approx(duration, abs=0.002)

    logged = [r for r in caplog.records if r.name == "tailwatch.rollouts"]
    assert (
        sorted(r.getMessage() for r in logged) == ["rollout finished"] * 2 + ["rollout started"] * 2
    )
    finishes = [r.__dict__ for r in logged if r.getMessage() == "rollout finished"]
    assert sorted(f["duration_seconds"] for f in finishes) == sorted(durations)
    assert {f["to_revision"] for f in finishes} == {REV2}


async def test_a_rollout_without_progress_is_stuck_after_rollout_stuck(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    backend: LoopbackBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tailwatch.rollouts")
    shop = Shop(api, backend.ports[0])
    old = shop.pod(1, 0, "node-b")
    async with running_agent(kubeconfig, tmp_path, rollout_stuck=1.0, **FAST) as agent:
        await wait_for(partial(knows, agent, REV1), "the baseline")
        new = shop.pod(2, 10, "node-c", ready=False)  # its readiness probe never passes
        series = await wait_for(partial(shows, agent, STUCK, 1), "the rollout to be stuck")
        assert series[(IN_PROGRESS, "Deployment")] == 1
        (doc,) = await rollouts(agent)
        assert doc["state"] == "stuck" and doc["stuck_since"] is not None
        stuck_for = seconds(doc["stuck_since"]) - seconds(doc["last_progress_at"])
        assert stuck_for == pytest.approx(1, abs=0.002)

        # A fix makes the pod ready: progress, not stuck any more; then it finishes.
        shop.ready(new)
        await wait_for(partial(shows, agent, STUCK, 0), "the rollout to progress")
        shop.retire(old)
        await wait_for(partial(shows, agent, IN_PROGRESS, 0), "the rollout to finish")
    messages = [r.getMessage() for r in caplog.records if r.name == "tailwatch.rollouts"]
    assert messages[:3] == ["rollout started", "rollout stuck", "rollout progressing"]
    assert messages[-1] == "rollout finished"
    # A loaded machine may take longer than --rollout-stuck between two steps of the test.
    assert set(messages[3:-1]) <= {"rollout stuck", "rollout progressing"}, messages
