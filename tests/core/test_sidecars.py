"""The one sidecar rule (exporter/core/sidecars.py), read from real Pod objects: the
annotation wins, then native sidecars, then well-known names; never the containers' order;
and the mixin's dashboards and alerts match the same names."""

from __future__ import annotations

import re

import pytest

from exporter.core import sidecars
from exporter.core.pods import PodSnapshot, parse_pod
from exporter.mixin.config import MixinConfig
from exporter.simulator import objects


def pod(**options: object) -> PodSnapshot:
    return parse_pod(objects.deployment_pod("web", namespace="shop", **options))  # type: ignore[arg-type]


def test_a_mesh_proxy_injected_first_is_the_sidecar_and_the_app_second_is_the_app() -> None:
    """Istio and Linkerd inject their proxy first in spec.containers (holdApplicationUntil-
    ProxyStarts): the order says nothing."""
    p = pod(containers=("istio-proxy", "app"))
    assert [c.name for c in p.containers if not c.init] == ["istio-proxy", "app"]
    assert p.sidecars == frozenset({"istio-proxy"})


def test_a_native_sidecar_is_a_sidecar_whatever_its_name() -> None:
    p = pod(containers=("app",), sidecars=("log-shipper",), init_containers=("migrate",))
    native = {c.name: c.native_sidecar for c in p.containers}
    assert native == {"log-shipper": True, "migrate": False, "app": False}
    # A classic init container runs to completion before the pod starts: neither.
    assert p.sidecars == frozenset({"log-shipper"})


def test_several_application_containers_are_all_applications() -> None:
    p = pod(containers=("api", "worker", "linkerd-proxy", "cloud-sql-proxy"))
    assert p.sidecars == frozenset({"linkerd-proxy", "cloud-sql-proxy"})


@pytest.mark.parametrize(
    ("name", "sidecar"),
    [
        ("envoy", True),
        ("daprd", True),
        ("vault-agent", True),
        ("envoy-sidecar", True),
        ("kuma-sidecar", True),
        ("gke-gcsfuse-sidecar", True),
        ("sidecar", True),
        # Applications that look like helpers: a proxy Deployment, the node's kube-proxy.
        ("kube-proxy", False),
        ("nginx-proxy", False),
        ("sidecarless", False),
        ("app", False),
    ],
)
def test_well_known_names(name: str, sidecar: bool) -> None:
    assert sidecars.well_known(name) is sidecar
    assert (name in pod(containers=("main", name)).sidecars) is sidecar


def test_the_annotation_is_the_whole_answer() -> None:
    p = pod(
        containers=("istio-proxy", "app", "cache-warmer"),
        sidecars=("log-shipper",),
        annotations={sidecars.ANNOTATION: " cache-warmer ,, app-helper"},
    )
    # Neither the mesh proxy's name nor the native sidecar counts against the pod's word.
    assert p.sidecars == frozenset({"cache-warmer", "app-helper"})
    assert pod(containers=("app", "envoy"), annotations={sidecars.ANNOTATION: ""}).sidecars == (
        frozenset()
    )


def test_a_pod_without_status_yet_still_has_its_annotation() -> None:
    raw = objects.deployment_pod(
        "web", namespace="shop", state="scheduled", annotations={sidecars.ANNOTATION: "envoy"}
    )
    assert parse_pod(raw).sidecars == frozenset({"envoy"})


def test_the_mixin_matches_the_same_names_as_the_core() -> None:
    """PromQL's `=~` is an anchored RE2 match; the names are plain DNS labels and the patterns
    use nothing RE2 and Python read differently."""
    pattern = MixinConfig().dashboards.sidecar_containers
    assert pattern == sidecars.CONTAINER_PATTERN
    anchored = re.compile(f"^(?:{pattern})$")
    names = [name for name, _ in sidecars.WELL_KNOWN]
    names += ["envoy-sidecar", "sidecar", "x-sidecar-y", "kube-proxy", "nginx-proxy", "app"]
    for name in names:
        assert (anchored.match(name) is not None) is sidecars.well_known(name), name
    assert all(why for _, why in sidecars.WELL_KNOWN)
