"""Kubeconfig files that point an ordinary client (the agent, kubectl, the official Python
client) at a simulated API server."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULT_NAME = "tailwatch-sim"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_dict(
    server_url: str,
    *,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    certificate_authority: bytes | None = None,
    certificate_authority_file: str | os.PathLike[str] | None = None,
    client_certificate: bytes | None = None,
    client_key: bytes | None = None,
    client_certificate_file: str | os.PathLike[str] | None = None,
    client_key_file: str | os.PathLike[str] | None = None,
    tls_server_name: str | None = None,
    insecure_skip_tls_verify: bool = False,
    name: str = DEFAULT_NAME,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one context (current), all named `name`.

    `certificate_authority` is the PEM of the CA that signed an https server's certificate; it
    is embedded as certificate-authority-data, so the file stands alone;
    `certificate_authority_file` names a PEM file instead. The client certificate and key
    likewise: PEM bytes become client-certificate-data / client-key-data, paths
    client-certificate / client-key. `token_file` is the user's tokenFile, `tls_server_name`
    the name the server's certificate is verified against instead of the URL's host.
    """
    cluster: dict[str, Any] = {"server": server_url}
    if certificate_authority is not None:
        cluster["certificate-authority-data"] = _b64(certificate_authority)
    if certificate_authority_file is not None:
        cluster["certificate-authority"] = str(certificate_authority_file)
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    if insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    user: dict[str, Any] = {"token": token} if token else {}
    if token_file is not None:
        user["tokenFile"] = str(token_file)
    if client_certificate is not None:
        user["client-certificate-data"] = _b64(client_certificate)
    if client_key is not None:
        user["client-key-data"] = _b64(client_key)
    if client_certificate_file is not None:
        user["client-certificate"] = str(client_certificate_file)
    if client_key_file is not None:
        user["client-key"] = str(client_key_file)
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    """Write `config` as YAML, readable by its owner only (it holds a token)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    return target
