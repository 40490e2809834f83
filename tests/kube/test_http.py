"""The agent's own HTTP/1.1 client (exporter.kube.http) under the API session, against servers
on loopback that write exactly the bytes a test gives them: how a response is framed, where
chunks and reads split a watch's lines, a connection closed mid-stream or while idle.

The tests on raw servers run on asyncio's loop and again on uvloop, the agent's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import uvloop

from exporter.kube import watching
from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.http import Timeout
from exporter.kube.watching import (
    ApiSession,
    ConnectionFailed,
    Reflector,
    ResourceSpec,
    list_objects,
    stream_watch,
)
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.conftest import wait_for
from tests.kube.test_reflector import FAST, NODE_A, Recorder

PODS = ResourceSpec("pods", "/api/v1/pods")


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    connection: int  # which connection of the server's it came on, from 1


Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawServer:
    """An HTTP/1.1 server on 127.0.0.1: `answer` writes the response's bytes itself and says
    whether the connection stays open for another request."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections that ended
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self) -> KubeConnection:
        return KubeConnection(self.url, None, "test")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                first, *lines = head.decode("latin-1").split("\r\n")
                method, target, _ = first.split(" ")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                url = urlsplit(target)
                request = Request(
                    method, url.path, dict(parse_qsl(url.query)), headers, body, number
                )
                self.requests.append(request)
                if not await self.answer(request, reader, writer):
                    return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed += 1

    @property
    def open(self) -> int:
        return self.connections - self.closed


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[RawServer]:
    """A RawServer listening; when the test is done, every connection must have closed."""
    state = RawServer(answer)
    server = await asyncio.start_server(state.serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
        await wait_for(lambda: state.open == 0, "the test's connections closed")
    finally:
        server.close()
        await server.wait_closed()


def head(status: int = 200, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} OK", "Content-Type: application/json"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def pod_list(rv: int, *names: str) -> bytes:
    items = [objects.bare_pod(name, node="node-a") for name in names]
    for item in items:
        item["metadata"]["resourceVersion"] = str(rv)
    return json.dumps({"kind": "PodList", "metadata": {"resourceVersion": str(rv)},
                       "items": items}).encode()  # fmt: skip


def event_line(etype: str, name: str, rv: int, padding: int = 0) -> bytes:
    pod = objects.bare_pod(name, node="node-a")
    pod["metadata"]["resourceVersion"] = str(rv)
    if padding:
        pod["metadata"]["annotations"] = {"filler": "x" * padding}
    return json.dumps({"type": etype, "object": pod}).encode() + b"\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def send(writer: asyncio.StreamWriter, *pieces: bytes) -> None:
    """Each piece its own write: the client sees them in as many reads as the kernel makes."""
    for piece in pieces:
        writer.write(piece)
        await writer.drain()


async def test_a_watch_split_anyhow_across_chunks_and_reads_arrives_event_by_event() -> None:
    """An event split over chunks, a chunk holding the end of one event and the start of the
    next, an event of 300 KiB that takes many reads, and the chunk framing itself split
    across writes: every event arrives once, whole, in order."""
    lines = [
        event_line("ADDED", "a", 2),
        event_line("MODIFIED", "big", 3, padding=300 * 1024),
        event_line("MODIFIED", "a", 4),
        event_line("DELETED", "a", 5),
    ]
    stream = b"".join(lines)
    cuts = [0, 1, 7, len(lines[0]) + 3, 90_000, 250_000, len(stream) - 5, len(stream) - 1]
    chunks = [stream[a:b] for a, b in zip(cuts, [*cuts[1:], len(stream)], strict=True)]

    async def answer(request: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(head(Transfer_Encoding="chunked"))
        for data in chunks:
            framed = chunk(data)
            await send(w, framed[:2], framed[2:-1], framed[-1:])
        await send(w, b"0\r\n", b"\r\n")
        return True

    async with raw_server(answer) as server:
        async with ApiSession(server.connection(), FAST) as api:
            events = [
                (etype, obj["metadata"]["name"], obj["metadata"]["resourceVersion"])
                async for etype, obj in stream_watch(api, PODS, "1", 30)
            ]
        assert events == [("ADDED", "a", "2"), ("MODIFIED", "big", "3"), ("MODIFIED", "a", "4"),
                          ("DELETED", "a", "5")]  # fmt: skip
        [request] = server.requests
        assert request.params["watch"] == "1" and request.params["resourceVersion"] == "1"
        assert request.headers["accept"] == "application/json"
        assert "accept-encoding" not in request.headers, "no compression asked for"


async def test_a_stream_cut_in_the_middle_of_a_line_resumes_without_a_half_event() -> None:
    """The server dies mid-event with no end chunk: the half line is not delivered, and the
    reflector resumes from the last whole event (no relist), as with any dropped watch."""
    second = event_line("MODIFIED", "a", 3)

    async def answer(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.params.get("watch") != "1":
            body = pod_list(1, "a")
            await send(w, head(Content_Length=str(len(body))), body)
            return True
        w.write(head(Transfer_Encoding="chunked"))
        if request.params["resourceVersion"] == "1":
            await send(w, chunk(event_line("MODIFIED", "a", 2)), chunk(second[:40]))
            return False  # closed: no end chunk
        await send(w, chunk(second))
        await r.read(1)  # the watch stays open until the client goes
        return False

    async with raw_server(answer) as server:
        recorder = Recorder()
        async with ApiSession(server.connection(), FAST) as api:
            reflector = Reflector(api, NODE_A, recorder, list_mode="list")
            task = asyncio.create_task(reflector.run())
            try:
                await wait_for(lambda: len(recorder.delivered) == 2, "both events")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert recorder.delivered == [("MODIFIED", "default/a", 2), ("MODIFIED", "default/a", 3)]
        assert recorder.lists == 1 and recorder.duplicates == []
        assert reflector.health.restarts == {"connection_error": 1}
        watches = [r.params["resourceVersion"] for r in server.requests if "watch" in r.params]
        assert watches == ["1", "2"]
        await wait_for(lambda: server.open == 0, "every connection closed with the session")


async def test_an_over_long_watch_line_is_refused_and_relisted(
    api: ApiServer,
    cluster: Cluster,
    kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A line longer than the limit is refused before it is whole (the client never holds
    more than one read past the limit), counted as a decode error, and the state relisted."""
    monkeypatch.setattr(watching, "MAX_LINE_BYTES", 64 * 1024)
    cluster.add(objects.bare_pod("small", node="node-a"))
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="tailwatch.watch")
    async with ApiSession(load_connection(str(kubeconfig)), FAST) as session:
        reflector = Reflector(session, NODE_A, recorder, list_mode="list")
        task = asyncio.create_task(reflector.run())
        try:
            await wait_for(lambda: recorder.lists == 1 and api.faults.open_watches, "a watch")
            # A valid event, only too long: without the limit it would be taken.
            api.faults.inject_raw_line(event_line("MODIFIED", "small", 999, 1024 * 1024)[:-1])
            await wait_for(lambda: recorder.lists == 2, "a relist after the refused line")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert reflector.health.dropped == {"watch_decode": 1}
    assert reflector.health.restarts.get("decode_error") == 1
    assert [e for e in recorder.delivered if e[2] == 999] == []
    assert any("longer than 65536 bytes" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
async def test_lists_in_every_framing_and_connections_kept_alive(framing: str) -> None:
    """A list answered with a Content-Length, chunked, or to the end of a connection the
    server closes (`Connection: close`): the same items. The next request reuses the
    connection unless the server said it closes."""

    async def answer(request: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        body = pod_list(7, "a", "b")
        if framing == "content-length":
            await send(w, head(Content_Length=str(len(body))), body)
        elif framing == "chunked":
            await send(w, head(Transfer_Encoding="chunked"), chunk(body[:10]), chunk(body[10:]),
                       b"0\r\n\r\n")  # fmt: skip
        else:
            await send(w, head(Connection="close"), body)
            return False
        return True

    async with raw_server(answer) as server:
        async with ApiSession(server.connection(), FAST) as api:
            for _ in range(2):
                items, rv = await list_objects(api, PODS, "0")
                assert ([i["metadata"]["name"] for i in items], rv) == (["a", "b"], "7")
        assert [r.connection for r in server.requests] == ([1, 2] if framing == "close" else [1, 1])


async def test_a_pooled_connection_the_server_closed_while_idle_is_no_error() -> None:
    """Servers and proxies close idle keep-alive connections: the next list, and the next
    POST (an Event, a TokenReview), go on a new connection, each sent once."""

    async def answer(request: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        body = pod_list(3) if request.method == "GET" else b'{"kind":"Event"}'
        await send(w, head(201 if request.method == "POST" else 200,
                           Content_Length=str(len(body))), body)  # fmt: skip
        return False  # closed after the answer, without saying so

    async with raw_server(answer) as server:
        async with ApiSession(server.connection(), FAST) as api:
            for _ in range(2):
                await list_objects(api, PODS, "0")
                await wait_for(lambda: api.http.idle() == 0, "the client seeing the close")
                resp = await api.post("/apis/events.k8s.io/v1/namespaces/default/events", {},
                                      Timeout(total=5))  # fmt: skip
                async with resp:
                    assert (resp.status, await resp.json()) == (201, {"kind": "Event"})
                await wait_for(lambda: api.http.idle() == 0, "the client seeing the close")
        assert [(r.method, r.connection) for r in server.requests] == [
            ("GET", 1),
            ("POST", 2),
            ("GET", 3),
            ("POST", 4),
        ]


async def test_a_connection_closed_as_a_request_is_written_resends_only_a_get() -> None:
    """The race the idle check cannot see: the server closes a kept-alive connection just as
    the next request goes out, with no answer. A GET is sent again on a new connection; a
    POST is not (the server may have acted on it): the caller's retry policy decides."""

    async def answer(request: Request, _: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.path == "/first":
            await send(w, head(Content_Length="2"), b"{}")
            return True
        if len([r for r in server.requests if r.connection == request.connection]) > 1:
            return False  # the second request on a connection: closed, unanswered
        await send(w, head(Content_Length="2"), b"{}")
        return True

    async with raw_server(answer) as server:
        async with ApiSession(server.connection(), FAST) as api:
            timeout = Timeout(total=5)
            async with await api.get("/first", {}, timeout) as resp:
                await resp.read()
            async with await api.get("/again", {}, timeout) as resp:
                assert (resp.status, await resp.json()) == (200, {})
            async with await api.get("/first", {}, timeout) as resp:
                await resp.read()
            with pytest.raises(ConnectionFailed, match="closed before an answer"):
                await api.post("/apis/authentication.k8s.io/v1/tokenreviews", {}, timeout)
        assert [(r.method, r.path, r.connection) for r in server.requests] == [
            ("GET", "/first", 1), ("GET", "/again", 1), ("GET", "/again", 2),
            ("GET", "/first", 2), ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", 2),
        ]  # fmt: skip


async def test_closing_the_session_closes_its_watches_and_idle_connections() -> None:
    """An open watch holds a connection of its own; closing the session (the agent stopping)
    closes it and the idle ones, and the session refuses requests from then on."""

    async def answer(request: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if request.params.get("watch") == "1":
            await send(w, head(Transfer_Encoding="chunked"), chunk(event_line("ADDED", "a", 2)))
            await r.read(1)  # open until the client goes
            return False
        body = pod_list(1)
        await send(w, head(Content_Length=str(len(body))), body)
        return True

    async with raw_server(answer) as server:
        api = ApiSession(server.connection(), FAST)
        async with api:
            await list_objects(api, PODS, "0")
            async with aclosing(stream_watch(api, PODS, "1", 30)) as events:
                # The watch took the idle connection and holds it: the next list opens one.
                assert (await anext(events))[0] == "ADDED"
                await list_objects(api, PODS, "0")
                assert [r.connection for r in server.requests] == [1, 1, 2]
                assert server.open == 2
                await api.close()
                await wait_for(lambda: server.open == 0, "both connections closed")
                with pytest.raises(ConnectionFailed):
                    await anext(events)
            with pytest.raises(ConnectionFailed, match="closed"):
                await list_objects(api, PODS, "0")


ON_UVLOOP = [
    test_a_watch_split_anyhow_across_chunks_and_reads_arrives_event_by_event,
    test_a_stream_cut_in_the_middle_of_a_line_resumes_without_a_half_event,
    test_a_pooled_connection_the_server_closed_while_idle_is_no_error,
    test_a_connection_closed_as_a_request_is_written_resends_only_a_get,
    test_closing_the_session_closes_its_watches_and_idle_connections,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=lambda f: f.__name__[5:])
def test_the_same_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """The agent runs on uvloop, whose transports are its own."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())  # type: ignore[arg-type]
