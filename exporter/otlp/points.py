"""Client latency from OTLP metrics: which histogram points tailwatch uses, the checks they
pass, cumulative-to-delta per stream, and the opted-in Service each stream talks to.

Pure: the Service resolver, the wall-clock start and `now` are passed in. See docs/otlp.md.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    DataPointFlags,
    ExponentialHistogramDataPoint,
    HistogramDataPoint,
    Metric,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar as OtlpExemplar

from exporter.core.histogram import Exemplar
from exporter.core.services import ServiceRef
from exporter.otlp.address import (
    ADDRESS_KEYS,
    CLIENT_NAMESPACE_KEY,
    PORT_KEYS,
    canonical_host,
    parse_port,
    split_host_port,
)
from exporter.otlp.decode import to_wire

#: The client duration metrics of the current semantic conventions (docs/otlp.md, "Metrics
#: used"). Not the deprecated `rpc.client.duration` (ms): an instrumentation migrating with
#: OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup sends it beside `rpc.client.call.duration` for the
#: same calls, which would count every call twice; --otlp-metric-names adds it back.
DEFAULT_METRICS = (
    "http.client.request.duration",
    "rpc.client.call.duration",
    "db.client.operation.duration",
)
# Seconds per unit. Semantic conventions define these metrics in "s"; a missing unit is
# read as seconds (the SDKs drop it when the instrument was created without one).
UNIT_SECONDS = {"s": 1.0, "": 1.0, "ms": 1e-3}
MIN_SCALE, MAX_SCALE = -10, 20  # what OTLP exponential histograms use in practice
MAX_EXPONENTIAL_BUCKETS = 4096  # SDK default is 160; anything far past it is an attack
MAX_ADDRESS_LENGTH = 260  # a DNS name has at most 253 characters, plus a port
MAX_EXPONENT = 1000  # |index * 2**-scale|: base**index stays a finite, non-zero double
#: Exemplars read of one point, the rest ignored: an SDK keeps one per bucket (16 by default
#: for explicit buckets), and only the latest per exposition bucket is kept anyway.
MAX_EXEMPLARS_PER_POINT = 64
_NO_TRACE = bytes(16)
_NO_SPAN = bytes(8)
_DELTA = AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_NO_RECORDED_VALUE = DataPointFlags.DATA_POINT_FLAGS_NO_RECORDED_VALUE_MASK

Bucket = tuple[float, float, int]  # (lower seconds, upper seconds, count): (lower, upper]
Resolver = Callable[[str, int | None], ServiceRef | None]
Target = tuple[str, int | None]  # server.address and server.port as the client sent them


#: The tailwatch_dropped_total reason of the points the stream cap refuses.
STREAM_LIMIT = "otlp_stream_limit"


class Outcome(StrEnum):
    """The `outcome` label of tailwatch_otlp_datapoints_total."""

    ACCEPTED = "accepted"
    UNMAPPED = "unmapped"
    MALFORMED = "malformed"
    OVER_LIMIT = "over_limit"
    #: Points of metrics that are not tailwatch's (not in --otlp-metric-names): taken and
    #: not used. Not rejected either: a client or Collector may send all its metrics here.
    IGNORED = "ignored"


@dataclass(slots=True)  # not frozen: one is made per point, and frozen ones init slower
class LatencyDelta:
    """What one client stream observed since its previous point, against one Service."""

    service: ServiceRef
    metric: str
    buckets: tuple[Bucket, ...]  # non-empty buckets only, ascending
    sum_seconds: float
    count: int
    #: The points' exemplars that carry a trace id, values in seconds (most points: none).
    exemplars: tuple[Exemplar, ...] = ()


def merge_deltas(deltas: Iterable[LatencyDelta]) -> list[LatencyDelta]:
    """One delta per Service and metric, in the order each first appears: the streams of a
    request (methods, routes, status codes, client pods) usually share their buckets, and
    the agent records a delta into two histograms on the event loop; merged, it records
    once per Service instead of once per stream. Same-edged buckets add up exactly; sums
    and counts add; exemplars are all kept, in order."""
    merged: dict[
        tuple[ServiceRef, str],
        tuple[dict[tuple[float, float], int], list[float], list[Exemplar]],
    ] = {}
    for delta in deltas:
        entry = merged.get((delta.service, delta.metric))
        if entry is None:
            entry = merged[(delta.service, delta.metric)] = ({}, [0.0, 0], [])
        buckets, totals, exemplars = entry
        for low, high, n in delta.buckets:
            edges = (low, high)
            buckets[edges] = buckets.get(edges, 0) + n
        totals[0] += delta.sum_seconds
        totals[1] += delta.count
        if delta.exemplars:
            exemplars += delta.exemplars
    return [
        LatencyDelta(
            service,
            metric,
            tuple((low, high, n) for (low, high), n in sorted(buckets.items())),
            totals[0],
            int(totals[1]),
            tuple(exemplars),
        )
        for (service, metric), (buckets, totals, exemplars) in merged.items()
    ]


@dataclass(slots=True)
class Piece:
    """What one point counted, as it came: its distribution in the client's unit, the unit
    in seconds, its min and max in seconds (None unless both came and agree), its sum in
    seconds and its count, and its exemplars. Bucketed only when a delta is made of it."""

    service: ServiceRef
    metric: str
    dist: Distribution
    seconds: float
    low: float | None
    high: float | None
    total: float
    count: int
    exemplars: tuple[Exemplar, ...] = ()

    def delta(self) -> LatencyDelta:
        return LatencyDelta(
            self.service, self.metric, buckets_of(self.dist, self.seconds, self.low, self.high),
            self.total, self.count, self.exemplars,
        )  # fmt: skip


@dataclass(frozen=True)
class IngestLimits:
    max_points_per_request: int = 10_000
    max_streams_per_service: int = 1_000
    max_streams: int = 100_000  # all Services together; the least recently used goes first
    stream_idle_seconds: float = 900.0  # a stream not seen for this long is forgotten


@dataclass
class IngestResult:
    """What one request brought: deltas for the sink, points by outcome, and the first
    message of each kind of problem (for the response and the log)."""

    #: What each accepted point with new values counted, before it is put in buckets.
    pieces: list[Piece] = field(default_factory=list)
    outcomes: dict[Outcome, int] = field(default_factory=lambda: dict.fromkeys(Outcome, 0))
    problems: dict[str, tuple[Outcome, int, str]] = field(default_factory=dict)

    @property
    def ignored(self) -> int:
        """Points of metrics that are not tailwatch's: neither accepted nor rejected."""
        return self.outcomes[Outcome.IGNORED]

    @property
    def deltas(self) -> list[LatencyDelta]:
        """One delta per point that counted something, in the request's order."""
        return [piece.delta() for piece in self.pieces]

    def merged(self) -> list[LatencyDelta]:
        """One delta per Service and metric (`merge_deltas`), for the event loop. Explicit
        points of one layout add their counts first and are put in buckets once, their
        min and max narrowing the merged buckets as each narrowed its own."""
        # Keyed by the Service's strings: their hashes are cached, a ServiceRef's is not.
        groups: dict[tuple[str, str, str], list[Piece]] = {}
        for piece in self.pieces:
            service = piece.service
            key = (service.namespace, service.name, piece.metric)
            group = groups.get(key)
            if group is None:
                groups[key] = [piece]
            else:
                group.append(piece)
        out: list[LatencyDelta] = []
        for pieces in groups.values():
            first = pieces[0]
            service, metric = first.service, first.metric
            dist = first.dist
            if len(pieces) == 1 or type(dist) is not Explicit:
                out += merge_deltas(p.delta() for p in pieces)
                continue
            # One pass: add up the counts while every piece has the first one's layout.
            bounds, seconds, counts = dist.bounds, first.seconds, dist.counts
            low, high = first.low, first.high
            total, count = first.total, first.count
            exemplars = first.exemplars
            for p in itertools.islice(pieces, 1, None):
                other = p.dist
                if (
                    type(other) is not Explicit
                    or (other.bounds is not bounds and other.bounds != bounds)
                    or p.seconds != seconds
                ):
                    out += merge_deltas(p.delta() for p in pieces)
                    break
                counts = list(map(operator.add, counts, other.counts))
                low = None if low is None or p.low is None else min(low, p.low)
                high = None if high is None or p.high is None else max(high, p.high)
                total += p.total
                count += p.count
                if p.exemplars:
                    exemplars += p.exemplars
            else:
                buckets = buckets_of(Explicit(bounds, counts), seconds, low, high)
                out.append(LatencyDelta(service, metric, buckets, total, count, exemplars))
        return out

    @property
    def rejected(self) -> int:
        """Points refused (for `partial_success.rejected_data_points`): not the accepted
        ones, and not the ignored ones, which were never the agent's to take."""
        return sum(n for outcome, n in self.outcomes.items() if outcome not in _NOT_REJECTED)

    def reject(self, outcome: Outcome, kind: str, message: str, n: int = 1) -> None:
        self.outcomes[outcome] += n
        _, seen, first = self.problems.get(kind, (outcome, 0, message))
        self.problems[kind] = (outcome, seen + n, first)

    def error_message(self, limit: int = 5) -> str:
        """A one-line summary for `partial_success.error_message` and 400 bodies."""
        parts = [
            f"{n} {outcome.value} ({message})"
            for outcome, n, message in sorted(self.problems.values(), key=lambda p: -p[1])
        ]
        more = f"; and {len(parts) - limit} more kinds" if len(parts) > limit else ""
        return f"{self.rejected} data points rejected: " + "; ".join(parts[:limit]) + more


