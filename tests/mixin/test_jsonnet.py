"""mixin.libsonnet, evaluated by the real jsonnet evaluator as a jsonnet-bundler user would
import it (vendor/tailwatch/mixin.libsonnet): the same alerts, recording rules and
dashboards as the generated files, and `_config.nativeHistograms` picking the native rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _jsonnet
import yaml

from exporter.mixin.dashboards import DASHBOARDS
from exporter.mixin.generate import RULE_FILES
from tests.mixin.conftest import REPO


def evaluate(tmp_path: Path, snippet: str) -> Any:
    """`snippet` evaluated with the repository vendored as `tailwatch`, as `jb install`
    lays it out."""
    vendor = tmp_path / "vendor"
    vendor.mkdir(exist_ok=True)
    if not (vendor / "tailwatch").exists():
        (vendor / "tailwatch").symlink_to(REPO, target_is_directory=True)
    return json.loads(_jsonnet.evaluate_snippet("main.jsonnet", snippet, jpathdir=[str(vendor)]))


def generated_groups(native: bool) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((REPO / RULE_FILES[native][0]).read_text())[
        "groups"
    ]
    return groups


def test_the_mixin_has_the_generated_alerts_rules_and_dashboards(tmp_path: Path) -> None:
    mixin = evaluate(
        tmp_path,
        "local m = import 'tailwatch/mixin.libsonnet';\n"
        "{alerts: m.prometheusAlerts, rules: m.prometheusRules, dashboards: m.grafanaDashboards}",
    )
    groups = generated_groups(native=False)
    alerts = [g for g in groups if any("alert" in r for r in g["rules"])]
    records = [g for g in groups if all("record" in r for r in g["rules"])]
    assert alerts and records and len(alerts) + len(records) == len(groups)
    assert mixin["alerts"] == {"groups": alerts}
    assert mixin["rules"] == {"groups": records}
    assert mixin["dashboards"] == {
        f"{name}.json": json.loads((REPO / "dashboards" / f"{name}.json").read_text())
        for name in DASHBOARDS
    }


def test_native_histograms_in_the_config_pick_the_native_rules(tmp_path: Path) -> None:
    mixin = evaluate(
        tmp_path,
        "local m = (import 'tailwatch/mixin.libsonnet') + {_config+:: {nativeHistograms: true}};\n"
        "m.prometheusRules.groups + m.prometheusAlerts.groups",
    )
    native = generated_groups(native=True)
    assert sorted(g["name"] for g in mixin) == sorted(g["name"] for g in native)
    assert {g["name"]: g for g in mixin} == {g["name"]: g for g in native}
    assert mixin != generated_groups(native=False)
