"""grafanalib building blocks shared by the dashboards: the datasource variable on every
panel and query, template variables, a grid that places panels row by row, and the panel
kinds with their units."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
from grafanalib import core as g

from exporter.mixin.config import MixinConfig
from exporter.mixin.promql import PromQL, duration

#: Every panel, query, variable and annotation reads from the `$datasource` variable.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: Grafana 10's dashboard schema; older Grafanas still load it, newer ones migrate it.
SCHEMA_VERSION = 39
GRID_WIDTH = 24
#: Where a data link puts a series' label: Grafana resolves `${__field.labels.<name>}` per
#: series in a panel's data links (fieldConfig), never in its header links.
FIELD_LABEL = "${__field.labels.%s}"


def data_link(title: str, url: str) -> dict[str, Any]:
    """A data link: offered on each series (a click on its line or legend), with that
    series' labels in the URL."""
    return {"title": title, "url": url, "targetBlank": False}


def _kubernetes_mixin_url(config: MixinConfig, uid: str, slug: str, params: str) -> str:
    """A kubernetes-mixin dashboard's URL with our data source (and cluster) and `params`."""
    cluster = "&var-cluster=${cluster}" if PromQL(config, dashboard=True).cluster else ""
    return f"/d/{uid}/{slug}?${{datasource:queryparam}}{cluster}&{params}"


def pod_link(config: MixinConfig) -> dict[str, Any]:
    """A data link to kubernetes-mixin's "Kubernetes / Compute Resources / Pod" dashboard
    for the series' pod (its requests, limits and usage next to what tailwatch saw), over
    the same time range."""
    namespace, pod = FIELD_LABEL % "namespace", FIELD_LABEL % "pod"
    url = _kubernetes_mixin_url(
        config,
        config.dashboards.kubernetes_pod_uid,
        "k8s-resources-pod",
        f"var-namespace={namespace}&var-pod={pod}",
    )
    return data_link(f"Pod resources of {namespace}/{pod}", f"{url}&${{__url_time_range}}")


def node_link(config: MixinConfig, node: str) -> dict[str, Any]:
    """A link to kubernetes-mixin's "Kubernetes / Compute Resources / Node (Pods)"
    dashboard of `node` (a variable such as `${node}`), for `dashboard(links=...)`, which
    keeps the time range."""
    url = _kubernetes_mixin_url(
        config, config.dashboards.kubernetes_node_uid, "k8s-resources-node", f"var-node={node}"
    )
    return {"title": "Node resources (kubernetes-mixin)", "url": url}


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
        extraJson={"fieldConfig": {"defaults": {"links": list(links)}}} if links else None,
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
    links: Sequence[dict[str, Any]] = (),
) -> Any:
    """A table of instant queries merged on their labels. `columns` renames each query's
    value column (`Value #A`, ...) and sets its unit: {"Value #A": ("Episodes", "short")}.
    `links` are data links on every cell, with the row's labels as `${__data.fields.<label>}`."""
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
        extraJson={"fieldConfig": {"defaults": {"links": list(links)}}} if links else None,
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
    """A Prometheus annotation query: each step with a value marks the time panels. Its
    `step` is set by `dashboard()` from the config (Grafana's default is 60 s, which misses
    an episode or a burst of events shorter than a minute)."""
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
    links: Sequence[dict[str, Any]] = (),
) -> Any:
    """`links`: extra dashboard links (title, url) beside the tailwatch dropdown."""
    d = config.dashboards
    step = duration(d.annotation_step)
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
        annotations=g.Annotations(list=[{**a, "step": step} for a in annotations]),
        links=[
            g.DashboardLink(
                title="tailwatch",
                tags=list(d.tags),
                asDropdown=True,
                includeVars=True,
                keepTime=True,
            ),
            *(
                g.DashboardLink(title=link["title"], uri=link["url"], type="link", keepTime=True)
                for link in links
            ),
        ],
    ).auto_panel_ids()
