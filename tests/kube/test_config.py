"""Kubernetes configuration through the official loaders, proven against the simulator:
a static token, an exec credential plugin (re-run when its credential expires), and the
in-cluster service account."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest
import yaml

from exporter.kube.config import KubeConfigError, load_connection
from exporter.simulator import ApiServer, kubeconfig_dict, write_kubeconfig
from tests.certs import CertificateAuthority


async def test_static_token_from_kubeconfig(api: ApiServer, kubeconfig: Path) -> None:
    connection = load_connection(str(kubeconfig))
    assert connection.host == api.url
    assert connection.ssl_context is None  # http:// simulator
    assert await connection.auth_headers() == {"authorization": "Bearer test-token"}


def write_exec_plugin(tmp_path: Path, token: str, counter: Path) -> Path:
    """A credential plugin like aws-iam-authenticator or gke-gcloud-auth-plugin."""
    plugin = tmp_path / "credential-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        # Already expired: the loader must run the plugin again for every request.
        "status": {"token": token, "expirationTimestamp": "2000-01-01T00:00:00Z"},
    }
    plugin.write_text(
        f"#!{sys.executable}\n"
        "import pathlib\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1')\n"
        f"print({json.dumps(json.dumps(credential))})\n"
    )
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    return plugin


async def test_exec_credential_plugin(api: ApiServer, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    plugin = write_exec_plugin(tmp_path, "test-token", counter)
    config = yaml.safe_load(api.write_kubeconfig(tmp_path / "base").read_text())
    config["users"][0]["user"] = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    connection = load_connection(str(path))
    assert await connection.auth_headers() == {"authorization": "Bearer test-token"}
    runs = int(counter.read_text())
    assert await connection.auth_headers() == {"authorization": "Bearer test-token"}
    assert int(counter.read_text()) > runs, "an expired credential is fetched again"


async def test_in_cluster_service_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "sa", name="ca")  # writes sa/ca.crt
    (tmp_path / "sa" / "token").write_text("sa-token\n")  # the newline is not part of it
    # A Service's ClusterIP stands here; loopback, as every address in the tests is.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.96.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    connection = load_connection(None, service_account_dir=tmp_path / "sa")
    assert connection.source == "in-cluster"
    assert connection.host == "https://127.0.96.1:443"
    assert connection.ssl_context is not None
    assert connection.verify and connection.ssl_context.check_hostname
    subject = ((("commonName", ca.name),),)
    assert connection.ssl_context.get_ca_certs()[0]["subject"] == subject
    assert await connection.auth_headers() == {"authorization": "Bearer sa-token"}


def test_in_cluster_without_a_token_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    CertificateAuthority.create(tmp_path, name="ca")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.96.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeConfigError, match="token file does not exist"):
        load_connection(None, service_account_dir=tmp_path)
    (tmp_path / "token").write_text("")
    with pytest.raises(KubeConfigError, match="empty"):
        load_connection(None, service_account_dir=tmp_path)


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_connection(str(tmp_path / "nope"))


def test_a_kubeconfig_the_loader_cannot_parse_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("clusters: [unclosed\n")
    with pytest.raises(KubeConfigError, match="cannot load Kubernetes configuration"):
        load_connection(str(path))


def test_insecure_skip_tls_verify_with_a_ca_is_refused(tmp_path: Path) -> None:
    """kubectl refuses the pair: which of the two did the user mean?"""
    ca = CertificateAuthority.create(tmp_path)
    config = kubeconfig_dict(
        "https://127.0.0.1:6443",
        token="t",
        certificate_authority=ca.cert_pem,
        insecure_skip_tls_verify=True,
    )
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    with pytest.raises(KubeConfigError, match="insecure-skip-tls-verify"):
        load_connection(str(path))


def test_a_client_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    client = ca.issue("client", client=True, common_name="tailwatch")
    config = kubeconfig_dict(
        "https://127.0.0.1:6443",
        certificate_authority=ca.cert_pem,
        client_certificate=client.cert_pem,
    )
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    with pytest.raises(KubeConfigError, match="without its key"):
        load_connection(str(path))


def test_a_key_that_does_not_match_the_certificate_is_a_clear_error(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    client = ca.issue("client", client=True, common_name="tailwatch")
    other = ca.issue("other", client=True, common_name="someone-else")
    config = kubeconfig_dict(
        "https://127.0.0.1:6443",
        certificate_authority=ca.cert_pem,
        client_certificate_file=client.cert_file,
        client_key_file=other.key_file,
    )
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    with pytest.raises(KubeConfigError, match="cannot set up TLS"):
        load_connection(str(path))


async def test_the_kubeconfig_token_file_is_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-a-file\n")
    config = kubeconfig_dict("http://127.0.0.1:8080", token_file="token")
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    connection = load_connection(str(path))
    assert connection.token_file is not None
    assert await connection.auth_headers() == {"authorization": "Bearer from-a-file"}


async def test_a_token_beats_a_token_file_as_in_the_loader(tmp_path: Path) -> None:
    config = kubeconfig_dict("http://127.0.0.1:8080", token="inline", token_file="missing")
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    connection = load_connection(str(path))
    assert connection.token_file is None
    assert await connection.auth_headers() == {"authorization": "Bearer inline"}
