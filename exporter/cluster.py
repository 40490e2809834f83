"""`tailwatch episodes`: the cluster's episodes, gathered from every agent (docs/cli.md).

Each agent knows the episodes of the Services it has latency for; none knows the cluster's.
This command asks all of them, with the user's kubeconfig and nothing else: it lists the
agents' pods, GETs `/api/v1/episodes` from each through the API server's pod proxy
(`/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/api/v1/episodes`), so it needs no
network path to the pods and no port-forward, only `list pods` and `get pods/proxy` in the
agents' namespace. The documents are merged into one record per disruption by the pure
`exporter.core.merge`, and printed as a table or as JSON.

A cluster has thousands of agents: they are asked concurrently, at most `concurrency` at a
time, each within `timeout` seconds. An agent that does not answer (a pod the proxy cannot
reach, an agent that refuses, a slow node) is listed with why, and the others' answers still
count; only when none answered does the command fail. The pods are listed from the API
server's watch cache (`resourceVersion=0`), not from etcd.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
from rich.console import Console
from rich.table import Table

from exporter import __version__
from exporter.core.episodes import iso
from exporter.core.merge import AgentEpisodes, ClusterEpisode, Filters, merge, read_agent
from exporter.kube.config import KubeConfigError, KubeConnection, load_connection
from exporter.kube.watching import (
    ApiSession,
    ApiStatusError,
    ConnectionFailed,
    ResourceSpec,
    WatchError,
    WatchTiming,
    list_objects,
)

#: The chart's agent pods: its selector labels without the release (any release).
DEFAULT_SELECTOR = "app.kubernetes.io/name=tailwatch,app.kubernetes.io/component=agent"
#: The agent's --listen port when its pod declares none of PORT_NAMES.
DEFAULT_PORT = 9808
#: Container port names taken for the agent's HTTP port, in order (the chart's is metrics).
PORT_NAMES = ("metrics", "http")
DEFAULT_TIMEOUT = 5.0
DEFAULT_CONCURRENCY = 32
#: Failed agents shown under the table; the JSON lists every agent.
SHOWN_FAILURES = 20
USER_AGENT = f"tailwatch-episodes/{__version__}"
EPISODES_PATH = "/api/v1/episodes"

EXIT_OK = 0
EXIT_FAILED = 1  # no agent answered, or the API server cannot be asked
EXIT_USAGE = 2


class ClusterError(Exception):
    """The API server cannot be asked (unreachable, credentials refused, not allowed)."""


@dataclass(frozen=True)
class EpisodesOptions:
    """The command's flags (docs/cli.md)."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    service: str | None = None
    since: float | None = None  # seconds back from now
    output: str = "table"
    agents_namespace: str | None = None  # None: every namespace
    agents_selector: str = DEFAULT_SELECTOR
    port: int | None = None  # None: the pod's port named metrics/http, else DEFAULT_PORT
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    html: str | None = None  # also write the timelines page there (docs/cli.md, *HTML*)


@dataclass(frozen=True)
class AgentPod:
    """One agent's pod and how the API server's proxy reaches it."""

    namespace: str
    name: str
    node: str
    port: int
    scheme: str  # http, or https when its probes say the agent serves TLS
    phase: str
    ready: bool

    @property
    def askable(self) -> bool:
        return self.phase == "Running" and self.ready

    @property
    def proxy_path(self) -> str:
        target = f"{self.name}:{self.port}"
        if self.scheme == "https":
            target = f"https:{target}"
        return f"/api/v1/namespaces/{self.namespace}/pods/{target}/proxy{EPISODES_PATH}"


@dataclass
class AgentResult:
    """What asking one agent gave: its episodes, or why there are none."""

    pod: AgentPod
    episodes: AgentEpisodes | None = None
    error: str = ""
    # (namespace, service, its events) of each of its episodes: the markers of --html.
    events: list[tuple[str, str, list[Any]]] = field(default_factory=list)
    asked: bool = True  # False: the pod was not running and ready

    @property
    def ok(self) -> bool:
        return self.episodes is not None

    def as_json(self) -> dict[str, Any]:
        episodes = self.episodes
        return {
            "namespace": self.pod.namespace,
            "pod": self.pod.name,
            "node": self.pod.node,
            "ok": self.ok,
            "error": self.error or None,
            "episodes": None if episodes is None else len(episodes.views),
            "unreadable_episodes": None if episodes is None else episodes.malformed,
        }


