"""/metrics content, fast: every family of the metric catalogue (exporter/catalogue.py)
rendered by its kind, straight from the sources' snapshots, in three formats: the
Prometheus text format 0.0.4, OpenMetrics 1.0.0 and the Prometheus protobuf format
(delimited `io.prometheus.client.MetricFamily` messages) whose histograms are native
histograms. A histogram series with exemplars (client latency) has them on its bucket
lines in OpenMetrics and in its native histogram in protobuf; the two text formats share
every other line.

What is kept between two answers: per series, its sample lines (which hold its label
strings: no copy of them is kept apart) and its protobuf message, encoded again only when
the value (a histogram's `version`) changed; per family, its lines joined while its
snapshot's `version` is the same (joining every series' line at each answer costs a
fifth more per scrape); and the answer's bytes (plain or gzip, per format, each only once
asked for) while every piece is the same object.

`SourceCollector` turns a source into prometheus_client families: `Exposition.registry`
collects them from every source, so `generate_latest(exposition.registry)` renders the same
text, slowly; it is the reference the tests compare with, and serves the Accept headers only
prometheus_client implements (escaping schemes other than underscores and allow-utf-8).
prometheus_client is imported only then: the agent does not load it for the common scrapes.
How /metrics is served: docs/metrics.md.
"""

from __future__ import annotations

import gzip
import operator
import struct
import threading
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from itertools import accumulate, chain, compress, pairwise
from math import copysign
from operator import itemgetter, ne, sub
from typing import TYPE_CHECKING, Any, cast

from exporter.catalogue import Family, FamilySnapshot, HistogramValue, Kind, MetricSource
from exporter.core.histogram import (
    NATIVE_SCHEMA,
    NATIVE_ZERO_THRESHOLD,
    Exemplar,
    cumulative_buckets,
    exemplars_by_bucket,
    le_values,
)

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

GZIP_LEVEL = 1  # exposition text compresses ~20x at level 1; higher levels cost 3x the CPU

_compress: Callable[..., bytes] = gzip.compress
try:
    # ISA-L's deflate gzips exposition text ~7x faster than zlib at level 1, to the same
    # size (docs/performance.md); zlib remains for platforms without its wheels.
    from isal.igzip import compress as _isal_compress

    _compress = _isal_compress
except ImportError:  # pragma: no cover
    pass


def gzip_compress(data: bytes) -> bytes:
    return _compress(data, GZIP_LEVEL, mtime=0)


OPENMETRICS_EOF = "# EOF\n"
#: The content type of the Prometheus protobuf format, as client_golang writes it.
PROTOBUF_CONTENT_TYPE = (
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)
#: A format not asked for in this long is not rendered ahead by `Exposition.prepare`.
RECENT_SECONDS = 300.0

# -- text of samples and families ---------------------------------------------------------

_SPECIAL_VALUES = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
_SMALL = 10**6  # below this, Go and Python write a float the same way
_EXACT = 2**53  # integers below this are floats exactly, and repr writes all their digits


def number(value: float) -> str:
    """A sample value exactly as prometheus_client writes it (`floatToGoString`: `5.0`,
    `0.25`, `7.5497472e+07`, `+Inf`), with a shortcut for the common small integers."""
    if type(value) is int and 0 <= value < _EXACT:
        if value < _SMALL:
            return f"{value}.0"
        digits = str(value)  # what repr(float(value)) has before its ".0"
        return f"{f'{digits[0]}.{digits[1:]}'.rstrip('0.')}e+{len(digits) - 1:02d}"
    value = float(value)
    text = repr(value)
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return _SPECIAL_VALUES.get(text, text)


def _count(n: int) -> str:
    """A bucket count or `_count`: an integer, written as `number` writes it."""
    return f"{n}.0" if 0 <= n < _SMALL else number(n)


def escape_label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def label_text(pairs: Iterable[tuple[str, str]]) -> str:
    """`{a="1",b="2"}`, labels sorted by name as prometheus_client writes them; '' for none."""
    items = sorted(pairs)
    if not items:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(v)}"' for name, v in items) + "}"


@dataclass(frozen=True, slots=True)
class FamilyHead:
    """The lines before a family's samples, in each text format."""

    text: str
    openmetrics: str


# prometheus_client's names of the types in the text format.
_TEXT_TYPES = {"unknown": "untyped"}


@lru_cache(maxsize=1024)
def family_head(name: str, kind: str, documentation: str) -> FamilyHead:
    """HELP and TYPE of a counter, gauge, histogram, summary or unknown family, exactly as
    prometheus_client writes them (a counter's `name` is without `_total`)."""
    text_name = f"{name}_total" if kind == "counter" else name
    text_help = documentation.replace("\\", r"\\").replace("\n", r"\n")
    om_help = text_help.replace('"', r"\"")
    return FamilyHead(
        text=f"# HELP {text_name} {text_help}\n# TYPE {text_name} {_TEXT_TYPES.get(kind, kind)}\n",
        openmetrics=f"# HELP {name} {om_help}\n# TYPE {name} {kind}\n",
    )


