"""Resource attribution (docs/correlation.md): the containers under pressure during an episode,
the Service's own and its neighbours on the node.

Each cgroup pass gives cumulative counters for every container of the node.
`ResourceTracker` keeps a slowly moving steady CPU rate of each of them, turns two
consecutive passes of the containers of pods backing a Service into per-container deltas
(with each container's steady share of its pod's CPU, so a sidecar's burst stands out
against its usual share) for whoever accumulates them (an open episode's `Pressure`, the
spike detector's recent window), and keeps a ring of `Checkpoint`s: the cumulative
counters of every container at each pass, as long as a spike may be found after it began.
An episode pins the checkpoints at the start and the end of its slow interval
(`NeighbourWindow`); the neighbours' signals over it are the differences of two
checkpoints (`rank_neighbours`), so nothing per container grows with the episode's length.
Pure: readings are plain objects, `now` is passed in.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    neighbour_cpu: float = 0.5  # cores a neighbour burned above its own steady rate


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


def _grown(new: float, old: float) -> float | None:
    """A counter's growth between two passes; None when either is unknown (NaN) or it went
    back (a reset: the container restarted)."""
    if math.isnan(new) or math.isnan(old) or new < old:
        return None
    return new - old


class ResourceTracker:
    """Every container of the node between cgroup passes: steady CPU rates, the deltas of
    the containers of pods backing a Service, and the ring of checkpoints.

    `steady_window`: time constant of the steady rates (the baseline window): a container's
    moves only while its pod backs no disrupted Service, so a burst does not become the
    norm. `history`: how long deltas and checkpoints are kept (a spike is detected after it
    began, and its attribution covers it from its start).
    """

    def __init__(self, steady_window: float = 300.0, history: float = 0.0) -> None:
        self.steady_window = steady_window
        self.history = history
        # The last `history` seconds of deltas per pod: a spike is detected after it began,
        # and its attribution covers it from its start.
        self._recent: dict[PodKey, deque[Delta]] = {}
        # Checkpoints of the last `history` seconds, oldest first, and one before them.
        self.ring: deque[Checkpoint] = deque()
        self._layout = Layout((), {})
        # Containers first seen since they began, with their counters then: a neighbour
        # that did not exist at an interval's start is measured from its first pass.
        self.births: dict[ContainerKey, tuple[float, tuple[float, ...]]] = {}
        #: The sidecars of each pod at the last pass (exporter/core/sidecars.py).
        self.sidecars: Mapping[PodKey, frozenset[str]] = {}

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
        backing: Collection[PodKey],
        *,
        unsteady: Collection[PodKey] = frozenset(),
        node_pressure: Sequence[PressureReading] = (),
    ) -> list[Delta]:
        """One pass over every container of the node: a checkpoint of all of them, and the
        deltas since the previous pass of the containers of `backing` pods seen in both.
        The steady rates of the containers of `unsteady` pods (backing a Service with an
        episode) stay as they were. The previous pass is the last checkpoint: nothing else
        is kept per container, and the per-container work is a few arithmetic operations."""
        last = self.ring[-1] if self.ring else None
        if last is not None and now <= last.at:
            # The wall clock stepped back (or repeated): nothing can be measured against
            # the old checkpoints; start over from this pass instead of waiting for the
            # clock to catch up with them.
            self.ring.clear()
            self.births.clear()
            last = None
        self.sidecars = sidecars
        previous_index = last.layout.index if last is not None else {}
        previous = last.rows if last is not None else array("d")
        elapsed = now - last.at if last is not None else 0.0
        weight = 1.0 - math.exp(-elapsed / self.steady_window) if elapsed > 0 else 0.0
        nan, isnan = math.nan, math.isnan
        births = self.births
        keys: list[ContainerKey] = []
        rows: list[float] = []
        # (key, its row's offset now and in the last checkpoint, sidecar) of the containers
        # of backing pods seen in both passes.
        moved: list[tuple[ContainerKey, int, int, bool]] = []
        for r in readings:
            key = (r.namespace, r.pod, r.container)
            pod = key[:2]
            cpu = r.cpu_usage_seconds
            periods = r.cpu_periods
            throttled = r.cpu_throttled_periods
            psi_cpu = psi_memory = nan
            for p in r.pressure:
                if p.resource == "cpu":
                    psi_cpu = p.some_seconds
                elif p.resource == "memory":
                    psi_memory = p.some_seconds
            ws, limit = r.memory_working_set_bytes, r.memory_limit_bytes
            row = (
                nan if cpu is None else cpu,
                nan if periods is None else periods,
                nan if throttled is None else throttled,
                psi_cpu,
                psi_memory,
                ws / limit if ws is not None and limit else nan,
            )
            i = previous_index.get(key)
            steady = nan
            if i is None:
                births[key] = (now, row)
            else:
                b = i * _FIELDS
                steady = previous[b + _STEADY]
                used = row[_CPU] - previous[b + _CPU]  # NaN when either is unknown
                if used >= 0 and pod not in unsteady:  # (a reset: the container restarted)
                    rate = used / elapsed
                    steady = rate if isnan(steady) else steady + weight * (rate - steady)
                if pod in backing:
                    moved.append((key, len(rows), b, r.container in sidecars.get(pod, ())))
            keys.append(key)
            rows.extend(row)
            rows.append(steady)
        self._checkpoint(now, keys, rows, node_pressure)
        deltas = self._deltas(now, elapsed, moved, rows, previous) if moved else []
        self._remember(deltas, now)
        return deltas

    @staticmethod
    def _deltas(
        now: float,
        elapsed: float,
        moved: list[tuple[ContainerKey, int, int, bool]],
        rows: Sequence[float],
        previous: Sequence[float],
    ) -> list[Delta]:
        """The deltas of the backing pods' containers, with each one's steady share of its
        pod's steady CPU."""
        steady_totals: dict[PodKey, float] = {}
        for key, a, _, _ in moved:
            steady = rows[a + _STEADY]
            if not math.isnan(steady):
                steady_totals[key[:2]] = steady_totals.get(key[:2], 0.0) + steady
        out: list[Delta] = []
        for key, a, b, sidecar in moved:
            grown = [_grown(rows[a + f], previous[b + f]) for f in range(_MEMORY)]
            used, periods, throttled, psi_cpu, psi_memory = grown
            ratio = rows[a + _MEMORY]
            steady = rows[a + _STEADY]
            total = steady_totals.get(key[:2], 0.0)
            out.append(
                Delta(
                    key=key,
                    at=now,
                    elapsed=elapsed,
                    cpu_seconds=used,
                    periods=None if periods is None else int(periods),
                    throttled_periods=None if throttled is None else int(throttled),
                    psi_cpu_some=psi_cpu,
                    psi_memory_some=psi_memory,
                    memory_ratio=None if math.isnan(ratio) else ratio,
                    sidecar=sidecar,
                    steady_share=None if math.isnan(steady) or total <= 0 else steady / total,
                )
            )
        return out

    # -- checkpoints ----------------------------------------------------------------------

    def _checkpoint(
        self,
        now: float,
        keys: list[ContainerKey],
        rows: list[float],
        node_pressure: Sequence[PressureReading],
    ) -> None:
        """Keep this pass's counters; drop the checkpoints no spike can reach back to any
        more, but the last one before that (an interval starting there needs it)."""
        if tuple(keys) != self._layout.keys:
            layout = Layout(tuple(keys), {k: i for i, k in enumerate(keys)})
            for gone in [k for k in self.births if k not in layout.index]:
                del self.births[gone]  # (a container back later is new again)
            self._layout = layout
        node = {p.resource: p.some_seconds for p in node_pressure}
        self.ring.append(
            Checkpoint(
                now,
                self._layout,
                array("d", rows),
                tuple(_nan(node.get(r)) for r in NODE_RESOURCES),
            )
        )
        horizon = now - self.history
        ring = self.ring
        while len(ring) > 1 and ring[1].at <= horizon:
            ring.popleft()

    @property
    def latest(self) -> Checkpoint | None:
        return self.ring[-1] if self.ring else None

    def at_or_before(self, t: float) -> Checkpoint | None:
        """The last checkpoint at or before `t`; None when the ring no longer has one."""
        for checkpoint in reversed(self.ring):
            if checkpoint.at <= t:
                return checkpoint
        return None

    def at_or_after(self, t: float) -> Checkpoint | None:
        """The first checkpoint at or after `t`, when the ring still reaches back to `t`;
        else None."""
        ring = self.ring
        if not ring or ring[0].at > t:
            return None
        found = None
        for checkpoint in reversed(ring):
            if checkpoint.at < t:
                break
            found = checkpoint
        return found


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


