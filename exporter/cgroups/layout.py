"""Which cgroup directory is which container: hierarchy detection (v1, v2, hybrid) and the
kubelet's directory layouts (systemd and cgroupfs drivers, containerd, CRI-O, Docker, QoS).

Name parsing is pure. `KubepodsTree` lists directories (the only I/O here) and keeps what
it found, so the sampler can rescan one pod or one QoS class instead of the whole tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class CgroupMode(StrEnum):
    """How the host mounts cgroupfs."""

    V2 = "v2"  # unified: one hierarchy at the root, cgroup.controllers in it
    V1 = "v1"  # one hierarchy per controller: cpu, cpuacct, memory, ...
    HYBRID = "hybrid"  # v1 controllers plus a controller-less v2 tree at unified/ (PSI)
    NONE = "none"  # nothing we recognise at the root


@dataclass(frozen=True, slots=True)
class Hierarchies:
    """Where each hierarchy the sampler reads is mounted; None where it is absent.

    On v2 everything is read from `unified`. On v1 and hybrid, `cpu`, `cpuacct` and
    `memory` are the controller roots (often `cpu` and `cpuacct` are symlinks to one
    co-mounted `cpu,cpuacct`, or both are that co-mount; mounted apart works too), and on
    hybrid `unified` holds the PSI files. Only the discovery hierarchy says whether a
    container's cgroup exists: the others may have no directory for it (the cgroupfs
    driver on a hybrid host creates none under `unified`), which only removes signals.
    """

    mode: CgroupMode
    unified: Path | None = None
    cpu: Path | None = None
    cpuacct: Path | None = None
    memory: Path | None = None

    @property
    def discovery_root(self) -> Path | None:
        """The hierarchy whose directories are listed to find containers, and the one whose
        directory going away means the container's cgroup is gone. The kubelet uses the
        same relative path in every hierarchy, but not every hierarchy has a directory for
        every container (nothing under `unified` with the cgroupfs driver on hybrid)."""
        if self.mode is CgroupMode.V2:
            return self.unified
        return self.cpu or self.memory or self.cpuacct


def detect_hierarchies(root: Path) -> Hierarchies:
    """Recognise the layout mounted at `root` (normally /sys/fs/cgroup)."""
    if (root / "cgroup.controllers").is_file():
        return Hierarchies(CgroupMode.V2, unified=root)
    found = {c: _controller_mount(root, c) for c in ("cpu", "cpuacct", "memory")}
    if not any(found.values()):
        return Hierarchies(CgroupMode.NONE)
    unified = root / "unified"
    hybrid = (unified / "cgroup.controllers").is_file()
    return Hierarchies(
        CgroupMode.HYBRID if hybrid else CgroupMode.V1,
        unified=unified if hybrid else None,
        cpu=found["cpu"],
        cpuacct=found["cpuacct"],
        memory=found["memory"],
    )


def _controller_mount(root: Path, controller: str) -> Path | None:
    """Where a v1 controller is mounted: `root/<controller>` (a mount of its own, or the
    symlink most distributions add to a co-mount), else a co-mount named after all its
    controllers (`cpu,cpuacct` or `cpuacct,cpu`) without those symlinks, as some container
    images of the host's cgroupfs have it."""
    path = root / controller
    if path.is_dir():
        return path
    try:
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if "," in e.name)
    except OSError:
        return None
    for name in names:
        if controller in name.split(",") and (root / name).is_dir():
            return root / name
    return None


# --- names ------------------------------------------------------------------------------

QOS_GUARANTEED = "guaranteed"
QOS_BURSTABLE = "burstable"
QOS_BESTEFFORT = "besteffort"

