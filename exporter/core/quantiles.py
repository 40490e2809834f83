"""Quantiles honest about their sample count: each estimate carries n and distribution-free
confidence bounds from order statistics (docs/correlation.md, *Statistics*).

Of n samples of any continuous distribution, the number F above its true q-quantile is
Binomial(n, 1 - q). So the k-th smallest sample X(k) is at or below the quantile with
probability P(F <= n - k), and at or above it with probability P(F >= n - k + 1). The lower
bound at confidence c is the largest X(k) with P(F <= n - k) >= c; the upper bound the
smallest X(k) with P(F >= n - k + 1) >= c (each bound one-sided at c). When no sample is high
enough for the upper bound (q^n > 1 - c: at c = 0.95, fewer than 299 samples for a p99, 2,995
for a p99.9, 5 for a p50) the quantile is *unsupported*: the point estimate is then one of
the largest samples ("p99.9 from 60 samples is the maximum"), and no decision is taken on it.

Decisions compare a quantile with a threshold using counts only: with k of n samples above
a threshold, the q-quantile is confidently above it when k > the c-quantile of
Binomial(n, 1 - q) (the lower bound is above the threshold), and that is the only way a
window's few samples can say "the p99 rose". Pure and exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from exporter.core.histogram import FineHistogram

DEFAULT_CONFIDENCE = 0.95
#: The quantiles every latency summary reports: p50, p99, p99.9.
TAIL_QUANTILES: tuple[float, float, float] = (0.5, 0.99, 0.999)


@lru_cache(maxsize=4096)
def _smallest_count(n: int, p: float, level: float, strict: bool) -> int:
    """The smallest m with P(Binomial(n, p) <= m) >= level (> level when `strict`), or n + 1
    when there is none. Exact: the probabilities are summed from 12 standard deviations
    below the mean (what lies below that is under 1e-30), so large n cost ~24 sd terms."""
    if n <= 0:
        return 0
    sd = math.sqrt(n * p * (1.0 - p))
    start = max(0, math.floor(n * p - 12 * sd - 1))
    log_pmf = (
        math.lgamma(n + 1)
        - math.lgamma(start + 1)
        - math.lgamma(n - start + 1)
        + start * math.log(p)
        + (n - start) * math.log1p(-p)
    )
    ratio = p / (1.0 - p)
    cdf = 0.0
    for m in range(start, n + 1):
        cdf += math.exp(log_pmf)
        if (cdf > level) if strict else (cdf >= level - 1e-12):
            return m
        log_pmf += math.log((n - m) / (m + 1) * ratio)
    return n + 1


def slow_allowance(n: int, q: float, confidence: float) -> int:
    """How many of n samples may lie above a threshold while the q-quantile is still not
    confidently above it: more than this, and the quantile's lower bound is above it."""
    return _smallest_count(n, round(1.0 - q, 12), confidence, False)


def confidently_above(n: int, above: int, q: float, confidence: float) -> bool:
    """With `above` of `n` samples over a threshold, is the q-quantile over it (its lower
    bound at `confidence` is)?"""
    return n > 0 and above > slow_allowance(n, q, confidence)


def rank_bounds(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    """1-based ranks of the lower and upper order-statistic bounds of the q-quantile of n
    samples; None where no sample is low (high) enough to be that bound."""
    p = round(1.0 - q, 12)
    lower = n - _smallest_count(n, p, confidence, False)
    # Upper: the largest m with P(F >= m) >= c is the smallest m with P(F <= m) > 1 - c.
    m = _smallest_count(n, p, 1.0 - confidence, True)
    upper = n - m + 1 if m >= 1 else None
    return (lower if lower >= 1 else None), upper


def samples_needed(q: float, confidence: float) -> int:
    """The fewest samples whose largest value bounds the q-quantile from above."""
    return math.ceil(math.log(1.0 - confidence) / math.log(q) - 1e-9)


def quantile_name(q: float) -> str:
    return {0.5: "p50", 0.99: "p99", 0.999: "p99.9"}.get(q, f"p{q * 100:g}")


def _ordinal(k: int) -> str:
    if k == 1:
        return "maximum"
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix} largest"


@dataclass(frozen=True, slots=True)
class Estimate:
    """The q-quantile of `samples` values (nearest rank) with its confidence bounds."""

    q: float
    value: float
    samples: int
    lower: float | None
    upper: float | None  # None: the samples cannot bound it from above

    @property
    def supported(self) -> bool:
        return self.upper is not None

    def note(self, confidence: float) -> str | None:
        """What an unsupported estimate really is, in words; None when it is supported."""
        if self.supported:
            return None
        from_top = self.samples - max(1, math.ceil(self.q * self.samples)) + 1
        return (
            f"{quantile_name(self.q)} from {self.samples} samples is the {_ordinal(from_top)} "
            f"({samples_needed(self.q, confidence)} are needed to bound it)"
        )


@dataclass(frozen=True, slots=True)
class Tail:
    """p50, p99 and p99.9 of one set of samples, each with its bounds."""

    p50: Estimate
    p99: Estimate
    p999: Estimate
    confidence: float

    @property
    def samples(self) -> int:
        return self.p50.samples

    @property
    def estimates(self) -> tuple[Estimate, Estimate, Estimate]:
        return self.p50, self.p99, self.p999

    def notes(self) -> list[str]:
        return [n for e in self.estimates if (n := e.note(self.confidence)) is not None]

    def as_json(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 6)

        names = ("p50", "p99", "p999")
        return {
            **{name: r(e.value) for name, e in zip(names, self.estimates, strict=True)},
            "samples": self.samples,
            "confidence": self.confidence,
            "bounds": {
                name: [r(e.lower), r(e.upper)]
                for name, e in zip(names, self.estimates, strict=True)
            },
            "supported": {name: e.supported for name, e in zip(names, self.estimates, strict=True)},
            "notes": self.notes(),
        }


def estimates(
    histogram: FineHistogram, qs: Sequence[float], confidence: float
) -> list[Estimate] | None:
    """Estimates of several quantiles of a histogram in one pass; None when it is empty."""
    n = histogram.count
    if n == 0:
        return None
    plan: list[tuple[int, int | None, int | None]] = []
    ranks: list[int] = []
    for q in qs:
        lower, upper = rank_bounds(n, q, confidence)
        plan.append((max(1, math.ceil(q * n)), lower, upper))
        ranks += [r for r in plan[-1] if r is not None]
    values = dict(zip(ranks, histogram.at_ranks(ranks), strict=True))
    return [
        Estimate(
            q,
            values[point],
            n,
            None if lower is None else values[lower],
            None if upper is None else values[upper],
        )
        for q, (point, lower, upper) in zip(qs, plan, strict=True)
    ]


def tail_of(histogram: FineHistogram, confidence: float = DEFAULT_CONFIDENCE) -> Tail | None:
    """The p50, p99 and p99.9 of a histogram with their bounds, or None when it is empty."""
    found = estimates(histogram, TAIL_QUANTILES, confidence)
    if found is None:
        return None
    p50, p99, p999 = found
    return Tail(p50, p99, p999, confidence)