#: The node-wide PSI resources a checkpoint keeps, in order.
NODE_RESOURCES = ("cpu", "memory", "io")
# The fields of one container's row in a checkpoint: cumulative counters, the memory ratio
# at the pass, and the steady CPU rate (cores) then. NaN: not known.
_CPU, _PERIODS, _THROTTLED, _PSI_CPU, _PSI_MEMORY, _MEMORY, _STEADY = range(7)
_FIELDS = 7


@dataclass(frozen=True, slots=True, eq=False)
class Layout:
    """Which container each row of a checkpoint is: shared by every checkpoint taken while
    the node's containers stay the same."""

    keys: tuple[ContainerKey, ...]
    index: dict[ContainerKey, int]


@dataclass(frozen=True, slots=True, eq=False)
class Checkpoint:
    """The cumulative counters of every container of the node at one pass (`_FIELDS`
    doubles per container, in `layout` order), and the node's PSI `some` totals."""

    at: float
    layout: Layout
    rows: array[float]
    node: tuple[float, ...]


@dataclass(slots=True)
class NeighbourWindow:
    """The checkpoints an open episode holds: at (or just before) the start of its slow
    interval, and at (or just after) its end so far; each re-pinned when the interval
    moves and the ring still reaches it. Two checkpoints per episode, however long."""

    start: Checkpoint
    end: Checkpoint
    start_target: float
    end_target: float

    def follow(self, ring: ResourceTracker, start: float, end: float) -> None:
        """The interval is [start, end] now: pin the checkpoints that bound it best."""
        if start != self.start_target:
            found = ring.at_or_before(start)
            if found is not None:
                self.start, self.start_target = found, start
        if end != self.end_target:
            found = ring.at_or_after(end)
            if found is not None:
                self.end, self.end_target = found, end
            elif end > self.end_target and ring.latest is not None:
                # Not reached yet (the next pass will be after it): the latest for now.
                self.end = ring.latest
        if self.end.at < self.start.at:
            self.end = self.start


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


