"""The simulator's TokenReview and SubjectAccessReview: the shapes, codes and RBAC matching of
the real API server, over real HTTP, and read back by the official client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes import client, config

from exporter.simulator import ApiServer, ThreadedApiServer

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
PROMETHEUS = "system:serviceaccount:monitoring:prometheus"


def token_review(token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}


def access_review(
    path: str, user: str = PROMETHEUS, groups: tuple[str, ...] = (), verb: str = "get"
) -> dict[str, Any]:
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "nonResourceAttributes": {"path": path, "verb": verb},
            "user": user,
            "groups": list(groups),
        },
    }


async def post(http: aiohttp.ClientSession, path: str, body: Any) -> tuple[int, Any]:
    async with http.post(path, json=body) as resp:
        return resp.status, await resp.json()


async def test_a_known_token_is_authenticated_with_its_user(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    server.reviews.add_service_account_token("prom-token", "monitoring", "prometheus")
    status, body = await post(http, TOKEN_REVIEWS, token_review("prom-token"))
    assert status == 201
    assert body["apiVersion"] == "authentication.k8s.io/v1"
    assert body["kind"] == "TokenReview"
    assert body["metadata"] == {"creationTimestamp": None}
    assert body["spec"] == {"token": "prom-token"}  # echoed, as the real server does
    user = body["status"]["user"]
    assert body["status"]["authenticated"] is True
    assert user["username"] == PROMETHEUS
    assert user["uid"]
    assert user["groups"] == [
        "system:serviceaccounts",
        "system:serviceaccounts:monitoring",
        "system:authenticated",
    ]
    assert body["status"]["audiences"] == list(server.reviews.audiences)
    assert server.reviews.token_reviews == 1
    [record] = server.requests.matching("create", "tokenreviews")
    assert record.status == 201


async def test_an_unknown_token_is_not_authenticated(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, TOKEN_REVIEWS, token_review("forged"))
    assert status == 201
    # `authenticated: false` is omitted, `user` is an empty object, `error` says why.
    assert "authenticated" not in body["status"]
    assert body["status"]["user"] == {}
    assert "invalid bearer token" in body["status"]["error"]


async def test_a_token_for_another_audience_is_not_authenticated(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    server.reviews.add_token("vault-token", "alice", audiences=["vault"])
    _, default = await post(http, TOKEN_REVIEWS, token_review("vault-token"))
    assert "authenticated" not in default["status"]
    assert "audiences" in default["status"]["error"]
    _, named = await post(http, TOKEN_REVIEWS, token_review("vault-token", ["vault"]))
    assert named["status"]["authenticated"] is True
    assert named["status"]["audiences"] == ["vault"]


async def test_a_review_without_token_or_json_is_a_bad_request(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, TOKEN_REVIEWS, token_review(""))
    assert (status, body["kind"], body["reason"]) == (400, "Status", "BadRequest")
    async with http.post(TOKEN_REVIEWS, data=b"{not json") as resp:
        assert resp.status == 400
    wrong_kind = {**token_review("x"), "kind": "SubjectAccessReview"}
    status, _ = await post(http, TOKEN_REVIEWS, wrong_kind)
    assert status == 400
    async with http.get(TOKEN_REVIEWS) as resp:
        assert resp.status == 405
    assert server.reviews.token_reviews == 0


async def test_the_caller_must_be_authenticated_and_allowed(server: ApiServer) -> None:
    server.reviews.add_token("prom-token", PROMETHEUS)
    async with aiohttp.ClientSession(base_url=server.url) as anonymous:
        status, body = await post(anonymous, TOKEN_REVIEWS, token_review("prom-token"))
    assert (status, body["reason"]) == (401, "Unauthorized")
    async with aiohttp.ClientSession(
        base_url=server.url, headers={"Authorization": f"Bearer {server.token}"}
    ) as http:
        server.faults.forbid("tokenreviews", ["create"])
        status, body = await post(http, TOKEN_REVIEWS, token_review("prom-token"))
        assert status == 403
        assert body["message"] == (
            'tokenreviews.authentication.k8s.io is forbidden: User "tailwatch" cannot create '
            'resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope'
        )
        server.faults.permit("tokenreviews")
        server.faults.fail_next(1, 503, "subjectaccessreviews", verbs=["create"])
        status, _ = await post(http, ACCESS_REVIEWS, access_review("/metrics"))
        assert status == 503
        status, _ = await post(http, ACCESS_REVIEWS, access_review("/metrics"))
        assert status == 201
    assert server.reviews.token_reviews == 0
    assert server.reviews.access_reviews == 1


async def test_access_follows_the_rules_for_non_resource_urls(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    reviews = server.reviews
    reviews.allow(user=PROMETHEUS, paths=["/metrics"], name="tailwatch-metrics")
    reviews.allow(group="dashboards", paths=["/api/v1/*"])
    reviews.allow(user="admin", paths=["*"], verbs=["*"])

    async def decide(path: str, user: str = PROMETHEUS, *groups: str, verb: str = "get") -> Any:
        status, body = await post(http, ACCESS_REVIEWS, access_review(path, user, groups, verb))
        assert status == 201
        assert body["kind"] == "SubjectAccessReview"
        assert body["apiVersion"] == "authorization.k8s.io/v1"
        assert body["spec"]["nonResourceAttributes"] == {"path": path, "verb": verb}
        return body["status"]

    allowed = await decide("/metrics")
    assert allowed == {
        "allowed": True,
        "reason": 'RBAC: allowed by ClusterRoleBinding "tailwatch-metrics" of ClusterRole '
        f'"tailwatch-metrics" to User "{PROMETHEUS}"',
    }
    assert await decide("/api/v1/targets") == {"allowed": False}  # no rule: no opinion
    assert await decide("/metrics", verb="create") == {"allowed": False}
    assert await decide("/metricsx") == {"allowed": False}  # exact unless it ends with *
    by_group = await decide("/api/v1/episodes", "grafana", "dashboards")
    assert by_group["allowed"] is True
    assert by_group["reason"].endswith('to Group "dashboards"')
    assert (await decide("/api/v1", "grafana", "dashboards"))["allowed"] is False
    assert (await decide("/anything", "admin", verb="delete"))["allowed"] is True
    # A group rule applies to a review that names only groups.
    assert (await decide("/api/v1/targets", "", "dashboards"))["allowed"] is True
    asked = [(a.user, a.path, a.verb, a.allowed) for a in reviews.asked]
    assert asked[0] == (PROMETHEUS, "/metrics", "get", True)
    assert reviews.access_reviews == len(asked) == 8


async def test_a_revoked_rule_no_longer_allows(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    rule = server.reviews.allow(user=PROMETHEUS, paths=["/metrics"])
    _, body = await post(http, ACCESS_REVIEWS, access_review("/metrics"))
    assert body["status"]["allowed"] is True
    server.reviews.revoke(rule)
    _, body = await post(http, ACCESS_REVIEWS, access_review("/metrics"))
    assert body["status"] == {"allowed": False}


async def test_an_invalid_access_review_is_refused(
    server: ApiServer, http: aiohttp.ClientSession
) -> None:
    both = access_review("/metrics")
    both["spec"]["resourceAttributes"] = {"verb": "get", "resource": "pods"}
    status, body = await post(http, ACCESS_REVIEWS, both)
    assert (status, body["reason"]) == (422, "Invalid")
    assert "exactly one of nonResourceAttributes or resourceAttributes" in body["message"]
    neither = access_review("/metrics")
    del neither["spec"]["nonResourceAttributes"]
    status, _ = await post(http, ACCESS_REVIEWS, neither)
    assert status == 422
    nobody = access_review("/metrics", user="")
    status, body = await post(http, ACCESS_REVIEWS, nobody)
    assert status == 422
    assert "at least one of user or group must be specified" in body["message"]
    assert server.reviews.access_reviews == 0


def test_the_allow_rule_names_one_subject() -> None:
    server = ApiServer()
    with pytest.raises(ValueError, match="exactly one"):
        server.reviews.allow(user="a", group="b", paths=["/metrics"])
    with pytest.raises(ValueError, match="exactly one"):
        server.reviews.allow(paths=["/metrics"])


@pytest.fixture
def sim() -> Iterator[ThreadedApiServer]:
    with ThreadedApiServer(token="sim-token") as server:
        yield server


def test_the_official_client_reads_the_answers(sim: ThreadedApiServer, tmp_path: Path) -> None:
    sim.server.reviews.add_service_account_token("prom-token", "monitoring", "prometheus")
    sim.server.reviews.allow(group="system:serviceaccounts:monitoring", paths=["/metrics"])
    cfg = client.Configuration()
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        review = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token="prom-token"))
        )
        assert review.status.authenticated is True
        user = review.status.user
        assert user.username == PROMETHEUS
        access = client.AuthorizationV1Api(api).create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user.username,
                    groups=user.groups,
                    uid=user.uid,
                    non_resource_attributes=client.V1NonResourceAttributes(
                        path="/metrics", verb="get"
                    ),
                )
            )
        )
        assert access.status.allowed is True
        assert 'Group "system:serviceaccounts:monitoring"' in access.status.reason
        forged = client.AuthenticationV1Api(api).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token="forged"))
        )
        assert not forged.status.authenticated
