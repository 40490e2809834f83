"""The listeners' HTTP/1.1 over raw sockets, as clients other than a library send it:
pipelined requests, HTTP/1.0, `Connection: close`, chunked bodies, `Expect: 100-continue`,
malformed and oversized heads, unknown paths and wrong methods."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from exporter.exposition import Exposition
from exporter.httpserver import MAX_HEAD_BYTES
from exporter.server import Listener, build_app, start_server
from exporter.settings import ListenAddress
from tests.otlp.test_receiver import Agent, good_request, serve
from tests.server.raw import RawClient, connect, get


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    counted: list[str] = []
    app = build_app(Exposition([]), lambda: (True, "ready"), {"/api/v1/targets": lambda: []})
    running = await start_server(app, ListenAddress("127.0.0.1", 0), count=counted.append)
    try:
        yield running
    finally:
        await running.cleanup()


@pytest.fixture
async def otlp() -> AsyncIterator[Agent]:
    async with serve() as running:
        yield running


async def client_of(listener: Listener) -> RawClient:
    host, port = listener.addresses[0][:2]
    return await connect(host, port)


async def otlp_client(agent: Agent) -> RawClient:
    host, port = agent.url.removeprefix("http://").removesuffix("/v1/metrics").rsplit(":", 1)
    return await connect(host, int(port))


def post_head(*fields: str, content_type: str = "application/x-protobuf") -> bytes:
    lines = ["POST /v1/metrics HTTP/1.1", "Host: tailwatch", f"Content-Type: {content_type}"]
    return ("\r\n".join([*lines, *fields]) + "\r\n\r\n").encode()


def chunked(body: bytes, size: int) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts)
    return encoded + b"0\r\nX-Trailer: ignored\r\n\r\n"


async def test_pipelined_requests_are_answered_in_order(listener: Listener) -> None:
    client = await client_of(listener)
    await client.send(get("/readyz") + get("/api/v1/targets") + get("/healthz"))
    answers = [await client.response() for _ in range(3)]
    assert [body for _, body in answers] == [b"ready\n", b"[]", b"ok\n"]
    assert all(head.startswith(b"HTTP/1.1 200 OK") for head, _ in answers)
    client.close()


async def test_http_1_0_is_closed_after_its_answer_unless_kept_alive(listener: Listener) -> None:
    client = await client_of(listener)
    await client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\nok\n")
    assert b"Connection: close" in answer

    client = await client_of(listener)
    for _ in range(2):
        await client.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, body = await client.response()
        assert b"Connection: keep-alive" in head and body == b"ok\n"
    client.close()


async def test_connection_close_is_honoured(listener: Listener) -> None:
    client = await client_of(listener)
    # What follows a request that asked to close is not served.
    await client.send(get("/healthz", keep_alive=False) + get("/readyz"))
    answer = await client.until_closed()
    assert answer.count(b"HTTP/1.1") == 1 and answer.endswith(b"ok\n")


@pytest.mark.parametrize(
    "head",
    [b"GET /healthz\r\n\r\n", b"GET /healthz HTTP/1.1 extra\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\n Folded: value\r\n\r\n",
     b"GET healthz HTTP/1.1\r\n\r\n",
     b"POST /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
     b"POST /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"],
)  # fmt: skip
async def test_a_malformed_head_is_400_and_closed(listener: Listener, head: bytes) -> None:
    client = await client_of(listener)
    await client.send(head + get("/healthz"))
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert answer.count(b"HTTP/1.1") == 1


async def test_an_oversized_head_is_431_and_closed(listener: Listener) -> None:
    client = await client_of(listener)
    await client.send(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


async def test_unknown_paths_wrong_methods_and_head(listener: Listener) -> None:
    client = await client_of(listener)
    await client.send(get("/nothing") + get("/healthz/"))
    for _ in range(2):
        head, _ = await client.response()
        assert head.startswith(b"HTTP/1.1 404 Not Found")
    await client.send(b"DELETE /metrics HTTP/1.1\r\n\r\n")
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 405 Method Not Allowed")
    assert b"Allow: GET, HEAD\r\n" in head
    # HEAD: the GET's head (its Content-Length too), no body; then the next answer.
    await client.send(b"HEAD /healthz HTTP/1.1\r\n\r\n" + get("/readyz"))
    head = await client.response_head()
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 3\r\n" in head
    assert (await client.response())[1] == b"ready\n"
    # A percent-encoded spelling of a path is the path.
    await client.send(get("/%68ealthz"))
    assert (await client.response())[1] == b"ok\n"
    client.close()


async def test_a_chunked_body_is_read(otlp: Agent) -> None:
    client = await otlp_client(otlp)
    for size in (7, 10_000):  # many small chunks, then one
        body = good_request()  # a stream started anew: its 3 points count again
        await client.send(post_head("Transfer-Encoding: chunked") + chunked(body, size))
        head, _ = await client.response()
        assert head.startswith(b"HTTP/1.1 200 OK")
    assert otlp.totals()[0] == 6
    # Bad framing: 400, and the connection closed (where the next request starts is lost).
    await client.send(post_head("Transfer-Encoding: chunked") + b"zz\r\n")
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")


async def test_expect_100_continue_is_answered_when_the_body_will_be_read(otlp: Agent) -> None:
    client = await otlp_client(otlp)
    body = good_request()
    await client.send(post_head(f"Content-Length: {len(body)}", "Expect: 100-continue"))
    assert await client.response_head() == b"HTTP/1.1 100 Continue\r\n\r\n"
    await client.send(body)
    head, _ = await client.response()
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert otlp.totals()[0] == 3
    client.close()


async def test_expect_100_continue_refused_on_its_head_gets_the_refusal(otlp: Agent) -> None:
    """No 100: the refusal is the answer, and the connection is closed, since the client
    may or may not send the body it held back."""
    client = await otlp_client(otlp)
    fields = ("Content-Length: 100", "Expect: 100-continue")
    await client.send(post_head(*fields, content_type="text/plain"))
    answer = await client.until_closed()
    assert answer.startswith(b"HTTP/1.1 415 Unsupported Media Type")
    assert b"100 Continue" not in answer and b"Connection: close" in answer
    assert otlp.receiver.dropped() == {"otlp_unsupported_media_type": 1}


@pytest.mark.expect_logged_errors
async def test_a_failing_handler_is_500_and_the_listener_serves_on() -> None:
    app = build_app(Exposition([]), lambda: (True, "ready"), {"/api/v1/broken": lambda: 1 / 0})
    listener = await start_server(app, ListenAddress("127.0.0.1", 0))
    try:
        client = await client_of(listener)
        await client.send(get("/api/v1/broken"))
        answer = await client.until_closed()
        assert answer.startswith(b"HTTP/1.1 500 Internal Server Error")
        client = await client_of(listener)
        await client.send(get("/healthz"))
        assert (await client.response())[1] == b"ok\n"
        client.close()
    finally:
        await listener.cleanup()