# systemd: kubepods.slice; cgroupfs: kubepods; a kubelet run with --cgroup-root=/kubelet
# under systemd (kind) nests it as kubelet.slice/kubelet-kubepods.slice.
_KUBEPODS = re.compile(r"^(?:kubepods|kubepods\.slice|[\w-]+-kubepods\.slice)$")
# systemd: kubepods-burstable.slice (or <prefix>-kubepods-burstable.slice); cgroupfs: burstable.
_QOS = re.compile(r"^(?:(?:[\w-]+-)?kubepods-)?(burstable|besteffort)(?:\.slice)?$")
# systemd: kubepods-burstable-pod<uid, '-' written as '_'>.slice, kubepods-pod<uid>.slice
# for Guaranteed pods; cgroupfs: pod<uid>.
_POD = re.compile(
    r"^(?:[\w-]*-)?pod([0-9a-fA-F]{8}[-_](?:[0-9a-fA-F]{4}[-_]){3}[0-9a-fA-F]{12})(?:\.slice)?$"
)
# systemd: cri-containerd-<id>.scope, crio-<id>.scope, docker-<id>.scope; cgroupfs: <id>
# (containerd, Docker) or crio-<id> (CRI-O). CRI-O's crio-conmon-<id> is not a container.
_CONTAINER = re.compile(r"^(?:(cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$")

_RUNTIME_OF_PREFIX = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


def is_kubepods_dir(name: str) -> bool:
    return _KUBEPODS.match(name) is not None


def qos_of_dir(name: str) -> str | None:
    """`burstable` or `besteffort` for a QoS-class directory, else None."""
    m = _QOS.match(name)
    return m.group(1) if m else None


def pod_uid_of_dir(name: str) -> str | None:
    """The pod UID (with dashes) encoded in a pod directory name, else None."""
    m = _POD.match(name)
    return m.group(1).replace("_", "-").lower() if m else None


def container_id_of_dir(name: str) -> tuple[str, str] | None:
    """(runtime or "" when the name does not say, container id) of a container directory."""
    m = _CONTAINER.match(name)
    if m is None:
        return None
    prefix = m.group(1)
    return (_RUNTIME_OF_PREFIX[prefix] if prefix else "", m.group(2))


def container_id_of_status(container_id: str) -> str | None:
    """The bare id of a pod status `containerID` ("containerd://<id>", "cri-o://<id>",
    "docker://<id>"), or None when it is empty or not of that form."""
    _, sep, bare = container_id.partition("://")
    if not sep or not bare:
        return None
    return bare.lower()


# --- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerDir:
    """One container cgroup found under kubepods; `relpath` is relative to the hierarchy
    root and is the same in every hierarchy."""

    relpath: str
    pod_uid: str
    container_id: str
    qos: str
    runtime: str  # from the directory name; "" for cgroupfs-driver containerd/Docker ids
    preexisting: bool  # present at the first scan: its counters predate the agent


@dataclass(slots=True)
class _PodDir:
    relpath: str
    qos: str
    containers: dict[str, ContainerDir]


def _subdirs(path: str) -> Iterator[str]:
    """Names of the subdirectories of `path`; nothing if it vanished meanwhile."""
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    if entry.is_dir():
                        yield entry.name
                except OSError:
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return