# -- neighbours ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodePressure:
    """The node's pods' PSI `some` over an interval: the share of it in which some task
    stalled on CPU, memory or IO (None where the node has no PSI)."""

    cpu_some: float | None
    memory_some: float | None
    io_some: float | None

    def up(self, thresholds: Thresholds) -> bool:
        """CPU or memory contended on the node."""
        return max(self.cpu_some or 0.0, self.memory_some or 0.0) >= thresholds.psi

    def as_json(self) -> dict[str, float | None]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {
            "cpu_some": r(self.cpu_some),
            "memory_some": r(self.memory_some),
            "io_some": r(self.io_some),
        }


@dataclass(frozen=True, slots=True)
class Neighbour(ContainerPressure):
    """A container of another pod of the node over an episode's slow interval: the
    signals of `ContainerPressure` (ratios over the interval; no per-pass peaks, which
    would need every container's history) and the CPU it burned above its steady rate."""

    cpu_cores_above_steady: float | None = None

    def as_json(self) -> dict[str, object]:
        out = ContainerPressure.as_json(self)
        above = self.cpu_cores_above_steady
        out["cpu_cores_above_steady"] = None if above is None else round(above, 4)
        return out


def node_pressure_between(start: Checkpoint, end: Checkpoint) -> NodePressure | None:
    elapsed = end.at - start.at
    if elapsed <= 0:
        return None
    shares = [_grown(e, s) for e, s in zip(end.node, start.node, strict=True)]
    cpu, memory, io = (None if x is None else x / elapsed for x in shares)
    if cpu is None and memory is None and io is None:
        return None
    return NodePressure(cpu, memory, io)


