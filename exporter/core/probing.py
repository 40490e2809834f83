"""The prober's pure half (docs/latency.md): what is probed, when each probe is due on its
open-loop schedule, and what is kept of the results (latency series, failures, status).

Time is passed in as integer nanoseconds of one monotonic clock; the adapter in
exporter/probe/ does the sockets and the waiting. docs/latency.md explains the choices.
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from exporter.core.catalog import TargetSpec
from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT, FineHistogram, LatencySeries

#: A probe that has not completed this long after its intended start has failed. Not tied to
#: the interval: a stall longer than the interval must show at its full length in the tail.
DEFAULT_TIMEOUT = 5.0
#: Label sets of tailwatch_probe_duration_seconds one agent keeps at most: 200 targets in
#: 3 states. A sample over the budget is counted in tailwatch_dropped_total instead.
DEFAULT_MAX_SERIES = 600
STEADY = "steady"
TARGET_KINDS = ("service", "endpoint")
PROTOCOLS = ("http", "tcp")
NS_PER_S = 1_000_000_000
_LATE = "the prober got to it after its deadline"

StateOf = Callable[[str, str], str]
SeriesKey = tuple[str, str, str, str]  # namespace, service, target, pod


def always_steady(namespace: str, service: str) -> str:
    """The `state` of every sample until the correlation core says otherwise."""
    del namespace, service
    return STEADY


class FailureReason(StrEnum):
    """Values of the `reason` label of `tailwatch_probe_failures_total` (contract)."""

    TIMEOUT = "timeout"  # sent, but not complete before the deadline
    REFUSED = "refused"  # connection refused: nothing listens
    RESET = "reset"  # reset, or closed before a complete response
    UNREACHABLE = "unreachable"  # no route to the address
    BAD_STATUS = "bad_status"  # HTTP status outside 200-399
    BAD_RESPONSE = "bad_response"  # not HTTP/1.x, or headers over the size limit
    MISSED = "missed"  # never sent before its deadline: the prober was late or at its bound
    ERROR = "error"  # any other socket error


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One thing to probe, on its own schedule. Equal targets are the same schedule: a
    target whose address, port or settings change is a new target."""

    namespace: str
    service: str
    target: str  # "service" (the ClusterIP) | "endpoint" (a pod on this node)
    pod: str  # "" for the service target
    address: str  # an IP address, never a name to resolve
    port: int
    protocol: str = "tcp"  # "http" | "tcp"
    path: str = "/"
    interval: float = 1.0
    timeout: float = DEFAULT_TIMEOUT
    slo: float | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGET_KINDS:
            raise ValueError(f"target kind {self.target!r} is not one of {TARGET_KINDS}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol {self.protocol!r} is not one of {PROTOCOLS}")
        if not (self.interval > 0 and self.timeout > 0):
            raise ValueError("interval and timeout must be positive")

    @classmethod
    def from_spec(cls, spec: TargetSpec, timeout: float = DEFAULT_TIMEOUT) -> ProbeTarget:
        """The probe target of one of `ServiceCatalog.targets()`."""
        return cls(
            namespace=spec.service.namespace,
            service=spec.service.name,
            target=spec.target,
            pod=spec.pod,
            address=spec.address,
            port=spec.port,
            protocol=spec.protocol,
            path=spec.path,
            interval=spec.interval,
            timeout=timeout,
            slo=spec.slo,
        )

    @property
    def series(self) -> SeriesKey:
        return (self.namespace, self.service, self.target, self.pod)

    @property
    def host_port(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )

    def __str__(self) -> str:
        pod = f"/{self.pod}" if self.pod else ""
        where = f"{self.protocol}://{self.host_port}"
        return f"{self.namespace}/{self.service} {self.target}{pod} {where}"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One intended probe, done or given up: what `on_result` receives."""

    target: ProbeTarget
    intended_ns: int
    latency: float  # seconds from the intended start (or the actual one if earlier) to the end
    reason: FailureReason | None  # None: success
    state: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


def phase_fraction(seed: str, key: str) -> float:
    """Where in its interval a target's grid sits, in [0, 1): stable for a target, spread
    over targets, and different on each node (seed = node name) so that the agents of a
    cluster do not all hit a Service's address in the same millisecond."""
    return zlib.crc32(f"{seed}\0{key}".encode()) / 2**32


