"""List + watch of one Kubernetes resource, the way client-go's reflector does it, on aiohttp.

The stack, innermost first:
- `list_objects`: a paginated list (limit/continue) that restarts when its continue token
  expires, returning the items and the list's resourceVersion;
- `stream_watch`: one watch request, yielding decoded events until the server ends it;
- `Reflector.run`: forever list, hand the state to the handler, watch from the list's
  resourceVersion, resume after every clean end, relist on 410 Gone, back off with jitter
  on errors, and treat a watch that ends in under a second with no events as an error.

The handler gets the full state on every (re)list and each watch event; it is the one that
diffs (see `exporter.core.lifecycle`), so a relist reports only what really changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from exporter.kube.config import KubeConnection

log = logging.getLogger("tailwatch.watch")

MAX_LINE_BYTES = 32 * 1024 * 1024  # a watch event line larger than this is refused


class WatchHandler(Protocol):
    """Receives the state of a resource: every (re)list in full, then each watch event."""

    def on_list(self, items: list[Mapping[str, Any]]) -> None: ...

    def on_event(self, event_type: str, obj: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ResourceSpec:
    """One watched collection: `name` labels the watch metrics (`resource`)."""

    name: str
    path: str  # e.g. /api/v1/pods
    field_selector: str = ""
    label_selector: str = ""

    def selector_params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        return params


@dataclass(frozen=True)
class WatchTiming:
    """Timeouts and backoff; production defaults follow client-go, tests shrink them."""

    page_size: int = 500
    min_watch_timeout: float = 300.0  # server-side timeoutSeconds is jittered in [min, 2*min)
    inactivity_timeout: float = 70.0  # no byte (not even a bookmark) for this long: reconnect
    request_timeout: float = 60.0  # one list page
    connect_timeout: float = 10.0
    backoff_initial: float = 0.8
    backoff_cap: float = 30.0
    backoff_reset_after: float = 120.0  # healthy this long: next error starts from initial
    short_watch: float = 1.0  # ended sooner than this with no event: an error


@dataclass
class WatchHealth:
    """What the watch self-metrics show; updated by the reflector, read at scrape time."""

    resource: str
    synced: bool = False  # the first list has been handed to the handler
    events: dict[str, int] = field(default_factory=dict)  # by event type
    restarts: dict[str, int] = field(default_factory=dict)  # by reason
    dropped: dict[str, int] = field(default_factory=dict)  # by reason
    last_event_at: float | None = None  # monotonic; events, bookmarks and lists count
    resource_version: str = ""
    failing_since: float | None = None  # monotonic time of the first failure in a row

    def is_ready(self, now: float, grace: float) -> bool:
        """Synced, and not failing for longer than `grace` (a quick reconnect is no outage)."""
        if not self.synced:
            return False
        return self.failing_since is None or now - self.failing_since < grace

    def count_restart(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1

    def count_dropped(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class WatchError(Exception):
    """Ends one list or watch attempt; `reason` becomes the restarts metric's label."""

    reason = "error"


class ResourceExpired(WatchError):
    """410 Gone: the resourceVersion or continue token is older than the server's history."""

    reason = "gone"


