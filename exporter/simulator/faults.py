"""Fault injection and request accounting for the simulated API server.

Tests reach these through `server.faults` and `server.requests` while the server runs; every
method is safe to call from any thread (a `ThreadedApiServer` test calls them from its own).

Every list and watch is recorded with where a real API server (without the
ConsistentListFromCache feature) would have served it: its watch cache or storage (etcd).
`RequestLog.storage_reads()` is what grows with the cluster when clients list carelessly.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from exporter.simulator.watch import Waker

LIST_AND_WATCH = ("list", "watch")

#: How a server without streaming lists answers `sendInitialEvents`: "" (it supports them),
#: "refuse" (422 Invalid, as a server without the WatchList feature does) or "ignore" (a plain
#: watch: the parameter and resourceVersionMatch are dropped, no end-of-initial-events marker).
WatchListSupport = Literal["", "refuse", "ignore"]


@dataclass(eq=False)
class OpenWatch:
    """The server's handle on one open watch stream, through which faults reach it."""

    resource: str
    waker: Waker
    dropped: bool = False  # cut the connection mid-stream
    expired: bool = False  # end with an ERROR 410 event
    closing: bool = False  # end cleanly (server shutdown)
    raw_lines: deque[bytes] = field(default_factory=deque)


@dataclass
class _Failure:
    remaining: int
    status: int
    resource: str | None
    verbs: tuple[str, ...]
    message: str | None
    in_stream: bool


@dataclass(frozen=True)
class InjectedFailure:
    """What a request that `fail_next` caught must answer."""

    status: int
    message: str | None
    in_stream: bool  # a watch answers 200 and a single ERROR event instead


@dataclass
class RequestRecord:
    """One request the server received; `status` is filled in when it is answered (for a
    watch, the HTTP status, sent before the stream)."""

    method: str
    path: str
    verb: str  # list, watch, get, create, update, patch, delete; "" for discovery and others
    resource: str  # plural, "" for non-resource paths
    namespace: str | None
    name: str | None
    params: Mapping[str, str]
    status: int = 0
    client: str = ""  # the User-Agent header
    # Lists and watches that reached the data: "cache" (the watch cache) or "storage" (etcd),
    # where a real API server without ConsistentListFromCache serves them; "" otherwise.
    served_from: str = ""
    bytes_sent: int = 0  # of the response body; for a watch, everything streamed so far
    events_sent: dict[str, int] = field(default_factory=dict)  # a watch's events, by type

    @property
    def events_total(self) -> int:
        return sum(self.events_sent.values())


