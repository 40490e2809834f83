"""A Kubernetes API server on loopback, speaking the real list/watch protocol over HTTP(S).

`ApiServer` runs on the caller's event loop; `ThreadedApiServer` runs one in a background
thread for synchronous tests (the official client is synchronous). Both are pointed at through
an ordinary kubeconfig (`write_kubeconfig`). Objects live in a `Store`; tests inject faults
through `faults` and inspect every request through `requests`.

Every list and watch is recorded with where a real API server (without the
ConsistentListFromCache feature) serves it (`list_source`): lists at `resourceVersion=0`, or at
a version with `NotOlderThan` (or without limit and match), and every watch come from the watch
cache; consistent lists (no resourceVersion), `Exact` ones, legacy exact ones (a version and a
limit) and continuations come from storage. As the real cache does, the simulated one answers
in one page whatever the `limit`, and may lag (`faults.cache_lag`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import inspect
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

from aiohttp import web

from exporter.simulator.faults import Faults, InjectedFailure, OpenWatch, RequestLog, RequestRecord
from exporter.simulator.kubeconfig import kubeconfig_dict, write_kubeconfig
from exporter.simulator.patching import apply_patch
from exporter.simulator.proxy import PROXY_RESOURCE, PodProxy, proxy_path, split_scheme_name_port
from exporter.simulator.resources import RESOURCES, Object, ResourceType
from exporter.simulator.reviews import Reviews
from exporter.simulator.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from exporter.simulator.status import (
    CONTINUE_EXPIRED,
    LIST_EXPIRED,
    ApiError,
    bad_request,
    invalid,
    too_large_resource_version,
    too_old_resource_version,
    unauthorized,
)
from exporter.simulator.store import HistoryCompacted, HistoryEvent, Store, Subscription
from exporter.simulator.tls import ServerTls, client_certificate_user
from exporter.simulator.watch import Selection, Waker, bookmark, encode_event, watch_event

log = logging.getLogger("tailwatch.simulator")

P = ParamSpec("P")
T = TypeVar("T")

KUBERNETES_VERSION = ("1", "31")
# strconv.ParseBool, which the real server uses for boolean query parameters.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

# Messages for `fail_next` when the test gives none, in the real server's words.
_FAILURE_MESSAGES = {
    401: "Unauthorized",
    403: "forbidden",
    404: "the server could not find the requested resource",
    410: LIST_EXPIRED,
    429: "the server has received too many requests and has asked us to try again later",
    500: "Internal error occurred: injected by the simulator",
    503: "the server is currently unable to handle the request",
    504: "the server was unable to return a response in the time allotted, but may still be "
    "processing the request",
}


def encode_continue(resource_version: int, start: str) -> str:
    """A continue token in the real server's format: base64 of {"v","rv","start"}."""
    raw = json.dumps(
        {"v": "meta.k8s.io/v1", "rv": resource_version, "start": start}, separators=(",", ":")
    )
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, first key of the next page); rv -1 means "at the latest version"."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from None
    if (
        not isinstance(data, dict)
        or data.get("v") != "meta.k8s.io/v1"
        or not isinstance(data.get("rv"), int)
        or not isinstance(data.get("start"), str)
    ):
        raise bad_request("continue key is not valid: incorrect encoded start resourceVersion")
    return data["rv"], data["start"]


def _bool_param(params: Mapping[str, str], name: str) -> bool | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise bad_request(f'{name}: Invalid value: "{value}": strconv.ParseBool: parsing "{value}"')


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f'{name}: Invalid value: "{value}": not an integer') from None


