"""Raw TCP clients for the listeners' deadlines: what a slow, stalled or hostile client
does, byte by byte, where an HTTP client library would not let a test misbehave."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass


@dataclass
class RawClient:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self, timeout: float = 20.0) -> bytes:
        """Everything the server sends until it closes or aborts the connection; fails the
        test if it is still open after `timeout` (generous: the deadlines under test are
        far shorter)."""
        received = bytearray()
        try:
            async with asyncio.timeout(timeout):
                while chunk := await self.reader.read(65536):
                    received += chunk
        except ConnectionResetError:
            pass  # aborted: as closed as it gets
        finally:
            self.close()
        return bytes(received)

    async def response_head(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 20)

    async def response(self) -> tuple[bytes, bytes]:
        """One whole response, its head and its body (of its Content-Length), leaving the
        connection where the next response would start."""
        head = await self.response_head()
        length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
        body = await asyncio.wait_for(self.reader.readexactly(length), 20)
        return head, body

    def close(self) -> None:
        self.writer.close()


async def connect(
    host: str, port: int, *, source: str | None = None, receive_buffer: int | None = None
) -> RawClient:
    """A connection from `source` (a loopback address: 127.0.0.0/8 is all this machine's),
    with a small receive buffer if asked (a client that reads slowly, or not at all)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    if source is not None:
        sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawClient(reader, writer)


def get(path: str, *, keep_alive: bool = True) -> bytes:
    connection = "keep-alive" if keep_alive else "close"
    return f"GET {path} HTTP/1.1\r\nHost: tailwatch\r\nConnection: {connection}\r\n\r\n".encode()
