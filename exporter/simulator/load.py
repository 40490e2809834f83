"""The CPU and memory a simulated container uses for the traffic it serves, as the kernel
would account it: CFS quota and throttling, CPU and memory pressure (PSI), contention for
the node's cores (shared by CPU weight, from the requests, as CFS does). Pure: the data
plane feeds it request rates and the cgroup tree writer turns its answers into cgroup
files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

MiB = 1 << 20
#: Variation of a container's CPU demand from one CFS period to the next (coefficient of
#: variation): requests arrive in bursts, so a container averaging 80% of its quota still
#: runs out of it in some periods.
PERIOD_DEMAND_CV = 0.35
#: Memory pressure starts when the working set passes this share of the limit (reclaim).
RECLAIM_THRESHOLD = 0.9


@dataclass(frozen=True, slots=True)
class ContainerProfile:
    """One container of a simulated pod.

    `cpu_idle` cores are used with no traffic, plus `cpu_per_request` core-seconds per
    request that reaches the pod (a cold process spends more: JIT, cache fills). `on_path`:
    requests go through it (the app, a proxy sidecar), so its throttling delays them, and
    `hop` is what it adds to each, `passes` how often a request crosses it (a proxy: on
    the way in and on the way out, each time at risk of a throttled period). `serves`: the
    container listening on the pod's port. `sidecar`: a native sidecar (a restartable init
    container). `wakeups`: how many times one request's work in the serving container
    waits to be scheduled (hand-offs between thread pools, callbacks): each may wait for a
    core while the node's CPUs are contended (`latency.RUNQUEUE_WAIT`).
    """

    name: str
    cpu_idle: float = 0.01
    cpu_per_request: float = 0.0
    cpu_request: float = 0.1
    cpu_limit: float | None = None
    memory: int = 64 * MiB
    memory_limit: int | None = None
    on_path: bool = False
    hop: float = 0.0
    passes: int = 1
    serves: bool = False
    sidecar: bool = False
    wakeups: int = 1


@dataclass(frozen=True, slots=True)
class Throttling:
    usage: float  # cores actually used
    throttled_share: float  # share of CFS periods in which the quota ran out
    stall: float  # share of wall time the cgroup could not run (waiting for a new period)


def _normal_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def cfs(demand: float, limit: float | None, cv: float = PERIOD_DEMAND_CV) -> Throttling:
    """CFS bandwidth control of a cgroup wanting `demand` cores under a quota of `limit`
    cores per period. Above the limit it runs `limit / demand` of the time and stalls the
    rest; below it, bursts still exhaust the quota in some periods (demand per period is
    taken as normal around `demand` with a spread of `cv` times the quota), stalling
    briefly."""
    if demand <= 0:
        return Throttling(0.0, 0.0, 0.0)
    if limit is None or limit <= 0:
        return Throttling(demand, 0.0, 0.0)
    ratio = demand / limit
    share = _normal_tail((1 - ratio) / cv)
    # A throttled period stalls for what exceeds the quota; bursts under the average stall
    # only for a sliver of the period.
    stall = share * max(0.05, 1 - 1 / ratio) if ratio < 1 else 1 - 1 / ratio
    stall = min(stall, 1.0)
    return Throttling(min(demand * (1 - stall), limit), share, stall)


@dataclass(frozen=True, slots=True)
class ContainerLoad:
    """What one container does and suffers at one moment (rates and shares, not counters)."""

    name: str
    demand: float  # cores it wants
    usage: float  # cores it gets
    throttled_share: float
    stall: float
    psi_cpu_some: float  # share of time some of its tasks were runnable but not running
    psi_cpu_full: float  # share of time all of them were
    working_set: int  # bytes
    memory_limit: int | None
    psi_memory_some: float
    psi_memory_full: float


def memory_pressure(working_set: int, limit: int | None) -> tuple[float, float]:
    """PSI some/full shares for memory: reclaim stalls once the working set passes
    RECLAIM_THRESHOLD of the limit, growing as it nears the limit."""
    if limit is None or limit <= 0:
        return 0.0, 0.0
    over = working_set / limit - RECLAIM_THRESHOLD
    if over <= 0:
        return 0.0, 0.0
    some = min(0.6, over * 5)
    return some, some / 3


def container_load(
    profile: ContainerProfile,
    arrival_rate: float,
    *,
    cold_factor: float = 1.0,
    extra_cpu: float = 0.0,
    working_set: int | None = None,
    running: bool = True,
) -> ContainerLoad:
    """The load of `profile` receiving `arrival_rate` requests/s, `cold_factor` times the
    usual CPU per request, plus `extra_cpu` cores of work of its own (a burst)."""
    if not running:
        return ContainerLoad(profile.name, 0, 0, 0, 0, 0, 0, 0, profile.memory_limit, 0, 0)
    demand = profile.cpu_idle + arrival_rate * profile.cpu_per_request * cold_factor + extra_cpu
    throttling = cfs(demand, profile.cpu_limit)
    ws = profile.memory if working_set is None else working_set
    mem_some, mem_full = memory_pressure(ws, profile.memory_limit)
    return ContainerLoad(
        name=profile.name,
        demand=demand,
        usage=throttling.usage,
        throttled_share=throttling.throttled_share,
        stall=throttling.stall,
        # Tasks of a throttled cgroup stay runnable but cannot run: a CPU stall for PSI,
        # of all its tasks at once ("full") since the whole cgroup is throttled.
        psi_cpu_some=throttling.stall,
        psi_cpu_full=throttling.stall * 0.9,
        working_set=ws,
        memory_limit=profile.memory_limit,
        psi_memory_some=mem_some,
        psi_memory_full=mem_full,
    )


def contend(
    loads: Sequence[ContainerLoad], cores: float, weights: Sequence[float] | None = None
) -> tuple[list[ContainerLoad], float]:
    """Share a node's `cores` among its containers, as CFS shares them by CPU weight (the
    requests; equal without `weights`): when their usage adds up to more, a container
    wanting less than its weight's share gets what it wants and the others share the rest
    by weight (water-filling); and every container with work waits for a CPU part of the
    time (PSI cpu some: 1 - cores / what they all want). Returns the loads and the node's
    over-subscription, what they want / cores (1 = none)."""
    total = sum(load.usage for load in loads)
    if cores <= 0 or total <= cores:
        return list(loads), 1.0
    factor = total / cores
    waiting = 1 - 1 / factor
    weight = [max(1e-6, w) for w in weights] if weights is not None else [1.0] * len(loads)
    granted = [0.0] * len(loads)
    hungry = [i for i, load in enumerate(loads) if load.usage > 0]
    left = cores
    while hungry:
        per_weight = left / sum(weight[i] for i in hungry)
        content = {i for i in hungry if loads[i].usage <= per_weight * weight[i]}
        if not content:
            for i in hungry:
                granted[i] = per_weight * weight[i]
            break
        for i in content:
            granted[i] = loads[i].usage
            left -= loads[i].usage
        hungry = [i for i in hungry if i not in content]
    out = [
        replace(
            load,
            usage=granted[i],
            psi_cpu_some=min(1.0, load.psi_cpu_some + waiting) if load.usage > 0 else 0.0,
        )
        for i, load in enumerate(loads)
    ]
    return out, factor
