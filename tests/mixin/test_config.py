"""The mixin config: overrides, their validation, the compressed test profile, and the
multi-cluster switch reaching every aggregation."""

from __future__ import annotations

import re

import pytest

from exporter.mixin import MixinConfig, MixinConfigError, fast_profile, from_mapping, rule_groups
from exporter.mixin.config import BurnRateAlert
from exporter.mixin.promql import duration


def test_overrides_apply_to_nested_fields_and_parse_durations() -> None:
    config = from_mapping(
        {
            "selectors": {"job": 'job="tw", namespace="monitoring"'},
            "windows": {"latency": "2m", "baseline": 3600},
            "thresholds": {"throttling_ratio": 0.4, "rollout_impacts": ["severe"]},
            "slo": {
                "objective": 0.999,
                "burn_rates": [
                    {
                        "long": "1h",
                        "short": "5m",
                        "factor": 14.4,
                        "for": "2m",
                        "severity": "critical",
                    }
                ],
            },
        }
    )
    assert config.selectors.job == 'job="tw", namespace="monitoring"'
    assert config.windows.latency == 120 and config.windows.baseline == 3600
    assert config.windows.resources == MixinConfig().windows.resources
    assert config.thresholds.throttling_ratio == 0.4
    assert config.thresholds.rollout_impacts == ("severe",)
    assert config.slo.burn_rates == (
        BurnRateAlert(long=3600, short=300, factor=14.4, pending=120, severity="critical"),
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"selectorz": {}}, "unknown config key 'selectorz'"),
        ({"windows": {"latency": "soon"}}, "windows.latency: 'soon' is not a duration"),
        ({"windows": {"latency": -1}}, "windows.latency: -1 must be a duration of 0 or more"),
        (
            {"thresholds": {"throttling_ratio": "high"}},
            "throttling_ratio: 'high' must be of type float",
        ),
        ({"thresholds": {"restart_loop_restarts": True}}, "must be of type int"),
        ({"slo": {"objective": 1.5}}, "slo.objective must be between 0 and 1"),
        (
            {"slo": {"burn_rates": [{"long": "1h"}]}},
            "needs exactly long, short, factor, for, severity",
        ),
        ({"windows": "1m"}, "windows must be a mapping"),
        ({"native_histograms": "yes"}, "native_histograms: 'yes' must be of type bool"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(MixinConfigError, match=re.escape(message)):
        from_mapping(overrides)


def test_the_histogram_form_is_classic_by_default_and_switches_every_rule() -> None:
    assert MixinConfig().native_histograms is False
    native = from_mapping({"native_histograms": True})
    assert native.native_histograms is True
    assert fast_profile(base=native).native_histograms is True

    def exprs(config: MixinConfig) -> list[str]:
        # The classic rules also record bucket rates, which the native ones do not.
        return [
            r["expr"]
            for g in rule_groups(config)
            for r in g["rules"]
            if "_bucket:" not in r.get("record", "")
        ]

    histogram_rules = [
        (c, n) for c, n in zip(exprs(MixinConfig()), exprs(native), strict=True) if c != n
    ]
    # Quantiles, baseline, endpoint pods, SLO probes, recovery, failures, lag.
    assert len(histogram_rules) >= 8
    classic = re.compile(r"\btailwatch_\w+_(?:bucket|count)\b")
    assert all(classic.search(c) for c, _ in histogram_rules)
    assert not any(classic.search(n) for _, n in histogram_rules)


def test_the_fast_profile_scales_every_window_and_keeps_thresholds() -> None:
    default, fast = MixinConfig(), fast_profile()
    assert fast.windows.baseline == default.windows.baseline / 30
    assert fast.windows.latency == 5  # 60 s / 30, raised to the 5 s floor
    assert fast.thresholds.disruption_for == default.thresholds.disruption_for / 30
    assert fast.thresholds.disruption_p99_ratio == default.thresholds.disruption_p99_ratio
    assert [b.long for b in fast.slo.burn_rates] == [b.long / 30 for b in default.slo.burn_rates]
    assert [b.factor for b in fast.slo.burn_rates] == [b.factor for b in default.slo.burn_rates]
    assert fast.slo.objective == default.slo.objective


def test_durations_render_in_one_promql_unit() -> None:
    assert [duration(s) for s in (300, 3600, 86400, 8640, 90, 0.5, 5)] == [
        "5m",
        "1h",
        "1d",
        "144m",
        "90s",
        "500ms",
        "5s",
    ]


def test_multi_cluster_keeps_the_cluster_label_in_every_aggregation() -> None:
    single = rule_groups(MixinConfig())
    multi = rule_groups(from_mapping({"selectors": {"multi_cluster": True}}))
    exprs = [rule["expr"] for group in multi for rule in group["rules"]]
    for expr in exprs:
        for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr):
            assert clause.split(", ")[0] == "cluster", expr
    assert not any("cluster" in r["expr"] for g in single for r in g["rules"])
