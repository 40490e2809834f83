"""Episode Events (--emit-events): each episode's open, close and recovery written as an
`events.k8s.io/v1` Event on its Service, so `kubectl describe service` and `kubectl get
events` show them after the agent is gone; and this node's Events read back at start, so a
restarted agent goes on with its open episodes instead of forgetting them
(docs/correlation.md, *Episodes that outlive the agent*; the rules of what comes back are
pure, in exporter/core/restore.py).

Writing never holds up the correlator or the event loop: `on_change` (a router handler)
only snapshots the change into a bounded queue (the oldest is dropped and counted when it is
full) and a worker task writes. The worker is client-go's event broadcaster in small:

- a token bucket (1 Event a second, bursts of 25) over every request it makes;
- series: an Event of the same (Service, reason, type) within 6 minutes of the last one
  (client-go's isomorphic events) patches the existing Event's `series` (count and
  lastObservedTime) instead of creating another, so a flapping Service makes one Event
  with a count; an Event gone meanwhile (its TTL) is created anew;
- names `<service>.<nanoseconds in hex>` as client-go names them; a name taken (409) is
  retried under a new one;
- transient failures (no connection, 5xx, 429, 401 while a token rotates) retried with
  backoff up to 5 attempts, then dropped and counted (`event_emit_failed`); other 4xx
  given up at once (`event_rejected`; `event_forbidden` for 403, logged with the fix).

Reading back is one paginated list of the Events labelled with this node; the ones another
controller wrote, or whose record cannot be read (`malformed_event`), are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exporter.core.episodes import ChangeKind, EpisodeChange, Impact
from exporter.core.restore import EpisodeRecord, episode_record, parse_record
from exporter.core.services import ServiceRef
from exporter.kube.http import PayloadError, Response, Timeout
from exporter.kube.watching import (
    ApiSession,
    Backoff,
    ConnectionFailed,
    ResourceSpec,
    WatchError,
    list_objects,
)
from exporter.logs import LogOnce

log = logging.getLogger("tailwatch.events")

GROUP_VERSION = "events.k8s.io/v1"
REPORTING_CONTROLLER = "tailwatch.io/agent"
#: Labels this node's Events, so that the agent finds its own again after a restart.
NODE_LABEL = "tailwatch.io/node"
#: The annotation with the episode's compact record (exporter/core/restore.py).
RECORD_ANNOTATION = "tailwatch.io/episode"
#: client-go's events library: an isomorphic Event this soon after the last joins its series.
SERIES_WINDOW = 360.0
QUEUE_LIMIT = 1000
RATE = 1.0  # Events a second, in the long run
BURST = 25
MAX_ATTEMPTS = 5
NOTE_LIMIT = 1024  # bytes, the API server's limit
#: The series remembered (Service x reason x type) before the expired ones are swept.
SERIES_SWEEP_AT = 1024

# tailwatch_dropped_total reasons.
EVENT_QUEUE_FULL = "event_queue_full"
EVENT_EMIT_FAILED = "event_emit_failed"
EVENT_REJECTED = "event_rejected"
EVENT_FORBIDDEN = "event_forbidden"
MALFORMED_EVENT = "malformed_event"

RBAC_FIX = "set config.emit-events in the chart, which grants the RBAC"

# Per change: the Event's action and reason.
_WORDS = {
    ChangeKind.OPENED: ("Opened", "EpisodeOpened"),
    ChangeKind.CLOSED: ("Closed", "EpisodeClosed"),
    ChangeKind.RECOVERED: ("Recovered", "EpisodeRecovered"),
    ChangeKind.NOT_RECOVERED: ("NotRecovered", "EpisodeNotRecovered"),
    ChangeKind.INTERRUPTED: ("Interrupted", "EpisodeInterrupted"),
    ChangeKind.NO_BASELINE: ("ClosedWithoutBaseline", "EpisodeNoBaseline"),
}
_HURT = (Impact.DEGRADED, Impact.SEVERE)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def node_label_value(node: str) -> str:
    """The node label's value: the node's name, or (a name longer than a label value may be,
    up to 253 characters) a hash of it."""
    if len(node) <= 63 and _LABEL_VALUE.match(node):
        return node
    return "h-" + hashlib.sha256(node.encode()).hexdigest()[:40]


def reporting_instance(node: str) -> str:
    return f"tailwatch-{node}"[:128]


def micro_time(at: float) -> str:
    """A MicroTime: RFC 3339 in UTC with microseconds."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> float | None:
    """Epoch seconds of a Time or MicroTime, None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _change_time(change: EpisodeChange, now: float) -> float:
    """When the change happened (not when the agent noticed): the open, the close, the
    recovery; the judging of a non-recovery or an interruption is now."""
    episode = change.episode
    at = {
        ChangeKind.OPENED: episode.opened_at,
        ChangeKind.CLOSED: episode.closed_at,
        ChangeKind.NO_BASELINE: episode.closed_at,
        ChangeKind.RECOVERED: episode.recovered_at,
    }.get(change.kind)
    return now if at is None else at


def _fit(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes, on a character boundary, marked when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def _note(change: EpisodeChange, node: str, summary: str) -> str:
    """The Event's note: the episode's summary, then its numbers and the node, within 1 KiB."""
    episode = change.episode
    facts = [f"episode {episode.id}", f"cause {episode.cause.value}"]
    if episode.impact is not None:
        facts.append(f"impact {episode.impact.value}")
    ratio = episode.observed_p99_ratio()
    if ratio is not None and change.kind is not ChangeKind.OPENED:
        facts.append(f"p99 ratio {ratio:.2f}")
    if episode.recovery_seconds is not None:
        facts.append(f"recovered {episode.recovery_seconds:.1f} s after the close")
    facts.append(f"seen from node {node}")
    tail = " (" + "; ".join(facts) + ")"
    return _fit(summary, NOTE_LIMIT - len(tail.encode())) + tail


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One change of an episode, as its Event will say it (taken when it happened: the
    episode goes on changing while the Event waits in the queue)."""

    service: ServiceRef
    uid: str
    action: str
    reason: str
    type: str
    note: str
    at: float
    record: str  # the annotation: the episode's compact record, JSON

    @property
    def series_key(self) -> tuple[str, str, str, str]:
        return self.service.namespace, self.service.name, self.reason, self.type


