"""/metrics content, fast: every collector's families rendered straight from the agent's
state into exposition text, label strings built once per series and unchanged series
reused, and the answer kept as bytes (text 0.0.4 and OpenMetrics, plain and gzip) until its
content changes.

The collectors stay prometheus_client Collectors: `Exposition.registry` holds the same
ones, so `generate_latest(exposition.registry)` renders the same content, slowly; it is the
reference the tests compare with. How /metrics is served: docs/metrics.md.
"""

from __future__ import annotations

import gzip
import logging
import operator
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import NamedTuple, Protocol

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as prometheus_text
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from exporter.cgroups.collector import (
    COLLECTOR_DURATION,
    COLLECTOR_NAME,
    CONTAINER_LABELS,
    CPU_PERIODS,
    CPU_THROTTLED,
    CPU_THROTTLED_PERIODS,
    CPU_USAGE,
    MEMORY_LIMIT,
    MEMORY_WORKING_SET,
    OOM_KILLS,
    PRESSURE,
    CgroupCollector,
)
from exporter.cgroups.sampler import CgroupSample, ResourcePressure, SamplePass
from exporter.core.buckets import FixedBuckets
from exporter.core.histogram import LatencySeries, le_string
from exporter.metrics import CLIENT_DURATION, ClientLatencyCollector
from exporter.probe.collector import (
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_SCHEDULE_LAG,
    ProbeCollector,
)

log = logging.getLogger("tailwatch.exposition")

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
    """The lines before a family's samples, in each format. For a family rendered by
    prometheus_client itself (see `CollectedFamilies`) it is the whole family."""

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


class RenderedFamily(NamedTuple):
    head: FamilyHead
    # The sample lines, the same in both formats, in pieces (one per series or container)
    # that are joined only into the whole answer: no second copy of the text is kept.
    samples: Sequence[str]


@lru_cache(maxsize=64)
def _le_values(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return (*(le_string(b) for b in bounds), "+Inf")


class HistogramLines:
    """The sample lines of one histogram series (buckets, count, sum) with its label
    strings built once, rendered again only when its version (e.g. count and sum) moves."""

    __slots__ = ("_count_prefix", "_prefixes", "_sum_prefix", "_text", "_version", "bounds")

    def __init__(self, name: str, labels: Sequence[tuple[str, str]], bounds: tuple[float, ...]):
        self.bounds = bounds
        self._prefixes = [
            f"{name}_bucket{label_text([*labels, ('le', le)])} " for le in _le_values(bounds)
        ]
        plain = label_text(labels)
        self._count_prefix = f"{name}_count{plain} "
        self._sum_prefix = f"{name}_sum{plain} "
        self._version: Hashable = None
        self._text = ""

    def render(self, counts: Sequence[int], total: float, version: Hashable) -> str:
        """`counts`: per bucket, not cumulative, the last one +Inf; `version` changes
        whenever the counts or the sum do."""
        if version == self._version and version is not None:
            return self._text
        cumulative = list(accumulate(counts))
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
        parts.append(f"{self._count_prefix}{count_text}\n{self._sum_prefix}{number(total)}\n")
        self._text = "".join(parts)
        self._version = version
        return self._text


def _latency_version(series: LatencySeries) -> Hashable:
    return (series.count, series.sum)


class _HistogramFamily:
    """One histogram family of many series keyed by label values; series that are gone
    from the source leave the cache with it."""

    def __init__(self, name: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], HistogramLines] = {}

    def render_latency(self, series: Iterable[tuple[tuple[str, ...], LatencySeries]]) -> list[str]:
        old, new = self._series, {}
        parts = []
        for key, s in sorted(series, key=lambda item: item[0]):
            lines = old.get(key)
            if lines is None or lines.bounds is not s.bounds:
                lines = HistogramLines(
                    self.name, list(zip(self.labelnames, key, strict=True)), s.bounds
                )
            new[key] = lines
            parts.append(lines.render(s.bucket_counts, s.sum, _latency_version(s)))
        self._series = new
        return parts


