"""`tailwatch episodes` and `kubectl tailwatch episodes` (docs/cli.md) against three real
agents: each on its own node name and its own 127.x address, its pod in the simulator with
that IP and the chart's labels, asked through the simulated API server's pod proxy with an
ordinary kubeconfig, as a user's machine asks a cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter import cli
from exporter.agent import Agent
from exporter.core.services import ServiceRef
from exporter.kube.config import load_connection
from exporter.settings import ListenAddress, Settings
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.objects import ContainerTemplate
from exporter.simulator.services import endpoint_of_pod, endpoint_slice
from tests.agent.conftest import probed_web_service
from tests.certs import CertificateAuthority
from tests.conftest import free_port, wait_for
from tests.kube.test_reflector import FAST

pytestmark = pytest.mark.e2e

AGENTS_NS = "tailwatch"
NODES = ("node-a", "node-b", "node-c")
AGENT_IPS = {node: f"127.61.0.{i}" for i, node in enumerate(NODES, start=1)}
#: A fourth agent pod whose agent never started: the proxy cannot reach it.
DEAD_NODE, DEAD_IP = "node-d", "127.61.0.4"
SERVICE_IP = "127.61.1.1"
POD_IPS = {node: f"127.61.1.{i}" for i, node in enumerate(NODES, start=2)}
WINDOWS = {
    "episode_settle": 0.5,
    "recovery_window": 1.0,
    "recovery_max": 30.0,
    "spike_ratio": 1000.0,  # lifecycle episodes only: no tail spike may open one
}
WEB = ServiceRef("default", "web")
LOADED = 60.0  # deadline for what waits on the agents' watches and ticks on a busy machine


def agent_pod(node: str, ip: str, port: int) -> dict[str, Any]:
    """The chart's agent pod on `node`: its labels, its `metrics` container port."""
    return objects.daemonset_pod(
        "tailwatch",
        namespace=AGENTS_NS,
        node=node,
        pod_ip=ip,
        labels={"app.kubernetes.io/name": "tailwatch", "app.kubernetes.io/component": "agent"},
        containers=[ContainerTemplate("tailwatch", port=port, port_name="metrics",
                                      readiness_probe=True)],
    )  # fmt: skip


@contextlib.asynccontextmanager
async def backend(hosts: Sequence[str]) -> AsyncIterator[int]:
    """One HTTP server answering /healthz on the same port of every host (the Service's
    address and its pods'); yields the port."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    for host in hosts:
        await web.TCPSite(runner, host, port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def agents(
    kubeconfig: Path,
    tmp_path: Path,
    port: int,
    nodes: Sequence[str] = NODES,
    **overrides: dict[str, Any],
) -> AsyncIterator[dict[str, Agent]]:
    """One real agent per node, listening on its node's address and the shared port;
    `overrides[node]` sets more of that agent's settings."""
    running: dict[str, Agent] = {}
    tasks: list[asyncio.Task[None]] = []
    stop = asyncio.Event()
    try:
        for node in nodes:
            root = tmp_path / node
            root.mkdir()
            settings = Settings(
                node_name=node,
                kubeconfig=str(kubeconfig),
                cgroup_root=root,
                listen=ListenAddress(AGENT_IPS[node], port),
                otlp_listen=None,
                sample_interval=1.0,
                log_level="info",
                **{**WINDOWS, **overrides.get(node.replace("-", "_"), {})},  # type: ignore[arg-type]
            )
            agent = Agent(settings, connection=load_connection(str(kubeconfig)), timing=FAST)
            running[node] = agent
            tasks.append(asyncio.create_task(agent.run(stop)))
        for agent in running.values():
            await wait_for(lambda a=agent: a.readiness()[0], "the agents to sync")
        yield running
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def recent(agent: Agent) -> list[dict[str, Any]]:
    doc = agent.episodes_json()
    return list(doc["recent"])


