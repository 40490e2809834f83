"""Shared harness of the cluster benchmarks: real `tailwatch run` processes against one API
simulator holding a large cluster (exporter.simulator.scale).

- `BenchCluster` (a context manager): a `ThreadedApiServer`, the cluster of a `ScaleSpec`
  written into its store, a TCP listener on every ClusterIP that counts the connections it
  accepts per Service (the probes of the Service address; in its own process), and agents
  started on the nodes asked for, each its own process (`tailwatch run`, POD_NAMESPACE
  tailwatch) with its own node name and listen port. The endpoint addresses (pod IPs) have
  no listener: probes of a node's endpoints are refused at once.
- Per agent: CPU seconds (utime + stime from /proc/<pid>/stat), RSS (VmRSS), its text
  /metrics (series, probes, watch events handled), and its API traffic.
- API traffic is read from the simulator's request log: each `RequestRecord`'s `client`
  (the agent's User-Agent, `tailwatch/<version> node/<node>`), `served_from`
  ("cache"|"storage"), `bytes_sent` and `events_sent`, read with `getattr` so the harness
  works whether or not the simulator records them. Each agent also talks to the simulator
  through its own byte-counting loopback proxy: where the log cannot tell the agents apart
  (no node in the User-Agent) or counts no bytes, an agent's bytes and requests are the
  proxy's (`source="wire"`: bytes on the wire, headers and chunk framing included, by the
  verb of the request line), and the log's served_from and events are split evenly between
  the agents. TAILWATCH_BENCH_WIRE=off connects the agents directly.

Two helpers run as their own processes, so that their timings do not wait on the
simulator's thread in the benchmark process for the GIL:
- `python -m tests.bench.cluster healthz URL PAUSE_SECONDS [TIMEOUT_SECONDS]` polls URL (a
  new connection each time, as the kubelet does) with PAUSE_SECONDS between polls until
  stdin closes, then prints one JSON line {"samples": [[monotonic start, seconds, status],
  ...]} (status 0: no answer within TIMEOUT_SECONDS, default 30);
- `python -m tests.bench.cluster listen SPEC.json` listens on every address of SPEC
  ({"port", "addresses"}), closes each connection it accepts, and answers every
  "snapshot" line on stdin with {"at": monotonic time, "counts": [accepted per address]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from exporter.simulator import RequestRecord, ThreadedApiServer, kubeconfig_dict, write_kubeconfig
from exporter.simulator.scale import ScaleCluster, ScaleSpec, build

T = TypeVar("T")

ROOT = Path(__file__).parents[2]
TICKS = os.sysconf("SC_CLK_TCK")
TOKEN = "bench"
PEER_NAMESPACE = "tailwatch"
_CLIENT_NODE = re.compile(r"\bnode/([^\s;]+)")


# -- waiting, processes ------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], T | None], what: str, timeout: float, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET over a new connection; (0, b"") if there is no answer within `timeout`."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- /metrics ----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Metrics:
    """One text scrape of an agent's /metrics."""

    text: str
    samples: list[Sample]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if match is None:
                continue
            labels = dict(_LABEL.findall(match[2] or ""))
            samples.append(Sample(match[1], labels, float(match[3])))
        return cls(text, samples)

    @property
    def series(self) -> int:
        """Sample lines: what the text format exports (a classic histogram is a line per
        bucket, plus _sum and _count)."""
        return len(self.samples)

    def total(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def watch_events(self, resource: str, kind: str | None = None) -> int:
        """Events the agent handled on a watch (`kind` None: ADDED, MODIFIED and DELETED)."""
        kinds = (kind,) if kind else ("ADDED", "MODIFIED", "DELETED")
        return int(
            sum(
                self.total("tailwatch_watch_events_total", resource=resource, type=k) for k in kinds
            )
        )

    def probes(self, target: str = "service") -> tuple[int, int]:
        """(probes recorded, of which missed: intended starts never sent) for `target`."""
        recorded = self.total("tailwatch_probe_duration_seconds_count", target=target)
        missed = self.total("tailwatch_probe_failures_total", target=target, reason="missed")
        return int(recorded), int(missed)

    def probe_failures(self, target: str = "service") -> Counter[str]:
        """Failed probes of `target` by reason (missed included)."""
        found: Counter[str] = Counter()
        for s in self.samples:
            if s.name == "tailwatch_probe_failures_total" and s.labels.get("target") == target:
                found[s.labels.get("reason", "")] += int(s.value)
        return found

    def service_series(self, namespace: str, services: Iterable[str]) -> Counter[str]:
        """Series (by family) carrying one of `services` in `namespace`."""
        names = set(services)
        found: Counter[str] = Counter()
        for s in self.samples:
            if s.labels.get("service") in names and s.labels.get("namespace") == namespace:
                found[s.name] += 1
        return found


# -- listeners (own process), the agents' API proxies (a background loop) ----------------------


class Background:
    """An asyncio loop in a daemon thread; `call` runs a coroutine on it and returns its result."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(drain(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class _Accepted(asyncio.Protocol):
    """Counts an accepted connection and closes it: a TCP probe only connects."""

    def __init__(self, counts: list[int], index: int) -> None:
        self.counts = counts
        self.index = index

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.counts[self.index] += 1
        transport.close()


class ServiceListeners:
    """A TCP listener on each ClusterIP (one port for all) counting the connections it
    accepts, in its own process (`python -m tests.bench.cluster listen SPEC.json`): with
    thousands of probes a second it must not wait on the simulator's thread for the GIL."""

    def __init__(self, addresses: Sequence[str], port: int, workdir: Path) -> None:
        self.addresses = list(addresses)
        self.port = port
        spec = workdir / "listeners.json"
        spec.write_text(json.dumps({"port": port, "addresses": self.addresses}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.cluster", "listen", str(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if json.loads(line or b"{}").get("listening") != len(self.addresses):
            self.close()
            raise AssertionError(f"listeners did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def snapshot(self) -> tuple[float, list[int]]:
        """(monotonic time, connections accepted so far per Service)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"snapshot\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return float(answer["at"]), [int(n) for n in answer["counts"]]

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.communicate(b"", timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _listen(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    counts = [0] * len(spec["addresses"])
    loop = asyncio.new_event_loop()

    async def start() -> list[asyncio.Server]:
        servers = []
        for index, address in enumerate(spec["addresses"]):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, spec["port"]))
            sock.listen(1024)
            sock.setblocking(False)
            servers.append(
                await loop.create_server(lambda i=index: _Accepted(counts, i), sock=sock)
            )
        return servers

    servers = loop.run_until_complete(start())

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "snapshot":
                # A copy of the list is taken under the GIL: consistent enough for counters.
                print(json.dumps({"at": time.monotonic(), "counts": list(counts)}), flush=True)
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=commands, daemon=True).start()
    print(json.dumps({"listening": len(servers)}), flush=True)
    loop.run_forever()
    for server in servers:
        server.close()
    # Connections accepted but not handed to a protocol yet: end them before the loop.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()

    async def drain() -> None:
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(drain())
    loop.close()


_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n")
_WATCH_PARAM = re.compile(rb"[?&]watch=(?:1|true|True)(?:&|$)")
_INITIAL_EVENTS = re.compile(rb"[?&]sendInitialEvents=(?:1|true|True)(?:&|$)")


def _request_kind(method: bytes, target: bytes) -> tuple[str, str]:
    """(verb, resource) of a request line, as the simulator's RequestRecord names them."""
    path = target.split(b"?", 1)[0].rstrip(b"/").decode(errors="replace")
    resource = path.rsplit("/", 1)[-1] if path.startswith(("/api/", "/apis/")) else ""
    if method == b"GET":
        verb = "watch" if _WATCH_PARAM.search(target) else "list"
        if verb == "watch" and _INITIAL_EVENTS.search(target):
            verb = "watchlist"
    else:
        verb = method.decode().lower()
    return verb, resource


class WireCounter:
    """One agent's byte-counting TCP proxy to the simulator: bytes sent to the agent, by the
    verb of the request being answered on that connection (aiohttp sends one request at a
    time per connection), and requests by (verb, resource)."""

    def __init__(self, background: Background, upstream: tuple[str, int]) -> None:
        self.background = background
        self.upstream = upstream
        self.bytes: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server = background.call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        verb = ["other"]

        async def upward() -> None:
            while data := await reader.read(65536):
                for match in _REQUEST_LINE.finditer(data):
                    kind = _request_kind(match[1], match[2])
                    verb[0] = kind[0]
                    self.requests[kind] += 1
                up_writer.write(data)
                await up_writer.drain()

        async def downward() -> None:
            while data := await up_reader.read(65536):
                self.bytes[verb[0]] += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upward()), asyncio.create_task(downward())]
        try:
            # Either side closing ends the connection (aiohttp closes whole sockets).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    def close(self) -> None:
        async def close() -> None:
            self._server.close()
            for w in list(self._writers):
                w.close()

        self.background.call(close())


# -- API traffic -------------------------------------------------------------------------------


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})


