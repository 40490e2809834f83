"""--tls-cert-file/--tls-key-file: /metrics over HTTPS with a real CA, TLS 1.2 at least, a
rotated Secret served to the next connection without a restart, a bad rotation that keeps
the previous pair, and a bad pair at startup that is a configuration error (exit 2)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from exporter.exposition import Exposition
from exporter.server import ReloadingCertificate, TlsError, build_app, start_server
from exporter.settings import ListenAddress
from tests.agent.conftest import running_agent
from tests.certs import CertificateAuthority, Issued
from tests.conftest import free_port
from tests.volumes import write_like_kubelet


class SecretVolume:
    """A directory laid out as the kubelet mounts a Secret: `tls.crt` -> `..data/tls.crt`,
    `..data` -> `..<timestamp>`; an update writes a new directory and renames a new `..data`
    symlink over the old one, so the files change all at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(Path("..data") / name)

    @property
    def cert_file(self) -> str:
        return str(self.root / "tls.crt")

    @property
    def key_file(self) -> str:
        return str(self.root / "tls.key")

    def publish(self, cert_pem: bytes, key_pem: bytes | None) -> None:
        """A new version of the Secret; without a key, its tls.key dangles."""
        files = {"tls.crt": cert_pem}
        if key_pem is not None:
            files["tls.key"] = key_pem
        write_like_kubelet(self.root, files)


def der(issued: Issued) -> bytes:
    return ssl.PEM_cert_to_DER_cert(issued.cert_pem.decode())


def client_context(ca: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_file))


async def served_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The certificate a new connection is given (DER)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        certificate = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert certificate is not None
        return bytes(certificate)
    finally:
        writer.close()
        await writer.wait_closed()


@asynccontextmanager
async def https(tls: ReloadingCertificate) -> AsyncIterator[int]:
    app = build_app(Exposition([]), lambda: (True, "ready"))
    runner = await start_server(app, ListenAddress("127.0.0.1", 0), tls=tls)
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca")


def leaf(ca: CertificateAuthority, stem: str) -> Issued:
    return ca.issue(stem, ips=("127.0.0.1",))


async def test_metrics_are_served_over_https_only(ca: CertificateAuthority) -> None:
    issued = leaf(ca, "a")
    async with https(ReloadingCertificate(str(issued.cert_file), str(issued.key_file))) as port:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"https://127.0.0.1:{port}/healthz", ssl=client_context(ca)) as response,
        ):
            assert (response.status, await response.text()) == (200, "ok\n")
        with pytest.raises(aiohttp.ClientError):
            async with aiohttp.ClientSession() as http:
                await http.get(f"http://127.0.0.1:{port}/metrics")


def legacy_client(ca: CertificateAuthority) -> ssl.SSLContext:
    """A client that speaks TLS 1.1 at most."""
    context = client_context(ca)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1, TLSv1_1: deprecated
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def test_tls_below_1_2_is_refused(ca: CertificateAuthority) -> None:
    issued = leaf(ca, "a")
    # The control: this client does speak TLS 1.1 with a server that allows it.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.load_cert_chain(issued.cert_file, issued.key_file)
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=permissive)
    await site.start()
    try:
        assert await served_certificate(site.port, legacy_client(ca)) == der(issued)
    finally:
        await runner.cleanup()

    async with https(ReloadingCertificate(str(issued.cert_file), str(issued.key_file))) as port:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await served_certificate(port, legacy_client(ca))
        modern = client_context(ca)
        modern.maximum_version = ssl.TLSVersion.TLSv1_2
        assert await served_certificate(port, modern) == der(issued)