async def run_cli(
    capsys: pytest.CaptureFixture[str], argv: list[str], entry: Any = cli.main
) -> tuple[int, str, str]:
    """The command in-process, in a thread (it runs its own event loop, and the agents
    serve on this one); its exit status and what it printed."""
    capsys.readouterr()
    code = await asyncio.to_thread(entry, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_one_merged_record_per_disruption_across_three_agents(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when stdout is not a terminal
    cluster = Cluster(api.store)
    port = free_port()
    for node in NODES:
        api.store.create("pods", agent_pod(node, AGENT_IPS[node], port))
    api.store.create("pods", agent_pod(DEAD_NODE, DEAD_IP, port))
    async with backend([SERVICE_IP, *POD_IPS.values()]) as web_port:
        svc = probed_web_service(SERVICE_IP, web_port)
        api.store.create("services", svc)
        pods = {
            node: api.store.create(
                "pods", objects.deployment_pod("web", node=node, pod_ip=POD_IPS[node], seed=node)
            )
            for node in NODES
        }

        def slice_with(not_ready: str | None) -> dict[str, Any]:
            endpoints = [
                endpoint_of_pod(objects.mark_not_ready(pod, 0.0) if node == not_ready else pod)
                for node, pod in pods.items()
            ]
            return endpoint_slice(svc, endpoints, ports=(("http", web_port),))

        created = api.store.create("endpointslices", slice_with(None))

        def set_slice(not_ready: str | None) -> None:
            def apply(obj: dict[str, Any]) -> None:
                obj["endpoints"] = slice_with(not_ready)["endpoints"]

            api.store.patch("endpointslices", "default", created["metadata"]["name"], apply)

        async with agents(kubeconfig, tmp_path, port) as running:
            # The container of the web pod on node-a is OOM-killed: its endpoint goes not
            # ready (every agent sees that), the kubelet restarts it (node-a's agent sees
            # that), it is ready again.
            set_slice("node-a")
            await wait_for(
                lambda: all(a.correlator.has_episode(WEB) for a in running.values()),
                "every agent to open an episode",
                timeout=LOADED,
            )
            web_a = pods["node-a"]["metadata"]["name"]
            cluster.restart("default", web_a, "app", reason="OOMKilled")
            set_slice(None)
            await wait_for(
                lambda: all(recent(a) for a in running.values()),
                "every agent to close its episode",
                timeout=LOADED,
            )
            causes = {node: recent(a)[0]["cause"] for node, a in running.items()}
            assert causes == {"node-a": "restart", "node-b": "readiness", "node-c": "readiness"}

            code, out, err = await run_cli(
                capsys, ["episodes", "--kubeconfig", str(kubeconfig), "-o", "json"]
            )
            assert code == 0, err
            doc = json.loads(out)
            (record,) = doc["episodes"]
            assert (record["namespace"], record["service"]) == ("default", "web")
            assert record["cause"] == "restart"
            assert record["closed_at"] is not None
            assert sorted(n["node"] for n in record["nodes"]) == list(NODES)
            views = {n["node"]: n for n in record["nodes"]}
            assert views["node-b"]["cause"] == "readiness"
            firsts = {node: recent(a)[0] for node, a in running.items()}
            assert record["opened_at"] == min(e["opened_at"] for e in firsts.values())
            assert record["closed_at"] == max(e["closed_at"] for e in firsts.values())
            # Every agent is listed; the one that never started, with why.
            agents_by_node = {a["node"]: a for a in doc["agents"]}
            assert set(agents_by_node) == {*NODES, DEAD_NODE}
            assert all(agents_by_node[n]["ok"] for n in NODES)
            dead = agents_by_node[DEAD_NODE]
            assert dead["ok"] is False
            assert "connection refused" in dead["error"], dead
            assert dead["pod"].startswith("tailwatch-")
            # Each agent was asked once, through the pod proxy, as `get pods/proxy`.
            proxied = api.requests.matching(verb="get", resource="pods/proxy")
            assert len(proxied) == 4
            assert all(r.namespace == AGENTS_NS for r in proxied)

            # The kubectl plugin, with the kubeconfig from KUBECONFIG as kubectl passes it,
            # prints the table: one row, the three nodes with their causes.
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            code, out, err = await run_cli(capsys, ["episodes"], entry=cli.kubectl_main)
            assert code == 0, err
            rows = [line for line in out.splitlines() if line.startswith("default/web")]
            assert len(rows) == 1, out
            assert "restart" in rows[0]
            assert "3: restart node-a; readiness node-b, node-c" in rows[0], out
            assert "3 of 4 agents answered; no answer from:" in out
            (dead_line,) = [line for line in out.splitlines() if "(node node-d)" in line]
            assert dead_line.startswith(f"  {AGENTS_NS}/tailwatch-")
            assert dead_line.endswith("connect: connection refused")

            # Filters: another namespace has nothing; the Service by name has its record.
            code, out, _ = await run_cli(
                capsys, ["episodes", "--kubeconfig", str(kubeconfig), "-n", "pay", "-o", "json"]
            )
            assert code == 0 and json.loads(out)["episodes"] == []
            code, out, _ = await run_cli(
                capsys,
                ["episodes", "--kubeconfig", str(kubeconfig), "--service", "web",
                 "--since", "10m", "--agents-namespace", AGENTS_NS, "-o", "json"],
            )  # fmt: skip
            assert code == 0 and len(json.loads(out)["episodes"]) == 1


async def test_forbidden_pods_proxy_is_a_clear_error(
    api: ApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for node in NODES:
        api.store.create("pods", agent_pod(node, AGENT_IPS[node], 9808))
    # An agent still starting is listed, not asked.
    starting = objects.mark_not_ready(agent_pod(DEAD_NODE, DEAD_IP, 9808), 0.0)
    api.store.create("pods", starting)
    api.faults.forbid("pods/proxy")
    code, out, err = await run_cli(capsys, ["episodes", "--kubeconfig", str(kubeconfig)])
    assert code == 1
    assert "0 of 4 agents answered; no answer from:" in out
    assert "(node node-d): not asked: the pod is not ready" in out
    assert "tailwatch: error: no agent could be asked: forbidden:" in err
    assert 'cannot get resource "pods/proxy"' in err
    assert "RBAC" in err
    # Nothing reached a pod.
    assert all(r.status == 403 for r in api.requests.matching(resource="pods/proxy"))


async def test_the_api_server_refusing_the_listing_is_a_clear_error(
    api: ApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api.faults.forbid("pods", ["list"])
    code, _, err = await run_cli(
        capsys, ["episodes", "--kubeconfig", str(kubeconfig), "--agents-namespace", AGENTS_NS]
    )
    assert code == 1
    assert "not allowed when listing the agents' pods in the namespace tailwatch" in err
    api.faults.permit("pods")
    code, _, err = await run_cli(capsys, ["episodes", "--kubeconfig", str(kubeconfig)])
    assert code == 1
    assert "no pod matches" in err and "in all namespaces" in err


async def test_usage_errors_exit_2(
    kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["episodes", "--since", "soon"])
    assert exit_.value.code == 2
    assert "'soon' is not a duration" in capsys.readouterr().err
    code, _, err = await run_cli(capsys, ["episodes", "--kubeconfig", str(tmp_path / "missing")])
    assert code == 2
    assert "does not exist" in err


async def test_agents_serving_tls_are_asked_over_https_and_auth_is_explained(
    api: ApiServer, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The chart's probes say https when the agent serves TLS: the command asks through
    the proxy with the `https:` scheme. An agent that also wants a bearer token
    (--auth=kubernetes) refuses, since the API server does not pass the user's on."""
    ca = CertificateAuthority.create(tmp_path / "pki")
    tls = {}
    for node in ("node-a", "node-b"):
        issued = ca.issue(node, ips=(AGENT_IPS[node],))
        tls[node] = {"tls_cert_file": str(issued.cert_file), "tls_key_file": str(issued.key_file)}
    port = free_port()
    for node in ("node-a", "node-b"):
        pod = agent_pod(node, AGENT_IPS[node], port)
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"] = "HTTPS"
        api.store.create("pods", pod)
    async with agents(
        kubeconfig, tmp_path, port, ("node-a", "node-b"),
        node_a=tls["node-a"], node_b={**tls["node-b"], "auth": "kubernetes"},
    ):  # fmt: skip
        code, out, err = await run_cli(
            capsys, ["episodes", "--kubeconfig", str(kubeconfig), "-o", "json"]
        )
    assert code == 0, err
    by_node = {a["node"]: a for a in json.loads(out)["agents"]}
    assert by_node["node-a"]["ok"] is True
    assert by_node["node-b"]["ok"] is False
    assert by_node["node-b"]["error"].startswith("HTTP 401 from the agent: it requires a bearer")
    assert "does not pass your credentials on" in by_node["node-b"]["error"]
    proxied = [r.path for r in api.requests.matching(resource="pods/proxy")]
    assert len(proxied) == 2
    assert all("/pods/https:tailwatch-" in p and f":{port}/proxy/" in p for p in proxied)


def test_the_kubectl_plugin_is_installed_with_the_package() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["kubectl-tailwatch"] == "exporter.cli:kubectl_main"


async def test_an_agent_that_does_not_answer_is_listed_not_waited_for(
    api: ApiServer, kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod that accepts the connection and never answers (a stuck node): the command
    gives up on it after --timeout and says so."""
    answered = asyncio.Event()

    async def stuck(_: web.Request) -> web.Response:
        await answered.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/api/v1/episodes", stuck)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, AGENT_IPS["node-a"], port).start()
    try:
        api.store.create("pods", agent_pod("node-a", AGENT_IPS["node-a"], port))
        code, out, err = await run_cli(
            capsys,
            ["episodes", "--kubeconfig", str(kubeconfig), "--timeout", "500ms", "-o", "json"],
        )
    finally:
        answered.set()
        await runner.cleanup()
    assert code == 1
    (agent,) = json.loads(out)["agents"]
    assert agent == {
        "namespace": AGENTS_NS,
        "pod": agent["pod"],
        "node": "node-a",
        "ok": False,
        "error": "no answer within 0.5s",
        "episodes": None,
        "unreadable_episodes": None,
    }
    assert "no agent answered" in err