def request_verb(verb: str, params: Mapping[str, str]) -> str:
    """The record's verb, with a streaming list (a watch with sendInitialEvents) apart."""
    if verb == "watch" and params.get("sendInitialEvents") in _TRUE:
        return "watchlist"
    return verb


@dataclass
class Traffic:
    """One agent's API traffic so far.

    `bytes` (by verb: list, watch, watchlist) and `requests` (by verb and resource) are the
    agent's own: from the request log when it names the agent's node, else from its wire
    proxy (`source`). `served` (bytes by verb and served_from) and `events` (watch events
    sent, by type) are from the request log only, split evenly between the agents when it
    cannot tell them apart (`attributed` False)."""

    source: str
    bytes: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    attributed: bool = True

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def served_share(self, served_from: str) -> float:
        """The share of the bytes the request log counts that came from `served_from`."""
        total = sum(self.served.values())
        part = sum(n for (_, s), n in self.served.items() if s == served_from)
        return part / total if total else math.nan

    def minus(self, earlier: Traffic) -> Traffic:
        return Traffic(
            self.source,
            self.bytes - earlier.bytes,
            self.requests - earlier.requests,
            self.served - earlier.served,
            self.events - earlier.events,
            self.attributed,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "attributed": self.attributed,
            "bytes": dict(self.bytes),
            "requests": {f"{v} {r}": n for (v, r), n in sorted(self.requests.items())},
            "served_bytes": {f"{v} {s}": n for (v, s), n in sorted(self.served.items())},
            "events": dict(self.events),
        }


