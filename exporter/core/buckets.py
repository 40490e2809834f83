"""A histogram over fixed bucket bounds, for durations and ratios the agent observes one at a
time (pod startup and termination, collector passes, episodes)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from exporter.core.histogram import NATIVE_ZERO_THRESHOLD, native_index


@dataclass(frozen=True, slots=True)
class FixedBuckets:
    """Counts per classic bucket (not cumulative; the last is +Inf), sum and count, and the
    same observations as a native histogram (schema 4: the non-empty buckets' indexes,
    ascending, their counts, and the zero bucket). Immutable: `observe` returns a new value,
    so a reader in another thread never sees half an update."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    total: float = 0.0
    count: int = 0
    native_indexes: tuple[int, ...] = ()
    native_counts: tuple[int, ...] = ()
    native_zero_count: int = 0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> FixedBuckets:
        return cls(bounds, (0,) * (len(bounds) + 1))

    def observe(self, value: float) -> FixedBuckets:
        counts = list(self.counts)
        counts[bisect.bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        indexes, native, zero = self.native_indexes, self.native_counts, self.native_zero_count
        if value > NATIVE_ZERO_THRESHOLD:
            index = native_index(value)
            place = bisect.bisect_left(indexes, index)
            if place < len(indexes) and indexes[place] == index:
                native = (*native[:place], native[place] + 1, *native[place + 1 :])
            else:
                indexes = (*indexes[:place], index, *indexes[place:])
                native = (*native[:place], 1, *native[place:])
        else:
            zero += 1
        return FixedBuckets(
            self.bounds, tuple(counts), self.total + value, self.count + 1, indexes, native, zero
        )

    # What an encoder reads of a histogram (exporter/catalogue.py, HistogramValue).
    @property
    def bucket_counts(self) -> tuple[int, ...]:
        return self.counts

    @property
    def sum(self) -> float:
        return self.total

    @property
    def version(self) -> FixedBuckets:
        return self  # immutable: a new value for every observation

    def native_buckets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.native_indexes, self.native_counts
