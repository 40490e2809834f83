"""TokenReview and SubjectAccessReview, answered as the real API server answers them, for the
agent's `--auth=kubernetes` (exporter/auth.py).

A test says which tokens exist and which users may GET which URLs:

```python
api.reviews.add_token("prom-token", "system:serviceaccount:monitoring:prometheus",
                      groups=["system:serviceaccounts", "system:serviceaccounts:monitoring"])
api.reviews.allow(group="system:serviceaccounts:monitoring", paths=["/metrics", "/api/v1/*"])
```

What is copied from the real server:

- `POST /apis/authentication.k8s.io/v1/tokenreviews` and
  `POST /apis/authorization.k8s.io/v1/subjectaccessreviews` answer 201 with the object sent,
  `metadata.creationTimestamp: null`, and its `status` filled in. Other methods: 405.
- The caller is authenticated first, like every request (the `ApiServer`'s `token`), and may
  be refused with 403 (`faults.forbid("tokenreviews", ["create"])`) or fail
  (`faults.fail_next(1, 503, "subjectaccessreviews", verbs=["create"])`).
- A TokenReview without `spec.token` is 400. A known token's status has `authenticated: true`,
  `user` (username, uid, groups with `system:authenticated` added, extra) and `audiences`
  (the server's, when the review names none); an unknown one has no `authenticated` (false
  is omitted) and `error`. A token whose audiences miss the review's is not authenticated.
- A SubjectAccessReview needs exactly one of `resourceAttributes` and
  `nonResourceAttributes`, and a user or a group (else 422 Invalid). `status.allowed` is
  always present; RBAC allows with a reason naming the binding and says nothing when no rule
  matches (`allowed: false`, no reason). Non-resource URLs match as RBAC matches them: a rule
  path equal to the request's, or ending in `*` and a prefix of it (`*` alone matches all);
  verbs equal, or `*`. Resource attributes are never allowed: no resource rules are simulated.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exporter.simulator.faults import Faults, RequestRecord
from exporter.simulator.status import ApiError, bad_request, unauthorized

TOKEN_REVIEWS = "tokenreviews"
ACCESS_REVIEWS = "subjectaccessreviews"
_PATHS = {
    "/apis/authentication.k8s.io/v1/tokenreviews": TOKEN_REVIEWS,
    "/apis/authorization.k8s.io/v1/subjectaccessreviews": ACCESS_REVIEWS,
}
_GROUPS = {TOKEN_REVIEWS: "authentication.k8s.io", ACCESS_REVIEWS: "authorization.k8s.io"}
_KINDS = {TOKEN_REVIEWS: "TokenReview", ACCESS_REVIEWS: "SubjectAccessReview"}

#: The audience of the simulated API server (a kubeadm cluster's default issuer and audience).
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
AUTHENTICATED_GROUP = "system:authenticated"


@dataclass(frozen=True)
class KnownToken:
    username: str
    uid: str
    groups: tuple[str, ...]
    extra: Mapping[str, tuple[str, ...]]
    audiences: tuple[str, ...]

    def user_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"username": self.username, "uid": self.uid}
        info["groups"] = list(self.groups)
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


@dataclass(frozen=True)
class NonResourceRule:
    """A ClusterRole rule with `nonResourceURLs`, bound to one user or one group."""

    name: str  # of the ClusterRole and its ClusterRoleBinding
    paths: tuple[str, ...]
    verbs: tuple[str, ...]
    user: str | None = None
    group: str | None = None

    def subject(self, username: str, groups: Iterable[str]) -> str | None:
        """How the binding names the subject (`User "x"`, `Group "g"`), if it applies."""
        if self.user is not None and self.user == username:
            return f'User "{self.user}"'
        if self.group is not None and self.group in groups:
            return f'Group "{self.group}"'
        return None

    def matches(self, path: str, verb: str) -> bool:
        verb_ok = "*" in self.verbs or verb in self.verbs
        return verb_ok and any(_url_matches(rule, path) for rule in self.paths)


def _url_matches(rule: str, path: str) -> bool:
    """RBAC's NonResourceURLMatches."""
    if rule in ("*", path):
        return True
    return rule.endswith("*") and path.startswith(rule[:-1])


