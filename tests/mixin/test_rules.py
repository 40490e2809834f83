"""The generated rule files of both histogram forms: promtool accepts each of them, the
promtool unit tests in alerts/tests pass (on the classic rules: promtool 2.42's test input
cannot write native histograms, tests/mixin/test_e2e_prometheus.py runs the native ones), every
alert is shown to fire and to stay quiet there, every alert carries a severity, a summary, a
description and a runbook link that resolves, and the two forms have the same alerts."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.mixin import ALERTS, MixinConfig, fast_profile, from_mapping, rules_yaml
from exporter.mixin.generate import PROMETHEUS_RULES, RULE_FILES
from tests.mixin.conftest import REPO

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="needs Debian's prometheus package")
UNIT_TESTS = sorted((REPO / "alerts" / "tests").glob("*.yaml"))
FORMS = {"classic": False, "native": True}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def check_rules(path: Path) -> None:
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def generated_groups(native: bool = False) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((REPO / RULE_FILES[native][0]).read_text())[
        "groups"
    ]
    return groups


def alert_rules(native: bool = False) -> list[dict[str, Any]]:
    return [
        rule for group in generated_groups(native) for rule in group["rules"] if "alert" in rule
    ]


@pytest.mark.parametrize("path", [path for paths in RULE_FILES.values() for path in paths], ids=str)
def test_promtool_accepts_the_rule_file(path: Path) -> None:
    check_rules(REPO / path)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_promtool_accepts_the_groups_of_the_prometheus_rule(form: str, tmp_path: Path) -> None:
    native = FORMS[form]
    manifest = yaml.safe_load((REPO / PROMETHEUS_RULES[native]).read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["spec"]["groups"] == generated_groups(native)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"groups": manifest["spec"]["groups"]}))
    check_rules(spec)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_promtool_accepts_the_fast_profile_and_a_multi_cluster_config(
    form: str, tmp_path: Path
) -> None:
    native = {"native_histograms": FORMS[form]}
    for name, config in {
        "fast": fast_profile(base=from_mapping(native)),
        "multi-cluster": from_mapping({"selectors": {"multi_cluster": True}, **native}),
    }.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(rules_yaml(config))
        check_rules(path)


@pytest.mark.parametrize("path", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path: Path) -> None:
    result = promtool("test", "rules", path.name, cwd=path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_and_stays_quiet_in_a_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    burn_pairs: set[tuple[str, str]] = set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                (fires if expected else quiet).add(case["alertname"])
                for alert in expected:
                    labels = alert["exp_labels"]
                    if "long" in labels:
                        burn_pairs.add((labels["long"], labels["short"]))
    assert fires == set(ALERTS), f"never shown to fire: {set(ALERTS) - fires}"
    assert quiet == set(ALERTS), f"never shown to stay quiet: {set(ALERTS) - quiet}"
    configured = {
        (rule["labels"]["long"], rule["labels"]["short"])
        for rule in alert_rules()
        if rule["alert"] == "TailwatchLatencyBudgetBurn"
    }
    assert burn_pairs == configured


def test_every_alert_has_severity_summary_description_and_a_runbook_entry() -> None:
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{2,3} (.+)$", runbooks, flags=re.M)
    }
    base = MixinConfig().runbook_base_url
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == set(ALERTS)
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        assert annotations["runbook_url"] == f"{base}#{name.lower()}"
        assert name.lower() in anchors, f"docs/runbooks.md has no section for {name}"


def test_both_forms_have_the_same_alerts_and_records_but_the_classic_bucket_rates() -> None:
    """Only the expressions differ, and the classic rules record the bucket rates their
    quantiles read (the native quantile rules read the agents' histograms)."""

    def shape(native: bool) -> list[tuple[str, str, Any, Any]]:
        return [
            (
                group["name"],
                rule.get("alert") or rule["record"],
                rule.get("for"),
                (rule.get("labels"), rule.get("annotations")),
            )
            for group in generated_groups(native)
            for rule in group["rules"]
            if "_bucket:" not in rule.get("record", "")
        ]

    assert shape(native=True) == shape(native=False)
    bucket_records = [
        rule["record"]
        for group in generated_groups(native=False)
        for rule in group["rules"]
        if "_bucket:" in rule.get("record", "")
    ]
    assert bucket_records == [
        "namespace_service_target_state_le:tailwatch_probe_duration_seconds_bucket:rate1m",
        "namespace_service_state_le:tailwatch_client_request_duration_seconds_bucket:rate1m",
    ]


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_recording_rule_is_used_by_a_dashboard_or_another_rule(form: str) -> None:
    rules = [rule for group in generated_groups(FORMS[form]) for rule in group["rules"]]
    users = "\n".join(
        [rule["expr"] for rule in rules]
        + [p.read_text() for p in (REPO / "dashboards").glob("*.json")]
    )
    unused = {rule["record"] for rule in rules if "record" in rule and rule["record"] not in users}
    assert not unused, f"recorded but never used: {sorted(unused)}"
