"""Dashboard lint: unique panel ids, the datasource variable on every panel and query, units
set, a sane grid, stable UIDs, and every query (variables substituted) accepted by a real
Prometheus, without and with native histograms — for the committed dashboards, a
multi-cluster config and a native-histogram config. The dashboards read both histogram forms,
so the histogram switch leaves them unchanged."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from exporter.mixin import MixinConfig, from_mapping
from exporter.mixin.dashboards import DASHBOARDS
from exporter.mixin.generate import dashboard_json
from tests.mixin.conftest import REPO
from tests.mixin.dashboards import BUILTINS, panels, queries, substitute, variables_used
from tests.mixin.prometheus import Prometheus

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
LINT_VALUES = {
    "namespace": "shop",
    "service": "checkout",
    "node": "node-a",
    "cluster": "east",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
MULTI_CLUSTER = from_mapping({"selectors": {"multi_cluster": True}})
NATIVE = from_mapping({"native_histograms": True})


def committed() -> dict[str, dict[str, Any]]:
    return {
        name: json.loads((REPO / "dashboards" / f"{name}.json").read_text()) for name in DASHBOARDS
    }


def built(config: MixinConfig) -> dict[str, dict[str, Any]]:
    return {name: json.loads(dashboard_json(build(config))) for name, build in DASHBOARDS.items()}


VARIANTS = {
    "committed": committed,
    "multi-cluster": lambda: built(MULTI_CLUSTER),
    "native": lambda: built(NATIVE),
}


@pytest.fixture(params=sorted(VARIANTS))
def dashboards(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    return VARIANTS[request.param]()


def test_panel_ids_are_unique(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        ids = [p["id"] for p in panels(dashboard)]
        assert all(isinstance(i, int) for i in ids), name
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids {sorted(ids)}"


def test_every_panel_and_query_reads_the_datasource_variable(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for name, dashboard in dashboards.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, f"{name}: {panel['title']}"
        for annotation in dashboard["annotations"]["list"]:
            assert annotation["datasource"] == DATASOURCE, f"{name}: {annotation['name']}"
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"] == DATASOURCE, f"{name}: ${variable['name']}"


def test_every_panel_has_a_unit_and_a_description(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name}: {panel['title']}"
            assert panel["description"], f"{name}: {panel['title']}"


def test_panels_fit_the_grid_without_overlapping(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        taken: set[tuple[int, int]] = set()
        for panel in panels(dashboard):
            pos = panel["gridPos"]
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            cells = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & taken, f"{name}: {panel['title']} overlaps another panel"
            taken |= cells


def test_dashboards_have_the_configured_stable_uids() -> None:
    config = MixinConfig().dashboards
    uids = {name: d["uid"] for name, d in committed().items()}
    assert uids == {
        "tailwatch-overview": config.overview_uid,
        "tailwatch-service": config.service_uid,
        "tailwatch-node": config.node_uid,
    }


def test_every_variable_a_query_uses_is_defined(dashboards: dict[str, dict[str, Any]]) -> None:
    for name, dashboard in dashboards.items():
        defined = {v["name"] for v in dashboard["templating"]["list"]} | set(BUILTINS)
        for query in queries(name, dashboard):
            missing = variables_used(query.expr) - defined
            assert not missing, f"{name}: {query.panel} uses undefined {missing}"


def test_only_multi_cluster_dashboards_have_a_cluster_variable(
    dashboards: dict[str, dict[str, Any]],
) -> None:
    for dashboard in dashboards.values():
        has_cluster = "cluster" in {v["name"] for v in dashboard["templating"]["list"]}
        cluster_in_queries = any("$cluster" in q.expr for q in queries("", dashboard))
        assert has_cluster == cluster_in_queries


@pytest.mark.parametrize("form", ["classic", "native"])
def test_every_query_parses_in_prometheus(
    dashboards: dict[str, dict[str, Any]], form: str, request: pytest.FixtureRequest
) -> None:
    """Against a Prometheus without native histograms, and one with them."""
    server: Prometheus = request.getfixturevalue(
        "native_prometheus" if form == "native" else "prometheus"
    )
    checked = 0
    for name, dashboard in dashboards.items():
        for query in queries(name, dashboard):
            server.query(substitute(query.expr, LINT_VALUES))  # raises on a bad query
            checked += 1
    assert checked > 60


def test_the_histogram_switch_leaves_the_dashboards_unchanged() -> None:
    for config in (MixinConfig(), MULTI_CLUSTER):
        native = dataclasses.replace(config, native_histograms=True)
        assert built(native) == built(config)


#: A classic histogram series, and the family it belongs to.
CLASSIC_SERIES = re.compile(r"\b(tailwatch_\w+?)_(?:bucket|count|sum)\{")


def test_every_query_that_reads_a_classic_histogram_reads_the_native_one_too() -> None:
    """Each panel works whichever form the Prometheus stores (docs/dashboards.md)."""
    read = 0
    for name, dashboard in committed().items():
        for query in queries(name, dashboard):
            for family in set(CLASSIC_SERIES.findall(query.expr)):
                read += 1
                assert re.search(rf"\b{family}\{{", query.expr), (
                    f"{name}: {query.panel} {query.ref} reads {family} only as classic"
                )
    assert read >= 10


def test_the_grafanalib_entry_points_build_the_committed_dashboards() -> None:
    """dashboards/*.dashboard.py are what grafanalib's generate-dashboard reads."""
    import importlib.util

    for name in DASHBOARDS:
        path = REPO / "dashboards" / f"{name}.dashboard.py"
        spec = importlib.util.spec_from_file_location(name.replace("-", "_"), path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert (
            dashboard_json(module.dashboard) == (REPO / "dashboards" / f"{name}.json").read_text()
        )


def test_dashboard_json_has_sorted_keys_and_a_trailing_newline() -> None:
    for name in DASHBOARDS:
        text = (REPO / "dashboards" / f"{name}.json").read_text()
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


def test_no_path_of_this_machine_in_the_generated_files() -> None:
    for path in (*Path(REPO, "dashboards").glob("*.json"), *Path(REPO, "alerts").glob("*.yaml")):
        text = path.read_text()
        assert "/work/" not in text and "/tmp/" not in text, path
