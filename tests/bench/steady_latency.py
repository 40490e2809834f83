"""Steady, heavy-tailed probe latency in simulated time, for replaying through the correlation
core: what a healthy Service's probes look like when nothing happens to it.

A spike detector tuned on smooth latency opens episodes on real traffic, whose tail is heavy
and lumpy: a few slow probes in a row are normal for a Service whose p99.9 is ten times its
p99. Each profile here is one such shape, deterministic from a seed (`random.Random`, so the
same seed gives the same samples on every machine and Python version):

- `pareto_heavy`, `pareto_light`: a lognormal body (median ~3 ms) with a Pareto tail on 5% of
  the requests, alpha 1.2 (the heaviest tail seen in practice: p99.9 ~7x p99) and 2.5;
- `cache`: a bimodal Service, cache hits under a millisecond and misses around 15 ms;
- `gc_pauses`: a lognormal body and stop-the-world pauses of 50-300 ms about once a minute;
  a probe that starts during a pause waits for its end, so at 10 probes/s one pause slows
  several consecutive probes;
- `drift`: a lognormal body with a Pareto (1.8) tail whose scale follows a daily cycle
  (x1 to x2 and back over 24 h).

`samples` yields probe completions on a fixed grid (`rate` per second); `SpikeSpec.apply`
slows an interval of them, the way a real disruption would, for detection tests.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from exporter.core.correlation import ChangeKind, Correlator, Episode, Source
from exporter.core.endpoints import Endpoint
from exporter.core.rules import CorrelationSettings
from exporter.core.services import ServiceRef

#: Probes time out here (exporter.core.probing.DEFAULT_TIMEOUT): no latency sample is longer.
PROBE_TIMEOUT = 5.0

#: A profile's latency as a function of the probe's start time (simulated seconds from the
#: start of the stream, increasing from call to call).
Latency = Callable[[float], float]


@dataclass(frozen=True)
class Profile:
    name: str
    what: str
    build: Callable[[random.Random], Latency]


def _lognormal_pareto(
    rng: random.Random,
    *,
    median: float,
    sigma: float,
    tail: float,
    tail_from: float,
    alpha: float,
    scale: Callable[[float], float] = lambda t: 1.0,
) -> Latency:
    """Lognormal body; a fraction `tail` of the requests instead follows a Pareto tail from
    `tail_from` with index `alpha`. Everything is multiplied by `scale(t)`."""
    mu = math.log(median)

    def latency(t: float) -> float:
        if rng.random() < tail:
            x = tail_from * (1.0 - rng.random()) ** (-1.0 / alpha)
        else:
            x = rng.lognormvariate(mu, sigma)
        return min(x * scale(t), PROBE_TIMEOUT)

    return latency


def pareto_heavy(rng: random.Random) -> Latency:
    return _lognormal_pareto(rng, median=0.003, sigma=0.3, tail=0.05, tail_from=0.006, alpha=1.2)


def pareto_light(rng: random.Random) -> Latency:
    return _lognormal_pareto(rng, median=0.003, sigma=0.3, tail=0.05, tail_from=0.005, alpha=2.5)


def cache(rng: random.Random) -> Latency:
    """85% hits (median 0.8 ms), 15% misses (median 15 ms, wider)."""

    def latency(t: float) -> float:
        if rng.random() < 0.85:
            return rng.lognormvariate(math.log(0.0008), 0.25)
        return min(rng.lognormvariate(math.log(0.015), 0.5), PROBE_TIMEOUT)

    return latency


def gc_pauses(rng: random.Random) -> Latency:
    """Lognormal body (median 4 ms) and pauses of 50-300 ms starting as a Poisson process of
    one a minute on average; a probe starting inside a pause also waits for the rest of it."""
    body = math.log(0.004)
    mean_gap = 60.0
    pause = [-1.0, -1.0]  # start, end of the current or next pause
    next_start = rng.expovariate(1 / mean_gap)

    def latency(t: float) -> float:
        nonlocal next_start
        while next_start <= t:
            pause[0], pause[1] = next_start, next_start + rng.uniform(0.05, 0.3)
            next_start = pause[1] + rng.expovariate(1 / mean_gap)
        wait = pause[1] - t if pause[0] <= t < pause[1] else 0.0
        return wait + rng.lognormvariate(body, 0.35)

    return latency


def drift(rng: random.Random) -> Latency:
    """A Pareto (1.8) tail on 3% over a lognormal body, scaled x1..x2 over a 24 h cycle with a
    random phase (a Service busier in the day than at night)."""
    phase = rng.uniform(0, 2 * math.pi)

    def scale(t: float) -> float:
        return 2 ** (0.5 + 0.5 * math.sin(2 * math.pi * t / 86_400 + phase))

    return _lognormal_pareto(
        rng, median=0.0025, sigma=0.35, tail=0.03, tail_from=0.006, alpha=1.8, scale=scale
    )


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("pareto_heavy", "lognormal body + 5% Pareto tail, alpha 1.2", pareto_heavy),
        Profile("pareto_light", "lognormal body + 5% Pareto tail, alpha 2.5", pareto_light),
        Profile("cache", "bimodal: 85% hits ~0.8 ms, 15% misses ~15 ms", cache),
        Profile("gc_pauses", "lognormal body + 50-300 ms pauses ~1/min", gc_pauses),
        Profile("drift", "Pareto 1.8 tail, scale x1..x2 over 24 h", drift),
    )
}


def rng_for(profile: str, seed: int) -> random.Random:
    """The generator of one Service's stream (a string seed is stable across runs)."""
    return random.Random(f"{profile}/{seed}")


