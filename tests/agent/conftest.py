"""The agent in-process against the simulator, with fast watch timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exporter.agent import Agent
from exporter.kube.config import load_connection
from exporter.settings import ListenAddress, Settings
from tests.conftest import free_port, wait_for
from tests.kube.test_reflector import FAST


@pytest.fixture
async def agent(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    settings = Settings(
        node_name="node-a",
        kubeconfig=str(kubeconfig),
        cgroup_root=tmp_path,
        listen=ListenAddress("127.0.0.1", free_port()),
        otlp_listen=None,
        sample_interval=1.0,
        log_level="info",
    )
    agent = Agent(settings, connection=load_connection(str(kubeconfig)), timing=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_for(lambda: agent.readiness()[0], "the agent to sync")
    try:
        yield agent
    finally:
        stop.set()
        await task
