"""Ground truth for the agent's episodes: an independent client records every request it
sends to the Services the agent watches, and the agent's episodes are judged against that
recording rather than against what the scenario meant to do.

The world is the simulator's: the API server, real HTTP pod servers on loopback addresses
(`exporter.simulator.dataplane`) and a kube-proxy whose rules follow the EndpointSlices
`SYNC_DELAY` seconds late. The agent (in-process, through a kubeconfig, on node-1) probes
each Service's address every `PROBE_INTERVAL`. Four Services:

- `orders` (node-1, 2 pods, light tail): one pod is evicted through the Eviction API. Its
  process drains for 0.3 s and exits while kube-proxy still sends it half the requests
  (they fail) for the rest of `SYNC_DELAY`; then the other pod carries the whole load and
  queues (slow) until kube-proxy programs the replacement, `SYNC_DELAY` after it became
  ready, which is after the episode closed (`episode_settle` < `SYNC_DELAY`): latency
  returns *after* the close, at a moment only the recording knows.
- `search` (node-2, 2 pods): a pure tail spike, no lifecycle event: both pods' app
  containers want `SPIKE_CORES` more than their 1-core limit for `SPIKE_SECONDS` (CFS
  throttling, and queueing on what is left; the agent on node-1 cannot see node-2's
  cgroups, so the cause is `unexplained`).
- `catalog` (node-2): untouched. `reviews` (node-2): untouched, with a heavy tail (a 2%
  slow path 8x longer, log-normal sigma 0.6): steady traffic that must not look like a
  spike.

The recorder (`Recorder`) shares nothing with the agent's prober but the sockets: raw
asyncio streams, one connection per request, open loop on a fixed schedule (every
`Subject.every` seconds whatever the answers), each request timed from its *intended*
start (so the recorder's own lateness shows, as a client's would). A failure (refused,
reset, no answer in `REQUEST_TIMEOUT`) counts at the time it took to fail, as the agent's
prober counts it. It runs in the agent's process and event loop, as the pods and
kube-proxy do: a stall of that loop (the machine is busy) slows the prober's requests and
the recorder's alike, so the truth holds what the agent could have seen.

Definitions (every time is a request's intended start, wall clock; "over" is over the
threshold baseline p99 x (1 + `recovery_tolerance`)):

- **baseline p99**: the nearest-rank p99 of the requests started in the `baseline_window`
  before the episode opened (or before the scenario touched the Service, if earlier).
- **during p99**: the nearest-rank p99 of the requests started in the episode's reported
  [opened_at, closed_at]; the **impact ratio** is during p99 / baseline p99.
- **a run within tolerance**: m >= `MIN_COUNT` consecutive requests whose p99 is not over
  the threshold beyond doubt: no more of them over it than the (1 - `ALPHA`)-quantile of
  Binomial(m, 1%) (`_allowed_over`: 5 of 100; a p99 at the threshold puts 1% over it, and
  steady traffic has a few legitimately slow requests), or than the untouched Service's
  recording had over its own threshold in the same span of time (`Control`: a stall of the
  busy machine slows every Service's requests at once, and is the machine's, not the
  disruption's). A p99 is never read from fewer than `MIN_COUNT` requests.
- **true recovery** (`settled_from`): the earliest moment t at or after the reported
  closed_at (the close itself, or right after a request over the threshold) from which
  every run of the requests started at or after t is within tolerance. Accurate to a few
  requests (the last few over the threshold can be the allowed ones), so a little early.
- **true rise and fall of a spike**: the fall is the same rule searched from the moment the
  scenario began the spike; the rise is its mirror (`settled_until`), the latest moment t
  before the fall such that every run of the requests before t, counted back from t, is
  within tolerance: the start of the first request of the spike. (The report also gives
  both at the spike threshold, spike_ratio x the baseline p99: for a sharp spike, nearly
  the same moments.)

Comparing a quantile of n probes with the truth (`order_statistic_band`): the agent's
q-quantile of n samples is their ceil(q n)-th smallest. The recording and the probes are
two samples of the same traffic, so whether that order statistic is above the recording's
j-th smallest value has an exact, distribution-free chance (beta-binomial), and the band
is the recording's values it stays between with probability 1 - `ALPHA`. Where the
recording cannot bound it (the maximum of 40 probes is above the maximum of 200 requests
one time in six) the band is open on that side. When the band of the ratio is within 15%
of the true ratio, the probes *support* a p99 to 15% and that criterion is asserted; when
it is wider (a few seconds of episode, tens of probes: their p99 is their maximum) only
the bands are (the ratio's, and the during and baseline p99s'), and the report says so.
The p50s are shown against their bands too, not asserted: a median compares the two
clients' own overheads (a millisecond of a 10 ms answer) more than the agent's windows.
The agent's values are read from histogram buckets, within 2.2% (`BUCKET_ERROR`).

`python -m tests.e2e.ground_truth` plays the scenario once and prints the comparison, a
benchmark-style report; tests/e2e/test_ground_truth.py asserts on it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.agent import Agent
from exporter.core.services import ANNOTATION_INTERVAL, ANNOTATION_PATH, ANNOTATION_PROTOCOL
from exporter.simulator import ApiServer, objects
from exporter.simulator.cluster import Cluster
from exporter.simulator.dataplane import DataPlane, ServiceProfile
from exporter.simulator.endpointslices import EndpointSliceController
from exporter.simulator.latency import ColdStart, ServiceTime
from exporter.simulator.load import ContainerProfile
from exporter.simulator.services import service as service_object
from exporter.simulator.shop import container_templates, pick_port
from tests.agent.conftest import running_agent
from tests.conftest import wait_for
from tests.latency.quantiles import exact_quantile

NAMESPACE = "truth"
AGENT_NODE = "node-1"
OTHER_NODE = "node-2"
PROBE_INTERVAL = 0.1  # the fastest the probe-interval annotation allows
SYNC_DELAY = 2.5  # kube-proxy's lag behind the EndpointSlices
#: The agent's correlation windows, short so the scenario plays in about half a minute.
WINDOWS: dict[str, float] = {
    "episode_settle": 1.0,
    "baseline_window": 40.0,
    "recovery_window": 3.0,
    "recovery_tolerance": 0.2,
    "recovery_max": 20.0,
    "spike_ratio": 2.0,
}
#: Steady service probes of each disrupted Service before the scenario starts. A baseline
#: p99 the agent decides on must be bounded from above: 299 samples at its default 95%
#: confidence, counted in whole baseline slots (4 s) that ended before the episode, and for
#: a spike before its rolling window (3 s): 299 + 70 probes, and a few more.
STEADY_PROBES = 380
SPIKE_SECONDS = 4.0
SPIKE_CORES = 4.25  # extra CPU the search pods' app containers want (limit: 1 core)
EVICT_AFTER_SPIKE = 1.0  # seconds between the spike's start and the eviction
#: The eviction's choreography: the evicted pod's grace, the replacement's image pull and
#: its readiness delay (longer than SYNC_DELAY: its "ready" reaches kube-proxy in a rule
#: sync of its own, after the episode has closed).
GRACE = 1.5
PULL = 0.5
WARMUP = 2.9
REQUEST_TIMEOUT = 5.0
WAKE_EARLY = 0.002  # the recorder's timers wake this much before a request is due
#: The smallest set of requests a p99 is read from in the truth (see the module docstring).
MIN_COUNT = 100
ALPHA = 0.001  # 1 - confidence of an order-statistic band
BUCKET_ERROR = 0.022  # the agent's quantiles are bucket representatives, within 2.17%
IMPACT_TOLERANCE = 0.15  # the criterion for the impact ratio
#: Recovery must be found within one probe interval plus this (the criterion).
RECOVERY_SLACK = 1.0
#: Deadline for the episodes to finish once the scenario ran, generous for a loaded machine.
SETTLE_DEADLINE = 45.0
SEED = 14


# -- the Services --------------------------------------------------------------------------


def _app(*, cpu_limit: float | None = None, per_request: float = 0.001) -> ContainerProfile:
    return ContainerProfile(
        "app", cpu_idle=0.02, cpu_per_request=per_request, cpu_request=0.5,
        cpu_limit=cpu_limit, on_path=True, serves=True,
    )  # fmt: skip


@dataclass(frozen=True)
class Subject:
    """One Service of the scenario: its pods' behaviour, where they run, and how often the
    recorder calls it."""

    profile: ServiceProfile
    cluster_ip: str
    node: str
    replicas: int
    every: float  # the recorder's request interval, seconds

    @property
    def name(self) -> str:
        return self.profile.service


#: Light tails (log-normal sigma 0.2, eight workers at 45% busy): the steady p99 is well
#: defined and few requests pass 1.2x it (about 0.15%), so the truth's moments are sharp.
LIGHT = ServiceTime(median=0.010, sigma=0.2, slow_probability=0.0)
SUBJECTS: tuple[Subject, ...] = (
    Subject(
        ServiceProfile(
            NAMESPACE, "orders", LIGHT, nominal_rps=800, workers=8,
            cold_start=ColdStart(amplitude=0.5, decay=0.5), containers=(_app(),),
            shutdown_delay=0.3,
        ),
        "127.0.125.10", AGENT_NODE, 2, 0.02,
    ),
    Subject(
        ServiceProfile(
            NAMESPACE, "search", ServiceTime(median=0.008, sigma=0.25, slow_probability=0.0),
            nominal_rps=200, workers=4, containers=(_app(cpu_limit=1.0, per_request=0.002),),
        ),
        "127.0.125.11", OTHER_NODE, 2, 0.02,
    ),
    Subject(
        ServiceProfile(NAMESPACE, "catalog", LIGHT, nominal_rps=740, workers=8,
                       containers=(_app(),)),
        "127.0.125.12", OTHER_NODE, 2, 0.02,
    ),
    Subject(
        ServiceProfile(
            NAMESPACE, "reviews",
            ServiceTime(median=0.012, sigma=0.6, slow_probability=0.02, slow_factor=8),
            nominal_rps=150, workers=4, containers=(_app(),),
        ),
        "127.0.125.13", OTHER_NODE, 2, 0.05,
    ),
)  # fmt: skip
EVICTED, SPIKED, UNTOUCHED, HEAVY_TAILED = (s.name for s in SUBJECTS)
PATH = "/healthz"


# -- the recorder --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One recorded request: its intended start (wall clock, seconds), how long it took
    from then until the answer or the failure, and whether it got a 200."""

    start: float
    latency: float
    ok: bool