@dataclass
class AccessAsked:
    """One SubjectAccessReview received, for tests."""

    user: str
    groups: tuple[str, ...]
    path: str
    verb: str
    allowed: bool
    extra: Mapping[str, Any] = field(default_factory=dict)
    uid: str = ""


class Reviews:
    """The tokens the simulated API server knows and its RBAC rules for non-resource URLs;
    thread-safe. `token_reviews` and `access_reviews` count the reviews answered."""

    def __init__(self, audiences: Iterable[str] = (API_AUDIENCE,)) -> None:
        self.audiences = tuple(audiences)
        self._lock = threading.Lock()
        self._tokens: dict[str, KnownToken] = {}
        self._rules: list[NonResourceRule] = []
        self.token_reviews = 0
        self.access_reviews = 0
        self.asked: list[AccessAsked] = []

    # ---- configuration (tests) -----------------------------------------------------------

    def add_token(
        self,
        token: str,
        username: str,
        groups: Iterable[str] = (),
        *,
        uid: str | None = None,
        extra: Mapping[str, Iterable[str]] | None = None,
        audiences: Iterable[str] | None = None,
    ) -> None:
        """`token` authenticates as `username` (uid derived from the name unless given), in
        `groups` plus system:authenticated. `audiences`: the token's (default: the server's)."""
        all_groups = list(groups)
        if AUTHENTICATED_GROUP not in all_groups:
            all_groups.append(AUTHENTICATED_GROUP)
        known = KnownToken(
            username=username,
            uid=uid if uid is not None else str(uuid.uuid5(uuid.NAMESPACE_OID, username)),
            groups=tuple(all_groups),
            extra={k: tuple(v) for k, v in (extra or {}).items()},
            audiences=tuple(audiences) if audiences is not None else self.audiences,
        )
        with self._lock:
            self._tokens[token] = known

    def add_service_account_token(self, token: str, namespace: str, name: str) -> str:
        """A service account's token, with the user and groups the real server gives it;
        returns the username."""
        username = f"system:serviceaccount:{namespace}:{name}"
        groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"]
        self.add_token(token, username, groups)
        return username

    def remove_token(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def allow(
        self,
        *,
        user: str | None = None,
        group: str | None = None,
        paths: Iterable[str],
        verbs: Iterable[str] = ("get",),
        name: str | None = None,
    ) -> NonResourceRule:
        """Bind a rule allowing `verbs` on the non-resource URLs `paths` (RBAC patterns) to
        `user` or `group` (exactly one). Returns it, for `revoke`."""
        if (user is None) == (group is None):
            raise ValueError("allow: give exactly one of user and group")
        with self._lock:
            rule = NonResourceRule(
                name=name or f"tailwatch-sim-{len(self._rules) + 1}",
                paths=tuple(paths),
                verbs=tuple(verbs),
                user=user,
                group=group,
            )
            self._rules.append(rule)
        return rule

    def revoke(self, rule: NonResourceRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    # ---- decisions -----------------------------------------------------------------------

    def authenticate(
        self, token: str, audiences: Iterable[str] = ()
    ) -> tuple[KnownToken | None, tuple[str, ...], str]:
        """(the token's user or None, the audiences it is valid for, the error)."""
        with self._lock:
            known = self._tokens.get(token)
        if known is None:
            return None, (), "[invalid bearer token, token not known to the simulator]"
        wanted = tuple(audiences) or self.audiences
        common = tuple(a for a in wanted if a in known.audiences)
        if not common:
            return (
                None,
                (),
                (
                    f"[invalid bearer token, token audiences {json.dumps(list(known.audiences))} "
                    f"is invalid for the target audiences {json.dumps(list(wanted))}]"
                ),
            )
        return known, common, ""

    def decide(self, username: str, groups: Iterable[str], path: str, verb: str) -> str | None:
        """The reason a rule allows it (RBAC's wording), or None."""
        groups = tuple(groups)
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            subject = rule.subject(username, groups)
            if subject is not None and rule.matches(path, verb):
                return (
                    f'RBAC: allowed by ClusterRoleBinding "{rule.name}" of ClusterRole '
                    f'"{rule.name}" to {subject}'
                )
        return None

    # ---- serving -------------------------------------------------------------------------

    @staticmethod
    def route(path: str) -> str | None:
        """The review resource `path` names (tokenreviews, subjectaccessreviews), or None."""
        return _PATHS.get(path.rstrip("/"))

    async def serve(
        self,
        resource: str,
        request: web.Request,
        record: RequestRecord,
        faults: Faults,
        caller: str,
    ) -> web.Response:
        """Answer a request to a review resource; `caller` names the client in a 403."""
        record.resource = resource
        if request.method != "POST":
            raise ApiError(405, "the server does not allow this method on the requested resource")
        record.verb = "create"
        group = _GROUPS[resource]
        if faults.is_forbidden(resource, "create"):
            raise ApiError(
                403,
                f'{resource}.{group} is forbidden: User "{caller}" cannot create resource '
                f'"{resource}" in API group "{group}" at the cluster scope',
                details={"group": group, "kind": resource},
            )
        failure = faults.take_failure(resource, "create")
        if failure is not None:
            if failure.status == 401:
                raise unauthorized()
            raise ApiError(failure.status, failure.message or "injected by the simulator")
        body = await self._body(request, resource)
        if resource == TOKEN_REVIEWS:
            answer = self._token_review(body)
        else:
            answer = self._access_review(body)
        return web.Response(
            body=json.dumps(answer, separators=(",", ":")).encode(),
            status=201,
            content_type="application/json",
        )

    @staticmethod
    async def _body(request: web.Request, resource: str) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError as exc:
            raise bad_request(f"error decoding request body: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request(f"the body of a {_KINDS[resource]} must be a JSON object")
        api_version = f"{_GROUPS[resource]}/v1"
        if body.get("apiVersion", api_version) != api_version:
            raise bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the "
                f"expected API version ({api_version})"
            )
        if body.get("kind", _KINDS[resource]) != _KINDS[resource]:
            raise bad_request(
                f"the kind in the data ({body.get('kind')}) does not match the expected kind "
                f"({_KINDS[resource]})"
            )
        if not isinstance(body.get("spec"), dict):
            body["spec"] = {}
        body["apiVersion"], body["kind"] = api_version, _KINDS[resource]
        meta = body.get("metadata")
        body["metadata"] = {**(meta if isinstance(meta, dict) else {}), "creationTimestamp": None}
        return body

    def _token_review(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body["spec"]
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("token is required for TokenReview in authentication")
        audiences = spec.get("audiences") or []
        if not isinstance(audiences, list):
            raise bad_request("spec.audiences must be a list of strings")
        known, valid, error = self.authenticate(token, (str(a) for a in audiences))
        with self._lock:
            self.token_reviews += 1
        status: dict[str, Any]
        if known is None:
            status = {"user": {}, "error": error}
        else:
            status = {"authenticated": True, "user": known.user_info(), "audiences": list(valid)}
        return {**body, "status": status}

    def _access_review(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body["spec"]
        non_resource = spec.get("nonResourceAttributes")
        resource = spec.get("resourceAttributes")
        if (non_resource is None) == (resource is None):
            raise _invalid(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
        user = spec.get("user") or ""
        groups = spec.get("groups") or []
        if not isinstance(user, str) or not isinstance(groups, list):
            raise bad_request("spec.user must be a string and spec.groups a list of strings")
        if not user and not groups:
            raise _invalid("spec.user", "at least one of user or group must be specified")
        reason = None
        path = verb = ""
        if isinstance(non_resource, dict):
            path, verb = str(non_resource.get("path") or ""), str(non_resource.get("verb") or "")
            reason = self.decide(user, (str(g) for g in groups), path, verb)
        status: dict[str, Any] = {"allowed": reason is not None}
        if reason is not None:
            status["reason"] = reason
        extra = spec.get("extra")
        with self._lock:
            self.access_reviews += 1
            self.asked.append(
                AccessAsked(
                    user=user,
                    groups=tuple(str(g) for g in groups),
                    path=path,
                    verb=verb,
                    allowed=reason is not None,
                    extra=extra if isinstance(extra, dict) else {},
                    uid=str(spec.get("uid") or ""),
                )
            )
        return {**body, "status": status}


def _invalid(field_path: str, detail: str) -> ApiError:
    return ApiError(
        422,
        f'SubjectAccessReview.authorization.k8s.io "" is invalid: {field_path}: Invalid value: '
        f'"": {detail}',
        details={"group": "authorization.k8s.io", "kind": "SubjectAccessReview"},
    )
