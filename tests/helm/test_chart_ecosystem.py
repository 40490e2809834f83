"""The chart as a kube-prometheus-stack user drives it: a PodMonitor or a ServiceMonitor with
prometheus-community's knobs, the PrometheusRule's extra labels, annotations, disabled alerts
and runbook base, flags and volumes of their own, the full updateStrategy, and the global
registry and pull secrets of a parent chart. Above all: whatever the release, nameOverride
or fullnameOverride, every rule and dashboard the chart installs selects the job its monitor
gives the agents."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from exporter import __version__
from tests.helm.chart import (
    CHART,
    ECOSYSTEM,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    RELEASE,
    RULES_FILE,
    Manifest,
    agent_container,
    flags,
    helm_test_pod,
    objects,
    one,
    render,
)

# The fields of prometheus-operator's monitoring.coreos.com/v1 objects the chart may write
# (its CRDs reject others): spec, and each scrape endpoint.
MONITOR_SPEC_FIELDS = {
    "jobLabel", "targetLabels", "podTargetLabels", "selector", "namespaceSelector",
    "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
}  # fmt: skip
ENDPOINT_FIELDS = {
    "port", "path", "scheme", "tlsConfig", "authorization", "honorLabels", "interval",
    "scrapeTimeout", "relabelings", "metricRelabelings",
}  # fmt: skip
# A PodMonitor has no targetLabels (no Service) and its endpoints no bearerTokenFile.
ENDPOINTS_OF = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
MATCHER = re.compile(r'\bjob\s*(=~|!=|!~|=)\s*"([^"]*)"')


def render_error(values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as failed:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(failed.value)


def monitor_of(manifests: list[Manifest]) -> Manifest:
    found = objects(manifests, "ServiceMonitor") + objects(manifests, "PodMonitor")
    assert len(found) == 1, [m["kind"] for m in found]
    return found[0]


def endpoint_of(monitor: Manifest) -> dict[str, Any]:
    [endpoint] = monitor["spec"][ENDPOINTS_OF[monitor["kind"]]]
    return endpoint  # type: ignore[no-any-return]


def scraped_job(manifests: list[Manifest]) -> str:
    """The `job` Prometheus gives the agents' series: the value of the label the monitor's
    jobLabel names, on the Service (ServiceMonitor) or the agent pods (PodMonitor), unless
    a relabeling sets it."""
    monitor = monitor_of(manifests)
    if monitor["kind"] == "ServiceMonitor":
        labels = one(manifests, "Service")["metadata"]["labels"]
    else:
        labels = one(manifests, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert all(r.get("targetLabel") != "job" for r in endpoint_of(monitor)["relabelings"])
    return str(labels[monitor["spec"]["jobLabel"]])


def promql_expressions(manifests: list[Manifest]) -> list[str]:
    """Every PromQL expression the chart installs: each rule's, each dashboard target's and
    each dashboard variable's query."""
    found = [
        rule["expr"]
        for prometheus_rule in objects(manifests, "PrometheusRule")
        for group in prometheus_rule["spec"]["groups"]
        for rule in group["rules"]
    ]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query") and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for config_map in objects(manifests, "ConfigMap"):
        for name, content in config_map["data"].items():
            if name.endswith(".json"):
                walk(json.loads(content))
    return found


