"""The prober's metric families (exporter/catalogue.py), read from its ledger at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from exporter.catalogue import (
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_SCHEDULE_LAG,
    PROBE_SLOW,
    FamilySnapshot,
    Series,
)
from exporter.core.probing import ProbeLedger


class ProbeSource:
    """tailwatch_probe_duration_seconds, tailwatch_probe_failures_total,
    tailwatch_probe_schedule_lag_seconds and tailwatch_probe_slow_total, from a
    `ProbeLedger`."""

    def __init__(self, ledger: ProbeLedger) -> None:
        self.ledger = ledger

    def snapshot(self) -> Iterable[FamilySnapshot]:
        ledger = self.ledger
        return (
            FamilySnapshot(PROBE_DURATION, ledger.durations.items()),
            FamilySnapshot(PROBE_FAILURES, ledger.failures.items()),
            FamilySnapshot(PROBE_SCHEDULE_LAG, [((), ledger.lag)]),
            FamilySnapshot(PROBE_SLOW, self._slow()),
        )

    def _slow(self) -> Iterator[Series]:
        """Probes over the SLO per (namespace, service, target, state): the endpoint target's
        pods summed, Services without an SLO left out."""
        slow: dict[tuple[str, ...], int] = {}
        for (namespace, service, target, _pod, state), series in self.ledger.durations.items():
            if series.slo is not None:
                key = (namespace, service, target, state)
                slow[key] = slow.get(key, 0) + series.slow_count
        return iter(slow.items())