def exemplar_text(exemplar: Exemplar) -> str:
    """` # {span_id="…",trace_id="…"} value timestamp`: an OpenMetrics exemplar as
    prometheus_client writes one (labels sorted, the timestamp in seconds with nine
    decimals, as its `Timestamp`). Ids are hex: nothing to escape, and the label set is 63
    characters at most (OpenMetrics allows 128)."""
    span = f'span_id="{exemplar.span_id}",' if exemplar.span_id else ""
    seconds, nanos = divmod(exemplar.time_unix_nano, 10**9)
    return (
        f' # {{{span}trace_id="{exemplar.trace_id}"}} {number(exemplar.value)} '
        f"{seconds}.{nanos:09d}"
    )


class HistogramLines:
    """The sample lines of one histogram series (buckets, count, sum) with its label
    strings built once, rendered again only when its version (e.g. count and sum) moves.
    `om_text` is the same lines in OpenMetrics, each bucket's exemplar on its line: the
    same object as `text` for a series without exemplars."""

    __slots__ = ("_count_prefix", "_prefixes", "_sum_prefix", "_version", "bounds", "om_text",
                 "text")  # fmt: skip

    def __init__(self, name: str, labels: Sequence[tuple[str, str]], bounds: tuple[float, ...]):
        self.bounds = bounds
        self._prefixes = [
            f"{name}_bucket{label_text([*labels, ('le', le)])} " for le in le_values(bounds)
        ]
        plain = label_text(labels)
        self._count_prefix = f"{name}_count{plain} "
        self._sum_prefix = f"{name}_sum{plain} "
        self._version: Hashable = _NEVER
        self.text = self.om_text = ""

    def render(self, h: HistogramValue) -> str:
        """The lines of `h` (whose bounds are these), rendered again only when its version
        changed (None: every time)."""
        version = h.version
        if _same_version(version, self._version):
            return self.text
        total = h.sum
        cumulative = list(accumulate(h.bucket_counts))
        count = cumulative[-1]
        prefixes = self._prefixes
        # Cumulative counts are 0 up to the first observation and `count` from the last
        # one on: those runs share their value, so str.join writes them in one go.
        zeros = bisect_right(cumulative, 0)
        top = max(zeros, bisect_left(cumulative, count))
        count_text = _count(count)
        parts = []
        if zeros:
            parts.append("0.0\n".join(prefixes[:zeros]) + "0.0\n")
        middle = zip(prefixes[zeros:top], cumulative[zeros:top], strict=True)
        if count < _SMALL:  # every cumulative count is written as "<n>.0"
            parts += [f"{p}{c}.0\n" for p, c in middle]
        else:
            parts += [f"{p}{_count(c)}\n" for p, c in middle]
        if top < len(prefixes):
            parts.append(f"{count_text}\n".join(prefixes[top:]) + f"{count_text}\n")
        tail = f"{self._count_prefix}{count_text}\n{self._sum_prefix}{number(total)}\n"
        parts.append(tail)
        self.text = "".join(parts)
        exemplars = exemplars_by_bucket(h)
        if exemplars is None:
            self.om_text = self.text
        else:  # rare (client latency with trace ids): every line written apart
            lines = [f"{p}{_count(c)}" for p, c in zip(prefixes, cumulative, strict=True)]
            for bucket, exemplar in exemplars.items():
                lines[bucket] += exemplar_text(exemplar)
            self.om_text = "\n".join(lines) + "\n" + tail
        self._version = version
        return self.text


#: No version seen yet (unequal to every version, None included).
_NEVER: Hashable = object()


def _same_version(version: Hashable, last: Hashable) -> bool:
    """Whether a snapshot's or a series' `version` says it is unchanged since `last`."""
    return version is not None and (version is last or version == last)


# -- protobuf wire format -------------------------------------------------------------------
#
# io.prometheus.client (prometheus/client_model, io/prometheus/client/metrics.proto; Prometheus
# parses it with its own copy, prompb/io/prometheus/client/metrics.proto, same numbers):
#   MetricFamily {name=1 string, help=2 string, type=3 enum, metric=4 repeated Metric}
#   Metric {label=1 repeated LabelPair, gauge=2 Gauge, counter=3 Counter, histogram=7}
#   LabelPair {name=1, value=2}; Gauge, Counter {value=1 double}
#   Histogram {sample_count=1 uint64, sample_sum=2 double, schema=5 sint32,
#     zero_threshold=6 double, zero_count=7 uint64, positive_span=12 repeated BucketSpan,
#     positive_delta=13 repeated sint64}; BucketSpan {offset=1 sint32, length=2 uint32}
# Fields are written in field number order, every field the encoder sets is written even
# when 0 (proto2 presence, as client_golang does), and repeated scalars are not packed:
# client_model's metrics.proto is proto2 without [packed=true], so client_golang writes
# positive_delta unpacked; Prometheus' decoder reads both.

_F64 = struct.Struct("<d").pack
_TYPE_CODES = {Kind.COUNTER: 0, Kind.GAUGE: 1, Kind.HISTOGRAM: 4}


def _varint(n: int) -> bytes:
    """An unsigned varint (n >= 0)."""
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = tuple(bytes((n,)) for n in range(0x80))


