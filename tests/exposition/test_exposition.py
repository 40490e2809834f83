"""The text formats of /metrics against prometheus_client's, on a fixed node state and on small
sources of every kind: a golden file of the text (TAILWATCH_UPDATE_GOLDEN=1 rewrites it), the
same bytes as `generate_latest` over the sources' bridge (`SourceCollector`) in both formats
after every kind of change, content negotiation (protobuf included), the bytes kept while
nothing changes, rendering ahead only in the formats scraped, series of gone pods gone,
promtool clean. The protobuf format: test_protobuf.py."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

from exporter.catalogue import Family, FamilySnapshot, Kind, Series
from exporter.core.buckets import FixedBuckets
from exporter.core.histogram import LatencySeries, layout_for
from exporter.exposition import (
    PROTOBUF_CONTENT_TYPE,
    Exposition,
    Format,
    ScrapeRhythm,
    SourceCollector,
    negotiate,
    number,
    text_content_type,
)
from tests.cgroups.cgroup_scenarios import FIXTURES, snapshots
from tests.exposition.node_state import ODD_REASON, NodeState

UPDATE = os.environ.get("TAILWATCH_UPDATE_GOLDEN") == "1"
GOLDEN = Path(__file__).parent / "golden"
SCENARIO = "v2-systemd-containerd"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
OPENMETRICS_UNDERSCORES = OPENMETRICS + "; escaping=underscores"
# What Prometheus 2.x sends by default (it prefers OpenMetrics).
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# What Prometheus 2.42 sends with --enable-feature=native-histograms.
PROTOBUF_ACCEPT = (
    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
    "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,"
    "application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Families = dict[tuple[str, str, str], list[tuple[str, tuple[tuple[str, str], ...], float]]]


@pytest.fixture
def node() -> Iterator[NodeState]:
    state = NodeState(FIXTURES / SCENARIO, snapshots(SCENARIO), services=2, endpoints=2,
                      samples_per_series=40)  # fmt: skip
    yield state
    state.close()


def families(parsed: Iterable[Metric]) -> Families:
    """Every family with its type, help and samples: what a scraper reads."""
    return {
        (f.name, f.type, f.documentation): sorted(
            (s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples
        )
        for f in parsed
    }


def assert_same_as_prometheus_client(exposition: Exposition) -> None:
    """Byte for byte, in both formats; where they differ, first what a scraper reads of
    them, which says where."""
    text, reference = exposition.render(), generate_latest(exposition.registry).decode()
    if text != reference:
        assert families(parse_text(text)) == families(parse_text(reference))
    assert text == reference
    om = exposition.render(openmetrics=True)
    om_reference = openmetrics_latest(exposition.registry).decode()  # type: ignore[no-untyped-call]
    if om != om_reference:
        assert families(parse_openmetrics(om)) == families(parse_openmetrics(om_reference))
    assert om == om_reference


def normalized(text: str) -> str:
    """The golden file must not change with the Python or tailwatch version."""
    return re.sub(r"tailwatch_build_info\{[^}]*\}",
                  'tailwatch_build_info{python="X",revision="X",version="X"}', text)  # fmt: skip


def test_golden_exposition(node: NodeState) -> None:
    """The whole /metrics catalogue on one page (OpenMetrics is checked against
    prometheus_client's encoder, byte for byte, below)."""
    golden = GOLDEN / "node.prom"
    text = normalized(node.exposition.render())
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), "run with TAILWATCH_UPDATE_GOLDEN=1 to create the golden file"
    assert text == golden.read_text(), (
        f"exposition differs from {golden}; if intended, rerun with TAILWATCH_UPDATE_GOLDEN=1"
    )


def test_same_bytes_as_prometheus_client_through_changes(node: NodeState) -> None:
    ex = node.exposition
    assert_same_as_prometheus_client(ex)
    # Each kind of change the agent makes between scrapes; the cached parts must follow.
    node.probe_round(3)  # probe histograms move
    assert_same_as_prometheus_client(ex)
    node.state[node.refs[1]] = "disrupted"  # a new series appears
    node.probe_round(1, slow=True)
    node.client_round(2, slow=True)
    assert_same_as_prometheus_client(ex)
    node.sample()  # a new cgroup pass, same files: same samples reused
    assert_same_as_prometheus_client(ex)
    node.pods = node.pods[1:]  # a pass rendered ahead, from another thread, as the agent does
    node.sample()
    prepare = threading.Thread(target=ex.prepare, args=(node.cgroup_source,))
    prepare.start()
    prepare.join()
    assert_same_as_prometheus_client(ex)
    node.metrics.record(node.restart(node.pods[1], node.pods[1].containers[0].name, "Error"))
    node.outcomes["accepted"] += 100
    node.healths[0].events["MODIFIED"] = 1
    assert_same_as_prometheus_client(ex)
    node.remove_pod(node.pods[0].namespace, node.pods[0].name)
    assert_same_as_prometheus_client(ex)


