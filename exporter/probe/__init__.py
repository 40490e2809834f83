"""The prober adapter: open-loop HTTP/TCP probes of opted-in Services and their endpoints."""

from exporter.core.probing import (
    DEFAULT_MAX_SERIES,
    DEFAULT_TIMEOUT,
    FailureReason,
    ProbeLedger,
    ProbeResult,
    ProbeTarget,
)
from exporter.probe.connect import ProbeOutcome, probe_http, probe_target, probe_tcp
from exporter.probe.prober import DEFAULT_MAX_CONNECTIONS, Prober
from exporter.probe.source import ProbeSource

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_SERIES",
    "DEFAULT_TIMEOUT",
    "FailureReason",
    "ProbeLedger",
    "ProbeOutcome",
    "ProbeResult",
    "ProbeSource",
    "ProbeTarget",
    "Prober",
    "probe_http",
    "probe_target",
    "probe_tcp",
]
