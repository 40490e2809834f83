"""The mixin against the agent's contract: every family a dashboard or a rule reads is one
the agent exports (exporter/catalogue.py), alert summaries that stay the same while an alert
fires, durations in Prometheus' notation, per-series links that Grafana resolves, and
annotation queries fine enough for episodes shorter than a minute."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from exporter.catalogue import FAMILIES, Kind
from exporter.mixin import MixinConfigError, from_mapping
from exporter.mixin.config import parse_duration
from exporter.mixin.dashboards import DASHBOARDS
from exporter.mixin.generate import RULE_FILES
from tests.mixin.conftest import REPO
from tests.mixin.dashboards import panels, queries

#: A metric name of ours in a query: not part of a recording rule's name (level:metric:ops).
FAMILY_REFERENCE = re.compile(r"(?<![\w:])tailwatch_\w+(?![\w:])")
#: What a family's series are called in PromQL: its name, and a classic histogram's parts.
SERIES_NAMES = {
    name
    for family in FAMILIES
    for name in (
        (family.name, *(f"{family.name}_{part}" for part in ("bucket", "count", "sum")))
        if family.kind is Kind.HISTOGRAM
        else (family.name,)
    )
}
POD_DASHBOARD = "/d/6581e46e4e5c7ba40a07646395ef7b23/k8s-resources-pod?"
NODE_DASHBOARD = "/d/200ac8fdbfbb74b39aff88118e4d1c2c/k8s-resources-node?"


def committed_dashboards() -> dict[str, dict[str, Any]]:
    return {
        name: json.loads((REPO / "dashboards" / f"{name}.json").read_text()) for name in DASHBOARDS
    }


def committed_rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES.values():
        for group in yaml.safe_load((REPO / path[0]).read_text())["groups"]:
            yield from group["rules"]


def test_dashboards_and_rules_read_only_families_the_agent_exports() -> None:
    """A renamed family renamed everywhere: no query is left reading the old name."""
    read: dict[str, str] = {}
    for name, dashboard in committed_dashboards().items():
        for query in queries(name, dashboard):
            for found in FAMILY_REFERENCE.findall(query.expr):
                read[found] = f"{name}: {query.panel}"
    for rule in committed_rules():
        for found in FAMILY_REFERENCE.findall(rule["expr"]):
            read[found] = rule.get("alert") or rule["record"]
    unknown = {family: where for family, where in read.items() if family not in SERIES_NAMES}
    assert not unknown, f"not in exporter/catalogue.py: {unknown}"
    assert len(read) >= 20
    # The renames: PSI as the kubelet names it, the watch's last event as a timestamp.
    assert "tailwatch_container_pressure_cpu_waiting_seconds_total" in read
    assert "tailwatch_watch_last_event_timestamp_seconds" in read


def test_every_alert_summary_stays_the_same_while_the_alert_fires() -> None:
    """Alertmanager's grouped headline comes from the summaries: a value in one makes a new
    headline at each evaluation. The values are in the description."""
    alerts = [rule for rule in committed_rules() if "alert" in rule]
    assert alerts
    for rule in alerts:
        summary = rule["annotations"]["summary"]
        assert "$value" not in summary and "humanize" not in summary, (rule["alert"], summary)
        assert not re.search(r"\{\{[^}]*\|", summary), (rule["alert"], summary)
    described = [rule for rule in alerts if "$value" in rule["annotations"]["description"]]
    assert len(described) >= 8


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1d", 86400),
        ("3d", 259200),
        ("90s", 90),
        ("1h30m", 5400),
        ("2w", 1209600),
        ("1y", 31536000),
        ("500ms", 0.5),
        ("1m30s500ms", 90.5),
        ("0", 0),
        ("300", 300),
        ("0.25", 0.25),
    ],
)
def test_durations_are_read_as_prometheus_writes_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    config = from_mapping({"windows": {"baseline": text}, "thresholds": {"slow_recovery": text}})
    assert config.windows.baseline == seconds and config.thresholds.slow_recovery == seconds


@pytest.mark.parametrize("text", ["soon", "", "1.5m", "5m1h", "1d1d", "1 d", "-1m", "m", "1D"])
def test_a_malformed_duration_is_refused_with_the_key_and_the_grammar(text: str) -> None:
    with pytest.raises(MixinConfigError) as raised:
        from_mapping({"slo": {"fanout_window": text}})
    message = str(raised.value)
    assert message.startswith("slo.fanout_window: ")
    assert "units y, w, d, h, m, s, ms in that order" in message


def test_the_burn_rate_windows_and_thresholds_that_are_times_take_durations() -> None:
    config = from_mapping(
        {
            "slo": {
                "burn_rates": [
                    {"long": "3d", "short": "6h", "factor": 1, "for": "3h", "severity": "warning"}
                ]
            },
            "thresholds": {"watch_stale_seconds": "5m", "prober_lag_p99_seconds": "100ms"},
        }
    )
    (burn,) = config.slo.burn_rates
    assert (burn.long, burn.short, burn.pending) == (259200, 21600, 10800)
    assert config.thresholds.watch_stale_seconds == 300
    assert config.thresholds.prober_lag_p99_seconds == 0.1


def test_per_series_links_are_data_links_with_the_series_labels() -> None:
    """Grafana resolves `${__field.labels.*}` in data links (fieldConfig), not in a panel's
    header links; the pod links open kubernetes-mixin's pod dashboard for that pod."""
    pod_links = 0
    for name, dashboard in committed_dashboards().items():
        for panel in panels(dashboard):
            assert not any("${__" in link.get("url", "") for link in panel.get("links", [])), (
                f"{name}: {panel['title']} has a per-series header link"
            )
            for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
                url = link["url"]
                labels = set(re.findall(r"\$\{__field\.labels\.(\w+)\}", url))
                # Every label the link reads is one the panel's aggregations keep (a query
                # without one keeps every label of its series).
                for target in panel["targets"]:
                    kept = re.findall(r"\bby \(([^)]*)\)", target["expr"])
                    words = {w.strip() for clause in kept for w in clause.split(",")}
                    assert not kept or labels <= words, f"{name}: {panel['title']}: {url}"
                if url.startswith(POD_DASHBOARD):
                    pod_links += 1
                    assert "var-pod=${__field.labels.pod}" in url
                    assert "var-namespace=${__field.labels.namespace}" in url
                    assert "${datasource:queryparam}" in url and "${__url_time_range}" in url
    assert pod_links >= 10


