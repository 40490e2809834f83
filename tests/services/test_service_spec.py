"""Opt-in annotations of a Service (docs/services.md) and the reasons a Service is skipped."""

from __future__ import annotations

import pytest

from exporter.core.services import ServicePort, ServiceRef, ServiceSkipped, parse_service
from exporter.simulator.services import service
from tests.core.kube_schema import validate_pod as validate


def test_defaults() -> None:
    obj = service("web", namespace="shop", cluster_ip="127.96.3.4")
    validate(obj)
    spec = parse_service(obj)
    assert spec.ref == ServiceRef("shop", "web")
    assert spec.cluster_ip == "127.96.3.4"
    assert spec.port == ServicePort("http", 80, "http")  # first port
    assert (spec.protocol, spec.path, spec.interval, spec.slo) == ("tcp", "/", 1.0, None)


def test_every_annotation() -> None:
    obj = service(
        "api",
        ports=(("grpc", 9090, 9090), ("metrics", 9100, "metrics"), ("http", 80, 8080)),
        annotations={
            "tailwatch.io/probe-port": "http",
            "tailwatch.io/probe-protocol": "HTTP",
            "tailwatch.io/probe-path": "/healthz?deep=1",
            "tailwatch.io/probe-interval": "250ms",
            "tailwatch.io/slo-latency": "50ms",
        },
    )
    validate(obj)
    spec = parse_service(obj)
    assert spec.port == ServicePort("http", 80, 8080)
    assert (spec.protocol, spec.path, spec.interval, spec.slo) == (
        "http", "/healthz?deep=1", 0.25, 0.05,
    )  # fmt: skip


def test_port_by_number_and_headless() -> None:
    obj = service(
        "db", cluster_ip=None, ports=(("pg", 5432, 5432), ("metrics", 9187, 9187)),
        annotations={"tailwatch.io/probe-port": "9187"},
    )  # fmt: skip
    validate(obj)
    spec = parse_service(obj)
    assert spec.port.port == 9187
    assert spec.cluster_ip == ""  # headless: endpoints only


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        ({"tailwatch.io/probe-port": "grpc"}, "tailwatch.io/probe-port: no port 'grpc' on the"),
        ({"tailwatch.io/probe-protocol": "udp"}, "'udp' is not one of tcp, http"),
        ({"tailwatch.io/probe-path": "healthz"}, "must be an absolute path"),
        ({"tailwatch.io/probe-interval": "often"}, "probe-interval: 'often' is not a duration"),
        ({"tailwatch.io/probe-interval": "1ms"}, "must be between 0.1s and 3600s"),
        ({"tailwatch.io/slo-latency": "-5ms"}, "slo-latency"),
    ],
)
def test_bad_annotations_skip_the_service_with_a_reason(
    annotations: dict[str, str], reason: str
) -> None:
    with pytest.raises(ServiceSkipped, match=reason.replace("?", r"\?")):
        parse_service(service("web", annotations=annotations))


def test_external_name_and_portless_services_are_skipped() -> None:
    ext = service("ext")
    ext["spec"] = {"type": "ExternalName", "externalName": "db.example.com"}
    with pytest.raises(ServiceSkipped, match="ExternalName"):
        parse_service(ext)
    udp = service("dns", ports=(("dns", 53, 53),))
    udp["spec"]["ports"][0]["protocol"] = "UDP"
    with pytest.raises(ServiceSkipped, match="no TCP port"):
        parse_service(udp)