class Recorder:
    """An open-loop HTTP client of one Service address: a request every `every` seconds on
    a fixed schedule, each on its own connection, timed from its intended start."""

    def __init__(self, address: str, port: int, every: float, host: str) -> None:
        self.address = address
        self.port = port
        self.every = every
        self.requests: list[Request] = []
        self._message = (
            f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ground-truth\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        # Intended starts are on the monotonic high-resolution clock; the wall clock (the
        # agent's time base) is read once, alongside it.
        self._perf0 = time.perf_counter()
        self._wall0 = time.time()
        self._scheduler: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    def wall(self, perf: float) -> float:
        return self._wall0 + (perf - self._perf0)

    def start(self) -> None:
        self._scheduler = asyncio.create_task(self._schedule(), name=f"recorder-{self.address}")

    async def stop(self) -> None:
        """Stop sending; wait for the requests in flight (each ends by its timeout)."""
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _schedule(self) -> None:
        k = 0
        while True:
            intended = self._perf0 + k * self.every
            # Timers fire late, by up to a millisecond: wake a little early, and time each
            # request from its start when that is before the intended one (never less than
            # it really took), so the recorder's own lateness is not counted as latency
            # unless it is real (a stalled loop).
            delay = intended - WAKE_EARLY - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)  # the schedule itself, not a wait for a condition
            task = asyncio.create_task(self._one(intended))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            k += 1

    async def _one(self, intended: float) -> None:
        began = min(time.perf_counter(), intended)
        ok = False
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT - (time.perf_counter() - began)):
                reader, writer = await asyncio.open_connection(self.address, self.port)
                writer.write(self._message)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)  # the whole answer, as a client reads it
                ok = head.startswith(b"HTTP/1.1 200 ")
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            ok = False
        finally:
            end = time.perf_counter()
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        self.requests.append(Request(self.wall(intended), end - began, ok))

    def last_start(self) -> float:
        return self.requests[-1].start if self.requests else 0.0