# -- the schedule ------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class DueProbe(Generic[K]):
    """A probe to send now, measured from `intended_ns`, failed if not done by `deadline_ns`."""

    key: K
    intended_ns: int
    deadline_ns: int


@dataclass(frozen=True, slots=True)
class MissedProbes(Generic[K]):
    """Consecutive intended starts whose deadline passed before the prober got to them (its
    event loop stalled). They are not sent; each is a failure whose latency is its lag."""

    key: K
    first_intended_ns: int
    interval_ns: int
    count: int

    @property
    def last_intended_ns(self) -> int:
        return self.first_intended_ns + (self.count - 1) * self.interval_ns

    def lags(self, now_ns: int) -> tuple[float, float]:
        """(lower, upper) seconds such that `record_range(lower, upper, count)` places its
        `count` values exactly at the lags now - intended of these probes."""
        half = self.interval_ns / 2
        return (now_ns - self.last_intended_ns - half) / NS_PER_S, (
            now_ns - self.first_intended_ns + half
        ) / NS_PER_S


@dataclass(slots=True)
class _Grid:
    phase_ns: int
    interval_ns: int
    timeout_ns: int
    window_ns: int  # this grid's launch window: at most a quarter of its interval
    next_k: int  # the next intended start is phase + next_k · interval
    token: int  # of this grid's one live heap entry

    def start(self, k: int) -> int:
        return self.phase_ns + k * self.interval_ns


