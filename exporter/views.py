"""The JSON views of the agent's API (`/api/v1/targets`, `/api/v1/episodes`), built from the
parts that hold the state: the Service catalog, the prober, the peer set, the correlator. The
HTTP server (exporter/server.py) serves what these return; the Agent only wires them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from exporter.core.catalog import ServiceCatalog
from exporter.core.correlation import Correlator
from exporter.core.peers import PeerSet
from exporter.core.services import ServiceRef
from exporter.probe import Prober
from exporter.settings import Settings

JsonView = Callable[[], dict[str, Any]]


def episodes_json(
    correlator: Correlator, now: float, sections: Mapping[str, Callable[[], Any]] | None = None
) -> dict[str, Any]:
    """/api/v1/episodes: the correlator's open and recent episodes, and any further
    sections (`name: view`) the agent adds beside them."""
    doc = correlator.as_json(now)
    for name, view in (sections or {}).items():
        doc[name] = view()
    return doc


def targets_json(
    settings: Settings,
    catalog: ServiceCatalog,
    prober: Prober,
    probes_address: Callable[[ServiceRef], bool],
    *,
    peers: PeerSet | None,
    peers_listed: bool,
) -> dict[str, Any]:
    """/api/v1/targets: every opted-in Service (probed, or skipped and why), whether this
    agent probes its address, and every probe target with its recent results."""
    services = [
        {
            "namespace": spec.ref.namespace,
            "service": spec.ref.name,
            "state": "probed",
            "protocol": spec.protocol,
            "port": spec.port.port,
            "path": spec.path if spec.protocol == "http" else None,
            "interval_seconds": spec.interval,
            "slo_seconds": spec.slo,
        }
        for spec in sorted(catalog.specs.values(), key=lambda s: str(s.ref))
    ]
    services += [
        {"namespace": ref.namespace, "service": ref.name, "state": "skipped", "reason": why}
        for ref, why in sorted(catalog.skipped.items(), key=lambda i: str(i[0]))
    ]
    for entry in services:
        ref = ServiceRef(str(entry["namespace"]), str(entry["service"]))
        entry["address_probed_here"] = entry["state"] == "probed" and probes_address(ref)
    return {
        "node": settings.node_name,
        "address_probing": address_probing_json(settings, peers, peers_listed),
        "services": services,
        "targets": prober.status(),
    }


def address_probing_json(settings: Settings, peers: PeerSet | None, listed: bool) -> dict[str, Any]:
    """How Service addresses are shared among the agents (docs/scale.md)."""
    k = settings.service_probers
    if peers is None:
        return {"mode": "alone", "reason": "peer discovery is off", "k": k, "peers": 0}
    if not listed:
        return {"mode": "waiting", "reason": "the peers are not listed yet", "k": k, "peers": 0}
    if peers.alone:
        reason = f"no ready pod matches {settings.peer_selector!r}"
        return {"mode": "alone", "reason": f"{reason} in {settings.pod_namespace}", "k": k,
                "peers": 0}  # fmt: skip
    return {
        "mode": "shared" if peers.ready else "waiting",
        "reason": "" if peers.ready else "this agent's own pod is not a ready peer yet",
        "k": k,
        "peers": peers.peers,
        "zones": peers.zones,
    }
