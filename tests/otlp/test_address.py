"""server.address forms: Kubernetes DNS names, IPs, host:port."""

from __future__ import annotations

import pytest

from exporter.otlp.address import canonical_host, parse_port, split_host_port


@pytest.mark.parametrize(
    "address",
    [
        "web.shop",
        "web.shop.svc",
        "web.shop.svc.cluster.local",
        "web.shop.svc.cluster.local.",
        "WEB.Shop.svc.corp.example",  # any cluster domain
        "web-0.web.shop.svc.cluster.local",  # a pod of a headless Service
        "web-0.web.shop.svc",
        " web.shop ",
    ],
)
def test_service_dns_names(address: str) -> None:
    assert canonical_host(address) == "web.shop"


def test_a_bare_name_resolves_in_the_clients_namespace() -> None:
    assert canonical_host("web") is None
    assert canonical_host("web", client_namespace="shop") == "web.shop"
    assert canonical_host("web.shop", client_namespace="other") == "web.shop"


@pytest.mark.parametrize(
    "address",
    ["", "a.b.c", "web.shop.cluster.local", "web_1.shop", "-web.shop", "web..shop", "a" * 64 + ".x",
     "web.shop.svc:8080x", "https://web.shop"],
)  # fmt: skip
def test_names_that_cannot_be_a_service(address: str) -> None:
    assert canonical_host(address, client_namespace="shop") is None


def test_ip_addresses_are_normalized() -> None:
    assert canonical_host("127.96.0.7") == "127.96.0.7"
    assert canonical_host("0:0:0:0:0:0:0:1") == "::1"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("web.shop", ("web.shop", None)),
        ("web.shop:8080", ("web.shop", 8080)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:443", ("::1", 443)),
        ("[::1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("web.shop:http", ("web.shop", None)),
    ],
)
def test_split_host_port(address: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(address) == expected


def test_parse_port() -> None:
    assert parse_port(8080) == 8080
    assert parse_port("8080") == 8080
    for bad in (0, 70000, True, "http", None, 80.0):
        assert parse_port(bad) is None
