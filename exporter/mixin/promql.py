"""Small PromQL builders shared by the rules and the dashboards: durations, selectors,
aggregation labels, the two stored forms of a histogram, and the increase of counters whose
series appear with their first event.
"""

from __future__ import annotations

from collections.abc import Callable

from exporter.catalogue import PRESSURE_WAITING
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
        # Rules read the form the config names; dashboards read both (see `histogram`).
        forms = (False, True) if dashboard else (config.native_histograms,)
        self._histograms = tuple(Histograms(self, native) for native in forms)

    def raw(self, metric: str, *parts: str) -> str:
        """A series the agents export (or `up`): the job matchers first."""
        return selector(metric, self.config.selectors.job, self._cluster_matcher, *parts)

    def rec(self, record: str, *parts: str) -> str:
        """A recorded series: no job matchers (a recording rule drops `job`)."""
        return selector(record, self._cluster_matcher, *parts)

    def by(self, *labels: str) -> str:
        """`cluster, a, b` for `by (...)`/`on (...)`: the cluster label first when kept."""
        return ", ".join(x for x in (self.cluster, *labels) if x)

    @property
    def histograms(self) -> Histograms:
        """The one histogram form the rules of this config read (dashboards read both)."""
        if len(self._histograms) != 1:
            raise ValueError("a dashboard reads both histogram forms: use histogram()")
        return self._histograms[0]

    def histogram(self, build: Callable[[Histograms], str]) -> str:
        """An expression that reads histograms, written by `build` for a histogram form.

        Rules: the form of `config.native_histograms`. Dashboards: both forms joined with
        `or`. A Prometheus holds one of them (native histograms have no `_bucket` series, and
        classic ones no series under the family's own name), so a panel shows whichever
        exists, and stays continuous when a Prometheus switches form: the classic result
        wins while both exist within a rate window. `build` must return one term (a
        function call or an aggregation) so that the `or` joins whole expressions.
        """
        return "\nor\n".join(build(h) for h in self._histograms)


class Histograms:
    """How a query reads a histogram family in one of its two stored forms, for `PromQL`'s
    selectors and labels. Classic: the `_bucket{le}`, `_count` and `_sum` series of the
    text formats. Native: one series per label set whose samples are whole histograms
    (Prometheus >= 2.40 scraping protobuf with native histograms on); `rate()`, `increase()`
    and `sum` keep them histograms, and `histogram_quantile()`, `histogram_count()`,
    `histogram_sum()` and `histogram_fraction()` read them.

    Every rule, alert and panel that reads a histogram goes through this class: no other
    code writes `_bucket`, `_count` or `_sum`.
    """

    def __init__(self, q: PromQL, native: bool) -> None:
        self.q = q
        self.native = native

    def series(self, metric: str, *matchers: str) -> str:
        """What to `rate()`, `increase()` or `sum` before `histogram_quantile()`: the bucket
        series (`metric_bucket{...}`) or the native histograms (`metric{...}`)."""
        return self.q.raw(metric if self.native else f"{metric}_bucket", *matchers)

    def by(self, *labels: str) -> str:
        """The labels of a `sum by` feeding `histogram_quantile()`: classic buckets keep
        `le`; native histograms carry their buckets inside."""
        return self.q.by(*labels) if self.native else self.q.by(*labels, "le")

    def sum(self, labels: tuple[str, ...], expr: str) -> str:
        """`sum by (<labels>[, le]) (expr)`, or `sum (expr)` when nothing is kept."""
        by = self.by(*labels)
        return f"sum by ({by}) ({expr})" if by else f"sum ({expr})"

    def rate(self, metric: str, window: str, *matchers: str) -> str:
        return f"rate({self.series(metric, *matchers)}[{window}])"

    def count(self, metric: str, *matchers: str) -> str:
        """The number of observations so far, a counter: `metric_count{...}` or
        `histogram_count(metric{...})`."""
        if self.native:
            return f"histogram_count({self.q.raw(metric, *matchers)})"
        return self.q.raw(f"{metric}_count", *matchers)

    def count_rate(self, metric: str, window: str, *matchers: str) -> str:
        """Observations per second over `window`."""
        if self.native:
            return f"histogram_count(rate({self.q.raw(metric, *matchers)}[{window}]))"
        return f"rate({self.q.raw(f'{metric}_count', *matchers)}[{window}])"

    def bucket_record(self, level: str, metric: str, operation: str) -> str:
        """The name of a recorded sum of the bucket rates of a classic `metric`, one series
        per bucket: `<level>_le:<metric>_bucket:<operation>`. The native rules record no
        histogram (exporter/mixin/records.py says why)."""
        if self.native:
            raise ValueError("native histograms are not recorded")
        return f"{level}_le:{metric}_bucket:{operation}"


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


def psi_waiting_rate(raw: Callable[..., str], window: str, *matchers: str) -> str:
    """The share of time some task of each container waited, with a `resource` label
    (cpu, memory, io): the three PSI "some" families (the kubelet's `waiting`), one rate
    each, labelled and joined, so a panel can show them by resource. `raw(metric, *matchers)`
    makes each selector (the job matchers and the dashboard's)."""
    return "\nor\n".join(
        f"label_replace(rate({raw(family.name, *matchers)}[{window}]), "
        f'"resource", "{resource}", "", "")'
        for resource, family in PRESSURE_WAITING.items()
    )
