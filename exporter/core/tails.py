"""The latency of one Service and the decisions taken on its tail (docs/correlation.md):
its baseline, whether and when a tail spike rose and fell, and when latency really
recovered after an episode.

Every decision reads counts against a threshold, through `quantiles.confidently_above`:
the window's p99 is above a threshold only when its order-statistic lower bound is, so one
slow probe among 30 decides nothing. Times are placed to within one fine slot (one tick,
1 s by default), found from the samples themselves, not from when a window noticed. Pure:
`now` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exporter.core.episodes import HEADLINE_ORDER, Source
from exporter.core.histogram import FineHistogram
from exporter.core.quantiles import Tail, confidently_above, tail_of
from exporter.core.rules import CorrelationSettings
from exporter.core.windows import LatencyTimeline, SlotCount

#: The tail every decision is about.
TAIL_Q = 0.99


def _binomial_llr(n: int, k: int, p: float) -> float:
    """Log-likelihood ratio of k of n above against a share p above: how strongly the
    samples say the share is higher."""
    share = k / n
    if share <= p:
        return 0.0
    out = k * math.log(share / p)
    if k < n:
        out += (n - k) * math.log((1 - share) / (1 - p))
    return out


def rose_at(counts: Sequence[SlotCount]) -> SlotCount | None:
    """Where a tail rose: of the suffixes of `counts` that start at a slot with samples
    above the threshold, the one whose share above is most significantly over 1% (the
    binomial change point). A stray slow sample before a spike does not pull its start back:
    the long suffix it starts dilutes the spike."""
    best, best_llr = None, 0.0
    n = k = 0
    for slot in reversed(counts):
        n += slot.samples
        k += slot.above
        if slot.above:
            llr = _binomial_llr(n, k, 1 - TAIL_Q)
            if llr > best_llr:
                best, best_llr = slot, llr
    return best


def last_above(counts: Sequence[SlotCount], confidence: float) -> SlotCount | None:
    """The newest slot from which the samples up to now are confidently above the threshold
    (their p99's lower bound is): until it, the tail was up; after it, what is above is no
    more than a p99 within the threshold allows."""
    n = k = 0
    for slot in reversed(counts):
        n += slot.samples
        k += slot.above
        if slot.above and confidently_above(n, k, TAIL_Q, confidence):
            return slot
    return None


def fell_at(counts: Sequence[SlotCount], confidence: float) -> SlotCount | None:
    """Where a tail fell: at or after `last_above` (the newest point the tail was still
    confidently up), the end of the prefix whose share above is most significantly over 1%.
    The few slow samples at the very end of a slow stretch are not confidently a p99 on
    their own; the change point puts the fall after them, not a couple of probes early.
    None when the tail was never confidently up."""
    newest = last_above(counts, confidence)
    if newest is None:
        return None
    best, best_llr = newest, -1.0
    n = k = 0
    reached = False
    for slot in counts:
        n += slot.samples
        k += slot.above
        reached = reached or slot is newest
        if reached and slot.above:
            llr = _binomial_llr(n, k, 1 - TAIL_Q)
            if llr >= best_llr:
                best, best_llr = slot, llr
    return best


def spiking(n: int, k: int, ticks: int, settings: CorrelationSettings) -> bool:
    """With k of a window's n samples over the threshold, in `ticks` distinct slots: is its
    p99 confidently above it, in enough distinct moments? (Slow samples bunched in one
    moment, a pause that slowed several probes in a row, count once: they are not
    independent.)"""
    return (
        n >= settings.min_samples
        and ticks >= settings.spike_min_slow
        and confidently_above(n, k, TAIL_Q, settings.spike_confidence)
    )


@dataclass(slots=True)
class RecoveryTrack:
    """The headline samples since an episode closed, per fine slot, against the recovery
    threshold (baseline p99 x (1 + tolerance)). Bounded: recovery_max / slot width slots."""

    source: Source
    since: float
    threshold: float
    width: float
    slots: list[SlotCount] = field(default_factory=list)

    def add(self, now: float, histogram: FineHistogram) -> None:
        if not histogram.count:
            return
        above = histogram.count_above(self.threshold)
        last_above = now if above else -math.inf
        held = self.slots[-1] if self.slots else None
        # A sample stamped before the newest slot (a slow probe, stamped at its start) joins
        # it: slots stay in time order.
        if held is not None and math.floor(now / self.width) <= math.floor(held.last / self.width):
            self.slots[-1] = SlotCount(
                held.samples + histogram.count,
                held.above + above,
                min(held.first, now),
                max(held.last, now),
                max(held.last_above, last_above),
            )
        else:
            self.slots.append(SlotCount(histogram.count, above, now, now, last_above))

    def recovered_at(self, confidence: float) -> float:
        """When latency returned within tolerance: after the newest slow sample that the
        samples after it do not explain as a p99 within tolerance; the close when none."""
        slot = fell_at(self.slots, confidence)
        return self.since if slot is None else max(self.since, slot.last_above)

    def confirmed(self, now: float, settings: CorrelationSettings) -> float | None:
        """The recovery moment once a whole recovery window of samples after it holds no
        tail above tolerance; None until then."""
        if now - self.since < settings.recovery_window:
            return None  # no moment can have a whole window after it yet
        moment = self.recovered_at(settings.confidence)
        after = sum(s.samples for s in self.slots if s.first > moment)
        if now - moment >= settings.recovery_window and after >= settings.min_samples:
            return moment
        return None


def one_sample(seconds: float) -> FineHistogram:
    out = FineHistogram()
    out.record(seconds)
    return out


@dataclass(frozen=True, slots=True)
class Spike:
    """A tail spike found in the rolling window: when it rose (and, so far, fell), its
    threshold, and where the baseline it was judged against ended."""

    rose: float
    fell: float
    threshold: float
    baseline_end: float


@dataclass
class ServiceLatency:
    """The latency of one Service from each source: fine tracks, steady baselines, client
    ranges waiting for the next tick, and the recovery track of a closed episode."""

    settings: CorrelationSettings
    timelines: dict[Source, LatencyTimeline] = field(default_factory=dict)
    # Client histogram ranges since the last flush, by source and (lower, upper): clients
    # send the same bounds over and over, so adding them up first makes one `record_range`
    # per bucket per tick instead of one per data point.
    pending: dict[Source, dict[tuple[float, float], int]] = field(default_factory=dict)
    recovery: RecoveryTrack | None = None
    # After an episode that did not recover, its latency is the new normal: baselines start
    # afresh from then, instead of every later sample looking like a spike.
    baseline_from: float = 0.0
    last_baseline: Tail | None = None
    _baselines: dict[Source, tuple[object, Tail | None]] = field(default_factory=dict)

    def primary(self) -> Source | None:
        for source in HEADLINE_ORDER:
            if source in self.timelines:
                return source
        return None

    def timeline(self, source: Source) -> LatencyTimeline:
        timeline = self.timelines.get(source)
        if timeline is None:
            s = self.settings
            timeline = self.timelines[source] = LatencyTimeline(
                s.recovery_window + s.settle + s.tick_interval,
                s.tick_interval,
                s.baseline,
                s.slots,
                hold=s.recovery_window,
            )

        return timeline

    def record(self, source: Source, seconds: float, now: float, steady: bool) -> None:
        self.timeline(source).record(now, seconds, steady)
        if self.recovery is not None and source is self.recovery.source:
            self.recovery.add(now, one_sample(seconds))

    def add_ranges(self, source: Source, ranges: Iterable[tuple[float, float, int]]) -> None:
        pending = self.pending.setdefault(source, {})
        for lower, upper, count in ranges:
            if count:
                pending[(lower, upper)] = pending.get((lower, upper), 0) + count

    def flush(self, now: float, steady: bool) -> dict[Source, FineHistogram]:
        """Record the pending client ranges at `now`; returns them per source."""
        flushed: dict[Source, FineHistogram] = {}
        for source, pending in self.pending.items():
            histogram = FineHistogram()
            for (lower, upper), count in pending.items():
                histogram.record_range(lower, upper, count)
            self.timeline(source).merge(now, histogram, steady)
            if self.recovery is not None and source is self.recovery.source:
                self.recovery.add(now, histogram)
            flushed[source] = histogram
        self.pending = {}
        return flushed

    def baseline(self, source: Source, end: float) -> Tail | None:
        """The steady samples of the baseline window before `end` (since the last reset).
        Only slots that ended by `end` count, and those never change again: the tail is
        computed once per slot boundary, not on every tick."""
        timeline = self.timelines.get(source)
        window = min(self.settings.baseline, end - self.baseline_from)
        if timeline is None or window <= 0:
            return None
        key = (timeline.baseline_version(end, window), self.baseline_from)
        held = self._baselines.get(source)
        if held is not None and held[0] == key:
            return held[1]
        tail = tail_of(timeline.steady_before(end, window), self.settings.confidence)
        self._baselines[source] = (key, tail)
        return tail

    def advance(self, now: float) -> None:
        """Steady samples that left the rolling window join the baselines."""
        for timeline in self.timelines.values():
            timeline.advance(now)

    def baselines(self, end: float) -> dict[Source, Tail | None]:
        """The baseline of every source before `end`, for an episode opening then. Back to
        back episodes: the headline takes the last baseline that could bound a p99."""
        primary = self.primary()
        out: dict[Source, Tail | None] = {}
        for source in self.timelines:
            tail = self.baseline(source, end)
            if source is primary:
                if tail is not None and tail.p99.supported:
                    self.last_baseline = tail
                elif self.last_baseline is not None:
                    tail = self.last_baseline
            out[source] = tail
        return out

    def spike(self, now: float) -> Spike | None:
        """Is the window's p99 confidently over the spike threshold of the baseline before
        it (a baseline that bounds its p99)? Then when the tail rose, and fell so far."""
        s = self.settings
        source = self.primary()
        if source is None:
            return None
        end = now - s.recovery_window
        baseline = self.baseline(source, end)
        if baseline is None or not baseline.p99.supported:
            return None
        threshold = s.spike_threshold(baseline.p99.value)
        fine = self.timelines[source].fine
        # Only what was taken while steady: an episode's own samples are not a new spike.
        if not spiking(*fine.totals(end, threshold, steady_only=True), s):
            return None
        counts = fine.counts(end, threshold, steady_only=True)
        rise = rose_at(counts)
        assert rise is not None  # spiking: some slot has samples above
        fell = fell_at(counts, s.confidence)
        # What came since the rise is the spike's, never a baseline.
        for timeline in self.timelines.values():
            timeline.unsteady_since(rise.first)
        return Spike(rise.first, fell.last if fell else rise.last, threshold, end)

    def spike_fell(self, since: float, threshold: float) -> float | None:
        """The newest moment the tail was still over `threshold` since `since` (the change
        point), None when nothing kept in the fine track says it was."""
        source = self.primary()
        if source is None:
            return None
        fell = fell_at(
            self.timelines[source].fine.counts(since, threshold), self.settings.confidence
        )
        return None if fell is None else fell.last

    def since(self, source: Source, moment: float) -> FineHistogram:
        """The samples of `source` kept in the fine track from `moment` on (whole slots)."""
        return self.timelines[source].fine.merged(moment)

    def after(self, source: Source, moment: float) -> FineHistogram:
        """The samples of `source` kept in the fine track after `moment`."""
        return self.since(source, math.nextafter(moment, math.inf))

    def start_recovery(self, source: Source, since: float, threshold: float) -> None:
        """Track the headline against the recovery threshold from `since` (the close, which
        for a spike is when its tail fell: the fine track already holds what came after)."""
        track = RecoveryTrack(source, since, threshold, self.settings.tick_interval)
        for slot in self.timelines[source].fine.slots(math.nextafter(since, math.inf)):
            track.add(slot.last, slot.histogram)
        self.recovery = track
