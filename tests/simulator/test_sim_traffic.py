"""The simulated client: real requests at a steady rate, reported as the OpenTelemetry
http.client.request.duration histogram over OTLP/HTTP protobuf, which the agent's own
OTLP receiver accepts."""

from __future__ import annotations

import asyncio

from exporter.core.catalog import split_service_name
from exporter.core.services import ServiceRef
from exporter.otlp import LatencyDelta, OtlpReceiver
from exporter.settings import ListenAddress
from exporter.simulator.dataplane import PodServer
from exporter.simulator.traffic import BOUNDS, METRIC, ClientTarget, ServiceClient, http_get
from tests.conftest import free_port, wait_for

WEB = ServiceRef("shop", "web")


async def test_requests_are_reported_over_otlp_to_the_agents_receiver() -> None:
    port = free_port()
    server = PodServer("127.0.98.1", port, lambda: 0.004, "web-1")
    await server.start()
    down = ClientTarget("gone.shop.svc.cluster.local", "127.0.98.2", port)  # nothing listens
    web = ClientTarget("web.shop.svc.cluster.local", "127.0.98.1", port, "/api")
    deltas: list[LatencyDelta] = []

    def resolve(address: str, _: int | None) -> ServiceRef | None:
        return split_service_name(address)  # as the agent's catalog does for DNS names

    receiver = OtlpReceiver(resolve, deltas.append)
    otlp = ListenAddress("127.0.0.1", free_port())
    runner = await receiver.start(otlp)
    client = ServiceClient(
        [web, down], rate=50, otlp_url=f"http://{otlp}/v1/metrics", export_interval=0.1, seed=3
    )
    task = asyncio.create_task(client.run())
    try:
        await wait_for(lambda: client.counts(web).get("ok", 0) >= 20, "20 answered requests")
        await wait_for(lambda: client.counts(down).get("ConnectionRefusedError"), "refusals")
        await wait_for(
            lambda: sum(d.count for d in deltas if d.service == WEB) >= 20, "deltas for web"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await server.close()
    assert client.export_failures == 0
    web_deltas = [d for d in deltas if d.service == WEB]
    assert {d.metric for d in web_deltas} == {METRIC}
    # Each request waited 4 ms in the pod: every count is in the buckets from 3 ms up.
    for d in web_deltas:
        assert all(bucket[0] >= 0.003 for bucket in d.buckets), d.buckets
    assert server.served >= 20
    request = client.export_request()
    [metric] = request.resource_metrics[0].scope_metrics[0].metrics
    points = metric.histogram.data_points
    failed = [p for p in points if any(a.key == "error.type" for a in p.attributes)]
    assert failed and all(p.count > 0 for p in failed)
    assert all(list(p.explicit_bounds) == list(BOUNDS) for p in points)


async def test_http_get_reports_failures_as_error_types() -> None:
    port = free_port()
    nothing = ClientTarget("x", "127.0.98.3", port)
    assert await http_get(nothing, timeout=1.0) == "ConnectionRefusedError"
    slow = PodServer("127.0.98.4", port, lambda: 5.0, "slow")
    await slow.start()
    try:
        assert await http_get(ClientTarget("x", "127.0.98.4", port), timeout=0.05) == "timeout"
    finally:
        await slow.close(abort=True)
