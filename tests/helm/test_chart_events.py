"""Episode Events in the chart: `config.emit-events` turns on the agent's flag and, only
then, the RBAC it needs (create and patch the Events, list its node's back at start)."""

from __future__ import annotations

from pathlib import Path

from exporter.settings import load_settings
from tests.helm.chart import Manifest, agent_container, flags, objects, render
from tests.helm.test_chart_render import agent_role, rbac_rules

EVENT_RULES = {("events.k8s.io", "events", verb) for verb in ("create", "patch", "list")}


def agent_settings(manifests: list[Manifest], tmp_path: Path) -> bool:
    """--emit-events as the agent resolves it from the chart's flags and config file."""
    (config,) = [m for m in objects(manifests, "ConfigMap") if "config.yaml" in m["data"]]
    path = tmp_path / "config.yaml"
    path.write_text(config["data"]["config.yaml"])
    given = {k.replace("-", "_"): v for k, v in flags(agent_container(manifests)).items()}
    given["cgroup_root"] = str(tmp_path)  # the host's, mounted in the pod
    settings = load_settings({**given, "config": str(path)}, {"NODE_NAME": "node-a"})
    return settings.emit_events


def test_events_rbac_is_granted_only_with_emit_events(tmp_path: Path) -> None:
    off = render()
    on = render({"config": {"emit-events": True}})
    assert not {r for r in rbac_rules(off) if r[1] == "events"}
    assert rbac_rules(on) - rbac_rules(off) == EVENT_RULES
    # Exactly those: no core/v1 Events, no watch, get or delete.
    assert not {r for r in rbac_rules(on) if r[1] == "events" and r[0] != "events.k8s.io"}
    assert agent_settings(on, tmp_path) is True
    assert agent_settings(off, tmp_path) is False
    # Still one ClusterRole for the agent, bound to its ServiceAccount.
    assert agent_role(on) in objects(on, "ClusterRole")
