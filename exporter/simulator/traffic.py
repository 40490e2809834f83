"""Client traffic for the simulated cluster: a client that sends real HTTP requests to
Service addresses at a steady rate and reports what it saw the way an instrumented
application does, as the OpenTelemetry `http.client.request.duration` histogram sent over
OTLP/HTTP protobuf (built here from opentelemetry-proto, without the SDK).

Requests are open loop (Poisson arrivals from a seeded generator, each on its own
connection, timed from its intended start), so a slow Service does not slow the client
down and its tail is not hidden. Failures are recorded too, with `error.type`, as the
semantic conventions ask.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

log = logging.getLogger("tailwatch.simulator.traffic")

METRIC = "http.client.request.duration"
#: Explicit bucket boundaries (seconds), finer than the semantic conventions' default so a
#: p99 read from them is close to the truth.
BOUNDS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ClientTarget:
    """A Service the client calls: `host` is what it names (server.address), `address` and
    `port` where it connects (the ClusterIP)."""

    host: str
    address: str
    port: int
    path: str = "/"


@dataclass(slots=True)
class _Stream:
    """Cumulative explicit-bucket histogram of one attribute set."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    total: float = 0.0
    count: int = 0
    low: float = float("inf")
    high: float = 0.0

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.total += seconds
        self.count += 1
        self.low = min(self.low, seconds)
        self.high = max(self.high, seconds)


def _value(value: str | int) -> AnyValue:
    return AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)


async def http_get(target: ClientTarget, timeout: float) -> str | None:
    """One GET on a new connection; None on a 2xx/3xx answer, else the error.type."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(target.address, target.port)
            try:
                writer.write(
                    f"GET {target.path} HTTP/1.1\r\nHost: {target.host}\r\n"
                    "User-Agent: tailwatch-demo-client\r\nConnection: close\r\n\r\n".encode()
                )
                status = await reader.readline()
                await reader.read()  # Connection: close delimits the answer
            finally:
                writer.close()
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__
    parts = status.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return "invalid_response"
    code = int(parts[1])
    return None if 200 <= code < 400 else str(code)


class ServiceClient:
    """Calls each target `rate` times a second and exports OTLP to `otlp_url` every
    `export_interval` seconds (no export when it is None)."""

    def __init__(
        self,
        targets: Iterable[ClientTarget],
        *,
        rate: float = 5.0,
        otlp_url: str | None = None,
        export_interval: float = 1.0,
        timeout: float = 2.0,
        seed: int = 0,
        service_name: str = "demo-client",
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.targets = tuple(targets)
        self.rate = rate
        self.otlp_url = otlp_url
        self.export_interval = export_interval
        self.timeout = timeout
        self.service_name = service_name
        self.clock_ns = clock_ns
        self.wall_ns = wall_ns
        self._rng = random.Random(seed)
        self._streams: dict[tuple[ClientTarget, str], _Stream] = {}
        self._start_ns = wall_ns()
        self._inflight: set[asyncio.Task[None]] = set()
        self.exports = 0
        self.export_failures = 0

    # -- what was seen ---------------------------------------------------------------

    def counts(self, target: ClientTarget) -> dict[str, int]:
        """Requests sent to `target` by outcome ("ok" or the error.type)."""
        return {
            error or "ok": stream.count
            for (t, error), stream in self._streams.items()
            if t == target
        }

    def record(self, target: ClientTarget, seconds: float, error: str | None) -> None:
        self._streams.setdefault((target, error or ""), _Stream()).record(seconds)

    def export_request(self) -> ExportMetricsServiceRequest:
        """The cumulative histograms so far, as one OTLP export request."""
        now = self.wall_ns()
        points = []
        for (target, error), stream in sorted(
            self._streams.items(), key=lambda i: (i[0][0].host, i[0][1])
        ):
            attrs: list[tuple[str, str | int]] = [
                ("http.request.method", "GET"),
                ("server.address", target.host),
                ("server.port", target.port),
                ("url.scheme", "http"),
            ]
            if error:
                attrs.append(("error.type", error))
            points.append(
                HistogramDataPoint(
                    attributes=[KeyValue(key=k, value=_value(v)) for k, v in attrs],
                    start_time_unix_nano=self._start_ns,
                    time_unix_nano=now,
                    count=stream.count,
                    sum=stream.total,
                    bucket_counts=list(stream.counts),
                    explicit_bounds=list(BOUNDS),
                    min=stream.low,
                    max=stream.high,
                )
            )
        metric = Metric(
            name=METRIC,
            unit="s",
            description="Duration of HTTP client requests.",
            histogram=Histogram(
                aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                data_points=points,
            ),
        )
        resource = Resource(
            attributes=[KeyValue(key="service.name", value=_value(self.service_name))]
        )
        return ExportMetricsServiceRequest(
            resource_metrics=[
                ResourceMetrics(
                    resource=resource,
                    scope_metrics=[
                        ScopeMetrics(
                            scope=InstrumentationScope(name="tailwatch.simulator.traffic"),
                            metrics=[metric],
                        )
                    ],
                )
            ]
        )

    # -- running ---------------------------------------------------------------------

    async def run(self) -> None:
        """Send and export until cancelled; in-flight requests are cancelled with it."""
        loops = [asyncio.create_task(self._send(t)) for t in self.targets]
        if self.otlp_url is not None:
            loops.append(asyncio.create_task(self._export_loop(self.otlp_url)))
        try:
            await asyncio.gather(*loops)
        finally:
            for task in [*loops, *self._inflight]:
                task.cancel()
            await asyncio.gather(*loops, *self._inflight, return_exceptions=True)

    async def _send(self, target: ClientTarget) -> None:
        due = self.clock_ns()
        while True:
            due += int(self._rng.expovariate(self.rate) * NS_PER_S)
            delay = (due - self.clock_ns()) / NS_PER_S
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(target, due))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, target: ClientTarget, intended_ns: int) -> None:
        error = await http_get(target, self.timeout)
        self.record(target, max(0, self.clock_ns() - intended_ns) / NS_PER_S, error)

    async def _export_loop(self, url: str) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(self.export_interval)
                await self.export(session, url)

    async def export(self, session: aiohttp.ClientSession, url: str) -> bool:
        body = self.export_request().SerializeToString()
        try:
            async with session.post(
                url,
                data=body,
                headers={"Content-Type": "application/x-protobuf"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("OTLP export failed: %s", exc)
            ok = False
        self.exports += 1
        if not ok:
            self.export_failures += 1
        return ok


def client_targets(services: Sequence[tuple[str, str, str, int, str]]) -> list[ClientTarget]:
    """Targets for (namespace, name, cluster IP, port, path) tuples, named by DNS."""
    return [
        ClientTarget(f"{name}.{namespace}.svc.cluster.local", ip, port, path)
        for namespace, name, ip, port, path in services
    ]