class _CounterFamily:
    """One counter or gauge family of many series keyed by label values."""

    def __init__(self, sample_name: str, labelnames: Sequence[str]) -> None:
        self.sample_name = sample_name
        self.labelnames = tuple(labelnames)
        self._prefixes: dict[tuple[str, ...], str] = {}
        self._text = ""

    def render(self, values: Iterable[tuple[tuple[str, ...], float]]) -> list[str]:
        old, new = self._prefixes, {}
        parts = []
        for key, value in sorted(values):
            prefix = old.get(key)
            if prefix is None:
                prefix = f"{self.sample_name}{label_text(zip(self.labelnames, key, strict=True))} "
            new[key] = prefix
            parts.append(f"{prefix}{number(value)}\n")
        self._prefixes = new
        text = "".join(parts)
        if text != self._text:  # else the same object as last time: unchanged by identity
            self._text = text
        return [self._text]


# -- renderers: one per collector -----------------------------------------------------------


class FamilyRenderer(Protocol):
    """Renders the families of one collector, in the order its `collect()` yields them."""

    def families(self) -> Sequence[RenderedFamily]: ...


class _Metrics(Collector):
    """A fixed list of families, for prometheus_client's encoders."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


_PLAIN_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "unknown"})
_OPENMETRICS_ONLY_SUFFIXES = ("_created", "_gsum", "_gcount")


_LabelKey = tuple[tuple[str, str], ...]


class CollectedFamilies:
    """Any collector: its `collect()` output rendered with cached label strings, and a family
    whose samples equal last time's not rendered again (comparing samples costs a third of
    rendering them). Families this renderer does not write itself (units, timestamps,
    exemplars, `_created` samples, info and stateset types) are written by prometheus_client's
    own encoders."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        # By family name: last time's samples, their rendering, and the label strings.
        self._last: dict[str, tuple[list[Sample], RenderedFamily, dict[_LabelKey, str]]] = {}

    def families(self) -> list[RenderedFamily]:
        last, kept, out = self._last, {}, []
        for metric in self.collector.collect():
            before = last.get(metric.name)
            if before is not None and before[0] == metric.samples:
                kept[metric.name] = before
                out.append(before[1])
                continue
            labels: dict[_LabelKey, str] = {}
            if not _plain(metric):
                family = _rendered_by_prometheus_client(metric)
            else:
                cached = before[2] if before is not None else {}
                parts = []
                for s in metric.samples:
                    key = tuple(s.labels.items())
                    text = cached.get(key)
                    if text is None:
                        text = label_text(key)
                    labels[key] = text
                    parts.append(f"{s.name}{text} {number(s.value)}\n")
                head = family_head(metric.name, metric.type, metric.documentation)
                family = RenderedFamily(head, ["".join(parts)])
            kept[metric.name] = (metric.samples, family, labels)
            out.append(family)
        self._last = kept
        return out


def _plain(metric: Metric) -> bool:
    if metric.type not in _PLAIN_TYPES or metric.unit:
        return False
    extra = tuple(metric.name + suffix for suffix in _OPENMETRICS_ONLY_SUFFIXES)
    return all(
        s.timestamp is None
        and s.exemplar is None
        and s.native_histogram is None
        and s.name not in extra
        for s in metric.samples
    )


def _rendered_by_prometheus_client(metric: Metric) -> RenderedFamily:
    one = _Metrics([metric])
    openmetrics: str = openmetrics_text(one).decode()  # type: ignore[no-untyped-call]
    head = FamilyHead(
        text=prometheus_text(one).decode(),
        openmetrics=openmetrics.removesuffix(OPENMETRICS_EOF),
    )
    return RenderedFamily(head, ())


