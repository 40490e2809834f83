"""Ask the API server who a bearer token belongs to (TokenReview) and whether that user may
GET a URL of the agent (SubjectAccessReview with nonResourceAttributes): the kube-rbac-proxy
model, with the answers cached.

The cache (`ReviewClient`):

- An authenticated token and an allowed request are reused for `ttl` (`--auth-cache-ttl`,
  1 minute by default): a Prometheus that scrapes every 15 s costs one pair of reviews a
  minute per agent, not four.
- A rejected token and a denied request are reused for `negative_ttl` (10 s, never longer
  than `ttl`): long enough that a client retrying a refused request in a loop, or one
  sending the same wrong token, costs the API server at most one review per 10 s per token
  and URL; short enough that a RoleBinding just granted works within 10 s.
- A review that could not be made (API server unreachable, an error status, an answer that
  is not a review) is never cached: the next request asks again.
- Entries are keyed by the SHA-256 digest of the token (a raw token is held only while its
  review is in flight) or, for access, by the user the TokenReview named plus the path and
  verb, so two tokens of one service account share one answer. The cache holds at most
  `max_entries` of each kind, least recently used first out: a client inventing tokens
  evicts entries but cannot grow the agent's memory.
- Concurrent requests with the same uncached key share one review in flight, and at most
  `max_in_flight` reviews of tokens not known are outstanding at once: a burst of scrapes,
  or a client sending many different tokens, cannot become a burst of requests to the API
  server.
- Known clients are never starved by unknown ones: the digests of the tokens the API server
  authenticated in the last `KNOWN_FOR_TTLS` TTLs are remembered (at most `max_entries`,
  least recently used out), and the review of such a token when its answer expires, like
  every SubjectAccessReview (made only for an authenticated user, bounded by users x
  routes), takes one of `reserved_in_flight` slots of its own. A flood of invented tokens
  fills the shared slots; Prometheus's next re-review does not wait behind it.
- Any failure to make a review (not only the network's: a session closed at shutdown, a
  credential plugin of the agent's kubeconfig failing) is `ReviewUnavailable`, a 503.

No `spec.audiences` is sent: the API server checks the token against its own audiences,
which is what a service account token made for the API server (a Prometheus pod's, the
default) carries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from exporter.kube.http import Timeout
from exporter.kube.watching import ApiSession, WatchError

log = logging.getLogger("tailwatch.auth")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"

NEGATIVE_TTL = 10.0  # seconds a rejected token or a denied request is remembered
MAX_ENTRIES = 1024  # per cache (tokens; users x paths)
MAX_IN_FLIGHT = 16  # reviews outstanding at once for tokens not known, all keys together
RESERVED_IN_FLIGHT = 4  # more, for known tokens and SubjectAccessReviews
KNOWN_FOR_TTLS = 10  # a token authenticated within this many TTLs is known
REVIEW_TIMEOUT = 5.0  # seconds for one review, a slot's wait included: under a 10 s scrape timeout

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReviewUnavailable(Exception):
    """The API server could not answer a review: unreachable, an error status (its own 401 or
    403 to the agent included), a timeout or an answer that is not a review. Never cached."""


class _ReviewFailed(ReviewUnavailable):
    """A review that failed with an exception not expected of a request (a closed session, a
    credential plugin's error): logged with its traceback, once."""


@dataclass(frozen=True)
class UserInfo:
    """The user a TokenReview named; what a SubjectAccessReview asks about."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # sorted by key: hashable

    def spec_fields(self) -> dict[str, Any]:
        """The subject fields of a SubjectAccessReviewSpec."""
        fields: dict[str, Any] = {"user": self.username, "groups": list(self.groups)}
        if self.uid:
            fields["uid"] = self.uid
        if self.extra:
            fields["extra"] = {key: list(values) for key, values in self.extra}
        return fields


@dataclass(frozen=True)
class Authentication:
    """A TokenReview's answer: `user` is None when the token was not authenticated."""

    user: UserInfo | None
    error: str = ""  # status.error: why the token was not authenticated

    @property
    def authenticated(self) -> bool:
        return self.user is not None


@dataclass(frozen=True)
class Authorization:
    """A SubjectAccessReview's answer."""

    allowed: bool
    reason: str = ""  # status.reason, or status.evaluationError when there is no reason


@dataclass
class _Entry(Generic[V]):
    value: V
    expires: float


class TtlCache(Generic[K, V]):
    """At most `max_entries` values, each until its own expiry, least recently used evicted
    first; `clock` is monotonic seconds."""

    def __init__(self, max_entries: int, clock: Callable[[], float]) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        """The keys held, least recently used first (expired ones included until looked up)."""
        return list(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries[key] = _Entry(value, self._clock() + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)


def token_digest(token: str) -> bytes:
    """The key a token is remembered by: a SHA-256 digest, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v) for v in value if isinstance(v, str))


def parse_token_review(body: Any) -> Authentication:
    """The answer of a TokenReview (its status); raises ReviewUnavailable if `body` is not one."""
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, dict) or body.get("kind") not in (None, "TokenReview"):
        raise ReviewUnavailable("the API server's answer is not a TokenReview")
    error = str(status.get("error") or "")
    if status.get("authenticated") is not True:
        return Authentication(None, error)
    user = status.get("user")
    username = user.get("username") if isinstance(user, dict) else None
    if not isinstance(username, str) or not username:
        raise ReviewUnavailable("the API server authenticated a token without naming its user")
    assert isinstance(user, dict)
    extra = user.get("extra")
    pairs = (
        tuple(sorted((str(k), _strings(v)) for k, v in extra.items()))
        if isinstance(extra, dict)
        else ()
    )
    uid = user.get("uid")
    return Authentication(
        UserInfo(username, uid if isinstance(uid, str) else "", _strings(user.get("groups")), pairs)
    )


def parse_access_review(body: Any) -> Authorization:
    """The answer of a SubjectAccessReview; raises ReviewUnavailable if `body` is not one."""
    status = body.get("status") if isinstance(body, dict) else None
    if not isinstance(status, dict) or body.get("kind") not in (None, "SubjectAccessReview"):
        raise ReviewUnavailable("the API server's answer is not a SubjectAccessReview")
    allowed = status.get("allowed")
    if not isinstance(allowed, bool):
        raise ReviewUnavailable("the API server's SubjectAccessReview has no status.allowed")
    reason = str(status.get("reason") or status.get("evaluationError") or "")
    # `denied` may not be true with `allowed`; if a server says both, deny.
    return Authorization(allowed and status.get("denied") is not True, reason)


class ReviewClient:
    """TokenReviews and SubjectAccessReviews through the agent's API session, cached (see the
    module's docstring). `api` may be set after construction (the agent opens its session
    after its HTTP server): until then every review is unavailable."""

    def __init__(
        self,
        api: ApiSession | None = None,
        *,
        ttl: float = 60.0,
        negative_ttl: float = NEGATIVE_TTL,
        max_entries: int = MAX_ENTRIES,
        max_in_flight: int = MAX_IN_FLIGHT,
        reserved_in_flight: int = RESERVED_IN_FLIGHT,
        timeout: float = REVIEW_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl)
        self.timeout = timeout
        self.tokens: TtlCache[bytes, Authentication] = TtlCache(max_entries, clock)
        self.access: TtlCache[tuple[UserInfo, str, str], Authorization] = TtlCache(
            max_entries, clock
        )
        self._slots = asyncio.Semaphore(max_in_flight)  # for tokens not known
        self._reserved = asyncio.Semaphore(reserved_in_flight)  # for known clients
        #: Digests of the tokens authenticated in the last KNOWN_FOR_TTLS TTLs.
        self._known: TtlCache[bytes, bool] = TtlCache(max_entries, clock)
        self._in_flight: dict[Hashable, asyncio.Task[Any]] = {}
        self.sent: dict[str, int] = {"tokenreviews": 0, "subjectaccessreviews": 0}
        self.failures = 0  # reviews that could not be made
        self.in_flight = 0  # reviews holding a slot now
        self.peak_in_flight = 0
        self._failing = False  # logged the current outage already

    async def authenticate(self, token: str) -> Authentication:
        """Who `token` belongs to. Raises ReviewUnavailable."""
        key = token_digest(token)
        hit = self.tokens.get(key)
        if hit is not None:
            return hit
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }

        slots = self._reserved if self.known(key) else self._slots

        def keep(answer: Authentication) -> None:
            if answer.authenticated:
                self.tokens.put(key, answer, self.ttl)
                self._known.put(key, True, KNOWN_FOR_TTLS * self.ttl)
            else:
                self.tokens.put(key, answer, self.negative_ttl)
                self._known.discard(key)

        return await self._single_flight(
            ("token", key),
            lambda: self._post(TOKEN_REVIEWS, body, parse_token_review, slots),
            keep,
        )

    def known(self, key: bytes) -> bool:
        """Was the token of digest `key` authenticated within the last KNOWN_FOR_TTLS TTLs?"""
        return self._known.get(key) is not None

    async def authorize(self, user: UserInfo, path: str, verb: str = "get") -> Authorization:
        """May `user` `verb` the non-resource URL `path`? Raises ReviewUnavailable."""
        key = (user, path, verb)
        hit = self.access.get(key)
        if hit is not None:
            return hit
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"nonResourceAttributes": {"path": path, "verb": verb}, **user.spec_fields()},
        }

        def keep(answer: Authorization) -> None:
            self.access.put(key, answer, self.ttl if answer.allowed else self.negative_ttl)

        # Only an authenticated user gets here: the reserved slots (see the module's docstring).
        return await self._single_flight(
            ("access", key),
            lambda: self._post(ACCESS_REVIEWS, body, parse_access_review, self._reserved),
            keep,
        )

    async def _single_flight(
        self, key: Hashable, review: Callable[[], Awaitable[V]], keep: Callable[[V], None]
    ) -> V:
        """One review per key at a time: later callers wait for the first one's answer. The
        review is a task of its own and fills the cache even if every caller gave up."""
        task = self._in_flight.get(key)
        if task is None:

            async def run() -> V:
                answer = await review()
                keep(answer)
                return answer

            task = asyncio.get_running_loop().create_task(run(), name="auth-review")
            self._in_flight[key] = task

            def done(finished: asyncio.Task[Any]) -> None:
                self._in_flight.pop(key, None)
                if not finished.cancelled():
                    finished.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(done)
        answer: V = await asyncio.shield(task)
        return answer

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        parse: Callable[[Any], V],
        slots: asyncio.Semaphore,
    ) -> V:
        resource = path.rsplit("/", 1)[1]
        try:
            answer = await self._request(path, resource, body, parse, slots)
        except ReviewUnavailable as exc:
            self.failures += 1
            if not self._failing:
                self._failing = True
                log.warning(
                    "cannot review a request's bearer token (%s); requests that need a review "
                    "get 503 until the API server answers (this is logged once)",
                    exc,
                    exc_info=exc.__cause__ if isinstance(exc, _ReviewFailed) else None,
                )
            raise
        if self._failing:
            self._failing = False
            log.info("the API server answers token and access reviews again")
        return answer

    async def _request(
        self,
        path: str,
        resource: str,
        body: Mapping[str, Any],
        parse: Callable[[Any], V],
        slots: asyncio.Semaphore,
    ) -> V:
        api = self.api
        if api is None:
            raise ReviewUnavailable("the agent's API session is not open yet")
        timeout = Timeout(total=self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                async with slots:
                    self.sent[resource] += 1
                    self.in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
                    try:
                        resp = await api.post(path, body, timeout)
                        async with resp:
                            status = resp.status
                            raw = await resp.read()
                    finally:
                        self.in_flight -= 1
        except TimeoutError:
            raise ReviewUnavailable(
                f"no answer to a {resource} create in {self.timeout:g}s"
            ) from None
        except WatchError as exc:  # ConnectionFailed from the session
            raise ReviewUnavailable(str(exc)) from exc
        except OSError as exc:  # the body cut short (exporter.kube.http's PayloadError)
            raise ReviewUnavailable(f"{resource}: {exc or type(exc).__name__}") from exc
        except Exception as exc:
            # The review could not be made all the same: a session closed under a request at
            # shutdown, a credential plugin of the agent's own kubeconfig failing in
            # auth_headers(). A 503 the client retries, not a 500 with a traceback per request.
            raise _ReviewFailed(f"{resource}: {type(exc).__name__}: {exc}") from exc
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if status not in (200, 201):
            message = payload.get("message") if isinstance(payload, dict) else None
            hint = ""
            if status in (401, 403):
                hint = (
                    f" (the agent needs create on {resource}: the chart grants it with "
                    "auth.enabled)"
                )
            raise ReviewUnavailable(f"HTTP {status} to a {resource} create: {message}{hint}")
        return parse(payload)
