"""OTLP receiver of client latency histograms (docs/otlp.md; OTLP/gRPC in grpc_receiver,
imported only when --otlp-grpc-listen is set): clients' own view of an
opted-in Service's latency, turned into per-Service deltas for the latency histograms."""

from exporter.otlp.decode import DEFAULT_MAX_BODY_BYTES
from exporter.otlp.points import (
    DEFAULT_METRICS,
    Bucket,
    IngestLimits,
    LatencyDelta,
    Outcome,
    Resolver,
    merge_deltas,
)
from exporter.otlp.receiver import OtlpReceiver, ReceiverLimits, Sink
from exporter.otlp.source import OtlpSource

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_METRICS",
    "Bucket",
    "IngestLimits",
    "LatencyDelta",
    "OtlpReceiver",
    "OtlpSource",
    "Outcome",
    "ReceiverLimits",
    "Resolver",
    "Sink",
    "merge_deltas",
]