class RequestLog:
    """Every request, in arrival order, for tests to count and inspect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def matching(
        self, verb: str | None = None, resource: str | None = None, client: str | None = None
    ) -> list[RequestRecord]:
        return [
            r
            for r in self.records
            if (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (client is None or r.client == client)
        ]

    def count(self, verb: str | None = None, resource: str | None = None) -> int:
        return len(self.matching(verb, resource))

    def storage_reads(
        self, resource: str | None = None, client: str | None = None
    ) -> list[RequestRecord]:
        """The lists a real API server would have read from etcd (every one is a full read
        of the resource's range there, whatever the selectors)."""
        return [r for r in self.matching(None, resource, client) if r.served_from == "storage"]

    def cache_reads(
        self, resource: str | None = None, client: str | None = None
    ) -> list[RequestRecord]:
        """The lists and watches the watch cache would have served."""
        return [r for r in self.matching(None, resource, client) if r.served_from == "cache"]

    def clients(self) -> set[str]:
        """Every User-Agent seen."""
        return {r.client for r in self.records}

    def bytes_sent(self, client: str | None = None, resource: str | None = None) -> int:
        """Response bytes sent (to `client`, of `resource`), watches' streams included."""
        return sum(r.bytes_sent for r in self.matching(None, resource, client))

    def events_sent(self, client: str | None = None, resource: str | None = None) -> dict[str, int]:
        """Watch events sent (to `client`, of `resource`), by type."""
        totals: dict[str, int] = {}
        for record in self.matching("watch", resource, client):
            for etype, n in list(record.events_sent.items()):
                totals[etype] = totals.get(etype, 0) + n
        return totals

    def lists(self, resource: str | None = None) -> list[RequestRecord]:
        return self.matching("list", resource)

    def watches(self, resource: str | None = None) -> list[RequestRecord]:
        return self.matching("watch", resource)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class Faults:
    """Switches a test flips while the server runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: list[OpenWatch] = []
        self._failures: list[_Failure] = []
        self._held_raw_lines: list[tuple[str | None, bytes]] = []
        self._forbidden: dict[str, frozenset[str] | None] = {}
        self.delay: float = 0.0  # seconds added before every response
        # The watch cache is this many resourceVersions behind storage (never older than the
        # compacted history): lists it serves read at that version, or at the version asked
        # for with NotOlderThan if that is newer (as the real cache waits to catch up).
        self.cache_lag: int = 0
        self._watch_list: WatchListSupport = ""
        self._stalled = False

    # ---- the faults ----------------------------------------------------------------------

    def drop_watches(self, resource: str | None = None) -> int:
        """Cut every open watch stream (of `resource`) mid-stream: the connection closes with
        no end chunk, as when an apiserver or a proxy dies. Returns how many were cut."""
        return self._signal(resource, "dropped")

    def expire_watches(self, resource: str | None = None) -> int:
        """End every open watch (of `resource`) with an ERROR 410 Expired event, as a watch
        cache that fell behind does. Callers normally `store.compact()` first, so that the
        client's resumed watch gets 410 too and has to relist."""
        return self._signal(resource, "expired")

    def fail_next(
        self,
        n: int,
        status: int = 500,
        resource: str | None = None,
        *,
        verbs: Iterable[str] = LIST_AND_WATCH,
        message: str | None = None,
        in_stream: bool = False,
    ) -> None:
        """Answer the next `n` requests (by default lists and watches; of `resource`, if given)
        with a Status of code `status`. With `in_stream`, a watch gets HTTP 200 and then that
        Status as a single ERROR event, as the real server sends mid-watch failures."""
        if n <= 0:
            return
        with self._lock:
            self._failures.append(_Failure(n, status, resource, tuple(verbs), message, in_stream))

    def stall_watches(self, stalled: bool = True) -> None:
        """While stalled, open watches send nothing: no event, no bookmark, no clean end at
        timeoutSeconds (a silently dead connection). Events are kept and sent on un-stall, or
        reach the client's next watch from history."""
        with self._lock:
            self._stalled = stalled
            watches = list(self._watches)
        for watch in watches:
            watch.waker.set()

    @property
    def stalled(self) -> bool:
        return self._stalled

    def inject_raw_line(self, line: bytes, resource: str | None = None) -> None:
        """Write `line` (a newline is added) as the next line of every open watch stream (of
        `resource`); with none open, the next watch to open gets it."""
        with self._lock:
            targets = [w for w in self._watches if resource is None or w.resource == resource]
            if not targets:
                self._held_raw_lines.append((resource, line))
            for watch in targets:
                watch.raw_lines.append(line)
        for watch in targets:
            watch.waker.set()

    @property
    def watch_list_unsupported(self) -> WatchListSupport:
        """How watches with `sendInitialEvents` are answered: "" (streaming lists work),
        "refuse" (422, like a server without the WatchList feature) or "ignore" (served as a
        plain watch without the parameter, like a server or proxy that drops it)."""
        return self._watch_list

    @watch_list_unsupported.setter
    def watch_list_unsupported(self, value: WatchListSupport) -> None:
        if value not in ("", "refuse", "ignore"):
            raise ValueError(f"watch_list_unsupported: {value!r} is not '', 'refuse' or 'ignore'")
        self._watch_list = value

    def forbid(self, resource: str, verbs: Iterable[str] | None = None) -> None:
        """Answer 403 Forbidden to `verbs` (default: all) on `resource`, as RBAC would."""
        with self._lock:
            self._forbidden[resource] = frozenset(verbs) if verbs is not None else None

    def permit(self, resource: str) -> None:
        with self._lock:
            self._forbidden.pop(resource, None)

    def clear(self) -> None:
        """Back to a healthy server: no pending failures, stall, delay, cache lag, forbidden
        resource, and streaming lists supported."""
        with self._lock:
            self._failures.clear()
            self._held_raw_lines.clear()
            self._forbidden.clear()
            self.delay = 0.0
            self.cache_lag = 0
            self._watch_list = ""
        self.stall_watches(False)

    # ---- used by the server --------------------------------------------------------------

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def is_forbidden(self, resource: str, verb: str) -> bool:
        with self._lock:
            if resource not in self._forbidden:
                return False
            verbs = self._forbidden[resource]
            return verbs is None or verb in verbs

    def take_failure(self, resource: str, verb: str) -> InjectedFailure | None:
        with self._lock:
            for failure in self._failures:
                if (failure.resource is None or failure.resource == resource) and (
                    verb in failure.verbs
                ):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return InjectedFailure(failure.status, failure.message, failure.in_stream)
        return None

    def register(self, watch: OpenWatch) -> None:
        with self._lock:
            self._watches.append(watch)
            held = [(r, line) for r, line in self._held_raw_lines if r in (None, watch.resource)]
            for item in held:
                self._held_raw_lines.remove(item)
                watch.raw_lines.append(item[1])

    def unregister(self, watch: OpenWatch) -> None:
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)

    def close_all(self) -> None:
        """Server shutdown: end every open watch cleanly."""
        self._signal(None, "closing")

    def _signal(self, resource: str | None, flag: str) -> int:
        with self._lock:
            targets = [w for w in self._watches if resource is None or w.resource == resource]
            for watch in targets:
                setattr(watch, flag, True)
        for watch in targets:
            watch.waker.set()
        return len(targets)
