"""The pods/proxy subresource of the simulated API server: a GET on
`/api/v1/namespaces/{ns}/pods/{id}/proxy/{path}` is sent on to the pod, as the real API
server does for `kubectl get --raw` and `tailwatch episodes`.

As the real server (pkg/registry/core/pod ResourceLocation) does:

- `id` is `name`, `name:port` or `scheme:name:port` (scheme `http` or `https`); without a
  port, the first container port the pod declares; anything else is 400 "invalid pod
  request";
- the target is the pod's first `status.podIPs` address;
- the `Authorization` header is not passed on: the server removes it once it has
  authenticated the request, so the pod never sees the caller's credentials;
- an https target's certificate is not verified (pod IPs are in no certificate);
- a pod that cannot be reached is 503 ServiceUnavailable, "error trying to reach service:
  ..." in a Status.

One rule is the other way round: the real server refuses to proxy to loopback and
link-local addresses ("address not allowed"), and this one proxies ONLY to loopback
(127.0.0.0/8, ::1), where every simulated pod lives; any other address is refused with a
400 that says so, before any connection is tried (the test suite's loopback guard would
fail the test anyway).

The RBAC resource is `pods/proxy` with verb `get`, so `faults.forbid("pods/proxy")` makes
every proxied request a 403, as a user without that permission gets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import web

from exporter.simulator.status import ApiError, bad_request

#: The subresource's RBAC resource name.
PROXY_RESOURCE = "pods/proxy"
_SCHEMES = ("", "http", "https")
# Hop-by-hop headers (RFC 9110) and the credentials the real server strips.
_NOT_FORWARDED = frozenset(
    {
        "authorization",
        "connection",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)
_NOT_RETURNED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
#: How long the proxy waits for a pod, at most (the real server waits as long as the
#: caller's request lasts; a test that wants a timeout sets its client's shorter).
FORWARD_TIMEOUT = 30.0


def split_scheme_name_port(pod_id: str) -> tuple[str, str, str]:
    """(scheme, name, port) of `name`, `name:port` or `scheme:name:port`, as the real
    server's SplitSchemeNamePort; 400 when it is none of them."""
    parts = pod_id.split(":")
    scheme, port = "", ""
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        name, port = parts
    elif len(parts) == 3:
        scheme, name, port = parts
    else:
        raise bad_request(f'invalid pod request "{pod_id}"')
    if not name or scheme not in _SCHEMES:
        raise bad_request(f'invalid pod request "{pod_id}"')
    return scheme or "http", name, port


def proxy_path(raw_path: str) -> tuple[str, str, str] | None:
    """(namespace, pod id, the path to send to the pod) of a pods/proxy URL, or None. The
    path keeps its encoding and its trailing slash; `.../proxy` alone is `/`."""
    prefix = "/api/v1/namespaces/"
    if not raw_path.startswith(prefix):
        return None
    rest = raw_path[len(prefix) :].split("/", 4)
    if len(rest) < 4 or rest[1] != "pods" or rest[3] != "proxy" or not rest[0] or not rest[2]:
        return None
    return rest[0], rest[2], "/" + (rest[4] if len(rest) > 4 else "")


def _first_port(pod: Mapping[str, Any]) -> str:
    for container in (pod.get("spec") or {}).get("containers") or []:
        ports = container.get("ports") or []
        if ports and isinstance(ports[0], Mapping) and ports[0].get("containerPort"):
            return str(ports[0]["containerPort"])
    return ""


def _pod_ip(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    ips = status.get("podIPs") or []
    if ips and isinstance(ips[0], Mapping):
        return str(ips[0].get("ip") or "")
    return str(status.get("podIP") or "")


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


class PodProxy:
    """Sends proxied requests on to pods; one client session, closed with the server."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No TLS verification for https targets, as the real server's proxy transport.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=False),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(self, pod: Mapping[str, Any], pod_id: str) -> str:
        """The base URL (`scheme://ip:port`) a request for `pod_id` goes to."""
        scheme, _, port = split_scheme_name_port(pod_id)
        port = port or _first_port(pod)
        ip = _pod_ip(pod)
        if not ip:
            raise bad_request("address not allowed: the pod has no IP address")
        if not _loopback(ip):
            raise bad_request(
                f"address not allowed: the simulator proxies only to loopback pod IPs "
                f"(127.0.0.0/8, ::1), and the pod's IP is {ip}"
            )
        host = f"[{ip}]" if ":" in ip else ip
        return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"

    async def forward(self, request: web.Request, base: str, path: str) -> web.Response:
        """GET `base + path` (with the request's query string) and answer what the pod
        answered; 503 with the real server's message when the pod cannot be reached."""
        url = base + path
        if request.query_string:
            url += "?" + request.query_string
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        peer = request.remote or ""
        headers["X-Forwarded-For"] = peer
        try:
            async with self._client().get(
                url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT),
            ) as answer:
                body = await answer.read()
                returned = {
                    k: v for k, v in answer.headers.items() if k.lower() not in _NOT_RETURNED
                }
                return web.Response(status=answer.status, body=body, headers=returned)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            address = base.split("://", 1)[1]
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, aiohttp.ClientConnectorError):
                refused = isinstance(exc.os_error, ConnectionRefusedError)
                why = "connection refused" if refused else (exc.os_error.strerror or str(exc))
                reason = f"dial tcp {address}: connect: {why}"
            elif isinstance(exc, TimeoutError):
                reason = f"dial tcp {address}: i/o timeout"
            raise ApiError(503, f"error trying to reach service: {reason}") from None
