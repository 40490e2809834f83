"""The cgroup metric families (exporter/catalogue.py), read at scrape time from the sampler's
latest pass: a container that is gone from the pass is gone from /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter

from exporter.catalogue import (
    COLLECTOR_DURATION,
    CPU_PERIODS,
    CPU_THROTTLED,
    CPU_THROTTLED_PERIODS,
    CPU_USAGE,
    MEMORY_LIMIT,
    MEMORY_WORKING_SET,
    OOM_KILLS,
    PRESSURE,
    Family,
    FamilySnapshot,
    Series,
)
from exporter.cgroups.sampler import CgroupSample, CgroupSampler, SamplePass

COLLECTOR_NAME = "cgroups"


def _oom_kills(s: CgroupSample) -> int | None:
    # Only where the kernel keeps a count: a 0 would claim "no OOM kills" on a host (v1
    # before 4.13) that cannot tell.
    return None if s.oom_kills is None else s.oom_kills_seen


#: The families with one value per container, and how a sample gives it (None: absent).
_PER_CONTAINER: tuple[tuple[Family, Callable[[CgroupSample], float | None]], ...] = (
    (CPU_USAGE, attrgetter("cpu_usage_seconds")),
    (CPU_THROTTLED, attrgetter("cpu_throttled_seconds")),
    (CPU_THROTTLED_PERIODS, attrgetter("cpu_throttled_periods")),
    (CPU_PERIODS, attrgetter("cpu_periods")),
    (MEMORY_WORKING_SET, attrgetter("memory_working_set_bytes")),
    (MEMORY_LIMIT, attrgetter("memory_limit_bytes")),
)


@dataclass(frozen=True, slots=True)
class _Pass:
    """A pass's samples in label order, with their label values: made once per pass, so
    every family's series come out sorted (the encoders' sort then costs one comparison a
    series)."""

    of: SamplePass | None
    samples: tuple[CgroupSample, ...]
    keys: tuple[tuple[str, str, str], ...]

    @classmethod
    def of_pass(cls, latest: SamplePass | None) -> _Pass:
        samples = sorted(latest.samples if latest else (), key=_key)
        return cls(latest, tuple(samples), tuple(map(_key, samples)))

    def values(self, value: Callable[[CgroupSample], float | None]) -> Iterator[Series]:
        for key, s in zip(self.keys, self.samples, strict=True):
            v = value(s)
            if v is not None:
                yield key, v

    def pressure(self, resource: str, full: bool) -> Iterator[Series]:
        """One PSI family's series: `resource`'s "full" totals (the kubelet's `stalled`)
        or its "some" totals (`waiting`); a container without the line has no series."""
        for key, s in zip(self.keys, self.samples, strict=True):
            for p in s.pressure:
                if p.resource == resource:
                    v = p.full_seconds if full else p.some_seconds
                    if v is not None:
                        yield key, v


def _key(s: CgroupSample) -> tuple[str, str, str]:
    return (s.namespace, s.pod, s.container)


class CgroupSource:
    """The tailwatch_container_* families of the sampler's latest pass; each family's
    version is the pass, so an encoder renders a pass once.

    `include_duration=False` leaves out tailwatch_collector_duration_seconds, for a source
    list where another source has that family for every collector.
    """

    def __init__(self, sampler: CgroupSampler, *, include_duration: bool = True) -> None:
        self.sampler = sampler
        self.include_duration = include_duration
        self._pass = _Pass.of_pass(None)

    def snapshot(self) -> Iterable[FamilySnapshot]:
        latest = self.sampler.latest
        sorted_pass = self._pass
        if sorted_pass.of is not latest:  # the scrape and the sampler's thread may both make it
            sorted_pass = self._pass = _Pass.of_pass(latest)
        out = [FamilySnapshot(f, sorted_pass.values(value), latest) for f, value in _PER_CONTAINER]
        out += [
            FamilySnapshot(f, sorted_pass.pressure(resource, full), latest)
            for (resource, full), f in PRESSURE.items()
        ]
        out.append(FamilySnapshot(OOM_KILLS, sorted_pass.values(_oom_kills), latest))
        if self.include_duration:
            durations = self.sampler.durations
            out.append(FamilySnapshot(COLLECTOR_DURATION, [((COLLECTOR_NAME,), durations)]))
        return out
