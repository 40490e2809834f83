"""Shared fixtures: the API simulator, a kubeconfig for it, and helpers to wait on conditions.

Every test is also held to the suite's rules by the plugin tests/_plugin.py (loaded here):

- Loopback only: anything a test runs, in this process or in a Python process it starts,
  that connects, sends or listens outside 127.0.0.0/8, ::1 and unix sockets, or resolves
  a name only DNS could answer, gets an `OffLoopbackError` (tests/_guard.py) and fails the
  test, even if the code under test caught it. `loopback_violations.take()` claims what a
  test of the guard provoked on purpose.
- Logged exceptions fail: a log record at ERROR or above with exception info fails the
  test that logged it, unless the test is marked `@pytest.mark.expect_logged_errors` or
  requests `logged_errors` (call it for the records so far) to assert on them.
- For agents run as subprocesses, `assert_no_traceback(output)` on what they printed.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest

from exporter.simulator import ApiServer
from exporter.simulator.cluster import Cluster

pytest_plugins = ["tests._plugin", "pytester"]

T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.02,
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def wait_for_ok(
    session: aiohttp.ClientSession, url: str, what: str, timeout: float = 20.0
) -> None:
    """Until a GET of `url` answers 200 (a server that is not listening yet is retried)."""

    async def ok() -> bool:
        try:
            async with session.get(url) as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await wait_for(ok, what, timeout)


#: The ports `free_port` handed out lately, which it does not hand out again.
_RECENT_PORTS: deque[int] = deque(maxlen=4096)


def free_port() -> int:
    """A loopback port nothing listens on now. Its caller binds it later, often after asking
    for more (an agent's port, then the Prometheus servers that scrape it): the kernel may
    hand the same free port out twice in that time, so a port handed out lately is not."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _RECENT_PORTS:
            _RECENT_PORTS.append(port)
            return port


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; reaped."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def assert_no_traceback(output: str, what: str = "the agent") -> None:
    """A subprocess' output shows no exception: neither an uncaught one nor one it logged
    (the agent's JSON log lines carry the traceback in their `exc` field)."""
    at = output.find("Traceback (most recent call last)")
    assert at < 0, f"{what} printed a traceback:\n{output[max(0, at - 2000) : at + 4000]}"


@pytest.fixture
async def api() -> AsyncIterator[ApiServer]:
    server = ApiServer(token="test-token", bookmark_interval=0.2)
    async with server:
        yield server


@pytest.fixture
def kubeconfig(api: ApiServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def cluster(api: ApiServer) -> Cluster:
    return Cluster(api.store)