# -- the truth -----------------------------------------------------------------------------


def p99(latencies: Sequence[float]) -> float:
    return exact_quantile(latencies, 0.99)


@functools.cache
def _allowed_over(m: int) -> int:
    """How many of m requests may be over a threshold before their p99 is over it beyond
    doubt: the (1 - ALPHA)-quantile of Binomial(m, 1%). With a p99 at the threshold, 1% of
    requests are over it and, by chance, up to this many of m; a p99 within tolerance
    (1.2x the baseline's) has fewer still."""
    pmf = (1 - 0.01) ** m
    total, over = pmf, 0
    while total < 1 - ALPHA and over < m:
        pmf *= (m - over) / (over + 1) * (0.01 / 0.99)
        over += 1
        total += pmf
    return over


@dataclass(frozen=True)
class Control:
    """The untouched Service's recording at the same moments: how many of its requests were
    over its own threshold in a span of time. A stall of the machine (another process, a
    collection) slows every Service's requests at once, and as many of the control's as of
    a disrupted Service's at the same rate: that many of those are the machine's, not the
    disruption's."""

    starts: tuple[float, ...]
    over_before: tuple[int, ...]  # over_before[i]: requests over among the first i

    @classmethod
    def of(cls, requests: Sequence[Request], threshold: float) -> Control:
        ordered = sorted(requests, key=lambda r: r.start)
        counts = [0]
        for r in ordered:
            counts.append(counts[-1] + (r.latency > threshold))
        return cls(tuple(r.start for r in ordered), tuple(counts))

    def over(self, start: float, end: float) -> int:
        """Requests over the threshold started in [start, end]."""
        lo = bisect.bisect_left(self.starts, start)
        hi = bisect.bisect_right(self.starts, end)
        return self.over_before[hi] - self.over_before[lo]


NO_CONTROL = Control((), (0,))


def _earliest_settled(
    slow: Sequence[bool], starts: Sequence[float], min_count: int, control: Control
) -> int | None:
    """The smallest j, 0 or right after a slow item, such that every prefix of slow[j:] of
    m >= `min_count` items has at most max(`_allowed_over`(m), the control's requests over
    in the same span) of them slow; None if none has `min_count` items left."""
    n = len(slow)
    for j in [0] + [i + 1 for i, s in enumerate(slow) if s]:
        if n - j < min_count:
            return None
        over = 0
        good = True
        for m, s in enumerate(slow[j:], start=1):
            over += s
            if m >= min_count and over > _allowed_over(m):
                first, last = sorted((starts[j], starts[j + m - 1]))
                if over > control.over(first, last):
                    good = False
                    break
        if good:
            return j
    return None


