"""Reading the generated dashboards: their panels, queries and variables, and the Grafana
variable substitution the tests apply before sending a query to Prometheus."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Grafana's own variables, as the tests substitute them.
BUILTINS = ("__rate_interval", "__interval", "__range")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(name: str, dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL query: panel targets, annotations, and the selectors of the template
    variables' label_values()."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(name, panel["title"], target["refId"], target["expr"], target["instant"])
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(name, f"annotation {annotation['name']}", "", annotation["expr"], False)
    for variable in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"] or "")
        if variable["type"] == "query" and match:
            yield Query(name, f"variable {variable['name']}", "", match.group(1), True)


def variables_used(expr: str) -> set[str]:
    return set(_VARIABLE.findall(expr))


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's interpolation, for the variables of `values` (an unknown one is an error)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"variable ${name} has no value in {sorted(values)}")
        return values[name]

    return _VARIABLE.sub(replace, expr)