class KubepodsTree:
    """The container cgroups under the kubelet's kubepods directories of one hierarchy.

    `scan_all` lists everything (the kubepods dirs, the QoS dirs, every pod dir);
    `scan_pods` re-lists only the QoS level to find pod directories that appeared or went;
    `scan_pod` re-lists one pod directory. Listing errors (a directory removed while being
    listed) are not errors: what is gone is simply not there.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        # Paths under the root are joined as strings: pathlib interns every part of a path
        # it parses, and a full rescan's ~300 pod and container names, interned and dropped
        # again each time, fill the interpreter's table of interned strings with deleted
        # entries until it is reallocated at twice its size (+0.5 MiB, for nothing).
        self._root = os.fspath(root)
        self._pods: dict[str, _PodDir] = {}
        self._by_id: dict[str, ContainerDir] = {}
        self._scanned = False
        self.listings = 0  # directory listings done, for tests and the benchmark
        # The kubepods directories found by the last listing (relative paths): the cgroup
        # of every pod, whose PSI files are the node's pods' pressure.
        self.kubepods: tuple[str, ...] = ()

    @property
    def containers(self) -> dict[str, ContainerDir]:
        """Container id -> directory, for every container cgroup currently known."""
        return self._by_id

    def pod_known(self, uid: str) -> bool:
        return uid in self._pods

    def _list(self, rel: str) -> list[str]:
        self.listings += 1
        return list(_subdirs(f"{self._root}/{rel}" if rel else self._root))

    def _kubepods_dirs(self) -> list[str]:
        found: list[str] = []
        for name in self._list(""):
            if is_kubepods_dir(name):
                found.append(name)
            elif name.endswith(".slice") and name not in ("system.slice", "user.slice"):
                # kind and other --cgroup-root setups: <x>.slice/<x>-kubepods.slice
                found.extend(f"{name}/{sub}" for sub in self._list(name) if is_kubepods_dir(sub))
        self.kubepods = tuple(found)
        return found

    def _pod_dirs(self) -> dict[str, tuple[str, str]]:
        """uid -> (relpath, qos) of every pod directory."""
        pods: dict[str, tuple[str, str]] = {}
        for kubepods in self._kubepods_dirs():
            for name in self._list(kubepods):
                uid = pod_uid_of_dir(name)
                if uid is not None:
                    pods[uid] = (f"{kubepods}/{name}", QOS_GUARANTEED)
                    continue
                qos = qos_of_dir(name)
                if qos is None:
                    continue
                for pod_name in self._list(f"{kubepods}/{name}"):
                    uid = pod_uid_of_dir(pod_name)
                    if uid is not None:
                        pods[uid] = (f"{kubepods}/{name}/{pod_name}", qos)
        return pods

    def _list_pod(self, uid: str, relpath: str, qos: str) -> dict[str, ContainerDir]:
        old = self._pods.get(uid)
        preexisting = not self._scanned
        containers: dict[str, ContainerDir] = {}
        for name in self._list(relpath):
            parsed = container_id_of_dir(name)
            if parsed is None:
                continue
            runtime, cid = parsed
            if old is not None and cid in old.containers:
                containers[cid] = old.containers[cid]
            else:
                containers[cid] = ContainerDir(
                    f"{relpath}/{name}", uid, cid, qos, runtime, preexisting
                )
        return containers

    def _set_pod(self, uid: str, pod: _PodDir | None) -> None:
        old = self._pods.pop(uid, None)
        if old is not None:
            for cid in old.containers:
                self._by_id.pop(cid, None)
        if pod is not None:
            self._pods[uid] = pod
            self._by_id.update(pod.containers)

    def scan_all(self) -> None:
        """List the whole kubepods tree."""
        pods = self._pod_dirs()
        for uid in [u for u in self._pods if u not in pods]:
            self._set_pod(uid, None)
        for uid, (relpath, qos) in pods.items():
            self._set_pod(uid, _PodDir(relpath, qos, self._list_pod(uid, relpath, qos)))
        self._scanned = True

    def scan_pods(self) -> None:
        """Find pod directories that appeared or went, listing only the new ones."""
        if not self._scanned:
            self.scan_all()
            return
        pods = self._pod_dirs()
        for uid in [u for u in self._pods if u not in pods]:
            self._set_pod(uid, None)
        for uid, (relpath, qos) in pods.items():
            if uid not in self._pods:
                self._set_pod(uid, _PodDir(relpath, qos, self._list_pod(uid, relpath, qos)))

    def scan_pod(self, uid: str) -> bool:
        """Re-list one known pod directory; False if the pod has no directory (any more)."""
        pod = self._pods.get(uid)
        if pod is None:
            return False
        if not os.path.isdir(f"{self._root}/{pod.relpath}"):
            self._set_pod(uid, None)
            return False
        self._set_pod(uid, _PodDir(pod.relpath, pod.qos, self._list_pod(uid, pod.relpath, pod.qos)))
        return True

    def forget(self, container_id: str) -> None:
        """Drop a container whose cgroup was found gone; its pod is re-listed next time."""
        cdir = self._by_id.pop(container_id, None)
        if cdir is not None:
            pod = self._pods.get(cdir.pod_uid)
            if pod is not None:
                pod.containers.pop(container_id, None)