@dataclass
class Gathered:
    """Every agent's answer, and when they were gathered (wall clock)."""

    agents: list[AgentResult] = field(default_factory=list)
    at: float = 0.0

    @property
    def answered(self) -> list[AgentResult]:
        return [a for a in self.agents if a.ok]


# -- the agents' pods ----------------------------------------------------------------------


def _probe_scheme(container: Mapping[str, Any], port: int, names: set[str]) -> str:
    """https when one of the container's HTTP probes on that port uses HTTPS: the chart's
    probes follow the agent's TLS (helm/tailwatch/templates/daemonset.yaml)."""
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("port") == port or get.get("port") in names:
            return "https" if str(get.get("scheme", "")).upper() == "HTTPS" else "http"
    return "http"


def _port_of(spec: Mapping[str, Any], wanted: int | None) -> tuple[int, str]:
    """The agent's HTTP port and scheme: `wanted` if given, else the container port named
    metrics (or http), else DEFAULT_PORT."""
    declared: list[tuple[int, str, Mapping[str, Any]]] = []  # (number, name, container)
    for container in spec.get("containers") or []:
        if not isinstance(container, Mapping):
            continue
        for port in container.get("ports") or []:
            if isinstance(port, Mapping) and isinstance(port.get("containerPort"), int):
                declared.append((port["containerPort"], str(port.get("name") or ""), container))
    if wanted is None:
        for name in PORT_NAMES:
            for number, named, container in declared:
                if named == name:
                    return number, _probe_scheme(container, number, {named})
        wanted = DEFAULT_PORT
    for number, named, container in declared:
        if number == wanted:
            return number, _probe_scheme(container, number, {named} - {""})
    return wanted, "http"


def agent_pod(obj: Mapping[str, Any], port: int | None = None) -> AgentPod | None:
    """The agent pod of a listed pod object; None if it has no name or namespace."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str) or not name or not namespace:
        return None
    if not isinstance(status, Mapping):
        status = {}
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    number, scheme = _port_of(spec, port)
    return AgentPod(
        namespace=namespace,
        name=name,
        node=str(spec.get("nodeName") or ""),
        port=number,
        scheme=scheme,
        phase=str(status.get("phase") or "Unknown"),
        ready=ready and not meta.get("deletionTimestamp"),
    )


def _api_error(exc: WatchError, what: str) -> ClusterError:
    if isinstance(exc, ApiStatusError) and exc.code == 401:
        return ClusterError(
            f"the API server did not accept your credentials when {what} (HTTP 401): check "
            "your kubeconfig's user and context"
        )
    if isinstance(exc, ApiStatusError) and exc.code == 403:
        return ClusterError(
            f"not allowed when {what}: {exc}; the command needs `list pods` in the agents' "
            "namespace and `get pods/proxy` there (docs/cli.md, *RBAC*)"
        )
    if isinstance(exc, ConnectionFailed):
        return ClusterError(f"cannot reach the API server when {what}: {exc}")
    return ClusterError(f"the API server failed when {what}: {exc}")


async def list_agents(api: ApiSession, options: EpisodesOptions) -> list[AgentPod]:
    """The agents' pods, from the API server's watch cache; raises ClusterError."""
    namespace = options.agents_namespace
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    spec = ResourceSpec("pods", path, label_selector=options.agents_selector)
    where = f"in the namespace {namespace}" if namespace else "in all namespaces"
    try:
        items, _ = await list_objects(api, spec, "0")
    except WatchError as exc:
        raise _api_error(exc, f"listing the agents' pods {where}") from exc
    pods = [pod for item in items if (pod := agent_pod(item, options.port)) is not None]
    if not pods:
        raise ClusterError(
            f"no pod matches {options.agents_selector!r} {where}: is tailwatch installed? "
            "(--agents-selector and --agents-namespace say where its agents are)"
        )
    return sorted(pods, key=lambda p: (p.node, p.namespace, p.name))


# -- asking one agent ----------------------------------------------------------------------


def _status_message(body: bytes) -> tuple[bool, str]:
    """(is it the API server's Status, its message or the body's first line)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, Mapping) and doc.get("kind") == "Status":
        return True, str(doc.get("message") or doc.get("reason") or "")
    text = body.decode("utf-8", "replace").strip().splitlines()
    return False, (text[0][:200] if text else "")


