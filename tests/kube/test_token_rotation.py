"""Bearer tokens read from a file follow the kubelet's rotations, against the simulator over
HTTPS with a real CA.

The kubelet writes a projected service account token the way it writes every projected
volume: the files live in a timestamped directory, `..data` is a symlink to it and `token`
a symlink to `..data/token`; a rotation writes a new directory and swaps `..data` atomically.
A new token comes about every hour and the old one stays valid a while, so the agent reads the
file again every minute (an injected clock here) and at once after a 401.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from exporter.kube.config import TOKEN_RETRY, KubeConnection, TokenFile, load_connection
from exporter.kube.watching import ApiSession, Reflector, ResourceSpec, list_objects
from exporter.simulator import ApiServer, objects
from exporter.simulator.kubeconfig import write_kubeconfig
from exporter.simulator.tls import ServerTls
from tests.agent.conftest import running_agent
from tests.certs import CertificateAuthority
from tests.conftest import wait_for
from tests.kube.test_reflector import FAST, Recorder
from tests.volumes import write_like_kubelet

PODS = ResourceSpec("pods", "/api/v1/pods", field_selector="spec.nodeName=node-a")


class ProjectedVolume:
    """A directory written as the kubelet's atomic writer writes a projected volume."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)

    def write(self, files: Mapping[str, bytes]) -> None:
        write_like_kubelet(self.directory, files)

    def rotate_token(self, token: str) -> None:
        current = self.directory / "..data"
        files = {p.name: p.read_bytes() for p in current.iterdir()}
        self.write({**files, "token": token.encode()})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", name="cluster-ca")


@pytest.fixture
async def api(ca: CertificateAuthority) -> AsyncIterator[ApiServer]:
    """The simulator over HTTPS (a certificate for 127.0.0.1), knowing one token."""
    cert = ca.issue("apiserver", dns_names=("kubernetes.default.svc",), ips=("127.0.0.1",))
    server = ApiServer(
        tokens=("token-1",),
        tls=ServerTls(cert.cert_file, cert.key_file),
        certificate_authority=ca.cert_pem,
        bookmark_interval=0.2,
    )
    async with server:
        server.store.create("pods", objects.bare_pod("p1", node="node-a"))
        yield server


@pytest.fixture
def volume(tmp_path: Path, ca: CertificateAuthority) -> ProjectedVolume:
    sa = ProjectedVolume(tmp_path / "serviceaccount")
    sa.write({"token": b"token-1", "ca.crt": ca.cert_pem, "namespace": b"monitoring"})
    return sa


Connect = Callable[[Clock], KubeConnection]


@pytest.fixture(params=["in-cluster", "kubeconfig-tokenFile"])
def connect(
    request: pytest.FixtureRequest,
    api: ApiServer,
    volume: ProjectedVolume,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Connect:
    """How the agent loads its connection: in-cluster (the Service's env variables, the
    service account directory), or a kubeconfig whose user has a tokenFile."""
    if request.param == "in-cluster":
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))

        def in_cluster(clock: Clock) -> KubeConnection:
            connection = load_connection(None, service_account_dir=volume.directory, clock=clock)
            assert connection.source == "in-cluster"
            return connection

        return in_cluster
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = api.write_kubeconfig(
        tmp_path / "kubeconfig", token=None, token_file=volume.directory / "token"
    )
    return lambda clock: load_connection(str(kubeconfig), clock=clock)


async def list_pods(session: ApiSession) -> list[Mapping[str, Any]]:
    items, _ = await list_objects(session, PODS)
    return items


def statuses(api: ApiServer) -> list[int]:
    return [r.status for r in api.requests.records]


async def test_the_token_is_read_again_after_the_refresh_period(
    api: ApiServer, volume: ProjectedVolume, connect: Connect
) -> None:
    clock = Clock()
    connection = connect(clock)
    token_file = connection.token_file
    assert token_file is not None
    async with ApiSession(connection, FAST) as session:
        assert len(await list_pods(session)) == 1
        # The kubelet gets a new token (the server knows it from then on) and writes it.
        api.accepted_tokens.add("token-2")
        volume.rotate_token("token-2")
        assert len(await list_pods(session)) == 1
        assert token_file.reads == 1, "within the minute, the token read at startup is used"
        # A minute on, the old token expires: the next request must carry the new one.
        clock.now += 60
        api.accepted_tokens.discard("token-1")
        assert len(await list_pods(session)) == 1
        assert token_file.reads == 2
    assert statuses(api) == [200, 200, 200], "no request was refused"


async def test_a_401_reads_the_token_again_at_once(
    api: ApiServer, volume: ProjectedVolume, connect: Connect
) -> None:
    """The old token is revoked right after the rotation (the pod's service account token was
    invalidated): one request is refused, and the watch resumes with the new token at once,
    without waiting for the refresh period (the clock does not move)."""
    connection = connect(Clock())
    recorder = Recorder()
    async with ApiSession(connection, FAST) as session:
        reflector = Reflector(session, PODS, recorder)
        task = asyncio.create_task(reflector.run())
        try:
            await wait_for(lambda: reflector.health.synced and api.faults.open_watches, "a watch")
            api.accepted_tokens.add("token-2")
            volume.rotate_token("token-2")
            api.accepted_tokens.discard("token-1")
            api.faults.drop_watches()  # the connection breaks; the next watch authenticates
            await wait_for(lambda: 401 in statuses(api), "the refused watch")
            await wait_for(lambda: api.faults.open_watches, "a watch with the new token")
            api.store.create("pods", objects.bare_pod("p2", node="node-a"))
            await wait_for(lambda: len(recorder.state) == 2, "the new pod")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert reflector.health.restarts.get("unauthorized") == 1
    assert statuses(api).count(401) == 1


