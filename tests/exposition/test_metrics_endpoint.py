"""/metrics of the running agent over HTTP: what prometheus_client would render for the same
state, OpenMetrics and gzip as Prometheus asks for them, protobuf with native histograms as
Prometheus asks with native histograms on, an event visible at the next scrape, the series
of a deleted pod gone; and the JSON API routes."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.agent import Agent
from exporter.cgroups.synthetic import TreeLayout, write_tree
from exporter.exposition import PROTOBUF_CONTENT_TYPE
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.agent.conftest import running_agent
from tests.agent.test_cgroups_e2e import synthetic
from tests.conftest import wait_for
from tests.exposition.prometheus_proto import delimited
from tests.exposition.test_exposition import PROMETHEUS_ACCEPT, PROTOBUF_ACCEPT, families

LAYOUT = TreeLayout(version="v2", driver="systemd", runtime="containerd")
#: Made of two clocks read at each render: may differ in the last digits between two.
AGE = "tailwatch_watch_last_event_timestamp_seconds"
#: The process' own CPU, memory and descriptors move between two renders too.
PROCESS = "process_"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def agent(api: ApiServer, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Agent]:
    pods = [
        api.store.create("pods", objects.deployment_pod("web", node="node-a", seed=i,
                                                        containers=("app", "envoy")))
        for i in range(2)
    ]  # fmt: skip
    root = tmp_path / "cgroup"
    write_tree(root, LAYOUT, [synthetic(p, cpu_s=5.0 * (i + 1)) for i, p in enumerate(pods)])
    async with running_agent(kubeconfig, root, sample_interval=0.05) as running:
        await wait_for(lambda: _cpu_pods(running) == {p["metadata"]["name"] for p in pods},
                       "both pods' cgroups sampled")  # fmt: skip
        yield running


def _cpu_pods(agent: Agent) -> set[str]:
    latest = agent.cgroups.latest
    return {s.pod for s in latest.samples} if latest else set()


async def get(agent: Agent, path: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as http,
        http.get(f"http://{agent.settings.listen}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.read(), dict(resp.headers)


async def scrape(agent: Agent) -> Samples:
    """/metrics as Prometheus 2.x fetches it: OpenMetrics, gzip."""
    status, body, headers = await get(agent, "/metrics", Accept=PROMETHEUS_ACCEPT,
                                      **{"Accept-Encoding": "gzip"})  # fmt: skip
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_openmetrics(text)
        for s in family.samples
    }


def with_pod(samples: Samples, pod: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [key for key in samples if ("pod", pod) in key[1]]


async def test_metrics_endpoint_follows_the_agent(
    agent: Agent, api: ApiServer, cluster: Cluster
) -> None:
    # The same families and samples as prometheus_client renders from the same collectors
    # (both renders run back to back on the loop; the watch ages move with the clock).
    def same_as_prometheus_client() -> bool:
        latest = agent.cgroups.latest
        ours = families(parse_text(agent.exposition.render()))
        reference = families(parse_text(generate_latest(agent.registry).decode()))
        if agent.cgroups.latest is not latest:
            return False  # a sampling pass landed in between: try again
        for got in (ours, reference):
            for key in [k for k in got if k[0] == AGE or k[0].startswith(PROCESS)]:
                got[key] = [(name, labels, 0.0) for name, labels, _ in got[key]]
        assert ours == reference
        return True

    await wait_for(same_as_prometheus_client, "two renders of the same sampling pass")

    pods = sorted(p["metadata"]["name"] for p in api.store.list("pods"))
    samples = await scrape(agent)
    for pod in pods:
        names = {name for name, _ in with_pod(samples, pod)}
        assert {"tailwatch_pod_info", "tailwatch_container_cpu_usage_seconds_total"} <= names

    # A restart is on the next scrape: nothing cached hides it.
    cluster.restart("default", pods[0], "app", "OOMKilled")
    restart = ("tailwatch_container_restarts_total", (("container", "app"),
               ("namespace", "default"), ("pod", pods[0]), ("reason", "OOMKilled")))  # fmt: skip

    async def restarted() -> bool:
        return (await scrape(agent)).get(restart) == 1

    await wait_for(restarted, "the restart on /metrics")

    # The pod is deleted: every series of it leaves /metrics (containers, pod_info, restarts).
    api.store.remove("pods", "default", pods[0])

    async def gone() -> Samples | None:
        now = await scrape(agent)
        return now if not with_pod(now, pods[0]) else None

    after = await wait_for(gone, "the series of the deleted pod to go")
    assert with_pod(after, pods[1])

    # Protobuf, gzip, as Prometheus asks for it with native histograms: every family with
    # series, the latency histograms as native histograms (no classic buckets).
    status, body, headers = await get(agent, "/metrics", Accept=PROTOBUF_ACCEPT,
                                      **{"Accept-Encoding": "gzip"})  # fmt: skip
    assert status == 200
    assert headers["Content-Type"] == PROTOBUF_CONTENT_TYPE
    assert headers["Content-Encoding"] == "gzip"
    decoded = {f.name: f for _, f in delimited(gzip.decompress(body))}
    cpu = decoded["tailwatch_container_cpu_usage_seconds_total"]
    assert {p.value for m in cpu.metric for p in m.label if p.name == "pod"} == {pods[1]}
    durations = decoded["tailwatch_collector_duration_seconds"]
    (histogram,) = [m.histogram for m in durations.metric]
    assert histogram.sample_count > 0
    assert (histogram.schema, histogram.zero_threshold) == (4, 2**-20)
    assert not histogram.bucket
    assert sum(s.length for s in histogram.positive_span) == len(histogram.positive_delta)

    # Plain text for a scraper that asks for nothing.
    status, body, headers = await get(agent, "/metrics", **{"Accept-Encoding": "identity"})
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "Content-Encoding" not in headers
    assert families(parse_text(body.decode()))


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("/api/v1/targets", {"node", "services", "targets"}),
        ("/api/v1/episodes", {"node", "open", "recent"}),
    ],
)
async def test_json_routes(agent: Agent, path: str, keys: set[str]) -> None:
    status, body, headers = await get(agent, path)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc: dict[str, Any] = json.loads(body)
    assert keys <= set(doc)
    assert doc["node"] == "node-a"
