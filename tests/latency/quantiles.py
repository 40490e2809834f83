"""Reference quantiles for the latency tests and benchmarks: the exact nearest-rank quantile
and PromQL's `histogram_quantile` over cumulative buckets."""

from __future__ import annotations

import math
from collections.abc import Sequence


def exact_quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile: the value of rank ceil(q·n), at least rank 1."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram_quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float:
    """PromQL's histogram_quantile: linear interpolation inside the bucket of rank q·n (from
    0 in the first bucket; the highest finite bound if the rank is in +Inf)."""
    total = cumulative[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            share = (rank - previous_count) / (count - previous_count)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    raise AssertionError("the last bucket holds every value")


def buckets(cumulative_le: Sequence[tuple[str, float]]) -> list[tuple[float, float]]:
    """`le` strings as numbers."""
    return [(float(le), n) for le, n in cumulative_le]