def _refusal(status: int, body: bytes) -> str:
    """Why an answer that is not 200 gave no episodes, in words the user can act on."""
    from_server, message = _status_message(body)
    if from_server:
        if status == 403:
            return (
                f"forbidden: {message} (the command needs `get pods/proxy` in the agents' "
                "namespace: docs/cli.md, *RBAC*)"
            )
        return f"HTTP {status} from the API server: {message}"
    if status == 401:
        return (
            "HTTP 401 from the agent: it requires a bearer token (--auth=kubernetes) and the "
            "API server's proxy does not pass your credentials on (docs/cli.md, *Agents "
            "with authentication*)"
        )
    if status == 404:
        return f"HTTP 404 from the agent: it serves no {EPISODES_PATH} (an older version?)"
    return f"HTTP {status} from the agent: {message}" if message else f"HTTP {status}"


async def ask_agent(api: ApiSession, pod: AgentPod, timeout: float) -> AgentResult:
    """GET the agent's /api/v1/episodes through the API server's pod proxy."""
    result = AgentResult(pod)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        resp = await api.get(pod.proxy_path, {}, client_timeout)
        async with resp:
            body = await resp.read()
            status = resp.status
    except ConnectionFailed as exc:
        if isinstance(exc.__cause__, TimeoutError):
            result.error = f"no answer within {timeout:g}s"
        else:
            result.error = f"cannot reach the API server: {exc}"
        return result
    except TimeoutError:
        result.error = f"no answer within {timeout:g}s"
        return result
    except (aiohttp.ClientError, OSError) as exc:
        result.error = f"the answer was cut short: {exc or type(exc).__name__}"
        return result
    if status != 200:
        result.error = _refusal(status, body)
        return result
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, Mapping) or not any(k in doc for k in ("open", "recent")):
        result.error = f"the answer to {EPISODES_PATH} is not an episodes document"
        return result
    result.episodes = read_agent(doc, node=pod.node)
    for episode in [*(doc.get("open") or []), *(doc.get("recent") or [])]:
        if isinstance(episode, Mapping) and isinstance(episode.get("events"), list):
            key = (str(episode.get("namespace")), str(episode.get("service")))
            result.events.append((*key, episode["events"]))
    return result


async def gather(connection: KubeConnection, options: EpisodesOptions) -> Gathered:
    """Every agent's answer; raises ClusterError when the agents cannot be listed."""
    timing = WatchTiming(request_timeout=max(options.timeout, 10.0), connect_timeout=10.0)
    async with ApiSession(connection, timing, user_agent=USER_AGENT) as api:
        pods = await list_agents(api, options)
        limit = asyncio.Semaphore(max(1, options.concurrency))

        async def one(pod: AgentPod) -> AgentResult:
            if not pod.askable:
                why = "not ready" if pod.phase == "Running" else f"phase {pod.phase}"
                return AgentResult(pod, error=f"not asked: the pod is {why}", asked=False)
            async with limit:
                return await ask_agent(api, pod, options.timeout)

        agents = await asyncio.gather(*(one(pod) for pod in pods))
    return Gathered(agents=list(agents), at=time.time())


# -- output --------------------------------------------------------------------------------


def _filters(options: EpisodesOptions, now: float) -> Filters:
    since = None if options.since is None else now - options.since
    return Filters(namespace=options.namespace, service=options.service, since=since)


def records_of(gathered: Gathered, options: EpisodesOptions) -> list[ClusterEpisode]:
    episodes = [a.episodes for a in gathered.answered if a.episodes is not None]
    return merge(episodes, gathered.at, _filters(options, gathered.at))


