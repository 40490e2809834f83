"""`--auth=kubernetes`: who may read /metrics and the JSON API (the kube-rbac-proxy model).

A request needs `Authorization: Bearer <token>`. The API server says whose token it is (a
TokenReview) and whether that user may `get` the URL (a SubjectAccessReview with
`nonResourceAttributes`), so access is granted with ordinary RBAC, e.g. a ClusterRole with
`nonResourceURLs: ["/metrics"]`, `verbs: ["get"]`, bound to Prometheus's service account.

| request | answer | tailwatch_dropped_total reason |
| --- | --- | --- |
| /healthz, /readyz (the kubelet's probes) | served, no token needed | |
| no bearer token | 401, `WWW-Authenticate: Bearer realm="tailwatch"` | auth_unauthenticated |
| a token the TokenReview rejects | 401, `error="invalid_token"` | auth_unauthenticated |
| authenticated, SubjectAccessReview not allowed | 403 | auth_forbidden |
| the API server cannot answer either review | 503, `Retry-After` | auth_unavailable |
| authenticated and allowed | the handler | |

The path reviewed is the one of the route that will serve the request (so an encoded or
otherwise odd spelling of a URL is reviewed as the URL actually served). A path that no
route serves still needs an authenticated token, then answers 404 (or 405) without a
SubjectAccessReview: there is nothing there to authorize, and an authenticated client cannot
make the agent send the API server one review per invented URL. Answers are cached (see
`exporter.kube.review`); an unavailable API server is logged once per outage there.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from exporter.httpserver import Handler, Request, Response, text_response
from exporter.kube.review import ReviewClient, ReviewUnavailable

#: Served to anyone: the kubelet probes them without a token.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
REALM = "tailwatch"
VERB = "get"  # every route the agent guards is read-only

# tailwatch_dropped_total reasons.
UNAUTHENTICATED = "auth_unauthenticated"
FORBIDDEN = "auth_forbidden"
UNAVAILABLE = "auth_unavailable"

RETRY_AFTER = "5"  # seconds, on a 503: the API server may answer again soon


def bearer_token(request: Request) -> str | None:
    """The request's bearer token, or None. The scheme is case-insensitive (RFC 7235), as in
    the API server's own bearer token authenticator."""
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    token = credential.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _unauthorized(invalid_token: bool) -> Response:
    challenge = f'Bearer realm="{REALM}"'
    if invalid_token:
        challenge += ', error="invalid_token"'
    return text_response("Unauthorized\n", 401, {"WWW-Authenticate": challenge})


def _unavailable() -> Response:
    return text_response(
        "Service Unavailable: the API server could not review the bearer token\n",
        503,
        {"Retry-After": RETRY_AFTER},
    )


class KubernetesAuth:
    """The middleware of the agent's routes (an instance is one: pass it to
    `build_app(authorize=...)`). `count(reason)` is called once per refused request
    (AgentMetrics.count_dropped)."""

    def __init__(
        self,
        reviews: ReviewClient,
        count: Callable[[str], object] = lambda reason: None,
        open_paths: Collection[str] = OPEN_PATHS,
    ) -> None:
        self.reviews = reviews
        self.count = count
        self.open_paths = frozenset(open_paths)

    async def __call__(self, request: Request, handler: Handler) -> Response:
        # The path of the route that serves the request (None: none does); the router
        # matches the percent-decoded path.
        served = request.route
        if served in self.open_paths:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            self.count(UNAUTHENTICATED)
            return _unauthorized(invalid_token=False)
        try:
            authentication = await self.reviews.authenticate(token)
        except ReviewUnavailable:
            self.count(UNAVAILABLE)
            return _unavailable()
        user = authentication.user
        if user is None:
            self.count(UNAUTHENTICATED)
            return _unauthorized(invalid_token=True)
        if served is None:
            return await handler(request)  # 404 or 405: nothing to authorize
        try:
            authorization = await self.reviews.authorize(user, served, VERB)
        except ReviewUnavailable:
            self.count(UNAVAILABLE)
            return _unavailable()
        if not authorization.allowed:
            self.count(FORBIDDEN)
            return text_response(f'Forbidden: user "{user.username}" cannot {VERB} {served}\n', 403)
        return await handler(request)
