"""The agent in-process against the simulator, with fast watch timings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from exporter.agent import Agent
from exporter.kube.config import load_connection
from exporter.settings import ListenAddress, Settings
from tests.conftest import free_port, wait_for
from tests.kube.test_reflector import FAST


@asynccontextmanager
async def running_agent(
    kubeconfig: Path,
    cgroup_root: Path,
    *,
    otlp: bool = False,
    sample_interval: float = 1.0,
    wait_ready: bool = True,
    **settings_overrides: float,
) -> AsyncIterator[Agent]:
    """The agent on node-a, in-process, with fast watch timings, stopped on exit.
    `settings_overrides` sets other Settings fields (e.g. the correlation windows)."""
    settings = Settings(
        node_name="node-a",
        kubeconfig=str(kubeconfig),
        cgroup_root=cgroup_root,
        listen=ListenAddress("127.0.0.1", free_port()),
        otlp_listen=ListenAddress("127.0.0.1", free_port()) if otlp else None,
        sample_interval=sample_interval,
        log_level="info",
        **settings_overrides,  # type: ignore[arg-type]
    )
    agent = Agent(settings, connection=load_connection(str(kubeconfig)), timing=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        if wait_ready:
            await wait_for(lambda: agent.readiness()[0], "the agent to sync")
        yield agent
    finally:
        stop.set()
        await task


@pytest.fixture
async def agent(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(kubeconfig, tmp_path) as running:
        yield running
