"""Kubernetes configuration through the official loaders, proven against the simulator:
a static token, an exec credential plugin (re-run when its credential expires), and the
in-cluster service account."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.kube.config import KubeConfigError, load_connection
from exporter.simulator import ApiServer


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
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed")
    ca = tmp_path / "ca.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=test-ca", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    token = tmp_path / "token"
    token.write_text("sa-token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    from kubernetes.config import incluster_config

    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    connection = load_connection(None)
    assert connection.source == "in-cluster"
    assert connection.host == "https://10.96.0.1:443"
    assert connection.ssl_context is not None
    assert connection.ssl_context.get_ca_certs()[0]["subject"] == ((("commonName", "test-ca"),),)
    headers = await connection.auth_headers()
    assert headers["authorization"].lower() == "bearer sa-token"  # the scheme is case-blind


def test_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_connection(str(tmp_path / "nope"))
