"""Reading a container's cgroup files: which files each signal needs, and keeping them open.

A container's files are opened once and re-read with `pread(fd, n, 0)`: on cgroupfs one
pread costs about a sixth of an open/read/close and needs no path lookup. Open descriptors
are bounded by an `FdBudget`; past it, files are opened and closed on every read. Errors
are sorted into the cases the sampler treats differently: the cgroup is gone (its directory
in the discovery hierarchy is), another hierarchy has no directory for this container, this
file is not provided (a controller or PSI not enabled), or the file could not be read.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from exporter.cgroups.layout import CgroupMode, Hierarchies


class CgroupFile(StrEnum):
    """The files the sampler reads, by what they are for."""

    CPU_STAT = "cpu_stat"  # v2 cpu.stat | v1 cpu/cpu.stat
    CPUACCT_USAGE = "cpuacct_usage"  # v1 cpuacct/cpuacct.usage
    MEMORY_USAGE = "memory_usage"  # v2 memory.current | v1 memory.usage_in_bytes
    MEMORY_STAT = "memory_stat"  # memory.stat
    MEMORY_LIMIT = "memory_limit"  # v2 memory.max | v1 memory.limit_in_bytes
    MEMORY_OOM = "memory_oom"  # v2 memory.events | v1 memory.oom_control
    PRESSURE_CPU = "pressure_cpu"  # v2 (or hybrid unified/) cpu.pressure
    PRESSURE_MEMORY = "pressure_memory"
    PRESSURE_IO = "pressure_io"


PRESSURE_FILES = {
    CgroupFile.PRESSURE_CPU: "cpu",
    CgroupFile.PRESSURE_MEMORY: "memory",
    CgroupFile.PRESSURE_IO: "io",
}

_V2_NAMES = {
    CgroupFile.CPU_STAT: "cpu.stat",
    CgroupFile.MEMORY_USAGE: "memory.current",
    CgroupFile.MEMORY_STAT: "memory.stat",
    CgroupFile.MEMORY_LIMIT: "memory.max",
    CgroupFile.MEMORY_OOM: "memory.events",
}
_PSI_NAMES = {
    CgroupFile.PRESSURE_CPU: "cpu.pressure",
    CgroupFile.PRESSURE_MEMORY: "memory.pressure",
    CgroupFile.PRESSURE_IO: "io.pressure",
}
_V1_NAMES = {
    CgroupFile.CPU_STAT: ("cpu", "cpu.stat"),
    CgroupFile.CPUACCT_USAGE: ("cpuacct", "cpuacct.usage"),
    CgroupFile.MEMORY_USAGE: ("memory", "memory.usage_in_bytes"),
    CgroupFile.MEMORY_STAT: ("memory", "memory.stat"),
    CgroupFile.MEMORY_LIMIT: ("memory", "memory.limit_in_bytes"),
    CgroupFile.MEMORY_OOM: ("memory", "memory.oom_control"),
}


def hierarchy_of(key: CgroupFile) -> str:
    """The hierarchy a file is read from on v1 and hybrid (`unified` for PSI)."""
    v1 = _V1_NAMES.get(key)
    return v1[0] if v1 is not None else "unified"


def files_of(h: Hierarchies, relpath: str) -> dict[CgroupFile, Path]:
    """The files to read for the container cgroup at `relpath`, in every hierarchy present.

    A v1 controller that is not mounted contributes nothing: its signals are simply absent.
    """
    out: dict[CgroupFile, Path] = {}
    if h.mode is CgroupMode.V2:
        assert h.unified is not None
        base = h.unified / relpath
        for key, name in _V2_NAMES.items():
            out[key] = base / name
    elif h.mode in (CgroupMode.V1, CgroupMode.HYBRID):
        roots = {"cpu": h.cpu, "cpuacct": h.cpuacct, "memory": h.memory}
        for key, (controller, name) in _V1_NAMES.items():
            root = roots[controller]
            if root is not None:
                out[key] = root / relpath / name
    if h.unified is not None and h.mode is not CgroupMode.NONE:
        base = h.unified / relpath
        for key, name in _PSI_NAMES.items():
            out[key] = base / name
    return out


class FdBudget:
    """How many cgroup files may stay open at once.

    Defaults to half of what RLIMIT_NOFILE leaves after a reserve for sockets and the rest
    of the agent; 330 containers need about 2,600 descriptors on v1 or hybrid, so an agent
    under a 1,024 soft limit should raise it (`raise_open_files_limit`).
    """

    RESERVE = 256

    def __init__(self, limit: int | None = None) -> None:
        if limit is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = 1 << 20 if soft == resource.RLIM_INFINITY else max(0, soft - self.RESERVE) // 2
        self.limit = limit
        self.in_use = 0

    def take(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def give_back(self) -> None:
        self.in_use -= 1


def raise_open_files_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (as Go's runtime does at start)
    so the sampler can keep every cgroup file open; returns the soft limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class Outcome(StrEnum):
    """What went wrong reading one file."""

    VANISHED = "vanished"  # the directory in the discovery hierarchy is gone: it exited
    # Another hierarchy has no directory for this container (on a hybrid host the cgroupfs
    # driver creates none under unified/): that hierarchy's signals are not provided.
    NO_DIRECTORY = "no_directory"
    ABSENT = "absent"  # the directory is there, the file is not: not provided here
    UNREADABLE = "unreadable"  # any other error (permission, I/O, not supported)


@dataclass(frozen=True, slots=True)
class ReadFailure:
    key: CgroupFile
    outcome: Outcome
    error: str


# cgroupfs answers ENODEV on a descriptor whose cgroup was removed, ENOENT on a path.
_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ESTALE, errno.ENOTDIR})
_FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})

# Large enough for every file read here (a memory.stat is 1.4 to 2 KiB) and cheaper to
# allocate than a larger one; a read that fills the buffer is repeated with a larger one.
_BUFSIZE = 4096
_SIZES = itertools.repeat(_BUFSIZE)  # endless: map stops with the descriptors
_OFFSETS = itertools.repeat(0)


# The key -> column maps of ContainerFiles, one per distinct key order: every container of
# a node reads the same files in the same order, so 330 containers share one small dict.
_INDEXES: dict[tuple[CgroupFile, ...], dict[CgroupFile, int]] = {}


# Which positions read_all reads for one key order (its shared index) and one `skip`.
_PLANS: dict[tuple[int, frozenset[CgroupFile]], tuple[dict[CgroupFile, int], tuple[int, ...]]] = {}


def _plan_of(index: dict[CgroupFile, int], skip: frozenset[CgroupFile]) -> tuple[int, ...]:
    """The positions of the keys of `index` not in `skip`, shared like the index."""
    cached = _PLANS.get((id(index), skip))
    if cached is not None and cached[0] is index:
        return cached[1]
    if len(_PLANS) > 256:
        _PLANS.clear()
    plan = tuple(i for k, i in index.items() if k not in skip)
    _PLANS[(id(index), skip)] = (index, plan)
    return plan


def _index_of(keys: list[CgroupFile]) -> dict[CgroupFile, int]:
    """The shared, never mutated key -> position map of this key order."""
    order = tuple(keys)
    index = _INDEXES.get(order)
    if index is None:
        if len(_INDEXES) > 64:  # a bound, not expected: a few layouts per host
            _INDEXES.clear()
        index = _INDEXES[order] = {k: i for i, k in enumerate(order)}
    return index


class ContainerFiles:
    """The files of one container cgroup, kept open and re-read in place on every pass.

    `read_all` re-reads every file and reports which ones changed since the last pass, so
    the sampler parses only those (a limit, memory.events or an idle PSI file rarely do).
    `home` is the container's directory in the discovery hierarchy: only its absence means
    the cgroup is gone (the files' own directories when not given, as on v2).

    Paths are kept as a directory and a file name per file, each directory string once per
    container and the file names shared: a `Path` per file cost about 450 bytes, 1.3 MiB
    for the reference node, and a path is needed only to open a file or explain an error.
    """

    __slots__ = (
        "_budget",
        "_complete",
        "_dirs",
        "_fds",
        "_home",
        "_names",
        "_ok",
        "_plan",
        "_plan_fds",
        "_plan_skip",
        "data",
        "index",
        "keys",
    )

    def __init__(
        self, paths: Mapping[CgroupFile, Path], budget: FdBudget, home: Path | None = None
    ) -> None:
        self._budget = budget
        self.keys: list[CgroupFile] = list(paths)
        # One string per directory, shared by its files (and with `home` on v2).
        self._home: str | None = None if home is None else str(home)
        dirs = {} if self._home is None else {self._home: self._home}
        split = [_split(paths[k], dirs) for k in self.keys]
        self._dirs: list[str] = [d for d, _ in split]
        self._names: list[str] = [n for _, n in split]
        self._fds: list[int] = [-1] * len(self.keys)
        self._ok: list[bool] = [False] * len(self.keys)  # read successfully at least once
        self.data: list[bytes | None] = [None] * len(self.keys)  # last content read
        self.index = _index_of(self.keys)
        # Which indexes read_all reads for a given `skip` (kept while `skip` is the same
        # object); every file is read on the first call.
        self._plan_skip: frozenset[CgroupFile] | None = None
        self._plan: tuple[int, ...] = ()
        # The descriptors of `_plan`, once every one of them is open: read_all then reads
        # them all with one `map` in C instead of a Python loop around each pread.
        self._plan_fds: tuple[int, ...] | None = None
        self._complete = False

    def get(self, key: CgroupFile) -> bytes | None:
        """The last content read of `key`, None if not read (or not read any more)."""
        i = self.index.get(key)
        return None if i is None else self.data[i]

    def read_all(
        self, skip: frozenset[CgroupFile] = frozenset()
    ) -> tuple[list[CgroupFile], list[tuple[CgroupFile, OSError]]]:
        """Re-read every file but those in `skip` that were read before: (files whose
        content changed, files that failed)."""
        data, keys, ok = self.data, self.keys, self._ok
        if skip is not self._plan_skip:
            # A new `skip` (the sampler alternates two) or a file added or dropped.
            self._plan_skip = skip
            self._plan = _plan_of(self.index, skip)
            kept = tuple(map(self._fds.__getitem__, self._plan)) if self._complete else (-1,)
            self._plan_fds = kept if min(kept, default=0) >= 0 else None
        plan_fds = self._plan_fds
        if plan_fds is not None:
            # Every file to read is open: one pread each from C. A failure, or a file that
            # fills the buffer, goes the careful way below (which reads them all again).
            try:
                news = list(map(os.pread, plan_fds, _SIZES, _OFFSETS))
            except OSError:
                news = None
            if news is not None and (not news or max(map(len, news)) < _BUFSIZE):
                changed = []
                for i, new in zip(self._plan, news, strict=True):
                    if new != data[i]:
                        data[i] = new
                        changed.append(keys[i])
                        ok[i] = True
                return changed, []
        changed = []
        failed: list[tuple[CgroupFile, OSError]] = []
        fds = self._fds
        for i in self._plan if self._complete else range(len(keys)):
            fd = fds[i]
            try:
                new = self._read_kept(i, fd) if fd >= 0 else self._open_and_read(i)
            except OSError as exc:
                failed.append((keys[i], exc))
                continue
            if new != data[i]:
                data[i] = new
                changed.append(keys[i])
                ok[i] = True
        self._complete = True
        open_fds = tuple(fds[i] for i in self._plan)
        self._plan_fds = open_fds if min(open_fds, default=0) >= 0 else None
        return changed, failed

    def read_one(self, key: CgroupFile) -> tuple[bool, OSError | None]:
        """Re-read one file: (whether its content changed, the error if it failed)."""
        i = self.index.get(key)
        if i is None:
            return False, None
        try:
            fd = self._fds[i]
            new = self._read_kept(i, fd) if fd >= 0 else self._open_and_read(i)
        except OSError as exc:
            return False, exc
        if new == self.data[i]:
            return False, None
        self.data[i] = new
        self._ok[i] = True
        return True, None

    def _read_kept(self, i: int, fd: int) -> bytes:
        """Re-read file `i` through its kept descriptor `fd`. cgroupfs answers ENODEV on a
        descriptor whose cgroup was removed; the directory may be there again (a cgroup
        made anew at the same path), so the file is opened again by its path: if the
        cgroup is gone for good, that open fails as a path would (ENOENT)."""
        try:
            new = os.pread(fd, _BUFSIZE, 0)
        except OSError as exc:
            if exc.errno != errno.ENODEV:
                raise
            self._close_fd(i)
            return self._open_and_read(i)
        return _read_whole(fd) if len(new) == _BUFSIZE else new

    def _open_and_read(self, i: int) -> bytes:
        path = f"{self._dirs[i]}/{self._names[i]}"
        if not self._budget.take():
            return _read_once(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._budget.give_back()
            if exc.errno in _FD_EXHAUSTED:
                self._budget.limit = self._budget.in_use  # learn the real limit
                return _read_once(path)
            raise
        self._fds[i] = fd
        self._plan_fds = None
        data = os.pread(fd, _BUFSIZE, 0)
        return _read_whole(fd) if len(data) == _BUFSIZE else data

    def was_read(self, key: CgroupFile) -> bool:
        i = self.index.get(key)
        return i is not None and self._ok[i]

    def classify(self, key: CgroupFile, exc: OSError) -> Outcome:
        """Why reading `key` failed. Checks whether the directories still exist only on
        this error path, so a healthy pass makes no extra system calls. Only the discovery
        hierarchy's directory decides that the cgroup is gone; a file whose own directory
        in another hierarchy is missing is merely not provided there."""
        if exc.errno in _GONE:
            directory = self._dirs[self.index[key]]
            home = directory if self._home is None else self._home
            if not os.path.isdir(home):
                return Outcome.VANISHED
            if directory != home and not os.path.isdir(directory):
                return Outcome.NO_DIRECTORY
            return Outcome.ABSENT
        return Outcome.UNREADABLE

    def __contains__(self, key: CgroupFile) -> bool:
        return key in self.index

    def path(self, key: CgroupFile) -> Path:
        i = self.index[key]
        return Path(f"{self._dirs[i]}/{self._names[i]}")

    def directory(self, key: CgroupFile) -> str:
        """The directory `key` is read from (the string kept, no `Path` made)."""
        return self._dirs[self.index[key]]

    def add(self, key: CgroupFile, path: Path | str) -> None:
        """Read one more file from the next `read_all` on (a hierarchy's directory for
        this container appeared); that call then reads every file once, as the first did."""
        if key in self.index:
            return
        self.keys.append(key)
        directory, name = _split(path, {d: d for d in self._dirs})
        self._dirs.append(directory)
        self._names.append(name)
        self._fds.append(-1)
        self._ok.append(False)
        self.data.append(None)
        self.index = _index_of(self.keys)
        self._plan_skip = None
        self._plan_fds = None
        self._complete = False

    def drop(self, key: CgroupFile) -> None:
        """Stop reading one file of this container (not provided, or failing)."""
        i = self.index.get(key)
        if i is None:
            return
        self._close_fd(i)
        for column in (self.keys, self._dirs, self._names, self._fds, self._ok, self.data):
            del column[i]
        self.index = _index_of(self.keys)
        self._plan_skip = None
        self._plan_fds = None

    def _close_fd(self, i: int) -> None:
        fd = self._fds[i]
        if fd >= 0:
            self._fds[i] = -1
            self._plan_fds = None
            self._budget.give_back()
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for i in range(len(self._fds)):
            self._close_fd(i)

    @property
    def open_files(self) -> int:
        return sum(1 for fd in self._fds if fd >= 0)


def _split(path: Path | str, dirs: dict[str, str]) -> tuple[str, str]:
    """(directory, file name) of `path`, the directory string shared through `dirs`."""
    directory, name = os.path.split(str(path))
    directory = directory or "."
    return dirs.setdefault(directory, directory), sys.intern(name)


def _read_once(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _BUFSIZE)
        if len(data) == _BUFSIZE:
            data = _read_whole(fd)
        return data
    finally:
        os.close(fd)


def _read_whole(fd: int) -> bytes:
    size = _BUFSIZE
    while True:
        size *= 4
        data = os.pread(fd, size, 0)
        if len(data) < size:
            return data
