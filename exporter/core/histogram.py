"""Latency histograms at the two resolutions of DESIGN.md §4: a fine log-bucketed histogram
for quantiles inside the agent, and the one exponential layout exported on /metrics.

Pure: no I/O, no clock. docs/latency.md explains the numbers chosen here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

# -- the fine histogram ------------------------------------------------------------------

#: Every quantile of `FineHistogram` is within this relative error of the exact quantile
#: (DESIGN.md asks for 5%; 1% leaves room for the error of coarse input and costs ~1,100
#: buckets at most over the whole range).
RELATIVE_ACCURACY = 0.01
#: Values below this are counted in the zero bucket and reported as 0 (absolute error < 1 µs).
MIN_TRACKED = 1e-6
#: Values above this (one hour) are clamped into the top bucket.
MAX_TRACKED = 3600.0

_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_INV_LOG_GAMMA = 1.0 / _LOG_GAMMA
_MIN_INDEX = math.ceil(math.log(MIN_TRACKED) * _INV_LOG_GAMMA)
_MAX_INDEX = math.ceil(math.log(MAX_TRACKED) * _INV_LOG_GAMMA)
#: Bucket `i` holds the values in (g^(i-1), g^i]; this is its representative value, whose
#: relative distance to every value of the bucket is at most RELATIVE_ACCURACY.
_REPRESENTATIVE_FACTOR = 2.0 / (_GAMMA + 1.0)


def _index(seconds: float) -> int:
    return math.ceil(math.log(min(seconds, MAX_TRACKED)) * _INV_LOG_GAMMA)


def _upper_edge(index: int) -> float:
    return math.exp(index * _LOG_GAMMA)


def _positions_at_or_below(x: float, lower: float, width: float, count: int) -> int:
    """How many of the `count` evenly placed positions of `record_range` are ≤ x.

    Position j (0-based) is lower + (j + ½)·width/count: the midpoints of `count` equal
    slices of (lower, lower + width]. Shared by the fine and the exposition histograms so
    both place the same mass the same way.
    """
    if x >= lower + width:
        return count
    n = math.floor((x - lower) / width * count + 0.5)
    return min(count, max(0, n))


def _check_range(lower: float, upper: float, count: int) -> None:
    if math.isnan(lower) or math.isnan(upper):
        raise ValueError("a range bound is NaN")
    if lower > upper:
        raise ValueError(f"range lower bound {lower} is above its upper bound {upper}")
    if count < 0:
        raise ValueError(f"negative count {count}")


Increments = tuple[tuple[int, int], ...]  # (bucket index, count) pairs


@lru_cache(maxsize=4096)
def _fine_placement(lower: float, upper: float, count: int) -> tuple[int, Increments]:
    """Where `record_range` puts `count` values evenly placed over (lower, upper], with
    0 <= lower < upper < inf: (zero-bucket count, fine bucket increments). Cached: clients
    send the same bucket bounds, and mostly small counts, over and over."""
    width = upper - lower
    first = lower + 0.5 * width / count
    last = upper - 0.5 * width / count
    lo_index = _index(first) if first >= MIN_TRACKED else _MIN_INDEX
    hi_index = _index(last) if last >= MIN_TRACKED else _MIN_INDEX
    out: dict[int, int] = {}
    zero = 0
    if count <= hi_index - lo_index + 1:  # fewer values than buckets: place each value
        step = width / count
        for j in range(count):
            x = lower + (j + 0.5) * step
            if x >= MIN_TRACKED:
                i = _index(x)
                out[i] = out.get(i, 0) + 1
            else:
                zero += 1
        return zero, tuple(out.items())
    placed = zero = _positions_at_or_below(math.nextafter(MIN_TRACKED, 0.0), lower, width, count)
    for i in range(lo_index, hi_index + 1):
        edge = _upper_edge(i) if i < _MAX_INDEX else math.inf
        upto = _positions_at_or_below(edge, lower, width, count)
        if upto > placed:
            out[i] = upto - placed
            placed = upto
    if placed < count:  # rounding at the top edge: the rest belongs to the last bucket
        out[hi_index] = out.get(hi_index, 0) + count - placed
    return zero, tuple(out.items())


class FineHistogram:
    """A log-bucketed latency histogram (DDSketch's mapping with fixed parameters).

    `record` is one log and one dict update. Quantiles are within `RELATIVE_ACCURACY` of the
    exact nearest-rank quantile for values in [MIN_TRACKED, MAX_TRACKED]. Histograms merge by
    adding counts and subtract (a newer snapshot minus an older one of the same stream gives
    the window between them), which is what a rolling view needs. Memory is bounded by the
    index range: at most ~1,100 buckets whatever is recorded.
    """

    __slots__ = ("_buckets", "count", "zero_count")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0

    def record(self, seconds: float, count: int = 1) -> None:
        if seconds >= MIN_TRACKED:
            i = math.ceil(math.log(min(seconds, MAX_TRACKED)) * _INV_LOG_GAMMA)
            buckets = self._buckets
            buckets[i] = buckets.get(i, 0) + count
        elif math.isnan(seconds):  # a broken clock or input, never a latency
            raise ValueError("cannot record NaN")
        else:
            self.zero_count += count
        self.count += count

    def record_range(self, lower: float, upper: float, count: int) -> None:
        """Record `count` values known only to lie in (lower, upper], e.g. one bucket of a
        client's OTLP histogram.

        The rule: the values are placed evenly over the range, at the midpoints of `count`
        equal slices (a uniform density, as PromQL's `histogram_quantile` assumes inside a
        bucket). A range with lower < 0 starts at 0; a range with upper = +Inf puts all its
        values at `lower`, as `histogram_quantile` does. Cost: O(min(count, fine buckets
        covered)) whatever the count, and a cache lookup for a range seen before.

        Error bound: a quantile whose rank falls in the range is reported within the range
        (±RELATIVE_ACCURACY), so it is off by at most upper/lower - 1 from the true value;
        it is exact (±RELATIVE_ACCURACY) when the values really are uniform in the range.
        """
        _check_range(lower, upper, count)
        if count == 0:
            return
        lower = max(lower, 0.0)
        upper = max(upper, 0.0)
        if math.isinf(upper) or upper == lower:
            self.record(lower, count)
            return
        zero, increments = _fine_placement(lower, upper, count)
        buckets = self._buckets
        for i, n in increments:
            buckets[i] = buckets.get(i, 0) + n
        self.zero_count += zero
        self.count += count

    def merge(self, other: FineHistogram) -> None:
        """Add `other`'s counts to this histogram (e.g. the same Service from two sources)."""
        buckets = self._buckets
        for i, n in other._buckets.items():
            buckets[i] = buckets.get(i, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count

    def subtract(self, earlier: FineHistogram) -> FineHistogram:
        """This histogram minus an earlier snapshot of it: the values recorded in between."""
        out = FineHistogram()
        out.zero_count = self.zero_count - earlier.zero_count
        out.count = self.count - earlier.count
        consistent = out.zero_count >= 0 and out.count >= 0
        for i, n in earlier._buckets.items():
            consistent = consistent and self._buckets.get(i, 0) >= n
        if not consistent:
            raise ValueError("not an earlier snapshot of this histogram")
        for i, n in self._buckets.items():
            if left := n - earlier._buckets.get(i, 0):
                out._buckets[i] = left
        return out

    def copy(self) -> FineHistogram:
        out = FineHistogram()
        out._buckets = dict(self._buckets)
        out.zero_count = self.zero_count
        out.count = self.count
        return out

    def quantile(self, q: float) -> float | None:
        """The nearest-rank q-quantile (the value of rank ⌈q·n⌉), or None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets."""
        if not self.count:
            return [None] * len(qs)
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile {q} is not in [0, 1]")
        ranks = sorted((max(1, math.ceil(q * self.count)), n) for n, q in enumerate(qs))
        out: list[float | None] = [None] * len(qs)
        seen = self.zero_count
        pending = iter(ranks)
        rank, slot = next(pending)
        try:
            while rank <= seen:
                out[slot] = 0.0
                rank, slot = next(pending)
            for i in sorted(self._buckets):
                seen += self._buckets[i]
                while rank <= seen:
                    out[slot] = _upper_edge(i) * _REPRESENTATIVE_FACTOR
                    rank, slot = next(pending)
        except StopIteration:
            pass
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FineHistogram):
            return NotImplemented
        return (self._buckets, self.zero_count, self.count) == (
            other._buckets,
            other.zero_count,
            other.count,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"FineHistogram(count={self.count}, buckets={len(self._buckets)})"


# -- the /metrics layout -----------------------------------------------------------------

#: Consecutive boundaries grow by 2^(1/5) ≈ 1.1487. `histogram_quantile` interpolates
#: linearly inside a bucket, so its estimate and the true quantile lie in the same bucket and
#: differ by at most the growth factor: ≤ 14.9% for any distribution, any number of agents
#: summed (they all use the same boundaries), any quantile.
GROWTH_STEPS_PER_DOUBLING = 5
GROWTH_FACTOR = 2.0 ** (1.0 / GROWTH_STEPS_PER_DOUBLING)
LAYOUT_MIN = 1e-4  # 100 µs: a TCP connect to a pod on the same node
LAYOUT_MAX = 60.0  # longer is an outage, +Inf says enough
#: Boundaries are rounded to 4 significant digits, so the `le` strings are short and
#: identical on every platform; that moves a ratio by < 0.1%, still under 15%.
SIGNIFICANT_DIGITS = 4


def _base_layout() -> tuple[float, ...]:
    steps = GROWTH_STEPS_PER_DOUBLING
    lo = math.floor(steps * math.log2(LAYOUT_MIN))
    hi = math.ceil(steps * math.log2(LAYOUT_MAX))
    return tuple(float(f"{2.0 ** (k / steps):.{SIGNIFICANT_DIGITS}g}") for k in range(lo, hi + 1))


#: The exposition boundaries shared by every latency histogram, without an SLO.
BASE_LAYOUT: tuple[float, ...] = _base_layout()


@lru_cache(maxsize=256)
def layout_for(slo: float | None) -> tuple[float, ...]:
    """The boundaries of a Service's histograms: `BASE_LAYOUT` plus its SLO threshold as an
    exact boundary (so the share of requests within the SLO is read without interpolation).

    All agents compute the same layout for the same Service, so its buckets sum across
    agents; different Services may differ by their one SLO boundary.
    """
    if slo is None or slo in BASE_LAYOUT:
        return BASE_LAYOUT
    if not (slo > 0 and math.isfinite(slo)):
        raise ValueError(f"SLO threshold {slo} must be a positive number of seconds")
    return tuple(sorted((*BASE_LAYOUT, float(slo))))


def le_string(bound: float) -> str:
    """The `le` label value of a boundary, the way the rest of the agent writes it."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


_SPREAD_CACHE_SIZE = 4096


@lru_cache(maxsize=256)
def _spread_cache(bounds: tuple[float, ...]) -> dict[tuple[float, float, int], Increments]:
    """One placement cache per layout, shared by its series."""
    del bounds  # the key of the lru_cache
    return {}


def _exposition_placement(
    bounds: tuple[float, ...], lower: float, upper: float, count: int
) -> Increments:
    """The exposition buckets of `count` values evenly placed over (lower, upper]."""
    width = upper - lower
    out: list[tuple[int, int]] = []
    placed = 0
    for b in range(bisect.bisect_left(bounds, lower), len(bounds)):
        upto = _positions_at_or_below(bounds[b], lower, width, count)
        if upto > placed:
            out.append((b, upto - placed))
            placed = upto
        if bounds[b] >= upper:
            break
    if placed < count:
        out.append((len(bounds), count - placed))
    return tuple(out)


class LatencySeries:
    """One latency series (one label set): the exposition buckets, sum and count that
    /metrics shows, and the fine histogram that the agent's own quantiles come from.

    Exposition counts are exact: a value is counted in every bucket whose `le` is ≥ it, at
    record time, never derived from the fine histogram.
    """

    __slots__ = ("_spreads", "bounds", "bucket_counts", "count", "fine", "sum")

    def __init__(self, bounds: tuple[float, ...] = BASE_LAYOUT) -> None:
        self.bounds = bounds
        self._spreads = _spread_cache(bounds)
        self.bucket_counts = [0] * (len(bounds) + 1)  # per bucket; the last one is +Inf
        self.fine = FineHistogram()
        self.sum = 0.0
        self.count = 0

    def record(self, seconds: float, count: int = 1) -> None:
        self.fine.record(seconds, count)
        self.bucket_counts[bisect.bisect_left(self.bounds, seconds)] += count
        self.sum += seconds * count
        self.count += count

    def record_range(self, lower: float, upper: float, count: int) -> None:
        """`count` values in (lower, upper], placed by the rule of `FineHistogram.record_range`;
        the sum grows by the placed values (count x the midpoint; count x lower if upper is
        +Inf)."""
        self.record_ranges(((lower, upper, count),))

    def record_ranges(
        self, ranges: Iterable[tuple[float, float, int]], total: float | None = None
    ) -> None:
        """Several ranges at once, e.g. every bucket of one OTLP data point, with the data
        point's `sum` as `total` when the client sent one (else the placed values' sum)."""
        placed_sum = 0.0
        fine = self.fine
        fine_buckets = fine._buckets
        for lower, upper, count in ranges:
            if count == 0:
                continue
            _check_range(lower, upper, count)
            lo = lower if lower > 0.0 else 0.0
            hi = upper if upper > 0.0 else 0.0
            if hi in (math.inf, lo):
                fine.record(lo, count)
                self.bucket_counts[bisect.bisect_left(self.bounds, lo)] += count
                placed_sum += lo * count
            else:
                zero, increments = _fine_placement(lo, hi, count)  # as FineHistogram.record_range
                for i, n in increments:
                    fine_buckets[i] = fine_buckets.get(i, 0) + n
                fine.zero_count += zero
                fine.count += count
                self._spread(lo, hi, count)
                placed_sum += (lo + hi) / 2 * count
            self.count += count
        self.sum += placed_sum if total is None else total

    def _spread(self, lower: float, upper: float, count: int) -> None:
        key = (lower, upper, count)
        increments = self._spreads.get(key)
        if increments is None:
            increments = _exposition_placement(self.bounds, lower, upper, count)
            if len(self._spreads) < _SPREAD_CACHE_SIZE:
                self._spreads[key] = increments
        buckets = self.bucket_counts
        for b, n in increments:
            buckets[b] += n

    def quantile(self, q: float) -> float | None:
        return self.fine.quantile(q)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        """(`le`, cumulative count) pairs, ending with +Inf, for a HistogramMetricFamily."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds, self.bucket_counts, strict=False):
            running += n
            out.append((le_string(bound), running))
        out.append(("+Inf", running + self.bucket_counts[-1]))
        return out
