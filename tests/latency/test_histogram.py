"""The two resolutions: fine quantiles within 1% (the contract asks 5%), the exposition layout
(SLO boundaries exact, ratios under 15%, within the bucket budget), exact `le` counts, and
the `record_range` rule for coarse client histograms."""

from __future__ import annotations

import bisect
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.buckets import FixedBuckets
from exporter.core.histogram import (
    DEFAULT_CLASSIC_LAYOUT,
    MAX_TRACKED,
    MIN_TRACKED,
    NATIVE_SCHEMA,
    RELATIVE_ACCURACY,
    FineHistogram,
    LatencySeries,
    _exposition_placement,
    _fine_placement,
    _placement,
    check_layout,
    cumulative_buckets,
    layout_for,
    le_string,
    native_index,
)
from exporter.otlp.points import Exponential, buckets_of
from tests.latency.quantiles import (
    buckets,
    exact_quantile,
    histogram_quantile,
    native_histogram_quantile,
)

latencies = st.floats(min_value=MIN_TRACKED, max_value=MAX_TRACKED, exclude_min=True)
samples = st.lists(latencies, min_size=1, max_size=300)
quantile = st.floats(min_value=0.0, max_value=1.0)
slos = st.floats(min_value=1e-6, max_value=600.0)

# The bound is RELATIVE_ACCURACY; the float log at a bucket edge may land one ulp across it.
TOLERANCE = RELATIVE_ACCURACY * (1 + 1e-9)


def filled(values: list[float]) -> FineHistogram:
    h = FineHistogram()
    for v in values:
        h.record(v)
    return h


def numeric(series: LatencySeries) -> list[tuple[float, float]]:
    return buckets(cumulative_buckets(series.bounds, series.bucket_counts))


# -- fine histogram ------------------------------------------------------------------------


@given(samples, quantile)
def test_fine_quantile_is_within_relative_accuracy_of_the_exact_quantile(
    values: list[float], q: float
) -> None:
    estimate = filled(values).quantile(q)
    exact = exact_quantile(values, q)
    assert estimate is not None
    assert abs(estimate - exact) <= TOLERANCE * exact


def test_fine_accuracy_meets_the_design_target_with_room_for_coarse_input() -> None:
    assert RELATIVE_ACCURACY <= 0.05 / 2
    assert round(RELATIVE_ACCURACY, 4) == 0.0217  # docs/latency.md


def test_native_index_is_exact_at_bucket_edges() -> None:
    """Bucket i holds (2^((i-1)/16), 2^(i/16)]: a power of two is the top of its bucket."""
    assert NATIVE_SCHEMA == 4
    assert native_index(1.0) == 0 and native_index(math.nextafter(1.0, 2.0)) == 1
    assert native_index(0.5) == -16 and native_index(2.0) == 16
    assert native_index(0.25) == -32 and native_index(math.nextafter(0.25, 0.0)) == -32
    for i in range(-300, 180, 7):
        edge = 2.0 ** (i / 16)
        assert native_index(edge) in (i, i + 1)  # the float edge may round up by an ulp
        assert native_index(edge * (1 + 1e-9)) == i + 1
        assert native_index(edge * (1 - 1e-9)) == i


@given(samples, samples)
def test_merge_equals_recording_everything_in_one(a: list[float], b: list[float]) -> None:
    merged = filled(a)
    merged.merge(filled(b))
    assert merged == filled(a + b)


@given(samples, samples)
def test_subtracting_an_earlier_snapshot_leaves_what_came_after(
    a: list[float], b: list[float]
) -> None:
    later = filled(a + b)
    assert later.subtract(filled(a)) == filled(b)
    with pytest.raises(ValueError, match="earlier snapshot"):
        filled(a).subtract(later)


# -- packed histograms: closed slots of the timelines -----------------------------------------

client_ranges = st.lists(
    st.tuples(st.floats(0.0, 10.0), st.floats(0.0, 10.0), st.integers(0, 10_000)), max_size=8
)
# What a slot holds: single values (probes, some in the zero bucket) and client ranges.
contents = st.tuples(st.lists(st.one_of(latencies, st.just(0.0)), max_size=100), client_ranges)