async def test_a_token_file_caught_empty_keeps_the_last_token(
    api: ApiServer,
    volume: ProjectedVolume,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A read that finds no token (a hand-made rotation that truncates, then writes) loses
    nothing: the last token goes on, and the file is read again TOKEN_RETRY seconds later."""
    clock = Clock()
    connection = connect(clock)
    async with ApiSession(connection, FAST) as session:
        (volume.directory / "..data" / "token").write_text("")
        clock.now += 60
        with caplog.at_level(logging.WARNING, logger="tailwatch.kube"):
            assert len(await list_pods(session)) == 1
        assert any("empty" in r.getMessage() for r in caplog.records)
        api.accepted_tokens.add("token-2")
        volume.rotate_token("token-2")
        api.accepted_tokens.discard("token-1")
        clock.now += TOKEN_RETRY
        assert len(await list_pods(session)) == 1  # read again, without waiting a minute
    assert statuses(api) == [200, 200]


async def test_the_agent_follows_a_rotated_token_file(
    api: ApiServer, volume: ProjectedVolume, tmp_path: Path
) -> None:
    """The whole agent, from a kubeconfig with a tokenFile: after a rotation that revokes the
    old token at once, every watch comes back and the agent is ready again."""
    kubeconfig = api.write_kubeconfig(
        tmp_path / "kubeconfig", token=None, token_file=volume.directory / "token"
    )
    async with running_agent(kubeconfig, tmp_path / "cgroup") as agent:
        watches = api.faults.open_watches
        api.accepted_tokens.add("token-2")
        volume.rotate_token("token-2")
        api.accepted_tokens.discard("token-1")
        api.faults.drop_watches()
        await wait_for(lambda: 401 in statuses(api), "a refused watch")
        await wait_for(lambda: api.faults.open_watches == watches, "every watch back")
        await wait_for(lambda: agent.readiness()[0], "the agent ready again")
        refused = sum(h.restarts.get("unauthorized", 0) for h in agent.healths)
        assert refused == statuses(api).count(401) >= 1


async def test_a_relative_token_file_follows_a_kubeconfig_mounted_from_a_secret(
    api: ApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kubeconfig and its token in one Secret, mounted as the kubelet mounts it
    (`kubeconfig -> ..data/kubeconfig`, `..data -> ..<timestamp>`), with `tokenFile: token`:
    the token is the one next to the link the agent was given, so after a rotation (which
    deletes the timestamped directory) the new token is read, not a deleted file."""
    secret = ProjectedVolume(tmp_path / "secret")
    staged = write_kubeconfig(tmp_path / "staged", api.kubeconfig(token=None, token_file="token"))
    config = staged.read_bytes()
    secret.write({"kubeconfig": config, "token": b"token-1"})
    clock = Clock()
    connection = load_connection(str(secret.directory / "kubeconfig"), clock=clock)
    assert connection.token_file is not None
    async with ApiSession(connection, FAST) as session:
        assert len(await list_pods(session)) == 1
        api.accepted_tokens.add("token-2")
        secret.write({"kubeconfig": config, "token": b"token-2"})  # the first dir is deleted
        api.accepted_tokens.discard("token-1")
        clock.now += 60
        with caplog.at_level(logging.WARNING, logger="tailwatch.kube"):
            assert len(await list_pods(session)) == 1
    assert statuses(api) == [200, 200]
    assert not [r for r in caplog.records if "token file" in r.getMessage()]
    assert connection.token_file.path == secret.directory / "token"


def test_a_missing_token_file_is_tried_once_per_backoff_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request while the file is gone uses the last token; the disk is tried once per
    TOKEN_RETRY, and the problem is logged once for the whole streak, then its end once."""
    path = tmp_path / "token"
    path.write_text("token-1")
    clock = Clock()
    token_file = TokenFile(path, clock=clock)
    path.unlink()
    clock.now += 60  # the refresh is due
    caplog.set_level(logging.INFO, logger="tailwatch.kube")
    for _ in range(4):  # 20 s of requests, 100 a second
        for _ in range(500):
            assert (token_file.cached() or token_file.token()) == "token-1"
            clock.now += 0.01
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()
    assert token_file.attempts == 1 + 4  # the first read, then one per 5 s
    token_file.expire()  # a 401 meanwhile does not break the backoff
    assert token_file.cached() == "token-1"
    path.write_text("token-2")
    clock.now += TOKEN_RETRY
    assert token_file.token() == "token-2"
    assert "is read again" in caplog.records[-1].getMessage()
    path.unlink()  # a new streak is logged again
    clock.now += 60
    assert token_file.token() == "token-2"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