def settled_from(
    requests: Sequence[Request],
    after: float,
    threshold: float,
    control: Control = NO_CONTROL,
    min_count: int = MIN_COUNT,
) -> float | None:
    """The true recovery: the earliest moment t >= `after` (`after` itself, or right after a
    request over `threshold`) from which every run of at least `min_count` requests started
    at or after t is within tolerance. None if the recording never settles."""
    later = sorted((r for r in requests if r.start >= after), key=lambda r: r.start)
    slow = [r.latency > threshold for r in later]
    j = _earliest_settled(slow, [r.start for r in later], min_count, control)
    if j is None:
        return None
    return after if j == 0 else later[j].start


def settled_until(
    requests: Sequence[Request],
    before: float,
    threshold: float,
    control: Control = NO_CONTROL,
    min_count: int = MIN_COUNT,
) -> float | None:
    """The mirror of `settled_from`: the latest moment t <= `before` up to which every run
    of at least `min_count` requests started before t (counted backwards from t) is within
    tolerance; t is the start of the first request of the rise."""
    earlier = sorted((r for r in requests if r.start < before), key=lambda r: -r.start)
    slow = [r.latency > threshold for r in earlier]
    j = _earliest_settled(slow, [r.start for r in earlier], min_count, control)
    if j is None:
        return None
    return before if j == 0 else earlier[j - 1].start


def between(requests: Sequence[Request], start: float, end: float) -> list[float]:
    """Latencies of the requests started in [start, end]."""
    return [r.latency for r in requests if start <= r.start <= end]


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _above_count_cdf(n: int, big_n: int, j: int, most: int) -> float:
    """P(K <= most), K being how many of n new samples exceed the j-th smallest of big_n
    earlier ones, all drawn from one continuous distribution: K is beta-binomial
    (n, big_n - j + 1, j), whatever the distribution."""
    a, b = big_n - j + 1, j
    total = 0.0
    for x in range(min(most, n) + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
            + _log_beta(x + a, n - x + b) - _log_beta(a, b)
        )  # fmt: skip
    return min(1.0, total)


def order_statistic_band(
    truth: Sequence[float], n: int, q: float = 0.99, alpha: float = ALPHA
) -> tuple[float, float]:
    """Where the nearest-rank q-quantile of n samples of the recorded process lies, with
    probability 1 - alpha, in terms of the recording's own values: (low, high), 0 or inf
    where the recording cannot bound it (the maximum of 40 probes exceeds the maximum of
    200 requests one time in six).

    The agent's q-quantile of n samples is their k-th smallest, k = ceil(q n); it is above
    the recording's j-th smallest when more than n - k samples exceed it. Both samples come
    from the same process (and neither is taken as the process itself), so the chance is
    exact and distribution-free (`_above_count_cdf`)."""
    ordered = sorted(truth)
    big_n = len(ordered)
    k = max(1, math.ceil(q * n))

    def above(j: int) -> float:  # P(the agent's quantile > the j-th smallest)
        return 1.0 - _above_count_cdf(n, big_n, j, n - k)

    def below(j: int) -> float:  # P(the agent's quantile < the j-th smallest)
        return _above_count_cdf(n, big_n, j, n - k)

    high = math.inf
    if above(big_n) <= alpha / 2:  # the smallest j whose chance is that small
        lo_j, hi_j = 1, big_n
        while lo_j < hi_j:
            mid = (lo_j + hi_j) // 2
            if above(mid) <= alpha / 2:
                hi_j = mid
            else:
                lo_j = mid + 1
        high = ordered[lo_j - 1]
    low = 0.0
    if below(1) <= alpha / 2:  # the largest j whose chance is that small
        lo_j, hi_j = 1, big_n
        while lo_j < hi_j:
            mid = (lo_j + hi_j + 1) // 2
            if below(mid) <= alpha / 2:
                lo_j = mid
            else:
                hi_j = mid - 1
        low = ordered[lo_j - 1]
    return low, high


@dataclass(frozen=True)
class Check:
    """One number the agent reported against the truth, with the bounds it must meet."""

    what: str
    reported: float | None
    true: float | None
    low: float
    high: float
    note: str = ""
    #: Shown, not asserted: a median compares the two clients' own overheads (a
    #: millisecond or so of a 10 ms answer on a busy machine) more than the agent's windows.
    informational: bool = False

    @property
    def holds(self) -> bool:
        return self.reported is not None and self.low <= self.reported <= self.high

    def line(self) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4g}"

        verdict = (
            "ok" if self.holds else ("outside (not asserted)" if self.informational else "FAIL")
        )
        return (
            f"  {self.what:<34} reported {fmt(self.reported):>9}  true {fmt(self.true):>9}"
            f"  allowed [{fmt(self.low)}, {fmt(self.high)}]  {verdict}"
            + (f"  ({self.note})" if self.note else "")
        )


