"""--auth=kubernetes on the agent's routes (`build_app` with the `KubernetesAuth` middleware),
its reviews made by the real client through an `ApiSession` to the simulated API server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from exporter.auth import KubernetesAuth
from exporter.exposition import Exposition
from exporter.kube.config import load_connection
from exporter.kube.kubeconfig import CredentialPluginError
from exporter.kube.review import (
    MAX_IN_FLIGHT,
    ReviewClient,
    TtlCache,
    UserInfo,
    token_digest,
)
from exporter.kube.watching import ApiSession, WatchTiming
from exporter.metrics import AgentMetrics, AgentSource
from exporter.server import build_app, start_server
from exporter.settings import ListenAddress
from exporter.simulator import ApiServer
from tests.conftest import wait_for

PROMETHEUS = "system:serviceaccount:monitoring:prometheus"
GRAFANA = "system:serviceaccount:monitoring:grafana"


class Clock:
    """Monotonic seconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Guarded:
    url: str
    reviews: ReviewClient
    metrics: AgentMetrics
    clock: Clock

    async def get(
        self, path: str, token: str | None = None, scheme: str = "Bearer", method: str = "GET"
    ) -> tuple[int, str, Any]:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        async with aiohttp.ClientSession() as http:
            url = URL(self.url + path, encoded=True)
            async with http.request(method, url, headers=headers) as resp:
                return resp.status, await resp.text(), resp.headers


@asynccontextmanager
async def guarded_app(kubeconfig: Path, **review_options: Any) -> AsyncIterator[Guarded]:
    """The agent's routes behind `KubernetesAuth`, on a loopback port; dropped counts go to
    an AgentMetrics that /metrics shows."""
    metrics = AgentMetrics()
    exposition = Exposition([AgentSource(metrics, pods=list, watches=list)])
    clock = Clock()
    async with ApiSession(load_connection(str(kubeconfig)), WatchTiming()) as session:
        reviews = ReviewClient(session, clock=clock, **review_options)
        app = build_app(
            exposition,
            lambda: (True, "ready"),
            {"/api/v1/targets": lambda: {"targets": []}, "/api/v1/episodes": lambda: []},
            authorize=KubernetesAuth(reviews, metrics.count_dropped),
        )
        runner = await start_server(app, ListenAddress("127.0.0.1", 0))
        port = runner.addresses[0][1]
        try:
            yield Guarded(f"http://127.0.0.1:{port}", reviews, metrics, clock)
        finally:
            await runner.cleanup()


@pytest.fixture
async def guarded(kubeconfig: Path) -> AsyncIterator[Guarded]:
    async with guarded_app(kubeconfig) as app:
        yield app


@pytest.fixture
def tokens(api: ApiServer) -> ApiServer:
    """Prometheus may get /metrics and the JSON API; Grafana's token is valid, with no rule."""
    api.reviews.add_service_account_token("prom-token", "monitoring", "prometheus")
    api.reviews.add_service_account_token("grafana-token", "monitoring", "grafana")
    api.reviews.allow(user=PROMETHEUS, paths=["/metrics", "/api/v1/*"])
    return api


async def test_a_request_without_a_token_gets_a_challenge(api: ApiServer, guarded: Guarded) -> None:
    for path in ("/metrics", "/api/v1/targets", "/api/v1/episodes"):
        status, _, headers = await guarded.get(path)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="tailwatch"'
    status, _, _ = await guarded.get("/metrics", "", scheme="Bearer")
    assert status == 401
    assert guarded.metrics.dropped == {"auth_unauthenticated": 4}
    assert api.reviews.token_reviews == 0  # nothing to review


async def test_the_probes_stay_open(api: ApiServer, guarded: Guarded) -> None:
    assert (await guarded.get("/healthz"))[:2] == (200, "ok\n")
    assert (await guarded.get("/readyz"))[:2] == (200, "ready\n")
    assert (await guarded.get("/healthz", "forged"))[0] == 200
    assert guarded.metrics.dropped == {}
    assert api.reviews.token_reviews == 0


async def test_a_token_the_api_server_does_not_know_is_refused(
    tokens: ApiServer, guarded: Guarded
) -> None:
    status, _, headers = await guarded.get("/metrics", "forged")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="tailwatch", error="invalid_token"'
    # Another scheme carries no bearer token: refused without a review.
    assert (await guarded.get("/metrics", "prom-token", scheme="Basic"))[0] == 401
    assert tokens.reviews.token_reviews == 1
    assert tokens.reviews.access_reviews == 0


