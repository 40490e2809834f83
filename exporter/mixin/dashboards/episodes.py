"""Episode panels read from the agents' episode metrics, shared by the Overview and Service
dashboards: a table of the episodes closed in the dashboard's time range, and the count of
episodes that never recovered."""

from __future__ import annotations

from typing import Any

from exporter.mixin.dashboards import panels as p
from exporter.mixin.promql import PromQL, increase_with_new_series, indent

#: Worst impact as a number, so a table can take the max and map it back to a word.
IMPACT_LEVELS = {"severe": 3, "degraded": 2, "none": 1}


def _in_range(series: str) -> str:
    return increase_with_new_series(series, "$__range")


def episode_table(
    q: PromQL,
    matchers: tuple[str, ...],
    keys: tuple[str, ...],
    links: tuple[dict[str, Any], ...] = (),
) -> Any:
    """Per `keys` (e.g. namespace, service, cause): episodes closed in range, their worst
    impact, the worst p99 ratio (upper bound of the highest bucket hit) and recovery p90;
    `links` are data links on each row.

    Every agent that has latency for a Service (the k probing its address, those hosting its
    endpoints) reports its episodes, so counts take the max across agents, not the sum."""
    by = q.by(*keys)
    episodes = q.raw("tailwatch_episodes_total", *matchers)
    impact_levels = "\nor\n".join(
        f"((\n  {indent(_in_range(_with_impact(q, matchers, impact)))}\n) > 0) * 0 + {level}"
        for impact, level in IMPACT_LEVELS.items()
    )
    queries = p.instant_targets(
        f"round(max by ({by}) (\n  {indent(_in_range(episodes))}\n))",
        f"max by ({by}) (\n  {indent(impact_levels)}\n)",
        quantile_in_range(q, "1", "tailwatch_episode_p99_ratio", matchers, keys),
        quantile_in_range(q, "0.9", "tailwatch_episode_recovery_seconds", matchers, keys),
    )
    impact_words = p.value_mappings(
        {str(level): (impact, color) for impact, level, color in _impact_colors()}
    )
    return p.table(
        "Episodes in range",
        "Episodes closed in the time range, by cause: how many, the worst impact, the worst "
        "p99 during / baseline (the upper bound of the highest histogram bucket reached) and "
        "the 90th percentile of the time to recover. Counts are the max across agents, as "
        "every agent with latency for a Service reports its episodes.",
        queries,
        "short",
        columns={
            "Value #A": ("Episodes", "short"),
            "Value #B": ("Worst impact", "none"),
            "Value #C": ("Worst p99 ratio", "suffix:x"),
            "Value #D": ("Recovery p90", "s"),
        },
        mappings={"Value #B": impact_words},
        links=links,
    )


def quantile_in_range(
    q: PromQL, quantile: str, metric: str, matchers: tuple[str, ...], keys: tuple[str, ...]
) -> str:
    """A quantile by `keys` of the observations of a histogram in the time range; its
    series appear with their first observation, like the counters."""
    return q.histogram(
        lambda h: (
            f"histogram_quantile({quantile}, sum by ({h.by(*keys)}) (\n"
            f"  {indent(_in_range(h.series(metric, *matchers)))}\n))"
        )
    )


def _with_impact(q: PromQL, matchers: tuple[str, ...], impact: str) -> str:
    return q.raw("tailwatch_episodes_total", *matchers, f'impact="{impact}"')


def _impact_colors() -> list[tuple[str, int, str]]:
    colors = {"severe": "red", "degraded": "orange", "none": "green"}
    return [(impact, level, colors[impact]) for impact, level in IMPACT_LEVELS.items()]


def not_recovered_stat(q: PromQL, matchers: tuple[str, ...]) -> Any:
    series = q.raw("tailwatch_episodes_not_recovered_total", *matchers)
    return p.stat(
        "Not recovered",
        "Episodes in the time range whose p99 was still above baseline when the agent's "
        "--recovery-max ran out (the counter exists only after the first one: no series "
        "means none).",
        p.instant_targets(f"round(max(\n  {indent(_in_range(series))}\n)) or on () vector(0)"),
        "short",
        thresholds=((1, "red"),),
    )
