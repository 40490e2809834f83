"""Fixtures for the API simulator's tests: a running server, an HTTP session on it, tiny object
builders, and a reader for watch streams that waits with deadlines instead of sleeping."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from exporter.simulator import ApiServer

TOKEN = "sim-token"


def make_pod(
    name: str,
    namespace: str = "default",
    node: str | None = "node-a",
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    grace: int | None = None,
) -> dict[str, Any]:
    """A minimal Pod that the official client can deserialize."""
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    if node is not None:
        spec["nodeName"] = node
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": spec,
        "status": {"phase": phase},
    }


def make_service(
    name: str, namespace: str = "default", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "clusterIP": "127.96.0.10"},
    }


def make_endpoint_slice(name: str, service: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.10.1"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll `predicate` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def async_wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class WatchReader:
    """Reads a JSON-lines watch response event by event, each read bounded by a deadline."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def line(self, timeout: float = 5.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.response.content.readline()

    async def event(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await self.line(timeout)
        assert raw, "the watch ended"
        event = json.loads(raw)
        assert isinstance(event, dict)
        return event

    async def events(
        self, n: int, timeout: float = 5.0, skip_bookmarks: bool = True
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < n:
            event = await self.event(timeout)
            if skip_bookmarks and event["type"] == "BOOKMARK":
                continue
            out.append(event)
        return out

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first event matching `predicate`, within `timeout` seconds overall."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.event(timeout)
                if predicate(event):
                    return event

    async def end(self, timeout: float = 5.0) -> None:
        """Assert the server ends the stream cleanly (EOF with no further event)."""
        raw = await self.line(timeout)
        assert raw == b"", f"expected the end of the watch, got {raw[:200]!r}"


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    async with ApiServer(token=TOKEN, bookmark_interval=0.05) as srv:
        yield srv


@pytest.fixture
async def http(server: ApiServer) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as session:
        yield session


# The helpers reach tests as fixtures: test modules never import conftest, which is ambiguous
# when several test directories have one.
@pytest.fixture(name="make_pod")
def _make_pod_fixture() -> Callable[..., dict[str, Any]]:
    return make_pod


@pytest.fixture(name="make_service")
def _make_service_fixture() -> Callable[..., dict[str, Any]]:
    return make_service


@pytest.fixture(name="make_endpoint_slice")
def _make_endpoint_slice_fixture() -> Callable[..., dict[str, Any]]:
    return make_endpoint_slice


@pytest.fixture(name="reader")
def _reader_fixture() -> type[WatchReader]:
    return WatchReader


@pytest.fixture(name="wait_until")
def _wait_until_fixture() -> Callable[..., None]:
    return wait_until


@pytest.fixture(name="async_wait_until")
def _async_wait_until_fixture() -> Callable[..., Any]:
    return async_wait_until