# -- small sources of every kind ------------------------------------------------------------

REQUESTS = Family("test_requests_total", Kind.COUNTER, 'Requests, "quoted" \\ and\nnewline.',
                  ("path", "code"))  # fmt: skip
TEMPERATURE = Family("test_temperature_celsius", Kind.GAUGE, "A gauge.", ("room",))
UP = Family("test_up", Kind.GAUGE, "No labels.", ())
EMPTY = Family("test_empty_total", Kind.COUNTER, "Never a series.", ("x",))
LATENCY = Family("test_latency_seconds", Kind.HISTOGRAM, "Per-series bounds.", ("service",))
SIZES = Family("test_size_bytes", Kind.HISTOGRAM, "Fixed bounds.", ("kind",), (10, 100, 1e3))


class Table:
    """A MetricSource over plain dicts, one per family, in this order. A family in
    `versioned` has a snapshot version, which `changed` moves (as a source's does when its
    series change); the others have none (read every time)."""

    def __init__(self, families: Sequence[Family]) -> None:
        self.families = list(families)
        self.series: dict[str, dict[tuple[str, ...], object]] = {f.name: {} for f in families}
        self.versioned: dict[str, int] = {}

    def __getitem__(self, family: Family) -> dict[tuple[str, ...], object]:
        return self.series[family.name]

    def changed(self, family: Family) -> None:
        if family.name in self.versioned:
            self.versioned[family.name] += 1

    def snapshot(self) -> Iterator[FamilySnapshot]:
        for f in self.families:
            series: Iterable[Series] = list(self.series[f.name].items())  # type: ignore[arg-type]
            yield FamilySnapshot(f, series, self.versioned.get(f.name))


ODD_VALUES = ['a "quoted" \\ value\nover two lines', "ünïcødé", "", "}{,="]


def every_kind() -> Table:
    table = Table([REQUESTS, TEMPERATURE, UP, EMPTY, LATENCY, SIZES])
    for i, odd in enumerate(ODD_VALUES):
        table[REQUESTS][(odd, "200")] = i * 1000
        table[REQUESTS][("/", odd)] = 2**53 + i  # beyond a float's exact integers
    table[TEMPERATURE].update({("kitchen",): 21.5, ("cellar",): -3.25, ("attic",): 1e21,
                               ("nan",): math.nan, ("hot",): math.inf, ("cold",): -math.inf,
                               ("tiny",): 1e-7, ("zero",): -0.0})  # fmt: skip
    table[UP][()] = 1
    slo = LatencySeries(layout_for(0.05), slo=0.05)
    plain = LatencySeries()
    for i in range(200):
        slo.record(0.0005 * (i + 1))
        plain.record(0.01 * (i % 7))  # zeros go to the zero bucket
    table[LATENCY].update({("slo",): slo, ("plain",): plain, ("empty",): LatencySeries()})
    sizes = FixedBuckets.empty(SIZES.buckets)
    for v in (1, 10, 11, 5000):
        sizes = sizes.observe(v)
    table[SIZES].update({("a",): sizes, ("b",): FixedBuckets.empty(SIZES.buckets)})
    return table