def test_the_episode_table_links_each_row_to_its_service() -> None:
    overview = committed_dashboards()["tailwatch-overview"]
    (table,) = [p for p in panels(overview) if p["title"] == "Episodes in range"]
    (link,) = table["fieldConfig"]["defaults"]["links"]
    assert "var-namespace=${__data.fields.namespace}" in link["url"]
    assert "var-service=${__data.fields.service}" in link["url"]


def test_the_node_dashboard_links_to_kubernetes_mixins_node_dashboard() -> None:
    node = committed_dashboards()["tailwatch-node"]
    urls = [link["url"] for link in node["links"] if link["type"] == "link"]
    assert urls == [f"{NODE_DASHBOARD}${{datasource:queryparam}}&var-node=${{node}}"]
    multi = DASHBOARDS["tailwatch-node"](from_mapping({"selectors": {"multi_cluster": True}}))
    (link,) = [link for link in multi.links if link.type == "link"]
    assert "&var-cluster=${cluster}&" in link.uri


def test_annotation_queries_resolve_episodes_shorter_than_a_minute() -> None:
    """Grafana's default annotation step is 60 s: a 20-second episode would fall between two
    steps."""
    for name, dashboard in committed_dashboards().items():
        annotations = [a for a in dashboard["annotations"]["list"] if "expr" in a]
        assert annotations, name
        for annotation in annotations:
            assert annotation["step"] == "10s", (name, annotation["name"])
    coarse = DASHBOARDS["tailwatch-overview"](
        from_mapping({"dashboards": {"annotation_step": "30s"}})
    )
    assert {a["step"] for a in coarse.annotations.list if "expr" in a} == {"30s"}