def _iso(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _path(doc: Mapping[str, Any] | None, *keys: str) -> Any:
    value: Any = doc
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


@dataclass
class Judged:
    """One episode of the agent's, the truth around it, and the checks."""

    service: str
    episode: dict[str, Any]
    baseline_p99: float
    baseline_n: int
    during_p99: float | None
    during_n: int
    failures_during: int
    threshold: float
    over_in_baseline: float  # the share of baseline requests over the threshold
    true_recovered_at: float | None
    true_rose_at: float | None = None
    true_fell_at: float | None = None
    #: The same with the spike threshold (spike_ratio x the baseline p99) instead: for a
    #: sharp spike, nearly the same moments.
    rose_fell_at_spike_threshold: tuple[float | None, float | None] = (None, None)
    checks: list[Check] = field(default_factory=list)
    impact_supported: bool = False

    def check(self, what: str) -> Check:
        return next(c for c in self.checks if c.what == what)


def judge(
    service: str,
    episode: dict[str, Any],
    requests: Sequence[Request],
    touched_at: float,
    control: Sequence[Request],
    *,
    spike_began: float | None = None,
) -> Judged:
    """Compare one reported episode with the recording of its Service; `control` is the
    untouched Service's recording (`Control`)."""
    tolerance = WINDOWS["recovery_tolerance"]
    opened = _iso(episode.get("opened_at"))
    closed = _iso(episode.get("closed_at"))
    assert opened is not None and closed is not None, episode
    steady_end = min(opened, touched_at)
    base = between(requests, steady_end - WINDOWS["baseline_window"], steady_end - 1e-9)
    baseline = p99(base)
    threshold = baseline * (1 + tolerance)
    control_base = between(control, steady_end - WINDOWS["baseline_window"], steady_end - 1e-9)
    ctl = Control.of(control, p99(control_base) * (1 + tolerance))
    during = between(requests, opened, closed)
    failures = sum(1 for r in requests if opened <= r.start <= closed and not r.ok)
    judged = Judged(
        service=service,
        episode=episode,
        baseline_p99=baseline,
        baseline_n=len(base),
        during_p99=p99(during) if during else None,
        during_n=len(during),
        failures_during=failures,
        threshold=threshold,
        over_in_baseline=sum(1 for x in base if x > threshold) / len(base),
        true_recovered_at=settled_from(requests, closed, threshold, ctl),
    )
    slack = PROBE_INTERVAL + RECOVERY_SLACK
    if spike_began is not None:
        judged.true_fell_at = settled_from(requests, spike_began, threshold, ctl)
        if judged.true_fell_at is not None:
            judged.true_rose_at = settled_until(requests, judged.true_fell_at, threshold, ctl)
        high = baseline * WINDOWS["spike_ratio"]
        ctl_high = Control.of(control, p99(control_base) * WINDOWS["spike_ratio"])
        fell = settled_from(requests, spike_began, high, ctl_high)
        rose = None if fell is None else settled_until(requests, fell, high, ctl_high)
        judged.rose_fell_at_spike_threshold = (rose, fell)
        for what, reported, true in (
            ("opened_at (s after spike began)", opened, judged.true_rose_at),
            ("closed_at (s after spike began)", closed, judged.true_fell_at),
        ):
            judged.checks.append(_moment(what, reported, true, slack, spike_began))
    recovered = _iso(episode.get("recovered_at"))
    judged.checks.append(
        _moment(
            "recovered_at (s after closed_at)", recovered, judged.true_recovered_at, slack, closed
        )
    )
    judged.checks.extend(_impact(judged, base, during))
    return judged


def _moment(
    what: str, reported: float | None, true: float | None, slack: float, origin: float
) -> Check:
    """A moment, as seconds after `origin`, within `slack` of the truth."""
    if true is None:
        return Check(what, None, None, math.inf, -math.inf, "the recording never settled")
    return Check(
        what,
        None if reported is None else reported - origin,
        true - origin,
        true - origin - slack,
        true - origin + slack,
    )


def _impact(judged: Judged, base: Sequence[float], during: Sequence[float]) -> list[Check]:
    """The impact ratio to 15% when the agent's sample counts support a p99 that closely;
    always each quantile within the band an n-sample quantile of the process falls in."""
    latency = judged.episode.get("latency") or {}
    n_base = _path(latency, "baseline", "samples") or 0
    n_during = _path(latency, "during", "samples") or 0
    reported_ratio = _path(latency, "ratios", "p99")
    if not during or not n_base or not n_during or judged.during_p99 is None:
        return [Check("impact ratio (p99)", reported_ratio, None, math.inf, -math.inf,
                      "no samples")]  # fmt: skip
    true_ratio = judged.during_p99 / judged.baseline_p99
    widen = 1 + BUCKET_ERROR
    checks: list[Check] = []
    bands: dict[tuple[str, str], tuple[float, float]] = {}
    for part, values, n in (("during", during, n_during), ("baseline", base, n_base)):
        for name, q in (("p99", 0.99), ("p50", 0.5)):
            low, high = bands[(part, name)] = order_statistic_band(values, n, q)
            checks.append(
                Check(f"{part} {name}", _path(latency, part, name), exact_quantile(values, q),
                      low / widen, high * widen, f"{n} probes, {len(values)} requests",
                      informational=name == "p50")
            )  # fmt: skip
    d_low, d_high = bands[("during", "p99")]
    b_low, b_high = bands[("baseline", "p99")]
    low = d_low / b_high if b_high < math.inf else 0.0
    high = d_high / b_low if b_low > 0 else math.inf
    judged.impact_supported = low >= true_ratio * (1 - IMPACT_TOLERANCE) and high <= true_ratio * (
        1 + IMPACT_TOLERANCE
    )
    off = "" if reported_ratio is None else f"off by {reported_ratio / true_ratio - 1:+.0%}; "
    if judged.impact_supported:
        ratio = Check(
            "impact ratio (p99)", reported_ratio, true_ratio,
            true_ratio * (1 - IMPACT_TOLERANCE), true_ratio * (1 + IMPACT_TOLERANCE),
            f"{off}{n_during} and {n_base} probes support a p99 to 15%",
        )  # fmt: skip
    else:
        ratio = Check(
            "impact ratio (p99)", reported_ratio, true_ratio, low / widen**2, high * widen**2,
            f"{off}{n_during} and {n_base} probes cannot support a p99 to 15%: the band of "
            "their p99s' ratio",
        )  # fmt: skip
    return [ratio, *checks]


# -- the scenario --------------------------------------------------------------------------


@dataclass
class Run:
    """What one play of the scenario left: the agent's episodes, the recordings, and when
    the scenario touched each Service (wall clock)."""

    doc: dict[str, Any]
    recordings: dict[str, list[Request]]
    touched: dict[str, float]
    spike_ended: float
    seconds: float

    def save(self, path: Path) -> None:
        """The run as JSON, to look into a failure (`load` reads it back)."""
        recordings = {
            k: [[r.start, r.latency, r.ok] for r in v] for k, v in self.recordings.items()
        }
        body = {
            "doc": self.doc,
            "recordings": recordings,
            "touched": self.touched,
            "spike_ended": self.spike_ended,
            "seconds": self.seconds,
        }
        path.write_text(json.dumps(body))

    @classmethod
    def load(cls, path: Path) -> Run:
        body = json.loads(path.read_text())
        recordings = {k: [Request(*r) for r in v] for k, v in body.pop("recordings").items()}
        return cls(recordings=recordings, **body)

    def episodes(self, service: str) -> list[dict[str, Any]]:
        every = [*self.doc.get("open", []), *self.doc.get("recent", [])]
        mine = [e for e in every if e["namespace"] == NAMESPACE and e["service"] == service]
        return sorted(mine, key=lambda e: e.get("opened_at") or "")


def _pod(subject: Subject, port: int, index: int, ip: str, **options: Any) -> dict[str, Any]:
    containers, sidecars = container_templates(subject.profile, port)
    return objects.deployment_pod(
        subject.name, namespace=NAMESPACE, node=subject.node, seed=index, pod_ip=ip,
        containers=containers, sidecars=sidecars, grace_period_seconds=30, **options,
    )  # fmt: skip


def _ip(subject: Subject, index: int) -> str:
    third = 120 if subject.node == AGENT_NODE else 121
    return f"127.0.{third}.{10 * (SUBJECTS.index(subject) + 1) + index}"


def seed_cluster(api: ApiServer, port: int) -> dict[str, list[str]]:
    """The Services and their running pods; returns the pods' names by Service."""
    pods: dict[str, list[str]] = {}
    now = time.time()
    for s in SUBJECTS:
        api.store.create(
            "services",
            service_object(
                s.name, namespace=NAMESPACE, cluster_ip=s.cluster_ip,
                ports=(("http", port, "http"),),
                annotations={ANNOTATION_PROTOCOL: "http", ANNOTATION_PATH: PATH,
                             ANNOTATION_INTERVAL: f"{round(PROBE_INTERVAL * 1000)}ms"},
            ),
        )  # fmt: skip
        pods[s.name] = [
            api.store.create("pods", _pod(s, port, i, _ip(s, i), created=now - 600))["metadata"][
                "name"
            ]
            for i in range(s.replicas)
        ]
    return pods


def steady_probes(agent: Agent) -> dict[str, float]:
    """The agent's steady service probes so far, by Service."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(agent.registry).decode()):
        for s in family.samples:
            if (
                s.name == "tailwatch_probe_duration_seconds_count"
                and s.labels.get("target") == "service"
                and s.labels.get("state") == "steady"
            ):
                out[s.labels["service"]] = out.get(s.labels["service"], 0.0) + s.value
    return out


async def evict_and_replace(cluster: Cluster, victim: str, port: int) -> None:
    """A drain's eviction of `victim` (Eviction API: graceful, DisruptionTarget), and its
    ReplicaSet's replacement on the same node: pulled, started, ready after WARMUP.
    The pauses are the choreography's own durations."""
    subject = next(s for s in SUBJECTS if s.name == EVICTED)
    cluster.terminate(NAMESPACE, victim, disruption="EvictionByEvictionAPI")
    replacement = _pod(subject, port, 7, _ip(subject, 7), state="scheduled")
    created = cluster.add(objects.containers_creating(replacement, time.time()))
    name = created["metadata"]["name"]

    async def finish_victim() -> None:
        await asyncio.sleep(GRACE)
        cluster.finish_termination(NAMESPACE, victim)

    finishing = asyncio.create_task(finish_victim())
    await asyncio.sleep(PULL)
    cluster.transition(
        NAMESPACE, name, lambda p, now: objects.containers_running(p, now, pod_ip=_ip(subject, 7))
    )
    await asyncio.sleep(WARMUP)
    cluster.transition(NAMESPACE, name, objects.mark_ready)
    await finishing


async def spike(dataplane: DataPlane, pods: Sequence[str]) -> float:
    """The search pods' app containers want SPIKE_CORES more CPU for SPIKE_SECONDS; returns
    when that ended (wall clock)."""
    for pod in pods:
        dataplane.burst(NAMESPACE, pod, "app", SPIKE_CORES)
    await asyncio.sleep(SPIKE_SECONDS)  # the spike's own duration
    for pod in pods:
        dataplane.burst(NAMESPACE, pod, "app", 0.0)
    return time.time()


def _finished(doc: Mapping[str, Any], services: Sequence[str]) -> bool:
    """Each of `services` has an episode, and none of them is open or recovering."""
    every = [*doc.get("open", []), *doc.get("recent", [])]
    mine = [e for e in every if e["namespace"] == NAMESPACE]
    if not all(any(e["service"] == s for e in mine) for s in services):
        return False
    return all(e["status"] not in ("open", "recovering") for e in mine if e["service"] in services)


async def _episodes_over_http(agent: Agent) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{agent.settings.listen}/api/v1/episodes") as resp,
    ):
        assert resp.status == 200
        doc: dict[str, Any] = await resp.json()
        return doc


