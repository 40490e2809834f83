"""tailwatch_otlp_datapoints_total{outcome}, rendered from the receiver's counts at scrape
time (what the receiver refuses as whole requests goes to tailwatch_dropped_total, through
`OtlpReceiver.dropped`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.otlp.points import Outcome

OTLP_DATAPOINTS = "tailwatch_otlp_datapoints"  # prometheus_client adds _total
OTLP_DATAPOINTS_HELP = (
    "OTLP histogram data points of client duration metrics received, by outcome: accepted, "
    "unmapped (no opted-in Service), malformed, over_limit."
)


class OtlpCollector(Collector):
    def __init__(self, outcomes: Callable[[], Mapping[str, int]]) -> None:
        self.outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(OTLP_DATAPOINTS, OTLP_DATAPOINTS_HELP, labels=("outcome",))
        counts = self.outcomes()
        # Every outcome from the start, so rate() works from the first increase.
        for outcome in Outcome:
            family.add_metric([outcome.value], counts.get(outcome.value, 0))
        yield family
