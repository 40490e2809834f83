"""List + watch of one Kubernetes resource, the way client-go's reflector does it, over the
agent's own HTTP/1.1 client (exporter.kube.http).

Lists come from the API server's watch cache, never from etcd in normal operation: a
consistent list is a storage read, and a restart wave of 5,000 agents would be 5,000 of them.
How the reflector gets the full state (`list_mode`):

- `stream`, a streaming list: a watch with `sendInitialEvents=true`,
  `resourceVersionMatch=NotOlderThan` and bookmarks, at `resourceVersion` "" the first time
  and at the last one seen on a relist. The events before the BOOKMARK annotated
  `k8s.io/initial-events-end: "true"` build the list (ADDED ones, and any change the server
  interleaves, as client-go applies them), handed over when that bookmark arrives, at its
  resourceVersion; the same stream then goes on as an ordinary watch.
- `list`: a list at `resourceVersion=0` the first time (the cache's state; the cache ignores
  `limit` and answers in one page, but pages are followed if a server sends them), then a
  watch. A relist asks for `resourceVersion=<last seen>` with `NotOlderThan` and no limit
  (a limit would send older servers to etcd): the cache's state, never older than the one
  the handler holds, so its diff reports exactly the changes of the gap, with no phantom
  event.
- `auto` (the default): `stream`, and `list` for the rest of the reflector's life once the
  server refuses a streaming list (HTTP 400/422 or such an ERROR event: no WatchList
  feature) or ignores it (a bookmark without the annotation before the end of the initial
  events).

A (re)list at the last seen version answered with 410 Expired or "Too large resource
version" (HTTP 504, cause `ResourceVersionTooLarge`) is retried at once with
`resourceVersion=""`, a consistent read, as client-go does; relists stay consistent until
one succeeds. Both count in the restarts metric by reason (`gone`,
`too_large_resource_version`), like every failure.

The stack, innermost first:
- `list_objects`: one list at a resourceVersion, following continue tokens, restarted once
  if a continue token expires; returns the items and the list's resourceVersion;
- `stream_watch`: one watch request (optionally a streaming list), yielding decoded events
  until the server ends it;
- `Reflector.run`: forever get the state and hand it to the handler, watch from its
  resourceVersion, resume after every clean end, relist on 410 Gone, back off with jitter
  on errors, and treat a watch that ends in under a second with no events as an error.

The handler gets the full state on every (re)list and each watch event; it is the one that
diffs (see `exporter.core.lifecycle`), so a relist reports only what really changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.kube.config import KubeConnection
from exporter.kube.http import (
    HttpClient,
    PayloadError,
    Response,
    Timeout,
    TimeoutSpec,
    TlsError,
)

log = logging.getLogger("tailwatch.watch")

MAX_LINE_BYTES = 32 * 1024 * 1024  # a watch event line larger than this is refused
#: Events handled between two turns of the event loop: a burst never holds it for long.
YIELD_EVERY = 32

LIST_MODES = ("auto", "stream", "list")  # the `list_mode` of a Reflector (--list-mode)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"  # annotates a streaming list's last bookmark


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


class ResourceVersionTooLarge(WatchError):
    """HTTP 504 with cause ResourceVersionTooLarge: the server (its watch cache) has not
    reached the resourceVersion asked for, e.g. another API server instance that lags."""

    reason = "too_large_resource_version"


class WatchListUnsupported(WatchError):
    """The server refused a streaming list (sendInitialEvents), or ignored it."""

    reason = "watch_list_unsupported"


class WatchDecodeError(WatchError):
    reason = "decode_error"


class ShortWatch(WatchError):
    reason = "short_watch"


class InactivityTimeout(WatchError):
    reason = "inactivity_timeout"


class ConnectionFailed(WatchError):
    reason = "connection_error"


class TlsFailed(ConnectionFailed):
    """The TLS handshake failed: the server's certificate is not signed by the configured CA
    or not for the name asked for, or the server refused our client certificate."""

    reason = "tls_error"


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


def _status_error(code: int, status: Mapping[str, Any] | None, message: str) -> WatchError:
    """The exception for a failed request or an ERROR event carrying `status` (a Status)."""
    if code == 410:
        return ResourceExpired(message)
    if code == 504 and _too_large(status, message):
        return ResourceVersionTooLarge(message)
    return ApiStatusError(code, message)


def _too_large(status: Mapping[str, Any] | None, message: str) -> bool:
    """client-go's isTooLargeResourceVersionError: the Status cause, or its message."""
    details = status.get("details") if status is not None else None
    causes = details.get("causes") if isinstance(details, Mapping) else None
    if isinstance(causes, list) and any(
        isinstance(c, Mapping) and c.get("reason") == "ResourceVersionTooLarge" for c in causes
    ):
        return True
    return message.startswith("Too large resource version")


