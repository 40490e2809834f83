"""The one configuration object of the monitoring mixin: selectors, SLO, windows, thresholds,
runbook base URL, dashboard UIDs and the histogram form the rules read. Dashboards,
recording rules and alerts are all built from a `MixinConfig`, so a change here changes all
three together (the kubernetes-mixin `_config` model).

Every duration is a number of seconds in a field made with `duration()` (a window),
`pending()` (an alert's `for`) or `seconds()` (a threshold that is a time), so that
`MixinConfig.scaled()` can shrink the windows and `for`s at once for the end-to-end test
profile; `from_mapping()` applies user overrides (YAML) on top of the defaults, reading every
duration in Prometheus' own notation (`90s`, `1h30m`, `1d`, `3d`: `parse_duration`), as the
rules and Prometheus' configuration write them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.core.sidecars import CONTAINER_PATTERN as SIDECAR_CONTAINER_PATTERN


class MixinConfigError(ValueError):
    """An override that does not fit the config; the message names the key."""


#: Prometheus' duration units, in the only order its grammar allows them.
_PROMETHEUS_UNITS = (
    ("y", 365 * 86_400.0),
    ("w", 7 * 86_400.0),
    ("d", 86_400.0),
    ("h", 3_600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
_PROMETHEUS_DURATION = re.compile(
    "".join(rf"(?:(?P<{'ms_' if u == 'ms' else u}>\d+){u})?" for u, _ in _PROMETHEUS_UNITS)
)


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration (`1d`, `3d`, `90s`, `1h30m`, `500ms`, `0`): whole
    numbers, each unit of y, w, d, h, m, s, ms at most once and in that order, as
    Prometheus parses `for:`, `[range]` and its configuration; or a plain number of seconds.
    Anything else raises ValueError saying what a duration looks like: a window the rules
    would write differently from what the user meant must not pass silently."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    match = _PROMETHEUS_DURATION.fullmatch(text)
    if not text or match is None or not any(match.groups()):
        raise ValueError(
            f"{text!r} is not a duration: Prometheus durations are whole numbers with the "
            "units y, w, d, h, m, s, ms in that order (e.g. 90s, 1h30m, 1d, 3d) or a number "
            "of seconds"
        )
    return sum(
        int(n) * size
        for n, (_, size) in zip(match.groups(), _PROMETHEUS_UNITS, strict=True)
        if n is not None
    )


def duration(default: float) -> Any:
    """A dataclass field holding a window in seconds, scaled by `MixinConfig.scaled()` (and
    kept at or above its `min_window`)."""
    return field(default=default, metadata={"duration": "window"})


def pending(default: float) -> Any:
    """A dataclass field holding an alert's `for` in seconds, scaled by `MixinConfig.scaled()`."""
    return field(default=default, metadata={"duration": "pending"})


def seconds(default: float) -> Any:
    """A dataclass field holding a threshold that is a time, in seconds: read as a duration,
    not scaled (it compares with what the agents measure, which the profile does not
    compress)."""
    return field(default=default, metadata={"duration": "threshold"})


@dataclass(frozen=True)
class Selectors:
    #: Label matchers that select the agents' series (and their `up`), e.g. `job="tailwatch"`.
    job: str = 'job="tailwatch"'
    #: Add a `cluster` template variable and keep the cluster label in every aggregation.
    multi_cluster: bool = False
    cluster_label: str = "cluster"
    #: The label Prometheus puts on each agent's series with its node name (the chart's
    #: relabelling sets it from `__meta_kubernetes_pod_node_name`).
    node_label: str = "node"


@dataclass(frozen=True)
class BurnRateAlert:
    """One multi-window burn-rate condition: both windows above `factor` x the error budget."""

    long: float
    short: float
    factor: float
    pending: float  # the alert's `for`
    severity: str

    def __post_init__(self) -> None:
        if not self.short < self.long:
            raise MixinConfigError("a burn-rate alert's short window must be below its long one")


def _default_burn_rates() -> tuple[BurnRateAlert, ...]:
    # The Google SRE workbook's multiwindow, multi-burn-rate alerts for a 30-day budget:
    # 2% of the budget in 1h or 5% in 6h pages, 10% in 1d or 3d opens a ticket.
    return (
        BurnRateAlert(long=3600, short=300, factor=14.4, pending=120, severity="critical"),
        BurnRateAlert(long=21600, short=1800, factor=6, pending=900, severity="critical"),
        BurnRateAlert(long=86400, short=7200, factor=3, pending=3600, severity="warning"),
        BurnRateAlert(long=259200, short=21600, factor=1, pending=10800, severity="warning"),
    )


@dataclass(frozen=True)
class Slo:
    #: Share of probes of a Service's address that must be within its
    #: `tailwatch.io/slo-latency` threshold, over 30 days.
    objective: float = 0.99
    burn_rates: tuple[BurnRateAlert, ...] = field(default_factory=_default_burn_rates)
    #: The fan-out panel and rule: chance an interaction making N calls stays fast.
    fanout_calls: tuple[int, ...] = (1, 10, 100)
    fanout_window: float = duration(300)