def _zigzag(n: int) -> int:
    """sint32/sint64's encoding of a signed integer as an unsigned one (|n| < 2**63)."""
    return (n << 1) ^ (n >> 63)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return bytes(((number << 3) | 2,)) + _varint(len(payload)) + payload


def _label_pairs(names: Sequence[str], values: Sequence[str]) -> bytes:
    """Metric.label: one LabelPair per label, sorted by name."""
    return b"".join(
        _field(1, _field(1, name.encode()) + _field(2, value.encode()))
        for name, value in sorted(zip(names, values, strict=True))
    )


def _delta(d: int) -> bytes:
    """A positive_delta field (13, wire type 0: unpacked)."""
    return b"\x68" + _varint(_zigzag(d))


#: positive_delta fields of the common small deltas: filled by the first protobuf encoding
#: (`_delta_table`), so that an agent scraped in the text formats only does not keep them
#: (8,192 small bytes objects, 0.8 MiB).
_DELTA_LIMIT = 1 << 12
_DELTAS: dict[int, bytes] = {}


def _delta_table() -> dict[int, bytes]:
    if not _DELTAS:
        _DELTAS.update({d: _delta(d) for d in range(-_DELTA_LIMIT, _DELTA_LIMIT)})
    return _DELTAS


#: schema=5 (sint32) and zero_threshold=6 (double): the same for every native histogram.
_NATIVE_LAYOUT = b"\x28" + _varint(_zigzag(NATIVE_SCHEMA)) + b"\x31" + _F64(NATIVE_ZERO_THRESHOLD)


@lru_cache(maxsize=4096)
def _span(offset: int, length: int) -> bytes:
    """A positive_span field (12): BucketSpan {offset, length}."""
    return _field(12, b"\x08" + _varint(_zigzag(offset)) + b"\x10" + _varint(length))


def _spans(indexes: Sequence[int]) -> bytes:
    """The positive_span fields of sorted bucket indexes."""
    # Spans are the runs of consecutive indexes: the runs of equal index - position (never
    # decreasing), whose steps are the gaps between the spans.
    runs = list(map(sub, indexes, range(len(indexes))))
    spans = []
    start = previous = 0
    while start < len(runs):
        run = runs[start]
        end = bisect_right(runs, run, start)
        spans.append(_span(run - previous, end - start))
        start, previous = end, run
    return b"".join(spans)


def _delta_fields(counts: Sequence[int]) -> list[bytes]:
    """The positive_delta fields of bucket counts: each minus the one before, the first
    minus 0."""
    deltas = _delta_table()
    try:
        return list(map(deltas.__getitem__, map(sub, counts, chain((0,), counts))))
    except KeyError:  # a delta beyond the table
        return [deltas.get(d) or _delta(d) for d in map(sub, counts, chain((0,), counts))]


class NativeHistogram:
    """The Histogram message of one series as a native histogram: count, sum, schema, zero
    bucket, spans and deltas of its buckets; no classic buckets. An empty one
    is still native: its zero_threshold is > 0 (Prometheus' `isNativeHistogram`).

    Encoded again from the last encoding: the spans are kept while the bucket indexes are
    the same, and the deltas but around the buckets whose count changed when few did (a
    probe result moves one bucket; an OTLP data point, spread over the fine buckets, most of
    them: such a series is encoded whole for a while before patching is tried again)."""

    __slots__ = ("_counts", "_fields", "_indexes", "_spans", "_unpatched")

    #: Encodings in a row without trying to patch, after too many buckets moved.
    WHOLE_AFTER_MISS = 8

    def __init__(self) -> None:
        self._counts: Sequence[int] = ()
        self._indexes: Sequence[int] = ()
        self._spans = b""
        self._fields: list[bytes] = []
        self._unpatched = 0

    def encode(self, h: HistogramValue) -> bytes:
        indexes, counts = map(tuple, h.native_buckets())  # copies: a source may reuse its lists
        if indexes != self._indexes:
            self._spans = _spans(indexes)
            self._indexes = indexes
            self._fields = _delta_fields(counts)
        elif self._unpatched:
            self._unpatched -= 1
            self._fields = _delta_fields(counts)
        elif not self._patch(counts):
            self._fields = _delta_fields(counts)
        self._counts = counts
        head = [b"\x08", _varint(h.count), b"\x11", _F64(h.sum), _NATIVE_LAYOUT, b"\x38",
                _varint(h.native_zero_count), self._spans]  # fmt: skip
        return b"".join(head + self._fields)

    def _patch(self, counts: Sequence[int]) -> bool:
        """Patch the deltas around the buckets (the same ones as last time) whose count
        moved; False when too many moved for patching to pay."""
        moved = list(compress(range(len(counts)), map(ne, counts, self._counts)))
        if len(moved) * 4 > len(counts):
            self._unpatched = self.WHOLE_AFTER_MISS
            return False
        fields = self._fields
        deltas = _delta_table()
        last = len(counts) - 1
        for i in moved:  # the delta of bucket i and of the one after it
            count = counts[i]
            delta = count - counts[i - 1] if i else count
            fields[i] = deltas.get(delta) or _delta(delta)
            if i < last:
                delta = counts[i + 1] - count
                fields[i + 1] = deltas.get(delta) or _delta(delta)
        return True


