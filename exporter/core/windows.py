"""Bounded fine-resolution latency history: time slots, each a `FineHistogram`.

The correlation core needs latency of each Service at two scales: the last rolling window
and settle time in short slots (one per tick, 1 s by default: when a tail rose or fell, to
within a slot), and the baseline window (5 min) in 30 s slots, from steady samples only.
Both are kept as a fixed number of slots, so memory is bounded whatever the sample rate:
each slot is at most ~1,100 buckets and usually a few. Only the newest slot is written (a
clock step back lands in it too): a slot is packed when the next one opens
(`FineHistogram.pack`: an eighth of the memory at the reference load, read the same).
Pure: `now` is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from exporter.core.histogram import FineHistogram, representative


@dataclass(slots=True)
class _RingSlot:
    index: int
    histogram: FineHistogram = field(default_factory=FineHistogram)
    writes: int = 0  # what a cached read of it can compare


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
        self._ring: deque[_RingSlot] = deque()

    def _current(self, now: float) -> _RingSlot:
        index = math.floor(now / self.slot)
        ring = self._ring
        if not ring or ring[-1].index < index:
            if ring:
                ring[-1].histogram.pack()  # closed: nothing writes to it again
            ring.append(_RingSlot(index))
            while len(ring) > self.slots + 1 or ring[0].index <= index - self.slots - 1:
                ring.popleft()
        held = ring[-1]  # a clock step back lands in the newest slot
        held.writes += 1
        return held

    def record(self, now: float, seconds: float, count: int = 1) -> None:
        self._current(now).histogram.record(seconds, count)

    def merge(self, now: float, histogram: FineHistogram) -> None:
        self._current(now).histogram.merge(histogram)

    def merged(self, start: float, end: float) -> FineHistogram:
        first, last = self._span(start, end)
        out = FineHistogram()
        for held in self._ring:
            if first <= held.index <= last:
                out.merge(held.histogram)
        return out

    def _span(self, start: float, end: float) -> tuple[int, int]:
        return math.floor(start / self.slot), math.floor(end / self.slot)

    def version(self, start: float, end: float) -> tuple[tuple[int, int], ...]:
        """What `merged(start, end)` reads, slot by slot with its writes: equal versions,
        equal histograms."""
        first, last = self._span(start, end)
        return tuple((h.index, h.writes) for h in self._ring if first <= h.index <= last)

    def __len__(self) -> int:
        return len(self._ring)


@dataclass(slots=True)
class FineSlot:
    """One short slot of a `FineTrack`: its samples and when the first and last came."""

    index: int
    start: float  # the slot's own span is [start, start + width)
    histogram: FineHistogram = field(default_factory=FineHistogram)
    first: float = math.inf
    last: float = -math.inf
    largest: float = -math.inf  # the largest value: most slots have nothing over a threshold
    steady: bool = True  # every sample taken while its Service was steady, and no spike's
    promoted: bool = False  # handed to the baseline ring

    def above(self, threshold: float) -> int:
        """Samples over `threshold`, without looking inside a slot whose largest is not."""
        return self.histogram.count_above(threshold) if self.largest > threshold else 0


@dataclass(frozen=True, slots=True)
class SlotCount:
    """A slot's samples against one threshold: what the tail decisions read."""

    samples: int
    above: int
    first: float  # the first sample's time
    last: float  # the last sample's time
    last_above: float = -math.inf  # the last sample above's, where known (else `last`)