class ProbeSchedule(Generic[K]):
    """Open-loop schedule: each key's intended starts are phase + k·interval, fixed in
    advance, whatever happened to earlier probes.

    `due(now)` hands out every intended start that has come, including those the caller was
    too late for: each is still sent if its deadline has not passed (and measured from its
    intended start), else reported as missed. So a stall of length S at interval I yields
    ~S/I samples of latency S, S-I, S-2I, …, as wrk2 and HdrHistogram's expected-interval
    correction do, instead of one sample of S.

    `launch_window_ns` lets the wake-up for one start also take every start due within that
    window after it (capped at a quarter of each key's interval, so a key's probes stay
    apart): the caller starts those early and measures them from their actual start.
    """

    def __init__(self, launch_window_ns: int = 0) -> None:
        self.launch_window_ns = launch_window_ns
        self._grids: dict[K, _Grid] = {}
        self._heap: list[tuple[int, int, K]] = []  # (next intended start, token, key)
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._grids)

    def __contains__(self, key: object) -> bool:
        return key in self._grids

    def keys(self) -> list[K]:
        return list(self._grids)

    def add(self, key: K, interval_ns: int, timeout_ns: int, phase_ns: int, now_ns: int) -> None:
        """Start scheduling `key` from its first grid point at or after `now_ns`; a key that is
        already scheduled keeps its grid."""
        if key in self._grids:
            return
        if interval_ns <= 0 or timeout_ns <= 0:
            raise ValueError("interval and timeout must be positive")
        phase_ns %= interval_ns
        first_k = -((phase_ns - now_ns) // interval_ns)  # ceil((now - phase) / interval)
        window = min(self.launch_window_ns, interval_ns // 4)
        grid = _Grid(phase_ns, interval_ns, timeout_ns, window, first_k, next(self._tokens))
        self._grids[key] = grid
        heapq.heappush(self._heap, (grid.start(first_k), grid.token, key))

    def remove(self, key: K) -> None:
        if self._grids.pop(key, None) is not None and len(self._heap) > 2 * len(self._grids) + 64:
            live = self._grids
            self._heap = [e for e in self._heap if e[2] in live and live[e[2]].token == e[1]]
            heapq.heapify(self._heap)

    def _live_top(self) -> tuple[int, int, K] | None:
        heap = self._heap
        while heap:
            top = heap[0]
            grid = self._grids.get(top[2])
            if grid is not None and grid.token == top[1]:
                return top
            heapq.heappop(heap)
        return None

    def next_due_ns(self) -> int | None:
        """The next intended start not handed out yet, or None with nothing scheduled."""
        top = self._live_top()
        return None if top is None else top[0]

    def due(
        self, now_ns: int, lookahead_ns: int = 0
    ) -> tuple[list[DueProbe[K]], list[MissedProbes[K]]]:
        """Every intended start up to now + lookahead (+ the launch window) not handed out
        yet: those still before their deadline (intended + timeout > now) to send, the
        others as missed runs.

        `lookahead_ns` lets the caller wake up a little early (timers fire late by up to the
        selector's 1 ms granularity) and start probes at, not after, their intended time.
        """
        horizon = now_ns + lookahead_ns
        due: list[DueProbe[K]] = []
        missed: list[MissedProbes[K]] = []
        later: list[tuple[int, int, K]] = []
        if (first := self._live_top()) is None or first[0] > horizon:
            return due, missed
        while (top := self._live_top()) is not None and top[0] <= horizon + self.launch_window_ns:
            heapq.heappop(self._heap)
            key = top[2]
            grid = self._grids[key]
            last_k = (horizon + grid.window_ns - grid.phase_ns) // grid.interval_ns
            k = grid.next_k
            if last_k < k:  # beyond this key's own (shorter) window
                later.append(top)
                continue
            expired_k = (now_ns - grid.timeout_ns - grid.phase_ns) // grid.interval_ns
            if expired_k >= k:
                missed.append(MissedProbes(key, grid.start(k), grid.interval_ns, expired_k - k + 1))
                k = expired_k + 1
            for j in range(k, last_k + 1):
                start = grid.start(j)
                due.append(DueProbe(key, start, start + grid.timeout_ns))
            grid.next_k = last_k + 1
            grid.token = next(self._tokens)
            heapq.heappush(self._heap, (grid.start(grid.next_k), grid.token, key))
        for entry in later:
            heapq.heappush(self._heap, entry)
        due.sort(key=lambda d: d.intended_ns)
        return due, missed


# -- what is kept of the results ---------------------------------------------------------


@dataclass(slots=True)
class TargetStatus:
    """What /api/v1/targets shows of one target."""

    target: ProbeTarget
    probes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last: ProbeResult | None = None
    last_at: float | None = None  # wall-clock seconds since the epoch

    def as_json(self, latency: dict[str, float | None]) -> dict[str, Any]:
        t = self.target
        last: dict[str, Any] | None = None
        if self.last is not None and self.last_at is not None:
            last = {
                "at": datetime.fromtimestamp(self.last_at, UTC).isoformat(timespec="milliseconds"),
                "latency_seconds": round(self.last.latency, 6),
                "ok": self.last.ok,
                "reason": self.last.reason.value if self.last.reason else None,
                "detail": self.last.detail,
            }
        return {
            "namespace": t.namespace,
            "service": t.service,
            "target": t.target,
            "pod": t.pod,
            "address": t.host_port,
            "protocol": t.protocol,
            "path": t.path if t.protocol == "http" else None,
            "interval_seconds": t.interval,
            "timeout_seconds": t.timeout,
            "slo_seconds": t.slo,
            "probes": self.probes,
            "failures": dict(sorted(self.failures.items())),
            "last": last,
            "latency_seconds": latency,
        }


class ProbeLedger:
    """The prober's results: `tailwatch_probe_duration_seconds` series (fine + exposition),
    failure counts, the schedule-lag histogram and each target's status.

    A sample goes to the series of its target's (namespace, service, target, pod) and its
    Service's `state` at the time it is recorded. Series of targets that are gone are
    removed; a failure counter (no pod label) goes when no target shares its labels.
    """

    def __init__(
        self,
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        state_of: StateOf = always_steady,
        classic_layout: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT,
    ):
        self.max_series = max_series
        self.state_of = state_of
        self.classic_layout = classic_layout
        self.durations: dict[tuple[str, str, str, str, str], LatencySeries] = {}
        self.failures: dict[tuple[str, str, str, str], int] = {}
        self.lag = LatencySeries(classic_layout)
        self.dropped: dict[str, int] = {}
        self.statuses: dict[ProbeTarget, TargetStatus] = {}
        self._series_refs: dict[SeriesKey, int] = {}  # targets per label set
        self._failure_refs: dict[tuple[str, str, str], int] = {}
        self._states: set[str] = set()  # every `state` a series was made for

    def set_targets(self, targets: Iterable[ProbeTarget]) -> None:
        wanted = set(targets)
        self.update_targets([t for t in self.statuses if t not in wanted], wanted)

    def update_targets(self, remove: Iterable[ProbeTarget], add: Iterable[ProbeTarget]) -> None:
        """Targets come and go: O(the targets changed). A target's series go with it unless
        another target has the same labels; a failure counter (no pod label) goes when no
        target shares its labels."""
        # Adds first: a target replaced by one with the same labels (a new interval or
        # address) keeps its series.
        for target in add:
            if target in self.statuses:
                continue
            self.statuses[target] = TargetStatus(target)
            self._series_refs[target.series] = self._series_refs.get(target.series, 0) + 1
            fkey = target.series[:3]
            self._failure_refs[fkey] = self._failure_refs.get(fkey, 0) + 1
        for target in remove:
            if self.statuses.pop(target, None) is None:
                continue
            if self._release(self._series_refs, target.series):
                for state in self._states:
                    self.durations.pop((*target.series, state), None)
            if self._release(self._failure_refs, target.series[:3]):
                for reason in FailureReason:
                    self.failures.pop((*target.series[:3], reason.value), None)

    @staticmethod
    def _release(refs: dict[Any, int], key: Any) -> bool:
        """Drop one reference; True when it was the last."""
        left = refs[key] - 1
        if left:
            refs[key] = left
            return False
        del refs[key]
        return True

    def is_active(self, target: ProbeTarget) -> bool:
        return target in self.statuses

    def _series(self, target: ProbeTarget, state: str) -> LatencySeries | None:
        key = (*target.series, state)
        series = self.durations.get(key)
        if series is None:
            if len(self.durations) >= self.max_series:
                self.dropped["probe_series_limit"] = self.dropped.get("probe_series_limit", 0) + 1
                return None
            series = LatencySeries.of_service(target.slo, self.classic_layout)
            self.durations[key] = series
            self._states.add(state)
        return series

    def _count(self, target: ProbeTarget, reason: FailureReason | None, n: int, at: float) -> None:
        status = self.statuses[target]
        status.probes += n
        status.last_at = at
        if reason is not None:
            status.failures[reason.value] = status.failures.get(reason.value, 0) + n
            fkey = (target.namespace, target.service, target.target, reason.value)
            self.failures[fkey] = self.failures.get(fkey, 0) + n

    def record(
        self,
        target: ProbeTarget,
        intended_ns: int,
        latency: float,
        reason: FailureReason | None,
        *,
        at: float,
        detail: str = "",
    ) -> ProbeResult | None:
        """One finished probe (a failure too: its time is never left out of the tail). None
        if the target was removed meanwhile: its result is dropped with its series."""
        if target not in self.statuses:
            return None
        state = self.state_of(target.namespace, target.service)
        series = self._series(target, state)
        if series is not None:
            series.record(latency)
        result = ProbeResult(target, intended_ns, latency, reason, state, detail)
        self._count(target, reason, 1, at)
        self.statuses[target].last = result
        return result

    def record_missed(
        self, run: MissedProbes[ProbeTarget], now_ns: int, at: float, *, results: bool = True
    ) -> list[ProbeResult]:
        """Intended starts that were never sent: failures `missed`, each with its lag as its
        latency (also in the schedule-lag histogram). Returns one result per intended start
        if `results` (a long stall makes many: ask only if someone listens)."""
        target = run.key
        lower, upper = run.lags(now_ns)
        self.lag.record_range(lower, upper, run.count)
        if target not in self.statuses:
            return []
        state = self.state_of(target.namespace, target.service)
        series = self._series(target, state)
        if series is not None:
            series.record_range(lower, upper, run.count)
        self._count(target, FailureReason.MISSED, run.count, at)

        def result(intended: int) -> ProbeResult:
            latency = (now_ns - intended) / NS_PER_S
            return ProbeResult(target, intended, latency, FailureReason.MISSED, state, _LATE)

        self.statuses[target].last = result(run.last_intended_ns)
        if not results:
            return []
        starts = range(run.first_intended_ns, run.last_intended_ns + 1, run.interval_ns)
        return [result(intended) for intended in starts]

    def record_lag(self, seconds: float) -> None:
        self.lag.record(seconds)

    def latency_of(self, target: ProbeTarget) -> FineHistogram:
        """The fine histogram of a target over all states."""
        merged = FineHistogram()
        for state in self._states:
            series = self.durations.get((*target.series, state))
            if series is not None:
                merged.merge(series.fine)
        return merged

    def status_json(self) -> list[dict[str, Any]]:
        """Every target's status, for /api/v1/targets."""
        out = []
        for target in sorted(self.statuses, key=str):
            p50, p99, p999 = self.latency_of(target).quantiles((0.5, 0.99, 0.999))
            out.append(self.statuses[target].as_json({"p50": p50, "p99": p99, "p999": p999}))
        return out