_EXEMPLARS_FIELD = b"\x82\x01"  # Histogram.exemplars (16, length-delimited)


def _exemplar_message(exemplar: Exemplar) -> bytes:
    """An io.prometheus.client.Exemplar: its label pairs (sorted by name), value and
    timestamp (a google.protobuf.Timestamp, zero fields left out as proto3 writes them)."""
    names = ("span_id", "trace_id") if exemplar.span_id else ("trace_id",)
    values = (exemplar.span_id, exemplar.trace_id) if exemplar.span_id else (exemplar.trace_id,)
    seconds, nanos = divmod(exemplar.time_unix_nano, 10**9)
    timestamp = (b"\x08" + _varint(seconds) if seconds else b"") + (
        b"\x10" + _varint(nanos) if nanos else b""
    )
    return _label_pairs(names, values) + b"\x11" + _F64(exemplar.value) + _field(3, timestamp)


def exemplar_fields(exemplars: Mapping[int, Exemplar]) -> bytes:
    """The Histogram.exemplars fields (16) of a native histogram, in bucket order: the
    protobuf exposition has no classic buckets whose Bucket.exemplar could hold them.
    Prometheus reads them with native histograms (these carry the timestamp it requires)."""
    out = []
    for _, exemplar in sorted(exemplars.items()):
        message = _exemplar_message(exemplar)
        out.append(_EXEMPLARS_FIELD + _varint(len(message)) + message)
    return b"".join(out)


def native_histogram(h: HistogramValue) -> bytes:
    """The Histogram message of `h` as a native histogram (see `NativeHistogram`)."""
    return NativeHistogram().encode(h)


@lru_cache(maxsize=1024)
def _protobuf_head(name: str, help_text: str, kind: Kind) -> bytes:
    """A MetricFamily's name, help and type fields."""
    return (
        _field(1, name.encode())
        + _field(2, help_text.encode())
        + b"\x18"
        + _varint(_TYPE_CODES[kind])
    )


# -- one family -----------------------------------------------------------------------------

#: A series of any kind, for the encoders' loops (the family's kind says what the value is).
_AnySeries = tuple[tuple[str, ...], Any]


_label_values = itemgetter(0)  # the sort key of a series


class _ScalarLines:
    """The sample lines of a counter or gauge family; a series' line is rendered again only
    when its value changed. A line is kept with its value only (no copy of its labels' text
    apart from it), and in the family's `text`."""

    __slots__ = ("_cache", "_labelnames", "_name", "text")

    def __init__(self, family: Family) -> None:
        self._name = family.name
        self._labelnames = family.labels
        # label values -> [the value, its line], updated in place (no allocation per change)
        self._cache: dict[tuple[str, ...], list[Any]] = {}
        self.text = ""

    def render(self, series: list[_AnySeries]) -> None:
        cache = self._cache
        changed = len(series) != len(cache)
        parts = []
        for key, value in series:
            cached = cache.get(key)
            if cached is None:
                prefix = f"{self._name}{label_text(zip(self._labelnames, key, strict=True))} "
                cached = cache[key] = [value, f"{prefix}{number(value)}\n"]
                changed = True
            elif value != cached[0] or (not value and copysign(1, value) != copysign(1, cached[0])):
                cached[0] = value
                before = cached[1]
                # The line's prefix ends at its last space: a value has none.
                line = f"{before[: before.rindex(' ') + 1]}{number(value)}\n"
                if line != before:
                    cached[1] = line
                    changed = True
            parts.append(cached[1])
        if len(cache) != len(series):  # series are gone
            self._cache = {key: cache[key] for key, _ in series}
        if changed:  # else the same series with the same lines: the same object as before
            self.text = "".join(parts)

    @property
    def om_text(self) -> str:
        """The lines in OpenMetrics: the same (no exemplars on counters and gauges)."""
        return self.text


class _HistogramLines:
    """The sample lines of a histogram family (classic buckets); a series is rendered again
    only when its version changed. `om_text` is `text` unless a series has exemplars."""

    __slots__ = ("_cache", "_labelnames", "_name", "om_text", "text")

    def __init__(self, family: Family) -> None:
        self._name = family.name
        self._labelnames = family.labels
        self._cache: dict[tuple[str, ...], HistogramLines] = {}
        self.text = self.om_text = ""

    def render(self, series: list[_AnySeries]) -> None:
        cache = self._cache
        changed = len(series) != len(cache)
        parts: list[str] = []
        om_parts: list[str] | None = None  # made at the first series with exemplars
        for key, h in series:
            lines = cache.get(key)
            bounds = h.bounds
            if lines is None or (lines.bounds is not bounds and lines.bounds != bounds):
                pairs = list(zip(self._labelnames, key, strict=True))
                lines = cache[key] = HistogramLines(self._name, pairs, bounds)
                changed = True
            before = lines.text
            text = lines.render(h)
            changed = changed or text is not before
            if lines.om_text is not text and om_parts is None:
                om_parts = parts.copy()
            parts.append(text)
            if om_parts is not None:
                om_parts.append(lines.om_text)
        if len(cache) != len(series):  # series are gone
            self._cache = {key: cache[key] for key, _ in series}
        if changed:  # an exemplar that changed changed its series' version, so its text
            self.text = "".join(parts)
            self.om_text = self.text if om_parts is None else "".join(om_parts)


