"""Resource attribution (docs/correlation.md): the containers under pressure during an episode.

Each cgroup pass gives cumulative counters per container; `ResourceTracker` turns two
consecutive passes into per-container deltas, keeps a slowly moving steady-state CPU share
of each container in its pod (so a sidecar's burst stands out against its usual share), and
hands the deltas to whoever accumulates them (an open episode, the spike detector's recent
window). `Pressure` accumulates deltas over a window and scores each container. Pure:
readings are plain objects, `now` is passed in.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

ContainerKey = tuple[str, str, str]  # namespace, pod, container
PodKey = tuple[str, str]  # namespace, pod


class PressureReading(Protocol):
    @property
    def resource(self) -> str: ...
    @property
    def some_seconds(self) -> float: ...
    @property
    def full_seconds(self) -> float | None: ...


class ContainerReading(Protocol):
    """What the core reads of one cgroup sample (the cgroup sampler's `CgroupSample`)."""

    @property
    def namespace(self) -> str: ...
    @property
    def pod(self) -> str: ...
    @property
    def container(self) -> str: ...
    @property
    def cpu_usage_seconds(self) -> float | None: ...
    @property
    def cpu_periods(self) -> int | None: ...
    @property
    def cpu_throttled_periods(self) -> int | None: ...
    @property
    def memory_working_set_bytes(self) -> int | None: ...
    @property
    def memory_limit_bytes(self) -> int | None: ...
    @property
    def pressure(self) -> Sequence[PressureReading]: ...


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a signal counts as pressure (docs/correlation.md)."""

    throttling: float = 0.25  # throttled share of CFS periods
    psi: float = 0.10  # share of time some task stalled on CPU or memory
    memory: float = 0.90  # working set / limit
    sidecar_share: float = 0.25  # rise of a sidecar's share of its pod's CPU


@dataclass(frozen=True, slots=True)
class Delta:
    """One container between two passes."""

    key: ContainerKey
    at: float  # the later pass: the delta covers (at - elapsed, at]
    elapsed: float
    cpu_seconds: float | None
    periods: int | None
    throttled_periods: int | None
    psi_cpu_some: float | None
    psi_memory_some: float | None
    memory_ratio: float | None  # working set / limit at the later pass
    sidecar: bool
    steady_share: float | None  # the container's usual share of its pod's CPU


@dataclass(slots=True)
class _Previous:
    at: float
    cpu: float | None
    periods: int | None
    throttled: int | None
    psi_cpu: float | None
    psi_memory: float | None


def _psi(reading: ContainerReading, resource: str) -> float | None:
    for p in reading.pressure:
        if p.resource == resource:
            return p.some_seconds
    return None


def _sub(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or new < old:  # a reset (container restarted): no delta
        return None
    return new - old


class ResourceTracker:
    """Per-container deltas between cgroup passes, and each container's steady CPU share.

    `steady_window`: time constant of the steady share (the baseline window): it moves
    only while the pod's Services are steady, so a burst does not become the norm.
    """

    def __init__(self, steady_window: float = 300.0, history: float = 0.0) -> None:
        self.steady_window = steady_window
        self.history = history
        self._previous: dict[ContainerKey, _Previous] = {}
        self._steady_cpu: dict[ContainerKey, float] = {}  # cores, moving average
        # The last `history` seconds of deltas per pod: a spike is detected after it began,
        # and its attribution covers it from its start.
        self._recent: dict[PodKey, deque[Delta]] = {}

    def recent(self, pods: Iterable[PodKey], since: float) -> list[Delta]:
        """The kept deltas of `pods` that end after `since`, oldest first."""
        out = [d for pod in pods for d in self._recent.get(pod, ()) if d.at > since]
        out.sort(key=lambda d: d.at)
        return out

    def _remember(self, deltas: list[Delta], now: float) -> None:
        if self.history <= 0:
            return
        for d in deltas:
            held = self._recent.get(d.key[:2])
            if held is None:
                held = self._recent[d.key[:2]] = deque()
            held.append(d)
        for pod in list(self._recent):
            held = self._recent[pod]
            while held and held[0].at <= now - self.history:
                held.popleft()
            if not held:
                del self._recent[pod]

    def observe(
        self,
        now: float,
        readings: Iterable[ContainerReading],
        sidecars: Mapping[PodKey, frozenset[str]],
        steady_pods: frozenset[PodKey] | set[PodKey],
    ) -> list[Delta]:
        """One pass: the deltas since the previous pass of every container seen in both.
        `sidecars` names the sidecar containers of each pod; `steady_pods` are the pods whose
        Services are all steady now (their shares may move)."""
        deltas: list[Delta] = []
        seen: set[ContainerKey] = set()
        rates: dict[ContainerKey, float] = {}
        for r in readings:
            key = (r.namespace, r.pod, r.container)
            seen.add(key)
            previous = self._previous.get(key)
            current = _Previous(
                now,
                r.cpu_usage_seconds,
                r.cpu_periods,
                r.cpu_throttled_periods,
                _psi(r, "cpu"),
                _psi(r, "memory"),
            )
            self._previous[key] = current
            if previous is None or now <= previous.at:
                continue
            elapsed = now - previous.at
            cpu = _sub(current.cpu, previous.cpu)
            periods = _sub(current.periods, previous.periods)
            throttled = _sub(current.throttled, previous.throttled)
            limit = r.memory_limit_bytes
            ws = r.memory_working_set_bytes
            if cpu is not None:
                rates[key] = cpu / elapsed
            deltas.append(
                Delta(
                    key=key,
                    at=now,
                    elapsed=elapsed,
                    cpu_seconds=cpu,
                    periods=None if periods is None else int(periods),
                    throttled_periods=None if throttled is None else int(throttled),
                    psi_cpu_some=_sub(current.psi_cpu, previous.psi_cpu),
                    psi_memory_some=_sub(current.psi_memory, previous.psi_memory),
                    memory_ratio=ws / limit if ws is not None and limit else None,
                    sidecar=r.container in sidecars.get((r.namespace, r.pod), frozenset()),
                    steady_share=None,
                )
            )
        for gone in [k for k in self._previous if k not in seen]:
            del self._previous[gone]
            self._steady_cpu.pop(gone, None)
        # Steady shares: a moving average of each container's CPU rate, per pod.
        for d in deltas:
            rate = rates.get(d.key)
            if rate is not None and d.key[:2] in steady_pods:
                weight = 1.0 - math.exp(-d.elapsed / self.steady_window)
                held = self._steady_cpu.get(d.key)
                self._steady_cpu[d.key] = rate if held is None else held + weight * (rate - held)
        steady_totals: dict[PodKey, float] = {}
        for key, value in self._steady_cpu.items():
            steady_totals[key[:2]] = steady_totals.get(key[:2], 0.0) + value
        out: list[Delta] = []
        for d in deltas:
            mine = self._steady_cpu.get(d.key)
            total = steady_totals.get(d.key[:2], 0.0)
            out.append(
                replace(d, steady_share=mine / total if mine is not None and total > 0 else None)
            )
        self._remember(out, now)
        return out


@dataclass(slots=True)
class _Sums:
    elapsed: float = 0.0
    cpu: float = 0.0
    cpu_known: bool = False
    periods: int = 0
    throttled: int = 0
    periods_known: bool = False
    psi_cpu: float = 0.0
    psi_cpu_known: bool = False
    psi_memory: float = 0.0
    psi_memory_known: bool = False
    memory_ratio: float | None = None
    sidecar: bool = False
    steady_share: float | None = None
    # The strongest single pass: a burst shows at its height, not only spread over the window.
    peak_throttled: float | None = None
    peak_psi_cpu: float | None = None
    peak_psi_memory: float | None = None

    def add(self, d: Delta) -> None:
        self.elapsed += d.elapsed
        self.sidecar = d.sidecar
        if d.steady_share is not None:
            self.steady_share = d.steady_share
        if d.cpu_seconds is not None:
            self.cpu += d.cpu_seconds
            self.cpu_known = True
        if d.periods is not None and d.throttled_periods is not None:
            self.periods += d.periods
            self.throttled += d.throttled_periods
            self.periods_known = True
            if d.periods:
                self.peak_throttled = _peak(self.peak_throttled, d.throttled_periods / d.periods)
        if d.psi_cpu_some is not None:
            self.psi_cpu += d.psi_cpu_some
            self.psi_cpu_known = True
            self.peak_psi_cpu = _peak(self.peak_psi_cpu, d.psi_cpu_some / d.elapsed)
        if d.psi_memory_some is not None:
            self.psi_memory += d.psi_memory_some
            self.psi_memory_known = True
            self.peak_psi_memory = _peak(self.peak_psi_memory, d.psi_memory_some / d.elapsed)
        if d.memory_ratio is not None:
            self.memory_ratio = max(self.memory_ratio or 0.0, d.memory_ratio)


def _peak(held: float | None, value: float) -> float:
    return value if held is None else max(held, value)


@dataclass(frozen=True, slots=True)
class ContainerPressure:
    """One container's signals over a window, and its pressure score (0 = none, 1 = full).
    The ratios are over the whole window; the peaks are the strongest single cgroup pass."""

    namespace: str
    pod: str
    container: str
    sidecar: bool
    cpu_cores: float | None
    pod_cpu_share: float | None
    steady_pod_cpu_share: float | None
    throttled_ratio: float | None
    psi_cpu_some: float | None
    psi_memory_some: float | None
    memory_limit_ratio: float | None
    score: float
    signals: tuple[str, ...]
    peak_throttled_ratio: float | None = None
    peak_psi_cpu_some: float | None = None
    peak_psi_memory_some: float | None = None

    def as_json(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "sidecar": self.sidecar,
            "cpu_cores": r(self.cpu_cores),
            "pod_cpu_share": r(self.pod_cpu_share),
            "steady_pod_cpu_share": r(self.steady_pod_cpu_share),
            "throttled_ratio": r(self.throttled_ratio),
            "peak_throttled_ratio": r(self.peak_throttled_ratio),
            "psi_cpu_some": r(self.psi_cpu_some),
            "peak_psi_cpu_some": r(self.peak_psi_cpu_some),
            "psi_memory_some": r(self.psi_memory_some),
            "peak_psi_memory_some": r(self.peak_psi_memory_some),
            "memory_limit_ratio": r(self.memory_limit_ratio),
            "score": r(self.score),
            "signals": list(self.signals),
        }


#: Cgroup passes one episode keeps for its attribution (over an hour of one container at
#: one pass a second); past it the oldest are dropped.
MAX_DELTAS = 4096


@dataclass(slots=True)
class Pressure:
    """The deltas of the containers of some pods over an episode, ranked over any interval
    of it (the slow interval, not the settle time after it)."""

    deltas: deque[Delta] = field(default_factory=lambda: deque(maxlen=MAX_DELTAS))

    def add(self, d: Delta) -> None:
        self.deltas.append(d)

    def ranked(
        self,
        thresholds: Thresholds,
        start: float = -math.inf,
        end: float = math.inf,
        limit: int = 5,
    ) -> list[ContainerPressure]:
        """The containers under the strongest pressure over [start, end] (to within one
        cgroup pass: a pass that overlaps the interval counts whole) first; those with none
        are left out."""
        sums: dict[ContainerKey, _Sums] = {}
        for d in self.deltas:
            if d.at > start and d.at - d.elapsed < end:
                held = sums.get(d.key)
                if held is None:
                    held = sums[d.key] = _Sums()
                held.add(d)
        pod_cpu: dict[PodKey, float] = {}
        for key, s in sums.items():
            if s.cpu_known:
                pod_cpu[key[:2]] = pod_cpu.get(key[:2], 0.0) + s.cpu
        out: list[ContainerPressure] = []
        for key, s in sums.items():
            if s.elapsed <= 0:
                continue
            throttled = s.throttled / s.periods if s.periods_known and s.periods else None
            psi_cpu = s.psi_cpu / s.elapsed if s.psi_cpu_known else None
            psi_memory = s.psi_memory / s.elapsed if s.psi_memory_known else None
            pod_total = pod_cpu.get(key[:2], 0.0)
            share = s.cpu / pod_total if s.cpu_known and pod_total > 0 else None
            signals: list[str] = []
            scores = [0.0]
            if throttled is not None:
                scores.append(throttled)
                if throttled >= thresholds.throttling:
                    signals.append("cpu_throttling")
            if psi_cpu is not None:
                scores.append(psi_cpu)
                if psi_cpu >= thresholds.psi:
                    signals.append("cpu_pressure")
            if psi_memory is not None:
                scores.append(psi_memory)
                if psi_memory >= thresholds.psi:
                    signals.append("memory_pressure")
            if s.memory_ratio is not None:
                scores.append(max(0.0, (s.memory_ratio - 0.8) / 0.2))
                if s.memory_ratio >= thresholds.memory:
                    signals.append("memory_near_limit")
            if s.sidecar and share is not None:
                rise = share - (s.steady_share or 0.0)
                scores.append(rise)
                if rise >= thresholds.sidecar_share:
                    signals.append("sidecar_cpu")
            score = min(1.0, max(scores))
            if score <= 0.0:
                continue
            out.append(
                ContainerPressure(
                    namespace=key[0],
                    pod=key[1],
                    container=key[2],
                    sidecar=s.sidecar,
                    cpu_cores=s.cpu / s.elapsed if s.cpu_known else None,
                    pod_cpu_share=share,
                    steady_pod_cpu_share=s.steady_share,
                    throttled_ratio=throttled,
                    psi_cpu_some=psi_cpu,
                    psi_memory_some=psi_memory,
                    memory_limit_ratio=s.memory_ratio,
                    score=score,
                    signals=tuple(signals),
                    peak_throttled_ratio=s.peak_throttled,
                    peak_psi_cpu_some=s.peak_psi_cpu,
                    peak_psi_memory_some=s.peak_psi_memory,
                )
            )
        out.sort(key=lambda c: (not c.signals, -c.score, c.namespace, c.pod, c.container))
        return out[:limit]
