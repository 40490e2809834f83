"""A kubeconfig read the way the official `kubernetes` package's loader reads it, without it.

The agent needs three things from a kubeconfig: where the API server is, how to trust it and
how to authenticate. The package's loader imports the package's whole client to get them
(every API model, pydantic, requests, oauthlib: ~20 MiB of the agent's resident memory and
half a second of start-up), so this module reads the same fields by the same rules:

- the active context: the one asked for, else `current-context`; its cluster and its user
  (a context without a user authenticates nothing);
- the cluster's `server`, `certificate-authority(-data)`, `insecure-skip-tls-verify` and
  `tls-server-name`; the certificate authority and the client certificate only for an
  https server;
- the user's credential, the first found in the loader's order: `auth-provider`, `token`,
  `tokenFile`, `exec`, `username` with `password`; and `client-certificate(-data)` with
  `client-key(-data)`;
- a `-data` field (base64) wins over its file; a relative path is relative to the
  directory the kubeconfig was named in, without following symlinks.

An `auth-provider` (the legacy gcp and oidc providers, removed from kubectl) is still
handed to the package's loader by exporter.kube.config: the one case that imports it.
`proxy-url` is not used (the API session connects directly), and only the one file named
is read (the first of $KUBECONFIG), both as before.

The `exec` credential plugin (client.authentication.k8s.io) is run here: once at load (a
plugin that fails then is a configuration error), and again whenever its credential has
expired. Pure parsing apart from the plugin: paths are resolved, not read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exporter.logs import LogOnce

log = logging.getLogger("tailwatch.kube")

#: A plugin's credential is fetched again this long before its expirationTimestamp, as the
#: package's loader does, so that no request carries a token about to expire.
EXPIRY_SKEW = 300.0
#: Seconds a credential plugin may run before it counts as failed: a hung plugin must not
#: hold a thread, and every request waiting on it, forever.
EXEC_TIMEOUT = 60.0
#: Seconds after a plugin failed before it is run again: a failing plugin costs one process
#: per this, not one per request.
EXEC_RETRY = 5.0


class KubeconfigInvalid(ValueError):
    """The kubeconfig lacks what the connection needs, or holds it in the wrong shape."""


class CredentialPluginError(Exception):
    """The exec credential plugin failed (at load: a configuration error)."""


@dataclass(frozen=True)
class Pem:
    """A certificate or key given inline (`data`, PEM or DER) or in a file (`path`)."""

    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Kubeconfig:
    """What the active context of a kubeconfig says about its API server and user."""

    server: str
    verify: bool  # False with insecure-skip-tls-verify: true
    ca: Pem | None
    client_certificate: Pem | None
    client_key: Pem | None
    tls_server_name: str | None
    directory: Path  # relative paths (tokenFile, the plugin's command) start here
    cluster: Mapping[str, Any]  # as written, for an exec plugin with provideClusterInfo
    token: str | None = None
    token_file: Path | None = None
    basic_auth: tuple[str, str] | None = None
    exec_plugin: Mapping[str, Any] | None = None
    auth_provider: Mapping[str, Any] | None = None


def _named(config: Mapping[str, Any], key: str, name: object) -> Mapping[str, Any] | None:
    """The `key` entry (e.g. `cluster`) of the list `key + 's'` item called `name`."""
    items = config.get(key + "s") or []
    if not isinstance(items, list):
        raise KubeconfigInvalid(f"`{key}s` is not a list")
    for item in items:
        if isinstance(item, Mapping) and item.get("name") == name:
            entry = item.get(key)
            if entry is None:
                return {}
            if not isinstance(entry, Mapping):
                raise KubeconfigInvalid(f"the {key} {name!r} is not a mapping")
            return entry
    return None


def _pem(entry: Mapping[str, Any], key: str, directory: Path) -> Pem | None:
    data = entry.get(f"{key}-data")
    if data:
        try:
            return Pem(data=base64.b64decode(str(data), validate=False))
        except (binascii.Error, ValueError) as exc:
            raise KubeconfigInvalid(f"{key}-data is not base64: {exc}") from None
    path = entry.get(key)
    if not path:
        return None
    resolved = Path(os.path.normpath(directory / str(path)))
    if not resolved.is_file():
        raise KubeconfigInvalid(f"{key}: the file {resolved} does not exist")
    return Pem(path=resolved)


def read_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> Kubeconfig:
    """The active context of the kubeconfig at `path`. Raises KubeconfigInvalid, OSError, or
    yaml.YAMLError for a file that is not YAML."""
    import yaml  # noqa: PLC0415 (in-cluster, the agent parses no YAML)

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, Mapping):
        raise KubeconfigInvalid(f"{path} is not a kubeconfig (no mapping at its top)")
    name = context or config.get("current-context")
    if not name:
        raise KubeconfigInvalid("no context: the kubeconfig sets no current-context")
    ctx = _named(config, "context", name)
    if ctx is None:
        raise KubeconfigInvalid(f"the kubeconfig has no context {name!r}")
    cluster = _named(config, "cluster", ctx.get("cluster"))
    if cluster is None:
        raise KubeconfigInvalid(f"the context {name!r} names no cluster of the kubeconfig")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise KubeconfigInvalid(f"the cluster of the context {name!r} has no server")
    user = (_named(config, "user", ctx["user"]) if ctx.get("user") else None) or {}
    # The directory the file was named in: a kubeconfig mounted from a Secret is
    # `..data/kubeconfig` behind a link whose target the next rotation deletes.
    directory = Path(os.path.abspath(path)).parent
    https = server.startswith("https://")
    insecure = cluster.get("insecure-skip-tls-verify", False)
    if not isinstance(insecure, bool):
        raise KubeconfigInvalid("insecure-skip-tls-verify is not true or false")
    settings: dict[str, Any] = {}
    if isinstance(user.get("auth-provider"), Mapping) and user["auth-provider"].get("name"):
        settings["auth_provider"] = user["auth-provider"]
    elif user.get("token"):
        settings["token"] = str(user["token"])
    elif user.get("tokenFile"):
        settings["token_file"] = directory / str(user["tokenFile"])
    elif user.get("exec"):
        if not isinstance(user["exec"], Mapping):
            raise KubeconfigInvalid("the user's exec is not a mapping")
        settings["exec_plugin"] = user["exec"]
    elif "username" in user and "password" in user:
        settings["basic_auth"] = (str(user["username"]), str(user["password"]))
    return Kubeconfig(
        server=server,
        verify=not insecure,
        ca=_pem(cluster, "certificate-authority", directory) if https else None,
        client_certificate=_pem(user, "client-certificate", directory) if https else None,
        client_key=_pem(user, "client-key", directory) if https else None,
        tls_server_name=str(cluster["tls-server-name"]) if cluster.get("tls-server-name") else None,
        directory=directory,
        cluster=cluster,
        **settings,
    )


def basic_auth_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


@dataclass(frozen=True)
class ExecResult:
    """What one run of a credential plugin gave."""

    token: str | None
    client_certificate: bytes | None  # PEM, with client_key, instead of a token
    client_key: bytes | None
    expires: float | None  # wall-clock seconds; None: valid until the agent stops


def _expiry(status: Mapping[str, Any]) -> float | None:
    stamp = status.get("expirationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CredentialPluginError(f"exec: bad expirationTimestamp {stamp!r}") from None


class ExecPlugin:
    """A credential plugin (the user's `exec`): a command that prints an ExecCredential,
    run again whenever the credential it gave has expired (5 minutes before its
    expirationTimestamp). Requests between runs use the credential kept. A plugin that
    fails keeps the last credential in use (the server says whether it still holds: a 401
    is a watch error like any other, backed off) and is tried again `retry` seconds later,
    not at every request; the failure is logged once per streak.

    The plugin runs without a terminal, as kubectl runs it from a script: the environment
    plus the plugin's `env`, KUBERNETES_EXEC_INFO describing the request (and the cluster,
    with provideClusterInfo), in the kubeconfig's directory."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        directory: Path,
        cluster: Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry: float = EXEC_RETRY,
        timeout: float = EXEC_TIMEOUT,
    ) -> None:
        for key in ("command", "apiVersion"):
            if not spec.get(key):
                raise KubeconfigInvalid(f"exec: the plugin has no {key}")
        self.api_version = str(spec["apiVersion"])
        command = str(spec["command"])
        if os.sep in command and not os.path.isabs(command):
            command = str(directory / command)  # as client-go resolves it
        self.argv: Sequence[str] = [command, *(str(a) for a in spec.get("args") or [])]
        self.env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        exec_spec: dict[str, Any] = {"interactive": False}
        if spec.get("provideClusterInfo"):
            exec_spec["cluster"] = _cluster_info(cluster)
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": exec_spec}
        self.exec_info = json.dumps(info)  # KUBERNETES_EXEC_INFO, the same at every run
        self.directory = directory
        self.retry = retry
        self.timeout = timeout
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._log = LogOnce(log, clock=clock)
        self._next_try = 0.0  # no run before this (clock), while failing
        self._failing = False  # the last run failed
        self.runs = 0
        self.result = self._run()  # a plugin that fails at load is a configuration error

    def _run(self) -> ExecResult:
        self.runs += 1
        try:
            done = subprocess.run(
                self.argv,
                env={**os.environ, **self.env, "KUBERNETES_EXEC_INFO": self.exec_info},
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CredentialPluginError(
                f"exec: the plugin {self.argv[0]} ran longer than {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise CredentialPluginError(f"exec: cannot run {self.argv[0]}: {exc}") from None
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()
            raise CredentialPluginError(
                f"exec: the plugin {self.argv[0]} exited with status {done.returncode}"
                + (f": {stderr}" if stderr else "")
            )
        try:
            data = json.loads(done.stdout)
        except ValueError as exc:
            raise CredentialPluginError(f"exec: the plugin's output is not JSON: {exc}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("status"), Mapping):
            raise CredentialPluginError("exec: the plugin's output has no status")
        if data.get("apiVersion") != self.api_version:
            raise CredentialPluginError(
                f"exec: the plugin answered in {data.get('apiVersion')!r}, not {self.api_version!r}"
            )
        status = data["status"]
        if status.get("token"):
            return ExecResult(str(status["token"]), None, None, _expiry(status))
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            return ExecResult(
                None,
                str(status["clientCertificateData"]).encode(),
                str(status["clientKeyData"]).encode(),
                _expiry(status),
            )
        raise CredentialPluginError(
            "exec: the plugin gave neither a token nor a client certificate and key"
        )

    def _due(self) -> bool:
        expires = self.result.expires
        return expires is not None and self._wall() >= expires - EXPIRY_SKEW

    def _headers(self) -> dict[str, str]:
        token = self.result.token
        return {"authorization": f"Bearer {token}"} if token else {}

    def cached(self) -> dict[str, str] | None:
        """The headers if the credential kept is still good (no I/O), else None."""
        return None if self._due() else self._headers()

    def fetch(self) -> dict[str, str]:
        """The headers, after running the plugin if its credential expired (blocks)."""
        with self._lock:
            if self._due() and self._clock() >= self._next_try:
                try:
                    self.result = self._run()
                except CredentialPluginError as exc:
                    self._next_try = self._clock() + self.retry
                    self._failing = True
                    self._log.warning(
                        "exec",
                        "the credential plugin failed (its last credential is still used; "
                        "tried again every %gs): %s",
                        self.retry,
                        exc,
                    )
                else:
                    if self._failing:
                        self._failing = False
                        self._log.forget("exec")  # a new streak logs again
                        log.info("the credential plugin gave a credential again")
            return self._headers()


def _cluster_info(cluster: Mapping[str, Any]) -> dict[str, Any]:
    """The cluster as KUBERNETES_EXEC_INFO carries it (provideClusterInfo): as written, with
    the plugin's own `config` from the cluster's exec extension."""
    info = dict(cluster)
    for extension in cluster.get("extensions") or []:
        if isinstance(extension, Mapping) and (
            extension.get("name") == "client.authentication.k8s.io/exec"
        ):
            info["config"] = extension.get("extension")
            break
    return info