def _resource_version(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        rv = -1
    if rv < 0:
        raise bad_request(f'resourceVersion: Invalid value: "{value}": invalid resource version')
    return rv


def list_source(params: Mapping[str, str]) -> str:
    """Where a real API server without ConsistentListFromCache serves a list: "cache" (its
    watch cache) or "storage" (etcd). The request is assumed valid."""
    if params.get("continue"):
        return "storage"  # the watch cache keeps no continuation
    value = params.get("resourceVersion", "")
    match = params.get("resourceVersionMatch", "")
    if value == "":
        return "storage"  # a consistent read
    if match == "Exact":
        return "storage"
    if match == "NotOlderThan" or value == "0":
        return "cache"
    try:
        limit = int(params.get("limit") or 0)
    except ValueError:
        limit = 0
    return "storage" if limit > 0 else "cache"  # with a limit: the legacy exact read


def _json_response(body: object, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def _status_response(error: ApiError) -> web.Response:
    response = _json_response(error.status(), error.code)
    if error.code in (429, 503):
        response.headers["Retry-After"] = "1"
    return response


def _list_item(obj: Object) -> Object:
    # Items of a typed list carry no kind/apiVersion on the real server; single objects and
    # watch event objects do.
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


async def _send_event(
    response: web.StreamResponse, record: RequestRecord, event_type: str, obj: Mapping[str, Any]
) -> None:
    """Write one watch event, counting it and its bytes in the request's record."""
    line = encode_event(event_type, obj)
    record.bytes_sent += len(line)
    record.events_sent[event_type] = record.events_sent.get(event_type, 0) + 1
    await response.write(line)


def _check(rtype: ResourceType | None, new: Object, old: Object | None) -> None:
    """The registry's validation of a write (`ResourceType.check`): 422 Invalid."""
    errors = rtype.check(new, old) if rtype is not None and rtype.check is not None else []
    if errors:
        name = str((new.get("metadata") or {}).get("name") or "")
        raise invalid(rtype.kind if rtype is not None else "", name, ", ".join(errors))


@dataclass(frozen=True)
class _Route:
    """What a request path names: a discovery document, a resource, or nothing served."""

    rtype: ResourceType | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    verb: str = ""  # "" for non-resource paths; "-" for a method the path does not allow
    document: Callable[[], object] | None = None

    @property
    def resource(self) -> str:
        """The RBAC resource: the plural, or `pods/proxy` for the proxy subresource."""
        if self.rtype is None:
            return ""
        return PROXY_RESOURCE if self.subresource == "proxy" else self.rtype.plural


class ApiServer:
    """The simulated API server; `async with ApiServer(...) as server:` serves on loopback."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        bookmark_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        history_limit: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        certificate_authority: bytes | None = None,
        user: str = "tailwatch",
        tls: ServerTls | None = None,
        tokens: Iterable[str] = (),
    ) -> None:
        """`token`: require `Authorization: Bearer <token>` (else 401); `tokens` are accepted
        too, and `accepted_tokens` may be changed while serving (a rotation). `bookmark_interval`:
        seconds between BOOKMARK events on watches that allow them. `clock` stamps objects.
        `ssl_context` or `tls`: serve https (`tls` may verify client certificates, which then
        authenticate a request like a token); `certificate_authority` (PEM of the CA that signed
        its certificate) goes into written kubeconfigs. `user` names the client in 403 messages."""
        self.host = host
        self.port = port
        self.token = token
        self.accepted_tokens: set[str] = {*tokens, *((token,) if token is not None else ())}
        self.tls = tls
        if tls is not None:
            ssl_context = ssl_context or tls.server_context()
        # Once any credential is configured every request needs one, even if a test empties
        # `accepted_tokens`.
        self._require_auth = bool(self.accepted_tokens) or bool(tls and tls.client_ca_file)
        self.client_users: set[str] = set()  # users authenticated by a client certificate
        self.bookmark_interval = bookmark_interval
        self.store = store if store is not None else Store(clock=clock, history_limit=history_limit)
        self.ssl_context = ssl_context
        self.certificate_authority = certificate_authority
        self.user = user
        self.faults = Faults()
        self.requests = RequestLog()
        self.reviews = Reviews()  # TokenReviews and SubjectAccessReviews (reviews.py)
        self.pod_proxy = PodProxy()  # the pods/proxy subresource (proxy.py)
        self._runner: web.AppRunner | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        # handler_cancellation: a watch whose client went away ends at once, unsubscribing.
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self.port = int(address[1])
        log.info("simulated API server listening on %s", self.url)

    async def stop(self) -> None:
        """End every open watch cleanly and stop serving."""
        if self._runner is None:
            return
        self.faults.close_all()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        await self.pod_proxy.close()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig(self, namespace: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A kubeconfig dict for this server: its URL, token and CA; `overrides` are
        `kubeconfig_dict`'s arguments (a client certificate, tls-server-name, another CA)."""
        arguments: dict[str, Any] = {
            "token": self.token,
            "certificate_authority": self.certificate_authority,
            "insecure_skip_tls_verify": bool(
                self.ssl_context and self.certificate_authority is None
            ),
            "namespace": namespace,
        }
        return kubeconfig_dict(self.url, **{**arguments, **overrides})

    def write_kubeconfig(
        self, path: str | os.PathLike[str], namespace: str | None = None, **overrides: Any
    ) -> Path:
        """Write a kubeconfig for this server to `path` (mode 0600); returns the path."""
        return write_kubeconfig(path, self.kubeconfig(namespace, **overrides))

    # ---- routing ---------------------------------------------------------------------------

    def _route(self, method: str, path: str, params: Mapping[str, str]) -> _Route:
        documents: dict[str, Callable[[], object]] = {
            "/version": self._version,
            "/api": self._api_versions,
            "/apis": self._api_groups,
            "/healthz": lambda: "ok",
            "/livez": lambda: "ok",
            "/readyz": lambda: "ok",
        }
        for rtype in RESOURCES.values():
            documents[rtype.base_path] = functools.partial(self._resource_list, rtype)
            if rtype.group:
                documents[f"/apis/{rtype.group}"] = functools.partial(self._api_group, rtype.group)
        stripped = path.rstrip("/") or "/"
        if stripped in documents:
            return _Route(verb="get" if method == "GET" else "-", document=documents[stripped])
        proxied = proxy_path(path)
        if proxied is not None:
            # pods/proxy: GET is forwarded to the pod (proxy.py), as `get` on pods/proxy.
            pod_namespace, pod_id, _ = proxied
            verb = "get" if method == "GET" else "-"
            return _Route(RESOURCES["pods"], pod_namespace, pod_id, "proxy", verb)
        segments = stripped.strip("/").split("/")
        if segments[0] == "api" and len(segments) >= 3:
            base, rest = f"/api/{segments[1]}", segments[2:]
        elif segments[0] == "apis" and len(segments) >= 4:
            base, rest = f"/apis/{segments[1]}/{segments[2]}", segments[3:]
        else:
            return _Route()
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        served = RESOURCES.get(rest[0])
        if served is None or served.base_path != base or len(rest) > 3:
            return _Route()
        rtype = served
        if (namespace is not None) != rtype.namespaced and len(rest) > 1:
            return _Route()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and (sub != "status" or not rtype.has_status):
            return _Route()
        if name is None:
            if method == "GET":
                verb = "watch" if params.get("watch") in _TRUE else "list"
            elif method == "POST" and (namespace is not None or not rtype.namespaced):
                verb = "create"
            else:
                verb = "-"
        else:
            verbs = {"GET": "get", "PUT": "update", "PATCH": "patch"}
            if sub is None:
                verbs["DELETE"] = "delete"
            verb = verbs.get(method, "-")
        return _Route(rtype, namespace, name, sub, verb)

    # ---- request pipeline ------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        params = {key: request.query.getone(key) for key in request.query}
        route = self._route(request.method, request.path, params)
        record = RequestRecord(
            method=request.method,
            path=request.path,
            verb=route.verb if route.verb != "-" else "",
            resource=route.resource,
            namespace=route.namespace,
            name=route.name,
            params=params,
            client=request.headers.get("User-Agent", ""),
        )
        self.requests.add(record)
        response: web.StreamResponse
        try:
            response = await self._serve(request, route, params, record)
        except ApiError as exc:
            response = _status_response(exc)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("simulator failed on %s %s", request.method, request.path_qs)
            response = _status_response(ApiError(500, f"Internal error occurred: {exc}"))
        if not record.status:
            record.status = response.status
        if isinstance(response, web.Response) and isinstance(response.body, bytes):
            record.bytes_sent = len(response.body)  # a watch counted its stream as it went
        return response

    def _authenticated(self, request: web.Request) -> bool:
        """A bearer token in `accepted_tokens`, or a client certificate the handshake
        verified against the client CA."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential.strip() in self.accepted_tokens:
            return True
        transport = request.transport
        user = client_certificate_user(transport.get_extra_info("peercert") if transport else None)
        if user is not None:
            self.client_users.add(user)
        return user is not None

    async def _serve(
        self, request: web.Request, route: _Route, params: dict[str, str], record: RequestRecord
    ) -> web.StreamResponse:
        if self._require_auth and not self._authenticated(request):
            raise unauthorized()
        if self.faults.delay > 0:
            await asyncio.sleep(self.faults.delay)
        if (review := self.reviews.route(request.path)) is not None:
            return await self.reviews.serve(review, request, record, self.faults, self.user)
        if route.document is not None:
            if route.verb == "-":
                raise ApiError(
                    405, "the server does not allow this method on the requested resource"
                )
            document = route.document()
            if isinstance(document, str):
                return web.Response(text=document)
            return _json_response(document)
        rtype = route.rtype
        if rtype is None:
            raise ApiError(404, "the server could not find the requested resource")
        if route.verb == "-":
            raise ApiError(405, "the server does not allow this method on the requested resource")
        if self.faults.is_forbidden(route.resource, route.verb):
            raise self._forbidden(route)
        failure = self.faults.take_failure(route.resource, route.verb)
        if failure is not None:
            error = self._injected(failure, route)
            if failure.in_stream and route.verb == "watch":
                return await self._stream_error(request, record, error)
            raise error
        if route.subresource == "proxy":
            return await self._proxy(request, route)
        if route.verb == "list":
            _bool_param(params, "watch")
            return _json_response(self._list(route, params, record))
        if route.verb == "watch":
            return await self._watch(request, record, route, params)
        assert route.namespace is not None or not rtype.namespaced
        namespace = route.namespace or ""
        if route.verb == "get":
            assert route.name is not None
            return _json_response(self.store.get(rtype.plural, namespace, route.name))
        if route.verb == "create":
            return _json_response(self._create(rtype, namespace, await self._body(request)), 201)
        assert route.name is not None
        if route.verb == "update":
            body = await self._body(request)
            return _json_response(self._update(route, namespace, route.name, body))
        if route.verb == "patch":
            body = await self._body(request)
            content_type = request.headers.get("Content-Type", "")
            return _json_response(self._patch(route, namespace, route.name, content_type, body))
        body = await self._body(request)
        return _json_response(self._delete(rtype, namespace, route.name, params, body))

    def _forbidden(self, route: _Route) -> ApiError:
        assert route.rtype is not None
        rtype = route.rtype
        subject = f'{rtype.plural} "{route.name}"' if route.name else rtype.plural
        scope = (
            f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        )
        details: dict[str, Any] = {}
        if route.name:
            details["name"] = route.name
        if rtype.group:
            details["group"] = rtype.group
        details["kind"] = rtype.plural
        return ApiError(
            403,
            f'{subject} is forbidden: User "{self.user}" cannot {route.verb} resource '
            f'"{route.resource}" in API group "{rtype.group}" {scope}',
            details=details,
        )

    async def _proxy(self, request: web.Request, route: _Route) -> web.StreamResponse:
        """pods/proxy: the pod's answer to the same GET (proxy.py)."""
        assert route.namespace is not None and route.name is not None
        proxied = proxy_path(request.raw_path.split("?", 1)[0])
        assert proxied is not None
        _, name, _ = split_scheme_name_port(route.name)
        pod = self.store.get("pods", route.namespace, name)
        return await self.pod_proxy.forward(
            request, self.pod_proxy.target(pod, route.name), proxied[2]
        )

    def _injected(self, failure: InjectedFailure, route: _Route) -> ApiError:
        if failure.status == 403 and failure.message is None:
            return self._forbidden(route)
        message = failure.message or _FAILURE_MESSAGES.get(failure.status, "injected failure")
        details = {"retryAfterSeconds": 1} if failure.status in (429, 503, 504) else None
        return ApiError(failure.status, message, details=details)

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw) if raw else None
        except ValueError as exc:
            raise bad_request(f"error decoding request body: {exc}") from None

    # ---- list ------------------------------------------------------------------------------

    def _selection(self, route: _Route, params: Mapping[str, str]) -> Selection:
        assert route.rtype is not None
        try:
            labels = parse_label_selector(params.get("labelSelector", ""))
            fields = parse_field_selector(params.get("fieldSelector", ""))
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        for name in sorted(fields.fields):
            if name not in route.rtype.field_labels:
                raise bad_request(f"field label not supported: {name}")
        return Selection(route.rtype, route.namespace, labels, fields)

    def _list_version(self, params: Mapping[str, str], source: str) -> int | None:
        """The version a list without a continue token reads at (None: the latest)."""
        value = params.get("resourceVersion", "")
        match = params.get("resourceVersionMatch", "")
        if match not in ("", "Exact", "NotOlderThan"):
            raise bad_request(f'resourceVersionMatch: Unsupported value: "{match}"')
        if value == "":
            if match:
                raise bad_request(
                    "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                    "resourceVersion is provided"
                )
            return None
        requested = _resource_version(value)
        if requested == 0 and match == "Exact":
            raise bad_request(
                'resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden '
                'for resourceVersion "0"'
            )
        if requested > self.store.resource_version:
            raise too_large_resource_version(requested, self.store.resource_version)
        if source == "storage":
            return requested  # Exact, or a version with a limit and no match (legacy exact)
        return self._cache_version(requested)

    def _cache_version(self, not_older_than: int) -> int | None:
        """The version the watch cache answers at: the latest, or with `faults.cache_lag` that
        many versions behind (never older than compacted history, nor than asked for)."""
        lag = self.faults.cache_lag
        if lag <= 0:
            return None
        store = self.store
        behind = max(store.resource_version - lag, store.compacted_resource_version)
        return max(behind, not_older_than)

    def _list(
        self, route: _Route, params: Mapping[str, str], record: RequestRecord
    ) -> dict[str, Any]:
        """A list page. Pages after the first are read at the first page's version by undoing
        newer history (see `Store.snapshot`), so they are consistent while objects change."""
        selection = self._selection(route, params)
        rtype = selection.rtype
        limit = _int_param(params, "limit") or 0
        token = params.get("continue", "")
        if token:
            if params.get("resourceVersion", ""):
                raise bad_request("specifying resource version is not allowed when using continue")
            at, start = decode_continue(token)
            version: int | None = None if at == -1 else at
            record.served_from = "storage"
        else:
            start = ""
            source = list_source(params)
            try:
                version = self._list_version(params, source)
            except ApiError as exc:
                if exc.code != 400:
                    record.served_from = source  # it reached the data, which refused it
                raise
            record.served_from = source
            if source == "cache":
                limit = 0  # the watch cache ignores the limit: one page with everything
        try:
            items, snapshot_rv = self.store.snapshot(rtype.plural, version)
        except HistoryCompacted:
            if token:
                # Like etcd: offer a token to continue, inconsistently, at the latest version.
                raise ApiError(
                    410, CONTINUE_EXPIRED, continue_token=encode_continue(-1, start)
                ) from None
            raise ApiError(410, LIST_EXPIRED) from None
        selected = [(k, obj) for k, obj in items if k >= start and selection.matches(obj)]
        metadata: dict[str, Any] = {"resourceVersion": str(snapshot_rv)}
        if 0 < limit < len(selected):
            page = selected[:limit]
            metadata["continue"] = encode_continue(snapshot_rv, page[-1][0] + "\x00")
            if not selection.has_selectors:
                # Unknown with selectors, so the real server leaves it out then.
                metadata["remainingItemCount"] = len(selected) - limit
        else:
            page = selected
        return {
            "kind": rtype.list_kind,
            "apiVersion": rtype.api_version,
            "metadata": metadata,
            "items": [_list_item(obj) for _, obj in page],
        }

    # ---- watch -----------------------------------------------------------------------------

    async def _start_stream(
        self, request: web.Request, record: RequestRecord
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"},
        )
        response.enable_chunked_encoding()
        record.status = 200
        await response.prepare(request)
        return response

    async def _stream_error(
        self, request: web.Request, record: RequestRecord, error: ApiError
    ) -> web.StreamResponse:
        response = await self._start_stream(request, record)
        await _send_event(response, record, "ERROR", error.status())
        return response

    async def _watch(
        self, request: web.Request, record: RequestRecord, route: _Route, params: Mapping[str, str]
    ) -> web.StreamResponse:
        selection = self._selection(route, params)
        allow_bookmarks = bool(_bool_param(params, "allowWatchBookmarks"))
        timeout = _int_param(params, "timeoutSeconds") or 0
        send_initial = _bool_param(params, "sendInitialEvents")
        value = params.get("resourceVersion", "")
        match = params.get("resourceVersionMatch", "")
        support = self.faults.watch_list_unsupported
        if send_initial is not None and support == "refuse":
            raise ApiError(
                422,
                'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: '
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is "
                "enabled",
            )
        if support == "ignore":
            send_initial, match = None, ""  # a plain watch, without the end-of-list marker
        if send_initial is not None:
            if match != "NotOlderThan" or not allow_bookmarks:
                raise ApiError(
                    422,
                    "sendInitialEvents requires resourceVersionMatch=NotOlderThan and "
                    "allowWatchBookmarks=true",
                )
        elif match:
            raise ApiError(
                422,
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )
        requested = _resource_version(value) if value else 0
        if requested > self.store.resource_version:
            raise too_large_resource_version(requested, self.store.resource_version)
        record.served_from = "cache"  # every watch that passed the checks, streaming lists too
        # "" and "0" (and sendInitialEvents) start with the current state as ADDED events;
        # with sendInitialEvents and NotOlderThan, that state is at least `requested`.
        since = None if send_initial or requested == 0 else requested

        watch = OpenWatch(selection.rtype.plural, Waker())
        initial: list[HistoryEvent] = []
        subscription: Subscription | None = None
        expired: ApiError | None = None
        try:
            initial, subscription = self.store.watch(selection.rtype.plural, since, watch.waker.set)
        except HistoryCompacted as exc:
            expired = too_old_resource_version(exc.requested, exc.compacted)
        self.faults.register(watch)
        response: web.StreamResponse | None = None
        try:
            response = await self._start_stream(request, record)
            if expired is not None or subscription is None:
                # The real server answers 200 and then a single ERROR event.
                assert expired is not None
                await _send_event(response, record, "ERROR", expired.status())
                return response
            await self._stream(
                request=request,
                response=response,
                record=record,
                watch=watch,
                subscription=subscription,
                initial=initial,
                selection=selection,
                allow_bookmarks=allow_bookmarks,
                timeout_seconds=float(timeout),
                initial_events_end=bool(send_initial),
            )
        except ConnectionError:
            pass  # the client went away
        finally:
            self.faults.unregister(watch)
            if subscription is not None:
                subscription.close()
        # None only if the client left before the headers went out; aiohttp discards it.
        return response if response is not None else web.Response()

    async def _stream(
        self,
        *,
        request: web.Request,
        response: web.StreamResponse,
        record: RequestRecord,
        watch: OpenWatch,
        subscription: Subscription,
        initial: list[HistoryEvent],
        selection: Selection,
        allow_bookmarks: bool,
        timeout_seconds: float,
        initial_events_end: bool,
    ) -> None:
        """Send events in resourceVersion order, bookmarks when due, until the timeout, a fault
        or the server's shutdown ends the stream."""
        loop = asyncio.get_running_loop()
        rtype = selection.rtype
        deadline = loop.time() + timeout_seconds if timeout_seconds > 0 else None
        interval = max(self.bookmark_interval, 0.001)
        next_bookmark = loop.time() + interval if allow_bookmarks else None
        last_rv = subscription.start_version
        pending = list(initial)
        while True:
            watch.waker.clear()
            if watch.dropped:
                # No terminating chunk: the client sees the connection cut mid-stream.
                if request.transport is not None:
                    request.transport.abort()
                return
            if watch.closing:
                return
            stalled = self.faults.stalled
            now = loop.time()
            if not stalled:
                if watch.expired:
                    error = too_old_resource_version(last_rv, self.store.compacted_resource_version)
                    await _send_event(response, record, "ERROR", error.status())
                    return
                while watch.raw_lines:
                    line = watch.raw_lines.popleft() + b"\n"
                    record.bytes_sent += len(line)
                    await response.write(line)
                pending.extend(subscription.take())
                for event in pending:
                    delivered = watch_event(event, selection)
                    if delivered is not None:
                        await _send_event(response, record, *delivered)
                    last_rv = max(last_rv, event.resource_version)
                pending = []
                if initial_events_end:
                    # The state sent so far is at `last_rv`: the initial events end here.
                    initial_events_end = False
                    end = bookmark(rtype, last_rv, initial_events_end=True)
                    await _send_event(response, record, "BOOKMARK", end)
                if next_bookmark is not None and now >= next_bookmark:
                    version = self.store.bookmark_version(subscription)
                    if version is None:
                        continue  # events arrived meanwhile: they go first
                    last_rv = max(last_rv, version)
                    await _send_event(response, record, "BOOKMARK", bookmark(rtype, last_rv))
                    next_bookmark = now + interval
                if deadline is not None and now >= deadline:
                    return
            wait: float | None = None
            if not stalled:
                due = [t - now for t in (deadline, next_bookmark) if t is not None]
                wait = max(min(due), 0.0) if due else None
            await watch.waker.wait(wait)

    # ---- writes ----------------------------------------------------------------------------

    def _create(self, rtype: ResourceType, namespace: str, body: Any) -> Object:
        if not isinstance(body, dict):
            raise bad_request("the body of a create must be a JSON object")
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request"
                )
            meta["namespace"] = namespace
        _check(rtype, body, None)
        return self.store.create(rtype.plural, body)

    def _update(self, route: _Route, namespace: str, name: str, body: Any) -> Object:
        assert route.rtype is not None
        rtype = route.rtype
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise bad_request("the body of an update must be an object with metadata")
        meta = body["metadata"]
        if meta.get("name") != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})"
            )
        if rtype.namespaced and meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        requested = meta.get("resourceVersion")

        def replace(work: Object) -> None:
            new = self._with_subresource_rules(route, work, copy.deepcopy(body))
            new["metadata"]["resourceVersion"] = requested or work["metadata"]["resourceVersion"]
            _check(rtype, new, work)
            work.clear()
            work.update(new)

        return self.store.patch(rtype.plural, namespace, name, replace)

    def _patch(
        self, route: _Route, namespace: str, name: str, content_type: str, body: Any
    ) -> Object:
        assert route.rtype is not None

        def patch(work: Object) -> None:
            current_rv = work["metadata"]["resourceVersion"]
            patched = apply_patch(content_type, copy.deepcopy(work), body)
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata"), dict):
                raise ApiError(422, "the patched object has no metadata")
            new = self._with_subresource_rules(route, work, patched)
            new["metadata"].setdefault("resourceVersion", current_rv)
            _check(route.rtype, new, work)
            work.clear()
            work.update(new)

        return self.store.patch(route.rtype.plural, namespace, name, patch)

    @staticmethod
    def _with_subresource_rules(route: _Route, current: Object, new: Object) -> Object:
        """Writes to the main resource cannot change status, writes to /status only status."""
        assert route.rtype is not None
        if not route.rtype.has_status:
            return new
        if route.subresource == "status":
            result = copy.deepcopy(current)
            result["status"] = new.get("status")
            result["metadata"]["resourceVersion"] = new["metadata"].get("resourceVersion")
            if result["status"] is None:
                del result["status"]
            return result
        if "status" in current:
            new["status"] = copy.deepcopy(current["status"])
        else:
            new.pop("status", None)
        return new

    def _delete(
        self,
        rtype: ResourceType,
        namespace: str,
        name: str,
        params: Mapping[str, str],
        body: Any,
    ) -> Object:
        options = body if isinstance(body, dict) else {}
        grace = _int_param(params, "gracePeriodSeconds")
        if grace is None and isinstance(options.get("gracePeriodSeconds"), int):
            grace = options["gracePeriodSeconds"]
        preconditions = options.get("preconditions") or {}
        if not isinstance(preconditions, dict):
            raise bad_request("preconditions must be an object")
        if rtype.plural == "pods" and grace is None:
            current = self.store.get(rtype.plural, namespace, name)
            if current["metadata"].get("deletionTimestamp"):
                # Already terminating and no shorter grace asked for: the real server changes
                # nothing (only the kubelet's final delete, grace 0, removes the pod).
                return current
        return self.store.delete(
            rtype.plural,
            namespace,
            name,
            grace,
            preconditions={k: str(v) for k, v in preconditions.items() if v is not None},
        )

    # ---- discovery -------------------------------------------------------------------------

    def _version(self) -> dict[str, Any]:
        major, minor = KUBERNETES_VERSION
        return {
            "major": major,
            "minor": minor,
            "gitVersion": f"v{major}.{minor}.0",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2024-01-01T00:00:00Z",
            "goVersion": "go1.22.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _api_versions(self) -> dict[str, Any]:
        return {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
            ],
        }

    def _api_group(self, group: str) -> dict[str, Any]:
        versions = sorted({r.version for r in RESOURCES.values() if r.group == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _api_groups(self) -> dict[str, Any]:
        groups = sorted({r.group for r in RESOURCES.values() if r.group})
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {k: v for k, v in self._api_group(g).items() if k not in ("kind", "apiVersion")}
                for g in groups
            ],
        }

    def _resource_list(self, rtype: ResourceType) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for r in RESOURCES.values():
            if r.base_path != rtype.base_path:
                continue
            entry: dict[str, Any] = {
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            resources.append(entry)
            if r.has_status:
                resources.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": rtype.api_version,
            "resources": resources,
        }


