"""The running agent's own cost on /metrics, as a user checks it against the budget: the
process_* families in every format it serves, with the values /proc and the kernel give
for its process at the same moment (the agent runs in this test's process): resident
memory, CPU seconds that rise with work, open descriptors that count each new socket, the
descriptor limit."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.agent import Agent
from tests.conftest import wait_for
from tests.exposition.prometheus_proto import delimited
from tests.exposition.test_exposition import PROMETHEUS_ACCEPT, PROTOBUF_ACCEPT
from tests.exposition.test_process_metrics import NAMES as PROCESS_NAMES

NAMES = tuple(PROCESS_NAMES)  # in the catalogue's order (checked against client_python there)
#: utime and stime are whole clock ticks each, rounded down from the exact CPU time.
TICKS = 2 / os.sysconf("SC_CLK_TCK") + 0.001

Scrape = Callable[[], Awaitable[dict[str, float]]]


def _process_values(samples: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in samples.items() if name.startswith("process_")}


def scraper(agent: Agent, http: aiohttp.ClientSession, accept: str = "") -> Scrape:
    """The process_* samples of one scrape of the agent's /metrics, in the format `accept`
    asks for (text for none)."""

    async def scrape() -> dict[str, float]:
        headers = {"Accept": accept} if accept else {}
        async with http.get(f"http://{agent.settings.listen}/metrics", headers=headers) as resp:
            assert resp.status == 200
            body = await resp.read()
        if accept == PROTOBUF_ACCEPT:
            return _process_values({
                f.name: m.counter.value if f.type == 0 else m.gauge.value
                for _, f in delimited(body)
                for m in f.metric
            })  # fmt: skip
        parse = parse_openmetrics if accept == PROMETHEUS_ACCEPT else parse_text
        return _process_values({s.name: s.value for f in parse(body.decode()) for s in f.samples})

    return scrape


def _open_fds() -> int:
    """The kernel's count (the size of /proc/self/fd, Linux 6.2+), else the directory's
    entries, the one listing them included (as client_python counts them)."""
    return os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_every_format_has_the_process_families(agent: Agent) -> None:
    async with aiohttp.ClientSession() as http:
        for accept in ("", PROMETHEUS_ACCEPT, PROTOBUF_ACCEPT):
            values = await scraper(agent, http, accept)()
            assert tuple(values) == NAMES, accept
            assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            assert 0 < values["process_start_time_seconds"] <= time.time()
            assert values["process_virtual_memory_bytes"] > values["process_resident_memory_bytes"]


async def test_memory_and_cpu_are_the_process(agent: Agent) -> None:
    async with aiohttp.ClientSession() as http:
        scrape = scraper(agent, http)

        async def rss_as_proc_says() -> dict[str, float] | None:
            """A scrape whose resident memory is /proc's just before and after it (the
            scrape itself allocates: within 4 MiB)."""
            before = _rss()
            values = await scrape()
            after = _rss()
            rss = values["process_resident_memory_bytes"]
            return (
                values if min(before, after) - 2**22 <= rss <= max(before, after) + 2**22 else None
            )

        await wait_for(rss_as_proc_says, "the resident memory of /proc")

        # CPU: between the process' CPU time before and after the scrape (its clock ticks
        # rounded down), and it rises with the work done.
        cpu_before = time.process_time()
        cpu = (await scrape())["process_cpu_seconds_total"]
        assert cpu_before - TICKS <= cpu <= time.process_time()
        busy_until = time.process_time() + 0.3
        while time.process_time() < busy_until:
            pass
        assert (await scrape())["process_cpu_seconds_total"] >= cpu + 0.3 - TICKS


async def test_open_fds_count_each_new_socket(agent: Agent) -> None:
    async with aiohttp.ClientSession() as http:
        scrape = scraper(agent, http)

        async def quiet_count() -> float | None:
            """The open descriptors of a scrape during which no descriptor opened or closed
            (the scrape's own keep-alive connection, after the first, is in both counts)."""
            before = _open_fds()
            fds = (await scrape())["process_open_fds"]
            return fds if before == fds == _open_fds() else None

        start = await wait_for(quiet_count, "a scrape with as many descriptors as /proc")
        sockets = [socket.socket() for _ in range(50)]
        try:
            await wait_for(lambda: _equals(quiet_count, start + 50), "the 50 new sockets counted")
        finally:
            for s in sockets:
                s.close()
        await wait_for(lambda: _equals(quiet_count, start), "the closed sockets gone")


async def _equals(count: Callable[[], Awaitable[float | None]], expected: float) -> bool:
    return await count() == expected
