"""The receiver's deadlines against real stalled sockets: a body that stops arriving, a
head that never completes, an idle connection; each ends the connection, the first two
are counted, and the receiver keeps taking good requests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.rpc.status_pb2 import Status

from exporter.otlp import ReceiverLimits
from exporter.server import Timeouts
from tests.otlp.test_receiver import Agent, assert_healthy, good_request, serve
from tests.server.raw import RawClient, connect

# Shrunk deadlines: what is under test is that each one holds, not its length.
LIMITS = ReceiverLimits(body_timeout=0.5, timeouts=Timeouts(header=0.5, idle=1.0, request=5.0))
MiB = 1024 * 1024


def head(length: int) -> bytes:
    return (
        "POST /v1/metrics HTTP/1.1\r\nHost: tailwatch\r\n"
        f"Content-Type: application/x-protobuf\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def raw(agent: Agent) -> RawClient:
    host_port = agent.url.removeprefix("http://").removesuffix("/v1/metrics")
    host, port = host_port.rsplit(":", 1)
    return await connect(host, int(port))


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with serve(LIMITS) as running:
        yield running


async def test_a_body_that_stalls_is_answered_408_cut_and_counted(agent: Agent) -> None:
    client = await raw(agent)
    await client.send(head(MiB) + bytes(1024))  # 1 KB of a declared 1 MB, then nothing
    answer = await client.until_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"Connection: close" in rest
    status = Status.FromString(rest.partition(b"\r\n\r\n")[2])
    assert status.message == f"the body did not arrive within 0.5s (1024 of {MiB} bytes did)"
    assert agent.receiver.dropped() == {"otlp_body_timeout": 1}
    await assert_healthy(agent)


async def test_half_a_header_line_is_cut_and_counted(agent: Agent) -> None:
    client = await raw(agent)
    await client.send(b"POST /v1/metrics HTTP/1.1\r\nContent-Ty")
    assert await client.until_closed() == b""
    assert agent.receiver.dropped() == {"otlp_header_timeout": 1}
    await assert_healthy(agent)


async def test_an_idle_connection_is_closed_without_counting(agent: Agent) -> None:
    client = await raw(agent)
    body = good_request()
    await client.send(head(len(body)) + body)
    response, _ = await client.response()
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert await client.until_closed() == b""  # kept alive, idle, then closed
    assert agent.totals()[0] == 3
    assert agent.receiver.dropped() == {}


async def refused_on_its_head(client: RawClient, body: bytes) -> None:
    """A POST whose Content-Type the receiver does not take: answered 415 on its head, before
    its body is read; then the body, as a client that streams it after its head sends it."""
    await client.send(head(len(body)).replace(b"application/x-protobuf", b"text/plain"))
    response, _ = await client.response()
    assert response.startswith(b"HTTP/1.1 415")
    assert b"Connection: close" not in response
    await client.send(body)


async def test_a_body_sent_after_its_refusal_is_not_taken_for_a_stalled_head(
    agent: Agent,
) -> None:
    """The rest of a refused request's body is read and thrown away; it starts no request
    head. The connection then waits as an idle one (and is closed as one, not counted as a
    stalled head), and serves the client's next request."""
    body = good_request()
    client = await raw(agent)
    await refused_on_its_head(client, body)
    assert await client.until_closed() == b""  # idle, then closed
    assert agent.receiver.dropped() == {"otlp_unsupported_media_type": 1}

    client = await raw(agent)
    await refused_on_its_head(client, body)
    await client.send(head(len(body)) + body)
    response = await client.response_head()
    assert response.startswith(b"HTTP/1.1 200 OK")
    client.close()
    assert agent.totals()[0] == 3
    assert agent.receiver.dropped() == {"otlp_unsupported_media_type": 2}