class _ContainerLines:
    """The sample lines of one container in each cgroup family, label strings built once.

    Recomputed only for a new `CgroupSample` (the sampler keeps the same one when none of
    the container's files changed), and then only for the values that moved: on a busy
    node CPU usage, working set and CPU pressure change every pass, the limit, periods and
    OOM kills seldom.
    """

    __slots__ = ("_labels", "_lines", "_prefixes", "_pressure", "_sample", "_values")

    def __init__(self, namespace: str, pod: str, container: str) -> None:
        values = (namespace, pod, container)
        labels = label_text(zip(CONTAINER_LABELS, values, strict=True))
        self._labels = values
        self._prefixes = [f"{name}{labels} " for name in _CGROUP_SAMPLE_NAMES]
        # resource -> (its last ResourcePressure, its lines, the some and full prefixes)
        self._pressure: dict[str, tuple[ResourcePressure | None, str, str, str]] = {}
        self._sample: CgroupSample | None = None
        self._values: tuple[float | None, ...] = (None,) * len(_CGROUP_SAMPLE_NAMES)
        self._lines: tuple[str, ...] = ("",) * len(_CGROUP_FAMILIES)

    def _pressure_lines(self, p: ResourcePressure) -> str:
        cached = self._pressure.get(p.resource)
        if cached is None:
            cached = (None, "", self._pressure_prefix(p.resource, "some"),
                      self._pressure_prefix(p.resource, "full"))  # fmt: skip
        elif cached[0] is p:  # the sampler keeps the object of an unchanged PSI file
            return cached[1]
        _, _, some, full = cached
        lines = f"{some}{number(p.some_seconds)}\n"
        if p.full_seconds is not None:
            lines += f"{full}{number(p.full_seconds)}\n"
        self._pressure[p.resource] = (p, lines, some, full)
        return lines

    def _pressure_prefix(self, resource: str, kind: str) -> str:
        pairs = [
            *zip(CONTAINER_LABELS, self._labels, strict=True),
            ("resource", resource),
            ("kind", kind),
        ]
        return f"{_PRESSURE_SAMPLE}{label_text(pairs)} "

    def lines(self, s: CgroupSample) -> tuple[str, ...]:
        """One string per family of `_CGROUP_FAMILIES`, '' where the sample has no value;
        the same conditions as `CgroupCollector.collect`."""
        if s is self._sample:
            return self._lines
        # In _CGROUP_SAMPLE_NAMES' order; the pressure family comes between limit and OOM.
        values = (
            s.cpu_usage_seconds,
            s.cpu_throttled_seconds,
            s.cpu_throttled_periods,
            s.cpu_periods,
            s.memory_working_set_bytes,
            s.memory_limit_bytes,
            None if s.oom_kills is None else s.oom_kills_seen,
        )
        last = self._lines
        if values == self._values:
            usage, throttled, throttled_periods, periods, working_set, limit, _, oom = last
        else:
            usage, throttled, throttled_periods, periods, working_set, limit, oom = (
                line if value == before else "" if value is None else f"{p}{number(value)}\n"
                for value, before, line, p in zip(
                    values, self._values, (*last[:6], last[7]), self._prefixes, strict=True
                )
            )
        if self._sample is not None and s.pressure is self._sample.pressure:
            pressure = last[6]
        else:
            pressure = "".join([self._pressure_lines(p) for p in s.pressure])
        self._sample, self._values = s, values
        self._lines = (usage, throttled, throttled_periods, periods, working_set, limit,
                       pressure, oom)  # fmt: skip
        return self._lines


# The cgroup families in `CgroupCollector.collect`'s order: (name, help), type.
_CGROUP_FAMILIES = (
    (CPU_USAGE, "counter"),
    (CPU_THROTTLED, "counter"),
    (CPU_THROTTLED_PERIODS, "counter"),
    (CPU_PERIODS, "counter"),
    (MEMORY_WORKING_SET, "gauge"),
    (MEMORY_LIMIT, "gauge"),
    (PRESSURE, "counter"),
    (OOM_KILLS, "counter"),
)
# The sample names of the families with one sample per container (pressure has several).
_CGROUP_SAMPLE_NAMES = tuple(
    f"{name}_total" if kind == "counter" else name
    for (name, _), kind in _CGROUP_FAMILIES
    if name != PRESSURE[0]
)
_PRESSURE_SAMPLE = f"{PRESSURE[0]}_total"


