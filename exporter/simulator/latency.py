"""How long a simulated pod takes to answer one request: a pure, seeded latency model.

A request's latency is its own work (a log-normal body with a rare slow path, as real
service times have), stretched while the pod is cold after it became ready, plus the time
it waits for a free worker (Erlang C: the pod's workers carry the share of the Service's
nominal load that kube-proxy sends it, so fewer ready endpoints mean more queueing), plus
the time it waits while a container on its path is out of CFS quota, plus the time its
threads wait for a core when the node's CPUs are contended (a noisy neighbour). Every
draw takes the random generator, so a seeded generator gives the same latencies.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

#: Utilisation is capped below 1: past it a real queue grows until clients time out; here
#: the wait stays finite and very long, which is what a prober sees of an overloaded pod.
MAX_UTILISATION = 0.97
#: The kernel's default CFS period (cpu.max's second field, cpu.cfs_period_us).
CFS_PERIOD = 0.1
#: How long a woken thread may wait for a core behind CPU-bound threads of other cgroups:
#: a few of them per CPU, each running its slice (CFS's minimum granularity, 3 ms at 8
#: CPUs) and its cgroup's turn before the woken one's.
RUNQUEUE_WAIT = 0.020


@dataclass(frozen=True, slots=True)
class ServiceTime:
    """The work of one request: log-normal around `median` (shape `sigma`), and with
    probability `slow_probability` a slow path (a cache miss, a GC pause, a slow downstream
    call) `slow_factor` times longer. That gives the long right tail real services have."""

    median: float
    sigma: float = 0.4
    slow_probability: float = 0.01
    slow_factor: float = 6.0

    def __post_init__(self) -> None:
        if self.median <= 0 or self.sigma < 0 or self.slow_factor < 1:
            raise ValueError("median must be > 0, sigma >= 0, slow_factor >= 1")
        if not 0 <= self.slow_probability < 1:
            raise ValueError("slow_probability must be in [0, 1)")

    @property
    def mean(self) -> float:
        body = self.median * math.exp(self.sigma**2 / 2)
        return body * (1 - self.slow_probability + self.slow_probability * self.slow_factor)

    def draw(self, rng: random.Random) -> float:
        seconds = rng.lognormvariate(math.log(self.median), self.sigma)
        if rng.random() < self.slow_probability:
            seconds *= self.slow_factor
        return seconds


@dataclass(frozen=True, slots=True)
class ColdStart:
    """A new process is slow until its caches, JIT and connection pools are warm: its work
    takes `1 + amplitude * exp(-age / decay)` times longer, `age` being the seconds since the
    pod became ready (when traffic, which warms it, starts reaching it)."""

    amplitude: float = 3.0
    decay: float = 20.0

    def factor(self, age: float | None) -> float:
        """The slowdown at `age` seconds after ready; None (not ready yet) is fully cold."""
        if age is None or age <= 0:
            return 1 + self.amplitude
        return 1 + self.amplitude * math.exp(-age / self.decay)


def erlang_c(servers: int, offered: float) -> float:
    """The probability that a request waits in an M/M/c queue with `servers` workers and
    `offered` Erlangs of load (arrival rate x mean service time); 1 when saturated."""
    if servers < 1:
        raise ValueError("servers must be at least 1")
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    # Erlang B by its stable recurrence, then Erlang C from it.
    b = 1.0
    for n in range(1, servers + 1):
        b = offered * b / (n + offered * b)
    return servers * b / (servers - offered * (1 - b))


@dataclass(frozen=True, slots=True)
class RequestConditions:
    """What the next request to one pod meets.

    `slowdown` multiplies the work (cold start, CPU contention); `arrival_rate` is the
    nominal requests/s reaching the pod; `capacity_loss` is the share of CPU time the serving
    container cannot run (CFS throttling), which lowers its throughput. `stalls` are the
    shares of each CFS period during which a container on the request's path is throttled
    (the app, a proxy sidecar): a request arriving then waits for the next period. `hop` is
    a fixed time added per request (a proxy's own work). `runqueue` is the share of time
    the node's runnable threads wait for a core (its CPU PSI `some`): each of the request's
    `wakeups` in the serving container waits with that probability, up to RUNQUEUE_WAIT.
    """

    service_time: ServiceTime
    workers: int = 4
    arrival_rate: float = 0.0
    slowdown: float = 1.0
    capacity_loss: float = 0.0
    stalls: tuple[float, ...] = ()
    hop: float = 0.0
    cfs_period: float = CFS_PERIOD
    runqueue: float = 0.0
    wakeups: int = 1

    @property
    def mean_work(self) -> float:
        return self.service_time.mean * self.slowdown

    @property
    def utilisation(self) -> float:
        """Busy share of the pod's workers, capped at MAX_UTILISATION."""
        capacity = self.workers * max(1e-3, 1 - self.capacity_loss)
        return min(MAX_UTILISATION, self.arrival_rate * self.mean_work / capacity)

    def wait_probability(self) -> float:
        return erlang_c(self.workers, self.utilisation * self.workers)

    def mean_wait(self) -> float:
        """The mean queueing delay of a request that has to wait: 1 / (c mu - lambda)."""
        capacity = self.workers * max(1e-3, 1 - self.capacity_loss)
        return self.mean_work / (capacity * (1 - self.utilisation))

    def draw(self, rng: random.Random) -> float:
        """One request's latency in seconds."""
        seconds = self.service_time.draw(rng) * self.slowdown + self.hop
        if rng.random() < self.wait_probability():
            seconds += rng.expovariate(1 / self.mean_wait())
        for stall in self.stalls:
            if stall > 0 and rng.random() < stall:
                # Arrived while the cgroup was out of quota: wait for the period's end.
                seconds += rng.uniform(0, stall * self.cfs_period)
        if self.runqueue > 0:  # (no draw otherwise: uncontended runs stay as they were)
            for _ in range(self.wakeups):
                if rng.random() < self.runqueue:
                    seconds += rng.uniform(0, RUNQUEUE_WAIT)
        return seconds


def quantile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of `samples` by the nearest rank, for tests and the docs."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]