def rank_neighbours(
    start: Checkpoint,
    end: Checkpoint,
    *,
    own: Collection[PodKey],
    births: Mapping[ContainerKey, tuple[float, tuple[float, ...]]],
    sidecars: Mapping[PodKey, frozenset[str]],
    thresholds: Thresholds,
    limit: int = 5,
) -> list[Neighbour]:
    """The `limit` containers of the node's other pods (not in `own`) under the strongest
    pressure between two checkpoints, those with a signal first and the noisiest of them
    first: burning CPU well above its steady rate (`neighbour_cpu`), then throttled,
    stalled or near its memory limit. A container that began after `start` is measured
    from its first pass, its steady rate taken as 0 (it was not running). One pass of plain
    arithmetic over the containers of `end` (NaN for what is unknown or was reset); objects
    only for the few kept."""
    isnan = math.isnan
    pod_cpu: dict[PodKey, float] = {}
    pod_steady: dict[PodKey, float] = {}
    # (sort key, key, elapsed, the row's growths and ratio, steady rate)
    measured: list[tuple[tuple[float, ...], ContainerKey, float, tuple[float, ...], float]] = []
    end_rows, start_rows, start_index = end.rows, start.rows, start.layout.index
    cpu_floor = 2 * thresholds.neighbour_cpu
    for i, key in enumerate(end.layout.keys):
        pod = key[:2]
        if pod in own:
            continue
        e = i * _FIELDS
        j = start_index.get(key)
        base: Sequence[float]
        if j is not None:
            base, b, base_at = start_rows, j * _FIELDS, start.at
            steady = start_rows[b + _STEADY]
        else:
            born = births.get(key)
            if born is None or born[0] < start.at:
                continue  # not seen at the start, nor since: nothing to measure from
            base_at, base = born
            b, steady = 0, 0.0
        elapsed = end.at - base_at
        if elapsed <= 0:
            continue
        grown = tuple(end_rows[e + f] - base[b + f] for f in range(_MEMORY))
        if grown[_CPU] < 0:  # reset: the container restarted
            grown = (math.nan, *grown[1:])
        used, periods, throttled, psi_cpu, psi_memory = grown
        ratio = end_rows[e + _MEMORY]  # at the end: no per-pass history to take a peak from
        cores = used / elapsed
        if not isnan(cores):
            pod_cpu[pod] = pod_cpu.get(pod, 0.0) + cores
        if not isnan(steady):
            pod_steady[pod] = pod_steady.get(pod, 0.0) + steady
        above = cores - steady
        throttled_ratio = throttled / periods if periods > 0 else math.nan
        scores = (
            above / cpu_floor,
            throttled_ratio,
            psi_cpu / elapsed,
            psi_memory / elapsed,
            (ratio - 0.8) / 0.2,
        )
        score = max((x for x in scores if not isnan(x)), default=0.0)
        if score <= 0.0:
            continue
        signalled = (
            above >= thresholds.neighbour_cpu
            or throttled_ratio >= thresholds.throttling
            or scores[2] >= thresholds.psi
            or scores[3] >= thresholds.psi
            or ratio >= thresholds.memory
        )
        rank = (0.0 if signalled else 1.0, -(0.0 if isnan(above) else above), -min(1.0, score))
        measured.append((rank, key, elapsed, (*grown, ratio), steady))
    return [
        _neighbour(
            key,
            sidecar=key[2] in sidecars.get(key[:2], frozenset()),
            elapsed=elapsed,
            row=row,
            steady=steady_rate,
            pod_totals=(pod_cpu.get(key[:2], 0.0), pod_steady.get(key[:2], 0.0)),
            thresholds=thresholds,
        )
        for _, key, elapsed, row, steady_rate in heapq.nsmallest(limit, measured)
    ]


def _neighbour(
    key: ContainerKey,
    *,
    sidecar: bool,
    elapsed: float,
    row: tuple[float, ...],
    steady: float,
    pod_totals: tuple[float, float],
    thresholds: Thresholds,
) -> Neighbour:
    """One neighbour kept by `rank_neighbours`, in words: its signals and their values."""

    def known(x: float) -> float | None:
        return None if math.isnan(x) else x

    used, periods, throttled, psi_cpu, psi_memory, ratio = row
    cores = known(used / elapsed)
    above = known(used / elapsed - steady)
    throttled_ratio = known(throttled / periods) if periods > 0 else None
    psi_cpu_share, psi_memory_share = known(psi_cpu / elapsed), known(psi_memory / elapsed)
    memory = known(ratio)
    signals: list[str] = []
    scores = [0.0]
    if above is not None:
        scores.append(above / (2 * thresholds.neighbour_cpu))
        if above >= thresholds.neighbour_cpu:
            signals.append("neighbour_cpu")
    for value, threshold, name in (
        (throttled_ratio, thresholds.throttling, "cpu_throttling"),
        (psi_cpu_share, thresholds.psi, "cpu_pressure"),
        (psi_memory_share, thresholds.psi, "memory_pressure"),
    ):
        if value is not None:
            scores.append(value)
            if value >= threshold:
                signals.append(name)
    if memory is not None:
        scores.append(max(0.0, (memory - 0.8) / 0.2))
        if memory >= thresholds.memory:
            signals.append("memory_near_limit")
    pod_total, steady_total = pod_totals
    steady_rate = known(steady)
    return Neighbour(
        namespace=key[0],
        pod=key[1],
        container=key[2],
        sidecar=sidecar,
        cpu_cores=cores,
        pod_cpu_share=cores / pod_total if cores is not None and pod_total > 0 else None,
        steady_pod_cpu_share=(
            steady_rate / steady_total if steady_rate is not None and steady_total > 0 else None
        ),
        throttled_ratio=throttled_ratio,
        psi_cpu_some=psi_cpu_share,
        psi_memory_some=psi_memory_share,
        memory_limit_ratio=memory,
        score=min(1.0, max(scores)),
        signals=tuple(signals),
        cpu_cores_above_steady=above,
    )


def neighbours_explain(
    neighbours: Sequence[Neighbour], node: NodePressure | None, thresholds: Thresholds
) -> bool:
    """Resource pressure from the node: a neighbour showed a signal while the node's CPU or
    memory was contended (without node PSI, a busy neighbour alone proves nothing: the
    node may have had cores to spare)."""
    return node is not None and node.up(thresholds) and any(n.signals for n in neighbours)