@dataclass(slots=True)
class _Series:
    """The last Event of a series key: its name, count and last observation."""

    name: str
    count: int
    last: float


class TokenBucket:
    """`rate` requests a second in the long run, `burst` at once; `delay()` takes a token
    and says how long to wait for it."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def delay(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class _Outcome(Exception):
    """How one request ended, when it did not succeed."""

    def __init__(self, reason: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry


class EpisodeEvents:
    """The Event emitter and reader of one agent (module docstring)."""

    def __init__(
        self,
        node: str,
        *,
        factor: float,
        uid_of: Callable[[ServiceRef], str] = lambda ref: "",
        count_dropped: Callable[[str], None] = lambda reason: None,
        on_error: Callable[[str, BaseException], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        queue_limit: int = QUEUE_LIMIT,
        rate: float = RATE,
        burst: int = BURST,
        series_window: float = SERIES_WINDOW,
        max_attempts: int = MAX_ATTEMPTS,
        backoff: tuple[float, float] = (0.8, 10.0),
        rng: random.Random | None = None,
    ) -> None:
        self.node = node
        self.label = node_label_value(node)
        self.instance = reporting_instance(node)
        self.factor = factor
        self.uid_of = uid_of
        self.count_dropped = count_dropped
        self.on_error = on_error
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.series_window = series_window
        self.max_attempts = max_attempts
        self._backoff = backoff
        self._rng = rng or random.Random()
        self.bucket = TokenBucket(rate, burst, monotonic)
        self.queue: deque[PendingEvent] = deque()
        self.queue_limit = queue_limit
        self._wake = asyncio.Event()
        self.series: dict[tuple[str, str, str, str], _Series] = {}
        self._names = 0
        self._log = LogOnce(log, clock=monotonic)
        self.written = {"created": 0, "patched": 0}
        self.dropped: dict[str, int] = {}
        self.restore: dict[str, Any] = {"state": "pending"}

    # -- the queue -------------------------------------------------------------------------

    def on_change(self, change: EpisodeChange) -> None:
        """A router handler: the change as its Event, queued. O(1); never blocks."""
        action, reason = _WORDS[change.kind]
        episode = change.episode
        hurt = change.kind is ChangeKind.OPENED or (
            change.kind in (ChangeKind.CLOSED, ChangeKind.NOT_RECOVERED) and episode.impact in _HURT
        )
        record = episode_record(episode, self.factor)
        summary = record.get("summary") or episode.summary()  # (it takes a few µs: once)
        event = PendingEvent(
            service=episode.service,
            uid=self.uid_of(episode.service),
            action=action,
            reason=reason,
            type="Warning" if hurt else "Normal",
            note=_note(change, self.node, summary),
            at=_change_time(change, self.clock()),
            record=json.dumps(record, separators=(",", ":"), sort_keys=True, ensure_ascii=False),
        )
        if len(self.queue) >= self.queue_limit:
            self.queue.popleft()
            self._drop(EVENT_QUEUE_FULL)
            self._log.warning(
                EVENT_QUEUE_FULL,
                "episode Event queue full (%d): the oldest dropped; the API server is slow "
                "or unreachable",
                self.queue_limit,
            )
        self.queue.append(event)
        self._wake.set()

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.count_dropped(reason)

    # -- the worker ------------------------------------------------------------------------

    async def run(self, api: ApiSession) -> None:
        """Write the queued Events, forever (the agent cancels it at shutdown)."""
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            event = self.queue.popleft()
            try:
                await self._deliver(api, event)
            except Exception as exc:  # a bug: counted and logged, the next Event goes on
                self._drop(EVENT_EMIT_FAILED)
                if self.on_error is not None:
                    self.on_error("the episode Event writer", exc)

    async def _deliver(self, api: ApiSession, event: PendingEvent) -> None:
        """One Event: created, or its series patched; retried, or dropped and counted."""
        backoff = Backoff(
            *self._backoff, reset_after=float("inf"), clock=self.monotonic, rng=self._rng
        )
        attempt = 0
        while True:
            attempt += 1
            wait = self.bucket.delay()
            if wait > 0:
                await self.sleep(wait)
            try:
                await self._write(api, event)
                return
            except _Outcome as outcome:
                if not outcome.retry or attempt >= self.max_attempts:
                    self._give_up(event, outcome)
                    return
                delay = backoff.next_delay()
                log.debug("episode Event %s: %s; retrying in %.1f s", event.reason, outcome, delay)
            await self.sleep(delay)

    def _give_up(self, event: PendingEvent, outcome: _Outcome) -> None:
        if outcome.reason == EVENT_FORBIDDEN:
            reason = EVENT_FORBIDDEN
        else:
            reason = EVENT_EMIT_FAILED if outcome.retry else EVENT_REJECTED
        self._drop(reason)
        if reason == EVENT_FORBIDDEN:
            self._log.warning(
                reason, "episode Events cannot be written (%s): %s", outcome, RBAC_FIX
            )
        else:
            self._log.warning(
                reason,
                "episode Event %s of %s dropped: %s",
                event.reason,
                event.service,
                outcome,
            )

    async def _write(self, api: ApiSession, event: PendingEvent) -> None:
        key = event.series_key
        held = self.series.get(key)
        if held is not None and event.at - held.last <= self.series_window:
            count, last = held.count + 1, max(held.last, event.at)
            patch = {
                "series": {"count": count, "lastObservedTime": micro_time(last)},
                "metadata": {"annotations": {RECORD_ANNOTATION: event.record}},
            }
            path = self._path(event.service, held.name)
            try:
                await self._request(api.patch(path, patch, self._timeout(api)))
            except _Outcome as outcome:
                if outcome.reason == "not_found":  # gone (its TTL): the next try creates one
                    del self.series[key]
                    raise _Outcome(outcome.reason, str(outcome), retry=True) from None
                raise
            held.count, held.last = count, last
            self.written["patched"] += 1
            return
        name = self._name(event.service)
        body = self._body(event, name)
        await self._request(api.post(self._path(event.service), body, self._timeout(api)))
        self.series[key] = _Series(name, 1, event.at)
        self.written["created"] += 1
        if len(self.series) >= SERIES_SWEEP_AT:
            horizon = event.at - self.series_window
            for stale in [k for k, s in self.series.items() if s.last < horizon]:
                del self.series[stale]

    def _name(self, service: ServiceRef) -> str:
        # client-go: <regarding name>.<UnixNano in hex>; the counter keeps two apart within
        # a nanosecond (or a test's frozen clock).
        self._names += 1
        return f"{service.name}.{int(self.clock() * 1e9) + self._names:x}"

    @staticmethod
    def _path(service: ServiceRef, name: str = "") -> str:
        path = f"/apis/{GROUP_VERSION}/namespaces/{service.namespace}/events"
        return f"{path}/{name}" if name else path

    @staticmethod
    def _timeout(api: ApiSession) -> Timeout:
        return Timeout(total=api.timing.request_timeout, sock_connect=api.timing.connect_timeout)

    def _body(self, event: PendingEvent, name: str) -> dict[str, Any]:
        regarding: dict[str, str] = {
            "apiVersion": "v1",
            "kind": "Service",
            "namespace": event.service.namespace,
            "name": event.service.name,
        }
        if event.uid:
            regarding["uid"] = event.uid
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": event.service.namespace,
                "labels": {NODE_LABEL: self.label},
                "annotations": {RECORD_ANNOTATION: event.record},
            },
            "eventTime": micro_time(event.at),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.instance,
            "action": event.action,
            "reason": event.reason,
            "regarding": regarding,
            "note": event.note,
            "type": event.type,
        }

    async def _request(self, sending: Awaitable[Response]) -> None:
        """Send; an _Outcome unless the server took it."""
        try:
            resp = await sending
            async with resp:
                status = resp.status
                try:
                    body = await resp.json()
                except (ValueError, PayloadError):
                    body = None
        except ConnectionFailed as exc:
            raise _Outcome("connection_error", str(exc), retry=True) from exc
        except OSError as exc:  # TimeoutError, a connection lost before the body
            raise _Outcome("connection_error", repr(exc), retry=True) from exc
        if status in (200, 201):
            return
        message = f"HTTP {status}"
        if isinstance(body, Mapping) and body.get("message"):
            message += f": {body['message']}"
        if status == 403:
            raise _Outcome(EVENT_FORBIDDEN, message, retry=False)
        if status == 404:
            raise _Outcome("not_found", message, retry=False)
        # 409: a name taken (the next try has another) or a conflicting write; 401: a token
        # the kubelet rotated, read again at the next request; 429 and 5xx: the server's.
        retry = status in (401, 409, 429) or status >= 500
        raise _Outcome(EVENT_REJECTED, message, retry=retry)

    # -- reading back ----------------------------------------------------------------------

    async def read_back(
        self, api: ApiSession, attempts: int = 3, timeout: float | None = None
    ) -> list[EpisodeRecord]:
        """This node's episode records from its Events (also what series they continue).
        A failure is retried a few times with backoff, all within `timeout`, then logged:
        the agent starts without its past episodes rather than late, or not at all."""
        try:
            return await asyncio.wait_for(self._read_back(api, attempts), timeout)
        except TimeoutError:
            log.warning("episodes not restored: listing this node's Events took over %g s", timeout)
            self.restore = {"state": "failed", "error": f"timed out after {timeout:g} s"}
            return []

    async def _read_back(self, api: ApiSession, attempts: int) -> list[EpisodeRecord]:
        spec = ResourceSpec(
            "events", f"/apis/{GROUP_VERSION}/events", label_selector=f"{NODE_LABEL}={self.label}"
        )
        backoff = Backoff(
            *self._backoff, reset_after=float("inf"), clock=self.monotonic, rng=self._rng
        )
        for attempt in range(1, attempts + 1):
            try:
                # From the watch cache: every agent of a DaemonSet does this at start.
                items, _ = await list_objects(api, spec, "0")
                break
            except WatchError as exc:
                if exc.reason == "forbidden" or attempt == attempts:
                    fix = f": {RBAC_FIX}" if exc.reason == "forbidden" else ""
                    log.warning(
                        "episodes not restored: listing this node's Events failed (%s)%s",
                        exc,
                        fix,
                    )
                    self.restore = {"state": "failed", "error": str(exc)}
                    return []
                await self.sleep(backoff.next_delay())
        records: list[EpisodeRecord] = []
        for item in items:
            record = self._parse(item)
            if record is not None:
                records.append(record)
        self.restore = {"state": "read", "events": len(records)}
        return records

    def _parse(self, item: Mapping[str, Any]) -> EpisodeRecord | None:
        """The record of one Event this agent wrote, and its series remembered; None for
        another controller's Event, or one that cannot be read (counted)."""
        if (
            item.get("reportingController") != REPORTING_CONTROLLER
            or item.get("reportingInstance") != self.instance
        ):
            return None
        try:
            meta = item.get("metadata") or {}
            regarding = item.get("regarding") or {}
            if regarding.get("kind") != "Service" or not regarding.get("name"):
                raise ValueError("not about a Service")
            service = ServiceRef(str(meta.get("namespace") or ""), str(regarding["name"]))
            series = item.get("series") or {}
            first = parse_time(item.get("eventTime"))
            if first is None:
                raise ValueError("no eventTime")
            last = parse_time(series.get("lastObservedTime")) or first
            raw = (meta.get("annotations") or {}).get(RECORD_ANNOTATION)
            record = parse_record(json.loads(str(raw)), service, max(first, last))
            count = int(series.get("count") or 1)
        except (ValueError, TypeError, AttributeError) as exc:
            self._drop(MALFORMED_EVENT)
            self._log.warning(
                MALFORMED_EVENT,
                "episode Event %s/%s not restored: %s",
                (item.get("metadata") or {}).get("namespace"),
                (item.get("metadata") or {}).get("name"),
                exc,
            )
            return None
        key = (service.namespace, service.name, str(item.get("reason")), str(item.get("type")))
        held = self.series.get(key)
        if held is None or held.last < record.observed_at:
            self.series[key] = _Series(str(meta.get("name")), count, record.observed_at)
        return record

    def restored(self, live: int, recent: int) -> None:
        """What the correlator took back, for /api/v1/episodes (a failed read stays so)."""
        if self.restore.get("state") == "read":
            self.restore = {**self.restore, "state": "restored", "live": live, "recent": recent}

    def as_json(self) -> dict[str, Any]:
        """The `events` section of /api/v1/episodes: the restore, what was written, what
        waits, what was dropped."""
        return {
            "restore": dict(self.restore),
            "written": dict(self.written),
            "queued": len(self.queue),
            "dropped": dict(sorted(self.dropped.items())),
        }
