"""Connection settings for the Kubernetes API, from the in-cluster service account or a kubeconfig.

The official `kubernetes` package's loaders do the hard part (tokens and their refresh,
client certificates, exec credential plugins, CA bundles); this module turns the resulting
`Configuration` into what an aiohttp session needs: a base URL, an SSL context and an
`Authorization` header that is fetched fresh for every request, so rotating service account
tokens and expiring exec credentials keep working.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubeConfigError(Exception):
    """The API server cannot be configured (no kubeconfig, bad file, no in-cluster env)."""


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate to it."""

    host: str
    ssl_context: ssl.SSLContext | None
    source: str  # "in-cluster" or the kubeconfig path, for log lines
    _configuration: Any = None  # kubernetes.client.Configuration, which refreshes credentials

    async def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate one request; may run a credential plugin (in a thread)."""
        cfg = self._configuration
        if cfg is None:
            return {}
        # auth_settings() calls the loader's refresh hook: in-cluster it re-reads the
        # projected token once a minute; for exec plugins it re-runs the plugin on expiry.
        # Both can block, so keep them off the event loop.
        settings = await asyncio.to_thread(cfg.auth_settings)
        headers = {
            str(s["key"]): str(s["value"])
            for s in settings.values()
            if s.get("in") == "header" and s.get("value")
        }
        if "authorization" not in {k.lower() for k in headers} and (cfg.username or cfg.password):
            headers["Authorization"] = str(cfg.get_basic_auth_token())
        return headers


def _ssl_context(cfg: Any) -> ssl.SSLContext | None:
    if not str(cfg.host).startswith("https://"):
        return None
    if not cfg.verify_ssl:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.tls_server_name or cfg.assert_hostname is False:
            # A kubeconfig's tls-server-name verifies against another name than the URL's host;
            # aiohttp has no per-request SNI override, so the check is done on the name given.
            ctx.check_hostname = False
    if cfg.cert_file and cfg.key_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def load_connection(kubeconfig: str | None = None, context: str | None = None) -> KubeConnection:
    """Load API settings: the given kubeconfig, else in-cluster, else $KUBECONFIG/~/.kube/config."""
    # Imported here: the package is heavy (~0.3 s) and only this loader needs it.
    from kubernetes import config as kconfig  # noqa: PLC0415
    from kubernetes.client import Configuration  # noqa: PLC0415

    cfg = Configuration()
    try:
        if kubeconfig:
            if not Path(kubeconfig).is_file():
                raise KubeConfigError(f"kubeconfig {kubeconfig} does not exist")
            kconfig.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            source = kubeconfig
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config(client_configuration=cfg, try_refresh_token=True)
            source = "in-cluster"
        else:
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(
                Path("~/.kube/config").expanduser()
            )
            if not Path(path).is_file():
                raise KubeConfigError(
                    "no API server configured: not in a cluster (KUBERNETES_SERVICE_HOST unset) "
                    f"and no kubeconfig at {path}; pass --kubeconfig"
                )
            kconfig.load_kube_config(config_file=path, context=context, client_configuration=cfg)
            source = path
    except KubeConfigError:
        raise
    except (kconfig.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise KubeConfigError(f"cannot load Kubernetes configuration: {exc}") from exc
    try:
        ctx = _ssl_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"cannot set up TLS for {cfg.host}: {exc}") from exc
    return KubeConnection(
        host=str(cfg.host).rstrip("/"), ssl_context=ctx, source=source, _configuration=cfg
    )
