"""The cgroup metric families of DESIGN.md §6, rendered at scrape time from the sampler's
latest pass: a container that is gone from the pass is gone from /metrics."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.cgroups.sampler import CgroupSample, CgroupSampler

CONTAINER_LABELS = ("namespace", "pod", "container")

# name (without _total for counters, as prometheus_client wants it), help
CPU_USAGE = ("tailwatch_container_cpu_usage_seconds", "CPU time used by the container (cgroup).")
CPU_THROTTLED = (
    "tailwatch_container_cpu_throttled_seconds",
    "Time the container's runnable tasks were throttled by its CFS quota.",
)
CPU_THROTTLED_PERIODS = (
    "tailwatch_container_cpu_throttled_periods",
    "CFS periods in which the container hit its CPU quota.",
)
CPU_PERIODS = (
    "tailwatch_container_cpu_periods",
    "CFS enforcement periods that elapsed while the container was runnable.",
)
MEMORY_WORKING_SET = (
    "tailwatch_container_memory_working_set_bytes",
    "Memory usage minus inactive file pages, as the kubelet computes it.",
)
MEMORY_LIMIT = (
    "tailwatch_container_memory_limit_bytes",
    "Memory limit of the container's cgroup (absent when it has none).",
)
PRESSURE = (
    "tailwatch_container_pressure_stalled_seconds",
    "PSI: time some (kind=some) or all (kind=full) of the container's tasks were stalled "
    "on a resource (cgroup v2 and the hybrid layout's unified tree).",
)
OOM_KILLS = (
    "tailwatch_container_oom_kills",
    "Processes of the container killed by the kernel OOM killer, seen by this agent.",
)
COLLECTOR_DURATION = (
    "tailwatch_collector_duration_seconds",
    "Wall time of one sampling pass, by collector.",
)
COLLECTOR_NAME = "cgroups"


def _labels(s: CgroupSample) -> list[str]:
    return [s.namespace, s.pod, s.container]


class CgroupCollector(Collector):
    """prometheus_client custom collector for the cgroup families.

    `include_duration=False` leaves out tailwatch_collector_duration_seconds, for a registry
    where another collector already renders that family for every collector.
    """

    def __init__(self, sampler: CgroupSampler, *, include_duration: bool = True) -> None:
        self.sampler = sampler
        self.include_duration = include_duration

    def collect(self) -> Iterator[Metric]:
        latest = self.sampler.latest
        samples = sorted(
            latest.samples if latest else (), key=lambda s: (s.namespace, s.pod, s.container)
        )
        usage = CounterMetricFamily(*CPU_USAGE, labels=CONTAINER_LABELS)
        throttled = CounterMetricFamily(*CPU_THROTTLED, labels=CONTAINER_LABELS)
        throttled_periods = CounterMetricFamily(*CPU_THROTTLED_PERIODS, labels=CONTAINER_LABELS)
        periods = CounterMetricFamily(*CPU_PERIODS, labels=CONTAINER_LABELS)
        working_set = GaugeMetricFamily(*MEMORY_WORKING_SET, labels=CONTAINER_LABELS)
        limit = GaugeMetricFamily(*MEMORY_LIMIT, labels=CONTAINER_LABELS)
        pressure = CounterMetricFamily(*PRESSURE, labels=(*CONTAINER_LABELS, "resource", "kind"))
        oom = CounterMetricFamily(*OOM_KILLS, labels=CONTAINER_LABELS)
        for s in samples:
            labels = _labels(s)
            if s.cpu_usage_seconds is not None:
                usage.add_metric(labels, s.cpu_usage_seconds)
            if s.cpu_throttled_seconds is not None:
                throttled.add_metric(labels, s.cpu_throttled_seconds)
            if s.cpu_throttled_periods is not None:
                throttled_periods.add_metric(labels, s.cpu_throttled_periods)
            if s.cpu_periods is not None:
                periods.add_metric(labels, s.cpu_periods)
            if s.memory_working_set_bytes is not None:
                working_set.add_metric(labels, s.memory_working_set_bytes)
            if s.memory_limit_bytes is not None:
                limit.add_metric(labels, s.memory_limit_bytes)
            for p in s.pressure:
                pressure.add_metric([*labels, p.resource, "some"], p.some_seconds)
                if p.full_seconds is not None:
                    pressure.add_metric([*labels, p.resource, "full"], p.full_seconds)
            if s.oom_kills is not None:
                # Only where the kernel keeps a count: a 0 would claim "no OOM kills" on a
                # host (v1 before 4.13) that cannot tell.
                oom.add_metric(labels, s.oom_kills_seen)
        yield usage
        yield throttled
        yield throttled_periods
        yield periods
        yield working_set
        yield limit
        yield pressure
        yield oom
        if self.include_duration:
            h = self.sampler.durations
            duration = HistogramMetricFamily(*COLLECTOR_DURATION, labels=("collector",))
            duration.add_metric([COLLECTOR_NAME], h.cumulative(), h.total)
            yield duration
