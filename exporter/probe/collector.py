"""The prober's metric families, rendered from its ledger at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.core.probing import ProbeLedger

PROBE_DURATION: tuple[str, str, tuple[str, ...]] = (
    "tailwatch_probe_duration_seconds",
    "Probe latency from each probe's intended start on its fixed schedule (open loop), "
    "failed probes included.",
    ("namespace", "service", "target", "pod", "state"),
)
PROBE_FAILURES: tuple[str, str, tuple[str, ...]] = (
    "tailwatch_probe_failures",  # exposed with _total
    "Failed probes by reason: timeout, refused, reset, unreachable, bad_status, "
    "bad_response, missed, error.",
    ("namespace", "service", "target", "reason"),
)
PROBE_SCHEDULE_LAG: tuple[str, str, tuple[str, ...]] = (
    "tailwatch_probe_schedule_lag_seconds",
    "How late the prober started each probe after its intended start (its own noise).",
    (),
)


class ProbeCollector(Collector):
    """tailwatch_probe_duration_seconds, tailwatch_probe_failures_total and
    tailwatch_probe_schedule_lag_seconds, from a `ProbeLedger`."""

    def __init__(self, ledger: ProbeLedger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self.ledger
        name, help_, labels = PROBE_DURATION
        durations = HistogramMetricFamily(name, help_, labels=labels)
        for key, series in sorted(ledger.durations.items()):
            durations.add_metric(list(key), series.cumulative_buckets(), series.sum)
        yield durations

        name, help_, labels = PROBE_FAILURES
        failures = CounterMetricFamily(name, help_, labels=labels)
        for fkey, n in sorted(ledger.failures.items()):
            failures.add_metric(list(fkey), n)
        yield failures

        name, help_, labels = PROBE_SCHEDULE_LAG
        lag = HistogramMetricFamily(name, help_, labels=labels)
        lag.add_metric([], ledger.lag.cumulative_buckets(), ledger.lag.sum)
        yield lag
