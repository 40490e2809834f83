"""The protobuf format of /metrics, decoded by the reference: the io.prometheus.client
messages built from their descriptor (prometheus_proto.py). Every delimited MetricFamily of
the answer is parsed, checked against what the sources hold (names, help, types, label
pairs sorted by name, values, native histograms: schema, zero bucket, spans and deltas, no
classic buckets) and serialized again: the same bytes, so nothing is written that the
reference would write otherwise (field order, presence, unpacked deltas). After every kind
of change, on the node state and on small sources; and the quantiles read from the decoded
buckets are the agent's own."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.catalogue import Family, FamilySnapshot, HistogramValue, Kind, MetricSource
from exporter.core.buckets import FixedBuckets
from exporter.core.histogram import (
    NATIVE_SCHEMA,
    NATIVE_ZERO_THRESHOLD,
    LatencySeries,
    native_index,
)
from exporter.exposition import Exposition, NativeHistogram, native_histogram
from tests.cgroups.cgroup_scenarios import FIXTURES, snapshots
from tests.exposition.node_state import NodeState
from tests.exposition.prometheus_proto import (
    METRIC_TYPES,
    MetricFamily,
    delimited,
    encode_varint,
    native_buckets,
)
from tests.exposition.test_exposition import (
    EMPTY,
    LATENCY,
    OPERATIONS,
    REQUESTS,
    SCENARIO,
    SIZES,
    TEMPERATURE,
    UP,
    Table,
    apply,
    every_kind,
)

TYPES = {Kind.COUNTER: METRIC_TYPES["COUNTER"], Kind.GAUGE: METRIC_TYPES["GAUGE"],
         Kind.HISTOGRAM: METRIC_TYPES["HISTOGRAM"]}  # fmt: skip


@pytest.fixture
def node() -> Iterator[NodeState]:
    state = NodeState(FIXTURES / SCENARIO, snapshots(SCENARIO), services=2, endpoints=2,
                      samples_per_series=40)  # fmt: skip
    yield state
    state.close()


def decoded(body: bytes) -> list[Any]:
    """The MetricFamily messages of `body`, each checked to serialize back to its bytes."""
    out = []
    for raw, family in delimited(body):
        again = family.SerializeToString()
        assert raw == encode_varint(len(again)) + again, f"{family.name}: not the reference's bytes"
        out.append(family)
    return out


def same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


def assert_native(h: Any, value: HistogramValue) -> None:
    assert h.sample_count == value.count
    assert same_number(h.sample_sum, float(value.sum))
    assert h.schema == NATIVE_SCHEMA
    assert h.HasField("zero_threshold")  # what makes Prometheus 2.42 see a native histogram
    assert h.zero_threshold == NATIVE_ZERO_THRESHOLD
    assert h.zero_count == value.native_zero_count
    assert not h.bucket  # no classic buckets
    assert not (h.negative_span or h.negative_delta or h.positive_count)
    assert not (h.HasField("sample_count_float") or h.HasField("zero_count_float"))
    assert native_buckets(h) == list(zip(*value.native_buckets(), strict=True))
    # Spans are whole runs: every span has buckets, and a gap before every span but the first.
    assert all(span.length > 0 for span in h.positive_span)
    assert all(span.offset > 0 for span in h.positive_span[1:])
    assert len(h.positive_delta) == sum(span.length for span in h.positive_span)


def assert_protobuf_is_the_sources(exposition: Exposition, sources: list[MetricSource]) -> None:
    """The protobuf answer against the sources' snapshots, taken right after it."""
    got = decoded(exposition.render_protobuf())
    expected: list[FamilySnapshot] = []
    for source in sources:
        for snapshot in source.snapshot():
            series = sorted(snapshot.series, key=lambda s: s[0])
            if series:  # families without series are left out
                expected.append(FamilySnapshot(snapshot.family, series, snapshot.version))
    assert [f.name for f in got] == [s.family.name for s in expected]
    for message, snapshot in zip(got, expected, strict=True):
        family = snapshot.family
        assert (message.name, message.help, message.type) == (
            family.name, family.help, TYPES[family.kind])  # fmt: skip
        assert message.HasField("type")  # COUNTER (0) written too, as client_golang does
        series = list(snapshot.series)
        assert len(message.metric) == len(series)
        for metric, (values, value) in zip(message.metric, series, strict=True):
            pairs = [(p.name, p.value) for p in metric.label]
            assert pairs == sorted(zip(family.labels, values, strict=True))
            assert not (metric.HasField("untyped") or metric.HasField("timestamp_ms"))
            if family.kind is Kind.HISTOGRAM:
                assert metric.HasField("histogram")
                assert not (metric.HasField("counter") or metric.HasField("gauge"))
                assert_native(metric.histogram, value)
            elif family.kind is Kind.COUNTER:
                assert not (metric.HasField("gauge") or metric.HasField("histogram"))
                assert metric.counter.HasField("value")
                assert same_number(metric.counter.value, float(value))
            else:
                assert not (metric.HasField("counter") or metric.HasField("histogram"))
                assert metric.gauge.HasField("value")
                assert same_number(metric.gauge.value, float(value))


