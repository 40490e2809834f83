"""Connection settings for the Kubernetes API, from the in-cluster service account or a kubeconfig.

The official `kubernetes` package's loaders parse the configuration (the kubeconfig's contexts,
exec credential plugins, auth providers, the in-cluster environment); this module turns the
resulting `Configuration` into what an aiohttp session needs: a base URL, an SSL context, the
name the server's certificate must carry, and an `Authorization` header fetched fresh for every
request, so rotating tokens and expiring exec credentials keep working.

TLS, as kubectl does it:

- The server's certificate is always verified, against the kubeconfig's
  certificate-authority(-data), the service account's `ca.crt` in-cluster, or the system's
  roots when neither is given; and so is its name: the URL's host (an IP address is matched
  against the certificate's IP SANs), or `tls-server-name` when the kubeconfig sets one (sent
  as SNI and verified instead of the host, for a URL that is an IP address or a tunnel).
- `insecure-skip-tls-verify: true` is the only way to turn that off; `KubeConnection.verify`
  is then False and the API session logs a warning when it starts. Combined with a CA it is
  refused, as kubectl refuses it.
- Client certificates (client-certificate/client-key, as files or -data) are presented.

Bearer tokens read from a file, the projected service account token in-cluster and a
kubeconfig's `tokenFile`, are read again every `TOKEN_REFRESH` seconds (the kubelet replaces
the projected token about every hour; the old one stays valid a while) and at once after the
server answers 401, as client-go does. The package's own loaders would read a kubeconfig's
`tokenFile` only once. A read that fails is tried again `TOKEN_RETRY` seconds later, not at
every request, and logged once per failure streak (then at most every 5 minutes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate to it."""

    host: str
    ssl_context: ssl.SSLContext | None
    source: str  # "in-cluster" or the kubeconfig path, for log lines
    _configuration: Any = None  # kubernetes.client.Configuration, which refreshes credentials
    #: The name the server's certificate must carry when it is not the URL's host
    #: (tls-server-name); also sent as SNI.
    server_name: str | None = None
    #: A token read from a file and re-read as it rotates; takes precedence over the
    #: configuration's static bearer token.
    token_file: TokenFile | None = None

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
        """Headers that authenticate one request; may run a credential plugin (in a thread)."""
        if self.token_file is not None:
            token = self.token_file.cached()
            if token is None:
                token = await asyncio.to_thread(self.token_file.token)
            return {"authorization": f"Bearer {token}"}
        cfg = self._configuration
        if cfg is None:
            return {}
        # auth_settings() calls the loader's refresh hook: for exec plugins it re-runs the
        # plugin on expiry, which can block, so keep it off the event loop.
        settings = await asyncio.to_thread(cfg.auth_settings)
        headers = {
            str(s["key"]): str(s["value"])
            for s in settings.values()
            if s.get("in") == "header" and s.get("value")
        }
        if "authorization" not in {k.lower() for k in headers} and (cfg.username or cfg.password):
            headers["Authorization"] = str(cfg.get_basic_auth_token())
        return headers

    def credentials_rejected(self) -> None:
        """The server answered 401: a rotated token file is read again at the next request."""
        if self.token_file is not None:
            self.token_file.expire()


def _ssl_context(cfg: Any) -> ssl.SSLContext | None:
    if not str(cfg.host).startswith("https://"):
        return None
    if not cfg.verify_ssl:
        if cfg.ssl_ca_cert:
            raise KubeConfigError(
                "the kubeconfig gives a certificate authority and insecure-skip-tls-verify: "
                "true; kubectl refuses this too: remove one of them"
            )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # check_hostname stays on in every case: the name checked is the URL's host, or
        # tls-server-name, which the session passes as each request's server_hostname.
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise KubeConfigError(
            "the kubeconfig gives a client certificate without its key, or a key without "
            "its certificate"
        )
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def _kubeconfig_token_file(path: str, context: str | None) -> Path | None:
    """The active user's `tokenFile`, when it is the credential the loader used (no `token`
    and no auth-provider, which come first). A relative one is resolved against the directory
    the kubeconfig was named in, without following symlinks, as client-go does: a kubeconfig
    mounted from a Secret is `..data/kubeconfig` behind a link, and `..data` points to a
    timestamped directory that the next rotation deletes."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    if not isinstance(config, Mapping):
        return None
    name = context or config.get("current-context")
    contexts = [c for c in config.get("contexts") or [] if isinstance(c, Mapping)]
    ctx = next((c.get("context") for c in contexts if c.get("name") == name), None)
    if not isinstance(ctx, Mapping):
        return None
    users = [u for u in config.get("users") or [] if isinstance(u, Mapping)]
    user = next((u.get("user") for u in users if u.get("name") == ctx.get("user")), None)
    if not isinstance(user, Mapping) or user.get("auth-provider") or user.get("token"):
        return None
    token_file = user.get("tokenFile")
    if not token_file:
        return None
    return Path(os.path.abspath(path)).parent / str(token_file)


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
    # Imported here: the package is heavy (~0.3 s) and only this loader needs it.
    from kubernetes import config as kconfig  # noqa: PLC0415
    from kubernetes.client import Configuration  # noqa: PLC0415
    from kubernetes.config.incluster_config import InClusterConfigLoader  # noqa: PLC0415

    env = os.environ if environ is None else environ
    cfg = Configuration()
    token_path: Path | None = None
    try:
        if kubeconfig:
            if not Path(kubeconfig).is_file():
                raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
            kconfig.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            source = kubeconfig
            token_path = _kubeconfig_token_file(kubeconfig, context)
        elif env.get("KUBERNETES_SERVICE_HOST"):
            sa_dir = Path(service_account_dir)
            token_path = sa_dir / "token"
            # The loader's own refresh re-reads on the wall clock; TokenFile does it instead.
            InClusterConfigLoader(
                token_filename=str(token_path),
                cert_filename=str(sa_dir / "ca.crt"),
                try_refresh_token=False,
                environ=env,
            ).load_and_set(cfg)
            source = "in-cluster"
        else:
            path = env.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
                Path("~/.kube/config").expanduser()
            )
            if not Path(path).is_file():
                raise KubeConfigError(
                    "no API server configured: not in a cluster (KUBERNETES_SERVICE_HOST unset) "
                    f"and no kubeconfig at {path}; pass --kubeconfig"
                )
            kconfig.load_kube_config(config_file=path, context=context, client_configuration=cfg)
            source = path
            token_path = _kubeconfig_token_file(path, context)
        token_file = TokenFile(token_path, clock=clock) if token_path is not None else None
    except KubeConfigError:
        raise
    except (
        kconfig.ConfigException,
        yaml.YAMLError,
        OSError,
        ValueError,
        KeyError,
        TypeError,
    ) as exc:
        raise KubeConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    try:
        ctx = _ssl_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot set up TLS for {cfg.host}: {exc}") from exc
    return KubeConnection(
        host=str(cfg.host).rstrip("/"),
        ssl_context=ctx,
        source=source,
        _configuration=cfg,
        server_name=(cfg.tls_server_name or None) if ctx is not None else None,
        token_file=token_file,
    )
