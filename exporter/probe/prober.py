"""The open-loop prober: runs `ProbeSchedule` on the event loop, sends each due probe on its
own connection under a global connection bound, and records every result in a `ProbeLedger`.

Latency is measured with `time.perf_counter_ns()` from each probe's intended start, so the
prober's own lateness, waiting for a free connection and a stalled target all land in the
tail (docs/latency.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT
from exporter.core.probing import (
    DEFAULT_MAX_SERIES,
    NS_PER_S,
    DueProbe,
    FailureReason,
    MissedProbes,
    ProbeLedger,
    ProbeResult,
    ProbeSchedule,
    ProbeTarget,
    StateOf,
    always_steady,
    phase_fraction,
)
from exporter.probe.connect import ProbeFunction, ProbeOutcome, probe_target

log = logging.getLogger("tailwatch.prober")

#: Connections the prober holds open at once, all targets together.
DEFAULT_MAX_CONNECTIONS = 64
#: Timers fire up to 1 ms late (epoll's resolution): wake up this much early, start the
#: probe then, and measure from the actual start when it is before the intended one.
DEFAULT_WAKE_EARLY = 0.001
#: With a launch window, one wake-up of the prober also starts every probe due within it
#: (capped at a quarter of a target's interval), measured from its actual start: fewer
#: event-loop wake-ups, so less CPU, for small bursts of probes that wait on each other and
#: starts moved up to the window earlier. Off by default: exact starts, spread by phase.
#: docs/latency.md has the measured trade-off.
DEFAULT_LAUNCH_WINDOW = 0.0

LATE_LOG_EVERY_NS = 60 * NS_PER_S  # a stalled prober logs once a minute, not per wake-up
_NS_PER_MS = 1_000_000

ResultSink = Callable[[ProbeResult], None]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Prober:
    """Probes the current targets on their schedules until `run` is cancelled.

    `set_targets` may be called at any time (it is synchronous); removed targets stop being
    probed and their series go away, in-flight probes of them are dropped when they end.
    """

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        phase_seed: str = "",
        state_of: StateOf = always_steady,
        on_result: ResultSink | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        probe: ProbeFunction = probe_target,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
        wall_clock: Callable[[], float] = time.time,
        wake_early: float = DEFAULT_WAKE_EARLY,
        launch_window: float = DEFAULT_LAUNCH_WINDOW,
        classic_layout: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.phase_seed = phase_seed
        self.on_result = on_result
        self.ledger = ProbeLedger(
            max_series=max_series, state_of=state_of, classic_layout=classic_layout
        )
        self.schedule: ProbeSchedule[ProbeTarget] = ProbeSchedule(round(launch_window * NS_PER_S))
        self._probe = probe
        self._clock_ns = clock_ns
        self._wall_clock = wall_clock
        self._early_ns = round(wake_early * NS_PER_S)
        self._connections = asyncio.Semaphore(max_connections)
        self._wake: asyncio.Future[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._missed_unlogged = 0
        self._late_logged_at = -LATE_LOG_EVERY_NS
        self.open_connections = 0  # probes holding a connection slot now
        self.peak_connections = 0

    # -- targets -------------------------------------------------------------------------

    @property
    def targets(self) -> frozenset[ProbeTarget]:
        return frozenset(self.ledger.statuses)

    def set_targets(self, targets: Iterable[ProbeTarget]) -> None:
        """Replace the set of targets: new ones start on their grid, removed ones stop."""
        wanted = set(targets)
        current = self.ledger.statuses
        self.update_targets([t for t in current if t not in wanted], wanted)

    def update_targets(self, remove: Iterable[ProbeTarget], add: Iterable[ProbeTarget]) -> None:
        """Remove some targets and add others: O(the targets changed), whatever the total."""
        remove, add = list(remove), list(add)
        now = self._clock_ns()
        for gone in remove:
            self.schedule.remove(gone)
        for target in add:
            interval_ns = round(target.interval * NS_PER_S)
            phase = phase_fraction(self.phase_seed, str(target))
            self.schedule.add(
                target,
                interval_ns=interval_ns,
                timeout_ns=round(target.timeout * NS_PER_S),
                phase_ns=int(phase * interval_ns),
                now_ns=now,
            )
        self.ledger.update_targets(remove, add)
        if self._wake is not None:
            _resolve(self._wake)

    def status(self) -> list[dict[str, Any]]:
        """Per target, for /api/v1/targets: settings, counts, last result, p50/p99/p99.9."""
        return self.ledger.status_json()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Probe until cancelled; in-flight probes are cancelled with it."""
        try:
            while True:
                now = self._clock_ns()
                due, missed = self.schedule.due(now, self._early_ns)
                for run in missed:
                    self._account_missed(run, now)
                    self._missed_unlogged += run.count
                if self._missed_unlogged and now - self._late_logged_at >= LATE_LOG_EVERY_NS:
                    log.warning(
                        "prober was late: %d probes missed their deadline (see "
                        "tailwatch_probe_schedule_lag_seconds)",
                        self._missed_unlogged,
                    )
                    self._missed_unlogged, self._late_logged_at = 0, now
                for slot in due:
                    task = asyncio.create_task(self._probe_once(slot))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                await self._sleep_until(self.schedule.next_due_ns())
        finally:
            tasks = list(self._in_flight)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sleep_until(self, due_ns: int | None) -> None:
        """Sleep until `due_ns` less the early wake-up, or until the targets change."""
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = None
        if due_ns is not None:
            # Whole milliseconds, rounded up: uvloop's timers count in milliseconds and fire
            # up to one early, so a wake-up left with a fraction of a millisecond to go would
            # otherwise sleep "0 ms" again and again, ten times a probe (docs/performance.md,
            # "Cost"). The early wake-up above covers the millisecond either way.
            delay = math.ceil((due_ns - self._early_ns - self._clock_ns()) / _NS_PER_MS) / 1000
            timer = loop.call_later(max(delay, 0.0), _resolve, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _probe_once(self, slot: DueProbe[ProbeTarget]) -> None:
        target = slot.key
        started = self._clock_ns()
        self.ledger.record_lag(max(0, started - slot.intended_ns) / NS_PER_S)
        # Measured from the intended start, or from the actual one if we woke up early: never
        # less than the time the probe really took.
        measured_from = min(started, slot.intended_ns)
        outcome: ProbeOutcome
        if started >= slot.deadline_ns:
            outcome = ProbeOutcome(FailureReason.MISSED, "the prober got to it after its deadline")
        else:
            sent = False
            try:
                async with asyncio.timeout((slot.deadline_ns - started) / NS_PER_S):
                    async with self._connections:
                        sent = True
                        self.open_connections += 1
                        self.peak_connections = max(self.peak_connections, self.open_connections)
                        try:
                            outcome = await self._probe(target, self._clock_ns)
                        finally:
                            self.open_connections -= 1
            except TimeoutError:
                if sent:
                    outcome = ProbeOutcome(
                        FailureReason.TIMEOUT, f"no answer in {target.timeout:g}s"
                    )
                else:
                    outcome = ProbeOutcome(FailureReason.MISSED, "all connections were busy")
            except Exception as exc:  # a bug in a probe must not stop the prober
                log.exception("probe of %s failed unexpectedly", target)
                outcome = ProbeOutcome(FailureReason.ERROR, type(exc).__name__)
        end = outcome.completed_ns if outcome.completed_ns is not None else self._clock_ns()
        result = self.ledger.record(
            target,
            slot.intended_ns,
            max(0, end - measured_from) / NS_PER_S,
            outcome.reason,
            at=self._wall_clock(),
            detail=outcome.detail,
        )
        if result is not None:
            self._emit(result)

    def _account_missed(self, run: MissedProbes[ProbeTarget], now: int) -> None:
        results = self.ledger.record_missed(
            run, now, self._wall_clock(), results=self.on_result is not None
        )
        for result in results:
            self._emit(result)

    def _emit(self, result: ProbeResult) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(result)
        except Exception:
            log.exception("on_result failed for %s", result.target)