def test_every_kind_renders_as_prometheus_client_does() -> None:
    table = every_kind()
    ex = Exposition([table])
    assert_same_as_prometheus_client(ex)
    text = ex.render()
    assert "# HELP test_empty_total Never a series.\n# TYPE test_empty_total counter\n" in text
    # Every kind of change, each one alone.
    table[REQUESTS][("/", "500")] = 1  # a series appears
    assert_same_as_prometheus_client(ex)
    del table[REQUESTS][("/", "500")]  # and leaves
    assert_same_as_prometheus_client(ex)
    table[TEMPERATURE][("zero",)] = 0.0  # equal to -0.0, written differently
    assert_same_as_prometheus_client(ex)
    assert 'test_temperature_celsius{room="zero"} 0.0\n' in ex.render()
    table[TEMPERATURE][("kitchen",)] = 22  # a value changes (to an int)
    assert_same_as_prometheus_client(ex)
    slo = table[LATENCY][("slo",)]
    assert isinstance(slo, LatencySeries)
    slo.record(0.2)  # a histogram is observed
    assert_same_as_prometheus_client(ex)
    sizes = table[SIZES][("b",)]
    assert isinstance(sizes, FixedBuckets)
    table[SIZES][("b",)] = sizes.observe(50)
    assert_same_as_prometheus_client(ex)
    table[LATENCY][("slo",)] = LatencySeries()  # other bounds for the same label values
    assert_same_as_prometheus_client(ex)
    table[EMPTY][("now",)] = 3  # the empty family gets a series
    table.families.reverse()  # and the families come in another order
    assert_same_as_prometheus_client(ex)
    table.series = {f.name: {} for f in table.families}  # every series gone
    assert_same_as_prometheus_client(ex)


def test_a_family_whose_version_is_unchanged_is_not_read_again() -> None:
    table = every_kind()
    table.versioned[REQUESTS.name] = 1
    ex = Exposition([table])
    before = ex.render()
    table[REQUESTS][("/", "200")] = 99  # the source broke its promise: not seen
    assert ex.render() == before
    table.changed(REQUESTS)  # a new version: read again
    assert 'test_requests_total{code="200",path="/"} 99.0\n' in ex.render()
    assert_same_as_prometheus_client(ex)


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete", "observe", "version"]),
        st.sampled_from([REQUESTS, TEMPERATURE, LATENCY, SIZES]),
        st.sampled_from([("a", "1"), ("b", "1"), ("a", "2"), ('"', "\n")]),
        st.floats(allow_nan=True, allow_infinity=True, width=32)
        | st.integers(min_value=0, max_value=2**60)
        | st.sampled_from([0.0, -0.0, 0, 1e-9, 0.05, 3600.0]),
    ),
    max_size=25,
)


def apply(table: Table, op: str, family: Family, key: tuple[str, ...], value: float) -> None:
    """One change of `table`, as a source makes them between two scrapes."""
    series = table[family]
    key = key[: len(family.labels)]
    if op == "version":  # the family gets a snapshot version, or loses it
        if table.versioned.pop(family.name, None) is None:
            table.versioned[family.name] = 0
        return
    if op == "delete":
        series.pop(key, None)
    elif family.kind is not Kind.HISTOGRAM:
        series[key] = value
    elif not math.isfinite(value) or value < 0:
        return  # latencies and sizes are finite and not negative
    elif family is LATENCY:
        h = series.setdefault(key, LatencySeries())
        assert isinstance(h, LatencySeries)
        h.record(value)
    else:
        fixed = series.get(key) or FixedBuckets.empty(SIZES.buckets)
        assert isinstance(fixed, FixedBuckets)
        series[key] = fixed.observe(value)
    table.changed(family)


@settings(max_examples=60, deadline=None)
@given(OPERATIONS)
def test_any_sequence_of_changes_renders_as_prometheus_client_does(
    operations: list[tuple[str, Family, tuple[str, ...], float]],
) -> None:
    table = Table([REQUESTS, TEMPERATURE, LATENCY, SIZES])
    ex = Exposition([table])
    for op, family, key, value in operations:
        apply(table, op, family, key, value)
        assert_same_as_prometheus_client(ex)


def test_the_bridge_is_a_prometheus_client_collector() -> None:
    table = every_kind()
    collected = list(SourceCollector(table).collect())
    assert [m.name for m in collected] == [
        "test_requests", "test_temperature_celsius", "test_up", "test_empty",
        "test_latency_seconds", "test_size_bytes",
    ]  # fmt: skip
    latency = collected[4]
    assert latency.type == "histogram"
    # Series sorted by label values; classic buckets ending with +Inf, then count and sum.
    services = [s.labels["service"] for s in latency.samples if s.name.endswith("_count")]
    assert services == ["empty", "plain", "slo"]
    slo_buckets = [s.labels["le"] for s in latency.samples
                   if s.labels["service"] == "slo" and "le" in s.labels]  # fmt: skip
    assert "0.05" in slo_buckets
    assert slo_buckets[-1] == "+Inf"