def report_json(
    gathered: Gathered, records: Sequence[ClusterEpisode], options: EpisodesOptions
) -> dict[str, Any]:
    """The `-o json` document (docs/cli.md, *JSON*)."""
    since = _filters(options, gathered.at).since
    return {
        "generated_at": iso(gathered.at),
        "filters": {
            "namespace": options.namespace,
            "service": options.service,
            "since": iso(since),
        },
        "episodes": [r.as_json() for r in records],
        "agents": [a.as_json() for a in gathered.agents],
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _when(at: float | None, since: float | None = None) -> str:
    """UTC; the date left out when it is that of `since` (the opening)."""
    if at is None:
        return "open"
    moment = datetime.fromtimestamp(at, UTC)
    if since is not None and datetime.fromtimestamp(since, UTC).date() == moment.date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _recovery(record: ClusterEpisode) -> str:
    if record.status == "recovered":
        return _duration(record.recovery_seconds)
    return {"open": "-", "no_baseline": "no baseline"}.get(
        record.status, record.status.replace("_", " ")
    )


def _nodes(record: ClusterEpisode, shown: int = 3) -> str:
    """`3: restart node-a; readiness node-b, node-c`: each cause with the nodes that saw
    it (the views are sorted by dominance), a few names each."""
    by_cause: dict[str, list[str]] = {}
    for view in record.views:
        names = by_cause.setdefault(view.cause, [])
        if view.node not in names:
            names.append(view.node or "?")
    parts = []
    for cause, names in by_cause.items():
        more = f" +{len(names) - shown}" if len(names) > shown else ""
        parts.append(f"{cause} {', '.join(names[:shown])}{more}")
    return f"{len(record.nodes)}: " + "; ".join(parts)


def episodes_table(records: Sequence[ClusterEpisode], now: float) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("SERVICE", "OPENED (UTC)", "CLOSED", "DURATION", "CAUSE", "IMPACT", "P99"):
        table.add_column(column, no_wrap=True)
    table.add_column("RECOVERY", no_wrap=True)
    table.add_column("NODES", overflow="fold")
    for r in records:
        duration = _duration(r.duration if r.closed_at is not None else now - r.opened_at)
        table.add_row(
            f"{r.namespace}/{r.service}",
            _when(r.opened_at),
            _when(r.closed_at, r.opened_at),
            duration if r.closed_at is not None else f"{duration}+",
            r.cause,
            r.impact or "-",
            "-" if r.p99_ratio is None else f"{r.p99_ratio:.1f}x",
            _recovery(r),
            _nodes(r),
        )
    return table


def render_table(gathered: Gathered, records: Sequence[ClusterEpisode], console: Console) -> None:
    """The table, then which agents answered and why the others did not."""
    if records:
        console.print(episodes_table(records, gathered.at))
    else:
        console.print("No episodes.")
    answered, total = len(gathered.answered), len(gathered.agents)
    failed = [a for a in gathered.agents if not a.ok]
    tail = "; no answer from:" if failed else "."
    console.print(f"{answered} of {total} agents answered{tail}", highlight=False)
    for agent in failed[:SHOWN_FAILURES]:
        pod = agent.pod
        # Soft-wrapped: a terminal wraps the long line itself, a pipe or grep gets it whole.
        console.print(
            f"  {pod.namespace}/{pod.name} (node {pod.node or '?'}): {agent.error}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if len(failed) > SHOWN_FAILURES:
        console.print(f"  ... and {len(failed) - SHOWN_FAILURES} more (-o json lists them all)")
    unreadable = sum(a.episodes.malformed for a in gathered.answered if a.episodes is not None)
    if unreadable:
        console.print(f"{unreadable} episodes could not be read and were left out.")


def html_page(gathered: Gathered, records: Sequence[ClusterEpisode]) -> str:
    """The records as a page of timelines, one per Service (docs/cli.md, *HTML*): each
    episode a band, the agents' events in it as markers, its recovery; no latency lines,
    which the episode records do not hold."""
    from exporter.report import (  # noqa: PLC0415 (only --html needs it)
        Band,
        Report,
        ServiceTimeline,
        TimeAxis,
        markers_of,
        recovery_words,
        render_html,
    )

    now = gathered.at
    start = min((r.opened_at for r in records), default=now - 3600)
    end = max([now, *(r.recovered_at or r.closed_at or now for r in records)])
    start -= max(1.0, (end - start) * 0.03)
    axis = TimeAxis(start)
    timelines: dict[tuple[str, str], ServiceTimeline] = {}
    for r in records:
        timeline = timelines.setdefault(
            (r.namespace, r.service), ServiceTimeline(f"{r.namespace}/{r.service}")
        )
        ident = f"{r.namespace}/{r.service} {_when(r.opened_at)}"
        timeline.bands.append(Band(r.opened_at, r.closed_at, r.cause, r.status, ident,
                                   r.recovered_at))  # fmt: skip
        ratio = "" if r.p99_ratio is None else f", p99 {r.p99_ratio:.1f}x its baseline"
        timeline.headlines.append(
            f"{_when(r.opened_at)} {r.cause}{ratio}, impact {r.impact or '-'}, "
            f"{recovery_words(r.status, r.recovery_seconds, axis)}; seen by "
            f"{len(r.nodes)} node{'s' if len(r.nodes) != 1 else ''}"
        )
    for agent in gathered.answered:
        for namespace, service, events in agent.events:
            known = timelines.get((namespace, service))
            if known is not None:
                known.markers.extend(markers_of(e for e in events if isinstance(e, Mapping)))
    for timeline in timelines.values():
        # The agents whose views merged into one record saw some events alike: once each.
        unique = {(m.kind, m.text, round(m.at, 1)): m for m in timeline.markers}
        timeline.markers = sorted(unique.values(), key=lambda m: m.at)
    answered = len(gathered.answered)
    return render_html(
        Report(
            title="tailwatch episodes: the cluster's episodes per Service",
            subtitle=f"{len(records)} episodes from {answered} of {len(gathered.agents)} "
            f"agents, gathered {_when(now)} UTC.",
            axis=axis,
            start=start,
            end=end,
            services=sorted(timelines.values(), key=lambda t: t.name),
            notes=[
                "Bands: each episode from its opening to its close, its cause on it; the "
                "green stretch after one is the wait until latency recovered. Markers: the "
                "lifecycle events the agents tied to it (hover for each one's pod and node).",
                "The episode records hold no latency over time: for the p50 and p99 lines, "
                "run `tailwatch demo`, or graph tailwatch's metrics in Prometheus.",
            ],
            latency_note="no latency lines: the episode records do not hold latency over time",
        )
    )


def resolve_kubeconfig(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """As kubectl: --kubeconfig, else the first file of $KUBECONFIG that exists, else
    ~/.kube/config if it exists, else None (in-cluster, when run in a pod)."""
    if flag:
        return flag
    for path in environ.get("KUBECONFIG", "").split(os.pathsep):
        if path and Path(path).is_file():
            return path
    home = environ.get("HOME")
    default = (Path(home) if home else Path.home()) / ".kube" / "config"
    return str(default) if default.is_file() else None


def run_episodes(
    options: EpisodesOptions,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """The command: 0 when at least one agent answered, 1 when none did or the API server
    cannot be asked, 2 when the kubeconfig cannot be used."""
    env = os.environ if environ is None else environ
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        connection = load_connection(
            resolve_kubeconfig(options.kubeconfig, env), options.context, environ=env
        )
    except KubeConfigError as exc:
        print(f"tailwatch: error: {exc}", file=err)
        return EXIT_USAGE
    try:
        gathered = asyncio.run(gather(connection, options))
    except ClusterError as exc:
        print(f"tailwatch: error: {exc}", file=err)
        return EXIT_FAILED
    records = records_of(gathered, options)
    if options.output == "json":
        json.dump(report_json(gathered, records, options), out, indent=2)
        out.write("\n")
    else:
        render_table(gathered, records, Console(file=out, soft_wrap=False))
    if options.html and gathered.answered:
        try:
            Path(options.html).write_text(html_page(gathered, records))
        except OSError as exc:
            print(f"tailwatch: error: cannot write {options.html}: {exc}", file=err)
            return EXIT_FAILED
        print(f"timelines written to {options.html}", file=err)
    if gathered.answered:
        return EXIT_OK
    asked = [a for a in gathered.agents if a.asked]
    forbidden = [a for a in asked if a.error.startswith("forbidden:")]
    if forbidden and len(forbidden) == len(asked):
        print(f"tailwatch: error: no agent could be asked: {forbidden[0].error}", file=err)
    else:
        print("tailwatch: error: no agent answered", file=err)
    return EXIT_FAILED