def alerts(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [
        rule
        for group in one(manifests, "PrometheusRule")["spec"]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


# -- The job selector ---------------------------------------------------------------------------


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
@pytest.mark.parametrize(
    ("values", "release"),
    [
        ({}, RELEASE),
        ({"nameOverride": "latency"}, RELEASE),
        ({"fullnameOverride": "node-latency"}, "r2"),
        ({}, "observability"),
        ({"nameOverride": "x", "prometheus": {"job": "node-latency"}}, RELEASE),
    ],
)
def test_every_rule_and_dashboard_selects_the_job_the_monitor_gives_the_agents(
    values: dict[str, Any], release: str, monitor: str
) -> None:
    installed = {
        **values,
        monitor: {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboards": {"enabled": True},
    }
    manifests = render(installed, release=release)
    job = scraped_job(manifests)
    assert job == values.get("prometheus", {}).get("job", "tailwatch")
    expressions = promql_expressions(manifests)
    assert len(expressions) > 100
    selecting = [e for e in expressions if "tailwatch_" in e or "up{" in e]
    matchers = {m for e in expressions for m in MATCHER.findall(e)}
    assert matchers == {("=", job)}, matchers
    # Every expression that reads the agents' raw series (not a recorded one) selects it.
    raw = re.compile(r"\b(tailwatch_[a-z_]+|up)\{")
    for expression in selecting:
        for series in raw.finditer(expression):
            rest = expression[series.end() :].split("}", 1)[0]
            assert f'job="{job}"' in rest, (series.group(0), expression)


def test_a_job_label_the_chart_sets_otherwise_is_refused_with_what_to_set() -> None:
    message = render_error(
        {
            "nameOverride": "latency",
            "serviceMonitor": {"enabled": True, "jobLabel": "app.kubernetes.io/name"},
        }
    )
    assert 'serviceMonitor.jobLabel=app.kubernetes.io/name gives job="latency"' in message
    assert 'select job="tailwatch" (prometheus.job)' in message
    # The old default still works where it gives the job the rules select.
    kept = render({"serviceMonitor": {"enabled": True, "jobLabel": "app.kubernetes.io/name"}})
    assert scraped_job(kept) == "tailwatch"


def test_a_job_of_its_own_is_a_plain_label_value() -> None:
    assert "at '/prometheus/job'" in render_error({"prometheus": {"job": 'a"b'}})


# -- ServiceMonitor and PodMonitor ------------------------------------------------------------


def test_pod_monitor_and_service_monitor_are_exclusive() -> None:
    message = render_error({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})
    assert "serviceMonitor.enabled and podMonitor.enabled" in message and "only one" in message


def test_pod_monitor_scrapes_the_agent_pods_with_the_knobs_set() -> None:
    manifests = render(ECOSYSTEM)
    monitor = one(manifests, "PodMonitor")
    assert not objects(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    pod_labels = one(manifests, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert all(pod_labels[k] == v for k, v in selector.items())
    assert not all(
        helm_test_pod(manifests)["metadata"]["labels"].get(k) == v for k, v in selector.items()
    )
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    monitor_values = ECOSYSTEM["podMonitor"]
    for key in (
        "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit",
        "labelNameLengthLimit", "labelValueLengthLimit",
    ):  # fmt: skip
        assert spec[key] == monitor_values[key], key
    assert set(spec) <= MONITOR_SPEC_FIELDS | {"podMetricsEndpoints"}
    endpoint = endpoint_of(monitor)
    container_ports = {p["name"] for p in agent_container(manifests)["ports"]}
    assert endpoint["port"] in container_ports and endpoint["path"] == "/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("10s", "5s")
    assert endpoint["metricRelabelings"] == monitor_values["metricRelabelings"]
    assert endpoint["honorLabels"] is True and endpoint["scheme"] == "http"
    assert endpoint["relabelings"][0]["targetLabel"] == "node"
    assert set(endpoint) <= ENDPOINT_FIELDS


def test_pod_monitor_with_auth_presents_the_scraper_token_over_verified_tls() -> None:
    values = {
        "auth": {"enabled": True},
        "tls": {"existingSecret": "serving"},
        "podMonitor": {"enabled": True},
    }
    manifests = render(values)
    endpoint = endpoint_of(one(manifests, "PodMonitor"))
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "serving", "key": "ca.crt"}}
    secret = endpoint["authorization"]["credentials"]["name"]
    assert [s["metadata"]["name"] for s in objects(manifests, "Secret")] == [secret]
    source = {"bearerToken": {"source": "prometheusServiceAccount"}}
    message = render_error({**values, "podMonitor": {"enabled": True, **source}})
    assert "at '/podMonitor/bearerToken/source'" in message


def test_service_monitor_knobs_reach_the_service_monitor() -> None:
    knobs = {
        "enabled": True,
        "namespace": "prometheus",
        "labels": {"release": "kube-prometheus-stack"},
        "additionalLabels": {"team": "sre"},
        "targetLabels": ["app.kubernetes.io/instance"],
        "podTargetLabels": ["topology.kubernetes.io/zone"],
        "scheme": "https",
        "tlsConfig": {"insecureSkipVerify": False, "serverName": "agents.example"},
        "sampleLimit": 20000,
        "targetLimit": 500,
        "labelLimit": 40,
        "labelNameLengthLimit": 128,
        "labelValueLengthLimit": 1024,
        "interval": "30s",
        "scrapeTimeout": "20s",
    }
    monitor = one(render({"serviceMonitor": knobs}), "ServiceMonitor")
    assert monitor["metadata"]["namespace"] == "prometheus"
    # It still scrapes the agents where they run.
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    labels = monitor["metadata"]["labels"]
    assert (labels["release"], labels["team"]) == ("kube-prometheus-stack", "sre")
    for key in ("targetLabels", "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit"):
        assert monitor["spec"][key] == knobs[key], key
    assert set(monitor["spec"]) <= MONITOR_SPEC_FIELDS | {"endpoints"}
    endpoint = endpoint_of(monitor)
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"] == knobs["tlsConfig"]
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "20s")
    assert set(endpoint) <= ENDPOINT_FIELDS
    # Unset limits are left out (the operator's 0 is "no limit").
    defaults = one(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"]
    assert not {"sampleLimit", "targetLimit", "targetLabels", "podTargetLabels"} & set(defaults)


def test_a_monitor_elsewhere_cannot_name_the_charts_secrets() -> None:
    message = render_error(
        {
            "auth": {"enabled": True},
            "tls": {"existingSecret": "serving"},
            "serviceMonitor": {"enabled": True, "namespace": "prometheus"},
        }
    )
    assert "serviceMonitor.namespace=prometheus" in message
    assert "from the monitor's namespace" in message


# -- PrometheusRule ------------------------------------------------------------------------------


def test_rule_options_reach_every_alert_and_leave_recording_rules_alone(tmp_path: Path) -> None:
    manifests = render(ECOSYSTEM)
    options = ECOSYSTEM["prometheusRule"]
    generated = yaml.safe_load(RULES_FILE.read_text())["groups"]
    generated_alerts = [r for g in generated for r in g["rules"] if "alert" in r]
    installed = alerts(manifests)
    kept = [r for r in generated_alerts if r["alert"] != "TailwatchRolloutStuck"]
    assert len(kept) < len(generated_alerts)
    assert [a["alert"] for a in installed] == [r["alert"] for r in kept]
    for alert, own in zip(installed, kept, strict=True):
        assert alert["labels"] == {**options["additionalRuleLabels"], **own.get("labels", {})}
        job = ECOSYSTEM["prometheus"]["job"]
        assert alert["expr"] == own["expr"].replace('job="tailwatch"', f'job="{job}"')
        assert alert["annotations"]["dashboard"] == "tailwatch"
        anchor = own["annotations"]["runbook_url"].rpartition("#")[2]
        assert anchor == alert["alert"].lower()
        assert alert["annotations"]["runbook_url"] == f"{options['runbookUrl']}#{anchor}"
    recorded = [
        r for g in one(manifests, "PrometheusRule")["spec"]["groups"] for r in g["rules"]
        if "record" in r
    ]  # fmt: skip
    assert recorded and all(r.get("labels", {}).get("team") is None for r in recorded)
    assert all("annotations" not in r for r in recorded)
    # Prometheus takes the groups as the operator hands them over.
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": one(manifests, "PrometheusRule")["spec"]["groups"]})
    )
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_alerts_own_labels_win_and_a_group_of_disabled_alerts_goes() -> None:
    generated = yaml.safe_load(RULES_FILE.read_text())["groups"]
    only_alerts = [g for g in generated if all("alert" in r for r in g["rules"])]
    assert only_alerts, "no group of alerts only in the generated rules"
    group = only_alerts[0]
    values = {
        "prometheusRule": {
            "enabled": True,
            "additionalRuleLabels": {"severity": "none", "team": "sre"},
            "disabled": {r["alert"]: True for r in group["rules"]},
        }
    }
    manifests = render(values)
    groups = [g["name"] for g in one(manifests, "PrometheusRule")["spec"]["groups"]]
    assert group["name"] not in groups and len(groups) == len(generated) - 1
    assert all(
        a["labels"]["severity"] in ("critical", "warning", "info") for a in alerts(manifests)
    )
    # disabled: false keeps the alert.
    kept = {"prometheusRule": {"enabled": True, "disabled": {group["rules"][0]["alert"]: False}}}
    assert group["rules"][0]["alert"] in {a["alert"] for a in alerts(render(kept))}


def test_disabling_an_alert_that_does_not_exist_fails_with_the_names() -> None:
    message = render_error(
        {"prometheusRule": {"enabled": True, "disabled": {"TailwatchDown": True}}}
    )
    assert "prometheusRule.disabled.TailwatchDown: no alert has that name" in message
    assert "TailwatchRolloutStuck" in message


def test_the_default_rules_are_the_generated_file_exactly() -> None:
    rule = one(render({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


# -- The pod ------------------------------------------------------------------------------------


def test_extra_args_as_a_list_or_a_map_follow_the_charts_flags() -> None:
    chart_flags = agent_container(render())["args"]
    listed = agent_container(render(ECOSYSTEM))["args"]
    assert listed[-2:] == ECOSYSTEM["extraArgs"]
    mapped = agent_container(
        render({"extraArgs": {"spike-ratio": 6, "emit-events": True, "log-level": "debug"}})
    )
    assert mapped["args"] == [
        *chart_flags, "--emit-events=true", "--log-level=debug", "--spike-ratio=6",
    ]  # fmt: skip
    assert flags(mapped)["spike-ratio"] == "6"
    ds = one(render(ECOSYSTEM), "DaemonSet")  # extra volumes, mounts, pull secrets, surge
    kubernetes_validate.validate(ds, KUBERNETES_VERSIONS[-1], strict=True)
    assert "at '/extraArgs'" in render_error({"extraArgs": ["spike-ratio=6"]})


def test_extra_volumes_mounts_and_env_reach_the_pod() -> None:
    manifests = render(ECOSYSTEM)
    spec = one(manifests, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["volumes"][-1] == ECOSYSTEM["extraVolumes"][0]
    assert agent_container(manifests)["volumeMounts"][-1] == ECOSYSTEM["extraVolumeMounts"][0]


@pytest.mark.parametrize(
    ("strategy", "rendered"),
    [
        ({}, {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
        (
            {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}},
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}},
        ),
        ({"type": "OnDelete"}, {"type": "OnDelete"}),
        # The older form still works.
        (
            {"maxUnavailable": "20%"},
            {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "20%"}},
        ),
    ],
)
def test_update_strategy_is_the_daemon_sets(
    strategy: dict[str, Any], rendered: dict[str, Any]
) -> None:
    ds = one(render({"updateStrategy": strategy}), "DaemonSet")
    assert ds["spec"]["updateStrategy"] == rendered
    for version in (KUBERNETES_VERSIONS[0], KUBERNETES_VERSIONS[-1]):
        kubernetes_validate.validate(ds, version, strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"updateStrategy": {"rollingUpdate": {"maxSurge": 1}}},
            "with maxSurge set maxUnavailable to 0",
        ),
        ({"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0}}}, "both 0"),
        (
            {
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "otlp": {"hostPort": {"enabled": True}},
            },
            "could not bind the ports",
        ),
        ({"updateStrategy": {"type": "Recreate"}}, "at '/updateStrategy/type'"),
    ],
)
def test_an_update_strategy_the_api_server_or_the_node_would_refuse_fails(
    values: dict[str, Any], message: str
) -> None:
    assert message in render_error(values)


def test_global_registry_and_pull_secrets_as_names_or_objects() -> None:
    manifests = render(ECOSYSTEM)
    container = agent_container(manifests)
    assert container["image"] == f"mirror.example/tailwatch:{__version__}"
    expected = [{"name": "registry-credentials"}, {"name": "mirror-credentials"}]
    spec = one(manifests, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == expected
    assert helm_test_pod(manifests)["spec"]["imagePullSecrets"] == expected
    # image.registry alone, and nothing at all, as before.
    alone = agent_container(render({"image": {"registry": "registry.example"}}))
    assert alone["image"] == f"registry.example/tailwatch:{__version__}"
    assert "imagePullSecrets" not in one(render(), "DaemonSet")["spec"]["template"]["spec"]