@given(
    st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, 999_999, 10**6, 2**53 - 1, 2**53, 2**53 + 1, 10**16, True, -0.0])
)
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    assert number(value) == floatToGoString(value)


# -- negotiation and the answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        ("", TEXT),
        ("text/plain", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("application/openmetrics-text", OPENMETRICS),
        (PROMETHEUS_ACCEPT, OPENMETRICS_UNDERSCORES),
        ("application/openmetrics-text; version=1.0.0", OPENMETRICS_UNDERSCORES),
        (
            "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
            "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8",
        ),
        (
            "text/plain;version=1.0.0;escaping=underscores",
            "text/plain; version=1.0.0; charset=utf-8; escaping=underscores",
        ),
    ],
)
def test_text_negotiation_follows_prometheus_client(
    node: NodeState, accept: str, content_type: str
) -> None:
    answer = node.exposition.answer(accept)
    assert answer.content_type == content_type
    negotiated = negotiate(accept)
    assert negotiated.content_type == content_type
    assert negotiated.encoder is not None
    assert answer.body == negotiated.encoder(node.exposition.registry)
    assert answer.body.decode().endswith("# EOF\n") == content_type.startswith("application/")


PB = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (PROTOBUF_ACCEPT, Format.PROTOBUF),
        # As Prometheus 2.42 is documented to send it with native histograms.
        (f"{PB};q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1", Format.PROTOBUF),
        (PB, Format.PROTOBUF),
        (f"{PB};escaping=allow-utf-8", Format.PROTOBUF),
        (f"text/plain;q=0.3, {PB} ; q=0.9", Format.PROTOBUF),
        (f"{PB},text/plain", Format.PROTOBUF),  # a tie: the first listed
        (f"text/plain,{PB}", Format.TEXT),
        (f"application/openmetrics-text;version=1.0.0,{PB};q=0.5", Format.OPENMETRICS),
        (f"{PB};q=0", Format.TEXT),  # not acceptable
        (f"{PB};q=bogus", Format.TEXT),
        (f"{PB};q=0.5,*/*", Format.PROTOBUF),  # a wildcard names no format
        (PB.replace("delimited", "text"), Format.TEXT),  # client_golang's text protobuf
        ("application/vnd.google.protobuf;encoding=delimited", Format.TEXT),
        (PROMETHEUS_ACCEPT, Format.OPENMETRICS),
        ("*/*", Format.TEXT),
    ],
)
def test_protobuf_is_served_when_preferred(accept: str, wanted: Format) -> None:
    ex = Exposition([every_kind()])
    negotiated = negotiate(accept)
    assert negotiated.format is wanted
    answer = ex.answer(accept, "gzip")
    if wanted is Format.PROTOBUF:
        assert answer.content_type == PROTOBUF_CONTENT_TYPE
        assert gzip.decompress(answer.body) == ex.render_protobuf()
    else:
        assert answer.content_type != PROTOBUF_CONTENT_TYPE
        assert gzip.decompress(answer.body) == ex.render(wanted is Format.OPENMETRICS).encode()


media_ranges = st.lists(
    st.tuples(
        st.sampled_from(["text/plain", "application/openmetrics-text", "*/*", "text/html",
                         " application/openmetrics-text ", "Text/Plain"]),
        st.lists(
            st.one_of(
                st.builds("version={}".format, st.sampled_from(
                    ["", "0.0.4", "1.0.0", "1.0", "2", "0.9.9", "1.1.0", " 1.0.0", "x", "1.x"])),
                st.builds("escaping={}".format, st.sampled_from(
                    ["underscores", "allow-utf-8", "dots", "values", "bogus", ""])),
                st.sampled_from(["charset=utf-8", "q=0.5", "version =1.0.0", "junk"]),
            ),
            max_size=4,
        ),
    ),
    max_size=4,
)  # fmt: skip


@given(media_ranges)
def test_text_negotiation_is_prometheus_clients_without_importing_it(
    ranges: list[tuple[str, list[str]]],
) -> None:
    """The content type of a text scrape is decided without prometheus_client (the agent
    does not load it for the common scrapes): the same as its `choose_encoder`, or left to
    it where only it can tell."""
    accept = ",".join(";".join([media, *params]) for media, params in ranges)
    ours = text_content_type(accept)
    try:
        theirs: str | None = choose_encoder(accept)[1]
    except TypeError:  # a version it cannot compare
        theirs = None
    assert ours is None or ours == theirs