async def test_a_rotated_certificate_is_served_to_new_connections_without_restart(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    first, second = leaf(ca, "first"), leaf(ca, "second")
    secret = SecretVolume(tmp_path / "secret")
    secret.publish(first.cert_pem, first.key_pem)
    tls = ReloadingCertificate(secret.cert_file, secret.key_file)
    async with https(tls) as port:
        assert await served_certificate(port, client_context(ca)) == der(first)
        secret.publish(second.cert_pem, second.key_pem)
        assert await served_certificate(port, client_context(ca)) == der(second)
        assert await served_certificate(port, client_context(ca)) == der(second)
    assert tls.reloads == 1


async def test_a_bad_rotation_keeps_the_previous_pair_counted_and_logged_once(
    ca: CertificateAuthority, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "exporter.server")
    first, second, third = leaf(ca, "first"), leaf(ca, "second"), leaf(ca, "third")
    secret = SecretVolume(tmp_path / "secret")
    secret.publish(first.cert_pem, first.key_pem)
    counted: list[str] = []
    tls = ReloadingCertificate(secret.cert_file, secret.key_file, counted.append)
    async with https(tls) as port:
        secret.publish(second.cert_pem, first.key_pem)  # the key of another certificate
        for _ in range(3):
            assert await served_certificate(port, client_context(ca)) == der(first)
        assert counted == ["tls_reload_failed"]
        secret.publish(second.cert_pem, None)  # the key missing altogether
        for _ in range(2):
            assert await served_certificate(port, client_context(ca)) == der(first)
        assert counted == ["tls_reload_failed"] * 2
        secret.publish(third.cert_pem, third.key_pem)  # fixed: served at once
        assert await served_certificate(port, client_context(ca)) == der(third)
    logged = [r.getMessage() for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(logged) == 2
    assert "tls.key is not the key of --tls-cert-file" in logged[0]
    assert "No such file or directory" in logged[1]


def encrypted(issued: Issued, path: Path) -> Path:
    key = serialization.load_pem_private_key(issued.key_pem, None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


def test_a_bad_pair_at_startup_is_a_clear_error(ca: CertificateAuthority, tmp_path: Path) -> None:
    a, b = leaf(ca, "a"), leaf(ca, "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    cases = {
        (a.cert_file, b.key_file): f"--tls-key-file {b.key_file} is not the key of "
        f"--tls-cert-file {a.cert_file}",
        (
            tmp_path / "missing.crt",
            a.key_file,
        ): f"--tls-cert-file {tmp_path / 'missing.crt'}: No such file",
        (garbage, a.key_file): f"--tls-cert-file {garbage}: not a PEM certificate",
        (a.cert_file, garbage): f"--tls-key-file {garbage}: not a PEM private key",
        (a.cert_file, encrypted(a, tmp_path / "enc.key")): "the key is encrypted",
    }
    for (cert_file, key_file), message in cases.items():
        with pytest.raises(TlsError) as raised:
            ReloadingCertificate(str(cert_file), str(key_file))
        assert message in str(raised.value), (cert_file, key_file)


async def test_the_cli_exits_2_on_a_bad_pair(
    ca: CertificateAuthority, kubeconfig: Path, tmp_path: Path
) -> None:
    a, b = leaf(ca, "a"), leaf(ca, "b")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "run", "--kubeconfig", str(kubeconfig),
        "--node-name", "node-a", "--listen", f"127.0.0.1:{free_port()}", "--otlp-listen", "",
        "--cgroup-root", str(tmp_path), "--tls-cert-file", str(a.cert_file),
        "--tls-key-file", str(b.key_file),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert (
        stderr.decode()
        .strip()
        .endswith(
            f"tailwatch: error: --tls-key-file {b.key_file} is not the key of "
            f"--tls-cert-file {a.cert_file}"
        )
    )


async def test_the_agent_serves_its_endpoints_over_tls(
    ca: CertificateAuthority, kubeconfig: Path, tmp_path: Path
) -> None:
    issued = leaf(ca, "agent")
    async with running_agent(
        kubeconfig,
        tmp_path / "cgroup",
        tls_cert_file=str(issued.cert_file),
        tls_key_file=str(issued.key_file),
    ) as agent:
        url = f"https://127.0.0.1:{agent.settings.listen.port}/metrics"
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, ssl=client_context(ca)) as response,
        ):
            assert response.status == 200
            assert "tailwatch_" in await response.text()