class ThreadedApiServer:
    """An `ApiServer` on its own event loop in a background thread, for synchronous tests:
    `with ThreadedApiServer(token="t") as server: ...`. `store`, `faults` and `requests` are
    thread-safe; `call(fn, ...)` runs anything else on the server's loop."""

    def __init__(self, *args: Any, start_timeout: float = 10.0, **kwargs: Any) -> None:
        """Takes the arguments of `ApiServer`."""
        self._args = args
        self._kwargs = kwargs
        self._start_timeout = start_timeout
        self._server: ApiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.call_timeout = 30.0

    @property
    def server(self) -> ApiServer:
        if self._server is None:
            raise RuntimeError("the threaded API server is not running")
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> Store:
        return self.server.store

    @property
    def faults(self) -> Faults:
        return self.server.faults

    @property
    def requests(self) -> RequestLog:
        return self.server.requests

    def kubeconfig(self, namespace: str | None = None) -> dict[str, Any]:
        return self.server.kubeconfig(namespace)

    def write_kubeconfig(self, path: str | os.PathLike[str], namespace: str | None = None) -> Path:
        return self.server.write_kubeconfig(path, namespace)

    def start(self) -> None:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = ApiServer(*self._args, **self._kwargs)
                loop.run_until_complete(self._server.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._server.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="tailwatch-sim-apiserver", daemon=True)
        thread.start()
        if not started.wait(self._start_timeout):
            raise RuntimeError("the threaded API server did not start in time")
        if failure:
            thread.join()
            self._server = None
            raise failure[0]
        self._thread = thread

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self._start_timeout)
        self._thread = None
        self._loop = None

    def __enter__(self) -> ThreadedApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @overload
    def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    def call(self, fn: Callable[P, Any], *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run `fn(*args, **kwargs)` on the server's loop (awaiting it if it is a coroutine
        function) and return its result; exceptions propagate."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the threaded API server is not running")

        async def run() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), loop).result(self.call_timeout)