def test_the_agent_does_not_import_prometheus_client() -> None:
    """prometheus_client is the tests' reference and the encoder of escaping schemes only it
    implements: importing the agent and answering a Prometheus scrape does not load it."""
    code = (
        "import sys, exporter.agent\n"
        "from exporter.exposition import Exposition\n"
        "from exporter.process import ProcessSource\n"
        "ex = Exposition([ProcessSource()])\n"
        f"for accept in ({PROMETHEUS_ACCEPT!r}, '', 'text/plain;version=0.0.4'):\n"
        "    assert b'process_cpu_seconds_total' in ex.answer(accept).body\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])  # fmt: skip
    assert out.stdout.strip() == "False"


def test_escaping_schemes_only_prometheus_client_knows_are_left_to_it(node: NodeState) -> None:
    accept = "application/openmetrics-text;version=1.0.0;escaping=dots"
    answer = node.exposition.answer(accept, "gzip")
    assert "escaping=dots" in answer.content_type
    body = gzip.decompress(answer.body).decode()
    encoder = negotiate(accept).encoder
    assert encoder is not None
    assert body == encoder(node.exposition.registry).decode()
    assert "tailwatch__pod__events" in body  # dots escaping doubles underscores


@pytest.mark.parametrize("accept", [PROMETHEUS_ACCEPT, "", PROTOBUF_ACCEPT])
def test_bytes_are_kept_while_nothing_changes(node: NodeState, accept: str) -> None:
    ex = node.exposition
    first = ex.answer(accept, "gzip, deflate")
    assert first.gzipped
    plain = ex.answer(accept, "identity")
    assert not plain.gzipped
    assert gzip.decompress(first.body) == plain.body
    assert ex.answer(accept, "gzip").body is first.body  # not compressed again
    assert ex.answer(accept).body is plain.body  # not joined again
    node.probe_round(1)
    moved = ex.answer(accept, "gzip")
    assert moved.body != first.body
    if accept == PROTOBUF_ACCEPT:
        assert gzip.decompress(moved.body) == ex.render_protobuf()
    else:
        encoder = negotiate(accept).encoder
        assert encoder is not None
        assert gzip.decompress(moved.body) == encoder(ex.registry)


class Counted:
    """A latency series that counts how often an encoder reads its classic buckets (the
    text formats) and its native buckets (protobuf)."""

    def __init__(self) -> None:
        self.series = LatencySeries()
        self.classic_reads = self.native_reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.series, name)

    @property
    def bucket_counts(self) -> list[int]:
        self.classic_reads += 1
        return self.series.bucket_counts

    def native_buckets(self) -> tuple[list[int], list[int]]:
        self.native_reads += 1
        return self.series.native_buckets()


def test_prepare_renders_ahead_only_the_formats_scraped() -> None:
    counted = Counted()
    ahead, other = Table([LATENCY]), Table([REQUESTS])
    ahead[LATENCY][("x",)] = counted
    ex = Exposition([other, ahead])
    counted.series.record(0.1)
    ex.prepare(ahead)  # nothing scraped yet: nothing to render ahead
    assert (counted.classic_reads, counted.native_reads) == (0, 0)
    ex.answer(PROMETHEUS_ACCEPT)
    assert (counted.classic_reads, counted.native_reads) == (1, 0)
    counted.series.record(0.2)
    ex.prepare(ahead)  # the text formats only
    assert (counted.classic_reads, counted.native_reads) == (2, 0)
    text = ex.answer(PROMETHEUS_ACCEPT, "gzip")  # found rendered
    assert counted.classic_reads == 2
    assert b'test_latency_seconds_count{service="x"} 2.0' in gzip.decompress(text.body)
    ex.answer(PROTOBUF_ACCEPT)
    assert (counted.classic_reads, counted.native_reads) == (2, 1)
    counted.series.record(0.3)
    ex.prepare(ahead)  # both now
    assert (counted.classic_reads, counted.native_reads) == (3, 2)
    ex.answer(PROTOBUF_ACCEPT)
    ex.answer("")
    assert (counted.classic_reads, counted.native_reads) == (3, 2)
    with pytest.raises(ValueError, match="not a source"):
        ex.prepare(Table([]))


