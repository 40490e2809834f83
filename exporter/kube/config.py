"""Connection settings for the Kubernetes API, from the in-cluster service account or a kubeconfig.

What the API session (exporter.kube.watching) needs: a base URL, an SSL context, the name
the server's certificate must carry, and an `Authorization` header fetched fresh for every
request, so rotating tokens and expiring exec credentials keep working. In-cluster settings
are read here, a kubeconfig by exporter.kube.kubeconfig: the official `kubernetes` package is
imported only for a kubeconfig whose user has a legacy `auth-provider` (its loader still
refreshes those), because importing it costs the agent ~20 MiB of memory for what a few
hundred lines read.

TLS, as kubectl does it:

- The server's certificate is always verified, against the kubeconfig's
  certificate-authority(-data), the service account's `ca.crt` in-cluster, or the system's
  roots when neither is given; and so is its name: the URL's host (an IP address is matched
  against the certificate's IP SANs), or `tls-server-name` when the kubeconfig sets one (sent
  as SNI and verified instead of the host, for a URL that is an IP address or a tunnel).
- `insecure-skip-tls-verify: true` is the only way to turn that off; `KubeConnection.verify`
  is then False and the API session logs a warning when it starts. Combined with a CA it is
  refused, as kubectl refuses it.
- Client certificates (client-certificate/client-key, as files or -data, or from an exec
  plugin) are presented.

Bearer tokens read from a file, the projected service account token in-cluster and a
kubeconfig's `tokenFile`, are read again every `TOKEN_REFRESH` seconds (the kubelet replaces
the projected token about every hour; the old one stays valid a while) and at once after the
server answers 401, as client-go does. A read that fails is tried again `TOKEN_RETRY` seconds
later, not at every request, and logged once per failure streak (then at most every 5
minutes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from exporter.kube.kubeconfig import (
    CredentialPluginError,
    ExecPlugin,
    Kubeconfig,
    KubeconfigInvalid,
    Pem,
    basic_auth_header,
    read_kubeconfig,
)
from exporter.logs import LogOnce

log = logging.getLogger("tailwatch.kube")

#: Where the kubelet mounts the pod's service account (token, ca.crt, namespace).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: Seconds a token read from a file is used before the file is read again (client-go's period).
TOKEN_REFRESH = 60.0
#: Seconds after a failed read of a token file before it is tried again: a missing file costs
#: one read attempt per this, not one per request.
TOKEN_RETRY = 5.0


class KubeConfigError(Exception):
    """The API server cannot be configured (no kubeconfig, bad file, no in-cluster env)."""


class TokenFile:
    """A bearer token kept in a file that is replaced while the agent runs.

    The file is opened by name at every read, so a kubelet's atomic swap of the `..data`
    symlink is seen. A read that fails or finds the file empty (a rotation caught half-way,
    a Secret deleted) keeps the last good token and is tried again `retry` seconds later:
    the requests in between use the last token without touching the disk, and the failure
    is logged once per streak (again at most every 5 minutes while it lasts)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        refresh: float = TOKEN_REFRESH,
        clock: Callable[[], float] = time.monotonic,
        retry: float = TOKEN_RETRY,
    ) -> None:
        self.path = Path(path)
        self.refresh = refresh
        self.retry = retry
        self._clock = clock
        self._lock = threading.Lock()
        self._token = ""
        self._next_read = 0.0  # the clock's time at which the file is read again
        self._failing = False  # the last read failed
        self._log = LogOnce(log, clock=clock)
        self.reads = 0  # successful reads, for tests and logs
        self.attempts = 0  # reads tried, failed ones included
        self._token = self._read_or_raise()  # a missing or empty file is a configuration error

    def _read_or_raise(self) -> str:
        self.attempts += 1
        token = self.path.read_text(encoding="utf-8").strip()
        if not token:
            raise KubeConfigError(f"the token file {self.path} is empty")
        self._next_read = self._clock() + self.refresh
        self.reads += 1
        return token

    def due(self) -> bool:
        """True when the next request should read the file again."""
        return self._clock() >= self._next_read

    def token(self) -> str:
        """The current token, read again if it is older than `refresh` (may block on I/O)."""
        with self._lock:
            if self.due():
                try:
                    self._token = self._read_or_raise()
                except (OSError, UnicodeDecodeError, KubeConfigError) as exc:
                    # Keep using the last token; the server says whether it still holds.
                    self._next_read = self._clock() + self.retry
                    self._failing = True
                    self._log.warning(
                        "token_file",
                        "cannot read the token file %s (the last token read is still used; "
                        "tried again every %gs): %s",
                        self.path,
                        self.retry,
                        exc,
                    )
                else:
                    if self._failing:
                        self._failing = False
                        self._log.forget("token_file")  # a new streak logs again
                        log.info("the token file %s is read again", self.path)
            return self._token

    def cached(self) -> str | None:
        """The token if no read is due (no I/O), else None."""
        return None if self.due() else self._token

    def expire(self) -> None:
        """The server refused the token: read the file at the next request, unless reading
        it is failing (then the retry's backoff holds: a 401 per request must not become a
        read per request)."""
        if not self._failing:
            self._next_read = self._clock()


