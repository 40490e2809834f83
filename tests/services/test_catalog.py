"""What a node probes, and which Service a client's server.address names."""

from __future__ import annotations

from exporter.core.catalog import ServiceCatalog, TargetSpec, split_service_name
from exporter.core.services import ServiceRef
from exporter.simulator import objects
from exporter.simulator.services import endpoint_of_pod, endpoint_slice, service

WEB = service(
    "web", namespace="shop", cluster_ip="127.96.0.7", ports=(("http", 80, "http"),),
    annotations={"tailwatch.io/probe-protocol": "http", "tailwatch.io/probe-path": "/healthz",
                 "tailwatch.io/slo-latency": "50ms"},
)  # fmt: skip
REF = ServiceRef("shop", "web")


def catalog_with_pods(*nodes: str) -> tuple[ServiceCatalog, list[dict[str, object]]]:
    pods = [
        objects.deployment_pod("web", namespace="shop", node=node, seed=i,
                               pod_ip=f"127.1.0.{i + 1}")
        for i, node in enumerate(nodes)
    ]  # fmt: skip
    catalog = ServiceCatalog(node="node-a")
    assert catalog.sync_services([WEB, service("other", probe=False)], 0.0) == []
    slice_ = endpoint_slice(WEB, [endpoint_of_pod(p) for p in pods])
    slice_["metadata"]["uid"] = "s1"
    catalog.endpoints.sync([slice_], 0.0)
    return catalog, pods


def test_targets_are_the_service_and_its_local_endpoints() -> None:
    catalog, pods = catalog_with_pods("node-a", "node-b", "node-a")
    targets = catalog.targets()
    assert targets[0] == TargetSpec(REF, "service", "", "127.96.0.7", 80, "http", "/healthz",
                                    1.0, 0.05)  # fmt: skip
    local = [(t.target, t.pod, t.address, t.port) for t in targets[1:]]
    assert local == sorted(
        ("endpoint", p["metadata"]["name"], p["status"]["podIP"], 8080) for p in (pods[0], pods[2])
    )
    assert catalog.synced


def test_a_skipped_service_is_kept_with_its_reason_and_not_probed() -> None:
    catalog = ServiceCatalog(node="node-a")
    bad = service("bad", annotations={"tailwatch.io/probe-interval": "often"})
    catalog.sync_services([bad], 0.0)
    assert catalog.targets() == []
    assert "probe-interval" in catalog.skipped[ServiceRef("default", "bad")]
    fixed = service("bad")
    catalog.apply_service("MODIFIED", fixed, 1.0)
    assert catalog.skipped == {}
    assert len(catalog.targets()) == 1
    unlabelled = service("bad", probe=False)
    catalog.apply_service("MODIFIED", unlabelled, 2.0)
    assert catalog.targets() == []


def test_resolve_names_cluster_ips_and_endpoint_ips() -> None:
    catalog, pods = catalog_with_pods("node-a", "node-b")
    names = ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local"]
    names += ["WEB.shop.svc.cluster.local.", "127.96.0.7", pods[1]["status"]["podIP"]]
    for name in names:
        assert catalog.resolve(name, 80) == REF, name
    for name in ("web", "web.other", "other.default", "127.96.0.8", "db.shop.svc.example.org"):
        assert catalog.resolve(name) is None, name


def test_split_service_name() -> None:
    assert split_service_name("a.b.svc.corp.local", "corp.local") == ServiceRef("b", "a")
    assert split_service_name("a.b.c") is None
