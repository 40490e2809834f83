"""Whatever points a client sends, the ingest never raises, accounts for every point and
makes only well-formed deltas."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.otlp.points import HistogramIngest, Outcome
from tests.otlp.builders import (
    CUMULATIVE,
    DELTA,
    T0,
    WEB,
    explicit_point,
    exponential_point,
    metric,
    request,
)
from tests.otlp.test_points import STARTED, resolve

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
counts = st.lists(st.integers(0, 2**40), max_size=20)
attrs = st.sampled_from([WEB, {}, {"server.address": "127.96.0.7"}, {**WEB, "k": 1},
                         {"server.address": "nowhere.example"}])  # fmt: skip


@st.composite
def explicit(draw: st.DrawFn) -> object:
    c = draw(counts)
    bounds = draw(st.one_of(
        st.lists(floats, min_size=max(0, len(c) - 1), max_size=max(0, len(c) - 1)),
        st.lists(floats, max_size=20),
    ))  # fmt: skip
    return explicit_point(
        c, bounds=bounds, total=draw(st.none() | floats),
        count=draw(st.none() | st.integers(0, 2**41)), start=draw(st.sampled_from([0, T0])),
        time=T0 + draw(st.integers(0, 5)), attrs=draw(attrs),
        min_max=draw(st.none() | st.tuples(floats, floats)),
    )  # fmt: skip


@st.composite
def exponential(draw: st.DrawFn) -> object:
    return exponential_point(
        draw(counts), scale=draw(st.integers(-30, 30)), offset=draw(st.integers(-3000, 3000)),
        zero_count=draw(st.integers(0, 10)), total=draw(floats),
        negative=draw(st.lists(st.integers(0, 3), max_size=3)),
        time=T0 + draw(st.integers(0, 5)), attrs=draw(attrs),
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.one_of(explicit(), exponential()), min_size=1, max_size=4),
            st.sampled_from([CUMULATIVE, DELTA, 0]),
            st.sampled_from(["s", "ms", "h"]),
        ),
        max_size=5,
    )
)
def test_any_points(batches: list[tuple[list[object], int, str]]) -> None:
    ingest = HistogramIngest(resolve, started_unix_nano=STARTED)
    for now, (points, temporality, unit) in enumerate(batches):
        # One metric holds one kind of point: split them.
        kinds = [[p for p in points if type(p) is t] for t in {type(p) for p in points}]
        msg = request(*(metric(k, temporality=temporality, unit=unit) for k in kinds))  # type: ignore[arg-type]
        result = ingest.ingest(msg, float(now))
        assert sum(result.outcomes.values()) == len(points)
        for delta in result.deltas:
            assert delta.count > 0 and delta.count == sum(n for _, _, n in delta.buckets)
            assert delta.sum_seconds >= 0
            for low, high, n in delta.buckets:
                assert 0 <= low <= high and n > 0
        if result.outcomes[Outcome.ACCEPTED] == 0:
            assert not result.deltas