async def test_a_user_without_the_rule_is_forbidden_and_one_with_it_reads(
    tokens: ApiServer, guarded: Guarded
) -> None:
    status, text, _ = await guarded.get("/metrics", "grafana-token")
    assert status == 403
    assert text == f'Forbidden: user "{GRAFANA}" cannot get /metrics\n'
    status, _, _ = await guarded.get("/api/v1/targets", "grafana-token")
    assert status == 403
    status, text, _ = await guarded.get("/api/v1/targets", "prom-token")
    assert (status, text) == (200, '{"targets": []}')
    # The scheme is case-insensitive, as in the API server.
    status, text, _ = await guarded.get("/metrics", "prom-token", scheme="bearer")
    assert status == 200
    assert 'tailwatch_dropped_total{reason="auth_forbidden"} 2' in text
    # The SubjectAccessReview named the user, uid and groups of the TokenReview.
    asked = tokens.reviews.asked
    assert {(a.user, a.path, a.verb) for a in asked} == {
        (GRAFANA, "/metrics", "get"),
        (GRAFANA, "/api/v1/targets", "get"),
        (PROMETHEUS, "/api/v1/targets", "get"),
        (PROMETHEUS, "/metrics", "get"),
    }
    prometheus = next(a for a in asked if a.user == PROMETHEUS)
    assert prometheus.groups == (
        "system:serviceaccounts",
        "system:serviceaccounts:monitoring",
        "system:authenticated",
    )
    assert prometheus.uid


async def test_answers_are_reused_for_the_ttl(tokens: ApiServer, guarded: Guarded) -> None:
    reviews = tokens.reviews
    for _ in range(3):
        assert (await guarded.get("/metrics", "prom-token"))[0] == 200
    assert (reviews.token_reviews, reviews.access_reviews) == (1, 1)
    # Deleting the token (or its RBAC) takes effect when the cached answers expire.
    reviews.remove_token("prom-token")
    guarded.clock.now += 59
    assert (await guarded.get("/metrics", "prom-token"))[0] == 200
    assert (reviews.token_reviews, reviews.access_reviews) == (1, 1)
    guarded.clock.now += 2
    assert (await guarded.get("/metrics", "prom-token"))[0] == 401
    assert reviews.token_reviews == 2


async def test_denials_are_reused_briefly_so_a_new_grant_works_soon(
    tokens: ApiServer, guarded: Guarded
) -> None:
    reviews = tokens.reviews
    assert (await guarded.get("/metrics", "grafana-token"))[0] == 403
    assert (await guarded.get("/metrics", "forged"))[0] == 401
    reviews.allow(user=GRAFANA, paths=["/metrics"])
    reviews.add_token("forged", "eve")  # the token becomes valid
    guarded.clock.now += 9
    assert (await guarded.get("/metrics", "grafana-token"))[0] == 403
    assert (await guarded.get("/metrics", "forged"))[0] == 401
    assert (reviews.token_reviews, reviews.access_reviews) == (2, 1)
    guarded.clock.now += 2  # past the 10 s of a negative answer
    assert (await guarded.get("/metrics", "grafana-token"))[0] == 200
    assert (await guarded.get("/metrics", "forged"))[0] == 403  # eve has no rule
    assert guarded.metrics.dropped == {"auth_forbidden": 3, "auth_unauthenticated": 2}