async def _raise_for_status(resp: Response) -> None:
    if resp.status == 200:
        return
    status: Mapping[str, Any] | None = None
    try:
        body = await resp.json()
        if isinstance(body, dict):
            status = body
            message = str(body.get("message") or body)
        else:
            message = str(body)
    except (ValueError, OSError):  # not JSON; cut short or silent (TimeoutError)
        message = resp.reason or "no Status body"
    raise _status_error(resp.status, status, message)


class ApiSession:
    """An HTTP client (exporter.kube.http) bound to one API server, adding credentials to
    every request. `user_agent` tells the server (its logs, audit and API priority and
    fairness) which client this is. Lists, reviews and Events share a small keep-alive pool;
    each open watch holds a connection of its own."""

    def __init__(
        self, connection: KubeConnection, timing: WatchTiming, user_agent: str = "tailwatch"
    ) -> None:
        self.connection = connection
        self.timing = timing
        self.user_agent = user_agent
        self._client: HttpClient | None = None

    async def __aenter__(self) -> ApiSession:
        connection = self.connection
        if connection.ssl_context is not None and not connection.verify:
            log.warning(
                "TLS verification of the API server %s is OFF (insecure-skip-tls-verify in "
                "%s): anyone who can intercept the connection can impersonate it and read "
                "the agent's credentials",
                connection.host,
                connection.source,
            )
        self._client = HttpClient(
            connection.host,
            connection.ssl_context,
            server_name=connection.server_name,
            headers={"Accept": "application/json", "User-Agent": self.user_agent},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def http(self) -> HttpClient:
        """The HTTP client (its pool), while the session is open."""
        assert self._client is not None, "ApiSession used outside `async with`"
        return self._client

    async def close(self) -> None:
        """Close every connection, watches' included; later requests fail to connect."""
        if self._client is not None:
            await self._client.close()

    async def get(
        self, path: str, params: Mapping[str, str], client_timeout: TimeoutSpec
    ) -> Response:
        """GET; the caller reads and releases the response (`async with`)."""
        return await self._request("GET", path, client_timeout, params=params)

    async def post(
        self, path: str, body: Mapping[str, Any], client_timeout: TimeoutSpec
    ) -> Response:
        """POST a JSON object (a TokenReview, a SubjectAccessReview, an Event); the caller
        reads and releases the response."""
        return await self._request(
            "POST", path, client_timeout, body=_json_body(body), content_type="application/json"
        )

    async def patch(
        self,
        path: str,
        body: Mapping[str, Any],
        client_timeout: TimeoutSpec,
        content_type: str = "application/merge-patch+json",
    ) -> Response:
        """PATCH with a JSON body of `content_type` (a merge patch by default: an Event's
        series); the caller reads and releases the response."""
        return await self._request(
            "PATCH", path, client_timeout, body=_json_body(body), content_type=content_type
        )

    async def _request(
        self,
        method: str,
        path: str,
        client_timeout: TimeoutSpec,
        *,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "",
    ) -> Response:
        """One request with fresh credentials, the certificate checked against
        `server_name`; a failure to connect is a ConnectionFailed (a TlsFailed for TLS)."""
        assert self._client is not None, "ApiSession used outside `async with`"
        headers = await self.connection.auth_headers()
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = await self._client.request(
                method, path, params=params, headers=headers, body=body, timeout=client_timeout
            )
        except OSError as exc:  # HttpError and its kinds, TimeoutError
            raise self._failed(exc) from exc
        return self._checked(resp)

    def _checked(self, resp: Response) -> Response:
        if resp.status == 401:
            # As client-go: a token file the kubelet rotated is read again at the next
            # request, not only when its refresh period ends.
            self.connection.credentials_rejected()
        return resp

    def _failed(self, exc: BaseException) -> ConnectionFailed:
        message = f"{self.connection.host}: {exc or type(exc).__name__}"
        # An alert after the handshake (a server refusing our client certificate under TLS
        # 1.3) is a TlsError too: the client reports it as the handshake's.
        if isinstance(exc, (TlsError, ssl.SSLError)) or isinstance(exc.__cause__, ssl.SSLError):
            return TlsFailed(message)
        return ConnectionFailed(message)


def _json_body(body: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(body), separators=(",", ":")).encode()


async def list_objects(
    api: ApiSession,
    resource: ResourceSpec,
    resource_version: str = "",
    *,
    not_older_than: bool = False,
    paginate: bool = True,
) -> tuple[list[Mapping[str, Any]], str]:
    """A full list; returns its items and resourceVersion.

    `resource_version` "" is a consistent read (from etcd, unless the server has
    ConsistentListFromCache), "0" whatever the watch cache holds, and a version with
    `not_older_than` the cache's state at least that new. `paginate` asks for pages of
    `page_size` (the watch cache ignores it); continue tokens are followed whenever the server
    sends them, and the list restarts from the first page once if a token expires.
    """
    timing = api.timing
    timeout = Timeout(total=timing.request_timeout, sock_connect=timing.connect_timeout)
    first = resource.selector_params()
    if resource_version:
        first["resourceVersion"] = resource_version
    if not_older_than:
        first["resourceVersionMatch"] = "NotOlderThan"
    if paginate:
        first["limit"] = str(timing.page_size)
    for attempt in range(2):
        items: list[Mapping[str, Any]] = []
        params = dict(first)
        try:
            while True:
                resp = await api.get(resource.path, params, timeout)
                async with resp:
                    await _raise_for_status(resp)
                    try:
                        body = await resp.json()
                    except (ValueError, PayloadError) as exc:
                        raise WatchDecodeError(f"list body is not JSON: {exc}") from exc
                    except OSError as exc:  # TimeoutError, a connection lost
                        raise ConnectionFailed(f"list interrupted: {exc!r}") from exc
                if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                    raise WatchDecodeError("list body has no items")
                items.extend(i for i in body["items"] if isinstance(i, Mapping))
                meta = body.get("metadata") or {}
                cont = meta.get("continue") if isinstance(meta, dict) else None
                if not cont:
                    return items, str(meta.get("resourceVersion") or "")
                # A continuation carries no resourceVersion: the token holds it.
                params = {**resource.selector_params(), "continue": str(cont)}
                if "limit" in first:
                    params["limit"] = first["limit"]
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
    api: ApiSession,
    resource: ResourceSpec,
    resource_version: str,
    timeout_seconds: int,
    *,
    send_initial_events: bool = False,
) -> AsyncGenerator[tuple[str, Mapping[str, Any]], None]:
    """One watch request from `resource_version`; yields (type, object) until the server ends it.

    With `send_initial_events`, a streaming list: the server first sends the state (not older
    than `resource_version`; "" for a consistent one) as events, then a BOOKMARK annotated
    `k8s.io/initial-events-end`. ERROR events raise (`ResourceExpired` for 410); a silent
    connection raises `InactivityTimeout`; a line that is not a JSON watch event raises
    `WatchDecodeError`.
    """
    timing = api.timing
    params = {
        **resource.selector_params(),
        "watch": "1",
        "resourceVersion": resource_version,
        "allowWatchBookmarks": "true",
        "timeoutSeconds": str(timeout_seconds),
    }
    if send_initial_events:
        params["sendInitialEvents"] = "true"
        params["resourceVersionMatch"] = "NotOlderThan"
    timeout = Timeout(
        total=None, sock_connect=timing.connect_timeout, sock_read=timing.inactivity_timeout
    )
    resp = await api.get(resource.path, params, timeout)
    async with resp:
        await _raise_for_status(resp)
        buffer = bytearray()
        try:
            async for chunk in resp.iter_any():
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
        except PayloadError as exc:
            # The server (or a proxy) cut the chunked stream mid-way.
            raise ConnectionFailed(f"watch stream broken: {exc}") from exc
        except OSError as exc:
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
        raise _status_error(code if isinstance(code, int) else 500, obj, message)
    return etype, obj


