"""Order-statistic bounds: what a quantile of n samples can and cannot say."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from exporter.core.histogram import RELATIVE_ACCURACY, FineHistogram
from exporter.core.quantiles import (
    confidently_above,
    rank_bounds,
    samples_needed,
    slow_allowance,
    tail_of,
)


def test_samples_a_quantile_needs_to_be_bounded() -> None:
    assert samples_needed(0.5, 0.95) == 5
    assert samples_needed(0.99, 0.95) == 299
    assert samples_needed(0.999, 0.95) == 2995
    assert rank_bounds(298, 0.99, 0.95)[1] is None
    assert rank_bounds(299, 0.99, 0.95)[1] == 299  # the maximum bounds it from then on


@pytest.mark.parametrize(("n", "allowed"), [(5, 0), (6, 1), (30, 1), (80, 2), (300, 6)])
def test_how_many_slow_samples_a_p99_within_the_threshold_allows(n: int, allowed: int) -> None:
    """One slow probe among 30 is not a p99 above the threshold; two are."""
    assert slow_allowance(n, 0.99, 0.95) == allowed
    assert not confidently_above(n, allowed, 0.99, 0.95)
    assert confidently_above(n, allowed + 1, 0.99, 0.95)


@pytest.mark.parametrize("n", [40, 300, 6_000])
@pytest.mark.parametrize("q", [0.5, 0.99])
def test_bounds_cover_the_true_quantile_as_often_as_they_claim(n: int, q: float) -> None:
    """Exponential samples (true q-quantile known): each one-sided bound misses it in at
    most ~5% of 200 seeded trials (binomial noise allowed for), whatever n."""
    rng = random.Random(n * 7 + int(q * 100))
    true = -0.01 * math.log(1 - q)
    trials, low_miss, high_miss = 200, 0, 0
    for _ in range(trials):
        h = FineHistogram()
        for _ in range(n):
            h.record(rng.expovariate(100.0))
        tail = tail_of(h)
        assert tail is not None
        estimate = {0.5: tail.p50, 0.99: tail.p99}[q]
        margin = 1 + RELATIVE_ACCURACY
        if estimate.lower is not None and estimate.lower > true * margin:
            low_miss += 1
        if estimate.upper is not None and estimate.upper < true / margin:
            high_miss += 1
    assert low_miss <= 0.05 * trials + 3 * (0.05 * 0.95 * trials) ** 0.5
    assert high_miss <= 0.05 * trials + 3 * (0.05 * 0.95 * trials) ** 0.5


def test_an_unsupported_quantile_says_what_it_is() -> None:
    h = FineHistogram()
    for i in range(1, 61):
        h.record(i / 1000)
    tail = tail_of(h)
    assert tail is not None and tail.samples == 60
    assert tail.p50.supported and not tail.p99.supported and not tail.p999.supported
    assert tail.p99.value == pytest.approx(0.060, rel=RELATIVE_ACCURACY)
    assert tail.p99.lower == pytest.approx(0.059, rel=RELATIVE_ACCURACY)  # the 2nd largest
    assert tail.notes() == [
        "p99 from 60 samples is the maximum (299 are needed to bound it)",
        "p99.9 from 60 samples is the maximum (2995 are needed to bound it)",
    ]
    doc = tail.as_json()
    assert doc["bounds"]["p99"][1] is None and doc["supported"]["p50"] is True
    h.record(0.5, 140)  # 200 samples: the p99 is now the 3rd largest, still unbounded
    again = tail_of(h)
    assert again is not None and again.p99.note(0.95) == (
        "p99 from 200 samples is the 3rd largest (299 are needed to bound it)"
    )


def test_large_counts_are_exact_and_continuous() -> None:
    """Client histograms hold millions of values: the bounds stay exact (no step where an
    approximation would take over: one more sample never makes a decision more confident)
    and cost a few thousand terms at most."""
    allowed = [slow_allowance(n, 0.99, 0.99) for n in range(4_900, 5_200)]
    assert all(b - a in (0, 1) for a, b in itertools.pairwise(allowed))
    lower, upper = rank_bounds(10_000_000, 0.99, 0.95)
    assert lower is not None and upper is not None
    assert lower < 9_900_000 < upper and upper - lower < 1_200