async def test_an_api_server_error_is_503_counted_logged_once_and_not_cached(
    tokens: ApiServer, guarded: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tailwatch.auth")
    tokens.faults.fail_next(3, 500, "tokenreviews", verbs=["create"])
    for _ in range(3):
        status, _, headers = await guarded.get("/metrics", "prom-token")
        assert status == 503
        assert headers["Retry-After"] == "5"
    assert guarded.metrics.dropped == {"auth_unavailable": 3}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "HTTP 500" in warnings[0].getMessage()
    # The failures were not cached: the API server answers again, so does the agent.
    assert (await guarded.get("/metrics", "prom-token"))[0] == 200
    assert "answers token and access reviews again" in caplog.records[-1].getMessage()
    tokens.faults.fail_next(1, 503, "subjectaccessreviews", verbs=["create"])
    assert (await guarded.get("/api/v1/targets", "prom-token"))[0] == 503
    assert (await guarded.get("/api/v1/targets", "prom-token"))[0] == 200
    assert guarded.metrics.dropped == {"auth_unavailable": 4}


async def test_an_agent_not_allowed_to_review_answers_503_and_says_why(
    tokens: ApiServer, guarded: Guarded, caplog: pytest.LogCaptureFixture
) -> None:
    tokens.faults.forbid("subjectaccessreviews", ["create"])
    assert (await guarded.get("/metrics", "prom-token"))[0] == 503
    [warning] = [r for r in caplog.records if r.name == "tailwatch.auth"]
    message = warning.getMessage()
    assert "HTTP 403" in message
    assert "needs create on subjectaccessreviews" in message
    assert "auth.enabled" in message


async def test_an_unreachable_or_slow_api_server_is_503(
    tokens: ApiServer, kubeconfig: Path
) -> None:
    async with guarded_app(kubeconfig, timeout=0.2) as guarded:
        tokens.faults.delay = 1.0
        assert (await guarded.get("/metrics", "prom-token"))[0] == 503
        tokens.faults.delay = 0.0
        await tokens.stop()
        assert (await guarded.get("/metrics", "prom-token"))[0] == 503
        assert guarded.metrics.dropped == {"auth_unavailable": 2}
        assert guarded.reviews.failures == 2
    # Before the agent's API session is open, every review is unavailable.
    reviews = ReviewClient(None)
    metrics = AgentMetrics()
    app = build_app(Exposition([]), lambda: (True, "ready"), {}, authorize=KubernetesAuth(
        reviews, metrics.count_dropped))  # fmt: skip
    runner = await start_server(app, ListenAddress("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        headers = {"Authorization": "Bearer prom-token"}
        async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
            assert resp.status == 503
    finally:
        await runner.cleanup()
    assert metrics.dropped == {"auth_unavailable": 1}


async def test_a_path_no_route_serves_needs_a_token_but_no_access_review(
    tokens: ApiServer, guarded: Guarded
) -> None:
    assert (await guarded.get("/secret"))[0] == 401
    assert (await guarded.get("/secret", "forged"))[0] == 401
    assert (await guarded.get("/secret", "grafana-token"))[0] == 404
    assert (await guarded.get("/metrics", "grafana-token", method="POST"))[0] == 405
    assert (await guarded.get("/healthz/", "grafana-token"))[0] == 404
    assert tokens.reviews.access_reviews == 0


async def test_the_path_reviewed_is_the_route_that_serves(
    tokens: ApiServer, guarded: Guarded
) -> None:
    # An encoded spelling of /metrics is served by /metrics, so /metrics is what is reviewed.
    tokens.reviews.allow(user=GRAFANA, paths=["/api/v1/targets"])
    status, _, _ = await guarded.get("/%6detrics", "grafana-token")
    assert status == 403
    assert [(a.path, a.allowed) for a in tokens.reviews.asked] == [("/metrics", False)]
    status, text, _ = await guarded.get("/api/v1/%74argets", "grafana-token")
    assert (status, text) == (200, '{"targets": []}')
    assert (await guarded.get("/metrics", "prom-token", method="HEAD"))[0] == 200


async def test_concurrent_requests_share_one_review(tokens: ApiServer, kubeconfig: Path) -> None:
    async with ApiSession(load_connection(str(kubeconfig)), WatchTiming()) as session:
        reviews = ReviewClient(session)
        answers = await asyncio.gather(*(reviews.authenticate("prom-token") for _ in range(20)))
        user = answers[0].user
        assert user is not None
        assert {a.user for a in answers} == {user}
        allowed = await asyncio.gather(*(reviews.authorize(user, "/metrics") for _ in range(20)))
        assert all(a.allowed for a in allowed)
        # Different tokens are reviewed separately, still one review each.
        await asyncio.gather(*(reviews.authenticate(f"t{i % 3}") for i in range(30)))
    assert (tokens.reviews.token_reviews, tokens.reviews.access_reviews) == (4, 1)
    assert reviews.sent == {"tokenreviews": 4, "subjectaccessreviews": 1}


async def test_a_flood_of_invented_tokens_is_bounded_and_spares_cached_ones(
    tokens: ApiServer, kubeconfig: Path
) -> None:
    async with ApiSession(load_connection(str(kubeconfig)), WatchTiming()) as session:
        reviews = ReviewClient(session, max_in_flight=4)
        assert (await reviews.authenticate("prom-token")).authenticated
        tokens.faults.delay = 0.05  # every review now takes a while
        flood = [asyncio.create_task(reviews.authenticate(f"bogus-{i}")) for i in range(40)]
        await asyncio.sleep(0)  # the flood's reviews are under way
        # A cached token is answered at once, without waiting for a slot.
        assert (await reviews.authenticate("prom-token")).authenticated
        assert not all(task.done() for task in flood)
        answers = await asyncio.gather(*flood)
    assert not any(a.authenticated for a in answers)
    assert reviews.peak_in_flight == 4
    assert tokens.reviews.token_reviews == 41


async def test_the_cache_is_bounded_and_holds_no_token(tokens: ApiServer, kubeconfig: Path) -> None:
    async with ApiSession(load_connection(str(kubeconfig)), WatchTiming()) as session:
        reviews = ReviewClient(session, max_entries=4)
        await reviews.authenticate("prom-token")
        for i in range(10):
            await reviews.authenticate(f"invented-{i}")
            await reviews.authenticate("prom-token")  # kept: recently used
        assert len(reviews.tokens) == 4
        keys = reviews.tokens.keys()
        assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
        assert token_digest("prom-token") in keys
        assert not any(b"prom-token" in k for k in keys)
        assert tokens.reviews.token_reviews == 11


def test_ttl_cache_expires_and_evicts_least_recently_used() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(2, clock)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=60)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3, ttl=60)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    clock.now += 10
    assert cache.get("a") is None
    assert cache.get("c") == 3
    assert len(cache) == 1


def test_a_user_is_reviewed_with_every_field_of_the_token_review() -> None:
    user = UserInfo("alice", "uid-1", ("devs",), (("scopes", ("read",)),))
    assert user.spec_fields() == {
        "user": "alice",
        "groups": ["devs"],
        "uid": "uid-1",
        "extra": {"scopes": ["read"]},
    }


class FailingPlugin:
    """The credentials of an exec plugin that fails with no credential left to use."""

    def cached(self) -> None:
        return None

    def fetch(self) -> dict[str, str]:
        raise CredentialPluginError("exec: the plugin exited with status 1")


async def test_a_review_that_fails_in_any_way_is_503_not_500(
    tokens: ApiServer, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not only the network fails a review: the agent's own credential plugin may raise in
    auth_headers(), and at shutdown the session closes under a request. Each is a counted
    503 the client retries, logged once with its cause, not a 500 with a traceback."""
    async with guarded_app(kubeconfig) as guarded:
        session = guarded.reviews.api
        assert session is not None
        connection = session.connection
        session.connection = replace(connection, credentials=FailingPlugin())
        for _ in range(2):
            status, _, headers = await guarded.get("/metrics", "prom-token")
            assert (status, headers["Retry-After"]) == (503, "5")
        [warning] = [r for r in caplog.records if r.name == "tailwatch.auth"]
        assert "CredentialPluginError: exec: the plugin" in warning.getMessage()
        assert warning.exc_info is not None and warning.exc_info[0] is CredentialPluginError
        session.connection = connection
        assert (await guarded.get("/metrics", "prom-token"))[0] == 200

        # A session already closed (the agent stopping while a scrape waits for a review).
        async with ApiSession(load_connection(str(kubeconfig)), WatchTiming()) as closed:
            pass
        guarded.reviews.api = closed
        assert (await guarded.get("/metrics", "grafana-token"))[0] == 503
        assert guarded.metrics.dropped == {"auth_unavailable": 3}
        assert tokens.reviews.token_reviews == 1


@dataclass
class Gated:
    """The agent's API session, with a gate that holds the reviews of some tokens: a flood of
    invented tokens whose reviews take as long as the test wants."""

    session: ApiSession
    held: Callable[[str], bool]
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def post(
        self, path: str, body: Mapping[str, Any], client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        token = body.get("spec", {}).get("token")
        if isinstance(token, str) and self.held(token):
            self.waiting += 1
            await self.gate.wait()
        return await self.session.post(path, body, client_timeout)


async def test_a_flood_of_unknown_tokens_does_not_starve_a_known_client(
    tokens: ApiServer, kubeconfig: Path
) -> None:
    """Invented tokens hold every shared review slot (their reviews stall) when Prometheus's
    cached answers expire: its token, authenticated before, is reviewed again on slots of
    its own, and its scrape is served, not left to time out as 503."""
    async with guarded_app(kubeconfig) as guarded:
        reviews = guarded.reviews
        assert reviews.api is not None
        gated = Gated(reviews.api, lambda token: token.startswith("bogus-"))
        reviews.api = gated  # type: ignore[assignment]
        assert (await guarded.get("/metrics", "prom-token"))[0] == 200
        guarded.clock.now += 61  # both of Prometheus's answers expired
        flood = [
            asyncio.create_task(guarded.get("/metrics", f"bogus-{i}"))
            for i in range(MAX_IN_FLIGHT + 8)
        ]
        await wait_for(lambda: gated.waiting == MAX_IN_FLIGHT, "every shared slot taken")
        status, text, _ = await guarded.get("/metrics", "prom-token")
        assert status == 200, text
        assert (tokens.reviews.token_reviews, tokens.reviews.access_reviews) == (2, 2)
        gated.gate.set()
        answers = await asyncio.gather(*flood)
        assert {status for status, _, _ in answers} == {401}
        # A token never authenticated is not known: the flood stayed on the shared slots.
        assert reviews.peak_in_flight <= MAX_IN_FLIGHT + 1
        assert guarded.metrics.dropped == {"auth_unauthenticated": MAX_IN_FLIGHT + 8}