def test_protobuf_is_the_sources_through_changes(node: NodeState) -> None:
    ex = node.exposition
    check = lambda: assert_protobuf_is_the_sources(ex, node.sources)  # noqa: E731
    check()
    node.probe_round(3)
    check()
    node.state[node.refs[1]] = "disrupted"  # new series
    node.probe_round(1, slow=True)
    node.client_round(2, slow=True)
    check()
    node.pods = node.pods[1:]
    node.sample()
    ex.prepare(node.cgroup_source)  # rendered ahead: protobuf was scraped
    check()
    node.metrics.record(node.restart(node.pods[1], node.pods[1].containers[0].name, "Error"))
    node.outcomes["accepted"] += 100
    check()
    node.remove_pod(node.pods[0].namespace, node.pods[0].name)
    check()


def test_the_text_formats_and_protobuf_say_the_same(node: NodeState) -> None:
    """Every counter and gauge sample, and every histogram's count and sum, of the text
    format is in the protobuf answer with the same value."""
    node.probe_round(2)
    text = node.exposition.render()
    samples = {}
    for family in decoded(node.exposition.render_protobuf()):
        for m in family.metric:
            labels = tuple((p.name, p.value) for p in m.label)
            if m.HasField("histogram"):
                samples[(f"{family.name}_count", labels)] = float(m.histogram.sample_count)
                samples[(f"{family.name}_sum", labels)] = m.histogram.sample_sum
            else:
                value = m.counter.value if m.HasField("counter") else m.gauge.value
                samples[(family.name, labels)] = value
    seen = 0
    for family in parse_text(text):
        for s in family.samples:
            if s.name.endswith("_bucket"):
                continue
            assert samples[(s.name, tuple(sorted(s.labels.items())))] == s.value, s
            seen += 1
    assert seen == len(samples)


def test_every_kind_in_protobuf() -> None:
    table = every_kind()
    ex = Exposition([table])
    assert_protobuf_is_the_sources(ex, [table])
    names = [f.name for f in decoded(ex.render_protobuf())]
    assert EMPTY.name not in names  # no series: left out
    assert names == [REQUESTS.name, TEMPERATURE.name, UP.name, LATENCY.name, SIZES.name]
    empty = next(
        m.histogram
        for f in decoded(ex.render_protobuf())
        for m in f.metric
        if f.name == LATENCY.name and m.label[0].value == "empty"
    )
    assert empty.sample_count == 0
    assert not empty.positive_span  # still native: zero_threshold > 0
    assert empty.zero_threshold > 0
    table[EMPTY][("now",)] = 3
    del table[UP][()]
    assert [f.name for f in decoded(ex.render_protobuf())] == [
        REQUESTS.name, TEMPERATURE.name, EMPTY.name, LATENCY.name, SIZES.name]  # fmt: skip
    assert_protobuf_is_the_sources(ex, [table])


@settings(max_examples=60, deadline=None)
@given(OPERATIONS)
def test_any_sequence_of_changes_encodes_as_the_reference_decodes(
    operations: list[tuple[str, Family, tuple[str, ...], float]],
) -> None:
    table = Table([REQUESTS, TEMPERATURE, LATENCY, SIZES])
    ex = Exposition([table])
    for op, family, key, value in operations:
        apply(table, op, family, key, value)
        assert_protobuf_is_the_sources(ex, [table])


class Buckets:
    """A HistogramValue with given native buckets (the rest as an empty layout has it)."""

    bounds: tuple[float, ...] = (1.0,)
    sum = 0.0

    def __init__(self, buckets: list[tuple[int, int]], zero: int = 0) -> None:
        self.buckets = buckets
        self.native_zero_count = zero
        self.count = zero + sum(c for _, c in buckets)
        self.bucket_counts = [0, self.count]
        self.version = (tuple(buckets), zero)

    def native_buckets(self) -> tuple[list[int], list[int]]:
        return [i for i, _ in self.buckets], [c for _, c in self.buckets]


