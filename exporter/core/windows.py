"""Bounded fine-resolution latency history: rings of time slots, each a `FineHistogram`.

The correlation core needs latency over two windows of each Service: the rolling window
(recovery and spike detection, 30 s by default) and the baseline window (5 min), the latter
from steady samples only. Both are kept as a fixed number of slots, so memory is bounded
whatever the sample rate: `slots + 1` histograms per ring (the extra one is the slot being
filled), each at most ~1,100 buckets and usually a few dozen. Pure: `now` is passed in.
"""

from __future__ import annotations

import math
from collections import deque

from exporter.core.histogram import FineHistogram

Quantiles = tuple[float, float, float]  # p50, p99, p99.9


class SlotRing:
    """The last `span` seconds of samples in `slots` slots of span/slots seconds each.

    `merged(start, end)` adds up the slots that overlap [start, end]: a window is known to
    within one slot (span/slots) of its edges.
    """

    __slots__ = ("_ring", "slot", "slots")

    def __init__(self, span: float, slots: int) -> None:
        if span <= 0 or slots < 1:
            raise ValueError("a slot ring needs a positive span and at least one slot")
        self.slot = span / slots
        self.slots = slots
        self._ring: deque[tuple[int, FineHistogram]] = deque()

    def _current(self, now: float) -> FineHistogram:
        index = math.floor(now / self.slot)
        ring = self._ring
        if ring and ring[-1][0] >= index:  # a clock step back lands in the newest slot
            return ring[-1][1]
        ring.append((index, FineHistogram()))
        while len(ring) > self.slots + 1 or ring[0][0] <= index - self.slots - 1:
            ring.popleft()
        return ring[-1][1]

    def record(self, now: float, seconds: float, count: int = 1) -> None:
        self._current(now).record(seconds, count)

    def merge(self, now: float, histogram: FineHistogram) -> None:
        self._current(now).merge(histogram)

    def merged(self, start: float, end: float) -> FineHistogram:
        first, last = math.floor(start / self.slot), math.floor(end / self.slot)
        out = FineHistogram()
        for index, histogram in self._ring:
            if first <= index <= last:
                out.merge(histogram)
        return out

    def __len__(self) -> int:
        return len(self._ring)


def quantiles(histogram: FineHistogram) -> Quantiles | None:
    """p50, p99 and p99.9 of a histogram, or None when it is empty."""
    p50, p99, p999 = histogram.quantiles((0.5, 0.99, 0.999))
    if p50 is None or p99 is None or p999 is None:
        return None
    return p50, p99, p999


def kth_largest(histogram: FineHistogram, k: int) -> float | None:
    """The k-th largest value (1 = the maximum), or None with fewer than k values."""
    n = histogram.count
    if n < k or k < 1:
        return None
    # Nearest rank ceil(q·n) = n - k + 1 for q just above (n - k)/n.
    return histogram.quantile((n - k + 0.5) / n)


class LatencyTimeline:
    """One latency source of one Service: the rolling ring (every sample) and the baseline
    ring (steady samples only, so that the baseline never includes a disruption)."""

    __slots__ = ("baseline", "rolling")

    def __init__(self, rolling_span: float, baseline_span: float, slots: int) -> None:
        self.rolling = SlotRing(rolling_span, slots)
        self.baseline = SlotRing(baseline_span, slots)

    def record(self, now: float, seconds: float, steady: bool) -> None:
        self.rolling.record(now, seconds)
        if steady:
            self.baseline.record(now, seconds)

    def merge(self, now: float, histogram: FineHistogram, steady: bool) -> None:
        """Values recorded elsewhere first (a tick's worth of client histograms)."""
        self.rolling.merge(now, histogram)
        if steady:
            self.baseline.merge(now, histogram)

    def recent(self, now: float, window: float) -> FineHistogram:
        return self.rolling.merged(now - window, now)

    def steady_before(self, now: float, window: float, exclude: float = 0.0) -> FineHistogram:
        """Steady samples of [now - window, now - exclude]. With `exclude`, only slots that
        ended before now - exclude count: a slot is longer than the excluded span, and the
        samples being judged must never be part of their own baseline."""
        if exclude <= 0:
            return self.baseline.merged(now - window, now)
        return self.baseline.merged(now - window, now - exclude - self.baseline.slot)