_NOT_REJECTED = frozenset({Outcome.ACCEPTED, Outcome.IGNORED})


class PointRejected(Exception):
    def __init__(self, outcome: Outcome, kind: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.kind = kind
        self.message = message


def _malformed(kind: str, message: str) -> PointRejected:
    return PointRejected(Outcome.MALFORMED, kind, message)


@dataclass(slots=True)
class Explicit:
    """An explicit-bucket distribution: bucket i is (bounds[i-1], bounds[i]], in the
    client's unit; the first starts at 0 (a duration), the last is open above."""

    bounds: tuple[float, ...]
    counts: list[int]


@dataclass(slots=True)
class Exponential:
    """An exponential distribution: bucket `offset + k` is (base**i, base**(i+1)] with
    base = 2**(2**-scale), in the client's unit; the zero bucket is [0, zero_threshold]."""

    scale: int
    zero_threshold: float
    zero_count: int
    offset: int
    counts: list[int]


Distribution = Explicit | Exponential


# (resource attributes, scope, metric name), then the point's attributes, serialized, sorted.
StreamKey = tuple[tuple[bytes, tuple[str, str], str], tuple[bytes, ...]]


@dataclass(slots=True)
class Stream:
    """The last point of one client stream, kept to turn cumulative points into deltas."""

    service: ServiceRef
    target: Target  # its server.address and port, as the client wrote them
    start_time: int
    time: int
    seen: float  # agent monotonic time of the last point, for idle expiry
    count: int
    total: float
    dist: Distribution | None  # None: a delta stream, tracked only for the limits


# -- checks ------------------------------------------------------------------------------


def _check_sum(dp: HistogramDataPoint | ExponentialHistogramDataPoint) -> float:
    if not dp.HasField("sum"):
        if dp.count:
            raise _malformed("no_sum", "histogram point without a sum: tailwatch needs it")
        return 0.0
    total = dp.sum
    if not math.isfinite(total) or total < 0:
        raise _malformed("bad_sum", f"sum {total} is not a finite non-negative duration")
    return total


def check_bounds(bounds: Sequence[float]) -> None:
    """Explicit bounds of a duration: finite, non-negative, strictly increasing."""
    previous = -1.0
    for bound in bounds:
        if not math.isfinite(bound) or bound < 0:
            raise _malformed("bad_bounds", f"bound {bound} is not a finite non-negative duration")
        if bound <= previous:
            raise _malformed("bad_bounds", "explicit_bounds are not strictly increasing")
        previous = bound


def check_explicit(
    dp: HistogramDataPoint,
    checked: dict[tuple[float, ...], tuple[float, ...]],
    previous: Distribution | None = None,
) -> Explicit:
    """A histogram point's distribution, after the checks of the OTLP spec; raises
    `PointRejected`. `checked` holds the bounds already found good, each as one tuple that
    streams share; bounds equal to those of the stream's `previous` point are that
    point's tuple, found without hashing fourteen floats."""
    # Slices: protobuf's containers copy out twice as fast that way as through list().
    counts = dp.bucket_counts[:]
    bounds = tuple(dp.explicit_bounds[:])
    if not counts:
        raise _malformed("no_buckets", "histogram point without buckets: tailwatch needs them")
    if len(counts) != len(bounds) + 1:
        raise _malformed(
            "bucket_count_mismatch",
            f"{len(counts)} bucket_counts for {len(bounds)} explicit_bounds (need bounds + 1)",
        )
    if type(previous) is Explicit and previous.bounds == bounds:
        bounds = previous.bounds  # checked when they came first
    else:
        known = checked.get(bounds)
        if known is None:
            check_bounds(bounds)
            if len(checked) >= 256:  # clients with ever-changing bounds must not grow this
                checked.clear()
            checked[bounds] = bounds
        else:
            bounds = known
    if sum(counts) != dp.count:
        raise _malformed("count_mismatch", f"bucket counts add up to {sum(counts)}, not {dp.count}")
    return Explicit(bounds, counts)


def check_exponential(dp: ExponentialHistogramDataPoint) -> Exponential:
    """An exponential histogram point's distribution, checked; raises `PointRejected`."""
    scale = dp.scale
    if not MIN_SCALE <= scale <= MAX_SCALE:
        raise _malformed("bad_scale", f"scale {scale} is outside [{MIN_SCALE}, {MAX_SCALE}]")
    if any(dp.negative.bucket_counts):
        raise _malformed("negative_values", "negative buckets hold values: not a duration")
    counts = dp.positive.bucket_counts[:]
    offset = dp.positive.offset
    if len(counts) > MAX_EXPONENTIAL_BUCKETS:
        raise _malformed(
            "too_many_buckets", f"{len(counts)} buckets, more than {MAX_EXPONENTIAL_BUCKETS}"
        )
    width = 2.0**-scale
    if counts and max(abs(offset), abs(offset + len(counts))) * width > MAX_EXPONENT:
        raise _malformed("bad_offset", f"bucket offset {offset} is out of any duration's range")
    threshold = dp.zero_threshold
    if not math.isfinite(threshold) or threshold < 0:
        raise _malformed("bad_zero_threshold", f"zero_threshold {threshold} is not a duration")
    if dp.zero_count + sum(counts) != dp.count:
        raise _malformed(
            "count_mismatch",
            f"zero_count and buckets add up to {dp.zero_count + sum(counts)}, not {dp.count}",
        )
    return Exponential(scale, threshold, dp.zero_count, offset, counts)


# -- deltas ------------------------------------------------------------------------------


def _downscale(offset: int, counts: list[int], shift: int) -> tuple[int, list[int]]:
    """Merge buckets 2**shift at a time: what scale - shift makes of them."""
    if shift == 0 or not counts:
        return offset, counts
    new_offset = offset >> shift
    out = [0] * (((offset + len(counts) - 1) >> shift) - new_offset + 1)
    for k, c in enumerate(counts):
        out[((offset + k) >> shift) - new_offset] += c
    return new_offset, out


def _padded(offset: int, counts: list[int], low: int, high: int) -> list[int]:
    """Counts from bucket index `low` to `high` (exclusive), zero where there are none."""
    if offset == low and offset + len(counts) == high:
        return counts
    return [0] * (offset - low) + counts + [0] * (high - offset - len(counts))


def subtract(current: Distribution, previous: Distribution) -> Distribution | None:
    """current - previous when both are the same layout and no count went down; None if the
    layouts cannot be compared or a count decreased (the stream was reset)."""
    if isinstance(current, Explicit) and isinstance(previous, Explicit):
        if current.bounds is not previous.bounds and current.bounds != previous.bounds:
            return None
        counts = list(map(operator.sub, current.counts, previous.counts))
        return None if min(counts) < 0 else Explicit(current.bounds, counts)
    if isinstance(current, Exponential) and isinstance(previous, Exponential):
        # SDKs lower the scale of a cumulative stream as its range grows: compare the two
        # at the coarser scale.
        scale = min(current.scale, previous.scale)
        c_off, c_counts = _downscale(current.offset, current.counts, current.scale - scale)
        p_off, p_counts = _downscale(previous.offset, previous.counts, previous.scale - scale)
        zero = current.zero_count - previous.zero_count
        if zero < 0:
            return None
        if not p_counts:
            return Exponential(scale, current.zero_threshold, zero, c_off, list(c_counts))
        if not c_counts:
            return None if any(p_counts) else Exponential(scale, 0.0, zero, 0, [])
        low = min(c_off, p_off)
        high = max(c_off + len(c_counts), p_off + len(p_counts))
        out = list(map(operator.sub, _padded(c_off, c_counts, low, high),
                       _padded(p_off, p_counts, low, high)))  # fmt: skip
        if min(out) < 0:
            return None
        return Exponential(scale, current.zero_threshold, zero, low, out)
    return None


@functools.lru_cache(maxsize=256)
def _edges(bounds: tuple[float, ...], seconds: float) -> tuple[tuple[float, float], ...]:
    """(lower, upper) in seconds of every finite explicit bucket: streams share bounds."""
    lows = (0.0, *bounds)
    return tuple((low * seconds, high * seconds) for low, high in zip(lows, bounds, strict=False))


@functools.lru_cache(maxsize=1024)
def _exponential_edges(
    scale: int, offset: int, size: int, seconds: float
) -> tuple[tuple[float, float], ...]:
    """(lower, upper] in seconds of `size` exponential buckets from index `offset`."""
    width = 2.0**-scale
    powers = [2.0 ** (index * width) * seconds for index in range(offset, offset + size + 1)]
    return tuple(itertools.pairwise(powers))


def buckets_of(
    dist: Distribution, seconds: float, minimum: float | None, maximum: float | None
) -> tuple[Bucket, ...]:
    """The non-empty buckets of a distribution in seconds, each narrowed to the point's
    [min, max] when the client sent them (a valid bound for every value in the window).

    The explicit overflow bucket (last bound, +inf) ends at the point's max when known,
    else at its lower bound: its values are then recorded at the last finite bound, which
    understates them and never invents a tail.
    """
    out: list[Bucket]
    if isinstance(dist, Explicit):
        bounds = dist.bounds
        # zip stops at the finite buckets; the overflow bucket is the one after them.
        edges = _edges(bounds, seconds)
        out = [(low, high, n) for (low, high), n in zip(edges, dist.counts, strict=False) if n]
        overflow = dist.counts[-1]
        if overflow:
            low = bounds[-1] * seconds if bounds else 0.0
            high = maximum if maximum is not None and maximum > low else low
            out.append((low, high, overflow))
    else:
        out = []
        if dist.zero_count:
            out.append((0.0, dist.zero_threshold * seconds, dist.zero_count))
        if dist.counts:  # without them, the offset is unchecked and may be out of range
            edges = _exponential_edges(dist.scale, dist.offset, len(dist.counts), seconds)
            out += [(low, high, n) for (low, high), n in zip(edges, dist.counts, strict=True) if n]
    if out and minimum is not None and maximum is not None:
        # Only the lowest bucket can hold the min and only the highest the max: the
        # buckets between lie inside [min, max] already.
        low, high, n = out[0]
        if low < minimum <= high:
            out[0] = (minimum, high, n)
        low, high, n = out[-1]
        if low <= maximum < high:
            out[-1] = (low, maximum, n)
    return tuple(out)


def _min_max(
    dp: HistogramDataPoint | ExponentialHistogramDataPoint, seconds: float
) -> tuple[float | None, float | None]:
    """The point's min and max in seconds, or (None, None) unless both are present and
    consistent: they only ever narrow buckets, so doubtful ones are ignored, not rejected."""
    if not (dp.HasField("min") and dp.HasField("max")):
        return None, None
    low, high = dp.min, dp.max
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        return None, None
    return low * seconds, high * seconds


# -- the ingest --------------------------------------------------------------------------


@dataclass(slots=True)
class _Client:
    """The resource of a ResourceMetrics: part of each stream's identity."""

    resource: bytes  # its attributes, serialized
    namespace: str | None  # k8s.namespace.name, for bare Service names


@dataclass(frozen=True, slots=True)
class _Shape:
    """What every point of one metric shares."""

    metric: str
    exponential: bool
    seconds: float  # per unit of the metric
    cumulative: bool
    stream_prefix: tuple[bytes, tuple[str, str], str]  # resource, scope, metric name


@dataclass(slots=True)
class _Batch:
    """One request being ingested."""

    result: IngestResult
    now: float
    budget: int  # data points this request may still bring
    resolved: dict[tuple[Target, str | None], ServiceRef | None] = field(default_factory=dict)


# Stream prefixes and Services kept as one object each: a few per client, a bound for clients
# that come and go (a prefix holds its client's resource bytes).
_MAX_INTERNED = 1024
_UNRESOLVED = ServiceRef("", "")  # not in `_Batch.resolved` yet; never a resolver's answer


class HistogramIngest:
    """Turns OTLP requests into `LatencyDelta`s, keeping the per-stream state that
    cumulative temporality needs, within the limits.

    A stream is (resource attributes, scope, metric name, point attributes). Cumulative
    points become deltas against the stream's previous point; a reset (new start time, or
    a count that went down) makes the current point the delta since the reset. The first
    point of a cumulative stream counts in full only if the stream started after the
    *horizon*: the agent's start, moved forward whenever the agent forgets a stream it had
    counted (idle, or evicted by a limit). Otherwise the first point only sets the
    baseline, so a point is never counted twice (docs/otlp.md, "Temporality").
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        started_unix_nano: int,
        metrics: Iterable[str] = DEFAULT_METRICS,
        limits: IngestLimits | None = None,
    ) -> None:
        self.resolve = resolve
        self.metrics = frozenset(metrics)
        self.limits = limits or IngestLimits()
        self.horizon = started_unix_nano
        self.streams: OrderedDict[StreamKey, Stream] = OrderedDict()
        self.per_service: dict[ServiceRef, int] = {}
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        # Points refused by the stream cap (also in outcomes' over_limit), for
        # tailwatch_dropped_total: an int, read from the loop while the worker thread adds.
        self.stream_limit_dropped = 0
        self._checked_bounds: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._services: dict[ServiceRef, ServiceRef] = {}
        self._prefixes: dict[
            tuple[bytes, tuple[str, str], str], tuple[bytes, tuple[str, str], str]
        ] = {}

    @property
    def ignored(self) -> int:
        """Points of metrics that are not tailwatch's, in all requests."""
        return self.outcomes[Outcome.IGNORED]

    def dropped(self) -> Mapping[str, int]:
        """What the stream cap refused, for tailwatch_dropped_total (docs/design.md: what a
        cap drops is counted there); empty until it refuses a point."""
        n = self.stream_limit_dropped
        return {STREAM_LIMIT: n} if n else {}

    # -- stream table ----------------------------------------------------------------

    def _forget(self, key: StreamKey) -> None:
        stream = self.streams.pop(key)
        left = self.per_service[stream.service] - 1
        if left:
            self.per_service[stream.service] = left
        else:
            del self.per_service[stream.service]
        if stream.dist is not None:
            # Its counted history is gone: a point of it seen again must not count in full.
            self.horizon = max(self.horizon, stream.time)

    def expire(self, now: float) -> None:
        """Forget streams idle for longer than the limit (oldest first: the table is LRU)."""
        cutoff = now - self.limits.stream_idle_seconds
        while self.streams:
            key, stream = next(iter(self.streams.items()))
            if stream.seen >= cutoff:
                break
            self._forget(key)

    def _admit(self, service: ServiceRef) -> bool:
        """Room for a new stream of `service`? Evicts the least recently used stream when
        the table is full; refuses when the Service has all the streams it may have."""
        if self.per_service.get(service, 0) >= self.limits.max_streams_per_service:
            return False
        while len(self.streams) >= self.limits.max_streams:
            self._forget(next(iter(self.streams)))
        self.per_service[service] = self.per_service.get(service, 0) + 1
        return True

    # -- requests --------------------------------------------------------------------

    def ingest(self, request: ExportMetricsServiceRequest, now: float) -> IngestResult:
        """Every point of tailwatch's metrics in `request`, checked, mapped and turned into
        deltas; never raises for bad input. Reads a `WireRequest` (what `decode_request`
        returns); any other request is made one first."""
        request = to_wire(request)
        self.expire(now)
        batch = _Batch(IngestResult(), now, self.limits.max_points_per_request)
        for rm in request.resource_metrics:
            client: _Client | None = None
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if metric.name not in self.metrics:
                        batch.result.outcomes[Outcome.IGNORED] += _point_count(metric, kind)
                        continue
                    if client is None:  # only for resources that carry our metrics
                        client = _Client(
                            rm.resource.SerializeToString(deterministic=True),
                            _string_attribute(rm.resource.attributes, CLIENT_NAMESPACE_KEY),
                        )
                    self._metric(metric, kind, client, (sm.scope.name, sm.scope.version), batch)
        for outcome, n in batch.result.outcomes.items():
            self.outcomes[outcome] += n
        return batch.result

    def _metric(
        self,
        metric: Metric,
        kind: str | None,
        client: _Client,
        scope: tuple[str, str],
        batch: _Batch,
    ) -> None:
        result = batch.result
        total = _point_count(metric, kind)
        if kind not in ("histogram", "exponential_histogram"):
            result.reject(
                Outcome.MALFORMED,
                "not_a_histogram",
                f"{metric.name} is a {kind or 'metric without data'}, tailwatch needs a histogram",
                total,
            )
            return
        seconds = UNIT_SECONDS.get(metric.unit)
        if seconds is None:
            result.reject(
                Outcome.MALFORMED,
                "bad_unit",
                f"{metric.name} has unit {metric.unit!r}: tailwatch reads s or ms",
                total,
            )
            return
        data = metric.histogram if kind == "histogram" else metric.exponential_histogram
        temporality = data.aggregation_temporality
        if temporality not in (_DELTA, _CUMULATIVE):
            result.reject(
                Outcome.MALFORMED,
                "bad_temporality",
                f"{metric.name} has no aggregation temporality (need delta or cumulative)",
                total,
            )
            return
        if total > batch.budget:
            result.reject(
                Outcome.OVER_LIMIT,
                "points_per_request",
                f"over the limit of {self.limits.max_points_per_request} data points per request",
                total - batch.budget,
            )
        # One prefix object for all the streams of a client's metric, request after request:
        # stream keys then compare it by identity, not its (resource) bytes.
        prefix = (client.resource, scope, metric.name)
        prefix = self._prefixes.setdefault(prefix, prefix)
        if len(self._prefixes) > _MAX_INTERNED:
            self._prefixes.clear()  # only costs the comparisons it saves
        shape = _Shape(
            metric.name,
            kind == "exponential_histogram",
            seconds,
            temporality == _CUMULATIVE,
            prefix,
        )
        points = data.data_points
        accepted = 0
        append = result.pieces.append
        point = self._point
        for dp in itertools.islice(points, min(total, batch.budget)):
            try:
                piece = point(dp, shape, client, batch)
            except PointRejected as rejected:
                result.reject(rejected.outcome, rejected.kind, rejected.message)
                continue
            accepted += 1
            if piece is not None:
                append(piece)
        result.outcomes[Outcome.ACCEPTED] += accepted
        batch.budget = max(0, batch.budget - total)

    def _service(self, target: Target, client: _Client, batch: _Batch) -> ServiceRef:
        """The Service a stream's address names, asked once per request and address."""
        lookup = (target, client.namespace)
        service = batch.resolved.get(lookup, _UNRESOLVED)
        if service is _UNRESOLVED:
            canonical, host_port = (
                _parse_address(target[0], client.namespace)
                if len(target[0]) <= MAX_ADDRESS_LENGTH
                else (None, None)
            )
            service = self.resolve(canonical, target[1] or host_port) if canonical else None
            if service is not None:
                # One object per Service: its streams compare by identity, not field by field.
                service = self._services.setdefault(service, service)
                if len(self._services) > _MAX_INTERNED:
                    self._services.clear()  # only costs the comparisons it saves
            batch.resolved[lookup] = service
        if service is None:
            raise PointRejected(
                Outcome.UNMAPPED,
                "unknown_service",
                f"server.address {target[0][:MAX_ADDRESS_LENGTH]!r} is not an opted-in Service, "
                "its ClusterIP or an endpoint IP",
            )
        return service

    def _point(
        self,
        dp: HistogramDataPoint | ExponentialHistogramDataPoint,
        shape: _Shape,
        client: _Client,
        batch: _Batch,
    ) -> Piece | None:
        if dp.flags & _NO_RECORDED_VALUE:
            return None  # an explicit gap in the stream: nothing to count, nothing to check
        # The stream key is the point's attributes as the client serialized them (a
        # `WireRequest` leaves them so), read as messages only for a stream not seen
        # before. Sorted: attribute order is not part of a stream's identity.
        raw = cast("Sequence[bytes]", dp.attributes)
        key = (shape.stream_prefix, tuple(sorted(raw)))
        stream = self.streams.get(key)
        start, end, count = dp.start_time_unix_nano, dp.time_unix_nano, dp.count
        if (
            shape.cumulative
            and stream is not None
            and stream.dist is not None
            and start == stream.start_time
            and count == stream.count
            and end >= stream.time
        ):
            service = self._service(stream.target, client, batch)
            if service is stream.service or service == stream.service:
                # An idle cumulative stream repeats its last point: nothing new to check
                # or count. Clients export every stream every interval, busy or not.
                self.streams.move_to_end(key)
                stream.seen, stream.time = batch.now, end
                return None
        # The shape says which: the classes are the `WireRequest`'s, not OTLP's own.
        if shape.exponential:
            dist: Distribution = check_exponential(cast("ExponentialHistogramDataPoint", dp))
        else:
            previous = None if stream is None else stream.dist
            dist = check_explicit(cast("HistogramDataPoint", dp), self._checked_bounds, previous)
        total = _check_sum(dp)
        # Exemplars are read only for the points that carry some (most carry none), before
        # the stream changes: a point whose exemplars are not valid is rejected whole.
        raw_exemplars = dp.exemplars
        exemplars = parse_exemplars(raw_exemplars, shape.seconds, end) if raw_exemplars else ()
        target = target_of(_parse_attributes(raw)) if stream is None else stream.target
        service = self._service(target, client, batch)
        if stream is not None and stream.service is not service and stream.service != service:
            self._forget(key)  # its address now names another Service: start over
            stream = None
        if stream is None:
            if not self._admit(service):
                self.stream_limit_dropped += 1
                raise PointRejected(
                    Outcome.OVER_LIMIT,
                    "streams_per_service",
                    f"{service} has {self.limits.max_streams_per_service} streams already "
                    "(the limit)",
                )
            stream = Stream(service, target, start, end, 0, 0, 0.0, None)
            self.streams[key] = stream
            first = True
        else:
            self.streams.move_to_end(key)
            first = stream.dist is None  # a delta stream that turned cumulative starts over
        stream.seen = batch.now

        if shape.cumulative:
            if not first and start == stream.start_time and end <= stream.time:
                return None  # a retried or reordered export: counted already, keep the state
            counted = self._cumulative_delta(stream, start, count, dist, total=total, first=first)
            stream.dist, stream.count, stream.total = dist, count, total
            if counted is None:
                count = 0
            else:
                count, total, dist = counted
        else:
            stream.dist = None
        stream.start_time, stream.time = start, end
        if not count:
            return None
        low, high = _min_max(dp, shape.seconds)
        return Piece(service, shape.metric, dist, shape.seconds, low, high,
                     total * shape.seconds, count, exemplars)  # fmt: skip

    def _cumulative_delta(
        self,
        stream: Stream,
        start: int,
        count: int,
        dist: Distribution,
        *,
        total: float,
        first: bool,
    ) -> tuple[int, float, Distribution] | None:
        """(count, sum, distribution) to count for a cumulative point; None: nothing."""
        if first:
            if start and start > self.horizon:
                return count, total, dist  # the stream began while the agent listened
            return None  # history from before the horizon: only the baseline
        previous = stream.dist
        assert previous is not None
        if start != stream.start_time or count < stream.count:
            return count, total, dist  # a reset: all of it is new
        delta = subtract(dist, previous)
        if delta is None:
            if _layout_changed(dist, previous):
                return None  # new buckets, same start: only a new baseline
            return count, total, dist  # a bucket count went down: a reset
        return count - stream.count, max(0.0, total - stream.total), delta


def _layout_changed(current: Distribution, previous: Distribution) -> bool:
    if isinstance(current, Explicit) and isinstance(previous, Explicit):
        return current.bounds != previous.bounds
    return type(current) is not type(previous)


def _parse_attributes(raw: Sequence[bytes]) -> list[KeyValue]:
    """A new stream's attributes as messages; raises `PointRejected` (malformed) for bytes
    that are no KeyValue: the request's parse left them unread."""
    try:
        return [KeyValue.FromString(kv) for kv in raw]
    except DecodeError as exc:
        raise _malformed("bad_attributes", f"point attributes are not valid: {exc}") from None


def parse_exemplars(raw: Iterable[Any], seconds: float, time: int) -> tuple[Exemplar, ...]:
    """A point's exemplars (serialized OTLP `Exemplar`s) with a trace id, their values in
    seconds (`seconds` per unit) and their time, or the point's `time` when they have none;
    raises `PointRejected` (malformed) for bytes that are no Exemplar. An exemplar without a
    (valid, 16-byte) trace id links to nothing and is skipped, as is one without a value or
    whose value is no duration; the first MAX_EXEMPLARS_PER_POINT are read."""
    out = []
    for data in itertools.islice(raw, MAX_EXEMPLARS_PER_POINT):
        try:
            exemplar = OtlpExemplar.FromString(data)
        except DecodeError as exc:
            raise _malformed("bad_exemplars", f"point exemplars are not valid: {exc}") from None
        trace = exemplar.trace_id
        if len(trace) != 16 or trace == _NO_TRACE:
            continue
        kind = exemplar.WhichOneof("value")
        if kind is None:
            continue
        value = (exemplar.as_double if kind == "as_double" else exemplar.as_int) * seconds
        if not (math.isfinite(value) and value >= 0):
            continue
        span = exemplar.span_id
        span_id = span.hex() if len(span) == 8 and span != _NO_SPAN else ""
        out.append(Exemplar(value, trace.hex(), span_id, exemplar.time_unix_nano or time))
    return tuple(out)


def target_of(attributes: Iterable[KeyValue]) -> Target:
    """server.address and server.port (or the older net.peer.*) of a point; raises
    `PointRejected` (unmapped) without an address."""
    found = {kv.key: kv.value for kv in attributes if kv.key in _ADDRESSING}
    address = next((found[k].string_value for k in ADDRESS_KEYS if k in found), "")
    if not address:
        raise PointRejected(
            Outcome.UNMAPPED,
            "no_server_address",
            "point has no server.address (or net.peer.name) attribute",
        )
    return address, next((_port_value(found[k]) for k in PORT_KEYS if k in found), None)


_ADDRESSING = frozenset(ADDRESS_KEYS + PORT_KEYS)


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str, client_namespace: str | None) -> tuple[str | None, int | None]:
    """The canonical host and the port in an address: pure, and cached because parsing a
    name costs more than the rest of a point (clients repeat a few addresses forever)."""
    host, port = split_host_port(address)
    return canonical_host(host, client_namespace), port


def _port_value(value: AnyValue) -> int | None:
    return parse_port(
        value.int_value if value.WhichOneof("value") == "int_value" else value.string_value
    )


def _point_count(metric: Metric, kind: str | None) -> int:
    if kind is None:
        return 0
    return len(getattr(metric, kind).data_points)


def _string_attribute(attributes: Iterable[KeyValue], key: str) -> str | None:
    for kv in attributes:
        if kv.key == key:
            return kv.value.string_value or None
    return None
