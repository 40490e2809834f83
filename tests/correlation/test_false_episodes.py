"""Steady heavy-tailed latency opens no tail-spike episode, and a clear spike in the same
traffic is one episode whose times are those of the spike, not of when a window noticed it.
The quick form of tests/bench/test_false_episodes.py (which measures the rates over many
Service-days): the same generators (tests/bench/steady_latency.py), default settings, a
probe every second. On the core before the order-statistic spike rules, `pareto_heavy` had
two false episodes in these 6 hours and the spike's opened_at/closed_at were 3 s and 43 s
late.
"""

from __future__ import annotations

import pytest

from tests.bench.steady_latency import PROFILES, SpikeSpec, replay, steady_p99

HOURS = 6
WARMUP = 600.0


@pytest.mark.parametrize("profile", list(PROFILES))
def test_steady_heavy_tailed_latency_opens_no_episode(profile: str) -> None:
    result = replay(PROFILES[profile], seed=1, seconds=HOURS * 3600.0)
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
    assert episode.status == "recovered"
    assert episode.closed_at is not None
    assert abs(episode.opened_at - spike.start) <= 2.0, "opened_at is not the spike's start"
    assert abs(episode.closed_at - spike.end) <= 2.0, "closed_at is not the spike's end"
