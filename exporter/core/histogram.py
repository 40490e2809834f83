"""Latency histograms at two resolutions: the fine log-bucketed histogram on the native
histogram index (the agent's quantiles, and the native histograms of /metrics), and the
small classic layout of the text formats, with each Service's SLO as an exact boundary.

Pure: no I/O, no clock. docs/latency.md explains the numbers chosen here.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Hashable, Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import accumulate
from typing import NamedTuple, Self

# -- the fine histogram ------------------------------------------------------------------

#: The agent's fine histogram and the native histograms on /metrics share one bucket index:
#: Prometheus' native histogram schema 4, where bucket `i` holds (2^((i-1)/16), 2^(i/16)].
#: Nothing is re-bucketed between the two, and an OTLP exponential histogram of scale >= 4
#: merges into it exactly (docs/latency.md, *Native histograms*).
NATIVE_SCHEMA = 4
_PER_DOUBLING = 1 << NATIVE_SCHEMA
_GAMMA = 2.0 ** (1.0 / _PER_DOUBLING)
#: Every quantile of `FineHistogram` is within this relative error of the exact quantile:
#: (g - 1) / (g + 1) = 2.17% for g = 2^(1/16). The design target is 5%, which leaves room
#: for the error of coarse client input.
RELATIVE_ACCURACY = (_GAMMA - 1.0) / (_GAMMA + 1.0)
#: Values at or below this (2^-20 s, 0.95 µs) are counted in the zero bucket and reported
#: as 0; it is the native histograms' zero threshold, an exact bucket edge of every schema.
NATIVE_ZERO_THRESHOLD = 2.0**-20
MIN_TRACKED = NATIVE_ZERO_THRESHOLD
#: Values above this (one hour) are clamped into the top bucket.
MAX_TRACKED = 3600.0

#: frexp's mantissas (in [0.5, 1)) of the bucket edges within one doubling, for an exact index.
_EDGE_MANTISSAS = tuple(2.0 ** (k / _PER_DOUBLING) / 2 for k in range(_PER_DOUBLING))
#: Bucket `i` holds the values in (g^(i-1), g^i]; this is its representative value, whose
#: relative distance to every value of the bucket is at most RELATIVE_ACCURACY.
_REPRESENTATIVE_FACTOR = 2.0 / (_GAMMA + 1.0)


def native_index(seconds: float) -> int:
    """The schema-4 bucket of a value above the zero threshold, exact at every bucket edge
    (as Prometheus' client_golang computes it: frexp, then the mantissa's place among the
    edges of one doubling)."""
    mantissa, exponent = math.frexp(min(seconds, MAX_TRACKED))
    return bisect.bisect_left(_EDGE_MANTISSAS, mantissa) + (exponent - 1) * _PER_DOUBLING


_MIN_INDEX = native_index(math.nextafter(NATIVE_ZERO_THRESHOLD, math.inf))
_MAX_INDEX = native_index(MAX_TRACKED)


def _upper_edge(index: int) -> float:
    return math.exp2(index / _PER_DOUBLING)


def _bucket_value(index: int) -> float:
    """The value bucket `index` reads back as: within RELATIVE_ACCURACY of all it holds."""
    return float(_upper_edge(index) * _REPRESENTATIVE_FACTOR)


def representative(seconds: float) -> float:
    """The value a recorded `seconds` reads back as (its bucket's representative)."""
    return _bucket_value(native_index(seconds)) if seconds > MIN_TRACKED else 0.0


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


def _fine_placement(
    lower: float, upper: float, count: int
) -> tuple[int, Iterable[tuple[int, int]]]:
    """Where `record_range` puts `count` values evenly placed over (lower, upper], with
    0 <= lower < upper < inf: (zero-bucket count, fine bucket increments, ascending).
    Cached: clients send the same bucket bounds, and mostly small counts, over and over."""
    if count >= _PACKED_COUNT_LIMIT:
        return _placement(lower, upper, count)
    zero, packed = _packed_placement(lower, upper, count)
    n = len(packed) // _PACKED_ITEM
    values = _packed_layout(n).unpack(packed)
    # (index, count): the indexes follow the counts, and zip stops after the last count
    return zero, zip(values[n:], values, strict=False)


@lru_cache(maxsize=4096)
def _packed_placement(lower: float, upper: float, count: int) -> tuple[int, bytes]:
    """`_placement` of a count under 2^32, its increments packed as a packed histogram's
    buckets are: the cache holds thousands of them, at 6 bytes a bucket instead of ~90 as
    pairs of Python ints."""
    zero, increments = _placement(lower, upper, count)
    counts = [n for _, n in increments]
    indexes = [i for i, _ in increments]
    return zero, _packed_layout(len(increments)).pack(*counts, *indexes)


def _placement(lower: float, upper: float, count: int) -> tuple[int, Increments]:
    """`_fine_placement` computed."""
    width = upper - lower
    first = lower + 0.5 * width / count
    last = upper - 0.5 * width / count
    lo_index = native_index(first) if first > MIN_TRACKED else _MIN_INDEX
    hi_index = native_index(last) if last > MIN_TRACKED else _MIN_INDEX
    out: dict[int, int] = {}
    zero = 0
    if count <= hi_index - lo_index + 1:  # fewer values than buckets: place each value
        step = width / count
        for j in range(count):
            x = lower + (j + 0.5) * step
            if x > MIN_TRACKED:
                i = native_index(x)
                out[i] = out.get(i, 0) + 1
            else:
                zero += 1
        return zero, tuple(out.items())
    placed = zero = _positions_at_or_below(MIN_TRACKED, lower, width, count)
    for i in range(lo_index, hi_index + 1):
        edge = _upper_edge(i) if i < _MAX_INDEX else math.inf
        upto = _positions_at_or_below(edge, lower, width, count)
        if upto > placed:
            out[i] = upto - placed
            placed = upto
    if placed < count:  # rounding at the top edge: the rest belongs to the last bucket
        out[hi_index] = out.get(hi_index, 0) + count - placed
    return zero, tuple(out.items())


#: A packed histogram's counts are 32-bit: a histogram with a larger count stays a dict.
_PACKED_COUNT_LIMIT = 1 << 32
_PACKED_ITEM = 6  # bytes per packed bucket: a uint32 count and an int16 index


@lru_cache(maxsize=1024)
def _packed_layout(buckets: int) -> struct.Struct:
    """The layout of `buckets` packed buckets: every count (uint32), then every index
    (int16: indexes run from -319 to 190), native byte order and no padding."""
    return struct.Struct(f"={buckets}I{buckets}h")


class FineHistogram:
    """A log-bucketed latency histogram on the native histogram index (schema 4).

    `record` is one frexp, a bisect and one dict update. Quantiles are within
    `RELATIVE_ACCURACY` of the exact nearest-rank quantile for values in (MIN_TRACKED,
    MAX_TRACKED]. Histograms merge by adding counts and subtract (a newer snapshot minus an
    older one of the same stream gives the window between them), which is what a rolling
    view needs. Memory is bounded by the index range: at most ~510 buckets whatever is
    recorded.

    A histogram that is done being written (a closed slot of a latency timeline, of which
    the agent keeps thousands) is `pack`ed: its buckets move from a dict of Python ints
    (~100 bytes a bucket) to one bytes object, ascending (6 bytes a bucket). It reads the
    same, exactly; a write unpacks it first.
    """

    __slots__ = ("_buckets", "_packed", "count", "zero_count")

    def __init__(self) -> None:
        # The buckets, index -> count; None while packed (then `_packed` holds them).
        self._buckets: dict[int, int] | None = {}
        self._packed = b""
        self.zero_count = 0
        self.count = 0

    # -- the two layouts --

    def pack(self) -> None:
        """Keep the buckets in the packed layout from now on (a no-op when packed already,
        or when a count does not fit in 32 bits)."""
        buckets = self._buckets
        if buckets is None:
            return
        indexes = sorted(buckets)
        counts = list(map(buckets.__getitem__, indexes))
        if counts and not 0 <= min(counts) <= max(counts) < _PACKED_COUNT_LIMIT:
            return
        self._packed = _packed_layout(len(indexes)).pack(*counts, *indexes)
        self._buckets = None

    @property
    def packed(self) -> bool:
        return self._buckets is None

    def _columns(self) -> tuple[Sequence[int], Sequence[int]]:
        """A packed histogram's indexes (ascending) and counts."""
        packed = self._packed
        n = len(packed) // _PACKED_ITEM
        values = _packed_layout(n).unpack(packed)
        return values[n:], values[:n]

    def _dict(self) -> dict[int, int]:
        """The buckets as a dict, to write to: a packed histogram is unpacked for good (its
        packed bytes stay until the next `pack`: a reader that saw it packed reads them)."""
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = dict(zip(*self._columns(), strict=True))
        return buckets

    def _items(self) -> Iterable[tuple[int, int]]:
        """(index, count) of every bucket: ascending when packed."""
        buckets = self._buckets
        if buckets is None:
            return zip(*self._columns(), strict=True)
        return buckets.items()

    def _sorted_items(self) -> Iterable[tuple[int, int]]:
        """(index, count) of every bucket, ascending."""
        buckets = self._buckets
        if buckets is None:
            return zip(*self._columns(), strict=True)
        return ((i, buckets[i]) for i in sorted(buckets))

    # -- writes --

    def record(self, seconds: float, count: int = 1) -> None:
        if seconds > MIN_TRACKED:
            i = native_index(seconds)
            buckets = self._buckets
            if buckets is None:
                buckets = self._dict()
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
        if buckets is None:
            buckets = self._dict()
        for i, n in increments:
            buckets[i] = buckets.get(i, 0) + n
        self.zero_count += zero
        self.count += count

    def merge(self, other: FineHistogram) -> None:
        """Add `other`'s counts to this histogram (e.g. the same Service from two sources)."""
        buckets = self._buckets
        if buckets is None:
            buckets = self._dict()
        get = buckets.get
        theirs = other._buckets
        if theirs is None:  # as `_columns`, inlined: merging closed slots is a window's read
            packed = other._packed
            k = len(packed) // _PACKED_ITEM
            values = _packed_layout(k).unpack(packed)
            for i, n in zip(values[k:], values, strict=False):  # stops after the counts
                buckets[i] = get(i, 0) + n
        else:
            for i, n in theirs.items():
                buckets[i] = get(i, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count

    # -- reads --

    def subtract(self, earlier: FineHistogram) -> FineHistogram:
        """This histogram minus an earlier snapshot of it: the values recorded in between."""
        out = FineHistogram()
        out.zero_count = self.zero_count - earlier.zero_count
        out.count = self.count - earlier.count
        mine = self._buckets if self._buckets is not None else dict(self._items())
        consistent = out.zero_count >= 0 and out.count >= 0
        for i, n in earlier._items():
            consistent = consistent and mine.get(i, 0) >= n
        if not consistent:
            raise ValueError("not an earlier snapshot of this histogram")
        theirs = earlier._buckets if earlier._buckets is not None else dict(earlier._items())
        out_buckets = out._dict()
        for i, n in mine.items():
            if left := n - theirs.get(i, 0):
                out_buckets[i] = left
        return out

    def copy(self) -> FineHistogram:
        """An independent copy (a packed one shares the immutable packed buckets)."""
        out = FineHistogram()
        if self._buckets is None:
            out._buckets = None
            out._packed = self._packed
        else:
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
        return list(self.at_ranks([max(1, math.ceil(q * self.count)) for q in qs]))

    def at_ranks(self, ranks: Sequence[int]) -> list[float]:
        """The values of 1-based ranks (1 = the smallest, `count` = the largest), in one pass
        over the buckets: what order-statistic bounds are read from."""
        for rank in ranks:
            if not 1 <= rank <= self.count:
                raise ValueError(f"rank {rank} is not in [1, {self.count}]")
        out = [0.0] * len(ranks)
        pending = sorted((rank, slot) for slot, rank in enumerate(ranks))
        if not pending:
            return out
        at = 0
        seen = self.zero_count
        while at < len(pending) and pending[at][0] <= seen:
            at += 1  # 0.0 already
        for i, n in self._sorted_items():
            if at == len(pending):
                break
            seen += n
            value = _bucket_value(i)
            while at < len(pending) and pending[at][0] <= seen:
                out[pending[at][1]] = value
                at += 1
        return out

    def largest(self) -> float | None:
        """The largest value (its bucket's representative), or None when empty."""
        buckets = self._buckets
        if buckets is None:
            indexes, _ = self._columns()
            if indexes:
                return _bucket_value(indexes[-1])
        elif buckets:
            return _bucket_value(max(buckets))
        return 0.0 if self.count else None

    def count_above(self, threshold: float) -> int:
        """How many values are above `threshold` (values are known to their bucket: a bucket
        counts as above when its representative value is)."""
        above = 0
        if self._buckets is None:
            indexes, counts = self._columns()
            for k in range(len(indexes) - 1, -1, -1):  # ascending: the ones above are last
                if _bucket_value(indexes[k]) <= threshold:
                    break
                above += counts[k]
        else:
            for i, n in self._buckets.items():
                if _bucket_value(i) > threshold:
                    above += n
        if threshold < 0.0:
            above += self.zero_count
        return above

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FineHistogram):
            return NotImplemented
        return (self.zero_count, self.count) == (other.zero_count, other.count) and (
            self._buckets == other._buckets
            if self._buckets is not None and other._buckets is not None
            else dict(self._items()) == dict(other._items())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        held = len(self._packed) // _PACKED_ITEM if self._buckets is None else len(self._buckets)
        return f"FineHistogram(count={self.count}, buckets={held}, packed={self.packed})"


# -- the classic layout --------------------------------------------------------------------

#: The classic bucket bounds of every latency histogram in the text formats, for scrapers
#: without native histograms: 27 bounds, 1-1.5-2-3-5-7 per decade from 0.5 ms to 10 s.
#: Linear interpolation inside a bucket is off by at most its ratio (1.67 at most); the
#: native histograms and the SLO counters are the precise answers (docs/latency.md).
#: `--classic-buckets` replaces it; every agent of a cluster must use the same one.
DEFAULT_CLASSIC_LAYOUT: tuple[float, ...] = (
    *(0.0005, 0.0007),
    *(0.001, 0.0015, 0.002, 0.003, 0.005, 0.007),
    *(0.01, 0.015, 0.02, 0.03, 0.05, 0.07),
    *(0.1, 0.15, 0.2, 0.3, 0.5, 0.7),
    *(1.0, 1.5, 2.0, 3.0, 5.0, 7.0),
    10.0,
)


def check_layout(bounds: tuple[float, ...]) -> tuple[float, ...]:
    """`bounds` as a classic layout: finite, positive, strictly increasing; raises
    ValueError with the reason."""
    if not bounds:
        raise ValueError("a classic layout needs at least one bound")
    previous = 0.0
    for bound in bounds:
        if not (math.isfinite(bound) and bound > previous):
            raise ValueError("classic bucket bounds must be positive, finite and increasing")
        previous = bound
    return tuple(float(b) for b in bounds)


@lru_cache(maxsize=256)
def layout_for(
    slo: float | None, base: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT
) -> tuple[float, ...]:
    """The classic bounds of a Service's histograms: `base` plus its SLO threshold as an
    exact boundary (so the share of requests within the SLO is read without interpolation).

    All agents compute the same layout for the same Service, so its buckets sum across
    agents; different Services may differ by their one SLO boundary.
    """
    if slo is None or slo in base:
        return base
    if not (slo > 0 and math.isfinite(slo)):
        raise ValueError(f"SLO threshold {slo} must be a positive number of seconds")
    return tuple(sorted((*base, float(slo))))


def le_string(bound: float) -> str:
    """The `le` label value of a boundary, the way the rest of the agent writes it."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


@lru_cache(maxsize=64)
def le_values(bounds: tuple[float, ...]) -> tuple[str, ...]:
    """The `le` values of a classic layout's buckets, ending with +Inf."""
    return (*(le_string(b) for b in bounds), "+Inf")


def cumulative_buckets(
    bounds: tuple[float, ...], bucket_counts: Iterable[int]
) -> list[tuple[str, int]]:
    """(`le`, cumulative count) pairs of classic buckets (`bucket_counts` per bucket, the
    last one +Inf), as a HistogramMetricFamily takes them."""
    return list(zip(le_values(bounds), accumulate(bucket_counts), strict=True))


_SPREAD_CACHE_SIZE = 4096


@lru_cache(maxsize=256)
def _spread_cache(bounds: tuple[float, ...]) -> dict[tuple[float, float, int], Increments]:
    """One placement cache per layout, shared by its series."""
    del bounds  # the key of the lru_cache
    return {}


@lru_cache(maxsize=256)
def _single_cache(bounds: tuple[float, ...]) -> dict[tuple[float, float], int]:
    """One cache per layout of `_single_bucket`, shared by its series."""
    del bounds  # the key of the lru_cache
    return {}


def _single_bucket(bounds: tuple[float, ...], lower: float, upper: float) -> int:
    """The one exposition bucket that every value of (lower, upper] falls in, or -1 when
    they span several (then `_exposition_placement` spreads them)."""
    b = bisect.bisect_right(bounds, lower)
    return b if b == len(bounds) or upper <= bounds[b] else -1


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
    """One latency series (one label set): the classic buckets, sum and count of the text
    formats, and the fine histogram that is both the native histogram of the protobuf
    format and the source of the agent's own quantiles.

    Classic counts are exact: a value is counted in every bucket whose `le` is ≥ it, at
    record time, never derived from the fine histogram. With an `slo`, which is then one of
    the bounds, `slow_count` is the number of values above it: exact for single values, by
    the placement rule of `record_range` for ranges.
    """

    __slots__ = ("_fine", "_native_indexes", "_pending", "_singles", "_slo_bucket", "_spreads",
                 "bounds", "bucket_counts", "count", "slo", "sum")  # fmt: skip

    def __init__(
        self, bounds: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT, slo: float | None = None
    ) -> None:
        self.bounds = bounds
        self.slo = slo
        self._slo_bucket = -1
        if slo is not None:
            self._slo_bucket = bisect.bisect_left(bounds, slo)
            if self._slo_bucket == len(bounds) or bounds[self._slo_bucket] != slo:
                raise ValueError(f"SLO {slo} is not a bound of the layout")
        self._spreads = _spread_cache(bounds)
        self._singles = _single_cache(bounds)
        self.bucket_counts = [0] * (len(bounds) + 1)  # per bucket; the last one is +Inf
        self._fine = FineHistogram()
        # Ranges recorded and not yet placed in the fine histogram: (lower, upper) -> count.
        # Clients send the same few ranges over and over; they are placed when the fine
        # histogram is read (a scrape, a quantile), all of a range's values at once.
        self._pending: dict[tuple[float, float], int] = {}
        self.sum = 0.0
        self.count = 0
        self._native_indexes: list[int] = []

    @classmethod
    def of_service(
        cls, slo: float | None, base: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT
    ) -> Self:
        """A series of a Service with this SLO: the classic layout `base` plus the SLO."""
        return cls(layout_for(slo, base), slo)

    @property
    def version(self) -> Hashable:
        """Changes whenever a value is recorded (count and sum move)."""
        return (self.count, self.sum)

    @property
    def slow_count(self) -> int:
        """Values above the SLO (0 without one)."""
        if self._slo_bucket < 0:
            return 0
        return sum(self.bucket_counts[self._slo_bucket + 1 :])

    @property
    def fine(self) -> FineHistogram:
        """The fine histogram, with every range recorded so far placed in it."""
        if self._pending:
            self._place_pending()
        return self._fine

    def _place_pending(self) -> None:
        fine = self._fine
        fine_buckets = fine._dict()
        for (lo, hi), count in self._pending.items():
            zero, increments = _fine_placement(lo, hi, count)  # as FineHistogram.record_range
            for i, n in increments:
                fine_buckets[i] = fine_buckets.get(i, 0) + n
            fine.zero_count += zero
            fine.count += count
        self._pending.clear()

    @property
    def native_zero_count(self) -> int:
        return self.fine.zero_count

    def native_buckets(self) -> tuple[list[int], list[int]]:
        """The native histogram's buckets, the fine buckets themselves: their indexes,
        ascending, and their counts. The indexes are sorted again only when a bucket was
        added (a series' fine histogram never loses one)."""
        buckets = self.fine._dict()
        indexes = self._native_indexes
        if len(indexes) != len(buckets):
            indexes = self._native_indexes = sorted(buckets)
        return indexes, list(map(buckets.__getitem__, indexes))

    def record(self, seconds: float, count: int = 1) -> None:
        self._fine.record(seconds, count)
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
        fine = self._fine
        pending = self._pending
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
                edges = (lo, hi)
                pending[edges] = pending.get(edges, 0) + count
                self._spread(lo, hi, count)
                placed_sum += (lo + hi) / 2 * count
            self.count += count
        self.sum += placed_sum if total is None else total

    def _spread(self, lower: float, upper: float, count: int) -> None:
        # Most client ranges fall in one exposition bucket: known per range, whatever the
        # count (a cache keyed by the count too would miss on every new count).
        edges = (lower, upper)
        single = self._singles.get(edges)
        if single is None:
            single = _single_bucket(self.bounds, lower, upper)
            if len(self._singles) < _SPREAD_CACHE_SIZE:
                self._singles[edges] = single
        if single >= 0:
            self.bucket_counts[single] += count
            return
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


# -- exemplars ---------------------------------------------------------------------------


class Exemplar(NamedTuple):
    """One recorded value with the trace it was measured in: what links a latency bucket to
    a trace (OpenMetrics exemplars; docs/otlp.md, *Exemplars*). Ids are lower-case hex."""

    value: float  # seconds
    trace_id: str
    span_id: str  # '' when the client sent none
    time_unix_nano: int


class ExemplarSeries(LatencySeries):
    """A latency series that also keeps, per classic bucket, the latest exemplar whose value
    falls in it (by the exemplar's time): the client latency series, whose clients send
    exemplars with their OTLP points. Nothing is allocated until the first exemplar, and
    the exemplars go with the series."""

    __slots__ = ("_exemplar_changes", "exemplars")

    def __init__(
        self, bounds: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT, slo: float | None = None
    ) -> None:
        super().__init__(bounds, slo)
        #: classic bucket index (len(bounds): +Inf) -> its latest exemplar; None until one.
        self.exemplars: dict[int, Exemplar] | None = None
        self._exemplar_changes = 0

    @property
    def version(self) -> Hashable:
        """Changes whenever a value is recorded or an exemplar replaced."""
        return (self.count, self.sum, self._exemplar_changes)

    def add_exemplars(self, exemplars: Iterable[Exemplar]) -> None:
        """Keep each exemplar that is the latest of its bucket (a tie goes to the newer
        call: a cumulative stream's point repeats its exemplars, unchanged)."""
        kept = self.exemplars
        bounds = self.bounds
        for exemplar in exemplars:
            if kept is None:
                kept = self.exemplars = {}
            bucket = bisect.bisect_left(bounds, exemplar.value)  # le is inclusive
            held = kept.get(bucket)
            if held is None or (
                exemplar.time_unix_nano >= held.time_unix_nano and exemplar != held
            ):
                kept[bucket] = exemplar
                self._exemplar_changes += 1


def exemplars_by_bucket(h: object) -> Mapping[int, Exemplar] | None:
    """The exemplars of a histogram value by classic bucket index, None for a value that
    keeps none (every series but `ExemplarSeries`), or has none yet."""
    return getattr(h, "exemplars", None) or None