async def play(tmp: Path) -> Run:
    """Play the scenario once with the real agent; returns what it reported and the truth."""
    began = time.monotonic()
    cgroup_root = tmp / "cgroup"
    cgroup_root.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        api = ApiServer(bookmark_interval=0.2)
        await stack.enter_async_context(api)
        kubeconfig = api.write_kubeconfig(tmp / "kubeconfig")
        port = pick_port(0)
        pods = seed_cluster(api, port)
        controller = EndpointSliceController(api.store)
        controller.reconcile()
        slices = asyncio.create_task(controller.run(), name="endpointslices")

        async def stop_slices() -> None:
            slices.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slices

        stack.push_async_callback(stop_slices)
        dataplane = DataPlane(
            api.store, [s.profile for s in SUBJECTS], seed=SEED,
            node_cores={AGENT_NODE: 8.0, OTHER_NODE: 8.0}, sync_delay=SYNC_DELAY, tick=0.1,
        )  # fmt: skip
        await stack.enter_async_context(dataplane)
        windows: dict[str, Any] = dict(WINDOWS)  # Settings fields, by name
        agent = await stack.enter_async_context(
            running_agent(kubeconfig, cgroup_root, node=AGENT_NODE, **windows)
        )
        # From when the agent runs: its start-up stalls the event loop for a moment, which
        # neither its baseline nor the truth's should hold (the prober starts with it).
        recorders = {
            s.name: Recorder(s.cluster_ip, port, s.every, f"{s.name}.{NAMESPACE}.svc")
            for s in SUBJECTS
        }
        for recorder in recorders.values():
            recorder.start()
            stack.push_async_callback(recorder.stop)
        await wait_for(
            lambda: all(steady_probes(agent).get(s.name, 0) >= STEADY_PROBES for s in SUBJECTS[:2]),
            f"{STEADY_PROBES} steady probes of each disrupted Service",
            timeout=90,
            interval=1.0,  # reading the registry costs the event loop a few ms
        )
        cluster = Cluster(api.store)
        touched = {SPIKED: time.time()}
        spiking = asyncio.create_task(spike(dataplane, pods[SPIKED]))
        await asyncio.sleep(EVICT_AFTER_SPIKE)  # the scenario's timeline
        touched[EVICTED] = time.time()
        await evict_and_replace(cluster, pods[EVICTED][1], port)
        spike_ended = await spiking
        try:
            await wait_for(
                lambda: _finished(agent.episodes_json(), (EVICTED, SPIKED)),
                "both episodes to close and recover",
                timeout=SETTLE_DEADLINE,
                interval=0.1,
            )
        except AssertionError as exc:
            doc = agent.episodes_json()
            summary = [
                f"{e['id']} {e['cause']} {e['status']} opened {e['opened_at']} closed "
                f"{e['closed_at']} events {e['event_counts']}"
                for e in [*doc.get("open", []), *doc.get("recent", [])]
            ]
            raise AssertionError(f"{exc}; the agent's episodes: {summary}") from None
        # The truth of a recovery needs MIN_COUNT requests after it, and a little more.
        until = time.time() + 2.0
        await wait_for(
            lambda: all(r.last_start() >= until for r in recorders.values()),
            "two more seconds of recording",
        )
        doc = await _episodes_over_http(agent)
    return Run(
        doc=doc,
        recordings={name: r.requests for name, r in recorders.items()},
        touched=touched,
        spike_ended=spike_ended,
        seconds=time.monotonic() - began,
    )