class CgroupFamilies:
    """`CgroupCollector`'s families from the sampler's latest pass: rendered again only
    after a new pass, and then only for the containers whose sample changed.

    `prepare` renders a pass ahead of the scrape, from the sampler's thread right after the
    pass: a busy node changes every container every second, and its ~3 ms of rendering then
    is not part of a scrape's answer (docs/performance.md). A lock keeps the two threads
    from rendering at once.
    """

    def __init__(self, collector: CgroupCollector) -> None:
        self.collector = collector
        self._lock = threading.Lock()
        self._heads = [family_head(name, kind, doc) for (name, doc), kind in _CGROUP_FAMILIES]
        self._containers: dict[tuple[str, str, str], _ContainerLines] = {}
        self._pass: SamplePass | None = None
        self._families: list[RenderedFamily] = self._render(None)
        name, doc = COLLECTOR_DURATION
        self._duration_head = family_head(name, "histogram", doc)
        self._durations = _FixedHistogram(COLLECTOR_DURATION[0], [("collector", COLLECTOR_NAME)])

    def prepare(self) -> None:
        """Render the sampler's latest pass now, if it is not rendered yet."""
        with self._lock:
            latest = self.collector.sampler.latest
            if latest is not self._pass:
                self._families = self._render(latest)
                self._pass = latest

    def families(self) -> list[RenderedFamily]:
        self.prepare()
        families = self._families
        if not self.collector.include_duration:
            return families
        durations = self._durations.render(self.collector.sampler.durations)
        return [*families, RenderedFamily(self._duration_head, [durations])]

    def _render(self, latest: SamplePass | None) -> list[RenderedFamily]:
        samples = sorted(
            latest.samples if latest else (), key=lambda s: (s.namespace, s.pod, s.container)
        )
        old = self._containers
        new: dict[tuple[str, str, str], _ContainerLines] = {}
        columns = []
        for s in samples:
            key = (s.namespace, s.pod, s.container)
            container = new.get(key) or old.get(key) or _ContainerLines(*key)
            new[key] = container
            columns.append(container.lines(s))
        self._containers = new
        bodies = list(zip(*columns, strict=True)) or [()] * len(self._heads)
        return [RenderedFamily(h, b) for h, b in zip(self._heads, bodies, strict=True)]


class _FixedHistogram:
    """One `FixedBuckets` series."""

    def __init__(self, name: str, labels: Sequence[tuple[str, str]]) -> None:
        self.name = name
        self.labels = list(labels)
        self._lines: HistogramLines | None = None

    def render(self, h: FixedBuckets) -> str:
        lines = self._lines
        if lines is None or lines.bounds is not h.bounds:
            lines = self._lines = HistogramLines(self.name, self.labels, h.bounds)
        return lines.render(h.counts, h.total, h)  # equal buckets, sum and count: unchanged


class ProbeFamilies:
    """`ProbeCollector`'s families, straight from the ledger's series."""

    def __init__(self, collector: ProbeCollector) -> None:
        self.collector = collector
        name, doc, labels = PROBE_DURATION
        self._durations_head = family_head(name, "histogram", doc)
        self._durations = _HistogramFamily(name, labels)
        name, doc, labels = PROBE_FAILURES
        self._failures_head = family_head(name, "counter", doc)
        self._failures = _CounterFamily(f"{name}_total", labels)
        name, doc, _ = PROBE_SCHEDULE_LAG
        self._lag_head = family_head(name, "histogram", doc)
        self._lag = _HistogramFamily(name, ())

    def families(self) -> list[RenderedFamily]:
        ledger = self.collector.ledger
        return [
            RenderedFamily(
                self._durations_head, self._durations.render_latency(ledger.durations.items())
            ),
            RenderedFamily(self._failures_head, self._failures.render(ledger.failures.items())),
            RenderedFamily(self._lag_head, self._lag.render_latency([((), ledger.lag)])),
        ]


class ClientLatencyFamilies:
    """`ClientLatencyCollector`'s family, straight from the series."""

    def __init__(self, collector: ClientLatencyCollector) -> None:
        self.collector = collector
        self._head = family_head(CLIENT_DURATION.name, "histogram", CLIENT_DURATION.help)
        self._series = _HistogramFamily(CLIENT_DURATION.name, CLIENT_DURATION.labels)

    def families(self) -> list[RenderedFamily]:
        series = self.collector.latency.series.items()
        return [RenderedFamily(self._head, self._series.render_latency(series))]


