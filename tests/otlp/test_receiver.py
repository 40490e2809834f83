"""The receiver over real HTTP on loopback: the OpenTelemetry Python SDK as the client,
hand-made bad input, and the agent's counters."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Histogram as HistogramInstrument
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from exporter.core.catalog import ServiceCatalog
from exporter.core.services import ServiceRef
from exporter.exposition import Exposition
from exporter.otlp import (
    IngestLimits,
    LatencyDelta,
    OtlpReceiver,
    OtlpSource,
    ReceiverLimits,
)
from exporter.otlp.receiver import INLINE_DECODED_BYTES
from exporter.settings import ListenAddress
from exporter.simulator import objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service
from tests.conftest import wait_for
from tests.otlp.builders import SEMCONV_BOUNDS, T0, explicit_point, metric, request
from tests.otlp.test_decode import gzip_bomb

WEB = ServiceRef("shop", "web")
METRIC = "http.client.request.duration"
# What a client records against the Service, by DNS name; values in seconds.
VALUES = (0.003, 0.012, 0.012, 0.040, 0.250, 0.9, 1.5, 12.0)
ATTRS = {"server.address": "web.shop.svc.cluster.local", "server.port": 8080,
         "http.request.method": "GET"}  # fmt: skip
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def catalog() -> ServiceCatalog:
    """The Service view the lead wires in: web.shop, ClusterIP 127.96.0.7, one endpoint."""
    web_ = service("web", namespace="shop", cluster_ip="127.96.0.7")
    pod = objects.deployment_pod("web", namespace="shop", node="node-a", pod_ip="127.244.1.5")
    view = ServiceCatalog(node="node-a")
    assert view.sync_services([web_], 0.0) == []
    slice_ = endpoint_slice(web_, [endpoint_of_pod(pod)])
    slice_["metadata"]["uid"] = "s1"
    view.endpoints.sync([slice_], 0.0)
    return view


@dataclass
class Agent:
    receiver: OtlpReceiver
    url: str
    deltas: list[LatencyDelta] = field(default_factory=list)

    def totals(self) -> tuple[int, float]:
        return sum(d.count for d in self.deltas), sum(d.sum_seconds for d in self.deltas)

    def exposition(self) -> str:
        return Exposition([OtlpSource(self.receiver.outcomes)]).render()


@asynccontextmanager
async def serve(limits: ReceiverLimits | None = None) -> AsyncIterator[Agent]:
    """The receiver on a loopback port, with the Service view as its resolver."""
    deltas: list[LatencyDelta] = []
    receiver = OtlpReceiver(catalog().resolve, deltas.append, limits=limits)
    runner = await receiver.start(ListenAddress("127.0.0.1", 0))
    host, port = runner.addresses[0][:2]
    try:
        yield Agent(receiver, f"http://{host}:{port}/v1/metrics", deltas)
    finally:
        await runner.cleanup()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    async with serve() as running:
        yield running


@contextmanager
def sdk_client(
    reader: MetricReader, *, exponential: bool = False, bounds: Sequence[float] = SEMCONV_BOUNDS
) -> Iterator[tuple[MeterProvider, HistogramInstrument]]:
    views = [View(instrument_name=METRIC, aggregation=ExponentialBucketHistogramAggregation())]
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "checkout", "k8s.namespace.name": "shop"}),
        views=views if exponential else (),
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("tests.otlp")
    histogram = meter.create_histogram(
        METRIC, unit="s", explicit_bucket_boundaries_advisory=list(bounds)
    )
    try:
        yield provider, histogram
    finally:
        provider.shutdown()


def exporting_reader(url: str, *, delta: bool = False) -> PeriodicExportingMetricReader:
    temporality = {Histogram: AggregationTemporality.DELTA} if delta else None
    # Exported only on force_flush: an infinite interval starts no export thread.
    return PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=url, preferred_temporality=temporality, timeout=10),
        export_interval_millis=math.inf,
    )


async def flush(provider: MeterProvider) -> None:
    """Export now. The SDK's exporter blocks, so it runs on a thread; the receiver hands the
    deltas to the sink before it answers, so they are there when this returns."""
    assert await asyncio.to_thread(provider.force_flush, 10_000)


async def post(
    agent: Agent,
    body: bytes,
    headers: dict[str, str] = PROTOBUF,
    method: str = "POST",
    url: str | None = None,
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url or agent.url, data=io.BytesIO(body), headers=headers
        ) as response,
    ):
        return response.status, response.content_type, await response.read()


# -- the real client ------------------------------------------------------------------------


async def test_sdk_cumulative_exports_add_up_to_what_was_recorded(agent: Agent) -> None:
    with sdk_client(exporting_reader(agent.url)) as (provider, histogram):
        for value in VALUES:
            histogram.record(value, ATTRS)
        await flush(provider)
        assert agent.totals() == (len(VALUES), pytest.approx(sum(VALUES)))
        assert {d.service for d in agent.deltas} == {WEB}
        # Cumulative: every export repeats the totals; only what is new may count.
        for value in VALUES[:3]:
            histogram.record(value, ATTRS)
        await flush(provider)
        await flush(provider)  # nothing new
        assert agent.totals() == (len(VALUES) + 3, pytest.approx(sum(VALUES) + sum(VALUES[:3])))
    buckets = [(low, high, n) for d in agent.deltas for low, high, n in d.buckets]
    assert (0.003, 0.005, 1) in buckets  # (0, 0.005] narrowed by the export's min
    assert (10.0, 12.0, 1) in buckets  # the overflow bucket, closed by the max
    assert 'tailwatch_otlp_datapoints_total{outcome="accepted"} 3.0' in agent.exposition()


async def test_sdk_delta_temporality(agent: Agent) -> None:
    with sdk_client(exporting_reader(agent.url, delta=True)) as (provider, histogram):
        for round_ in range(3):
            for value in VALUES:
                histogram.record(value * (round_ + 1), ATTRS)
            await flush(provider)
    assert agent.totals() == (3 * len(VALUES), pytest.approx(6 * sum(VALUES)))
    assert [d.count for d in agent.deltas] == [len(VALUES)] * 3


async def test_sdk_exponential_histogram(agent: Agent) -> None:
    with sdk_client(exporting_reader(agent.url), exponential=True) as (provider, histogram):
        for value in VALUES:
            histogram.record(value, ATTRS)
        await flush(provider)
        for value in (0.001, 30.0):  # a wider range: the SDK lowers the scale
            histogram.record(value, ATTRS)
        await flush(provider)
    assert agent.totals() == (len(VALUES) + 2, pytest.approx(sum(VALUES) + 30.001))
    for delta in agent.deltas:
        for low, high, _ in delta.buckets:
            assert 0 < low <= high < 2 * low  # fine buckets, each one's values inside it
    first = agent.deltas[0]
    for value in VALUES:  # every recorded value lies in a bucket of the first export
        assert any(low <= value <= high for low, high, _ in first.buckets), value


async def test_sdk_messages_as_otlp_json(agent: Agent) -> None:
    reader = InMemoryMetricReader()
    with sdk_client(reader) as (_, histogram):
        for value in VALUES:
            histogram.record(value, {"server.address": "127.96.0.7", "server.port": 80})
        histogram.record(0.5, {"server.address": "web"})  # k8s.namespace.name completes it
        histogram.record(0.5, {"server.address": "127.244.1.5"})  # an endpoint's IP
        data = reader.get_metrics_data()
    assert data is not None
    body = json_format.MessageToJson(encode_metrics(data)).encode()
    status, content_type, response = await post(
        agent, gzip.compress(body), {**JSON, "Content-Encoding": "gzip"}
    )
    assert (status, content_type, json.loads(response)) == (200, "application/json", {})
    assert agent.totals() == (len(VALUES) + 2, pytest.approx(sum(VALUES) + 1.0))
    assert {d.service for d in agent.deltas} == {WEB}


# -- bad input ------------------------------------------------------------------------------


def good_request() -> bytes:
    return request(metric([explicit_point([1, 2, 0], bounds=(0.1, 1), total=0.3,
                                          start=time.time_ns())])).SerializeToString()  # fmt: skip


async def assert_healthy(agent: Agent) -> None:
    """The receiver still takes a good request, whatever came before."""
    before = agent.totals()[0]
    status, _, body = await post(agent, good_request())
    assert status == 200 and ExportMetricsServiceResponse.FromString(body).ByteSize() == 0
    assert agent.totals()[0] == before + 3


def status_message(content_type: str, body: bytes) -> str:
    if content_type == "application/json":
        decoded = json.loads(body)
        assert decoded["code"] == 3
        return str(decoded["message"])
    status = Status.FromString(body)  # the real google.rpc.Status reads what we send
    assert status.code == 3
    return str(status.message)


async def test_a_25_mib_body_is_refused_with_413(agent: Agent) -> None:
    status, content_type, body = await post(agent, bytes(25 * 1024 * 1024))
    assert status == 413
    assert "over the limit of 20971520" in status_message(content_type, body)
    assert agent.receiver.dropped() == {"otlp_body_too_large": 1}
    await assert_healthy(agent)


async def test_a_25_mib_body_without_content_length_is_refused_with_413(agent: Agent) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(25):
            yield bytes(1024 * 1024)

    async with (
        aiohttp.ClientSession() as session,
        session.post(agent.url, data=chunks(), headers=PROTOBUF) as response,
    ):
        assert response.status == 413
        assert "over the limit" in status_message(response.content_type, await response.read())
    await assert_healthy(agent)


async def test_a_gzip_bomb_is_refused_with_413_quickly(agent: Agent) -> None:
    started = time.perf_counter()
    status, content_type, body = await post(
        agent, gzip_bomb(1), {**PROTOBUF, "Content-Encoding": "gzip"}
    )
    elapsed = time.perf_counter() - started
    assert status == 413
    assert "decompressed body is larger" in status_message(content_type, body)
    assert elapsed < 5  # generous; it takes ~50 ms: only 20 MiB of the 1 GiB are inflated
    assert agent.receiver.dropped() == {"otlp_body_too_large": 1}
    await assert_healthy(agent)


@pytest.mark.parametrize(
    ("body", "headers"),
    [(b"\x0a\xff\xff garbage", PROTOBUF), (b'{"resourceMetrics": [', JSON),
     (b"\x1f\x8b not gzip", {**PROTOBUF, "Content-Encoding": "gzip"})],
)  # fmt: skip
async def test_undecodable_bodies_are_refused_with_400(
    agent: Agent, body: bytes, headers: dict[str, str]
) -> None:
    status, content_type, response = await post(agent, body, headers)
    assert (status, content_type) == (400, headers["Content-Type"])
    assert re.search("is not (a )?valid", status_message(content_type, response))
    assert agent.receiver.dropped() == {"otlp_decode_error": 1}
    await assert_healthy(agent)


async def test_unsupported_media_and_methods(agent: Agent) -> None:
    status, content_type, body = await post(agent, b"x", {"Content-Type": "text/plain"})
    assert status == 415 and "application/x-protobuf" in status_message(content_type, body)
    status, _, _ = await post(agent, b"x", {**PROTOBUF, "Content-Encoding": "br"})
    assert status == 415
    assert (await post(agent, b"", method="GET"))[0] == 405
    assert (await post(agent, b"", url=agent.url.replace("metrics", "traces")))[0] == 404
    assert agent.receiver.dropped() == {"otlp_unsupported_media_type": 2}
    await assert_healthy(agent)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_a_request_whose_points_are_all_rejected_is_a_partial_success(
    agent: Agent, encoding: str
) -> None:
    """Not a 400: an exporter (a Collector's above all) takes a 400 as permanent and drops
    the whole batch with it; a 200 with partial_success says which points and why."""
    points = [
        explicit_point([1, 0, 0], bounds=(0.1, math.nan), total=0.1),
        explicit_point([1, 0, 0], bounds=(-0.1, 0.1), total=0.1, attrs={"x": 1}),
        explicit_point([1, 0], bounds=(0.1, 0.5), total=0.1, attrs={"x": 2}),
    ]
    msg = request(metric(points))
    if encoding == "json":
        body, headers = json_format.MessageToJson(msg).encode(), JSON
    else:
        body, headers = msg.SerializeToString(), PROTOBUF
    status, content_type, response = await post(agent, body, headers)
    assert status == 200
    parsed = ExportMetricsServiceResponse()
    if encoding == "json":
        json_format.Parse(response, parsed)
    else:
        parsed.ParseFromString(response)
    assert content_type == headers["Content-Type"]
    assert parsed.partial_success.rejected_data_points == 3
    message = parsed.partial_success.error_message
    assert message.startswith("3 data points rejected: 2 malformed (bound ")
    assert "1 malformed (2 bucket_counts for 2 explicit_bounds" in message
    assert 'tailwatch_otlp_datapoints_total{outcome="malformed"} 3.0' in agent.exposition()
    await assert_healthy(agent)


async def test_partial_success(agent: Agent) -> None:
    good = explicit_point([1, 2, 0], bounds=(0.1, 1), total=0.3, start=time.time_ns())
    unmapped = explicit_point([1, 0, 0], bounds=(0.1, 1), total=0.05,
                              attrs={"server.address": "api.stripe.com"})  # fmt: skip
    bad = explicit_point([1, 0], bounds=(0.1, 1), total=0.1, attrs={"x": 1})
    other = metric([explicit_point([1, 0, 0], bounds=(0.1, 1), total=0.05)],
                   name="http.server.request.duration")  # fmt: skip
    status, _, body = await post(agent, request(metric([good, unmapped, bad]), other)
                                 .SerializeToString())  # fmt: skip
    assert status == 200
    partial = ExportMetricsServiceResponse.FromString(body).partial_success
    assert partial.rejected_data_points == 2
    assert "1 unmapped (server.address 'api.stripe.com' is not an opted-in Service" in (
        partial.error_message
    )
    assert agent.totals()[0] == 3
    exposition = agent.exposition()
    for outcome, n in (("accepted", 1), ("unmapped", 1), ("malformed", 1), ("over_limit", 0)):
        assert f'tailwatch_otlp_datapoints_total{{outcome="{outcome}"}} {n}.0' in exposition


async def test_only_unknown_metrics_is_a_plain_success_counted_as_ignored(agent: Agent) -> None:
    """A client or Collector may send all its metrics: the others are not rejected (no
    partial_success for the sender to warn about), and are counted as ignored."""
    other = metric([explicit_point([1, 0, 0], bounds=(0.1, 1), total=0.05)],
                   name="http.server.request.duration")  # fmt: skip
    status, _, body = await post(agent, request(other).SerializeToString())
    assert status == 200 and body == b""
    assert agent.receiver.outcomes() == {
        "accepted": 0, "unmapped": 0, "malformed": 0, "over_limit": 0, "ignored": 1
    }  # fmt: skip
    assert 'tailwatch_otlp_datapoints_total{outcome="ignored"} 1.0' in agent.exposition()


async def test_points_over_the_request_limit_are_rejected_as_partial_success() -> None:
    limits = ReceiverLimits(ingest=IngestLimits(max_points_per_request=2))
    async with serve(limits) as agent:
        now = time.time_ns()
        points = [explicit_point([1, 0, 0], bounds=(0.1, 1), total=0.05, start=now,
                                 attrs={**ATTRS, "i": i}) for i in range(5)]  # fmt: skip
        status, _, body = await post(agent, request(metric(points)).SerializeToString())
        assert status == 200
        partial = ExportMetricsServiceResponse.FromString(body).partial_success
        assert partial.rejected_data_points == 3
        assert "over the limit of 2 data points per request" in partial.error_message
        assert agent.receiver.outcomes()["over_limit"] == 3
        assert sum(d.count for d in agent.deltas) == 2  # the two accepted points, merged


# -- small requests on the loop, large ones on the worker, in the order they came ---------


def _export(points: int, count: int, *, time: int, method: str = "m") -> bytes:
    """One cumulative export of `points` streams (methods "m0".."m{n-1}"), each at `count`."""
    return request(
        metric([explicit_point([count] + [0] * len(SEMCONV_BOUNDS), total=0.001 * count,
                               time=time, attrs={**ATTRS, "http.request.method": f"{method}{i}"})
                for i in range(points)])
    ).SerializeToString()  # fmt: skip


def _worker_running() -> bool:
    return any(t.name == "otlp-ingest" for t in threading.enumerate())


async def test_a_small_request_is_ingested_without_the_worker_thread() -> None:
    async with serve() as agent:
        body = _export(5, 3, time=T0 + 10**9)
        assert len(body) < INLINE_DECODED_BYTES
        status, _, _ = await post(
            agent, gzip.compress(body), {**PROTOBUF, "Content-Encoding": "gzip"}
        )
        assert status == 200 and agent.totals()[0] == 15
        assert not _worker_running()
        large = _export(900, 1, time=T0 + 10**9, method="other")
        assert len(large) > INLINE_DECODED_BYTES
        status, _, _ = await post(agent, large)
        assert status == 200 and agent.totals()[0] == 15 + 900
        assert _worker_running()  # decoded where it cannot hold the loop


async def test_a_small_request_behind_a_queued_large_one_waits_its_turn() -> None:
    """A small export that comes while a large one of the same streams is still queued on
    the worker is ingested after it, not on the loop before it (nor at the same time, on
    the same stream state): the Service's deltas come in the order the exports came."""
    async with serve() as agent:
        await post(agent, _export(1_000, 1, time=T0 + 10**9))  # starts the worker
        gate = threading.Event()
        worker = agent.receiver._worker
        assert worker is not None
        worker.submit(gate.wait)  # the worker is busy until the gate opens
        before = agent.totals()[0]
        large = asyncio.create_task(post(agent, _export(1_000, 2, time=T0 + 2 * 10**9)))
        await wait_for(lambda: agent.receiver._queued == 1, "the large export queued")
        small = asyncio.create_task(post(agent, _export(5, 7, time=T0 + 3 * 10**9)))
        await wait_for(lambda: agent.receiver._queued == 2, "the small export queued behind it")
        gate.set()
        assert [s for s, _, _ in await asyncio.gather(large, small)] == [200, 200]
        # 1,000 streams went from 1 to 2, then five of them from 2 to 7: in that order.
        assert [d.count for d in agent.deltas[-2:]] == [1_000, 5 * 5]
        assert agent.totals()[0] - before == 1_000 + 5 * 5
