"""The agent starts from exactly what the chart and the image give it.

Each test renders the chart, then runs the container as Kubernetes would: the Dockerfile's
entry point followed by the rendered args, the rendered env with the downward API filled in
and `$(VAR)` expanded, and each volume mount backed by a directory (the rendered ConfigMap's
files, a cgroup tree, an empty dir, the certificate Secret's files from a real test CA). The
only stand-in is the API server: the simulator, reached through KUBECONFIG because in-cluster
credentials live at fixed paths, with the tokens and the RBAC the chart renders for
Prometheus. The agent must accept every flag and variable, and answer the rendered probes;
the rendered `helm test` script must pass against it; with auth on, it must be scraped the
way the rendered ServiceMonitor scrapes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.settings import OPTIONS, load_settings
from exporter.simulator import ApiServer
from tests.certs import CertificateAuthority
from tests.conftest import free_port, wait_for
from tests.helm.chart import (
    NAMESPACE,
    REPO,
    VALUE_SETS,
    Manifest,
    agent_container,
    flags,
    helm_test_pod,
    objects,
    one,
    render,
)
from tests.volumes import write_like_kubelet

pytestmark = pytest.mark.e2e

NODE = "node-a"
# What the kubelet puts behind each downward API field on a test "node" that is loopback.
DOWNWARD_API = {
    "spec.nodeName": NODE,
    "status.hostIP": "127.0.0.1",
    "status.podIP": "127.0.0.1",
    "metadata.namespace": "monitoring",
    "metadata.name": "tw-tailwatch-abcde",
}
DOCKERFILE = REPO / "Dockerfile"


# -- The Dockerfile, read as the container runtime reads it -----------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def dockerfile_stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    logical = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in logical.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None, []))
        elif not stages and instruction == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((instruction, rest))
    return args, stages


def image_entrypoint() -> list[str]:
    _, stages = dockerfile_stages(DOCKERFILE.read_text())
    [entrypoint] = stages[-1].all("ENTRYPOINT")
    parsed: list[str] = json.loads(entrypoint)  # exec form: no shell between runtime and agent
    return parsed


def test_image_entry_point_is_tailwatch_run_as_installed_by_the_package() -> None:
    global_args, stages = dockerfile_stages(DOCKERFILE.read_text())
    final = stages[-1]
    assert image_entrypoint() == ["tailwatch", "run"]
    assert final.all("CMD") == []  # the chart's args are the agent's flags, nothing else
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tailwatch"] == "exporter.cli:main"
    # docs/design.md, *Security posture*, and the chart's securityContext: nobody, on a
    # read-only root filesystem.
    assert final.all("USER") == ["65534:65534"]
    assert any("PYTHONDONTWRITEBYTECODE=1" in env for env in final.all("ENV"))
    # The final stage installs nothing and compiles nothing: it only copies the build venv.
    assert {name for name, _ in final.instructions} <= {
        "ARG", "LABEL", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT",
    }  # fmt: skip
    assert final.all("COPY") == ["--from=build /opt/tailwatch /opt/tailwatch"]
    assert final.base == "${PYTHON_IMAGE}" and "-slim" in global_args["PYTHON_IMAGE"]
    assert [s.name for s in stages] == ["build", None]
    # Dependencies come from the hash-locked files, as wheels.
    build_runs = " ".join(stages[0].all("RUN"))
    for lock in ("requirements/build.txt", "requirements/image.txt"):
        assert f"--require-hashes --no-deps --only-binary=:all: -r {lock}" in re.sub(
            r"\s+", " ", build_runs
        )
    [exposed] = final.all("EXPOSE")
    defaults = agent_container(render())["ports"]
    assert sorted(exposed.split()) == sorted(str(p["containerPort"]) for p in defaults)
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "licenses", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_admits_exactly_what_the_dockerfile_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    ignore = [line for line in lines if line.strip() and not line.startswith("#")]
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    _, stages = dockerfile_stages(DOCKERFILE.read_text())
    copied = set()
    for copy in stages[0].all("COPY"):
        *sources, _ = copy.split()
        copied |= {s.rstrip("/") for s in sources}
    assert ignore[0] == "*"
    assert copied == admitted
    for path in admitted:
        assert (REPO / path).exists(), path


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_flag_and_variable_the_chart_passes_is_the_agents(value_set: str) -> None:
    container = agent_container(render(VALUE_SETS[value_set]))
    assert "command" not in container  # the image's entry point runs
    known_flags = {o.name for o in OPTIONS} | {"config"}
    assert set(flags(container)) <= known_flags
    for env in container["env"]:
        name = env["name"]
        if name.startswith("TAILWATCH_"):
            assert name in {o.env for o in OPTIONS}, name
    env_names = {e["name"] for e in container["env"]}
    assert "NODE_NAME" in env_names
    assert next(o for o in OPTIONS if o.name == "node-name").env_fallback == "NODE_NAME"
    assert "POD_NAMESPACE" in env_names
    assert next(o for o in OPTIONS if o.name == "pod-namespace").env_fallback == "POD_NAMESPACE"


@pytest.mark.parametrize("value_set", ["auth", "everything-on", "tls-only"])
def test_the_certificate_flags_point_at_the_mounted_secret_and_the_agent_accepts_them(
    value_set: str, tmp_path: Path
) -> None:
    """The rendered args, with the Secret's files where the kubelet mounts them, are settings
    the agent starts with: --tls-cert-file/--tls-key-file name a certificate and key that load
    together, and --auth=kubernetes has the TLS it needs."""
    values, _, _ = with_ports(VALUE_SETS[value_set])
    manifests = render(values)
    container = agent_container(manifests)
    [volume] = [
        v
        for v in one(manifests, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    data, _ = serving_certificate(manifests, tmp_path / "ca")
    mounts = sandbox(manifests, container, tmp_path, {volume["secret"]["secretName"]: data})
    env = container_env(container)
    given = {}
    for arg in container["args"]:
        name, _, value = in_sandbox(expand(arg, env), mounts)[2:].partition("=")
        given[name.replace("-", "_")] = value
    settings = load_settings(given, env)
    assert settings.tls and settings.auth == ("kubernetes" if value_set != "tls-only" else "none")
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
        settings.tls_cert_file, settings.tls_key_file
    )
    # The ConfigMap's auth-cache-ttl reached the settings (1m, the agent's default too).
    assert settings.auth_cache_ttl == 60.0
    assert settings.otlp_sources == "local"


# -- The container, run -----------------------------------------------------------------------


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args: known variables only, $$ escapes a dollar."""

    def one_ref(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one_ref, text)