class Credentials(Protocol):
    """A source of the headers that authenticate a request, other than a token file."""

    def cached(self) -> Mapping[str, str] | None:
        """The headers if they are at hand without I/O, else None (then `fetch`)."""

    def fetch(self) -> Mapping[str, str]:
        """The headers, refreshed if due; may block (run a plugin), so called in a thread."""


@dataclass(frozen=True)
class StaticCredentials:
    """A token or a user name and password written in the kubeconfig."""

    headers: Mapping[str, str]

    def cached(self) -> Mapping[str, str]:
        return self.headers

    def fetch(self) -> Mapping[str, str]:
        return self.headers


class PackageCredentials:
    """A legacy `auth-provider` (gcp, oidc), as the `kubernetes` package's loader refreshes
    it: its Configuration's auth_settings() refreshes an expired token, which can block."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration  # kubernetes.client.Configuration

    def cached(self) -> None:
        return None

    def fetch(self) -> dict[str, str]:
        cfg = self.configuration
        settings = cfg.auth_settings()
        return {
            str(s["key"]): str(s["value"])
            for s in settings.values()
            if s.get("in") == "header" and s.get("value")
        }


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate to it."""

    host: str
    ssl_context: ssl.SSLContext | None
    source: str  # "in-cluster" or the kubeconfig path, for log lines
    #: The name the server's certificate must carry when it is not the URL's host
    #: (tls-server-name); also sent as SNI.
    server_name: str | None = None
    #: A token read from a file and re-read as it rotates.
    token_file: TokenFile | None = None
    #: Any other credential: a static token, basic auth, an exec plugin, an auth-provider.
    credentials: Credentials | None = None

    @property
    def verify(self) -> bool:
        """False only with insecure-skip-tls-verify: the server's certificate is not checked."""
        return self.ssl_context is None or self.ssl_context.verify_mode != ssl.CERT_NONE

    @property
    def tls(self) -> str:
        """How the connection is secured, for the startup log line."""
        if self.ssl_context is None:
            return "none (http)"
        if not self.verify:
            return "UNVERIFIED (insecure-skip-tls-verify)"
        if self.server_name:
            return f"verified as {self.server_name}"
        return "verified"

    async def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate one request. Most requests find them at hand; a token
        file due for a read or an expired plugin credential is refreshed in a thread, off the
        event loop."""
        if self.token_file is not None:
            token = self.token_file.cached()
            if token is None:
                token = await asyncio.to_thread(self.token_file.token)
            return {"authorization": f"Bearer {token}"}
        credentials = self.credentials
        if credentials is None:
            return {}
        headers = credentials.cached()
        if headers is None:
            headers = await asyncio.to_thread(credentials.fetch)
        return dict(headers)

    def credentials_rejected(self) -> None:
        """The server answered 401: a rotated token file is read again at the next request."""
        if self.token_file is not None:
            self.token_file.expire()


def _ssl_context(
    host: str, verify: bool, ca: Pem | None, cert: Pem | None, key: Pem | None
) -> ssl.SSLContext | None:
    if not host.startswith("https://"):
        return None
    if not verify:
        if ca is not None:
            raise KubeConfigError(
                "the kubeconfig gives a certificate authority and insecure-skip-tls-verify: "
                "true; kubectl refuses this too: remove one of them"
            )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca is not None and ca.data is not None:
        pem = ca.data.lstrip().startswith(b"-----")
        # check_hostname stays on in every case: the name checked is the URL's host, or
        # tls-server-name, which the session passes as each request's server_hostname.
        ctx = ssl.create_default_context(cadata=ca.data.decode("ascii") if pem else ca.data)
    else:
        ctx = ssl.create_default_context(cafile=ca.path if ca is not None else None)
    if (cert is None) != (key is None):
        raise KubeConfigError(
            "the kubeconfig gives a client certificate without its key, or a key without "
            "its certificate"
        )
    if cert is not None and key is not None:
        _load_client_certificate(ctx, cert, key)
    return ctx


def _load_client_certificate(ctx: ssl.SSLContext, cert: Pem, key: Pem) -> None:
    """Client certificate and key, from their files or, given inline, from files that live
    only while OpenSSL reads them (it reads a chain from files alone)."""
    with tempfile.TemporaryDirectory(prefix="tailwatch-") as tmp:
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            if pem.path is not None:
                paths.append(pem.path)
                continue
            assert pem.data is not None
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem.data)
            paths.append(path)
        ctx.load_cert_chain(paths[0], paths[1])


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host or "%" in host else f"{host}:{port}"


def _in_cluster(
    env: Mapping[str, str], service_account_dir: Path, clock: Callable[[], float]
) -> KubeConnection:
    """The pod's service account: the API server of KUBERNETES_SERVICE_HOST/PORT, trusted
    through `ca.crt`, authenticated with the projected `token`, re-read as it rotates."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError(
            "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set"
        )
    token_path, ca_path = service_account_dir / "token", service_account_dir / "ca.crt"
    if not token_path.is_file():
        raise KubeConfigError(
            f"in-cluster: the service account token file does not exist ({token_path})"
        )
    if not ca_path.is_file():
        raise KubeConfigError(f"in-cluster: the service account CA file does not exist ({ca_path})")
    url = "https://" + _join_host_port(host, port)
    try:
        token_file = TokenFile(token_path, clock=clock)
        ctx = _ssl_context(url, True, Pem(path=ca_path), None, None)
    except (OSError, UnicodeDecodeError, ssl.SSLError) as exc:
        raise KubeConfigError(f"in-cluster: cannot load the service account: {exc}") from exc
    return KubeConnection(url, ctx, "in-cluster", token_file=token_file)