class ApiStatusError(WatchError):
    """A non-success HTTP status or an ERROR watch event carrying a Status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code
        self.reason = (
            "unauthorized"
            if code == 401
            else "forbidden"
            if code == 403
            else "server_error"
            if code >= 500
            else "http_error"
        )


class WatchDecodeError(WatchError):
    reason = "decode_error"


class ShortWatch(WatchError):
    reason = "short_watch"


class InactivityTimeout(WatchError):
    reason = "inactivity_timeout"


class ConnectionFailed(WatchError):
    reason = "connection_error"


class Backoff:
    """client-go's exponential backoff manager: doubling from `initial` to `cap`, with jitter
    up to 100% of the delay, reset after `reset_after` seconds without a failure."""

    def __init__(
        self,
        initial: float,
        cap: float,
        reset_after: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._reset_after = reset_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._next = initial
        self._last_failure: float | None = None

    def next_delay(self) -> float:
        now = self._clock()
        if self._last_failure is not None and now - self._last_failure > self._reset_after:
            self._next = self._initial
        self._last_failure = now
        base = self._next
        self._next = min(self._next * 2, self._cap)
        return base + self._rng.random() * base

    def reset(self) -> None:
        self._next = self._initial
        self._last_failure = None


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status == 200:
        return
    try:
        body = await resp.json(content_type=None)
        message = str(body.get("message") or body) if isinstance(body, dict) else str(body)
    except (ValueError, aiohttp.ClientError):
        message = resp.reason or "no Status body"
    if resp.status == 410:
        raise ResourceExpired(message)
    raise ApiStatusError(resp.status, message)


class ApiSession:
    """An aiohttp session bound to one API server, adding credentials to every request."""

    def __init__(self, connection: KubeConnection, timing: WatchTiming) -> None:
        self.connection = connection
        self.timing = timing
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiSession:
        connector = aiohttp.TCPConnector(
            ssl=self.connection.ssl_context if self.connection.ssl_context else False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept": "application/json", "User-Agent": "tailwatch"},
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(
        self, path: str, params: Mapping[str, str], client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "ApiSession used outside `async with`"
        headers = await self.connection.auth_headers()
        try:
            return await self._session.get(
                self.connection.host + path,
                params=dict(params),
                headers=headers,
                timeout=client_timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"{self.connection.host}: {exc or type(exc).__name__}") from exc


async def list_objects(
    api: ApiSession, resource: ResourceSpec
) -> tuple[list[Mapping[str, Any]], str]:
    """A full paginated list; restarts from the first page once if a continue token expires."""
    timing = api.timing
    timeout = aiohttp.ClientTimeout(
        total=timing.request_timeout, sock_connect=timing.connect_timeout
    )
    for attempt in range(2):
        items: list[Mapping[str, Any]] = []
        params = {**resource.selector_params(), "limit": str(timing.page_size)}
        try:
            while True:
                resp = await api.get(resource.path, params, timeout)
                async with resp:
                    await _raise_for_status(resp)
                    try:
                        body = await resp.json(content_type=None)
                    except (ValueError, aiohttp.ClientPayloadError) as exc:
                        raise WatchDecodeError(f"list body is not JSON: {exc}") from exc
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        raise ConnectionFailed(f"list interrupted: {exc!r}") from exc
                if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                    raise WatchDecodeError("list body has no items")
                items.extend(i for i in body["items"] if isinstance(i, Mapping))
                meta = body.get("metadata") or {}
                cont = meta.get("continue") if isinstance(meta, dict) else None
                if not cont:
                    return items, str(meta.get("resourceVersion") or "")
                params["continue"] = str(cont)
        except ResourceExpired:
            # The continue token outlived the server's history; a fresh list is consistent.
            if attempt == 1 or "continue" not in params:
                raise
            log.info("list of %s: continue token expired, listing again", resource.name)
    raise AssertionError("unreachable")


def _split_lines(buffer: bytearray) -> list[bytes]:
    lines: list[bytes] = []
    start = 0
    while (end := buffer.find(b"\n", start)) != -1:
        lines.append(bytes(buffer[start:end]))
        start = end + 1
    del buffer[:start]
    return lines


async def stream_watch(
    api: ApiSession, resource: ResourceSpec, resource_version: str, timeout_seconds: int
) -> AsyncIterator[tuple[str, Mapping[str, Any]]]:
    """One watch request from `resource_version`; yields (type, object) until the server ends it.

    ERROR events raise (`ResourceExpired` for 410); a silent connection raises
    `InactivityTimeout`; a line that is not a JSON watch event raises `WatchDecodeError`.
    """
    timing = api.timing
    params = {
        **resource.selector_params(),
        "watch": "1",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=timing.connect_timeout, sock_read=timing.inactivity_timeout
    )
    resp = await api.get(resource.path, params, timeout)
    async with resp:
        await _raise_for_status(resp)
        buffer = bytearray()
        try:
            async for chunk in resp.content.iter_any():
                buffer += chunk
                if len(buffer) > MAX_LINE_BYTES and b"\n" not in buffer:
                    raise WatchDecodeError(f"watch line longer than {MAX_LINE_BYTES} bytes")
                for line in _split_lines(buffer):
                    if line.strip():
                        yield _decode_event(line)
        except TimeoutError as exc:
            raise InactivityTimeout(
                f"no data for {timing.inactivity_timeout:g}s on the {resource.name} watch"
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            # The server (or a proxy) cut the chunked stream mid-way.
            raise ConnectionFailed(f"watch stream broken: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ConnectionFailed(f"watch stream broken: {exc!r}") from exc
        if buffer.strip():
            yield _decode_event(bytes(buffer))


def _decode_event(line: bytes) -> tuple[str, Mapping[str, Any]]:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise WatchDecodeError(f"watch line is not JSON: {line[:80]!r}") from exc
    if not isinstance(event, dict):
        raise WatchDecodeError("watch line is not a JSON object")
    etype, obj = event.get("type"), event.get("object")
    if not isinstance(etype, str) or not isinstance(obj, dict):
        raise WatchDecodeError("watch event without type or object")
    if etype == "ERROR":
        code = obj.get("code")
        message = str(obj.get("message") or obj.get("reason") or "watch error")
        if code == 410:
            raise ResourceExpired(message)
        raise ApiStatusError(code if isinstance(code, int) else 500, message)
    return etype, obj


def _resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        return str(meta.get("resourceVersion") or "")
    return ""


WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


class Reflector:
    """Keeps a handler in sync with one resource for as long as it runs."""

    def __init__(
        self,
        api: ApiSession,
        resource: ResourceSpec,
        handler: WatchHandler,
        health: WatchHealth | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.health = health or WatchHealth(resource.name)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        timing = api.timing
        self._backoff = Backoff(
            timing.backoff_initial,
            timing.backoff_cap,
            timing.backoff_reset_after,
            clock=clock,
            rng=self._rng,
        )
        self.delays: list[float] = []  # every backoff slept, for tests and logs
        self._failures_in_a_row = 0

    def _watch_timeout(self) -> int:
        low = self.api.timing.min_watch_timeout
        return max(1, int(low + self._rng.random() * low))

    async def _list(self) -> None:
        items, rv = await list_objects(self.api, self.resource)
        self.health.last_event_at = self._clock()
        try:
            self.handler.on_list(items)
        except Exception:
            log.exception("handler failed on a list of %s", self.resource.name)
            self.health.count_dropped("handler_error")
        self.health.synced = True
        self.health.failing_since = None
        self.health.resource_version = rv

    async def _watch(self) -> None:
        """One watch from `health.resource_version`, which advances with every event and
        bookmark as it arrives, so a watch that breaks resumes from the last one seen."""
        started = self._clock()
        seen = 0
        health = self.health
        timeout = self._watch_timeout()
        async for etype, obj in stream_watch(
            self.api, self.resource, health.resource_version, timeout
        ):
            seen += 1
            self.health.last_event_at = self._clock()
            self.health.failing_since = None
            self.health.events[etype] = self.health.events.get(etype, 0) + 1
            new_rv = _resource_version(obj)
            if etype == "BOOKMARK":
                # The watch cache keeps ~75 s of history: advance or a reconnect hits 410.
                if new_rv:
                    health.resource_version = new_rv
                continue
            if etype not in WATCH_EVENT_TYPES:
                self.health.count_dropped("watch_unknown_type")
                continue
            try:
                self.handler.on_event(etype, obj)
            except Exception:
                log.exception("handler failed on a %s event of %s", etype, self.resource.name)
                self.health.count_dropped("handler_error")
            if new_rv:
                health.resource_version = new_rv
        if seen == 0 and self._clock() - started < self.api.timing.short_watch:
            raise ShortWatch(f"watch of {self.resource.name} ended at once with no event")

    async def run(self) -> None:
        """Run until cancelled; never raises on API trouble."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                # A clean end at the server's timeoutSeconds: resume from where we are.
                self.health.count_restart("closed")
                self._failures_in_a_row = 0
                continue
            except WatchError as exc:
                self.health.count_restart(exc.reason)
                if isinstance(exc, ResourceExpired):
                    need_list = True
                elif isinstance(exc, WatchDecodeError):
                    # We may have lost an event we could not read: a relist reconciles.
                    self.health.count_dropped("watch_decode")
                    need_list = True
                if self.health.failing_since is None:
                    self.health.failing_since = self._clock()
                error = exc
            self._failures_in_a_row += 1
            if isinstance(error, ResourceExpired) and self._failures_in_a_row == 1:
                log.info("%s: %s; relisting", self.resource.name, error)
                continue  # an ordinary 410 relists at once, as client-go does
            delay = self._backoff.next_delay()
            self.delays.append(delay)
            level = logging.WARNING if self._failures_in_a_row <= 3 else logging.ERROR
            log.log(
                level,
                "watch of %s failed (%s: %s); retrying in %.1fs",
                self.resource.name,
                error.reason,
                error,
                delay,
            )
            await self._sleep(delay)
