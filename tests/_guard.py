"""The loopback guard: nothing the tests run may address anything but this machine.

The project's rule is that tests, the simulator and the benchmarks address only loopback
(127.0.0.0/8, ::1, unix sockets). This module enforces it with an audit hook
(`sys.addaudithook`), which sees every socket call of the process, in every thread and
through every library (asyncio, aiohttp, urllib3, the Kubernetes client):

- `socket.connect` (also `connect_ex` and asyncio's non-blocking connects), `socket.sendto`
  and `socket.sendmsg` to an AF_INET/AF_INET6 address outside loopback, including the
  wildcard (0.0.0.0, ::, "") and a hostname the hosts file does not map to loopback;
- `socket.bind` to such an address: a test that listens on every interface is reachable
  from off the machine;
- `socket.getaddrinfo`, `gethostbyname` of a name that is neither an IP literal nor a
  loopback name of the hosts file, and the reverse look-ups (`gethostbyaddr`,
  `getnameinfo` without NI_NUMERICHOST) of an address the hosts file does not answer: the
  C resolver sends its DNS packets without raising any audit event, so the name is refused
  before it is looked up. (A raw `sock.connect((name, port))` resolves the name in C before
  its audit event: the guard refuses the connect but cannot stop that look-up. asyncio,
  aiohttp, urllib3 and `socket.create_connection` all call `getaddrinfo` first.)

A refused call raises `OffLoopbackError` (a PermissionError, as from a firewall, so the code
under test takes its ordinary error path and no packet leaves) and is reported to the
installed `report` callable: the test session records it and fails the test even if the
code under test swallowed the error. Audit hooks cannot be removed, so one hook is
installed per process and only its `report` is swapped.

Standard library only: `tests/_sitecustomize/sitecustomize.py` loads this file by path in
every Python process the test session starts, where neither pytest nor the project may be
importable.
"""

from __future__ import annotations

import _socket
import contextlib
import ipaddress
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The environment variable that turns the guard on in child processes; its value is the
#: file they append their violations to. Not TAILWATCH_*: tests strip those from the
#: environment of the agents they start.
ENV = "TESTS_LOOPBACK_GUARD"
#: Where the one guard of a process keeps its state, shared by every copy of this module
#: (the sitecustomize loads it under another name than `tests._guard`).
_ATTR = "_tailwatch_tests_loopback_guard"
_INET = (socket.AF_INET, socket.AF_INET6)
#: A socket's family as a plain int: `socket.socket.family` makes an enum on every read.
_family = _socket.socket.family.__get__
HOSTS = Path("/etc/hosts")


class OffLoopbackError(PermissionError):
    """A test addressed something outside loopback."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def is_loopback_ip(text: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x."""
    ip = _ip(text)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def hosts_file(path: Path = HOSTS) -> tuple[frozenset[str], frozenset[str]]:
    """(names the hosts file maps only to loopback, addresses it names): these resolve,
    and reverse-resolve, without a DNS packet."""
    loopback: set[str] = set()
    elsewhere: set[str] = set()
    addresses: set[str] = set()
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        address, *names = line.partition("#")[0].split()
        if not names:
            continue
        addresses.add(address)
        (loopback if is_loopback_ip(address) else elsewhere).update(n.lower() for n in names)
    return frozenset(loopback - elsewhere), frozenset(addresses)