@dataclass(frozen=True)
class SpikeSpec:
    """A disruption of `duration` seconds from `start` (stream seconds). Every sample in it
    becomes `sample * factor + delay`: `factor` alone is a Service k times slower (its whole
    distribution, p99 included, scaled); `delay` alone a fixed wait added to every request
    (a queue, a slow dependency), so every sample in it is slow. With `fraction` < 1 only that
    share of the samples is affected (CPU throttling: the requests that hit a throttled period
    wait, the others do not)."""

    start: float
    duration: float
    factor: float = 1.0
    delay: float = 0.0
    fraction: float = 1.0

    @property
    def end(self) -> float:
        return self.start + self.duration

    def apply(self, t: float, seconds: float, rng: random.Random) -> tuple[float, bool]:
        """The sample as the disruption leaves it, and whether it is inside the disruption."""
        if not self.start <= t < self.end:
            return seconds, False
        if self.fraction < 1.0 and rng.random() >= self.fraction:
            return seconds, True
        return min(seconds * self.factor + self.delay, PROBE_TIMEOUT), True


def samples(
    profile: Profile,
    seed: int,
    seconds: float,
    rate: float = 1.0,
    spike: SpikeSpec | None = None,
) -> Iterator[tuple[float, float, bool]]:
    """(t, latency, in_spike) for probes at `rate` per second over [0, seconds): probe i
    starts at (i + 0.5) / rate, so a tick on whole seconds never coincides with a sample."""
    latency = profile.build(rng_for(profile.name, seed))
    spike_rng = random.Random(f"spike/{profile.name}/{seed}")
    n = int(seconds * rate)
    for i in range(n):
        t = (i + 0.5) / rate
        value = latency(t)
        if spike is None:
            yield t, value, False
        else:
            value, inside = spike.apply(t, value, spike_rng)
            yield t, value, inside


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (ceil(q·n)) of sorted values."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def steady_p99(profile: Profile, seed: int, until: float, rate: float = 1.0) -> float:
    """The p99 of the stream's own samples before `until` (what the baseline saw)."""
    return nearest_rank(sorted(v for _, v, _ in samples(profile, seed, until, rate)), 0.99)


# -- replay through the correlation core ---------------------------------------------------

T0 = 1_800_000_000.0
NODE = "node-1"
SERVICE = ServiceRef("shop", "steady")


@dataclass
class Seen:
    """One spike episode of a replay, times in stream seconds. `detected_at` is when
    detection fired (`spike_detected_at` where the core keeps it, else the tick that returned
    the OPENED change); `opened_at` is when the core says the episode began."""

    id: str
    detected_at: float
    opened_at: float
    closed_at: float | None
    recovered_at: float | None
    status: str
    baseline_p99: float | None
    during_p99: float | None


@dataclass
class Replay:
    episodes: list[Seen]
    samples: int
    cpu_seconds: float  # process CPU of the replay, generator included
    in_spike: list[float]  # the samples inside the spike, in order


def _endpoint() -> Endpoint:
    pod = "steady-5d9f8c7b6-x2x4q"
    return Endpoint(f"shop/{pod}", "127.10.0.1", pod, f"uid-{pod}", "node-2", True, True, False)


def replay(
    profile: Profile,
    seed: int,
    seconds: float,
    rate: float = 1.0,
    spike: SpikeSpec | None = None,
    settings: CorrelationSettings | None = None,
) -> Replay:
    """Feed one Service's stream to a `Correlator` through its public calls, a tick every
    `settings.tick_interval`, and report every episode it opened."""
    started = time.process_time()
    settings = settings or CorrelationSettings()
    c = Correlator(settings, node=NODE)
    c.set_services([SERVICE])
    endpoint = _endpoint()
    c.endpoints_changed(SERVICE, {endpoint.identity: endpoint})
    step = settings.tick_interval
    next_tick = step
    opened: list[tuple[float, Episode]] = []
    in_spike: list[float] = []
    count = 0

    def tick(at: float) -> None:
        for ch in c.tick(T0 + at):
            if ch.kind is ChangeKind.OPENED:
                opened.append((at, ch.episode))

    for t, value, inside in samples(profile, seed, seconds, rate, spike):
        while next_tick < t:
            tick(next_tick)
            next_tick += step
        c.record_latency(SERVICE, Source.SERVICE_PROBE, value, T0 + t)
        count += 1
        if inside:
            in_spike.append(value)
    while next_tick <= seconds:
        tick(next_tick)
        next_tick += step
    seen = [_seen(at, episode) for at, episode in opened]
    return Replay(seen, count, time.process_time() - started, in_spike)


def _stream_time(at: float | None) -> float | None:
    return None if at is None else at - T0


def _seen(tick_at: float, episode: Episode) -> Seen:
    detected = getattr(episode, "spike_detected_at", None)
    latency = episode.as_json().get("latency") or {}
    baseline = latency.get("baseline") or {}
    during = latency.get("during") or {}
    return Seen(
        id=episode.id,
        detected_at=tick_at if detected is None else detected - T0,
        opened_at=episode.opened_at - T0,
        closed_at=_stream_time(episode.closed_at),
        recovered_at=_stream_time(episode.recovered_at),
        status=str(episode.status),
        baseline_p99=baseline.get("p99"),
        during_p99=during.get("p99"),
    )