@dataclass
class Scraper:
    """How a client reaches the agent's --listen: plain HTTP, or HTTPS verified as the
    rendered ServiceMonitor verifies (its CA, its serverName while dialling the pod's IP)."""

    tls: ssl.SSLContext | None = None
    server_name: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


@dataclass
class RunningContainer:
    metrics_port: int
    otlp_port: int
    process: asyncio.subprocess.Process
    log: Path
    scraper: Scraper
    mounts: dict[str, Path]  # mount path -> its sandbox directory

    async def fetch(
        self, path: str, port: int | None = None, token: str | None = None
    ) -> tuple[int, bytes]:
        """GET `path` as the ServiceMonitor scrapes: its scheme, CA and server name."""
        url = f"{self.scraper.scheme}://127.0.0.1:{port or self.metrics_port}{path}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        tls: dict[str, Any] = {}
        if self.scraper.tls:
            tls = {"ssl": self.scraper.tls, "server_hostname": self.scraper.server_name}
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers=headers, **tls) as response,
        ):
            return response.status, await response.read()

    async def get(self, path: str, port: int | None = None, token: str | None = None) -> int:
        status, _ = await self.fetch(path, port, token)
        return status

    async def answers(self, path: str) -> bool:
        try:
            return await self.get(path) == 200
        except aiohttp.ClientError:
            return False


