"""tailwatch: ties tail latency of Kubernetes Services to pod lifecycle events."""

__version__ = "0.1.0"
