"""A kubelet-like cgroup tree in the machine's own cgroupfs, for the real-kernel test and the
benchmark: uniquely named, below the test process's own cgroup in each hierarchy (as a
delegated subtree would be), and removed leaf-first by `cleanup`, which also kills every
process it started. Raises `NotWritable` with the reason where that cannot be done.

`HostContainerCgroup` is one container cgroup at the host's own kubepods path (the
cgroupfs driver's layout on a hybrid host), for the whole agent run at the host's root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from exporter.cgroups.layout import CgroupMode, detect_hierarchies

HOST_ROOT = Path("/sys/fs/cgroup")

# Writes its pid into every cgroup.procs named on the command line, then runs the code in
# the first argument: the process starts its work already inside the container's cgroups.
_JOIN = (
    "import os, sys\n"
    "for p in sys.argv[2:]:\n"
    "    with open(p, 'w') as f: f.write(str(os.getpid()))\n"
    "exec(sys.argv[1])\n"
)


class NotWritable(Exception):
    """The machine's cgroupfs cannot host the test tree; the message says why."""


def _own_cgroups() -> dict[str, str]:
    """Controller (or "" for the v2 tree) -> this process's cgroup path."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


class RealTree:
    """Cgroups created under `<hierarchy>/<own cgroup>/<unique>` in each hierarchy read by
    the sampler; `root` is what the sampler is given (a directory of symlinks on v1)."""

    def __init__(self, link_dir: Path, host_root: Path = HOST_ROOT) -> None:
        self.host_root = host_root
        self.link_dir = link_dir
        self.unique = f"tailwatch-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.bases: dict[str, Path] = {}
        self.created: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.mode = CgroupMode.NONE
        self.root = link_dir

    # --- set-up ---

    def setup(self) -> Path:
        h = detect_hierarchies(self.host_root)
        self.mode = h.mode
        own = _own_cgroups()
        if h.mode is CgroupMode.V2:
            base = self.host_root / own.get("", "/").lstrip("/")
            enabled = (base / "cgroup.subtree_control").read_text().split()
            if not {"cpu", "memory"} <= set(enabled):
                raise NotWritable(
                    f"cgroup v2: cpu and memory are not enabled for children of {base} "
                    "(not a delegated subtree)"
                )
            self.bases = {"unified": base / self.unique}
        elif h.mode in (CgroupMode.V1, CgroupMode.HYBRID):
            for controller in ("cpu", "cpuacct", "memory"):
                mount = getattr(h, controller)
                if mount is None:
                    raise NotWritable(f"cgroup v1 without the {controller} controller")
                self.bases[controller] = mount / own.get(controller, "/").lstrip("/") / self.unique
            if h.mode is CgroupMode.HYBRID and h.unified is not None:
                self.bases["unified"] = h.unified / own.get("", "/").lstrip("/") / self.unique
        else:
            raise NotWritable(f"no cgroup hierarchy at {self.host_root}")
        for base in self._distinct_bases():
            try:
                base.mkdir()
            except OSError as exc:
                self.cleanup()
                raise NotWritable(f"cannot create {base}: {exc.strerror}") from exc
            self.created.append(base)
        if h.mode is CgroupMode.V2:
            (self.bases["unified"] / "cgroup.subtree_control").write_text("+cpu +memory")
            self.root = self.bases["unified"]
        else:
            self.link_dir.mkdir(parents=True, exist_ok=True)
            for name, base in self.bases.items():
                (self.link_dir / name).symlink_to(base)
            self.root = self.link_dir
        return self.root

    def _distinct_bases(self) -> list[Path]:
        seen: set[str] = set()
        out: list[Path] = []
        for base in self.bases.values():
            key = os.path.realpath(base.parent) + "/" + base.name
            if key not in seen:
                seen.add(key)
                out.append(base)
        return out

    def mkdir(self, relpath: str) -> None:
        """Create `relpath` (and its parents) in every hierarchy, remembering each for cleanup."""
        parts = relpath.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            for base in self._distinct_bases():
                path = base / rel
                if not path.exists():
                    path.mkdir()
                    self.created.append(path)
                    if self.mode is CgroupMode.V2 and i < len(parts):
                        (path / "cgroup.subtree_control").write_text("+cpu +memory")

    def path(self, controller: str, relpath: str) -> Path:
        return self.bases[controller] / relpath

    def procs_files(self, relpath: str) -> list[str]:
        return [str(base / relpath / "cgroup.procs") for base in self._distinct_bases()]

    def set_cpu_quota(self, relpath: str, quota_usec: int, period_usec: int = 100_000) -> None:
        if self.mode is CgroupMode.V2:
            (self.path("unified", relpath) / "cpu.max").write_text(f"{quota_usec} {period_usec}")
        else:
            (self.path("cpu", relpath) / "cpu.cfs_period_us").write_text(str(period_usec))
            (self.path("cpu", relpath) / "cpu.cfs_quota_us").write_text(str(quota_usec))

    def set_memory_limit(self, relpath: str, limit: int) -> None:
        if self.mode is CgroupMode.V2:
            (self.path("unified", relpath) / "memory.max").write_text(str(limit))
            swap = self.path("unified", relpath) / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")
            return
        memory = self.path("memory", relpath)
        (memory / "memory.limit_in_bytes").write_text(str(limit))
        memsw = memory / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # no escape into swap: the limit must end in an OOM kill
            memsw.write_text(str(limit))

    def start(self, relpath: str, code: str) -> subprocess.Popen[bytes]:
        """Run `code` in a Python process that first joins the cgroup `relpath`."""
        proc = _start(code, self.procs_files(relpath))
        self.processes.append(proc)
        return proc

    # --- clean-up ---

    def cleanup(self, deadline_seconds: float = 10.0) -> list[str]:
        """Kill the processes started here (by pid), then remove every directory created
        here, deepest first. Returns what could not be removed."""
        _kill_all(self.processes, deadline_seconds)
        end = time.monotonic() + deadline_seconds
        deepest_first = sorted(self.created, key=lambda p: len(p.parts), reverse=True)
        leftovers = [problem for path in deepest_first if (problem := _rmdir(path, end))]
        self.created.clear()
        for name in list(self.bases):
            link = self.link_dir / name
            if link.is_symlink():
                link.unlink()
        return leftovers


def _start(code: str, procs_files: list[str]) -> subprocess.Popen[bytes]:
    """A Python process that writes its pid into each of `procs_files`, then runs `code`."""
    return subprocess.Popen(
        [sys.executable, "-c", _JOIN, code, *procs_files],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _kill_all(processes: list[subprocess.Popen[bytes]], deadline_seconds: float) -> None:
    """Kill each process still running (by pid), reap it and close its pipes; empties the
    list."""
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=deadline_seconds)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    processes.clear()


def _rmdir(path: Path, end: float) -> str | None:
    """Remove the cgroup `path` (gone already is fine); None once it is gone, else why not.
    A cgroup whose last task just exited can stay busy for a moment: while EBUSY and before
    the monotonic time `end`, wait for it to empty and try again."""
    while True:
        try:
            path.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EBUSY and time.monotonic() < end:
                _wait_unpopulated(path, end)
                continue
            return f"{path}: {exc.strerror}"


def _wait_unpopulated(path: Path, end: float) -> None:
    """Poll (bounded by `end`) until the cgroup has no tasks left: v1 offers nothing to
    block on for this."""
    tasks = path / ("tasks" if (path / "tasks").exists() else "cgroup.procs")
    while time.monotonic() < end:
        try:
            if not tasks.read_text().strip():
                return
        except OSError:
            return
        time.sleep(0.01)


class HostContainerCgroup:
    """One container cgroup laid out as the kubelet's cgroupfs driver does it on a hybrid
    host, at the top of the machine's own v1 controllers: `<controller>/kubepods/<qos>/
    pod<uid>/<container id>` in cpu, cpuacct, memory and pids (each once, whether mounted
    apart or co-mounted), and nothing under unified/. For the whole agent run with
    --cgroup-root at the host's root.

    Only what it creates is ever removed: the pod and container directories always are
    (they carry a random pod uid); `kubepods` and the QoS directory only when this object
    created them and no other cgroup is left in them. Raises `NotWritable` where the host
    is not hybrid or its cgroupfs not writable.
    """

    CONTROLLERS = ("cpu", "cpuacct", "memory", "pids")

    def __init__(
        self, pod_uid: str, container_id: str, qos: str = "burstable", host_root: Path = HOST_ROOT
    ) -> None:
        self.host_root = host_root
        self.relpath = f"kubepods/{qos}/pod{pod_uid}/{container_id}"
        self.controllers: dict[str, Path] = {}  # controller -> where it is mounted
        self.mounts: dict[str, Path] = {}  # the distinct mounts among those
        self.created: list[Path] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def setup(self) -> None:
        h = detect_hierarchies(self.host_root)
        if h.mode is not CgroupMode.HYBRID:
            raise NotWritable(f"{self.host_root} is not a hybrid cgroup host ({h.mode.value})")
        found = {"cpu": h.cpu, "cpuacct": h.cpuacct, "memory": h.memory}
        pids = self.host_root / "pids"
        if pids.is_dir():
            found["pids"] = pids
        for controller in ("cpu", "cpuacct", "memory"):
            if found[controller] is None:
                raise NotWritable(f"no {controller} controller at {self.host_root}")
        seen: set[str] = set()
        for controller, mount in found.items():
            assert mount is not None
            self.controllers[controller] = mount
            real = os.path.realpath(mount)
            if real not in seen:  # cpu and cpuacct co-mounted: one directory for both
                seen.add(real)
                self.mounts[controller] = mount
        try:
            for mount in self.mounts.values():
                self._mkdirs(mount)
        except OSError as exc:
            self.cleanup()
            raise NotWritable(f"cannot create {self.relpath}: {exc.strerror}") from exc

    def _mkdirs(self, mount: Path) -> None:
        parts = self.relpath.split("/")
        for i in range(1, len(parts) + 1):
            path = mount.joinpath(*parts[:i])
            try:
                path.mkdir()
            except FileExistsError:
                if i >= len(parts) - 1:
                    raise  # a random pod uid: its directory cannot be there already
                continue
            self.created.append(path)

    def path(self, controller: str) -> Path:
        return self.controllers[controller] / self.relpath

    def set_cpu_quota(self, quota_usec: int, period_usec: int = 100_000) -> None:
        (self.path("cpu") / "cpu.cfs_period_us").write_text(str(period_usec))
        (self.path("cpu") / "cpu.cfs_quota_us").write_text(str(quota_usec))

    def set_memory_limit(self, limit: int) -> None:
        (self.path("memory") / "memory.limit_in_bytes").write_text(str(limit))

    def start(self, code: str) -> subprocess.Popen[bytes]:
        """Run `code` in a Python process that first joins the container's cgroup in every
        controller (its pid written to each cgroup.procs)."""
        procs = [str(mount / self.relpath / "cgroup.procs") for mount in self.mounts.values()]
        proc = _start(code, procs)
        self.processes.append(proc)
        return proc

    def stop_processes(self, deadline_seconds: float = 10.0) -> None:
        _kill_all(self.processes, deadline_seconds)

    def remove_container(self, deadline_seconds: float = 10.0) -> list[str]:
        """Kill the processes, then remove the container's directory in every controller
        (as the runtime does when a container exits); returns what could not be removed."""
        self.stop_processes(deadline_seconds)
        leaves = [p for p in self.created if p.name == self.relpath.rsplit("/", 1)[1]]
        return self._remove(leaves, deadline_seconds)

    def cleanup(self, deadline_seconds: float = 10.0) -> list[str]:
        """Kill the processes, remove every directory created here, deepest first; returns
        what could not be removed (shared parents still holding other cgroups excepted)."""
        self.stop_processes(deadline_seconds)
        return self._remove(list(self.created), deadline_seconds)

    def _remove(self, paths: list[Path], deadline_seconds: float) -> list[str]:
        ours = self.relpath.split("/")[2:]  # the pod and container directories
        leftovers: list[str] = []
        end = time.monotonic() + deadline_seconds
        for path in sorted(paths, key=lambda p: len(p.parts), reverse=True):
            if path.name not in ours:
                # kubepods or the QoS level: one try, no waiting; if it still holds others'
                # cgroups it stays, and that is no leftover.
                _rmdir(path, end=0.0)
            elif problem := _rmdir(path, end):
                leftovers.append(problem)
            if not path.exists():
                self.created.remove(path)
        return leftovers