def built(content: tuple[list[float], list[tuple[float, float, int]]]) -> FineHistogram:
    values, ranges = content
    h = filled(values)
    for a, b, n in ranges:
        h.record_range(min(a, b), max(a, b), n)
    return h


def packed(h: FineHistogram) -> FineHistogram:
    out = h.copy()
    out.pack()
    assert out.packed
    return out


@given(contents, st.lists(quantile, min_size=1, max_size=5), st.floats(-1.0, 20.0))
def test_a_packed_histogram_reads_exactly_as_the_unpacked_one(
    content: tuple[list[float], list[tuple[float, float, int]]],
    qs: list[float],
    threshold: float,
) -> None:
    h = built(content)
    p = packed(h)
    assert p == h and h == p
    assert (p.count, p.zero_count) == (h.count, h.zero_count)
    assert p.quantiles(qs) == h.quantiles(qs)
    assert p.largest() == h.largest()
    assert p.count_above(threshold) == h.count_above(threshold)
    if h.count:
        ranks = sorted({1, h.count, (h.count + 1) // 2, max(1, h.count * 99 // 100)})
        assert p.at_ranks(ranks) == h.at_ranks(ranks)
    assert p.copy() == h and p.copy().packed


@given(st.lists(contents, min_size=1, max_size=6))
def test_merges_over_packed_histograms_are_the_merges_over_unpacked_ones(
    slots: list[tuple[list[float], list[tuple[float, float, int]]]],
) -> None:
    plain, mixed = FineHistogram(), FineHistogram()
    for i, content in enumerate(slots):
        h = built(content)
        plain.merge(h)
        mixed.merge(packed(h) if i % 2 == 0 else h)
    assert mixed == plain
    assert mixed.quantiles((0.5, 0.99, 1.0)) == plain.quantiles((0.5, 0.99, 1.0))
    # Written to, a packed histogram unpacks and takes the write like any other.
    target = packed(built(slots[0]))
    reference = built(slots[0])
    for h in (target, reference):
        h.merge(plain)
        h.record(0.01, 3)
        h.record_range(0.002, 0.009, 40)
    assert not target.packed and target == reference


@given(samples, samples)
def test_a_packed_snapshot_subtracts_like_an_unpacked_one(a: list[float], b: list[float]) -> None:
    later, earlier = filled(a + b), filled(a)
    assert packed(later).subtract(packed(earlier)) == later.subtract(earlier) == filled(b)
    with pytest.raises(ValueError, match="earlier snapshot"):
        packed(earlier).subtract(packed(later))


@given(
    st.floats(0.0, 10.0),
    st.floats(1e-6, 10.0),
    st.one_of(st.integers(1, 5000), st.integers(2**32 - 2, 2**70)),
)
def test_the_placement_cache_keeps_the_placements_packed_and_exact(
    lower: float, width: float, count: int
) -> None:
    zero, increments = _fine_placement(lower, lower + width, count)
    expected_zero, expected = _placement(lower, lower + width, count)
    assert (zero, list(increments)) == (expected_zero, list(expected))


def test_counts_beyond_32_bits_stay_unpacked_and_exact() -> None:
    h = FineHistogram()
    h.record(0.01, 1 << 40)
    h.record(0.02)
    h.pack()
    assert not h.packed
    assert h.count_above(0.015) == 1 and h.quantile(0.5) == pytest.approx(0.01, rel=TOLERANCE)


def test_a_packed_histogram_takes_a_fraction_of_the_memory() -> None:
    """A closed slot of a busy Service: ~20 buckets, counts in the hundreds."""
    import tracemalloc

    tracemalloc.start()
    try:
        histograms = []
        for k in range(200):
            h = FineHistogram()
            for j in range(20):
                h.record(0.001 * (1.05**j), 300 + k + j)
            histograms.append(h)
        unpacked = tracemalloc.get_traced_memory()[0]
        for h in histograms:
            h.pack()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after < unpacked * 0.4  # the list and the objects themselves stay


def test_memory_is_bounded_whatever_is_recorded() -> None:
    h = FineHistogram()
    x = 1e-9
    while x < 1e5:
        h.record(x)
        x *= 1.001
    assert len(h._buckets) <= 520  # 16 per doubling from 2^-20 s to 3600 s
    assert h.quantile(0.0) == 0.0  # below 1 µs: the zero bucket
    assert h.quantile(1.0) == pytest.approx(MAX_TRACKED, rel=TOLERANCE)  # clamped


def test_empty_and_bad_input() -> None:
    h = FineHistogram()
    assert h.quantile(0.5) is None
    with pytest.raises(ValueError, match="NaN"):
        h.record(math.nan)
    h.record(0.01)
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        h.quantile(1.5)
    with pytest.raises(ValueError, match="above"):
        h.record_range(2.0, 1.0, 3)


# -- record_range: coarse input ------------------------------------------------------------


@given(
    st.floats(min_value=1e-5, max_value=100.0),
    st.floats(min_value=1.001, max_value=10.0),
    st.integers(min_value=1, max_value=5000),
    quantile,
)
def test_record_range_places_values_evenly_over_the_range(
    lower: float, ratio: float, count: int, q: float
) -> None:
    upper = lower * ratio
    h = FineHistogram()
    h.record_range(lower, upper, count)
    assert h.count == count
    step = (upper - lower) / count
    placed = [lower + (j + 0.5) * step for j in range(count)]
    estimate = h.quantile(q)
    assert estimate is not None
    # within the range always (the documented worst case: off by at most upper/lower - 1) ...
    assert lower * (1 - TOLERANCE) <= estimate <= upper * (1 + TOLERANCE)
    # ... and, values being even, the evenly placed value's quantile (one bucket of rounding).
    exact = exact_quantile(placed, q)
    assert abs(estimate - exact) <= 3 * RELATIVE_ACCURACY * exact


def test_record_range_open_ends() -> None:
    h = FineHistogram()
    h.record_range(0.5, math.inf, 10)  # the +Inf bucket: at its lower bound
    assert h.quantiles((0.0, 1.0)) == [pytest.approx(0.5, rel=TOLERANCE)] * 2
    h = FineHistogram()
    h.record_range(-math.inf, 0.004, 4)  # a first bucket: from 0
    assert h.quantiles((0.25, 1.0)) == [
        pytest.approx(0.0005, rel=TOLERANCE),
        pytest.approx(0.0035, rel=TOLERANCE),
    ]
    h.record_range(-1.0, 0.0, 3)  # values <= 0
    assert h.zero_count == 3 and h.count == 7


def test_record_range_with_a_huge_count_costs_buckets_not_values() -> None:
    h = FineHistogram()
    h.record_range(0.001, 0.002, 10**12)
    assert h.count == 10**12
    assert h.quantile(0.5) == pytest.approx(0.0015, rel=2 * RELATIVE_ACCURACY)


# -- the exposition layout -----------------------------------------------------------------


def test_classic_layout_is_small_and_readable() -> None:
    assert len(DEFAULT_CLASSIC_LAYOUT) == 27
    assert DEFAULT_CLASSIC_LAYOUT[0] == 0.0005 and DEFAULT_CLASSIC_LAYOUT[-1] == 10.0
    assert max(b / a for a, b in itertools.pairwise(DEFAULT_CLASSIC_LAYOUT)) <= 5 / 3
    assert [le_string(b) for b in DEFAULT_CLASSIC_LAYOUT[:4]] == [
        "0.0005",
        "0.0007",
        "0.001",
        "0.0015",
    ]


@given(slos)
def test_layout_of_a_service_has_its_slo_as_an_exact_boundary(slo: float) -> None:
    layout = layout_for(slo)
    assert slo in layout
    assert list(layout) == sorted(set(layout))
    assert (
        len(layout) <= len(DEFAULT_CLASSIC_LAYOUT) + 1
    )  # the series budget: one extra bucket at most
    for bound in layout:
        assert float(le_string(bound)) == bound  # the le string round-trips


def test_layout_is_the_same_on_every_agent_for_a_service() -> None:
    assert layout_for(0.05) == layout_for(0.05)
    assert layout_for(None) == DEFAULT_CLASSIC_LAYOUT
    assert layout_for(0.04, (0.01, 0.1)) == (0.01, 0.04, 0.1)
    assert le_string(0.05) == "0.05" and le_string(math.inf) == "+Inf"
    with pytest.raises(ValueError, match="positive"):
        layout_for(-1.0)


@pytest.mark.parametrize("bad", [(), (0.0, 1.0), (1.0, 0.5), (1.0, math.inf), (0.1, 0.1)])
def test_a_classic_layout_must_be_positive_finite_and_increasing(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="classic"):
        check_layout(bad)


@given(
    slos,
    st.lists(
        st.one_of(latencies, st.sampled_from(DEFAULT_CLASSIC_LAYOUT), st.just(0.05)),
        min_size=1,
        max_size=200,
    ),
)
def test_exposition_counts_are_exact_at_every_boundary(slo: float, values: list[float]) -> None:
    series = LatencySeries(layout_for(slo))
    for v in values:
        series.record(v)
    ordered = sorted(values)
    for le, cumulative in cumulative_buckets(series.bounds, series.bucket_counts):
        bound = float(le)
        assert cumulative == bisect.bisect_right(ordered, bound)  # values <= le, exactly
    assert series.count == len(values)
    assert series.sum == pytest.approx(sum(values))


@settings(max_examples=200)
@given(
    st.lists(
        st.lists(st.floats(min_value=1e-4, max_value=60.0), min_size=1),
        min_size=1,
        max_size=5,
    ),
    st.floats(min_value=0.5, max_value=0.999),
    slos,
)
def test_native_histogram_quantile_across_agents_is_within_15_percent(
    agents: list[list[float]], q: float, slo: float
) -> None:
    """Adding the native buckets of several agents (one index everywhere) and interpolating
    inside a bucket, as PromQL does, lands in the bucket of the exact quantile: off by less
    than one bucket's width, 4.4%."""
    summed: dict[int, int] = {}
    for values in agents:
        series = LatencySeries(layout_for(slo), slo)
        for v in values:
            series.record(v)
        for index, n in zip(*series.native_buckets(), strict=True):
            summed[index] = summed.get(index, 0) + n
    exact = exact_quantile([v for values in agents for v in values], q)
    estimate = native_histogram_quantile(q, list(summed.items()), 0, NATIVE_SCHEMA)
    assert abs(estimate - exact) <= 0.045 * exact <= 0.15 * exact


@given(
    st.lists(st.floats(min_value=1e-4, max_value=9.9), min_size=1),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_classic_histogram_quantile_is_off_by_at_most_its_bucket_ratio(
    values: list[float], q: float
) -> None:
    series = LatencySeries(DEFAULT_CLASSIC_LAYOUT)
    for v in values:
        series.record(v)
    exact = exact_quantile(values, q)
    estimate = histogram_quantile(q, numeric(series))
    assert exact / (5 / 3) <= estimate <= exact * 5 / 3 or estimate <= DEFAULT_CLASSIC_LAYOUT[0]


@given(slos, st.lists(latencies, max_size=100), st.lists(st.tuples(latencies, latencies,
       st.integers(min_value=0, max_value=1000)), max_size=5))  # fmt: skip
def test_slow_count_is_what_lies_above_the_slo(
    slo: float, values: list[float], ranges: list[tuple[float, float, int]]
) -> None:
    series = LatencySeries(layout_for(slo), slo)
    for v in values:
        series.record(v)
    series.record_ranges([(min(a, b), max(a, b), n) for a, b, n in ranges])
    within = dict(cumulative_buckets(series.bounds, series.bucket_counts))[le_string(slo)]
    assert series.slow_count == series.count - within
    assert series.slow_count >= sum(1 for v in values if v > slo)
    if not ranges:
        assert series.slow_count == sum(1 for v in values if v > slo)


def test_a_series_without_an_slo_counts_nothing_slow_and_refuses_a_foreign_slo() -> None:
    series = LatencySeries(DEFAULT_CLASSIC_LAYOUT)
    series.record(99.0)
    assert series.slow_count == 0
    with pytest.raises(ValueError, match="not a bound"):
        LatencySeries(DEFAULT_CLASSIC_LAYOUT, 0.042)


def test_native_view_of_a_series_and_of_fixed_buckets() -> None:
    series = LatencySeries()
    fixed = FixedBuckets.empty((1.0, 2.0))
    for v in (0.0, 1e-7, 0.5, 0.5, 1.0, 3.0):
        series.record(v)
        fixed = fixed.observe(v)
    expected = [(-16, 2), (0, 1), (26, 1)]  # 3.0: 16·log2(3) = 25.4, so bucket 26
    assert list(zip(*series.native_buckets(), strict=True)) == expected
    assert list(zip(*fixed.native_buckets(), strict=True)) == expected
    assert series.native_zero_count == 2 == fixed.native_zero_count
    before = series.version
    series.record(0.5)
    assert series.version != before and series.native_buckets() == ([-16, 0, 26], [3, 1, 1])
    assert fixed.sum == pytest.approx(5.0) and fixed.count == 6 == sum(fixed.bucket_counts)


def test_record_ranges_with_client_bounds_at_the_slo_keep_the_slo_count_exact() -> None:
    series = LatencySeries(layout_for(0.05))
    bounds = [0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, math.inf]
    counts = [0, 10, 20, 30, 40, 5, 3, 1]
    series.record_ranges(
        [(lo, hi, n) for lo, hi, n in zip(bounds[:-1], bounds[1:], counts, strict=True)],
        total=4.2,
    )
    cumulative = dict(cumulative_buckets(series.bounds, series.bucket_counts))
    assert cumulative["0.05"] == 60  # exactly the client's count at or below its 50 ms bound
    assert cumulative["+Inf"] == 109 == series.count == series.fine.count
    assert series.sum == 4.2
    p99 = series.quantile(0.99)
    assert p99 is not None and 0.1 <= p99 <= 0.25 * (1 + TOLERANCE)


def test_record_range_sum_without_a_client_sum() -> None:
    series = LatencySeries()
    series.record_range(0.01, 0.03, 10)
    series.record_range(2.0, math.inf, 1)
    assert series.sum == pytest.approx(10 * 0.02 + 2.0)
    assert series.count == 11


@given(
    st.integers(min_value=4, max_value=8),
    st.integers(min_value=-300 * 16, max_value=100 * 16),
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40),
)
def test_otlp_exponential_buckets_in_seconds_merge_into_native_buckets_exactly(
    scale: int, offset: int, counts: list[int]
) -> None:
    """An OTLP exponential histogram of scale >= 4 in seconds: bucket j, (2^(j/2^s),
    2^((j+1)/2^s)], lies inside native bucket (j >> (s - 4)) + 1, so every count lands there
    and nothing is re-bucketed."""
    # above the zero threshold, below the one-hour clamp
    offset = min(max(offset, -19 * 2**scale), 11 * 2**scale - len(counts))
    dist = Exponential(scale, 0.0, 0, offset, counts)
    series = LatencySeries()
    series.record_ranges(buckets_of(dist, 1.0, None, None))
    expected: dict[int, int] = {}
    for k, n in enumerate(counts):
        if n:
            index = ((offset + k) >> (scale - NATIVE_SCHEMA)) + 1
            expected[index] = expected.get(index, 0) + n
    assert list(zip(*series.native_buckets(), strict=True)) == sorted(expected.items())


@given(
    st.lists(st.tuples(latencies, latencies, st.integers(1, 500)), min_size=1, max_size=20),
    st.sampled_from([DEFAULT_CLASSIC_LAYOUT, (0.005, 0.01, 0.025, 0.05, 0.1)]),
)
def test_ranges_land_in_the_classic_buckets_of_the_placement_rule(
    ranges: list[tuple[float, float, int]], bounds: tuple[float, ...]
) -> None:
    """Recorded through the series (a range inside one bucket takes a shortcut, the others
    are spread), the classic counts are those of placing each range's values evenly."""
    series = LatencySeries(bounds)
    expected = [0] * (len(bounds) + 1)
    for a, b, n in ranges:
        lo, hi = min(a, b), max(a, b)
        series.record_range(lo, hi, n)
        if hi == lo:
            expected[bisect.bisect_left(bounds, lo)] += n
        else:
            for bucket, k in _exposition_placement(bounds, lo, hi, n):
                expected[bucket] += k
    assert series.bucket_counts == expected
    assert series.fine.count == sum(n for _, _, n in ranges)
