"""grafanalib building blocks shared by the dashboards: the datasource variable on every
panel and query, template variables, a grid that places panels row by row, and the panel
kinds with their units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
from grafanalib import core as g

from exporter.mixin.config import MixinConfig
from exporter.mixin.promql import PromQL

#: Every panel, query, variable and annotation reads from the `$datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana 10's dashboard schema; older Grafanas still load it, newer ones migrate it.
SCHEMA_VERSION = 39
GRID_WIDTH = 24


def _threshold_steps(thresholds: Sequence[tuple[float, str]]) -> list[dict[str, Any]]:
    """Grafana's threshold steps: green below the first (value, color) pair, then each."""
    return [{"color": "green", "value": None}] + [
        {"color": color, "value": value} for value, color in thresholds
    ]


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> Any:
    return g.Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        instant=instant,
        format=g.TABLE_TARGET_FORMAT if instant else g.TIME_SERIES_TARGET_FORMAT,
        datasource=DATASOURCE,
        intervalFactor=1,
    )


def targets(*queries: tuple[str, str]) -> list[Any]:
    """Range queries (expr, legend) with refIds A, B, C, ..."""
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def instant_targets(*exprs: str) -> list[Any]:
    return [target(expr, "", chr(ord("A") + i), instant=True) for i, expr in enumerate(exprs)]


def value_mappings(texts: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Grafana value mappings: value → (text, color)."""
    options = {
        value: {"text": text, "color": color, "index": i}
        for i, (value, (text, color)) in enumerate(texts.items())
    }
    return [{"type": "value", "options": options}]


def timeseries(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    *,
    stacked: bool = False,
    bars: bool = False,
    thresholds: Sequence[tuple[float, str]] = (),
    minimum: int | None = None,
    maximum: int | None = None,
    links: Sequence[dict[str, Any]] = (),
) -> Any:
    steps = _threshold_steps(thresholds)
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        drawStyle="bars" if bars else "line",
        fillOpacity=60 if bars else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        thresholds=steps,
        thresholdsStyleMode="line" if thresholds else "off",
        valueMin=minimum,
        valueMax=maximum,
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        showPoints="never",
        links=list(links),
    )


def stat(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    *,
    thresholds: Sequence[tuple[float, str]] = (),
    mappings: list[dict[str, Any]] | None = None,
) -> Any:
    steps = _threshold_steps(thresholds)
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="none",
        textMode="value_and_name",
        thresholds=steps,
        mappings=mappings or [],
    )


def table(
    title: str,
    description: str,
    queries: list[Any],
    unit: str,
    *,
    columns: dict[str, tuple[str, str]],
    mappings: dict[str, list[dict[str, Any]]] | None = None,
    hidden: Sequence[str] = ("Time",),
) -> Any:
    """A table of instant queries merged on their labels. `columns` renames each query's
    value column (`Value #A`, ...) and sets its unit: {"Value #A": ("Episodes", "short")}."""
    overrides = [
        {
            "matcher": {"id": "byName", "options": column},
            "properties": [{"id": "unit", "value": unit}]
            + (
                [{"id": "mappings", "value": mappings[column]}]
                if mappings and column in mappings
                else []
            ),
        }
        for column, (_, unit) in columns.items()
    ]
    transformations = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": dict.fromkeys(hidden, True),
                "renameByName": {column: name for column, (name, _) in columns.items()},
            },
        },
    ]
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        unit=unit,
        overrides=overrides,
        transformations=transformations,
        filterable=True,
    )


def state_timeline(
    title: str, description: str, queries: list[Any], unit: str, mappings: list[dict[str, Any]]
) -> Any:
    return g.StateTimeline(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=queries,
        mappings=mappings,
        colorMode="fixed" if mappings else "thresholds",
        extraJson={"fieldConfig": {"defaults": {"unit": unit}}},
    )


class Grid:
    """Places panels left to right in rows of 24 columns, under titled row panels."""

    def __init__(self) -> None:
        self.panels: list[Any] = []
        self._x = 0
        self._y = 0
        self._height = 0

    def _newline(self) -> None:
        self._y += self._height
        self._x = 0
        self._height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=GRID_WIDTH, x=0, y=self._y))
        )
        self._y += 1

    def add(self, panel: Any, width: int, height: int = 8) -> None:
        if self._x + width > GRID_WIDTH:
            self._newline()
        self.panels.append(
            attr.evolve(panel, gridPos=g.GridPos(h=height, w=width, x=self._x, y=self._y))
        )
        self._x += width
        self._height = max(self._height, height)


def variable(
    name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False
) -> Any:
    return g.Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        multi=multi,
        includeAll=include_all,
        allValue=".+" if include_all else None,
        refresh=2,  # on time range change: Services and nodes come and go
        sort=1,
    )


def common_variables(config: MixinConfig) -> list[Any]:
    """The datasource variable, and the cluster variable when the config is multi-cluster."""
    q = PromQL(config, dashboard=True)
    found = [
        g.Template(
            name="datasource",
            label="Data source",
            query="prometheus",
            type="datasource",
            default="default",
            hide=0,
        )
    ]
    if q.cluster:
        up = PromQL(config).raw("up")
        found.append(variable("cluster", "Cluster", f"label_values({up}, {q.cluster})"))
    return found


def annotation(name: str, expr: str, title: str, tags: str, color: str) -> dict[str, Any]:
    """A Prometheus annotation query: each step with a value marks the time panels."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "expr": expr,
        "hide": False,
        "iconColor": color,
        "name": name,
        "step": "",
        "tagKeys": tags,
        "textFormat": "",
        "titleFormat": title,
        "useValueForTime": False,
    }


def dashboard(
    config: MixinConfig,
    *,
    title: str,
    uid: str,
    description: str,
    grid: Grid,
    variables: list[Any],
    annotations: list[dict[str, Any]],
) -> Any:
    d = config.dashboards
    return g.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=list(d.tags),
        timezone=d.timezone,
        refresh=d.refresh,
        time=g.Time(d.time_from, "now"),
        schemaVersion=SCHEMA_VERSION,
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        panels=grid.panels,
        templating=g.Templating(list=[*common_variables(config), *variables]),
        annotations=g.Annotations(list=annotations),
        links=[
            g.DashboardLink(
                title="tailwatch",
                tags=list(d.tags),
                asDropdown=True,
                includeVars=True,
                keepTime=True,
            )
        ],
    ).auto_panel_ids()