class _ScalarProtobuf:
    """The Metric messages of a counter or gauge family; a series' message is encoded again
    only when its value changed."""

    __slots__ = ("_cache", "_labelnames", "_value_field", "parts")

    def __init__(self, family: Family) -> None:
        self._labelnames = family.labels
        # Metric.counter (3) or Metric.gauge (2), each a message of one double (field 1).
        self._value_field = b"\x1a\x09\x09" if family.kind is Kind.COUNTER else b"\x12\x09\x09"
        # label values -> [the value, the message: its last 8 bytes are the value's double]
        self._cache: dict[tuple[str, ...], list[Any]] = {}
        self.parts: list[bytes] = []

    def render(self, series: list[_AnySeries]) -> bool:
        """Whether any message changed."""
        cache = self._cache
        changed = len(series) != len(cache)
        parts = []
        for key, value in series:
            cached = cache.get(key)
            if cached is None:
                labels = _label_pairs(self._labelnames, key)
                # The message's length is known before its value: 11 bytes for it.
                prefix = b"\x22" + _varint(len(labels) + 11) + labels + self._value_field
                cached = cache[key] = [value, prefix + _F64(value)]
                changed = True
            elif value != cached[0] or (not value and copysign(1, value) != copysign(1, cached[0])):
                cached[0] = value
                before = cached[1]
                message = before[:-8] + _F64(value)
                if message != before:
                    cached[1] = message
                    changed = True
            parts.append(cached[1])
        if len(cache) != len(series):
            self._cache = {key: cache[key] for key, _ in series}
        self.parts = parts
        return changed


class _HistogramProtobuf:
    """The Metric messages of a histogram family, as native histograms; a series' message is
    encoded again only when its version changed."""

    __slots__ = ("_cache", "_labelnames", "parts")

    def __init__(self, family: Family) -> None:
        self._labelnames = family.labels
        # label values -> [the label pairs, the version, the whole message, its histogram]
        self._cache: dict[tuple[str, ...], list[Any]] = {}
        self.parts: list[bytes] = []

    def render(self, series: list[_AnySeries]) -> bool:
        cache = self._cache
        changed = len(series) != len(cache)
        parts = []
        for key, h in series:
            cached = cache.get(key)
            if cached is None:
                labels = _label_pairs(self._labelnames, key)
                cached = cache[key] = [labels, _NEVER, b"", NativeHistogram()]
            version = h.version
            if not _same_version(version, cached[1]):
                cached[1] = version
                histogram = cached[3].encode(h)
                exemplars = exemplars_by_bucket(h)
                if exemplars is not None:
                    histogram += exemplar_fields(exemplars)
                labels = cached[0]
                size = _varint(len(histogram))
                message = b"".join((b"\x22", _varint(len(labels) + 1 + len(size) + len(histogram)),
                                    labels, b"\x3a", size, histogram))  # fmt: skip
                if message != cached[2]:
                    cached[2] = message
                    changed = True
            parts.append(cached[2])
        if len(cache) != len(series):
            self._cache = {key: cache[key] for key, _ in series}
        self.parts = parts
        return changed


class _FamilyEncoder:
    """One family in every format: the text formats' sample lines (shared by text and
    OpenMetrics, between their heads, unless a series has exemplars) and the delimited
    protobuf message, each kept while the family's snapshot version is the same."""

    __slots__ = ("_lines", "_lines_version", "_protobuf", "_protobuf_version", "family",
                 "head", "message")  # fmt: skip

    def __init__(self, family: Family) -> None:
        self.family = family
        self.head = family_head(family.base_name, family.kind.value, family.help)
        histogram = family.kind is Kind.HISTOGRAM
        self._lines = _HistogramLines(family) if histogram else _ScalarLines(family)
        self._protobuf = _HistogramProtobuf(family) if histogram else _ScalarProtobuf(family)
        self._lines_version: Hashable = _NEVER
        self._protobuf_version: Hashable = _NEVER
        #: The delimited MetricFamily message; b"" for a family without series.
        self.message = b""

    @property
    def lines(self) -> str:
        return self._lines.text

    @property
    def om_lines(self) -> str:
        """The lines in OpenMetrics: `lines`, but for a histogram's exemplars."""
        return self._lines.om_text

    def update(self, snapshot: FamilySnapshot, lines: bool, protobuf: bool) -> None:
        version = snapshot.version
        lines = lines and not _same_version(version, self._lines_version)
        protobuf = protobuf and not _same_version(version, self._protobuf_version)
        if not (lines or protobuf):
            return
        series: list[_AnySeries] = sorted(snapshot.series, key=_label_values)
        if lines:
            self._lines.render(series)
            self._lines_version = version
        if protobuf:
            if self._protobuf.render(series):
                self.message = self._delimited(self._protobuf.parts)
            self._protobuf_version = version

    def _delimited(self, metrics: list[bytes]) -> bytes:
        if not metrics:
            return b""
        family = self.family
        head = _protobuf_head(family.name, family.help, family.kind)
        size = len(head) + sum(map(len, metrics))
        return b"".join([_varint(size), head, *metrics])