def _events_of(record: RequestRecord) -> Counter[str]:
    sent = getattr(record, "events_sent", None)
    if isinstance(sent, dict):
        return Counter({str(k): int(v) for k, v in sent.items()})
    if isinstance(sent, int):
        return Counter({"all": sent})
    return Counter()


def traffic_from_records(
    records: Iterable[RequestRecord], nodes: Sequence[str]
) -> dict[str, Traffic]:
    """Per agent, from the request log, attributed by the node in the User-Agent
    (`tailwatch/<version> node/<node>`); if no record names a node (agents that do not send
    it yet), every tailwatch request is split evenly between the agents."""
    per: dict[str, Traffic] = {n: Traffic("simulator") for n in nodes}
    shared = Traffic("simulator", attributed=False)
    for record in records:
        client = str(getattr(record, "client", "") or "")
        match = _CLIENT_NODE.search(client)
        if match is not None and match[1] in per:
            into = per[match[1]]
        elif match is None and client.startswith("tailwatch"):
            into = shared
        else:
            continue
        verb = request_verb(record.verb, record.params)
        into.requests[(verb, record.resource)] += 1
        sent = getattr(record, "bytes_sent", None)
        if sent is not None:
            into.bytes[verb] += int(sent)
            served = str(getattr(record, "served_from", "") or "n/a")
            into.served[(verb, served)] += int(sent)
        into.events += _events_of(record)
    if not nodes or any(t.requests for t in per.values()):
        return per
    n = len(nodes)

    def split(counter: Counter[Any]) -> Counter[Any]:
        return Counter({k: v // n for k, v in counter.items()})

    return {
        node: Traffic(
            "simulator",
            split(shared.bytes),
            split(shared.requests),
            split(shared.served),
            split(shared.events),
            attributed=False,
        )
        for node in nodes
    }


# -- agents ------------------------------------------------------------------------------------


def tailwatch_command() -> list[str]:
    script = Path(sys.executable).with_name("tailwatch")
    return [str(script)] if script.exists() else [sys.executable, "-m", "exporter"]


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port on 127.0.0.1 below the kernel's ephemeral range: thousands of probe
    connections a second take ephemeral ports, and could take the one a port 0 bind saw
    free before its agent binds it."""
    low, _ = _ephemeral_ports()
    start = random.randrange(1024, max(1025, low))
    for offset in range(low - 1024):
        port = 1024 + (start - 1024 + offset) % max(1, low - 1024)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


@dataclass
class Agent:
    node: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    wire: WireCounter | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mib(self.pid)

    def metrics(self, timeout: float = 30.0) -> Metrics:
        found = self.try_metrics(timeout)
        if found is None:
            raise AssertionError(f"agent {self.node}: no /metrics within {timeout:g} s")
        return found

    def try_metrics(self, timeout: float) -> Metrics | None:
        """A scrape, or None if the agent does not answer within `timeout` (a blocked loop)."""
        status, body = http_get(self.url + "/metrics", timeout)
        return Metrics.parse(body.decode()) if status == 200 else None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"agent {self.node} exited ({self.proc.returncode}): {tail}")
        return http_get(self.url + "/readyz", 2.0)[0] == 200


@dataclass
class AgentSnapshot:
    """What one agent shows at one moment."""

    at: float
    cpu: float
    metrics: Metrics


class BenchCluster:
    """The simulator with a large cluster, listeners on its ClusterIPs and real agents."""

    def __init__(
        self,
        spec: ScaleSpec,
        workdir: Path,
        *,
        listeners: bool = True,
        bookmark_interval: float = 5.0,
        wire: bool | None = None,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.with_listeners = listeners
        self.bookmark_interval = bookmark_interval
        if wire is None:
            wire = os.environ.get("TAILWATCH_BENCH_WIRE", "on") != "off"
        self.wire = wire
        self.agents: list[Agent] = []
        self.build_seconds = 0.0
        self._stack = contextlib.ExitStack()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> BenchCluster:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cgroup").mkdir(exist_ok=True)
        self.server = ThreadedApiServer(token=TOKEN, bookmark_interval=self.bookmark_interval)
        self.server.start()
        self._stack.callback(self.server.stop)
        started = time.perf_counter()
        self.cluster: ScaleCluster = build(self.server.store, self.spec)
        self.build_seconds = time.perf_counter() - started
        self.kubeconfig = self.server.write_kubeconfig(self.workdir / "kubeconfig")
        self.background = Background("bench-proxies")
        self._stack.callback(self.background.stop)
        self.listeners: ServiceListeners | None = None
        if self.with_listeners:
            port = self.spec.port
            self.listeners = ServiceListeners(
                [s.cluster_ip for s in self.cluster.services], port, self.workdir
            )
            self._stack.callback(self.listeners.close)
        self._stack.callback(self.stop_agents)

    @property
    def store(self) -> Any:
        return self.server.store

    # -- agents ------------------------------------------------------------------------------

    def start_agents(self, nodes: Sequence[str], timeout: float = 120.0) -> list[Agent]:
        """Start an agent on each node, then wait until every one is ready."""
        started = [self._start_agent(node) for node in nodes]
        self.agents.extend(started)
        pending = list(started)

        def all_ready() -> bool:
            pending[:] = [a for a in pending if not a.ready()]
            return not pending

        wait_until(all_ready, f"{len(started)} agents to be ready", timeout, interval=0.25)
        return started

    def _start_agent(self, node: str) -> Agent:
        kubeconfig = self.kubeconfig
        wire = None
        if self.wire:
            upstream = urlsplit(self.server.url)
            wire = WireCounter(self.background, (upstream.hostname or "", upstream.port or 0))
            kubeconfig = write_kubeconfig(
                self.workdir / f"kubeconfig-{node}", kubeconfig_dict(wire.url, token=TOKEN)
            )
        port = free_port()
        log = self.workdir / f"agent-{node}.log"
        with log.open("ab") as stderr:
            proc = subprocess.Popen(
                [
                    *tailwatch_command(), "run", "--node-name", node,
                    "--kubeconfig", str(kubeconfig), "--cgroup-root", str(self.workdir / "cgroup"),
                    "--listen", f"127.0.0.1:{port}", "--otlp-listen", "", "--log-level", "warning",
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT,
                env={**os.environ, "POD_NAMESPACE": PEER_NAMESPACE, "KUBERNETES_SERVICE_HOST": ""},
            )  # fmt: skip
        return Agent(node, port, proc, log, wire)

    def stop_agents(self, agents: Sequence[Agent] | None = None, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL whatever has not exited within `timeout`."""
        stopping = list(self.agents if agents is None else agents)
        for agent in stopping:
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for agent in stopping:
            try:
                agent.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait()
            if agent.wire is not None:
                agent.wire.close()
            if agent in self.agents:
                self.agents.remove(agent)

    def snapshot(self, agents: Sequence[Agent]) -> list[AgentSnapshot]:
        """Every agent's /metrics and CPU, the agents scraped side by side (a window starts
        and ends at nearly the same time for all of them)."""

        def one(agent: Agent) -> AgentSnapshot:
            asked = time.monotonic()
            metrics = agent.metrics()
            # The agent rendered the answer somewhere in between: the middle is its time.
            return AgentSnapshot((asked + time.monotonic()) / 2, agent.cpu(), metrics)

        with ThreadPoolExecutor(max_workers=min(32, max(1, len(agents)))) as pool:
            return list(pool.map(one, agents))

    # -- API traffic -------------------------------------------------------------------------

    def traffic(self, agents: Sequence[Agent]) -> dict[str, Traffic]:
        """Each agent's API traffic so far (see `Traffic`)."""
        per = traffic_from_records(self.server.requests.records, [a.node for a in agents])
        for agent in agents:
            traffic = per[agent.node]
            if agent.wire is None or (traffic.attributed and traffic.bytes):
                continue
            traffic.source = "wire"
            traffic.bytes = Counter(agent.wire.bytes)
            traffic.requests = Counter(agent.wire.requests)
        return per


# -- the /healthz poller (its own process) -----------------------------------------------------


class HealthzPoller:
    """`python -m tests.bench.cluster healthz URL PAUSE` as a subprocess."""

    def __init__(self, url: str, pause: float = 0.01, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.cluster", "healthz", url, str(pause),
             str(timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "started", once its first poll is under way
        if not line.startswith(b"started"):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"healthz poller did not start: {line!r}")

    def stop(self, timeout: float = 60.0) -> list[tuple[float, float, int]]:
        """Stop after the poll in flight; the samples (monotonic start, seconds, status)."""
        try:
            out, _ = self.proc.communicate(b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("healthz poller did not stop") from None
        return [(t, s, int(c)) for t, s, c in json.loads(out)["samples"]]


def _poll_healthz(url: str, pause: float, timeout: float) -> None:
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    samples: list[tuple[float, float, int]] = []
    print("started", flush=True)
    while not stop.is_set():
        t0 = time.monotonic()
        status, _ = http_get(url, timeout)
        samples.append((t0, time.monotonic() - t0, status))
        stop.wait(pause)
    print(json.dumps({"samples": samples}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["healthz"]:
        _poll_healthz(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]) if sys.argv[4:] else 30)
    elif sys.argv[1:2] == ["listen"]:
        _listen(sys.argv[2])
    else:
        raise SystemExit(
            "usage: python -m tests.bench.cluster healthz URL PAUSE [TIMEOUT] | listen SPEC.json"
        )