@pytest.mark.parametrize(
    "buckets",
    [
        [],
        [(0, 1)],
        [(-300, 5), (-299, 2), (-297, 9)],  # negative indexes (values below 1 s), a 1-gap
        [(1, 10**12), (2, 1), (3, 2**40), (100_000, 3)],  # deltas beyond the table, far gaps
        [(i, (i * 7919) % 50) for i in range(-40, 40)],  # empty buckets inside a span
        [(i, 1) for i in range(0, 400, 2)],  # 200 spans of one
        [(-5, 2**63 - 1)],
    ],
)
def test_native_buckets_of_every_shape(buckets: list[tuple[int, int]]) -> None:
    h = Buckets(buckets, zero=3)
    assert_native(decoded_histogram(native_histogram(h)), h)


def decoded_histogram(message: bytes) -> Any:
    """A Histogram message, parsed by the reference (inside a MetricFamily)."""
    metric = b"\x3a" + encode_varint(len(message)) + message
    family = MetricFamily()
    family.ParseFromString(b"\x22" + encode_varint(len(metric)) + metric)
    return family.metric[0].histogram


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(-20, 20), st.integers(1, 2**40)), max_size=30),
        min_size=1,
        max_size=40,
    )
)
def test_a_series_encoded_again_from_its_last_encoding(
    steps: list[list[tuple[int, int]]],
) -> None:
    """`NativeHistogram` keeps the spans and patches the deltas of its last encoding: after
    every step (a few buckets observed, or many, or new ones) it gives what a fresh
    encoding gives, through the steps encoded whole after many buckets moved too."""
    counts: dict[int, int] = {}
    again = NativeHistogram()
    for step in steps:
        for index, n in step[: len(step) // 8 + 1] if len(step) % 3 else step:
            counts[index] = counts.get(index, 0) + n
        h = Buckets(sorted(counts.items()))
        assert again.encode(h) == native_histogram(h)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99, 0.999])
def test_quantiles_from_the_decoded_buckets_are_the_agents(node: NodeState, q: float) -> None:
    """histogram_quantile over the decoded native buckets lands in the bucket of the fine
    histogram's own quantile (which is at most 2.2% from the exact one)."""
    node.probe_round(50)
    node.client_round(5)
    histograms: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {
        (f.name, tuple((p.name, p.value) for p in m.label)): m.histogram
        for f in decoded(node.exposition.render_protobuf())
        for m in f.metric
        if m.HasField("histogram")
    }
    sources: list[tuple[str, dict[tuple[str, ...], LatencySeries], tuple[str, ...]]] = [
        ("tailwatch_probe_duration_seconds", node.ledger.durations,
         ("namespace", "service", "target", "pod", "state")),
        ("tailwatch_client_request_duration_seconds", node.client.series,
         ("namespace", "service", "state")),
    ]  # fmt: skip
    checked = 0
    for name, series, labels in sources:
        for key, s in series.items():
            h = histograms[(name, tuple(sorted(zip(labels, key, strict=True))))]
            fine = s.quantile(q)
            assert fine is not None
            lower, upper = bucket_of_rank(h, q)
            assert lower < fine <= upper
            assert native_index(fine) == native_index(upper)
            checked += 1
    assert checked == len(node.ledger.durations) + len(node.client.series)


def bucket_of_rank(h: Any, q: float) -> tuple[float, float]:
    """The bounds of the bucket holding the q-quantile's rank (as histogram_quantile finds
    it, before interpolating inside it)."""
    rank = max(1, math.ceil(q * h.sample_count))
    seen = h.zero_count
    if rank <= seen:
        return (0.0, h.zero_threshold)
    for index, count in native_buckets(h):
        seen += count
        if rank <= seen:
            return 2.0 ** ((index - 1) / 16), 2.0 ** (index / 16)
    raise AssertionError("rank beyond the buckets")


def test_fixed_buckets_are_native_too() -> None:
    """A FixedBuckets histogram (pod startup, episodes) is written as a native histogram of
    its observations, whatever its classic bounds."""
    h = FixedBuckets.empty((1, 2, 5))
    for v in (0.0, 0.5, 1.5, 1.5, 4.0, 100.0):
        h = h.observe(v)
    decoded_h = decoded_histogram(native_histogram(h))
    assert_native(decoded_h, h)
    assert decoded_h.zero_count == 1
    assert [i for i, _ in native_buckets(decoded_h)] == sorted(
        {native_index(v) for v in (0.5, 1.5, 4.0, 100.0)}
    )
