"""The agent's own API client over HTTPS, against the simulator with a real CA.

Each refusal is a TLS failure before any HTTP request reaches the server: the simulator's
request log stays empty, the reflector counts `tls_error` restarts and hands nothing over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from exporter.kube.config import KubeConnection, load_connection
from exporter.kube.watching import (
    ApiSession,
    ApiStatusError,
    ConnectionFailed,
    Reflector,
    ResourceSpec,
    TlsFailed,
    list_objects,
)
from exporter.simulator import ApiServer, objects
from exporter.simulator.tls import ServerTls
from tests.agent.conftest import running_agent
from tests.certs import CertificateAuthority, Issued
from tests.conftest import wait_for
from tests.kube.test_reflector import FAST, Recorder

TOKEN = "tls-test-token"
PODS = ResourceSpec("pods", "/api/v1/pods", field_selector="spec.nodeName=node-a")
#: The in-cluster name of the API server's Service; never resolved: every URL is 127.0.0.1.
SERVICE_NAME = "kubernetes.default.svc"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", name="cluster-ca")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> Issued:
    """What a real API server's certificate carries: its Service's names and an IP."""
    return ca.issue("apiserver", dns_names=(SERVICE_NAME,), ips=("127.0.0.1",))


@asynccontextmanager
async def https_api(
    ca: CertificateAuthority, cert: Issued, **kwargs: Any
) -> AsyncIterator[ApiServer]:
    """The simulator serving `cert` over HTTPS, with one pod on node-a."""
    tls = ServerTls(
        cert.cert_file,
        cert.key_file,
        client_ca_file=kwargs.pop("client_ca_file", None),
        require_client_cert=kwargs.pop("require_client_cert", False),
    )
    server = ApiServer(
        token=kwargs.pop("token", TOKEN),
        bookmark_interval=0.2,
        tls=tls,
        certificate_authority=ca.cert_pem,
        **kwargs,
    )
    async with server:
        server.store.create("pods", objects.bare_pod("secure", node="node-a"))
        yield server


def connect(api: ApiServer, tmp_path: Path, **overrides: Any) -> KubeConnection:
    """The agent's connection from a kubeconfig for `api`, written with `overrides`."""
    return load_connection(str(api.write_kubeconfig(tmp_path / "kubeconfig", **overrides)))


async def list_pods(connection: KubeConnection) -> list[Mapping[str, Any]]:
    async with ApiSession(connection, FAST) as session:
        items, _ = await list_objects(session, PODS)
    return items


async def assert_refused(api: ApiServer, connection: KubeConnection, why: str) -> None:
    """Refused in the handshake: a TlsFailed naming `why`; the server saw no request."""
    with pytest.raises(TlsFailed, match=why):
        await list_pods(connection)
    assert api.requests.records == []