def renderer_for(collector: Collector) -> FamilyRenderer:
    """The fastest renderer of `collector`: one written for its type, checked against its
    `collect()` (same families, types and help, in the same order), else the generic one."""
    special: FamilyRenderer
    if isinstance(collector, CgroupCollector):
        special = CgroupFamilies(collector)
    elif isinstance(collector, ProbeCollector):
        special = ProbeFamilies(collector)
    elif isinstance(collector, ClientLatencyCollector):
        special = ClientLatencyFamilies(collector)
    else:
        return CollectedFamilies(collector)
    expected = [family_head(m.name, m.type, m.documentation) for m in collector.collect()]
    if [f.head for f in special.families()] != expected:
        # A family was added to the collector and not to its renderer: stay correct.
        log.warning(
            "fast renderer out of date with its collector; using the generic one",
            extra={"collector": type(collector).__name__},
        )
        return CollectedFamilies(collector)
    return special


# -- the served answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What an Accept header asks for, as prometheus_client's `choose_encoder` decides it."""

    openmetrics: bool
    content_type: str
    # False: an escaping scheme for names (dots, values) only prometheus_client implements.
    fast: bool
    encoder: Callable[[CollectorRegistry], bytes]


_FAST_ESCAPING = ("", "underscores", "allow-utf-8")  # the same text for our legacy names


@lru_cache(maxsize=32)
def negotiate(accept: str) -> Negotiated:
    encoder, content_type = choose_encoder(accept)
    escaping = ""
    for token in content_type.split(";"):
        key, _, value = token.strip().partition("=")
        if key == "escaping":
            escaping = value
    return Negotiated(
        openmetrics=content_type.startswith("application/openmetrics-text"),
        content_type=content_type,
        fast=escaping in _FAST_ESCAPING,
        encoder=encoder,
    )


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

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts
        self._plain: bytes | None = None
        self._gzipped: bytes | None = None

    def same_parts(self, parts: list[str]) -> bool:
        return len(parts) == len(self.parts) and all(map(operator.is_, parts, self.parts))

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = "".join(self.parts).encode()
        return self._plain

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip_compress(self._plain or "".join(self.parts).encode())
        return self._gzipped


class Exposition:
    """The /metrics content of a set of collectors.

    Every answer is rendered from the current state (so a watch event is visible at the
    next scrape and the series of gone pods are gone), but only what changed is rendered
    again: label strings are built once per series, a histogram series is re-rendered
    only when its count or sum moved, the cgroup families only after a sampling pass and
    only for the values that moved. The answer's bytes (plain, gzip) are kept and served
    again while every piece of text is the same object as last time.
    """

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            self.registry.register(collector)
        self._renderers = [renderer_for(c) for c in self.collectors]
        self._bodies: dict[bool, _Body] = {}  # by format: OpenMetrics or not

    def prepare_cgroups(self) -> None:
        """Render the cgroup families of the sampler's latest pass now. For the sampler's
        thread, right after each pass, so that a scrape finds them rendered."""
        for renderer in self._renderers:
            if isinstance(renderer, CgroupFamilies):
                renderer.prepare()

    def _parts(self, openmetrics: bool) -> list[str]:
        parts = []
        for renderer in self._renderers:
            for head, samples in renderer.families():
                parts.append(head.openmetrics if openmetrics else head.text)
                parts += samples
        if openmetrics:
            parts.append(OPENMETRICS_EOF)
        return parts

    def render(self, openmetrics: bool = False) -> str:
        """The exposition text, in the Prometheus text format 0.0.4 or OpenMetrics 1.0.0."""
        return "".join(self._parts(openmetrics))

    def answer(self, accept: str = "", accept_encoding: str = "") -> MetricsAnswer:
        """The /metrics response for these request headers."""
        negotiated = negotiate(accept)
        want_gzip = "gzip" in accept_encoding
        if not negotiated.fast:
            body = negotiated.encoder(self.registry)
            if want_gzip:
                body = gzip_compress(body)
            return MetricsAnswer(body, negotiated.content_type, want_gzip)
        parts = self._parts(negotiated.openmetrics)
        cached = self._bodies.get(negotiated.openmetrics)
        if cached is None or not cached.same_parts(parts):
            cached = self._bodies[negotiated.openmetrics] = _Body(parts)
        body = cached.gzipped() if want_gzip else cached.plain()
        return MetricsAnswer(body, negotiated.content_type, want_gzip)
