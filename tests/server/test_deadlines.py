"""The --listen server's per-connection deadlines against real stalled sockets: a head
that never completes, a header trickled byte by byte, a client that never reads its
answer, an idle kept-alive connection, and a shutdown with all of them open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from exporter.exposition import Exposition
from exporter.server import Listener, Timeouts, build_app, start_server
from exporter.settings import ListenAddress
from tests.conftest import wait_for
from tests.server.raw import RawClient, connect, get

# Shrunk deadlines: what is under test is that each one holds, not its length.
FAST = Timeouts(header=0.5, idle=1.0, request=2.0)
BIG = ["x" * 1000] * 20_000  # a 20 MB answer: more than the socket buffers hold


@dataclass
class Server:
    runner: Listener
    host: str
    port: int
    counted: list[str]

    async def connect(self, **options: object) -> RawClient:
        return await connect(self.host, self.port, **options)  # type: ignore[arg-type]

    def connections(self) -> int:
        return self.runner.connections


async def serve(timeouts: Timeouts) -> Server:
    counted: list[str] = []
    app = build_app(Exposition([]), lambda: (True, "ready"), {"/api/v1/big": lambda: BIG})
    runner = await start_server(
        app, ListenAddress("127.0.0.1", 0), count=counted.append, timeouts=timeouts
    )
    host, port = runner.addresses[0][:2]
    return Server(runner, host, port, counted)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    running = await serve(FAST)
    try:
        yield running
    finally:
        await running.runner.cleanup()


async def test_half_a_header_line_is_disconnected_and_counted(server: Server) -> None:
    client = await server.connect()
    await client.send(b"GET /metrics HTT")
    assert await client.until_closed() == b""
    assert server.counted == ["http_header_timeout"]
    await wait_for(lambda: server.connections() == 0, "the connection to be gone")


async def test_a_connection_that_sends_nothing_is_disconnected(server: Server) -> None:
    client = await server.connect()
    assert await client.until_closed() == b""
    assert server.counted == ["http_header_timeout"]


async def test_a_header_trickled_byte_by_byte_gains_nothing(server: Server) -> None:
    """Each byte arrives well within the head's deadline; the head as a whole does not."""
    client = await server.connect()
    await client.send(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
    closed = asyncio.create_task(client.until_closed())
    sent = 0
    while not closed.done():
        try:
            await client.send(b"a")
        except ConnectionError:
            break
        sent += 1
        await asyncio.wait({closed}, timeout=0.05)  # the attacker's pace, not a wait
    assert await closed == b""
    assert server.counted == ["http_header_timeout"]
    assert sent > 0


async def test_an_idle_kept_alive_connection_is_closed_without_counting(server: Server) -> None:
    client = await server.connect()
    for _ in range(3):  # the connection is reused while requests keep coming
        await client.send(get("/healthz"))
        head = await client.response_head()
        assert head.startswith(b"HTTP/1.1 200")
        assert await client.reader.readexactly(3) == b"ok\n"
    assert await client.until_closed() == b""
    assert server.counted == []


async def test_a_client_that_never_reads_its_answer_is_cut(server: Server) -> None:
    client = await server.connect(receive_buffer=4096)
    await client.send(get("/api/v1/big"))
    # It reads nothing more than what its stream buffers take on their own.
    await wait_for(lambda: server.counted == ["http_request_timeout"], "the answer's deadline")
    await wait_for(lambda: server.connections() == 0, "the connection to be gone")
    client.close()


async def test_a_big_answer_read_at_once_is_served(server: Server) -> None:
    client = await server.connect()
    await client.send(get("/api/v1/big", keep_alive=False))
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 200")
    assert len(answer) > 20_000_000
    assert server.counted == []


async def test_shutdown_is_bounded_whatever_the_clients_do() -> None:
    """The real deadlines (seconds to minutes) are all longer than the shutdown: a stalled
    head, an answer nobody reads and an idle connection are all open when it starts."""
    server = await serve(Timeouts())
    stalled = await server.connect()
    await stalled.send(b"GET /metrics HTTP/1.1\r\nHost: x")
    unread = await server.connect(receive_buffer=4096)
    await unread.send(get("/api/v1/big"))
    idle = await server.connect()
    await idle.send(get("/healthz"))
    await idle.response_head()
    await wait_for(lambda: server.connections() == 3, "three connections")
    started = time.monotonic()
    await asyncio.wait_for(server.runner.cleanup(), 5)
    took = time.monotonic() - started
    assert took < 5
    for client in (stalled, unread, idle):
        await client.until_closed()