class FineTrack:
    """The last `span` seconds of samples in slots of `width` seconds (the correlator's
    tick), each with the times of its first and last sample: fine enough to tell when a
    tail rose or fell to within one slot, and, at one probe per slot, to the probe."""

    __slots__ = ("_slots", "span", "width")

    def __init__(self, span: float, width: float) -> None:
        if span <= 0 or width <= 0:
            raise ValueError("a fine track needs a positive span and slot width")
        self.span = span
        self.width = width
        self._slots: deque[FineSlot] = deque()

    def _current(self, now: float) -> FineSlot:
        index = math.floor(now / self.width)
        slots = self._slots
        if not slots or slots[-1].index < index:
            if slots:
                slots[-1].histogram.pack()  # closed: nothing writes to it again
            slots.append(FineSlot(index, index * self.width))
            oldest = math.floor((now - self.span) / self.width)
            while slots[0].index < oldest:
                slots.popleft()
        return slots[-1]  # a clock step back lands in the newest slot

    def record(self, now: float, seconds: float, count: int = 1, steady: bool = True) -> None:
        slot = self._current(now)
        slot.histogram.record(seconds, count)
        slot.first = min(slot.first, now)
        slot.last = max(slot.last, now)
        slot.largest = max(slot.largest, representative(seconds))
        slot.steady = slot.steady and steady

    def merge(self, now: float, histogram: FineHistogram, steady: bool = True) -> None:
        if histogram.count:
            slot = self._current(now)
            slot.histogram.merge(histogram)
            slot.first = min(slot.first, now)
            slot.last = max(slot.last, now)
            slot.largest = max(slot.largest, histogram.largest() or 0.0)
            slot.steady = slot.steady and steady

    def __iter__(self) -> Iterator[FineSlot]:
        return iter(self._slots)

    def slots(self, start: float) -> list[FineSlot]:
        """The slots with a sample at or after `start`, oldest first."""
        return [s for s in self._slots if s.last >= start]

    def merged(self, start: float) -> FineHistogram:
        out = FineHistogram()
        for slot in self.slots(start):
            out.merge(slot.histogram)
        return out

    def totals(
        self, start: float, threshold: float, steady_only: bool = False
    ) -> tuple[int, int, int]:
        """Samples since `start`, how many of them are over `threshold`, and in how many
        slots (the per-tick question, answered without looking inside slots that hold
        nothing over it). `steady_only`: leave out slots taken during an episode."""
        samples = above = slots = 0
        for s in self._slots:
            if s.last >= start and (s.steady or not steady_only):
                samples += s.histogram.count
                if n := s.above(threshold):
                    above += n
                    slots += 1
        return samples, above, slots

    def counts(self, start: float, threshold: float, steady_only: bool = False) -> list[SlotCount]:
        return [
            SlotCount(
                s.histogram.count,
                s.above(threshold),
                s.first,
                s.last,
            )
            for s in self.slots(start)
            if s.steady or not steady_only
        ]


class LatencyTimeline:
    """One latency source of one Service: the fine track of recent samples (spikes,
    recovery, the spike's own window) and the baseline ring (steady samples only, so that
    the baseline never includes a disruption). A fine slot reaches the ring only once it has
    left the rolling window (`hold`) steady: by then the window it was in has been judged,
    and a spike detected in it has marked it unsteady. The ring reaches back the baseline
    window past the rolling window, and one of its slots more: the baseline of a window
    being judged is the full baseline window before it."""

    __slots__ = ("baseline", "fine", "hold")

    def __init__(
        self, fine_span: float, width: float, baseline_span: float, slots: int, hold: float
    ) -> None:
        if hold >= fine_span:
            raise ValueError("the fine track must outlast the hold")
        self.fine = FineTrack(fine_span, width)
        self.hold = hold
        slot = baseline_span / slots
        ring_slots = slots + math.ceil(fine_span / slot) + 1
        self.baseline = SlotRing(slot * ring_slots, ring_slots)

    def record(self, now: float, seconds: float, steady: bool) -> None:
        self.fine.record(now, seconds, steady=steady)

    def merge(self, now: float, histogram: FineHistogram, steady: bool) -> None:
        """Values recorded elsewhere first (a tick's worth of client histograms)."""
        self.fine.merge(now, histogram, steady=steady)

    def advance(self, now: float) -> None:
        """Hand the steady fine slots that left the rolling window to the baseline ring (on
        every tick: the fine track keeps a slot a settle time longer than that)."""
        limit = now - self.hold - self.fine.width
        for slot in self.fine:
            if slot.start > limit:
                break
            if not slot.promoted:
                slot.promoted = True
                if slot.steady and slot.histogram.count:
                    self.baseline.merge(slot.start, slot.histogram)

    def unsteady_since(self, moment: float) -> None:
        """A spike rose at `moment`: what came since is not steady, and never a baseline."""
        for slot in self.fine.slots(moment):
            slot.steady = False

    def steady_before(self, end: float, window: float) -> FineHistogram:
        """Steady samples of the `window` seconds before `end`, in whole slots: only slots
        that ended by `end` count (the samples being judged are never part of their own
        baseline), and the first slot may reach one slot further back."""
        slot = self.baseline.slot
        return self.baseline.merged(end - slot - window, end - slot)

    def baseline_version(self, end: float, window: float) -> object:
        slot = self.baseline.slot
        return self.baseline.version(end - slot - window, end - slot)