def test_scrapes_at_an_even_pace_are_rendered_ahead_only_just_before_the_next() -> None:
    """Prometheus every 15 s, a sampling pass every second rendering with ahead=2: the
    passes 13 s after a scrape and later render, the others do not; a late scrape keeps
    every pass rendering until it comes."""
    rhythm = ScrapeRhythm()
    assert rhythm.due_within(0.0, 2.0)  # no pace known yet: always
    for at in (100.0, 115.0, 130.0):
        rhythm.scraped(at)
    renders = [t for t in range(131, 146) if rhythm.due_within(float(t), 2.0)]
    assert renders == [143, 144, 145]
    assert rhythm.due_within(160.0, 2.0)  # the scrape at 145 did not come: still rendering
    rhythm.scraped(145.02)  # a little jitter is still an even pace
    assert not rhythm.due_within(146.0, 2.0) and rhythm.due_within(158.5, 2.0)


def test_scrapes_at_an_uneven_pace_are_rendered_ahead_after_every_pass() -> None:
    """Two Prometheus replicas at different offsets (or a person with curl): no pace to
    predict, every pass renders, as without `ahead`."""
    rhythm = ScrapeRhythm()
    for at in (100.0, 103.0, 115.0, 118.0):
        rhythm.scraped(at)
    assert all(rhythm.due_within(float(t), 2.0) for t in range(119, 130))


def test_prepare_ahead_renders_while_the_pace_is_unknown() -> None:
    counted = Counted()
    ahead, other = Table([LATENCY]), Table([REQUESTS])
    ahead[LATENCY][("x",)] = counted
    ex = Exposition([other, ahead])
    ex.answer(PROMETHEUS_ACCEPT)
    counted.series.record(0.1)
    ex.prepare(ahead, ahead=2.0)  # one scrape so far: no pace, render
    assert counted.classic_reads == 2
    for _ in range(3):  # three scrapes within a moment: an even pace of ~0 s, so the next
        ex.answer(PROMETHEUS_ACCEPT)  # can come any time: render
    counted.series.record(0.2)
    ex.prepare(ahead, ahead=2.0)
    assert counted.classic_reads == 3


def test_prepare_and_scrapes_from_two_threads(node: NodeState) -> None:
    """The sampler's thread renders passes while scrapes run: every answer is whole and the
    last one is prometheus_client's."""
    ex = node.exposition
    ex.answer(PROTOBUF_ACCEPT)
    ex.answer(PROMETHEUS_ACCEPT)
    errors: list[BaseException] = []

    def sampler() -> None:
        try:
            for _ in range(30):
                node.sample()
                ex.prepare(node.cgroup_source)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=sampler)
    thread.start()
    while thread.is_alive():
        assert ex.answer(PROMETHEUS_ACCEPT).body.endswith(b"# EOF\n")
        assert ex.answer(PROTOBUF_ACCEPT).body
    thread.join()
    assert not errors
    assert_same_as_prometheus_client(ex)


def test_series_of_a_gone_pod_leave_and_new_events_show(node: NodeState) -> None:
    ex = node.exposition
    gone = node.pods[0]
    before = ex.render()
    assert f'pod="{gone.name}"' in before
    assert ODD_REASON.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") in before
    survivor = node.pods[1]
    restart = node.restart(survivor, survivor.containers[0].name, "OOMKilled")
    node.metrics.record(restart)
    node.remove_pod(gone.namespace, gone.name)
    after = ex.render()
    # Its containers, its pod_info, its restarts and its endpoint's probe series are gone.
    assert f'pod="{gone.name}"' not in after
    assert (
        "tailwatch_container_restarts_total{container="
        f'"{survivor.containers[0].name}",namespace="{survivor.namespace}",'
        f'pod="{survivor.name}",reason="OOMKilled"}} 1.0'
    ) in after
    assert_same_as_prometheus_client(ex)


def test_exposition_passes_promtool(node: NodeState) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; make system-deps)")
    for body in (node.exposition.answer().body, Exposition([every_kind()]).answer().body):
        run = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                             timeout=30, check=False)  # fmt: skip
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
        assert run.stdout.decode().strip() == ""  # no lint remarks either
