"""The simulated pods' latency and resource models: seeded, and shaped like real services
(a long tail, queueing when fewer endpoints carry the load, cold starts, CFS throttling)."""

from __future__ import annotations

import random

import pytest

from exporter.simulator.latency import (
    MAX_UTILISATION,
    ColdStart,
    RequestConditions,
    ServiceTime,
    erlang_c,
    quantile,
)
from exporter.simulator.load import ContainerProfile, cfs, container_load, contend

WORK = ServiceTime(median=0.010, sigma=0.45, slow_probability=0.003)
N = 20_000


def p(conditions: RequestConditions, q: float, seed: int = 7) -> float:
    rng = random.Random(seed)
    return quantile([conditions.draw(rng) for _ in range(N)], q)


def test_a_seeded_generator_gives_the_same_latencies() -> None:
    conditions = RequestConditions(WORK, workers=4, arrival_rate=300, stalls=(0.2,))
    first = [conditions.draw(random.Random(3)) for _ in range(5)]
    again = [conditions.draw(random.Random(3)) for _ in range(5)]
    assert first == again


def test_service_time_has_its_median_and_a_long_tail() -> None:
    rng = random.Random(1)
    samples = [WORK.draw(rng) for _ in range(N)]
    assert quantile(samples, 0.5) == pytest.approx(0.010, rel=0.05)
    assert quantile(samples, 0.99) > 2.5 * quantile(samples, 0.5)
    assert quantile(samples, 0.999) > 1.5 * quantile(samples, 0.99)  # the slow path
    assert sum(samples) / N == pytest.approx(WORK.mean, rel=0.05)


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = utilisation
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(4, 4.0) == 1.0
    assert erlang_c(4, 3.0) > erlang_c(4, 2.0) > erlang_c(4, 1.0)


def test_fewer_endpoints_carrying_the_load_queue_more() -> None:
    nominal = 300.0

    def per_pod(endpoints: int) -> RequestConditions:
        return RequestConditions(WORK, workers=4, arrival_rate=nominal / endpoints)

    three, two, one = per_pod(3), per_pod(2), per_pod(1)
    assert three.utilisation < two.utilisation < one.utilisation <= MAX_UTILISATION
    assert p(three, 0.99) < p(two, 0.99) < p(one, 0.99)
    # With one endpoint left the pod runs at 85%: the tail is several times longer.
    assert one.utilisation > 0.8
    assert p(one, 0.99) > 2.5 * p(three, 0.99)
    # Light load barely queues: p50 stays near the work's median.
    assert p(three, 0.5) == pytest.approx(WORK.median, rel=0.15)


def test_cold_start_slows_a_new_pod_and_decays() -> None:
    cold = ColdStart(amplitude=3.0, decay=10.0)
    assert cold.factor(None) == cold.factor(0) == 4.0
    assert cold.factor(10) == pytest.approx(1 + 3 / 2.718281828, rel=1e-6)
    assert cold.factor(100) == pytest.approx(1.0, abs=0.001)

    def at(age: float | None) -> RequestConditions:
        return RequestConditions(WORK, workers=4, arrival_rate=100, slowdown=cold.factor(age))

    assert p(at(0), 0.99) > p(at(10), 0.99) > p(at(100), 0.99)
    # Slower work also means higher utilisation: the cold pod queues too.
    assert at(0).utilisation > 3 * at(100).utilisation


def test_throttling_on_the_request_path_stalls_requests() -> None:
    calm = RequestConditions(WORK, workers=4, arrival_rate=100, stalls=(0.0,))
    throttled = RequestConditions(WORK, workers=4, arrival_rate=100, stalls=(0.8,))
    # A stalled request waits up to the rest of the 100 ms CFS period.
    assert p(throttled, 0.99) > p(calm, 0.99) + 0.05
    assert p(throttled, 0.99) < p(calm, 0.99) + 0.1


def test_cfs_below_above_and_without_a_limit() -> None:
    idle = cfs(0.1, 1.0)
    assert idle.usage == pytest.approx(0.1, rel=0.01)
    assert idle.throttled_share < 0.01 and idle.stall < 0.01
    near = cfs(0.9, 1.0)  # bursts exhaust the quota in some periods
    assert 0.1 < near.throttled_share < 0.6 and near.stall < 0.05
    over = cfs(4.0, 1.0)
    assert over.usage == pytest.approx(1.0)
    assert over.stall == pytest.approx(0.75)  # runs 1/4 of each period
    assert over.throttled_share > 0.99
    unlimited = cfs(4.0, None)
    assert (unlimited.usage, unlimited.throttled_share, unlimited.stall) == (4.0, 0.0, 0.0)


def test_container_load_follows_traffic_cold_starts_bursts_and_memory() -> None:
    app = ContainerProfile(
        "app", cpu_idle=0.02, cpu_per_request=0.003, cpu_limit=1.0,
        memory=300 << 20, memory_limit=512 << 20, serves=True,
    )  # fmt: skip
    warm = container_load(app, 100)
    assert warm.usage == pytest.approx(0.32, rel=0.01) and warm.stall < 0.01
    cold = container_load(app, 100, cold_factor=4.0)  # JIT and caches: 4x the CPU
    assert cold.demand == pytest.approx(1.22) and cold.usage == pytest.approx(1.0)
    assert cold.throttled_share > 0.5 and cold.psi_cpu_some == cold.stall > 0.1
    burst = container_load(app, 100, extra_cpu=2.0)
    assert burst.stall > cold.stall
    near_limit = container_load(app, 100, working_set=500 << 20)
    assert near_limit.psi_memory_some > 0 and warm.psi_memory_some == 0
    dead = container_load(app, 100, running=False)
    assert dead.usage == 0 and dead.working_set == 0


def test_contention_for_the_nodes_cores() -> None:
    app = ContainerProfile("app", cpu_idle=1.5)
    loads = [container_load(app, 0) for _ in range(4)]  # 6 cores wanted
    shared, factor = contend(loads, cores=4.0)
    assert factor == pytest.approx(1.5)
    assert sum(load.usage for load in shared) == pytest.approx(4.0)
    assert all(load.psi_cpu_some == pytest.approx(1 / 3) for load in shared)
    roomy, none = contend(loads, cores=8.0)
    assert none == 1.0 and roomy == loads
