"""Where a client stream's requests went: the `server.address`/`server.port` attributes and
the Kubernetes DNS names they may hold, turned into what the Service resolver looks up. Pure.
"""

from __future__ import annotations

import ipaddress
import re

# Current semantic conventions first; `net.peer.*` is what instrumentations wrote before
# semconv 1.21 and many still do (older gRPC, database and requests instrumentations).
ADDRESS_KEYS = ("server.address", "net.peer.name")
PORT_KEYS = ("server.port", "net.peer.port")
# A resource attribute of the client itself: a bare Service name resolves in its namespace.
CLIENT_NAMESPACE_KEY = "k8s.namespace.name"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_port(value: object) -> int | None:
    """A TCP port from an attribute value (an int, or digits in a string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and 0 < value < 65536:
        return value
    return None


def split_host_port(address: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`, as host and port. `server.address` should
    be a bare host, but some instrumentations put `host:port` there."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, parse_port(rest[1:]) if rest.startswith(":") else None
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, parse_port(port)
    return address, None  # a bare IPv6 address has many colons and no port


def canonical_host(address: str, client_namespace: str | None = None) -> str | None:
    """What to look the address up as: a normalized IP address, or `name.namespace` of a
    Service; None if it cannot name a Service.

    DNS names understood, as cluster DNS answers them (any cluster domain):
    `name.namespace.svc[.<domain>]`, `pod.name.namespace.svc[.<domain>]` (a pod of a
    headless Service, mapped to that Service), `name.namespace`, and a bare `name`, which
    the client's DNS search path resolves in its own namespace, so it needs the client's
    `k8s.namespace.name` resource attribute.
    """
    host = address.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return None
    if len(labels) >= 3 and labels[2] == "svc":
        labels = labels[:2]
    elif len(labels) >= 4 and labels[3] == "svc":
        labels = labels[1:3]
    if len(labels) == 1 and client_namespace:
        labels = [labels[0], client_namespace.strip().lower()]
    if len(labels) != 2 or not _DNS_LABEL.fullmatch(labels[1]):
        return None
    return f"{labels[0]}.{labels[1]}"