def sandbox(
    manifests: list[Manifest],
    container: Manifest,
    root: Path,
    secrets: dict[str, dict[str, bytes]] | None = None,
) -> dict[str, Path]:
    """A directory for each of the container's volume mounts, filled like the kubelet would
    (`secrets`: the data of the Secrets the pod mounts, by name)."""
    volumes = {
        v["name"]: v for v in one(manifests, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    }
    config_maps = {m["metadata"]["name"]: m for m in objects(manifests, "ConfigMap")}
    paths: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = root / mount["name"]
        directory.mkdir()
        if "configMap" in volume:
            for key, content in config_maps[volume["configMap"]["name"]]["data"].items():
                (directory / key).write_text(content)
        elif "hostPath" in volume:
            (directory / "kubepods.slice").mkdir()  # an (empty) cgroup v2 tree
        elif "secret" in volume:
            write_like_kubelet(directory, (secrets or {})[volume["secret"]["secretName"]])
        paths[mount["mountPath"]] = directory
    return paths


def in_pod_network(arg: str) -> str:
    """A listener on every address of the pod (`--listen=:9808`) reaches only the pod's own
    address and its loopback: the pod's network namespace. Here, where no such namespace is
    made, the stand-in is loopback: tests listen nowhere else."""
    name, _, value = arg.partition("=")
    if name in ("--listen", "--otlp-listen") and value.startswith(":"):
        return f"{name}=127.0.0.1{value}"
    return arg


def in_sandbox(arg: str, mounts: dict[str, Path]) -> str:
    """`--flag=/mount/path/file` with the mount path replaced by its sandbox directory."""
    name, _, value = arg.partition("=")
    for mount_path in sorted(mounts, key=len, reverse=True):
        if value == mount_path or value.startswith(mount_path + "/"):
            return f"{name}={mounts[mount_path]}{value[len(mount_path) :]}"
    return arg


def with_ports(values: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    metrics_port, otlp_port = free_port(), free_port()
    values = {**values, "metrics": {"port": metrics_port}}
    values["otlp"] = {**values.get("otlp", {}), "port": otlp_port}
    return values, metrics_port, otlp_port


def container_env(container: Manifest) -> dict[str, str]:
    """The container's environment as the kubelet sets it (downward API filled in)."""
    env: dict[str, str] = {}
    for var in container["env"]:
        if "valueFrom" in var:
            env[var["name"]] = DOWNWARD_API[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = expand(var["value"], env)
    return env


def serving_certificate(
    manifests: list[Manifest], directory: Path
) -> tuple[dict[str, bytes], Scraper]:
    """The data of the certificate Secret the pods mount, from a real CA, for the names the
    chart's Certificate names (an existing Secret: the Service's name, which the docs ask
    for); and the client that verifies it the way the ServiceMonitor does, when there is one
    (else as a client of the Service would)."""
    server_name = f"{one(manifests, 'Service')['metadata']['name']}.{NAMESPACE}.svc"
    for monitor in objects(manifests, "ServiceMonitor"):
        server_name = monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"]
    certificates = objects(manifests, "Certificate")
    names = tuple(certificates[0]["spec"]["dnsNames"]) if certificates else (server_name,)
    authority = CertificateAuthority.create(directory)
    issued = authority.issue("serving", dns_names=names)
    data = {
        "tls.crt": issued.cert_pem,
        "tls.key": issued.key_pem,
        "ca.crt": authority.cert_pem,
    }
    client = ssl.create_default_context(cafile=str(authority.cert_file))
    return data, Scraper(client, server_name)


@asynccontextmanager
async def run_container(
    values: dict[str, Any], kubeconfig: Path, tmp_path: Path
) -> AsyncIterator[tuple[RunningContainer, list[Manifest]]]:
    values, metrics_port, otlp_port = with_ports(values)
    manifests = render(values)
    container = agent_container(manifests)
    secrets: dict[str, dict[str, bytes]] = {}
    scraper = Scraper()
    secret_volumes = [
        v
        for v in one(manifests, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    ]
    for volume in secret_volumes:
        data, scraper = serving_certificate(manifests, tmp_path / "ca")
        secrets[volume["secret"]["secretName"]] = data
    mounts = sandbox(manifests, container, tmp_path, secrets)

    env = container_env(container)
    args = [in_pod_network(in_sandbox(expand(arg, env), mounts)) for arg in container["args"]]
    entrypoint, *entry_args = image_entrypoint()
    # The package's console script, as `pip install` put it on the image's PATH.
    executable = Path(sys.executable).parent / entrypoint
    assert executable.is_file(), f"{entrypoint} is not installed next to {sys.executable}"

    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TAILWATCH_", "KUBERNETES_")) and k not in {"NODE_NAME", "KUBECONFIG"}
    }
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            *entry_args,
            *args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**inherited, **env, "KUBECONFIG": str(kubeconfig)},
        )
    running = RunningContainer(metrics_port, otlp_port, process, log, scraper, mounts)
    try:
        yield running, manifests
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def ready(running: RunningContainer, container: Manifest) -> None:
    path = container["readinessProbe"]["httpGet"]["path"]

    async def probe() -> bool:
        if running.process.returncode is not None:
            raise AssertionError(f"the agent exited: {running.log.read_text()}")
        return await running.answers(path)

    await wait_for(probe, f"{path} of the agent started from the chart")


def run_helm_test_script(
    manifests: list[Manifest], port: int, timeout: str
) -> subprocess.CompletedProcess[str]:
    """The rendered `helm test` pod's command, aimed at this machine instead of the Service."""
    pod = helm_test_pod(manifests)
    [container] = pod["spec"]["containers"]
    program, *arguments = container["command"]
    assert program == "python"
    url = re.sub(r"^(https?)://[^/]+/", rf"\1://127.0.0.1:{port}/", arguments[-1])
    env = {e["name"]: e["value"] for e in container["env"]} | {"TIMEOUT_SECONDS": timeout}
    return subprocess.run(
        [sys.executable, *arguments[:-1], url],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
        check=False,
    )


PROBES: Callable[[Manifest], list[str]] = lambda c: [  # noqa: E731
    c[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
]


async def otlp_status(port: int) -> int:
    url = f"http://127.0.0.1:{port}/v1/metrics"
    headers = {"Content-Type": "application/x-protobuf"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=b"", headers=headers) as r,
    ):
        return r.status


def started_line(log: Path) -> dict[str, Any] | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and json.loads(line).get("msg") == "tailwatch agent started":
            return json.loads(line)  # type: ignore[no-any-return]
    return None


async def episode_settings(running: RunningContainer, token: str | None = None) -> dict[str, Any]:
    status, body = await running.fetch("/api/v1/episodes", token=token)
    assert status == 200, body.decode(errors="replace")
    return json.loads(body)["settings"]  # type: ignore[no-any-return]


# A user's own token for the JSON API, as an operator would get with `kubectl create token`.
OPERATOR_TOKEN = "operator-token"


def grant_rendered_rbac(api: ApiServer, manifests: list[Manifest]) -> None:
    """What the API server would allow once the chart's non-resource RBAC is applied: each
    binding of a role with `nonResourceURLs`, for each of its subjects."""
    roles = {r["metadata"]["name"]: r for r in objects(manifests, "ClusterRole")}
    for binding in objects(manifests, "ClusterRoleBinding"):
        for rule in roles[binding["roleRef"]["name"]]["rules"]:
            if "nonResourceURLs" not in rule:
                continue
            for subject in binding["subjects"]:
                kind, name = subject["kind"], subject["name"]
                if kind == "ServiceAccount":
                    who = {"user": f"system:serviceaccount:{subject['namespace']}:{name}"}
                else:
                    who = {"user" if kind == "User" else "group": name}
                api.reviews.allow(**who, paths=rule["nonResourceURLs"], verbs=rule["verbs"])


def scraper_token(api: ApiServer, manifests: list[Manifest]) -> str:
    """The token the rendered ServiceMonitor presents: the one the token controller puts into
    the scraper account's Secret, known to the simulated API server as that account's."""
    [monitor] = objects(manifests, "ServiceMonitor")
    credentials = monitor["spec"]["endpoints"][0]["authorization"]["credentials"]
    [secret] = [
        s for s in objects(manifests, "Secret") if s["metadata"]["name"] == credentials["name"]
    ]
    account = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    token = f"token-of-{account}"
    api.reviews.add_service_account_token(token, NAMESPACE, account)
    return token


# The correlation settings the agent reports with the chart's defaults.
DEFAULT_CORRELATION = {
    "spike_ratio": 2.0,
    "baseline_seconds": 300,
    "spike_min_increase_seconds": 0.002,
    "spike_min_slow": 5,
    "window_min_samples": 5,
    "confidence": 0.95,
}


@pytest.mark.parametrize(
    ("value_set", "otlp_host", "correlation"),
    [
        ("defaults", "127.0.0.1", DEFAULT_CORRELATION),
        ("host-network", "127.0.0.1", DEFAULT_CORRELATION),
        (
            "everything-on",
            "127.0.0.1",
            {
                **DEFAULT_CORRELATION,
                "spike_ratio": 4.0,
                "spike_min_increase_seconds": 0.0,
                "spike_min_slow": 4,
                "window_min_samples": 10,
                "confidence": 0.99,
            },
        ),
        # extraArgs: --spike-ratio=6 beats the ConfigMap's 3.
        ("ecosystem", "127.0.0.1", {**DEFAULT_CORRELATION, "spike_ratio": 6.0}),
    ],
)
async def test_agent_runs_from_the_rendered_container(
    api: ApiServer,
    kubeconfig: Path,
    tmp_path: Path,
    value_set: str,
    otlp_host: str,
    correlation: dict[str, float],
) -> None:
    auth = VALUE_SETS[value_set].get("auth", {}).get("enabled", False)
    async with run_container(VALUE_SETS[value_set], kubeconfig, tmp_path) as (running, manifests):
        container = agent_container(manifests)
        token = None
        if auth:  # everything-on: over TLS from cert-manager, scraped with a token
            grant_rendered_rbac(api, manifests)
            token = scraper_token(api, manifests)
            api.reviews.add_token(OPERATOR_TOKEN, "operator")
            api.reviews.allow(user="operator", paths=["/api/v1/*"])
        await ready(running, container)
        for path in PROBES(container):
            assert await running.get(path) == 200, path
        started = started_line(running.log)
        assert started is not None
        assert started["node"] == NODE  # NODE_NAME from the downward API
        # The OTLP receiver binds where the chart says: every pod address (here the pod's
        # stand-in, loopback: in_pod_network), or with hostNetwork the node's address only
        # ($(HOST_IP), docs/design.md).
        assert started["otlp_listen"] == f"{otlp_host}:{running.otlp_port}"
        assert await otlp_status(running.otlp_port) == 200
        # The ConfigMap's options reached the agent (and extraEnv beats them).
        settings = await episode_settings(running, OPERATOR_TOKEN if auth else None)
        assert {key: settings[key] for key in correlation} == correlation
        # `helm test` passes against a ready agent.
        passed = await asyncio.to_thread(
            run_helm_test_script, manifests, running.metrics_port, "30"
        )
        assert passed.returncode == 0, passed.stderr
        assert "/readyz 200" in passed.stdout
        # Prometheus, as the ServiceMonitor says: verified TLS and, with auth, the token.
        assert await running.get("/metrics", token=token) == 200
        if auth:
            assert await running.get("/metrics") == 401
            assert await running.get("/metrics", token=OPERATOR_TOKEN) == 403  # not bound


async def test_a_renewed_certificate_reaches_the_running_agent_through_the_secret_volume(
    kubeconfig: Path, tmp_path: Path
) -> None:
    """The Secret is mounted as a directory, so the kubelet's update of a renewed certificate
    reaches the files the flags name, and the agent serves it without a restart."""
    async with run_container(VALUE_SETS["auth"], kubeconfig, tmp_path) as (running, manifests):
        container = agent_container(manifests)
        await ready(running, container)
        directory = running.mounts[flags(container)["tls-cert-file"].rpartition("/")[0]]
        renewed, verifier = serving_certificate(manifests, tmp_path / "renewed-ca")
        before = running.scraper
        write_like_kubelet(directory, renewed)  # e.g. cert-manager renewed it under a new CA
        running.scraper = verifier

        async def served() -> bool:
            assert running.process.returncode is None, running.log.read_text()
            return await running.answers("/readyz")

        await wait_for(served, "the renewed certificate served by the same agent process")
        running.scraper = before  # the old CA no longer verifies what the agent serves
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await running.get("/readyz")


@pytest.mark.parametrize(("sources", "status"), [(None, 403), ("any", 200)])
async def test_otlp_from_off_the_node_is_refused_by_the_charts_default(
    kubeconfig: Path, tmp_path: Path, sources: str | None, status: int
) -> None:
    """config.otlp-sources (default local) reaches the agent: a sender that is neither a pod
    of the node nor the node itself (here 127.0.0.2; the node is 127.0.0.1) is refused."""
    values = {"config": {"otlp-sources": sources}} if sources else {}
    async with run_container(values, kubeconfig, tmp_path) as (running, manifests):
        await ready(running, agent_container(manifests))
        assert await otlp_status(running.otlp_port) == 200  # the node itself
        url = f"http://127.0.0.1:{running.otlp_port}/v1/metrics"
        headers = {"Content-Type": "application/x-protobuf"}
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(url, data=b"", headers=headers) as response,
        ):
            assert response.status == status


async def test_agent_without_otlp_and_a_helm_test_that_fails_when_nothing_answers(
    kubeconfig: Path, tmp_path: Path
) -> None:
    values = VALUE_SETS["otlp-off-external-account"] | {"helmTest": {"enabled": True}}
    async with run_container(values, kubeconfig, tmp_path) as (running, manifests):
        await ready(running, agent_container(manifests))
        started = started_line(running.log)
        assert started is not None and started["otlp_listen"] == "disabled"
        with pytest.raises(aiohttp.ClientConnectionError):
            await otlp_status(running.otlp_port)
        # The `helm test` script fails, and says why, when no agent answers.
        failed = await asyncio.to_thread(run_helm_test_script, manifests, free_port(), "0")
        assert failed.returncode == 1
        assert "/readyz not ready" in failed.stderr
