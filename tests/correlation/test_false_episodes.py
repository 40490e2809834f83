"""Steady heavy-tailed latency opens no tail-spike episode, and a clear spike in the same
traffic is one episode whose times are those of the spike. The quick form of
tests/bench/test_false_episodes.py (which measures the rates over many Service-days): the
same generators (tests/bench/steady_latency.py), default settings, a probe every second.

Before the order-statistic spike rules (episodes with `spike_detected_at`), the core opens
false episodes on `pareto_heavy` and puts opened_at/closed_at at detection and at the
settled close (a rolling window and a settle time late): those checks are expected to fail
on such a core and are reported as xfail there; where episodes carry `spike_detected_at`
they must hold.
"""

from __future__ import annotations

import pytest

from tests.bench.steady_latency import PROFILES, SpikeSpec, replay, steady_p99

HOURS = 6
WARMUP = 600.0


@pytest.mark.parametrize("profile", ["pareto_heavy", "gc_pauses"])
def test_steady_heavy_tailed_latency_opens_no_episode(profile: str) -> None:
    result = replay(PROFILES[profile], seed=1, seconds=HOURS * 3600.0)
    if result.episodes and not result.new_rules:
        pytest.xfail(f"core without spike_detected_at: {len(result.episodes)} false episodes")
    assert result.episodes == [], f"{len(result.episodes)} episodes in {HOURS} h of steady latency"


@pytest.mark.parametrize("profile", ["pareto_heavy", "gc_pauses"])
def test_a_clear_spike_is_one_episode_with_the_spike_s_times(profile: str) -> None:
    """20 s in which every probe waits 4 steady p99s more (each about 5x the steady p99)."""
    p99 = steady_p99(PROFILES[profile], seed=1, until=WARMUP)
    spike = SpikeSpec(start=WARMUP, duration=20.0, delay=4 * p99)
    result = replay(PROFILES[profile], seed=1, seconds=WARMUP + 20.0 + 900.0, spike=spike)
    assert len(result.episodes) == 1, result.episodes
    episode = result.episodes[0]
    assert spike.start <= episode.detected_at <= spike.end
    assert episode.closed_at is not None
    errors = (episode.opened_at - spike.start, episode.closed_at - spike.end)
    if not result.new_rules and max(abs(e) for e in errors) > 2.0:
        pytest.xfail(f"core without spike_detected_at: opened/closed {errors} s off")
    assert abs(errors[0]) <= 2.0, f"opened {errors[0]:+.1f} s from the spike's start"
    assert abs(errors[1]) <= 2.0, f"closed {errors[1]:+.1f} s from the spike's end"
