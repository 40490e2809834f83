"""tailwatch_otlp_datapoints_total{outcome}, read from the receiver's counts at scrape time
(what the receiver refuses as whole requests goes to tailwatch_dropped_total, through
`OtlpReceiver.dropped`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from exporter.catalogue import OTLP_DATAPOINTS, FamilySnapshot
from exporter.otlp.points import Outcome


class OtlpSource:
    def __init__(self, outcomes: Callable[[], Mapping[str, int]]) -> None:
        self.outcomes = outcomes

    def snapshot(self) -> Iterable[FamilySnapshot]:
        counts = self.outcomes()
        # Every outcome from the start, so rate() works from the first increase.
        series = [((o.value,), counts.get(o.value, 0)) for o in Outcome]
        return (FamilySnapshot(OTLP_DATAPOINTS, series),)
