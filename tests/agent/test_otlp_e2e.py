"""A real OpenTelemetry client reports a Service's latency to the agent, over OTLP/HTTP and
OTLP/gRPC: what it recorded is what /metrics shows, in the Service's layout with its SLO as
an exact boundary; a value recorded in a sampled span is an exemplar with its trace id."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.core.services import ServiceRef
from exporter.settings import ListenAddress
from exporter.simulator import ApiServer
from exporter.simulator.services import service
from tests.agent.conftest import running_agent
from tests.conftest import free_port, wait_for


@pytest.fixture
async def otlp_agent(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    async with running_agent(kubeconfig, tmp_path, otlp=True) as agent:
        yield agent


async def test_sdk_client_latency_on_metrics(api: ApiServer, otlp_agent: Agent) -> None:
    slo = {"tailwatch.io/slo-latency": "50ms"}
    api.store.create("services", service("checkout", namespace="shop", annotations=slo))
    await wait_for(lambda: ServiceRef("shop", "checkout") in otlp_agent.catalog.specs, "Service")

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"http://{otlp_agent.settings.otlp_listen}/v1/metrics",
                           timeout=10),
        export_interval_millis=math.inf,
    )  # fmt: skip
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": "frontend"}),
        shutdown_on_exit=False,
    )
    try:
        # The bounds the HTTP semantic conventions advise (instrumentations pass them); the
        # SDK's own default bounds are made for milliseconds.
        semconv = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
        histogram = provider.get_meter("tests").create_histogram(
            "http.client.request.duration", unit="s", explicit_bucket_boundaries_advisory=semconv
        )
        values = [0.004, 0.012, 0.030, 0.045, 0.2, 0.9]
        attributes = {"server.address": "checkout.shop.svc.cluster.local", "server.port": 8080}
        for v in values:
            histogram.record(v, attributes)
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        histogram.record(0.02, attributes)  # a second, cumulative export adds only this one
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        await asyncio.to_thread(provider.shutdown)

    url = f"http://{otlp_agent.settings.listen}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = (("namespace", "shop"), ("service", "checkout"), ("state", "steady"))
    name = "tailwatch_client_request_duration_seconds"
    assert samples[f"{name}_count", labels] == 7
    assert samples[f"{name}_sum", labels] == pytest.approx(sum(values) + 0.02)
    # The SLO threshold is an exact boundary. The SDK's own buckets (…, 0.025, 0.05, …)
    # also align with it here, so exactly the five values at or under 50 ms are below it.
    slo_bucket = tuple(sorted((*labels, ("le", "0.05"))))
    assert samples[f"{name}_bucket", slo_bucket] == 5
    assert samples["tailwatch_otlp_datapoints_total", (("outcome", "accepted"),)] == 2


async def test_sdk_over_grpc_to_the_agent(api: ApiServer, kubeconfig: Path, tmp_path: Path) -> None:
    """--otlp-grpc-listen: the SDK's gRPC exporter, gzip-compressed, reaches the same
    histograms; its other metrics are counted as ignored, not rejected."""
    grpc_listen = ListenAddress("127.0.0.1", free_port())
    async with running_agent(kubeconfig, tmp_path, otlp_grpc_listen=grpc_listen) as agent:
        api.store.create("services", service("checkout", namespace="shop"))
        await wait_for(lambda: ServiceRef("shop", "checkout") in agent.catalog.specs, "Service")
        exporter = GrpcExporter(
            endpoint=str(grpc_listen), insecure=True, timeout=10, compression=Compression.Gzip
        )
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        try:
            meter = provider.get_meter("tests")
            histogram = meter.create_histogram(
                "rpc.client.call.duration", unit="s",
                explicit_bucket_boundaries_advisory=[0.01, 0.05, 0.1, 0.5, 1],
            )  # fmt: skip
            meter.create_counter("rpc.client.calls").add(3)  # not tailwatch's
            for value in (0.004, 0.03, 0.2):
                histogram.record(value, {"server.address": "checkout.shop.svc"})
            assert await asyncio.to_thread(provider.force_flush, 10_000)
        finally:
            await asyncio.to_thread(provider.shutdown)

        url = f"http://{agent.settings.listen}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = (("namespace", "shop"), ("service", "checkout"), ("state", "steady"))
    assert samples["tailwatch_client_request_duration_seconds_count", labels] == 3
    outcome = "tailwatch_otlp_datapoints_total"
    assert samples[outcome, (("outcome", "accepted"),)] == 1
    assert samples[outcome, (("outcome", "ignored"),)] == 1


async def test_sdk_exemplars_link_a_bucket_to_the_trace(api: ApiServer, otlp_agent: Agent) -> None:
    """The SDK's default exemplar filter (trace_based) keeps a measurement made in a sampled
    span as an exemplar: the agent writes it in OpenMetrics on the bucket of its value, with
    the span's trace and span ids; a measurement outside any span has none."""
    api.store.create("services", service("checkout", namespace="shop"))
    await wait_for(lambda: ServiceRef("shop", "checkout") in otlp_agent.catalog.specs, "Service")
    tracer = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False).get_tracer("tests")
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"http://{otlp_agent.settings.otlp_listen}/v1/metrics",
                           timeout=10),
        export_interval_millis=math.inf,
    )  # fmt: skip
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        histogram = provider.get_meter("tests").create_histogram(
            "http.client.request.duration", unit="s",
            explicit_bucket_boundaries_advisory=[0.01, 0.05, 0.1, 0.5, 1],
        )  # fmt: skip
        attributes = {"server.address": "checkout.shop.svc", "server.port": 8080}
        with tracer.start_as_current_span("GET /cart") as span:
            histogram.record(0.0731, attributes)
            context = span.get_span_context()
        histogram.record(0.3, attributes)  # in no span: no exemplar
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        await asyncio.to_thread(provider.shutdown)

    url = f"http://{otlp_agent.settings.listen}/metrics"
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=accept) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        text = await resp.text()
    family = next(
        f for f in parse_openmetrics(text) if f.name == "tailwatch_client_request_duration_seconds"
    )
    exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.exemplar}
    assert list(exemplars) == ["0.1"]  # the agent's layout: 0.0731 is in (0.07, 0.1]
    exemplar = exemplars["0.1"]
    assert exemplar.labels == {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
    assert exemplar.value == pytest.approx(0.0731)
    assert exemplar.timestamp is not None
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert "trace_id" not in await resp.text()  # the text format 0.0.4 has none