# -- the report ----------------------------------------------------------------------------


def episode_of(run: Run, service: str) -> dict[str, Any] | None:
    """The episode of the disruption of `service`: the first one still open when the
    scenario touched it, or opened after (an earlier one would be from before)."""
    touched = run.touched[service]
    for episode in run.episodes(service):
        closed = _iso(episode.get("closed_at"))
        if closed is None or closed >= touched:
            return episode
    return None


def judge_run(run: Run) -> dict[str, Judged]:
    """The disrupted Services' episodes against the truth."""
    out: dict[str, Judged] = {}
    for service in (EVICTED, SPIKED):
        episode = episode_of(run, service)
        if episode is None:
            continue
        out[service] = judge(
            service,
            episode,
            run.recordings[service],
            run.touched[service],
            run.recordings[UNTOUCHED],
            spike_began=run.touched[service] if service == SPIKED else None,
        )
    return out


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(Bin(n, p) >= k)."""
    if k <= 0:
        return 1.0
    total, log_p, log_q = 0.0, math.log(p), math.log1p(-p)
    for j in range(k, n + 1):
        total += math.exp(
            math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
            + j * log_p + (n - j) * log_q
        )  # fmt: skip
    return min(1.0, total)


def unjustified(run: Run, service: str) -> list[tuple[dict[str, Any], str]]:
    """Episodes of an untouched Service the recording does not show as real: each with the
    truth over it. An episode is real when the requests started in [opened_at, closed_at]
    (at least the spike detection's rolling window) hold far more requests over
    `spike_ratio` x the baseline p99 before it than 1% would (P < ALPHA by the binomial),
    e.g. when the whole machine stalled and every Service was slow."""
    requests = run.recordings[service]
    out: list[tuple[dict[str, Any], str]] = []
    for episode in run.episodes(service):
        opened = _iso(episode.get("opened_at"))
        closed = _iso(episode.get("closed_at")) or requests[-1].start
        assert opened is not None
        base = between(requests, opened - WINDOWS["baseline_window"], opened - 1e-9)
        during = between(requests, opened, max(closed, opened + WINDOWS["recovery_window"]))
        if not base or not during:
            out.append((episode, "no recording around it"))
            continue
        threshold = p99(base) * WINDOWS["spike_ratio"]
        over = sum(1 for x in during if x > threshold)
        chance = _binomial_tail(len(during), 0.01, over)
        why = (
            f"{over} of {len(during)} requests over {threshold * 1000:.1f} ms "
            f"(2x the baseline p99); by chance: {chance:.2g}"
        )
        if chance >= ALPHA:
            out.append((episode, why))
    return out


def report(run: Run, judged: Mapping[str, Judged]) -> str:
    """The comparison, as text."""
    lines = [f"ground truth: the scenario played in {run.seconds:.1f} s"]
    for service in (EVICTED, SPIKED, UNTOUCHED, HEAVY_TAILED):
        requests = run.recordings[service]
        failed = sum(1 for r in requests if not r.ok)
        episodes = run.episodes(service)
        lines.append(
            f"{NAMESPACE}/{service}: {len(requests)} requests recorded ({failed} failed), "
            f"{len(episodes)} episode(s): "
            + ", ".join(f"{e['id']} {e['cause']} {e['status']}" for e in episodes)
        )
        if service in (UNTOUCHED, HEAVY_TAILED):
            lines.extend(
                f"  {e['id']} opened {e['opened_at']} closed {e['closed_at']}: NOT in the "
                f"recording: {why}"
                for e, why in unjustified(run, service)
            )
        j = judged.get(service)
        if j is None:
            continue
        e = j.episode
        lines.append(
            f"  opened {e.get('opened_at')} closed {e.get('closed_at')} recovered "
            f"{e.get('recovered_at')} detected {e.get('detected_at')} spike {e.get('spike')}"
        )
        lines.append(
            f"  truth: baseline p99 {j.baseline_p99 * 1000:.1f} ms of {j.baseline_n}, during "
            f"p99 {_ms(j.during_p99)} of {j.during_n} ({j.failures_during} failed), threshold "
            f"{j.threshold * 1000:.1f} ms ({j.over_in_baseline:.2%} of the baseline over "
            f"it); impact ratio supported to 15%: {j.impact_supported}"
        )
        if service == SPIKED:
            rose, fell = j.rose_fell_at_spike_threshold
            began = run.touched[service]
            lines.append(
                f"  the scenario ran the spike from 0 to {run.spike_ended - began:.3f} s; at "
                "the spike threshold instead, the truth rose "
                + ("-" if rose is None else f"{rose - began:.3f}")
                + " s and fell "
                + ("-" if fell is None else f"{fell - began:.3f}")
                + " s after it began"
            )
        lines.extend(c.line() for c in j.checks)
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def main(argv: Sequence[str] = ()) -> int:
    """Play once and print the report (`--save FILE` keeps the run: the agent's episodes
    and the recordings), or `--load FILE` to judge a kept run again."""
    if len(argv) == 2 and argv[0] == "--load":
        run = Run.load(Path(argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="ground-truth-") as tmp:
            run = asyncio.run(play(Path(tmp)))
        if len(argv) == 2 and argv[0] == "--save":
            run.save(Path(argv[1]))
    judged = judge_run(run)
    print(report(run, judged))
    ok = all(c.holds for j in judged.values() for c in j.checks if not c.informational)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
