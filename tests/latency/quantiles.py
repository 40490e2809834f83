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


def native_histogram_quantile(
    q: float, buckets: Sequence[tuple[int, int]], zero_count: int, schema: int
) -> float:
    """PromQL's histogram_quantile over a native histogram with only positive buckets: the
    bucket (2^((i-1)/2^schema), 2^(i/2^schema)] of rank q·n, interpolated linearly inside it
    (the zero bucket reads as 0)."""
    total = zero_count + sum(n for _, n in buckets)
    rank = q * total
    if rank <= zero_count:
        return 0.0
    seen = float(zero_count)
    for index, count in sorted(buckets):
        if seen + count >= rank:
            lower = 2.0 ** ((index - 1) / 2**schema)
            upper = 2.0 ** (index / 2**schema)
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    raise AssertionError("the last bucket holds every value")
