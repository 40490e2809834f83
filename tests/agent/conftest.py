"""The agent in-process against the simulator, with fast watch timings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter.agent import Agent
from exporter.kube.config import load_connection
from exporter.settings import ListenAddress, Settings
from exporter.simulator.services import service
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
    node: str = "node-a",
    **settings_overrides: object,
) -> AsyncIterator[Agent]:
    """The agent on `node` (default node-a), in-process, with fast watch timings, stopped on exit.
    `settings_overrides` sets other Settings fields (e.g. the correlation windows)."""
    settings = Settings(
        node_name=node,
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


def idle_agent(cgroup_root: Path, **settings_overrides: object) -> Agent:
    """The agent on node-a, built but not run: no API server, no listener started; for tests
    that drive its parts (the OTLP sink, the exposition, the correlation tick) directly."""
    settings = Settings(
        node_name="node-a",
        kubeconfig=None,
        cgroup_root=cgroup_root,
        listen=ListenAddress("127.0.0.1", 0),
        otlp_listen=None,
        sample_interval=1.0,
        log_level="info",
        **settings_overrides,  # type: ignore[arg-type]
    )
    return Agent(settings)


@pytest.fixture
async def agent(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(kubeconfig, tmp_path) as running:
        yield running


class LoopbackBackend:
    """HTTP servers on loopback addresses standing for a Service's ClusterIP and its pods:
    `/healthz` answers after `delay` seconds; `seen` records the Host of every request."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.seen: list[str] = []
        self.arrivals: list[float] = []  # monotonic time of every request
        self.ports: tuple[int, ...] = ()


@asynccontextmanager
async def loopback_backend(*hosts: str) -> AsyncIterator[LoopbackBackend]:
    backend = LoopbackBackend()

    async def healthz(request: web.Request) -> web.Response:
        backend.seen.append(request.host)
        backend.arrivals.append(time.monotonic())
        if backend.delay:
            await asyncio.sleep(backend.delay)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    backend.ports = tuple(free_port() for _ in hosts)
    for host, port in zip(hosts, backend.ports, strict=True):
        await web.TCPSite(runner, host, port).start()
    try:
        yield backend
    finally:
        await runner.cleanup()


def probed_web_service(cluster_ip: str, port: int) -> dict[str, Any]:
    """An opted-in Service `web` on `cluster_ip:port`, probed over HTTP on /healthz every
    100 ms (the fastest the annotation allows)."""
    return service(
        "web", cluster_ip=cluster_ip, ports=(("http", port, "http"),),
        annotations={"tailwatch.io/probe-protocol": "http", "tailwatch.io/probe-path": "/healthz",
                     "tailwatch.io/probe-interval": "100ms"},
    )  # fmt: skip
