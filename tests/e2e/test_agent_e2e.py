"""End to end: the API simulator plus `tailwatch run` as a subprocess, through a kubeconfig.

A scenario of restarts (OOMKilled and Error), an eviction, a rollout and a readiness flap
plays on node-a while pods on node-b change too; the scraped counters must be exactly what
happened on node-a, and `promtool check metrics` must accept the exposition.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from tests.conftest import assert_no_traceback, free_port, wait_for

pytestmark = pytest.mark.e2e

NODE = "node-a"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def key(**labels: str) -> tuple[tuple[str, str], ...]:
    """A series' labels; a workload's have its workload_type beside its workload_kind."""
    if "workload_kind" in labels:
        labels["workload_type"] = labels["workload_kind"].lower()
    return tuple(sorted(labels.items()))


class AgentProcess:
    def __init__(self, port: int, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log = log

    async def get(self, path: str, **headers: str) -> tuple[int, bytes, dict[str, str]]:
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(self.url + path, headers=headers) as resp,
        ):
            return resp.status, await resp.read(), dict(resp.headers)

    async def metrics(self) -> Samples:
        _, body, _ = await self.get("/metrics", **{"Accept-Encoding": "identity"})
        return parse(body.decode())

    async def ready(self) -> bool:
        try:
            status, _, _ = await self.get("/readyz")
        except aiohttp.ClientError:
            return False
        return status == 200


@pytest.fixture
async def agent(kubeconfig: Path, tmp_path: Path) -> AsyncIterator[AgentProcess]:
    port = free_port()
    log = tmp_path / "agent.log"
    cgroup_root = tmp_path / "cgroup"
    cgroup_root.mkdir()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter",
            "run",
            "--kubeconfig",
            str(kubeconfig),
            "--node-name",
            NODE,
            "--listen",
            f"127.0.0.1:{port}",
            "--otlp-listen",
            "",
            "--cgroup-root",
            str(cgroup_root),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBERNETES_SERVICE_HOST": ""},
        )
    agent = AgentProcess(port, proc, log)
    try:
        yield agent
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert_no_traceback(log.read_text(errors="replace"))


async def test_lifecycle_scenario_counts_exactly(
    api: ApiServer, cluster: Cluster, kubeconfig: Path, agent: AgentProcess
) -> None:
    # State before the agent starts: must produce no event at all (silent first list),
    # including the three restarts db-0 had already.
    web = [
        cluster.add(objects.deployment_pod("web", node=NODE, seed=i, created=1000 + i))
        for i in range(2)
    ]
    db = cluster.add(objects.statefulset_pod("db", 0, node=NODE, containers=("app", "backup")))
    cluster.restart("default", db["metadata"]["name"], "app", "OOMKilled")
    apipod = cluster.add(objects.deployment_pod("api", node=NODE, namespace="shop"))
    elsewhere = cluster.add(objects.deployment_pod("web", node="node-b", seed=9))

    await wait_for(agent.ready, "the agent to be ready")
    before = await agent.metrics()
    assert series(before, "tailwatch_pod_events_total") == {}
    info = series(before, "tailwatch_pod_info")
    assert len(info) == 4  # node-b's pod is not this agent's
    assert (
        info[
            key(
                namespace="default",
                pod="db-0",
                workload_kind="StatefulSet",
                workload="db",
                revision=db["metadata"]["labels"]["controller-revision-hash"],
            )
        ]
        == 1
    )

    # 1. the database container is OOM-killed, the API container crashes with an error.
    cluster.restart("default", "db-0", "app", "OOMKilled")
    cluster.restart("shop", apipod["metadata"]["name"], "app", "Error")
    # 2. a web pod's readiness flaps.
    cluster.flap_readiness("default", web[0]["metadata"]["name"])
    # 3. rollout: a revision-2 web pod arrives and becomes ready, a revision-1 pod goes.
    cluster.start(objects.deployment_pod("web", revision=2, node=NODE, state="scheduled"))
    cluster.terminate("default", web[1]["metadata"]["name"])
    cluster.finish_termination("default", web[1]["metadata"]["name"])
    # 4. the kubelet evicts the API pod under memory pressure; it is then deleted.
    cluster.evict("shop", apipod["metadata"]["name"])
    api.store.delete("pods", "shop", apipod["metadata"]["name"])
    # Noise on another node: never counted here.
    cluster.restart("default", elsewhere["metadata"]["name"], "app", "OOMKilled")
    cluster.terminate("default", elsewhere["metadata"]["name"])

    web_events = dict(namespace="default", workload_kind="Deployment", workload="web")
    expected = {
        key(namespace="default", workload_kind="StatefulSet", workload="db",
            event="container_restart", reason="OOMKilled"): 1,
        key(namespace="shop", workload_kind="Deployment", workload="api",
            event="container_restart", reason="Error"): 1,
        # A restarted container starts unready: the pod's Ready goes False (db-0 was
        # already unready after the restart it had before the agent started).
        key(namespace="shop", workload_kind="Deployment", workload="api",
            event="not_ready", reason=""): 1,
        key(**web_events, event="not_ready", reason=""): 1,
        key(**web_events, event="ready", reason=""): 2,
        key(**web_events, event="scheduled", reason=""): 1,
        key(**web_events, event="rollout", reason=""): 1,
        key(**web_events, event="terminating", reason="Deleted"): 1,
        key(**web_events, event="deleted", reason=""): 1,
        key(namespace="shop", workload_kind="Deployment", workload="api",
            event="evicted", reason="Evicted"): 1,
        key(namespace="shop", workload_kind="Deployment", workload="api",
            event="deleted", reason=""): 1,
    }  # fmt: skip

    async def settled() -> Samples | None:
        samples = await agent.metrics()
        got = series(samples, "tailwatch_pod_events_total")
        return samples if got == expected else None

    try:
        after = await wait_for(settled, "the scenario's events on /metrics")
    except AssertionError:
        got = series(await agent.metrics(), "tailwatch_pod_events_total")
        raise AssertionError(f"events differ:\n got {got}\nwant {expected}") from None

    assert series(after, "tailwatch_container_restarts_total") == {
        key(namespace="default", pod="db-0", container="app", reason="OOMKilled"): 1,
        # the api pod's series went with the pod
    }
    startup = series(after, "tailwatch_pod_startup_seconds_count")
    assert startup == {key(namespace="default", workload_kind="Deployment", workload="web"): 1}
    termination = series(after, "tailwatch_pod_termination_seconds_count")
    assert termination == {key(namespace="default", workload_kind="Deployment", workload="web"): 1}
    pods_now = {dict(labels)["pod"] for labels in series(after, "tailwatch_pod_info")}
    assert pods_now == {web[0]["metadata"]["name"], "db-0"} | {
        p for p in pods_now if p.startswith("web-") and p != web[0]["metadata"]["name"]
    }
    assert len(pods_now) == 3
    assert series(after, "tailwatch_dropped_total") == {}
    assert after[("tailwatch_watch_events_total", key(resource="pods", type="ADDED"))] >= 1

    # Every lifecycle event is one JSON log line.
    log_text = agent.log.read_text()
    assert log_text.count('"msg":"lifecycle event"') == sum(expected.values())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_exposition_passes_promtool_and_negotiates(
    cluster: Cluster, agent: AgentProcess
) -> None:
    pod = cluster.add(objects.deployment_pod("web", node=NODE))
    await wait_for(agent.ready, "the agent to be ready")
    cluster.restart("default", pod["metadata"]["name"], "app", "OOMKilled")
    await wait_for(
        lambda: _has(agent, "tailwatch_container_restarts_total"), "a restart on /metrics"
    )

    status, body, headers = await agent.get("/metrics", **{"Accept-Encoding": "identity"})
    assert status == 200
    assert "Content-Encoding" not in headers
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    openmetrics = "application/openmetrics-text; version=1.0.0"
    status, body, headers = await agent.get(
        "/metrics", Accept=openmetrics, **{"Accept-Encoding": "gzip"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).decode().endswith("# EOF\n")

    status, body, _ = await agent.get("/healthz")
    assert status == 200


async def _has(agent: AgentProcess, name: str) -> bool:
    return bool(series(await agent.metrics(), name))


async def test_unreachable_api_server_backs_off_and_is_not_ready(tmp_path: Path) -> None:
    """An API server that is down: the agent keeps running, /readyz says why, backoff bounded."""
    dead = ApiServer()
    async with dead:
        path = dead.write_kubeconfig(tmp_path / "kubeconfig")
    # The simulator is stopped: its port refuses connections now.
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "run", "--kubeconfig", str(path),
        "--node-name", NODE, "--listen", f"127.0.0.1:{port}", "--otlp-listen", "",
        "--cgroup-root", str(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    agent = AgentProcess(port, proc, tmp_path / "unused")
    try:

        async def two_failures() -> Samples | None:
            try:
                samples = await agent.metrics()
            except aiohttp.ClientError:
                return None
            restarts = series(samples, "tailwatch_watch_restarts_total")
            failures = restarts.get(key(resource="pods", reason="connection_error"), 0)
            return samples if failures >= 2 else None

        await wait_for(two_failures, "two failed connection attempts", timeout=30)
        status, body, _ = await agent.get("/readyz")
        assert status == 503
        assert b"pods" in body
        assert proc.returncode is None  # still running, not crash-looping
    finally:
        proc.terminate()
        _, stderr = await proc.communicate()
    assert proc.returncode == 0  # SIGTERM is a clean stop
    assert b"retrying in" in stderr
    assert_no_traceback(stderr.decode(errors="replace"))