@dataclass(frozen=True)
class Windows:
    #: Rate window of the latency histograms; needs a scrape interval of 15s or less.
    latency: float = duration(60)
    #: The steady-state p99 that disruption is compared with.
    baseline: float = duration(1800)
    #: CPU usage, throttling and sidecar shares in rules and alerts.
    resources: float = duration(300)
    #: A StatefulSet pod seen on two nodes within this window was rescheduled.
    reschedule: float = duration(600)
    #: Closed-episode alerts (rollout impact, not recovered) look back this far.
    episodes: float = duration(1800)
    restart_loop: float = duration(900)
    oom_kills: float = duration(600)
    probe_failures: float = duration(300)
    prober_lag: float = duration(300)


@dataclass(frozen=True)
class Thresholds:
    #: p99 now / steady p99 while an episode is open that makes TailwatchDisruptionImpact fire.
    disruption_p99_ratio: float = 2.0
    disruption_for: float = pending(60)
    #: p99 now / steady p99 above which a Service's latency counts as degraded (sidecar alert).
    degraded_p99_ratio: float = 1.5
    #: Still recovering this long after an episode closed: TailwatchSlowRecovery.
    slow_recovery: float = pending(300)
    #: Closed rollout episodes of these impacts fire TailwatchRolloutDegradedLatency.
    rollout_impacts: tuple[str, ...] = ("degraded", "severe")
    #: A rollout the agents report stuck (no progress for their --rollout-stuck) this long
    #: more fires TailwatchRolloutStuck.
    rollout_stuck_for: float = pending(300)
    restart_loop_restarts: int = 3
    #: Throttled CFS periods / periods of a container of a probed Service.
    throttling_ratio: float = 0.25
    throttling_for: float = pending(900)
    #: A sidecar's share of its pod's CPU while the Service's latency is degraded.
    sidecar_cpu_share: float = 0.5
    sidecar_for: float = pending(300)
    agent_down_for: float = pending(300)
    #: A healthy watch sees an event or a bookmark at least every ~60 s.
    watch_stale_seconds: float = seconds(180)
    watch_stale_for: float = pending(120)
    probe_failure_ratio: float = 0.05
    probe_failures_for: float = pending(300)
    prober_lag_p99_seconds: float = seconds(0.05)
    prober_lag_for: float = pending(600)


@dataclass(frozen=True)
class Dashboards:
    overview_uid: str = "tailwatch-overview"
    service_uid: str = "tailwatch-service"
    node_uid: str = "tailwatch-node"
    tags: tuple[str, ...] = ("tailwatch",)
    refresh: str = "30s"
    time_from: str = "now-1h"
    timezone: str = "utc"
    #: Containers whose CPU share of their pod is shown (and alerted on) as a sidecar's:
    #: the names of the agent's sidecar rule (exporter/core/sidecars.py), so the dashboards
    #: and the episodes' attribution mean the same containers. A pod's own
    #: `tailwatch.io/sidecars` annotation and native sidecars are not in the metrics' labels:
    #: only the agent sees them.
    sidecar_containers: str = SIDECAR_CONTAINER_PATTERN
    #: The resolution of the annotation queries (episodes, rollouts, pod and endpoint
    #: events): fine enough to mark an episode shorter than a minute.
    annotation_step: float = seconds(10)
    #: kubernetes-mixin's "Compute Resources / Pod" and "Compute Resources / Node (Pods)"
    #: dashboards, which the panels with pod or node labels link to.
    kubernetes_pod_uid: str = "6581e46e4e5c7ba40a07646395ef7b23"
    kubernetes_node_uid: str = "200ac8fdbfbb74b39aff88118e4d1c2c"


@dataclass(frozen=True)
class MixinConfig:
    selectors: Selectors = field(default_factory=Selectors)
    slo: Slo = field(default_factory=Slo)
    windows: Windows = field(default_factory=Windows)
    thresholds: Thresholds = field(default_factory=Thresholds)
    dashboards: Dashboards = field(default_factory=Dashboards)
    #: Each alert's `runbook_url` is this plus `#<alertname in lower case>`.
    runbook_base_url: str = "https://github.com/tailwatch/tailwatch/blob/main/docs/runbooks.md"
    #: The form in which Prometheus stores the agents' latency histograms, which the rules
    #: read: False for classic histograms (`_bucket{le}`, `_sum`, `_count`: a Prometheus
    #: without native histograms, which scrapes the text format), True for native histograms
    #: (Prometheus >= 2.40 with `--enable-feature=native-histograms`, which scrapes the
    #: protobuf format). False by default, as the chart's `prometheus.nativeHistograms`.
    #: `tailwatch generate` writes the rules of both forms whatever it says; the dashboards
    #: read either form (docs/dashboards.md).
    native_histograms: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.slo.objective < 1:
            raise MixinConfigError("slo.objective must be between 0 and 1 (e.g. 0.99)")

    def scaled(self, factor: float, min_window: float = 0.0) -> MixinConfig:
        """Every window and `for` times `factor` (thresholds unchanged), windows at least
        `min_window`: the same rules on a compressed clock, for the end-to-end test."""
        return typing.cast(MixinConfig, _scale(self, factor, min_window))