async def test_a_certificate_with_the_ip_san_of_the_url_is_trusted(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    async with https_api(ca, server_cert) as api:
        assert api.url.startswith("https://127.0.0.1:")
        connection = connect(api, tmp_path)
        assert connection.verify and connection.server_name is None
        assert connection.tls == "verified"
        assert [p["metadata"]["name"] for p in await list_pods(connection)] == ["secure"]


async def test_the_ca_can_be_a_file(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    async with https_api(ca, server_cert) as api:
        connection = connect(
            api, tmp_path, certificate_authority=None, certificate_authority_file=ca.cert_file
        )
        assert len(await list_pods(connection)) == 1


async def test_a_certificate_from_another_ca_is_refused_and_the_watch_says_why(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    """A man in the middle with a certificate for the right address, signed by his own CA."""
    impostor_ca = CertificateAuthority.create(tmp_path / "impostor", name="impostor-ca")
    impostor = impostor_ca.issue("apiserver", dns_names=(SERVICE_NAME,), ips=("127.0.0.1",))
    async with https_api(impostor_ca, impostor) as api:
        connection = connect(api, tmp_path, certificate_authority=ca.cert_pem)
        await assert_refused(api, connection, "certificate verify failed")
        recorder = Recorder()
        async with ApiSession(connection, FAST) as session:
            reflector = Reflector(session, PODS, recorder)
            task = asyncio.create_task(reflector.run())
            try:
                await wait_for(
                    lambda: reflector.health.restarts.get("tls_error", 0) >= 3, "TLS failures"
                )
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert not reflector.health.synced
        assert reflector.health.failing_since is not None
        assert set(reflector.health.restarts) == {"tls_error"}
        assert len(reflector.delays) >= 3, "each failure was followed by a backoff"
        assert recorder.lists == 0 and recorder.delivered == []
        assert api.requests.records == []


async def test_a_certificate_for_another_address_is_refused(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """Signed by the right CA (it signs every node's kubelet, say), but not for this server."""
    other = ca.issue("kubelet", dns_names=("node-a",), ips=("127.0.0.2",))
    async with https_api(ca, other) as api:
        await assert_refused(api, connect(api, tmp_path), "IP address mismatch")


async def test_tls_server_name_is_verified_instead_of_the_ip(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """The URL is an IP the certificate does not carry; tls-server-name names the one it does."""
    by_name = ca.issue("apiserver", dns_names=(SERVICE_NAME,))
    async with https_api(ca, by_name) as api:
        await assert_refused(api, connect(api, tmp_path), "IP address mismatch")
        connection = connect(api, tmp_path, tls_server_name=SERVICE_NAME)
        assert connection.server_name == SERVICE_NAME
        assert connection.ssl_context is not None and connection.ssl_context.check_hostname
        assert connection.tls == f"verified as {SERVICE_NAME}"
        assert len(await list_pods(connection)) == 1


async def test_tls_server_name_that_the_certificate_does_not_carry_is_refused(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    """Before, tls-server-name switched the name check off: any certificate the CA signed was
    taken. Now a certificate without that name is refused, even one valid for the URL's IP."""
    async with https_api(ca, server_cert) as api:
        connection = connect(api, tmp_path, tls_server_name="kubernetes.other-cluster.svc")
        await assert_refused(api, connection, "Hostname mismatch")
    kubelet = ca.issue("kubelet", dns_names=("node-a",), ips=("127.0.0.1",))
    async with https_api(ca, kubelet) as api:
        connection = connect(api, tmp_path, tls_server_name=SERVICE_NAME)
        await assert_refused(api, connection, "Hostname mismatch")


async def test_insecure_skip_tls_verify_works_and_warns_once(
    ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The one way to turn verification off; the agent says so at startup, once."""
    unverifiable = ca.issue("apiserver", dns_names=("somewhere-else",))
    async with https_api(ca, unverifiable) as api:
        connection = connect(
            api, tmp_path, certificate_authority=None, insecure_skip_tls_verify=True
        )
        assert connection.verify is False
        assert connection.tls == "UNVERIFIED (insecure-skip-tls-verify)"
        caplog.set_level(logging.WARNING, logger="tailwatch.watch")
        async with running_agent(Path(connection.source), tmp_path / "cgroup") as agent:
            assert agent.readiness() == (True, "ready")
            await wait_for(lambda: api.requests.watches("pods"), "a pod watch")
        warnings = [r.getMessage() for r in caplog.records if "verification" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "OFF" in warnings[0] and api.url in warnings[0]


async def test_the_whole_agent_syncs_over_verified_tls(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tailwatch.watch")
    async with https_api(ca, server_cert) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        async with running_agent(kubeconfig, tmp_path / "cgroup") as agent:
            assert agent.readiness() == (True, "ready")
        assert {r.resource for r in api.requests.records} >= {"pods", "services"}
    assert not [r for r in caplog.records if "verification" in r.getMessage()]


@pytest.fixture
def client_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "client-ca", name="client-ca")


async def test_a_required_client_certificate_is_presented(
    ca: CertificateAuthority,
    server_cert: Issued,
    client_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    agent_cert = client_ca.issue("agent", client=True, common_name="system:node:node-a")
    async with https_api(
        ca, server_cert, client_ca_file=client_ca.cert_file, require_client_cert=True
    ) as api:
        # As -data and as files; no token: the certificate is the credential.
        as_data = connect(
            api, tmp_path, token=None, client_certificate=agent_cert.cert_pem,
            client_key=agent_cert.key_pem,
        )  # fmt: skip
        assert len(await list_pods(as_data)) == 1
        as_files = connect(
            api, tmp_path, token=None, client_certificate_file=agent_cert.cert_file,
            client_key_file=agent_cert.key_file,
        )  # fmt: skip
        assert len(await list_pods(as_files)) == 1
        assert api.client_users == {"system:node:node-a"}
        api.requests.clear()
        # Without one, or with one the server's client CA did not sign: the server ends the
        # connection in the handshake. (Python's asyncio server closes it without the TLS
        # alert a Go server sends, so the agent sees a disconnection, not the alert.)
        stranger = ca.issue("stranger", client=True, common_name="system:node:node-a")
        with_stranger = connect(
            api, tmp_path, client_certificate=stranger.cert_pem, client_key=stranger.key_pem
        )
        for refused in (connect(api, tmp_path), with_stranger):
            with pytest.raises(ConnectionFailed):
                await list_pods(refused)
        assert api.requests.records == []


async def test_an_optional_client_certificate_authenticates_like_a_token(
    ca: CertificateAuthority,
    server_cert: Issued,
    client_ca: CertificateAuthority,
    tmp_path: Path,
) -> None:
    """The real server's x509 authenticator: a verified certificate is a user; without a
    certificate or a token, the request is 401."""
    agent_cert = client_ca.issue("agent", client=True, common_name="tailwatch")
    async with https_api(ca, server_cert, client_ca_file=client_ca.cert_file) as api:
        with_cert = connect(
            api, tmp_path, token=None, client_certificate=agent_cert.cert_pem,
            client_key=agent_cert.key_pem,
        )  # fmt: skip
        assert len(await list_pods(with_cert)) == 1
        assert api.client_users == {"tailwatch"}
        with pytest.raises(ApiStatusError, match="401"):
            await list_pods(connect(api, tmp_path, token=None))
        assert len(await list_pods(connect(api, tmp_path))) == 1  # the token
