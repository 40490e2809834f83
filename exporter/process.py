"""The standard `process_*` families of Prometheus' client libraries, for the agent's own
process: CPU seconds, resident and virtual memory, open and maximum file descriptors,
start time. They let a user check the agent's cost against its budget (docs/design.md,
*Reference load and budgets*) on their own nodes, with the queries and panels they already
use for every other exporter; the Node dashboard shows them.

Named, typed, helped and computed as client_python's `ProcessCollector` does (client_golang's
on Linux has the same names and meanings), so /metrics reads as any exporter's: from
`<proc>/<pid>/stat` (utime + stime, vsize, rss in pages, starttime in clock ticks after
`btime` of `<proc>/stat`), the `Max open files` soft limit of `<proc>/<pid>/limits`, and the
open descriptors of `<proc>/<pid>/fd`, counted as prometheus/procfs counts them
(`ProcessSource._open_fds`: on Linux 6.2+, one fewer than client_python, which counts the
descriptor it opens to list them). Otherwise the very lines client_python writes.

Read at scrape time, never sampled: two small reads and one stat, ~25 µs a scrape
(docs/metrics.md). Without /proc (no `btime` to read when the source is made) the families
are absent, as with the client libraries; a file that cannot be read at a scrape leaves its
families without a series for that scrape.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from exporter.catalogue import (
    PROCESS_CPU,
    PROCESS_MAX_FDS,
    PROCESS_OPEN_FDS,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_START_TIME,
    PROCESS_VIRTUAL_MEMORY,
    FamilySnapshot,
    Series,
)

#: A /proc file is read in one read() of at most this: stat and limits are under 2 kB.
_READ_SIZE = 16384
_NO_SERIES: list[Series] = []


def _read(path: str) -> bytes | None:
    """The content of a small /proc file in one read(), None if it cannot be read. os.open
    and os.read, not open(): no buffered file object to make for a 300-byte read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, _READ_SIZE)
    except OSError:
        return None
    finally:
        os.close(fd)


def _sysconf(name: str, default: int) -> int:
    try:
        value = os.sysconf(name)
    except (ValueError, OSError, AttributeError):
        return default
    return value if value > 0 else default


def _boot_time(proc: str) -> float | None:
    """`btime` of `<proc>/stat`: the boot time, in seconds since the epoch."""
    data = _read(os.path.join(proc, "stat"))
    for line in (data or b"").splitlines():
        if line.startswith(b"btime "):
            try:
                return float(line.split()[1])
            except (ValueError, IndexError):
                return None
    return None


class ProcessSource:
    """The process families of the process `pid` ("self": the agent), read from `proc`.

    `pagesize` and `ticks` (clock ticks per second) default to the system's; tests that
    read a fixture /proc fix them, so that its exposition is the same on every machine."""

    def __init__(
        self,
        proc: str | os.PathLike[str] = "/proc",
        pid: str = "self",
        *,
        pagesize: int | None = None,
        ticks: int | None = None,
    ) -> None:
        root = os.fspath(proc)
        base = os.path.join(root, pid)
        self._stat = os.path.join(base, "stat")
        self._limits = os.path.join(base, "limits")
        self._fd = os.path.join(base, "fd")
        self._pagesize = pagesize or _sysconf("SC_PAGE_SIZE", 4096)
        self._ticks = float(ticks or _sysconf("SC_CLK_TCK", 100))
        self._boot_time = _boot_time(root)
        #: The system's procfs, whose directory sizes count entries (not a fixture tree).
        self._real = os.path.realpath(root) == "/proc"

    @property
    def available(self) -> bool:
        """Whether there is a /proc to read (else `snapshot()` has no family)."""
        return self._boot_time is not None

    def snapshot(self) -> Iterable[FamilySnapshot]:
        if self._boot_time is None:
            return ()
        return (*self._stat_families(self._boot_time), *self._fd_families())

    def _stat_families(self, boot_time: float) -> tuple[FamilySnapshot, ...]:
        families = (PROCESS_VIRTUAL_MEMORY, PROCESS_RESIDENT_MEMORY, PROCESS_START_TIME,
                    PROCESS_CPU)  # fmt: skip
        data = _read(self._stat) or b""
        try:
            # After the command's closing parenthesis (the command may hold any byte but
            # NUL, parentheses and spaces included): the fields from `state` (3) on.
            fields = data[data.rindex(b")") + 1 :].split()
            ticks = self._ticks
            # prometheus_client's arithmetic, in its order, for the same floats.
            values: tuple[float, ...] = (
                int(fields[20]),
                int(fields[21]) * self._pagesize,
                float(fields[19]) / ticks + boot_time,
                float(fields[11]) / ticks + float(fields[12]) / ticks,
            )
        except (ValueError, IndexError):
            return tuple(FamilySnapshot(f, _NO_SERIES) for f in families)
        return tuple(FamilySnapshot(f, [((), v)]) for f, v in zip(families, values, strict=True))

    def _fd_families(self) -> tuple[FamilySnapshot, FamilySnapshot]:
        try:
            max_fds = _max_open_files(_read(self._limits) or b"")
            open_fds = self._open_fds()
        except (OSError, ValueError):
            return (FamilySnapshot(PROCESS_OPEN_FDS, _NO_SERIES),
                    FamilySnapshot(PROCESS_MAX_FDS, _NO_SERIES))  # fmt: skip
        return (
            FamilySnapshot(PROCESS_OPEN_FDS, [((), open_fds)]),
            FamilySnapshot(PROCESS_MAX_FDS, [((), max_fds)]),
        )

    def _open_fds(self) -> int:
        """The size of the real /proc's fd directory is the number of open descriptors
        (Linux 6.2 and later; 0 before): one stat, where listing them costs ~0.5 µs each,
        over a millisecond for the agent's thousands of cgroup files kept open. Otherwise,
        and for any other directory (a fixture), its entries, the one listing them included,
        as client_python counts them; prometheus/procfs does the same, fast path included."""
        if self._real:
            size = os.stat(self._fd).st_size
            if size > 0:
                return size
        return len(os.listdir(self._fd))


def _max_open_files(limits: bytes) -> float:
    """The soft `Max open files` of a /proc limits file (+Inf for `unlimited`)."""
    for line in limits.splitlines():
        if line.startswith(b"Max open files"):
            soft = line.split()[3]
            return math.inf if soft == b"unlimited" else float(soft)
    raise ValueError("no Max open files")