# -- the reference: prometheus_client's families ----------------------------------------------


def metric_family(snapshot: FamilySnapshot) -> Metric:
    """A family snapshot as a prometheus_client family, series sorted by label values: what
    prometheus_client's encoders render the same as `Exposition` does."""
    from prometheus_client.core import (  # noqa: PLC0415 (only the reference loads it)
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    family = snapshot.family
    series: list[_AnySeries] = sorted(snapshot.series, key=_label_values)
    labels = list(family.labels)
    if family.kind is Kind.HISTOGRAM:
        histogram = HistogramMetricFamily(family.name, family.help, labels=labels)
        for key, h in series:
            buckets: list[Any] = cumulative_buckets(h.bounds, h.bucket_counts)
            exemplars = exemplars_by_bucket(h)
            if exemplars is not None:
                buckets = [
                    (le, n, _client_exemplar(exemplars[b])) if b in exemplars else (le, n)
                    for b, (le, n) in enumerate(buckets)
                ]
            histogram.add_metric(list(key), buckets, h.sum)
        return histogram
    metric: CounterMetricFamily | GaugeMetricFamily
    if family.kind is Kind.COUNTER:
        metric = CounterMetricFamily(family.base_name, family.help, labels=labels)
    else:
        metric = GaugeMetricFamily(family.name, family.help, labels=labels)
    for key, value in series:
        metric.add_metric(list(key), value)
    return metric


def _client_exemplar(exemplar: Exemplar) -> Any:
    """An exemplar as prometheus_client's Exemplar."""
    from prometheus_client.samples import Exemplar as ClientExemplar  # noqa: PLC0415
    from prometheus_client.samples import Timestamp  # noqa: PLC0415

    labels = {"trace_id": exemplar.trace_id}
    if exemplar.span_id:
        labels["span_id"] = exemplar.span_id
    seconds, nanos = divmod(exemplar.time_unix_nano, 10**9)
    return ClientExemplar(labels, exemplar.value, Timestamp(seconds, nanos))


class SourceCollector:
    """A MetricSource as a prometheus_client Collector (which is a protocol: `collect`)."""

    def __init__(self, source: MetricSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for snapshot in self.source.snapshot():
            yield metric_family(snapshot)


class SourcesCollector:
    """Every source of an exposition as one prometheus_client Collector, what a
    CollectorRegistry of their `SourceCollector`s collects, without importing
    prometheus_client until it is collected."""

    def __init__(self, sources: Iterable[MetricSource]) -> None:
        self.collectors = [SourceCollector(s) for s in sources]

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


# -- content negotiation ------------------------------------------------------------------


class Format(StrEnum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"
    PROTOBUF = "protobuf"


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What an Accept header asks for: protobuf when it prefers that, else what
    prometheus_client's `choose_encoder` decides."""

    format: Format
    content_type: str
    # False: an escaping scheme for names (dots, values) only prometheus_client implements.
    fast: bool
    accept: str = ""

    @property
    def openmetrics(self) -> bool:
        return self.format is Format.OPENMETRICS

    @property
    def encoder(self) -> Callable[[Collector], bytes] | None:
        """prometheus_client's encoder of the text formats (None for protobuf): importing
        it is left to the scrapes that need it."""
        if self.format is Format.PROTOBUF:
            return None
        from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

        return choose_encoder(self.accept)[0]


_FAST_ESCAPING = ("", "underscores", "allow-utf-8")  # the same text for our legacy names
_PROTOBUF_TYPE = "application/vnd.google.protobuf"
_TEXT_MEDIA_TYPES = ("text/plain", "application/openmetrics-text")


def _media_ranges(accept: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(media type, parameters, quality) of each media range of an Accept header."""
    for media_range in accept.split(","):
        media_type, *tokens = media_range.split(";")
        params: dict[str, str] = {}
        for token in tokens:
            key, _, value = token.strip().partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        yield media_type.strip().lower(), params, q if 0.0 <= q <= 1.0 else 0.0


def prefers_protobuf(accept: str) -> bool:
    """Whether `accept` asks for the protobuf format (delimited MetricFamily messages) with a
    higher quality than either text format, the first listed winning a tie, as client_golang
    negotiates. Wildcards name no format: they get the text format."""
    protobuf = (0.0, 0)  # the best quality, and minus the position of its first range
    text = (0.0, 0)
    for position, (media_type, params, q) in enumerate(_media_ranges(accept)):
        if media_type == _PROTOBUF_TYPE:
            if (
                params.get("proto") == "io.prometheus.client.MetricFamily"
                and params.get("encoding") == "delimited"
            ):
                protobuf = max(protobuf, (q, -position))
        elif media_type in _TEXT_MEDIA_TYPES:
            text = max(text, (q, -position))
    return protobuf[0] > 0 and protobuf > text


#: prometheus_client's content types of the text formats without an escaping parameter.
_TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
_TEXT_1_0_0 = "text/plain; version=1.0.0; charset=utf-8"
_OPENMETRICS_1_0_0 = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")


def _token(tokens: list[str], name: str) -> str | None:
    """The value of the first `name=value` parameter, as prometheus_client reads it."""
    for token in tokens:
        if "=" not in token:
            continue
        key, value = token.strip().split("=", 1)
        if key == name:
            return value
    return None


def _at_least_1(version: str) -> bool | None:
    """Whether a version is 1.0.0 or later; None when it is not all numbers (prometheus_client
    compares such a version part by part with mixed types: left to it)."""
    try:
        return tuple(int(part) for part in version.split(".")) >= (1, 0, 0)
    except ValueError:
        return None


def text_content_type(accept: str) -> str | None:
    """The content type prometheus_client's `choose_encoder` answers `accept` with (its
    logic, without importing it), or None where only it can tell."""
    for accepted in accept.split(","):
        tokens = accepted.split(";")
        media_type = tokens[0].strip()
        if media_type not in _TEXT_MEDIA_TYPES:
            continue
        version = _token(tokens, "version") or ""
        escaping = _token(tokens, "escaping")
        escaping = escaping if escaping in _ESCAPINGS else "underscores"
        openmetrics = media_type == "application/openmetrics-text"
        if openmetrics and not version:
            return _OPENMETRICS_1_0_0
        if version:
            newer = _at_least_1(version)
            if newer is None:
                return None
            if newer and openmetrics:
                return f"{media_type}; version={version}; charset=utf-8; escaping={escaping}"
            if newer:
                return f"{_TEXT_1_0_0}; escaping={escaping}"
    return _TEXT_0_0_4


@lru_cache(maxsize=32)
def negotiate(accept: str) -> Negotiated:
    if prefers_protobuf(accept):
        return Negotiated(Format.PROTOBUF, PROTOBUF_CONTENT_TYPE, fast=True)
    content_type = text_content_type(accept)
    if content_type is None:
        from prometheus_client.exposition import choose_encoder  # noqa: PLC0415

        content_type = choose_encoder(accept)[1]
    escaping = ""
    for token in content_type.split(";"):
        key, _, value = token.strip().partition("=")
        if key == "escaping":
            escaping = value
    openmetrics = content_type.startswith("application/openmetrics-text")
    return Negotiated(
        format=Format.OPENMETRICS if openmetrics else Format.TEXT,
        content_type=content_type,
        fast=escaping in _FAST_ESCAPING,
        accept=accept,
    )


# -- the served answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsAnswer:
    body: bytes
    content_type: str
    gzipped: bool


class _Body:
    """One exposition as bytes, plain or gzipped, each made on first demand and then kept (a
    scraper that always asks for gzip never keeps the 1-2 MB plain copy), with the parts it
    was joined from: the next answer made of the very same part objects is the same."""

    __slots__ = ("_gzipped", "_plain", "parts")

    def __init__(self, parts: list[str] | list[bytes]) -> None:
        self.parts = parts
        self._plain: bytes | None = None
        self._gzipped: bytes | None = None

    def same_parts(self, parts: list[str] | list[bytes]) -> bool:
        return len(parts) == len(self.parts) and all(map(operator.is_, parts, self.parts))

    def _join(self) -> bytes:
        parts = self.parts
        if parts and isinstance(parts[0], str):
            return "".join(parts).encode()
        return b"".join(cast("list[bytes]", parts))

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = self._join()
        return self._plain

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip_compress(self._plain or self._join())
        return self._gzipped


class _SourceEncoder:
    """The family encoders of one source, in the order of its snapshot."""

    __slots__ = ("_by_name", "families", "source")

    def __init__(self, source: MetricSource) -> None:
        self.source = source
        self._by_name: dict[str, _FamilyEncoder] = {}
        self.families: list[_FamilyEncoder] = []

    def update(self, lines: bool, protobuf: bool) -> None:
        by_name, families = self._by_name, []
        for snapshot in self.source.snapshot():
            family = snapshot.family
            encoder = by_name.get(family.name)
            if encoder is None or (encoder.family is not family and encoder.family != family):
                encoder = by_name[family.name] = _FamilyEncoder(family)
            encoder.update(snapshot, lines, protobuf)
            families.append(encoder)
        self.families = families


class ScrapeRhythm:
    """When the next scrape of a format can come, from the times of the last ones.

    Prometheus scrapes a target at a fixed interval, each target at its own fixed offset:
    after three scrapes at an even pace the next one is known to within the pace's jitter.
    Rendering the cgroup families ahead after every sampling pass (every second) when the
    scrape comes every 15 s renders them fourteen times for nothing; `due_within` lets
    `Exposition.prepare` render them only in the passes just before the next scrape.
    When the pace is not known (fewer than three scrapes) or not even (two Prometheus
    replicas at different offsets, a person with curl), every pass renders, as before.
    """

    __slots__ = ("_times",)

    #: Gaps between scrapes that differ by more than this share are not one even pace.
    EVEN = 0.1

    def __init__(self) -> None:
        self._times: deque[float] = deque(maxlen=4)

    def scraped(self, now: float) -> None:
        self._times.append(now)

    def due_within(self, now: float, horizon: float) -> bool:
        """Can the next scrape come within `horizon` seconds of `now` (or is it late)?"""
        times = self._times
        if len(times) < 3:
            return True
        gaps = [later - earlier for earlier, later in pairwise(times)]
        shortest, longest = min(gaps), max(gaps)
        if longest - shortest > self.EVEN * longest:
            return True
        return now >= times[-1] + shortest - horizon


class Exposition:
    """The /metrics content of a set of metric sources.

    Every answer is rendered from the sources' current snapshots (so a watch event is
    visible at the next scrape and the series of gone pods are gone), but only what changed
    is encoded again (see the module's docstring). `prepare(source)` encodes one source's
    families ahead of a scrape, e.g. from the cgroup sampler's thread after each pass.
    """

    def __init__(self, sources: Iterable[MetricSource]) -> None:
        self.sources = list(sources)
        self.registry = SourcesCollector(self.sources)
        self._encoders = [_SourceEncoder(s) for s in self.sources]
        self._lock = threading.Lock()
        self._bodies: dict[Format, _Body] = {}
        # When each encoding was last asked for: the text formats' lines, protobuf.
        self._asked_lines = self._asked_protobuf = -float("inf")
        # The pace of each encoding's scrapes, for `prepare`'s `ahead`.
        self._rhythm_lines, self._rhythm_protobuf = ScrapeRhythm(), ScrapeRhythm()

    def prepare(self, source: MetricSource, ahead: float | None = None) -> None:
        """Encode `source`'s families now, in the formats scraped in the last
        RECENT_SECONDS, so that the next scrape finds them encoded. With `ahead` (seconds),
        only a format whose next scrape can come within `ahead` (`ScrapeRhythm`): a caller
        that prepares after every change passes the time to its next change after that,
        so the last change before a scrape is always encoded ahead. Thread-safe."""
        for encoder in self._encoders:
            if encoder.source is source:
                break
        else:
            raise ValueError(f"{source!r} is not a source of this exposition")
        now = time.monotonic()
        lines = now - self._asked_lines < RECENT_SECONDS
        protobuf = now - self._asked_protobuf < RECENT_SECONDS
        if ahead is not None:
            lines = lines and self._rhythm_lines.due_within(now, ahead)
            protobuf = protobuf and self._rhythm_protobuf.due_within(now, ahead)
        if lines or protobuf:
            with self._lock:
                encoder.update(lines, protobuf)

    def _parts(self, format: Format) -> list[str] | list[bytes]:
        """The pieces of the whole answer in `format`, every family encoded now (the lock
        held)."""
        protobuf = format is Format.PROTOBUF
        now = time.monotonic()
        if protobuf:
            self._asked_protobuf = now
            self._rhythm_protobuf.scraped(now)
        else:
            self._asked_lines = now
            self._rhythm_lines.scraped(now)
        for encoder in self._encoders:
            encoder.update(not protobuf, protobuf)
        families = [f for encoder in self._encoders for f in encoder.families]
        if protobuf:
            return [f.message for f in families if f.message]
        parts: list[str] = []
        openmetrics = format is Format.OPENMETRICS
        for f in families:
            if openmetrics:
                parts += (f.head.openmetrics, f.om_lines)
            else:
                parts += (f.head.text, f.lines)
        if openmetrics:
            parts.append(OPENMETRICS_EOF)
        return parts

    def _body(self, format: Format) -> _Body:
        with self._lock:
            parts = self._parts(format)
            cached = self._bodies.get(format)
            if cached is None or not cached.same_parts(parts):
                cached = self._bodies[format] = _Body(parts)
            return cached

    def render(self, openmetrics: bool = False) -> str:
        """The exposition text, in the Prometheus text format 0.0.4 or OpenMetrics 1.0.0."""
        with self._lock:
            parts = self._parts(Format.OPENMETRICS if openmetrics else Format.TEXT)
        return "".join(cast("list[str]", parts))

    def render_protobuf(self) -> bytes:
        """The exposition in the Prometheus protobuf format: delimited MetricFamily
        messages, families without series left out."""
        with self._lock:
            parts = self._parts(Format.PROTOBUF)
        return b"".join(cast("list[bytes]", parts))

    def answer(self, accept: str = "", accept_encoding: str = "") -> MetricsAnswer:
        """The /metrics response for these request headers."""
        negotiated = negotiate(accept)
        want_gzip = "gzip" in accept_encoding
        if not negotiated.fast:
            encoder = negotiated.encoder
            assert encoder is not None  # only the text formats have schemes
            body = encoder(self.registry)
            if want_gzip:
                body = gzip_compress(body)
            return MetricsAnswer(body, negotiated.content_type, want_gzip)
        cached = self._body(negotiated.format)
        body = cached.gzipped() if want_gzip else cached.plain()
        return MetricsAnswer(body, negotiated.content_type, want_gzip)