def _resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        return str(meta.get("resourceVersion") or "")
    return ""


def _ends_initial_events(bookmark: Mapping[str, Any]) -> bool:
    meta = bookmark.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(annotations, Mapping) and annotations.get(INITIAL_EVENTS_END) == "true"


def _object_key(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    return str(meta.get("namespace") or ""), str(meta["name"])


WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


class Reflector:
    """Keeps a handler in sync with one resource for as long as it runs.

    `list_mode` is one of `LIST_MODES` (see the module's docstring); `streaming` says whether
    the next (re)list is a streaming list, which `auto` turns off for good on a server that
    does not support them.
    """

    def __init__(
        self,
        api: ApiSession,
        resource: ResourceSpec,
        handler: WatchHandler,
        health: WatchHealth | None = None,
        *,
        list_mode: str = "auto",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if list_mode not in LIST_MODES:
            raise ValueError(f"list_mode {list_mode!r} is not one of {', '.join(LIST_MODES)}")
        self.api = api
        self.resource = resource
        self.handler = handler
        self.health = health or WatchHealth(resource.name)
        self.list_mode = list_mode
        self.streaming = list_mode != "list"
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
        self._need_list = True
        # client-go's isLastSyncResourceVersionUnavailable: the server could not serve a list
        # at our version (410 or too large), so the next one is consistent.
        self._consistent_list = False

    def _watch_timeout(self) -> int:
        low = self.api.timing.min_watch_timeout
        return max(1, int(low + self._rng.random() * low))

    def _list_version(self) -> str:
        """The resourceVersion of the next (re)list, as client-go's relistResourceVersion."""
        if self._consistent_list:
            return ""
        if not self.health.resource_version:
            return "" if self.streaming else "0"  # the first list
        return self.health.resource_version

    def _deliver(self, items: list[Mapping[str, Any]], resource_version: str) -> None:
        """Hand a full state to the handler; the watch goes on from `resource_version`."""
        self.health.last_event_at = self._clock()
        try:
            self.handler.on_list(items)
        except Exception:
            log.exception("handler failed on a list of %s", self.resource.name)
            self.health.count_dropped("handler_error")
        self.health.synced = True
        self.health.failing_since = None
        self.health.resource_version = resource_version
        self._need_list = False
        self._consistent_list = False

    async def _list(self) -> None:
        version = self._list_version()
        cached = version not in ("", "0")
        items, rv = await list_objects(
            self.api, self.resource, version, not_older_than=cached, paginate=not cached
        )
        self._deliver(items, rv)

    async def _watch(self) -> None:
        """One watch from `health.resource_version`, which advances with every event and
        bookmark as it arrives, so a watch that breaks resumes from the last one seen.

        When a list is due in streaming mode, this watch is the streaming list: its initial
        events build the state, handed to the handler at the end marker, and the same stream
        then goes on as an ordinary watch."""
        started = self._clock()
        seen = 0
        health = self.health
        listing = self._need_list
        initial: dict[tuple[str, str] | int, Mapping[str, Any]] = {}
        version = self._list_version() if listing else health.resource_version
        events = stream_watch(
            self.api, self.resource, version, self._watch_timeout(), send_initial_events=listing
        )
        try:
            async with contextlib.aclosing(events):  # a raise below closes the response
                async for etype, obj in events:
                    seen += 1
                    health.last_event_at = self._clock()
                    if listing:
                        listing = not self._initial_event(initial, etype, obj)
                    else:
                        self._event(etype, obj)
                    if seen % YIELD_EVERY == 0:
                        # One read can carry thousands of events (a burst that deletes half
                        # the Services): let the prober and /healthz run between them.
                        await asyncio.sleep(0)
        except ApiStatusError as exc:
            if listing and exc.code in (400, 422):
                raise WatchListUnsupported(f"the server refused a streaming list: {exc}") from exc
            raise
        if seen == 0 and self._clock() - started < self.api.timing.short_watch:
            raise ShortWatch(f"watch of {self.resource.name} ended at once with no event")
        if listing:
            raise ConnectionFailed(
                f"the streaming list of {self.resource.name} ended before its last bookmark"
            )

    def _initial_event(
        self,
        initial: dict[tuple[str, str] | int, Mapping[str, Any]],
        etype: str,
        obj: Mapping[str, Any],
    ) -> bool:
        """One event of a streaming list's initial part; True once it has ended (the list
        is delivered)."""
        if etype == "BOOKMARK":
            if not _ends_initial_events(obj):
                raise WatchListUnsupported(
                    "a bookmark without the initial-events-end annotation came before the end "
                    "of the initial events: sendInitialEvents was ignored"
                )
            self._deliver(list(initial.values()), _resource_version(obj))
            # The stream goes on as a watch for minutes: the raw objects must not live on
            # with it (110 pods are ~3 MiB of dicts the handler has already parsed).
            initial.clear()
            return True
        if etype not in WATCH_EVENT_TYPES:
            self.health.count_dropped("watch_unknown_type")
            return False
        # A nameless object gets a key of its own: the handler counts it malformed.
        key = _object_key(obj) or len(initial)
        if etype == "DELETED":
            initial.pop(key, None)
        else:
            initial[key] = obj
        return False

    def _event(self, etype: str, obj: Mapping[str, Any]) -> None:
        """One event of an ordinary watch (or of a streaming list after its end marker)."""
        health = self.health
        health.failing_since = None
        health.events[etype] = health.events.get(etype, 0) + 1
        new_rv = _resource_version(obj)
        if etype == "BOOKMARK":
            # The watch cache keeps ~75 s of history: advance or a reconnect hits 410.
            if new_rv:
                health.resource_version = new_rv
            return
        if etype not in WATCH_EVENT_TYPES:
            health.count_dropped("watch_unknown_type")
            return
        try:
            self.handler.on_event(etype, obj)
        except Exception:
            log.exception("handler failed on a %s event of %s", etype, self.resource.name)
            health.count_dropped("handler_error")
        if new_rv:
            health.resource_version = new_rv

    async def run(self) -> None:
        """Run until cancelled; never raises on API trouble."""
        while True:
            try:
                if self._need_list and not self.streaming:
                    await self._list()
                await self._watch()
                # A clean end at the server's timeoutSeconds: resume from where we are.
                self.health.count_restart("closed")
                self._failures_in_a_row = 0
                continue
            except WatchError as exc:
                error = exc
            if isinstance(error, WatchListUnsupported) and self.list_mode == "auto":
                self.streaming = False
                self.health.count_restart(error.reason)
                log.warning(
                    "%s: %s; listing from the watch cache (resourceVersion=0, then "
                    "NotOlderThan) from now on",
                    self.resource.name,
                    error,
                )
                continue  # no backoff: the list is another kind of request
            self.health.count_restart(error.reason)
            if self.health.failing_since is None:
                self.health.failing_since = self._clock()
            listing = self._need_list
            if isinstance(error, WatchDecodeError):
                # We may have lost an event we could not read: a relist reconciles.
                self.health.count_dropped("watch_decode")
                self._need_list = True
            elif isinstance(error, (ResourceExpired, ResourceVersionTooLarge)):
                # Our version is gone, or the server has not reached it (another API server
                # that lags, or a history restored from a backup): relist.
                self._need_list = True
            self._failures_in_a_row += 1
            if (
                listing
                and isinstance(error, (ResourceExpired, ResourceVersionTooLarge))
                and not self._consistent_list
            ):
                # The server cannot list at our version: one consistent list, at once.
                log.warning(
                    "%s: list at resourceVersion %r refused (%s); listing consistently",
                    self.resource.name,
                    self._list_version(),
                    error,
                )
                self._consistent_list = True
                continue
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