def _package_credentials(path: str, context: str | None) -> PackageCredentials:
    """A legacy auth-provider, loaded and refreshed by the package's own loader."""
    from kubernetes import config as kconfig  # noqa: PLC0415 (only for an auth-provider)
    from kubernetes.client import Configuration  # noqa: PLC0415

    cfg = Configuration()
    try:
        kconfig.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    except kconfig.ConfigException as exc:
        raise KubeConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    return PackageCredentials(cfg)


def _from_kubeconfig(path: str, context: str | None, clock: Callable[[], float]) -> KubeConnection:
    import yaml  # noqa: PLC0415 (its errors; the reader imports it anyway)

    exec_plugin: ExecPlugin | None = None
    credentials: Credentials | None = None
    token_file: TokenFile | None = None
    try:
        kc: Kubeconfig = read_kubeconfig(path, context)
        if kc.auth_provider is not None:
            credentials = _package_credentials(path, context)
        elif kc.token is not None:
            credentials = StaticCredentials({"authorization": f"Bearer {kc.token}"})
        elif kc.token_file is not None:
            token_file = TokenFile(kc.token_file, clock=clock)
        elif kc.exec_plugin is not None:
            exec_plugin = ExecPlugin(kc.exec_plugin, kc.directory, kc.cluster, clock=clock)
            credentials = exec_plugin
        elif kc.basic_auth is not None:
            credentials = StaticCredentials({"authorization": basic_auth_header(*kc.basic_auth)})
    except KubeConfigError:
        raise
    except (
        KubeconfigInvalid,
        CredentialPluginError,
        yaml.YAMLError,
        OSError,
        UnicodeDecodeError,
        ValueError,
        KeyError,
        TypeError,
    ) as exc:
        raise KubeConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    cert, key = kc.client_certificate, kc.client_key
    if exec_plugin is not None and exec_plugin.result.client_certificate is not None:
        cert = Pem(data=exec_plugin.result.client_certificate)
        key = Pem(data=exec_plugin.result.client_key)
    try:
        ctx = _ssl_context(kc.server, kc.verify, kc.ca, cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot set up TLS for {kc.server}: {exc}") from exc
    return KubeConnection(
        host=kc.server,
        ssl_context=ctx,
        source=path,
        server_name=kc.tls_server_name if ctx is not None else None,
        token_file=token_file,
        credentials=credentials,
    )


def load_connection(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    service_account_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> KubeConnection:
    """Load API settings: the given kubeconfig, else in-cluster, else $KUBECONFIG/~/.kube/config.

    `service_account_dir`, `environ` and `clock` (which times token re-reads) are for tests."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        if not Path(kubeconfig).is_file():
            raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
        return _from_kubeconfig(kubeconfig, context, clock)
    if env.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(env, Path(service_account_dir), clock)
    path = env.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
        Path("~/.kube/config").expanduser()
    )
    if not Path(path).is_file():
        raise KubeConfigError(
            "no API server configured: not in a cluster (KUBERNETES_SERVICE_HOST unset) "
            f"and no kubeconfig at {path}; pass --kubeconfig"
        )
    return _from_kubeconfig(path, context, clock)
