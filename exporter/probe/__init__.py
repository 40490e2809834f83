"""The prober adapter: open-loop HTTP/TCP probes of opted-in Services and their endpoints."""

from exporter.core.probing import (
    DEFAULT_MAX_SERIES,
    DEFAULT_TIMEOUT,
    FailureReason,
    ProbeLedger,
    ProbeResult,
    ProbeTarget,
)
from exporter.probe.collector import ProbeCollector
from exporter.probe.connect import ProbeOutcome, probe_http, probe_target, probe_tcp
from exporter.probe.prober import DEFAULT_MAX_CONNECTIONS, Prober

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_SERIES",
    "DEFAULT_TIMEOUT",
    "FailureReason",
    "ProbeCollector",
    "ProbeLedger",
    "ProbeOutcome",
    "ProbeResult",
    "ProbeTarget",
    "Prober",
    "probe_http",
    "probe_target",
    "probe_tcp",
]
