"""Loopback probe targets: each "pod" listens on its own 127.x address and answers after a
scripted delay (a function of the arrival time), so the latency a client should see from
any intended start is known in advance: the ground truth for the prober's accuracy.

Also runnable as a process (`python -m tests.latency.targets SPEC.json`) so a benchmark can
keep the target's CPU out of the prober's process; it prints one JSON line with the ports.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Delay = Callable[[float], float]  # arrival time (time.perf_counter) -> seconds to answer


@dataclass(frozen=True)
class Stall:
    """Every request arriving in [start, end) is held until `end`: the target froze."""

    start: float
    end: float

    def hold(self, arrival: float) -> float:
        return self.end - arrival if self.start <= arrival < self.end else 0.0


@dataclass(frozen=True)
class SlotScript:
    """Time is cut into slots of `width` from `origin`; a request arriving in slot j is
    answered after `delays[j % len(delays)]` (plus a stall's hold). The latency of a client
    starting at t is then `truth(t)`, whoever the client is."""

    origin: float
    width: float
    delays: Sequence[float]
    stall: Stall | None = None

    def __call__(self, arrival: float) -> float:
        base = self.delays[math.floor((arrival - self.origin) / self.width) % len(self.delays)]
        return base + (self.stall.hold(arrival) if self.stall else 0.0)

    def truth(self, start: float) -> float:
        return self(start)


def constant(seconds: float, stall: Stall | None = None) -> Delay:
    def delay(arrival: float) -> float:
        return seconds + (stall.hold(arrival) if stall else 0.0)

    return delay


def mixture_delays(n: int, seed: int) -> list[float]:
    """A latency distribution with a tail: lognormal around 10 ms, 1% at 100-200 ms and
    0.2% at 400 ms (the benchmark's 'known distribution')."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.002:
            out.append(0.4)
        elif u < 0.012:
            out.append(rng.uniform(0.1, 0.2))
        else:
            out.append(0.01 * math.exp(0.5 * rng.gauss(0, 1)))
    return out


@dataclass
class TargetServer:
    """An HTTP/1.1 (or bare TCP) server on `host` with scripted behaviour.

    mode: "http" answers `status` after `delay(arrival)`; "silent" reads the request and
    never answers; "reset" resets every connection (SO_LINGER 0); "tcp" accepts and waits
    for the client to close.
    """

    host: str
    delay: Delay = field(default_factory=lambda: constant(0.0))
    status: int = 200
    mode: str = "http"
    port: int = 0
    concurrent: int = 0
    peak_concurrent: int = 0
    requests: int = 0
    _server: asyncio.Server | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> TargetServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        arrival = time.perf_counter()
        self.concurrent += 1
        self.peak_concurrent = max(self.peak_concurrent, self.concurrent)
        self.requests += 1
        try:
            if self.mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
                return
            if self.mode == "tcp":
                await reader.read()  # until the client closes
                return
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            if self.mode == "silent":
                await self._closing.wait()
                return
            loop = asyncio.get_running_loop()
            # Answer at arrival + delay (perf_counter is CLOCK_MONOTONIC, as the loop's clock),
            # unless the client leaves first: `concurrent` counts open connections.
            wait = arrival + self.delay(arrival) - time.perf_counter()
            if wait > 0:
                done: asyncio.Future[None] = loop.create_future()
                timer = loop.call_later(wait, done.set_result, None)
                gone = asyncio.ensure_future(reader.read(1))
                await asyncio.wait([done, gone], return_when=asyncio.FIRST_COMPLETED)
                timer.cancel()
                if gone.done():
                    return
                gone.cancel()
            body = b"ok\n"
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (self.status, len(body), body)
            )
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.concurrent -= 1
            writer.close()
            self._handlers.discard(task)


def unused_port(host: str) -> int:
    """A port on `host` where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Blackhole:
    """A TCP port whose accept queue is full, so new SYNs are dropped: connects time out."""

    def __init__(self, host: str) -> None:
        self.listener = socket.socket()
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.filler = socket.create_connection((host, self.port), timeout=2)  # fills the queue

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


async def _serve(spec: dict[str, Any]) -> None:
    """Run the servers of a JSON spec until stdin closes (benchmark helper). Each server is
    {"host", "constant": seconds} or {"host", "origin", "width", "slots", "seed", "stall"}."""
    servers = []
    for item in spec["servers"]:
        delay: Delay
        if "constant" in item:
            delay = constant(item["constant"])
        else:
            delay = SlotScript(
                origin=item["origin"],
                width=item["width"],
                delays=mixture_delays(item["slots"], item["seed"]),
                stall=Stall(*item["stall"]) if item.get("stall") else None,
            )
        servers.append(TargetServer(item["host"], delay=delay, port=item.get("port", 0)))
    for server in servers:
        await server.__aenter__()
    print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.__aexit__()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    # select() wakes up to the microsecond, epoll only to the millisecond: the scripted
    # delays stay exact.
    with asyncio.Runner(
        loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector())
    ) as runner:
        runner.run(_serve(spec))
