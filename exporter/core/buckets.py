"""A histogram over fixed bucket bounds, for durations the agent measures of itself and of
pods (startup, termination, collector passes)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FixedBuckets:
    """Counts per bucket (not cumulative; the last is +Inf), sum and count. Immutable:
    `observe` returns a new value, so a reader in another thread never sees half an update."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0
    count: int = 0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> FixedBuckets:
        return cls(bounds, (0,) * (len(bounds) + 1))

    def observe(self, value: float) -> FixedBuckets:
        counts = list(self.counts)
        counts[bisect.bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        return FixedBuckets(self.bounds, tuple(counts), self.total + value, self.count + 1)

    def cumulative(self) -> list[tuple[str, float]]:
        """(`le`, cumulative count) pairs ending with +Inf, for a HistogramMetricFamily."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out
