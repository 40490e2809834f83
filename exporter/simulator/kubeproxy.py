"""A kube-proxy for the simulator: each Service's ClusterIP:port (a loopback address) accepts
TCP connections and forwards each to one endpoint, chosen at random like the iptables and
nftables modes do.

What it forwards to is what it has *programmed*, not the API's latest state: EndpointSlice
changes reach its rules `sync_delay` seconds later (watch propagation plus the rule sync),
so for a short while it still sends to an endpoint that just started terminating or was
removed, as a real kube-proxy does. It chooses among ready endpoints; when none is ready it
falls back to serving-and-terminating ones (ProxyTerminatingEndpoints), and with none at
all it resets the connection (where iptables would reject it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.simulator.informer import StoreFollower
from exporter.simulator.store import Store

log = logging.getLogger("tailwatch.simulator.kubeproxy")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint as kube-proxy programmed it."""

    pod: str  # "<namespace>/<name>", or the address for an endpoint without a Pod
    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool


ServiceKey = tuple[str, str]  # (namespace, name)


def backends_of(slices: Sequence[Mapping[str, Any]], port_name: str) -> list[Backend]:
    """The endpoints of a Service's port named `port_name`, merged over its slices."""
    out: dict[str, Backend] = {}
    for slice_ in slices:
        ports = {str(p.get("name") or ""): int(p["port"]) for p in slice_.get("ports") or []}
        if port_name not in ports:
            continue
        for endpoint in slice_.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            ready = conditions.get("ready", True) is not False
            ref = endpoint.get("targetRef") or {}
            address = endpoint["addresses"][0]
            identity = f"{ref.get('namespace')}/{ref.get('name')}" if ref else address
            backend = Backend(
                pod=identity,
                address=address,
                port=ports[port_name],
                ready=ready,
                serving=conditions.get("serving", ready) is not False,
                terminating=conditions.get("terminating", False) is True,
            )
            held = out.get(identity)
            if held is None or (backend.ready and not held.ready):
                out[identity] = backend
    return sorted(out.values(), key=lambda b: b.pod)


def usable(backends: Sequence[Backend]) -> list[Backend]:
    """Ready endpoints, else the serving terminating ones (kube-proxy's fallback)."""
    ready = [b for b in backends if b.ready]
    if ready:
        return ready
    return [b for b in backends if b.serving and b.terminating]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: what a client of a rejected or broken connection sees."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def stop_listening(server: asyncio.Server) -> None:
    """Close a listener without losing a connection accepted at that very moment.

    asyncio (3.11) creates an accepted connection's transport one step after accepting it;
    if the server is closed in between, the transport cannot attach to it and the socket is
    leaked. So: stop accepting, let the connections already accepted attach, then close.
    Connections still in the kernel's backlog are reset, as when a process exits.
    """
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)
    server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class ServiceProxy:
    """The listener of one Service port: ClusterIP:port, forwarding to `choose()`."""

    def __init__(
        self,
        key: ServiceKey,
        address: str,
        port: int,
        port_name: str,
        choose: Callable[[ServiceKey, str], Backend | None],
    ) -> None:
        self.key = key
        self.address = address
        self.port = port
        self.port_name = port_name
        self._choose = choose
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.address, self.port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await stop_listening(server)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()  # closing: the connection ends here, not cancelled
        finally:
            self._connections.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self._choose(self.key, self.port_name)
        if backend is None:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(backend.address, backend.port)
        except OSError:  # the endpoint's process is gone: the client sees a reset
            _reset(writer)
            return
        upstream = asyncio.create_task(_pipe(reader, up_writer))
        try:
            await _pipe(up_reader, writer)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upstream
            for w in (up_writer, writer):
                w.close()


class KubeProxy:
    """Serves every Service with a ClusterIP in `store` (those `include` accepts) and keeps
    its programmed endpoints `sync_delay` seconds behind the API."""

    def __init__(
        self,
        store: Store,
        *,
        sync_delay: float = 1.0,
        seed: int = 0,
        include: Callable[[Mapping[str, Any]], bool] = lambda service: True,
    ) -> None:
        self.store = store
        self.sync_delay = sync_delay
        self.include = include
        self._rng = random.Random(seed)
        self._proxies: dict[tuple[ServiceKey, str], ServiceProxy] = {}
        self._programmed: dict[tuple[ServiceKey, str], list[Backend]] = {}
        self._task: asyncio.Task[None] | None = None
        self._sync_handle: asyncio.TimerHandle | None = None
        self.listeners: list[Callable[[], None]] = []  # told after every rule sync

    # -- what the rules say ----------------------------------------------------------

    def backends(self, key: ServiceKey, port_name: str | None = None) -> list[Backend]:
        """Programmed endpoints of a Service port (the first port when not named)."""
        for (k, name), backends in self._programmed.items():
            if k == key and (port_name is None or name == port_name):
                return list(backends)
        return []

    def receiving(self, key: ServiceKey) -> list[Backend]:
        """The endpoints new connections to the Service go to now."""
        return usable(self.backends(key))

    def _choose(self, key: ServiceKey, port_name: str) -> Backend | None:
        candidates = usable(self._programmed.get((key, port_name), []))
        return self._rng.choice(candidates) if candidates else None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.sync()
        self._task = asyncio.create_task(self._follow(), name="kube-proxy")

    async def close(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proxy in self._proxies.values():
            await proxy.close()
        self._proxies.clear()

    async def _follow(self) -> None:
        with StoreFollower(self.store, ("services", "endpointslices")) as follower:
            while True:
                await follower.changes()
                if self._sync_handle is None:
                    # Changes within one delay are applied by the same rule sync.
                    loop = asyncio.get_running_loop()
                    self._sync_handle = loop.call_later(self.sync_delay, self._sync_soon)

    def _sync_soon(self) -> None:
        self._sync_handle = None
        task = asyncio.ensure_future(self.sync())
        task.add_done_callback(_log_failure)

    async def sync(self) -> None:
        """Program the rules from the API's current state (listeners for new Services)."""
        services = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s
            for s in _stored(self.store, "services")
            if self.include(s) and (s.get("spec") or {}).get("clusterIP") not in (None, "", "None")
        }
        slices: dict[ServiceKey, list[dict[str, Any]]] = {}
        for slice_ in _stored(self.store, "endpointslices"):
            name = (slice_["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
            if name:
                slices.setdefault((slice_["metadata"]["namespace"], name), []).append(slice_)
        wanted: dict[tuple[ServiceKey, str], tuple[str, int]] = {}
        programmed: dict[tuple[ServiceKey, str], list[Backend]] = {}
        for key, service in services.items():
            for port in service["spec"].get("ports") or []:
                if str(port.get("protocol") or "TCP") != "TCP":
                    continue
                port_name = str(port.get("name") or "")
                wanted[(key, port_name)] = (service["spec"]["clusterIP"], int(port["port"]))
                programmed[(key, port_name)] = backends_of(slices.get(key, []), port_name)
        self._programmed = programmed
        for gone in set(self._proxies) - set(wanted):
            await self._proxies.pop(gone).close()
        for key_port, (address, port) in wanted.items():
            if key_port not in self._proxies:
                proxy = ServiceProxy(key_port[0], address, port, key_port[1], self._choose)
                await proxy.start()
                self._proxies[key_port] = proxy
        for listener in self.listeners:
            listener()


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("kube-proxy rule sync failed", exc_info=task.exception())


def _stored(store: Store, resource: str) -> list[dict[str, Any]]:
    """The stored objects themselves, not copies: read them, never change them."""
    items, _ = store.snapshot(resource)
    return [obj for _, obj in items]
