"""The kubeconfig as the agent reads it without the `kubernetes` package: contexts, relative
paths, basic auth, exec credential plugins (their environment, failures and client
certificates) and the legacy auth-provider still loaded by the package, each proven against
the simulator where a request can show it."""

from __future__ import annotations

import base64
import json
import logging
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.kube.config import KubeConfigError, load_connection
from exporter.kube.kubeconfig import ExecPlugin
from exporter.simulator import ApiServer, kubeconfig_dict, objects, write_kubeconfig
from tests.certs import CertificateAuthority, Issued
from tests.kube.test_tls import ca, client_ca, https_api, list_pods, server_cert

__all__ = ["ca", "client_ca", "server_cert"]  # fixtures of test_tls, used here


def plugin(path: Path, body: str) -> Path:
    """An executable Python script at `path`: a credential plugin."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport json, os, pathlib, sys\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def credential(status: dict[str, Any]) -> str:
    """The plugin's printed answer, as client.authentication.k8s.io/v1."""
    answer = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
              "status": status}  # fmt: skip
    return f"print({json.dumps(json.dumps(answer))})\n"


def exec_user(command: str, **extra: Any) -> dict[str, Any]:
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": command,
                     "interactiveMode": "Never", **extra}}  # fmt: skip


def with_user(api: ApiServer, user: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    config = api.kubeconfig()
    config["users"][0]["user"] = user
    config["clusters"][0]["cluster"].update(cluster)
    return config


async def test_the_context_chooses_the_cluster_and_the_user(api: ApiServer, tmp_path: Path) -> None:
    async with ApiServer(token="other-token") as other:
        first, second = api.kubeconfig(), other.kubeconfig(name="second")
        config = {**first, **{k: first[k] + second[k] for k in ("clusters", "users", "contexts")}}
        path = write_kubeconfig(tmp_path / "kubeconfig", config)
        current = load_connection(str(path))
        assert current.host == api.url
        assert await current.auth_headers() == {"authorization": "Bearer test-token"}
        chosen = load_connection(str(path), "second")
        assert chosen.host == other.url
        assert await chosen.auth_headers() == {"authorization": "Bearer other-token"}
        other.store.create("pods", objects.bare_pod("p", node="node-a"))
        assert [p["metadata"]["name"] for p in await list_pods(chosen)] == ["p"]
        with pytest.raises(KubeConfigError, match="no context 'nope'"):
            load_connection(str(path), "nope")


def test_a_user_name_and_password_are_sent_as_basic_auth(tmp_path: Path) -> None:
    config = kubeconfig_dict("http://127.0.0.1:8080")
    config["users"][0]["user"] = {"username": "alice", "password": "s3cret"}
    connection = load_connection(str(write_kubeconfig(tmp_path / "kubeconfig", config)))
    assert connection.credentials is not None
    assert connection.credentials.cached() == {
        "authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()
    }


async def test_paths_are_relative_to_the_directory_the_kubeconfig_is_named_in(
    ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    """As with a kubeconfig mounted from a Secret: `..data/kubeconfig` behind a link, its
    CA beside it; the link's target directory is not where relative paths start."""
    async with https_api(ca, server_cert) as api:
        mount = tmp_path / "mount"
        real = mount / "..2024_01_01"
        real.mkdir(parents=True)
        (real / "ca.crt").write_bytes(ca.cert_pem)
        config = api.kubeconfig(certificate_authority=None, certificate_authority_file="ca.crt")
        write_kubeconfig(real / "kubeconfig", config)
        (mount / "..data").symlink_to(real.name)
        (mount / "kubeconfig").symlink_to("..data/kubeconfig")
        (mount / "ca.crt").symlink_to("..data/ca.crt")
        connection = load_connection(str(mount / "kubeconfig"))
        assert connection.tls == "verified"
        assert len(await list_pods(connection)) == 1


async def test_an_exec_plugin_gets_its_env_and_cluster_and_runs_in_the_kubeconfig_directory(
    api: ApiServer, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.json"
    body = (
        f"pathlib.Path({str(seen)!r}).write_text(json.dumps({{'cwd': os.getcwd(), "
        "'greeting': os.environ.get('GREETING'), "
        "'info': json.loads(os.environ['KUBERNETES_EXEC_INFO'])}))\n"
    ) + credential({"token": "test-token"})
    plugin(tmp_path / "conf" / "bin" / "get-token", body)
    extension = {"name": "client.authentication.k8s.io/exec", "extension": {"audience": "a"}}
    user = exec_user("./bin/get-token", env=[{"name": "GREETING", "value": "hello"}],
                     provideClusterInfo=True)  # fmt: skip
    config = with_user(api, user, extensions=[extension])
    connection = load_connection(str(write_kubeconfig(tmp_path / "conf" / "kubeconfig", config)))
    assert len(await list_pods(connection)) == 0  # authenticated: the simulator has no pods
    got = json.loads(seen.read_text())
    assert got["cwd"] == str(tmp_path / "conf")
    assert got["greeting"] == "hello"
    assert got["info"]["kind"] == "ExecCredential"
    assert got["info"]["spec"]["interactive"] is False
    assert got["info"]["spec"]["cluster"]["server"] == api.url
    assert got["info"]["spec"]["cluster"]["config"] == {"audience": "a"}


def test_an_exec_plugin_failing_at_start_is_a_configuration_error(
    api: ApiServer, tmp_path: Path
) -> None:
    command = plugin(tmp_path / "fails", "sys.stderr.write('no credentials\\n'); sys.exit(3)\n")
    path = write_kubeconfig(tmp_path / "kubeconfig", with_user(api, exec_user(str(command))))
    with pytest.raises(KubeConfigError, match="exited with status 3: no credentials"):
        load_connection(str(path))


class Clocks:
    """The monotonic clock of the retries and the wall clock of the expiry, moved by hand."""

    def __init__(self, wall: float) -> None:
        self.mono = 100.0
        self.wall = wall


def test_a_plugin_runs_again_near_expiry_and_a_failing_one_keeps_its_last_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fetched again 5 minutes before its expirationTimestamp, not at every request; a
    failing plugin keeps the last token in use (the server says whether it holds), is tried
    again every 5 s, not at every request, and logged once per failure streak."""
    expiry = 1893456000.0  # 2030-01-01T00:00:00Z
    runs, failing = tmp_path / "runs", tmp_path / "failing"
    body = (
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(n))\n"
        f"if pathlib.Path({str(failing)!r}).exists():\n"
        "    sys.exit('the identity provider is down')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', "
        "'kind': 'ExecCredential', "
        "'status': {'token': f't{n}', 'expirationTimestamp': '2030-01-01T00:00:00Z'}}))\n"
    )
    command = plugin(tmp_path / "plugin", body)
    clocks = Clocks(wall=expiry - 3600)
    exec_plugin = ExecPlugin(
        {"command": str(command), "apiVersion": "client.authentication.k8s.io/v1"},
        tmp_path, {}, clock=lambda: clocks.mono, wall_clock=lambda: clocks.wall,
    )  # fmt: skip

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    assert exec_plugin.cached() == bearer("t1")  # fresh: at hand, no run
    clocks.wall = expiry - 299  # within the 5 minutes before expiry: fetched again
    assert exec_plugin.cached() is None
    assert exec_plugin.fetch() == bearer("t2")
    failing.touch()
    with caplog.at_level(logging.INFO, logger="tailwatch.kube"):
        assert exec_plugin.fetch() == bearer("t2")  # failed: the last token
        assert exec_plugin.fetch() == bearer("t2")  # not run again before the retry
        assert runs.read_text() == "3"
        clocks.wall = expiry + 1
        clocks.mono += 5
        assert exec_plugin.fetch() == bearer("t2")
        assert runs.read_text() == "4"
        failing.unlink()
        clocks.mono += 5
        assert exec_plugin.fetch() == bearer("t5")
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "the identity provider is down" in m]) == 1
    assert "the credential plugin gave a credential again" in messages


async def test_an_exec_plugin_may_give_a_client_certificate(
    ca: CertificateAuthority, server_cert: Issued, client_ca: CertificateAuthority, tmp_path: Path
) -> None:
    agent_cert = client_ca.issue("agent", client=True, common_name="system:node:node-a")
    status = {"clientCertificateData": agent_cert.cert_pem.decode(),
              "clientKeyData": agent_cert.key_pem.decode()}  # fmt: skip
    command = plugin(tmp_path / "plugin", credential(status))
    async with https_api(
        ca, server_cert, client_ca_file=client_ca.cert_file, require_client_cert=True
    ) as api:
        config = with_user(api, exec_user(str(command)))
        connection = load_connection(str(write_kubeconfig(tmp_path / "kubeconfig", config)))
        assert await connection.auth_headers() == {}
        assert len(await list_pods(connection)) == 1
        assert api.client_users == {"system:node:node-a"}


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


async def test_a_legacy_auth_provider_is_still_loaded_by_the_package(tmp_path: Path) -> None:
    token = jwt({"sub": "tailwatch", "exp": 4102444800})  # 2100: not expired
    async with ApiServer(token=token) as api:
        provider = {"name": "oidc", "config": {"id-token": token, "idp-issuer-url": api.url,
                                               "client-id": "tailwatch"}}  # fmt: skip
        config = with_user(api, {"auth-provider": provider})
        connection = load_connection(str(write_kubeconfig(tmp_path / "kubeconfig", config)))
        assert await connection.auth_headers() == {"authorization": f"Bearer {token}"}
        assert len(await list_pods(connection)) == 0


def test_a_kubeconfig_without_a_server_or_with_a_bad_field_is_a_clear_error(
    tmp_path: Path,
) -> None:
    config = kubeconfig_dict("http://127.0.0.1:8080", token="t")
    del config["clusters"][0]["cluster"]["server"]
    path = write_kubeconfig(tmp_path / "kubeconfig", config)
    with pytest.raises(KubeConfigError, match="has no server"):
        load_connection(str(path))
    config = kubeconfig_dict("https://127.0.0.1:6443", token="t")
    config["clusters"][0]["cluster"]["certificate-authority"] = "missing.crt"
    write_kubeconfig(path, config)
    with pytest.raises(KubeConfigError, match=r"missing\.crt does not exist"):
        load_connection(str(path))
    path.write_text(yaml.safe_dump(["not", "a", "kubeconfig"]))
    with pytest.raises(KubeConfigError, match="not a kubeconfig"):
        load_connection(str(path))