#: The shortest rate window of a compressed profile: 5 samples at a 1 s scrape interval.
FAST_MIN_WINDOW = 5.0


def fast_profile(speed: float = 30, base: MixinConfig | None = None) -> MixinConfig:
    """`base` (the defaults) on a clock `speed` times faster, rate windows at least 5 s: for
    a Prometheus that scrapes and evaluates every second next to `tailwatch demo --speed`,
    as in the end-to-end test."""
    if not speed >= 1:
        raise MixinConfigError(f"speed {speed:g} must be 1 or more")
    return (base or MixinConfig()).scaled(1 / speed, min_window=FAST_MIN_WINDOW)


def _scale(obj: Any, factor: float, min_window: float) -> Any:
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata.get("duration")
        if kind == "window":
            changes[f.name] = max(value * factor, min_window)
        elif kind == "pending":
            changes[f.name] = value * factor
        elif dataclasses.is_dataclass(value):
            changes[f.name] = _scale(value, factor, min_window)
        elif isinstance(value, tuple) and value and isinstance(value[0], BurnRateAlert):
            changes[f.name] = tuple(
                dataclasses.replace(
                    b,
                    long=max(b.long * factor, min_window),
                    short=max(b.short * factor, min_window),
                    pending=b.pending * factor,
                )
                for b in value
            )
    return dataclasses.replace(obj, **changes)


def from_mapping(overrides: Mapping[str, Any], base: MixinConfig | None = None) -> MixinConfig:
    """`base` (the defaults) with `overrides` applied, e.g. from a YAML file:
    `{"selectors": {"job": 'job="tw"'}, "windows": {"latency": "2m"}}`. Durations may be
    written as Prometheus durations (`2m`, `1d`, `1h30m`) or as seconds; unknown keys, wrong
    types and malformed durations raise `MixinConfigError`."""
    try:
        return typing.cast(MixinConfig, _apply(base or MixinConfig(), overrides, ""))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MixinConfigError):
            raise
        raise MixinConfigError(str(exc)) from None


def _apply(obj: Any, overrides: Mapping[str, Any], path: str) -> Any:
    if not isinstance(overrides, Mapping):
        raise MixinConfigError(f"{path.rstrip('.') or 'the config'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    for key, raw in overrides.items():
        where = f"{path}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise MixinConfigError(f"unknown config key {where!r} (known: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, raw, f"{where}.")
        elif fields[key].metadata.get("duration"):
            changes[key] = _seconds(raw, where)
        elif key == "burn_rates":
            changes[key] = tuple(_burn_rate(item, f"{where}[{i}]") for i, item in enumerate(raw))
        else:
            changes[key] = _coerce(raw, hints[key], where)
    return dataclasses.replace(obj, **changes)


def _seconds(raw: object, where: str) -> float:
    try:
        value = raw if isinstance(raw, int | float) else parse_duration(str(raw))
    except ValueError as exc:
        raise MixinConfigError(f"{where}: {exc}") from None
    if isinstance(value, bool) or not (value >= 0 and math.isfinite(value)):
        raise MixinConfigError(f"{where}: {raw!r} must be a duration of 0 or more")
    return float(value)


def _burn_rate(raw: object, where: str) -> BurnRateAlert:
    if not isinstance(raw, Mapping) or set(raw) != {"long", "short", "factor", "for", "severity"}:
        raise MixinConfigError(f"{where}: needs exactly long, short, factor, for, severity")
    return BurnRateAlert(
        long=_seconds(raw["long"], f"{where}.long"),
        short=_seconds(raw["short"], f"{where}.short"),
        factor=typing.cast(float, _coerce(raw["factor"], float, f"{where}.factor")),
        pending=_seconds(raw["for"], f"{where}.for"),
        severity=str(_coerce(raw["severity"], str, f"{where}.severity")),
    )


def _coerce(raw: object, hint: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, *_) = typing.get_args(hint)
        if not isinstance(raw, list | tuple):
            raise MixinConfigError(f"{where}: {raw!r} must be a list")
        return tuple(_coerce(item, item_type, f"{where}[]") for item in raw)
    if hint is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if (
        isinstance(hint, type)
        and isinstance(raw, hint)
        and not (hint is int and isinstance(raw, bool))
    ):
        return raw
    name = getattr(hint, "__name__", str(hint))
    raise MixinConfigError(f"{where}: {raw!r} must be of type {name}")
