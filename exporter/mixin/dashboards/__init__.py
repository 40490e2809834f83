"""The Grafana dashboards, built with grafanalib from a `MixinConfig`. Importing this package
needs grafanalib (the `generate` extra); the agent never imports it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.dashboards import node, overview, service

#: File stem → builder; `tailwatch generate` writes `<stem>.json` for each.
DASHBOARDS: dict[str, Callable[[MixinConfig], Any]] = {
    "tailwatch-overview": overview.build,
    "tailwatch-service": service.build,
    "tailwatch-node": node.build,
}

__all__ = ["DASHBOARDS"]
