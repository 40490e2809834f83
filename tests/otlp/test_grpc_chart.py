"""The chart's OTLP/gRPC switch, rendered by the real Helm engine and checked with
kubernetes-validate: off by default (grpcio costs memory), and when on, the flag, the
container port (and hostPort), the Service port and the NetworkPolicy's OTLP rule agree."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.helm.chart import KUBERNETES_VERSIONS, agent_container, flags, one, render


def test_grpc_is_off_by_default() -> None:
    container = agent_container(render({}))
    assert "otlp-grpc-listen" not in flags(container)
    assert "otlp-grpc" not in [p["name"] for p in container["ports"]]


def test_grpc_on_wires_the_flag_ports_service_and_network_policy() -> None:
    values = {
        "otlp": {"grpc": {"enabled": True}, "hostPort": {"enabled": True}},
        "networkPolicy": {"enabled": True},
    }
    manifests = render(values)
    container = agent_container(manifests)
    assert flags(container)["otlp-grpc-listen"] == ":4317"
    port = next(p for p in container["ports"] if p["name"] == "otlp-grpc")
    assert (port["containerPort"], port["hostPort"]) == (4317, 4317)
    service = one(manifests, "Service")
    assert {"name": "otlp-grpc", "port": 4317, "targetPort": "otlp-grpc", "protocol": "TCP",
            "appProtocol": "grpc"} in service["spec"]["ports"]  # fmt: skip
    policy = one(manifests, "NetworkPolicy")
    allowed = [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert "otlp-grpc" in allowed
    for manifest in manifests:
        kubernetes_validate.validate(yaml.safe_load(yaml.safe_dump(manifest)),
                                     KUBERNETES_VERSIONS[-1], strict=True)  # fmt: skip
    host_network = render({"otlp": {"grpc": {"enabled": True}}, "hostNetwork": True})
    assert flags(agent_container(host_network))["otlp-grpc-listen"] == "$(HOST_IP):4317"
    off = render({"otlp": {"enabled": False, "grpc": {"enabled": True}}})
    assert "otlp-grpc-listen" not in flags(agent_container(off))