class Guard:
    """The audit hook and what it reports to."""

    def __init__(self, report: Callable[[str], None]) -> None:
        self.report = report
        names, addresses = hosts_file()
        self.names = names | {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}
        self.addresses = addresses | {"127.0.0.1", "::1"}
        self._kinds: dict[str, str] = {}  # host -> _kind(host): a test dials few hosts
        self._handlers: dict[str, Callable[[tuple[Any, ...]], str | None]] = {
            "socket.connect": self._dial,
            "socket.sendto": self._dial,
            "socket.sendmsg": self._dial,
            "socket.bind": self._bind,
            "socket.getaddrinfo": self._lookup,
            "socket.gethostbyname": self._lookup,
            "socket.gethostbyaddr": self._reverse,
            "socket.getnameinfo": self._reverse_sockaddr,
        }

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        handler = self._handlers.get(event)
        if handler is None:
            return
        problem = handler(args)
        if problem is None:
            return
        message = f"{problem}: tests may only address loopback (127.0.0.0/8, ::1, unix sockets)"
        where = "".join(traceback.format_stack(limit=12)[:-1])  # without this frame
        with contextlib.suppress(Exception):  # the error below must be raised whatever
            self.report(f"{message}\n{where}")
        raise OffLoopbackError(message)

    # -- the checks: each returns what is wrong, or None -------------------------------

    def loopback_name(self, host: str) -> bool:
        host = host.lower()
        return host in self.names or host.endswith(".localhost")

    def _address(self, args: tuple[Any, ...], verb: str) -> str | None:
        sock, address = args[0], args[1]
        if not isinstance(address, tuple) or _family(sock) not in _INET:
            return None  # AF_UNIX, AF_NETLINK, ..., or a connected socket's sendmsg
        if not address:
            return None
        host, port = address[0], (address[1] if len(address) > 1 else "?")
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if not isinstance(host, str):
            return None  # not an address: the call itself refuses it
        kind = self._kinds.get(host)
        if kind is None:
            kind = self._kinds[host] = self._kind(host)
        if kind == "loopback":
            return None
        if kind == "wildcard":
            return f"test tried to {verb} {host or '0.0.0.0'} port {port}, every interface"
        if kind == "ip":
            return f"test tried to {verb} {host} port {port}"
        return f"test tried to {verb} {host!r} port {port}, a name only DNS could resolve"

    def _kind(self, host: str) -> str:
        """loopback, wildcard, ip (another address) or name (one only DNS could resolve)."""
        if host in ("", "0.0.0.0", "::"):
            return "wildcard"
        if _ip(host) is not None:
            return "loopback" if is_loopback_ip(host) else "ip"
        return "loopback" if self.loopback_name(host) else "name"

    def _dial(self, args: tuple[Any, ...]) -> str | None:
        return self._address(args, "reach")

    def _bind(self, args: tuple[Any, ...]) -> str | None:
        return self._address(args, "listen on")

    def _lookup(self, args: tuple[Any, ...]) -> str | None:
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if host is None or not isinstance(host, str) or _ip(host) is not None:
            return None  # a passive or numeric look-up sends nothing
        if host == "" or self.loopback_name(host):
            return None
        return f"test tried to resolve {host!r}, a name only DNS could resolve"

    def _reverse(self, args: tuple[Any, ...]) -> str | None:
        host = args[0]
        if not isinstance(host, str) or host in self.addresses or self.loopback_name(host):
            return None
        return f"test tried to reverse-resolve {host!r}, which only DNS could answer"

    def _reverse_sockaddr(self, args: tuple[Any, ...]) -> str | None:
        sockaddr, flags = args[0], args[1]
        if isinstance(flags, int) and flags & socket.NI_NUMERICHOST:
            return None
        if not isinstance(sockaddr, tuple) or not sockaddr:
            return None
        return self._reverse((sockaddr[0],))


def install(report: Callable[[str], None]) -> Guard:
    """The process' guard, installed on first use; later calls only change its `report`."""
    guard: Guard | None = getattr(sys, _ATTR, None)
    if guard is None:
        guard = Guard(report)
        setattr(sys, _ATTR, guard)
        sys.addaudithook(guard.hook)
    else:
        guard.report = report
    return guard


def install_in_child(log: str) -> None:
    """The guard of a process the tests started: every violation is a line on stderr and a
    line appended to `log`, which the test session reads after each test."""
    program = " ".join(sys.orig_argv)[:200]

    def report(violation: str) -> None:
        message, _, where = violation.partition("\n")
        line = f"loopback guard: pid {os.getpid()} ({program}): {message}"
        print(f"{line}\n{where}", file=sys.stderr, flush=True)
        with open(log, "a", encoding="utf-8") as out:
            out.write(line.replace("\n", " ") + "\n")

    install(report)
