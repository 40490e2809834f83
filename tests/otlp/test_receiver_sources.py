"""--otlp-sources=local: OTLP only from the pods of the receiver's node and the node itself.

Every address here is loopback, so the policy is tested by keeping the client's address out
of the allowed set: the pods of the node have 127.0.0.x addresses and the refused client
connects from another 127.0.0.y (a socket bound to it before it connects). That is why the
policy allows exactly 127.0.0.1 and ::1 of loopback, not all of 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from google.rpc.status_pb2 import Status
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.lifecycle import PodLifecycleTracker
from exporter.core.pods import PodSnapshot, parse_pod
from exporter.core.services import ServiceRef
from exporter.metrics import AgentMetrics
from exporter.otlp import OtlpReceiver
from exporter.otlp.receiver import IP_GRACE, LocalSources, normalize_address
from exporter.settings import ListenAddress
from exporter.simulator import ApiServer, objects
from exporter.simulator.services import service
from exporter.watches import PodWatch
from tests.agent.conftest import running_agent
from tests.conftest import wait_for
from tests.otlp.test_receiver import catalog, good_request

POD_IP, HOST_IP, STRANGER = "127.0.0.5", "127.0.0.6", "127.0.0.7"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def pod(name: str, pod_ip: str, host_ip: str, node: str = "node-a") -> PodSnapshot:
    return parse_pod(objects.deployment_pod(name, node=node, pod_ip=pod_ip, host_ip=host_ip))


# -- the policy -----------------------------------------------------------------------------


def test_addresses_are_compared_normalized() -> None:
    assert normalize_address("::ffff:127.0.0.5") == ipaddress.ip_address("127.0.0.5")
    assert normalize_address("fe80::1%eth0") == ipaddress.ip_address("fe80::1")
    assert normalize_address(" 127.0.0.5 ") == ipaddress.ip_address("127.0.0.5")
    assert normalize_address("web.shop") is None
    assert normalize_address("") is None


def test_the_pods_the_node_and_its_loopback_are_allowed() -> None:
    sources = LocalSources(lambda: [pod("web", POD_IP, HOST_IP)])
    for allowed in (POD_IP, HOST_IP, "::ffff:127.0.0.5", "127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert sources.allows(allowed), allowed
    for refused in (STRANGER, "127.0.0.2", "::2", "", "not-an-address"):
        assert not sources.allows(refused), refused


def test_pod_and_host_ips_of_every_family_are_read_from_the_status() -> None:
    body = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, host_ip=HOST_IP)
    body["status"]["podIPs"] = [{"ip": POD_IP}, {"ip": "::5"}, {"ip": 7}, "junk"]
    body["status"]["hostIPs"] = "not a list"  # left out: status.hostIP is read instead
    snapshot = parse_pod(body)
    assert snapshot.pod_ips == (POD_IP, "::5")
    assert snapshot.host_ips == (HOST_IP,)
    sources = LocalSources(lambda: [snapshot])
    assert sources.allows("::5") and sources.allows(HOST_IP)


def test_the_set_is_built_once_per_change_of_the_pods_not_per_request() -> None:
    calls = 0

    def pods() -> Iterable[PodSnapshot]:
        nonlocal calls
        calls += 1
        return [pod("web", POD_IP, HOST_IP)]

    sources = LocalSources(pods)
    for _ in range(1000):
        assert sources.allows(POD_IP) and not sources.allows(STRANGER)
    assert calls == 1
    sources.changed()
    assert sources.allows(POD_IP) and sources.allows(HOST_IP)
    assert calls == 2


def test_the_pod_watch_keeps_the_set_current() -> None:
    tracker = PodLifecycleTracker(node="node-a")
    sources = LocalSources(tracker.pods, lambda: tracker.synced)
    watch = sources.watching(PodWatch(tracker, AgentMetrics(), lambda event: None, lambda: 0.0))
    assert not sources.known()
    watch.on_list([objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, host_ip=HOST_IP)])
    assert sources.known() and sources.allows(POD_IP)
    late = objects.deployment_pod("api", node="node-a", pod_ip=STRANGER, host_ip=HOST_IP)
    assert not sources.allows(STRANGER)
    watch.on_event("ADDED", late)
    assert sources.allows(STRANGER)
    watch.on_event("DELETED", late)
    assert not sources.allows(STRANGER)


# -- over HTTP ------------------------------------------------------------------------------


@asynccontextmanager
async def receiver(sources: LocalSources) -> AsyncIterator[tuple[OtlpReceiver, str]]:
    otlp = OtlpReceiver(catalog().resolve, lambda _: None, sources=sources)
    runner = await otlp.start(ListenAddress("127.0.0.1", 0))
    host, port = runner.addresses[0][:2]
    try:
        yield otlp, f"http://{host}:{port}/v1/metrics"
    finally:
        await runner.cleanup()


async def post_from(
    source: str, url: str, headers: dict[str, str] = PROTOBUF, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=good_request() if body is None else body, headers=headers) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_a_stranger_gets_403_in_its_encoding_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "exporter.otlp.receiver")
    async with receiver(LocalSources(lambda: [pod("web", POD_IP, HOST_IP)])) as (otlp, url):
        status, headers, body = await post_from(STRANGER, url)
        assert (status, headers["Content-Type"]) == (403, "application/x-protobuf")
        assert headers["Connection"] == "close"  # no kept-alive connection for a stranger
        message = Status.FromString(body).message
        assert message == (
            "127.0.0.7 is neither a pod of this node nor the node (--otlp-sources=local)"
        )
        status, headers, body = await post_from(STRANGER, url, JSON, b"{}")
        assert (status, headers["Content-Type"]) == (403, "application/json")
        assert "127.0.0.7 is neither a pod" in body.decode()
        assert otlp.dropped() == {"otlp_untrusted_source": 2}
        assert not any(otlp.outcomes().values())  # nothing of it was read
        for source in (POD_IP, HOST_IP, "127.0.0.1"):
            assert (await post_from(source, url))[0] == 200, source
    logged = [r.getMessage() for r in caplog.records if "refused (403)" in r.getMessage()]
    assert len(logged) == 1 and "127.0.0.7" in logged[0]


async def test_before_the_pods_are_listed_a_stranger_gets_a_retryable_503() -> None:
    listed = False
    sources = LocalSources(lambda: [pod("web", POD_IP, HOST_IP)] if listed else [], lambda: listed)
    async with receiver(sources) as (otlp, url):
        status, headers, _ = await post_from(POD_IP, url)
        assert (status, headers["Retry-After"]) == (503, "2")
        assert (await post_from("127.0.0.1", url))[0] == 200  # the node itself, always
        listed = True
        sources.changed()
        assert (await post_from(POD_IP, url))[0] == 200
        assert otlp.dropped() == {"otlp_sources_unknown": 1}


# -- the agent ------------------------------------------------------------------------------


def dropped(text: str) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "tailwatch_dropped_total"
    }


async def test_the_agent_takes_otlp_from_its_node_only(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    """Pods of node-a and node-b in the simulator; the agent of node-a (default
    --otlp-sources=local) takes OTLP from node-a's pod and refuses node-b's."""
    here = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, host_ip=HOST_IP)
    there = objects.deployment_pod("api", node="node-b", pod_ip=STRANGER, host_ip="127.0.0.8")
    for body in (here, there):
        api.store.create("pods", body)
    api.store.create("services", service("web", namespace="shop"))  # what the points are of
    async with running_agent(kubeconfig, tmp_path, otlp=True) as agent:
        assert agent.settings.otlp_sources == "local"
        await wait_for(lambda: ServiceRef("shop", "web") in agent.catalog.specs, "the Service")
        url = f"http://{agent.settings.otlp_listen}/v1/metrics"
        assert (await post_from(POD_IP, url))[0] == 200
        assert (await post_from(STRANGER, url))[0] == 403
        # A pod that arrives later is allowed once the watch has it.
        late = objects.deployment_pod("late", node="node-a", pod_ip="127.0.0.9", host_ip=HOST_IP)
        api.store.create("pods", late)

        async def allowed() -> bool:
            return (await post_from("127.0.0.9", url))[0] == 200

        await wait_for(allowed, "the late pod to be allowed")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{agent.settings.listen}/metrics") as response,
        ):
            text = await response.text()
        assert dropped(text).get("otlp_untrusted_source", 0) >= 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_new_pod_without_its_ip_yet_makes_refusals_retryable_for_a_while() -> None:
    """A pod of the node is created; it exports before the watch brought its IP. While a pod
    of the node has been waiting for its IP for less than IP_GRACE, an unknown source gets
    a retryable 503 (its data comes once the IP is known); afterwards strangers get 403."""
    clock = Clock()
    tracker = PodLifecycleTracker(node="node-a")
    sources = LocalSources(tracker.pods, lambda: tracker.synced, clock=clock)
    watch = sources.watching(PodWatch(tracker, AgentMetrics(), lambda event: None, lambda: 0.0))
    watch.on_list([objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, host_ip=HOST_IP)])
    late = objects.deployment_pod("late", node="node-a", state="creating", host_ip=HOST_IP)
    async with receiver(sources) as (otlp, url):
        assert (await post_from(STRANGER, url))[0] == 403
        watch.on_event("ADDED", late)  # no IP yet
        status, headers, body = await post_from("127.0.0.9", url)  # its IP, not known yet
        assert (status, headers["Retry-After"]) == (503, "2")
        assert "new pod without its IP yet" in Status.FromString(body).message
        clock.now += IP_GRACE - 1
        assert (await post_from("127.0.0.9", url))[0] == 503
        running = objects.deployment_pod(
            "late", node="node-a", pod_ip="127.0.0.9", host_ip=HOST_IP, state="running"
        )
        watch.on_event("MODIFIED", running)
        assert (await post_from("127.0.0.9", url))[0] == 200
        assert (await post_from(STRANGER, url))[0] == 403  # no pod waits for its IP now

        # A pod that never gets an IP holds the grace open for IP_GRACE only.
        stuck = objects.deployment_pod("stuck", node="node-a", state="creating", host_ip=HOST_IP)
        watch.on_event("ADDED", stuck)
        assert (await post_from(STRANGER, url))[0] == 503
        clock.now += IP_GRACE
        assert (await post_from(STRANGER, url))[0] == 403
        assert otlp.dropped() == {"otlp_sources_unknown": 3, "otlp_untrusted_source": 3}


async def test_while_the_pod_watch_is_down_an_unknown_source_gets_a_retryable_503(
    api: ApiServer, kubeconfig: Path, tmp_path: Path
) -> None:
    """The agent's pod watch breaks after its first list: a pod created meanwhile may export
    before the agent hears of it, so an unknown source gets 503 (retried), not 403 (lost),
    until the watch is back; the pods already known are served all along."""
    here = objects.deployment_pod("web", node="node-a", pod_ip=POD_IP, host_ip=HOST_IP)
    api.store.create("pods", here)
    api.store.create("services", service("web", namespace="shop"))  # what the points are of
    async with running_agent(kubeconfig, tmp_path, otlp=True) as agent:
        await wait_for(lambda: ServiceRef("shop", "web") in agent.catalog.specs, "the Service")
        url = f"http://{agent.settings.otlp_listen}/v1/metrics"
        assert (await post_from(STRANGER, url))[0] == 403
        api.faults.fail_next(10_000, 500, "pods")
        api.faults.drop_watches("pods")
        await wait_for(lambda: agent.pods_health.failing_since is not None, "the watch down")
        status, headers, _ = await post_from(STRANGER, url)
        assert (status, headers["Retry-After"]) == (503, "2")
        assert (await post_from(POD_IP, url))[0] == 200
        api.faults.clear()
        await wait_for(lambda: agent.pods_health.failing_since is None, "the watch back")
        assert (await post_from(STRANGER, url))[0] == 403
        assert agent.otlp.dropped() == {"otlp_untrusted_source": 2, "otlp_sources_unknown": 1}
