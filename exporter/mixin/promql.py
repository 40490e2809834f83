"""Small PromQL builders shared by the rules and the dashboards: durations, selectors,
aggregation labels, and the increase of counters whose series appear with their first event.
"""

from __future__ import annotations

from exporter.mixin.config import MixinConfig

_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1))


def duration(seconds: float) -> str:
    """A PromQL duration in one unit, e.g. 300 → `5m`, 8640 → `144m`, 0.5 → `500ms`."""
    ms = round(seconds * 1000)
    if ms <= 0:
        return "0s"
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every whole number of ms is divisible by 1")


def matchers(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def selector(metric: str, *parts: str) -> str:
    """`metric{a="b", c=~"d"}` from matcher strings; empty parts are left out."""
    inner = matchers(*parts)
    return f"{metric}{{{inner}}}" if inner else metric


class PromQL:
    """Selectors and `by` lists for one config: the job matchers on every raw series, the
    cluster label kept in aggregations (and matched to `$cluster` in dashboards) when the
    config is multi-cluster."""

    def __init__(self, config: MixinConfig, dashboard: bool = False) -> None:
        self.config = config
        sel = config.selectors
        self.cluster = sel.cluster_label if sel.multi_cluster else ""
        self.node = sel.node_label
        self._cluster_matcher = f'{self.cluster}="$cluster"' if dashboard and self.cluster else ""

    def raw(self, metric: str, *parts: str) -> str:
        """A series the agents export (or `up`): the job matchers first."""
        return selector(metric, self.config.selectors.job, self._cluster_matcher, *parts)

    def rec(self, record: str, *parts: str) -> str:
        """A recorded series: no job matchers (a recording rule drops `job`)."""
        return selector(record, self._cluster_matcher, *parts)

    def by(self, *labels: str) -> str:
        """`cluster, a, b` for `by (...)`/`on (...)`: the cluster label first when kept."""
        return ", ".join(x for x in (self.cluster, *labels) if x)


def indent(text: str, spaces: int = 2) -> str:
    """Indent every line but the first, to nest a multi-line expression inside another."""
    return text.replace("\n", "\n" + " " * spaces)


def increase_with_new_series(series: str, window: str) -> str:
    """Increase of a counter over `window`, counting series that appeared within the window.

    The agent creates a counter series with its first event (value 1), and `increase()`
    cannot see that first step: it only compares samples inside the window. A series that
    has no sample `window` ago is new, so all of its value happened inside the window.
    """
    new = f"({series} unless {series} offset {window})"
    return f"(\n  increase({series}[{window}])\n  unless {new}\n)\nor\n{new}"
