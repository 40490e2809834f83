"""A Kubernetes API simulator for tests and `tailwatch demo`: the real list/watch protocol on
loopback, with fault injection. The agent never imports it (import-linter enforces this)."""

from exporter.simulator.apiserver import ApiServer, ThreadedApiServer
from exporter.simulator.faults import Faults, RequestLog, RequestRecord
from exporter.simulator.kubeconfig import kubeconfig_dict, write_kubeconfig
from exporter.simulator.resources import RESOURCES, ResourceType
from exporter.simulator.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from exporter.simulator.status import ApiError
from exporter.simulator.store import HistoryCompacted, HistoryEvent, Store

__all__ = [
    "RESOURCES",
    "ApiError",
    "ApiServer",
    "Faults",
    "FieldSelector",
    "HistoryCompacted",
    "HistoryEvent",
    "LabelSelector",
    "RequestLog",
    "RequestRecord",
    "ResourceType",
    "SelectorError",
    "Store",
    "ThreadedApiServer",
    "kubeconfig_dict",
    "parse_field_selector",
    "parse_label_selector",
    "write_kubeconfig",
]
