"""The monitoring mixin: one `MixinConfig` flows into the Grafana dashboards, the recording
rules and the alerts that `tailwatch generate` writes (docs/design.md, *Interfaces*). Only
generation uses it; the agent never imports it (an import-linter contract), and only the
dashboards need grafanalib, imported when they are built."""

from __future__ import annotations

from exporter.mixin.alerts import ALERTS, alert_groups
from exporter.mixin.config import MixinConfig, MixinConfigError, fast_profile, from_mapping
from exporter.mixin.records import Records, recording_groups
from exporter.mixin.rulefiles import prometheus_rule_yaml, rule_groups, rules_yaml

__all__ = [
    "ALERTS",
    "MixinConfig",
    "MixinConfigError",
    "Records",
    "alert_groups",
    "fast_profile",
    "from_mapping",
    "prometheus_rule_yaml",
    "recording_groups",
    "rule_groups",
    "rules_yaml",
]
