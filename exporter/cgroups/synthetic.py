"""Kubelet-like cgroup trees written to an ordinary directory, in the kernel's file formats,
for the fixture trees, the benchmark and the simulator's demo.

The paths are those the kubelet and the runtimes create (both cgroup drivers, containerd,
CRI-O and Docker, the three QoS classes, pause sandboxes, CRI-O's conmon scopes, system
slices); the file contents follow what the kernel version named by `Kernel` writes. The
matching `PodSnapshot`s come from `pod_snapshots`, so a test knows which container is which.
Values are rewritten in place (`write_usage`), as cgroupfs changes under an open descriptor.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from exporter.core.events import Workload
from exporter.core.pods import ContainerSnapshot, PodSnapshot

Version = Literal["v2", "v1", "hybrid"]
Driver = Literal["systemd", "cgroupfs"]
Runtime = Literal["containerd", "cri-o", "docker"]
QosClass = Literal["Guaranteed", "Burstable", "BestEffort"]

V1_UNLIMITED = 9223372036854771712  # LONG_MAX rounded down to 4 KiB pages
MiB = 1 << 20
NO_WORKLOAD = Workload("Pod", "")


@dataclass(frozen=True, slots=True)
class Kernel:
    """The kernel whose file formats a tree imitates."""

    major: int
    minor: int
    sched_core: bool = False  # CONFIG_SCHED_CORE: cpu.stat has core_sched.force_idle_usec

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


@dataclass(frozen=True, slots=True)
class TreeLayout:
    version: Version
    driver: Driver
    runtime: Runtime
    kernel: Kernel = Kernel(6, 8, sched_core=True)
    # v1: cpu and cpuacct co-mounted as cpu,cpuacct with cpu and cpuacct symlinks (most
    # distributions), or mounted apart.
    comount_cpu: bool = True
    # hybrid: whether the unified tree has the kubepods cgroups too. systemd mirrors them
    # there; the cgroupfs driver creates them only in the v1 controllers.
    unified_kubepods: bool = True

    @property
    def name(self) -> str:
        return f"{self.version}-{self.driver}-{self.runtime}"


@dataclass(frozen=True, slots=True)
class ContainerUsage:
    """The values a container cgroup shows. Memory in bytes, CPU in µs, PSI totals in µs."""

    cpu_usage_usec: int = 0
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_usec: int = 0
    cpu_quota_usec: int | None = None  # per 100 ms period; None: no quota
    memory_anon: int = 0
    memory_active_file: int = 0
    memory_inactive_file: int = 0
    memory_kernel: int = 0
    memory_limit: int | None = None
    memory_max_events: int = 0  # times usage hit the limit (v1 failcnt, v2 memory.events max)
    oom: int = 0  # times the cgroup's OOM killer was invoked (v2 memory.events oom)
    oom_kill: int = 0
    psi_cpu_some: int = 0
    psi_cpu_full: int = 0
    psi_memory_some: int = 0
    psi_memory_full: int = 0
    psi_io_some: int = 0
    psi_io_full: int = 0
    pids: tuple[int, ...] = ()

    @property
    def memory_file(self) -> int:
        return self.memory_active_file + self.memory_inactive_file

    @property
    def memory_usage(self) -> int:
        return self.memory_anon + self.memory_file + self.memory_kernel

    @property
    def working_set(self) -> int:
        return max(0, self.memory_usage - self.memory_inactive_file)


@dataclass(frozen=True, slots=True)
class SyntheticContainer:
    name: str
    container_id: str  # 64 hex
    usage: ContainerUsage | None  # None: the container exited, its cgroup is gone
    state: str = "running"
    init: bool = False
    restart_count: int = 0
    last_terminated_reason: str = ""


@dataclass(frozen=True, slots=True)
class SyntheticPod:
    namespace: str
    name: str
    uid: str
    qos: QosClass
    sandbox_id: str
    containers: tuple[SyntheticContainer, ...]
    workload: Workload = NO_WORKLOAD
    revision: str = ""


def hex_id(*parts: str) -> str:
    """A stable 64-hex container id derived from `parts`."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def pod_uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "tailwatch-test/" + "/".join(parts)))


# --- paths --------------------------------------------------------------------------------


def kubepods_dir(layout: TreeLayout) -> str:
    return "kubepods.slice" if layout.driver == "systemd" else "kubepods"


def pod_dir(layout: TreeLayout, pod: SyntheticPod) -> str:
    """The pod's cgroup path relative to a hierarchy root."""
    qos = pod.qos.lower()
    if layout.driver == "systemd":
        uid = pod.uid.replace("-", "_")
        if pod.qos == "Guaranteed":
            return f"kubepods.slice/kubepods-pod{uid}.slice"
        return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"
    if pod.qos == "Guaranteed":
        return f"kubepods/pod{pod.uid}"
    return f"kubepods/{qos}/pod{pod.uid}"


def container_dir_name(layout: TreeLayout, container_id: str, conmon: bool = False) -> str:
    if layout.runtime == "cri-o":
        base = f"crio-conmon-{container_id}" if conmon else f"crio-{container_id}"
        return f"{base}.scope" if layout.driver == "systemd" else base
    if layout.driver == "systemd":
        prefix = "cri-containerd" if layout.runtime == "containerd" else "docker"
        return f"{prefix}-{container_id}.scope"
    return container_id


def container_dir(layout: TreeLayout, pod: SyntheticPod, container_id: str) -> str:
    return f"{pod_dir(layout, pod)}/{container_dir_name(layout, container_id)}"


def status_container_id(layout: TreeLayout, container_id: str) -> str:
    scheme = {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}[layout.runtime]
    return f"{scheme}://{container_id}"


def _hierarchy_roots(root: Path, layout: TreeLayout) -> dict[str, Path]:
    """Controller name -> directory for the hierarchies of the layout."""
    if layout.version == "v2":
        return {"unified": root}
    roots: dict[str, Path] = {}
    if layout.comount_cpu:
        roots["cpu"] = roots["cpuacct"] = root / "cpu,cpuacct"
    else:
        roots["cpu"] = root / "cpu"
        roots["cpuacct"] = root / "cpuacct"
    roots["memory"] = root / "memory"
    if layout.version == "hybrid":
        roots["unified"] = root / "unified"
    return roots


# --- file contents ------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def _lines(pairs: Iterable[tuple[str, int | str]]) -> str:
    return "".join(f"{k} {v}\n" for k, v in pairs)


def _psi(some: int, full: int | None) -> str:
    # The averages are not read; they are written as the kernel formats them.
    out = f"some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\n"
    if full is not None:
        out += f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
    return out


def cpu_stat_v2(k: Kernel, u: ContainerUsage, cpu_controller: bool = True) -> str:
    user = u.cpu_usage_usec * 7 // 10
    pairs: list[tuple[str, int | str]] = [
        ("usage_usec", u.cpu_usage_usec),
        ("user_usec", user),
        ("system_usec", u.cpu_usage_usec - user),
    ]
    if k.at_least(6, 6):
        pairs.append(("nice_usec", 0))
    if k.sched_core:
        pairs.append(("core_sched.force_idle_usec", 0))
    if cpu_controller:
        pairs += [
            ("nr_periods", u.nr_periods),
            ("nr_throttled", u.nr_throttled),
            ("throttled_usec", u.throttled_usec),
        ]
        if k.at_least(5, 14):
            pairs += [("nr_bursts", 0), ("burst_usec", 0)]
    return _lines(pairs)


def memory_stat_v2(k: Kernel, u: ContainerUsage) -> str:
    anon, active_file, inactive_file = u.memory_anon, u.memory_active_file, u.memory_inactive_file
    values = {
        "anon": anon,
        "file": u.memory_file,
        "kernel": u.memory_kernel,
        "kernel_stack": min(u.memory_kernel, 16384 * max(1, len(u.pids))),
        "pagetables": u.memory_kernel // 8,
        "percpu": 480,
        "sock": 0,
        "shmem": 0,
        "file_mapped": active_file // 2,
        "file_dirty": 0,
        "file_writeback": 0,
        "anon_thp": 0,
        "inactive_anon": anon // 4,
        "active_anon": anon - anon // 4,
        "inactive_file": inactive_file,
        "active_file": active_file,
        "unevictable": 0,
        "slab_reclaimable": u.memory_kernel // 4,
        "slab_unreclaimable": u.memory_kernel // 8,
        "slab": u.memory_kernel // 4 + u.memory_kernel // 8,
        "pgfault": 4096 + anon // 4096,
        "pgmajfault": 3,
    }
    if k.at_least(6, 1):
        keys = (
            "anon file kernel kernel_stack pagetables sec_pagetables percpu sock vmalloc shmem "
            "zswap zswapped file_mapped file_dirty file_writeback swapcached anon_thp file_thp "
            "shmem_thp inactive_anon active_anon inactive_file active_file unevictable "
            "slab_reclaimable slab_unreclaimable slab workingset_refault_anon "
            "workingset_refault_file workingset_activate_anon workingset_activate_file "
            "workingset_restore_anon workingset_restore_file workingset_nodereclaim pgscan "
            "pgsteal pgscan_kswapd pgscan_direct pgsteal_kswapd pgsteal_direct pgfault "
            "pgmajfault pgrefill pgactivate pgdeactivate pglazyfree pglazyfreed zswpin zswpout "
            "thp_fault_alloc thp_collapse_alloc"
        )
    else:
        keys = (
            "anon file kernel_stack percpu sock shmem file_mapped file_dirty file_writeback "
            "anon_thp inactive_anon active_anon inactive_file active_file unevictable "
            "slab_reclaimable slab_unreclaimable slab workingset_refault_anon "
            "workingset_refault_file workingset_activate_anon workingset_activate_file "
            "workingset_restore_anon workingset_restore_file workingset_nodereclaim pgfault "
            "pgmajfault pgrefill pgscan pgsteal pgactivate pgdeactivate pglazyfree pglazyfreed "
            "thp_fault_alloc thp_collapse_alloc"
        )
    return _lines((key, values.get(key, 0)) for key in keys.split())


def memory_events_v2(k: Kernel, u: ContainerUsage) -> str:
    pairs: list[tuple[str, int | str]] = [
        ("low", 0),
        ("high", 0),
        ("max", u.memory_max_events),
        ("oom", u.oom),
        ("oom_kill", u.oom_kill),
    ]
    if k.at_least(5, 17):
        pairs.append(("oom_group_kill", 0))
    return _lines(pairs)


def cpu_stat_v1(k: Kernel, u: ContainerUsage) -> str:
    pairs: list[tuple[str, int | str]] = [
        ("nr_periods", u.nr_periods),
        ("nr_throttled", u.nr_throttled),
        ("throttled_time", u.throttled_usec * 1000),
    ]
    if k.at_least(5, 14):
        pairs += [("nr_bursts", 0), ("burst_time", 0)]
    return _lines(pairs)


def memory_stat_v1(k: Kernel, u: ContainerUsage) -> str:
    rss = u.memory_anon
    cache = u.memory_file
    local = {
        "cache": cache,
        "rss": rss,
        "rss_huge": 0,
        "shmem": 0,
        "mapped_file": u.memory_active_file // 2,
        "dirty": 0,
        "writeback": 0,
        "swap": 0,
        "pgpgin": (rss + cache) // 4096 + 1000,
        "pgpgout": 1000,
        "pgfault": (rss + cache) // 4096 + 2000,
        "pgmajfault": 3,
        "inactive_anon": rss // 4,
        "active_anon": rss - rss // 4,
        "inactive_file": u.memory_inactive_file,
        "active_file": u.memory_active_file,
        "unevictable": 0,
    }
    if k.at_least(6, 1):
        local_keys = _words(
            "cache rss rss_huge shmem mapped_file dirty writeback workingset_refault_anon "
            "workingset_refault_file swap swapcached pgpgin pgpgout pgfault pgmajfault "
            "inactive_anon active_anon inactive_file active_file unevictable"
        )
    elif k.at_least(4, 0):
        local_keys = _words(
            "cache rss rss_huge shmem mapped_file dirty writeback swap pgpgin pgpgout pgfault "
            "pgmajfault inactive_anon active_anon inactive_file active_file unevictable"
        )
    else:
        local_keys = _words(
            "cache rss rss_huge mapped_file swap pgpgin pgpgout pgfault pgmajfault "
            "inactive_anon active_anon inactive_file active_file unevictable"
        )
    limit = V1_UNLIMITED if u.memory_limit is None else u.memory_limit
    pairs: list[tuple[str, int | str]] = [(key, local.get(key, 0)) for key in local_keys]
    pairs += [("hierarchical_memory_limit", limit), ("hierarchical_memsw_limit", V1_UNLIMITED)]
    # A container cgroup is a leaf: its hierarchical totals equal its own values.
    pairs += [(f"total_{key}", local.get(key, 0)) for key in local_keys]
    return _lines(pairs)


def oom_control_v1(k: Kernel, u: ContainerUsage) -> str:
    pairs: list[tuple[str, int | str]] = [("oom_kill_disable", 0), ("under_oom", 0)]
    if k.at_least(4, 13):
        pairs.append(("oom_kill", u.oom_kill))
    return _lines(pairs)


def _procs(u: ContainerUsage) -> str:
    return "".join(f"{pid}\n" for pid in u.pids)


def _files_v2(k: Kernel, u: ContainerUsage, leaf: bool) -> dict[str, str]:
    controllers = "cpuset cpu io memory hugetlb pids rdma misc\n"
    files = {
        "cgroup.controllers": controllers,
        "cgroup.subtree_control": "\n" if leaf else controllers,
        "cgroup.type": "domain\n",
        "cgroup.procs": _procs(u),
        "cgroup.events": f"populated {1 if u.pids or not leaf else 0}\nfrozen 0\n",
        "cpu.stat": cpu_stat_v2(k, u),
        "cpu.max": ("max 100000\n" if u.cpu_quota_usec is None else f"{u.cpu_quota_usec} 100000\n"),
        "cpu.weight": "100\n",
        "cpu.pressure": _psi(u.psi_cpu_some, u.psi_cpu_full if k.at_least(5, 13) else None),
        "io.pressure": _psi(u.psi_io_some, u.psi_io_full),
        "io.stat": "",
        "memory.current": f"{u.memory_usage}\n",
        "memory.max": "max\n" if u.memory_limit is None else f"{u.memory_limit}\n",
        "memory.high": "max\n",
        "memory.low": "0\n",
        "memory.min": "0\n",
        "memory.stat": memory_stat_v2(k, u),
        "memory.events": memory_events_v2(k, u),
        "memory.events.local": memory_events_v2(k, u),
        "memory.pressure": _psi(u.psi_memory_some, u.psi_memory_full),
        "memory.swap.current": "0\n",
        "memory.swap.max": "max\n",
        "pids.current": f"{len(u.pids)}\n",
        "pids.max": "max\n",
    }
    if k.at_least(5, 14):
        files["cpu.max.burst"] = "0\n"
    if k.at_least(5, 19):
        files["memory.peak"] = f"{u.memory_usage}\n"
    if k.at_least(6, 8):
        files["cpu.stat.local"] = f"throttled_usec {u.throttled_usec}\n"
    if leaf and k.at_least(5, 15):
        # The kubelet (1.28+) on cgroup v2: an OOM kill takes the whole container down.
        files["memory.oom.group"] = "1\n"
    return files


def _files_unified_hybrid(k: Kernel, u: ContainerUsage) -> dict[str, str]:
    """The controller-less v2 tree of the hybrid layout: core files, cpu.stat and PSI."""
    files = {
        "cgroup.controllers": "\n",
        "cgroup.subtree_control": "\n",
        "cgroup.type": "domain\n",
        "cgroup.procs": _procs(u),
        "cgroup.events": f"populated {1 if u.pids else 0}\nfrozen 0\n",
        "cgroup.stat": "nr_descendants 0\nnr_dying_descendants 0\n",
        "cpu.stat": cpu_stat_v2(k, u, cpu_controller=False),
        "cpu.pressure": _psi(u.psi_cpu_some, u.psi_cpu_full if k.at_least(5, 13) else None),
        "io.pressure": _psi(u.psi_io_some, u.psi_io_full),
        "memory.pressure": _psi(u.psi_memory_some, u.psi_memory_full),
    }
    if k.at_least(6, 1):
        files["cgroup.pressure"] = "1\n"
    return files


def _files_v1(k: Kernel, u: ContainerUsage, controller: str) -> dict[str, str]:
    common = {
        "cgroup.procs": _procs(u),
        "tasks": _procs(u),
    }
    if controller == "cpu":
        quota = -1 if u.cpu_quota_usec is None else u.cpu_quota_usec
        return {
            **common,
            "cpu.cfs_period_us": "100000\n",
            "cpu.cfs_quota_us": f"{quota}\n",
            "cpu.shares": "1024\n",
            "cpu.stat": cpu_stat_v1(k, u),
        }
    if controller == "cpuacct":
        ns = u.cpu_usage_usec * 1000
        user_ticks = u.cpu_usage_usec * 7 // 10 // 10000  # USER_HZ = 100
        return {
            **common,
            "cpuacct.stat": f"user {user_ticks}\nsystem {u.cpu_usage_usec // 10000 - user_ticks}\n",
            "cpuacct.usage": f"{ns}\n",
            "cpuacct.usage_percpu": f"{ns // 2} {ns - ns // 2} \n",
        }
    limit = V1_UNLIMITED if u.memory_limit is None else u.memory_limit
    return {
        **common,
        "memory.failcnt": f"{u.memory_max_events}\n",
        "memory.limit_in_bytes": f"{limit}\n",
        "memory.max_usage_in_bytes": f"{u.memory_usage}\n",
        "memory.oom_control": oom_control_v1(k, u),
        "memory.soft_limit_in_bytes": f"{V1_UNLIMITED}\n",
        "memory.stat": memory_stat_v1(k, u),
        "memory.swappiness": "60\n",
        "memory.usage_in_bytes": f"{u.memory_usage}\n",
        "memory.use_hierarchy": "1\n",
    }


def _write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        write_in_place(directory / name, content)


def write_in_place(path: Path, content: str) -> None:
    """Overwrite a file keeping its inode, so a reader's open descriptor sees the change."""
    data = content.encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _files_root(k: Kernel, u: ContainerUsage, controller: str, version: Version) -> dict[str, str]:
    """A hierarchy root: no limits, and on v2 no memory.current/max nor CFS counters."""
    if controller == "unified":
        controllers = "cpuset cpu io memory hugetlb pids rdma misc\n" if version == "v2" else "\n"
        files = {
            "cgroup.controllers": controllers,
            "cgroup.subtree_control": controllers,
            "cgroup.procs": _procs(u),
            "cgroup.stat": "nr_descendants 12\nnr_dying_descendants 0\n",
            "cpu.stat": cpu_stat_v2(k, u, cpu_controller=False),
            "cpu.pressure": _psi(u.psi_cpu_some, u.psi_cpu_full if k.at_least(5, 13) else None),
            "io.pressure": _psi(u.psi_io_some, u.psi_io_full),
            "memory.pressure": _psi(u.psi_memory_some, u.psi_memory_full),
        }
        if version == "v2":
            files["memory.stat"] = memory_stat_v2(k, u)
        return files
    files = {**_files_v1(k, u, controller), "cgroup.sane_behavior": "0\n", "release_agent": "\n"}
    if controller == "cpu":
        files.pop("cpu.cfs_quota_us")
        files.pop("cpu.cfs_period_us")
        files["cpu.cfs_quota_us"] = "-1\n"
        files["cpu.cfs_period_us"] = "100000\n"
    return files


def write_cgroup(
    root: Path, layout: TreeLayout, relpath: str, usage: ContainerUsage, leaf: bool = False
) -> None:
    """Write one cgroup (`relpath` relative to each hierarchy root, "" for the roots) in
    every hierarchy of the layout; `leaf` for a container (or sandbox) cgroup."""
    k = layout.kernel
    for controller, base in _hierarchy_roots(root, layout).items():
        if not relpath:
            if controller == "cpuacct" and layout.comount_cpu:
                continue
            files = _files_root(k, usage, controller, layout.version)
            if layout.comount_cpu and controller == "cpu":
                files = {**files, **_files_root(k, usage, "cpuacct", layout.version)}
            _write_files(base, files)
            continue
        if controller == "unified":
            if (
                layout.version == "hybrid"
                and not layout.unified_kubepods
                and (relpath.split("/", maxsplit=1)[0] == kubepods_dir(layout))
            ):
                continue
            files = (
                _files_v2(k, usage, leaf)
                if layout.version == "v2"
                else _files_unified_hybrid(k, usage)
            )
        else:
            if layout.comount_cpu and controller == "cpuacct":
                continue  # the same directory as cpu
            files = _files_v1(k, usage, controller)
            if layout.comount_cpu and controller == "cpu":
                files = {**files, **_files_v1(k, usage, "cpuacct")}
        _write_files(base / relpath, files)


def write_usage(
    root: Path, layout: TreeLayout, pod: SyntheticPod, container_id: str, usage: ContainerUsage
) -> None:
    """Rewrite the files of one container cgroup with new values (in place)."""
    write_cgroup(root, layout, container_dir(layout, pod, container_id), usage, leaf=True)


def _system_usage(n: int) -> ContainerUsage:
    return ContainerUsage(
        cpu_usage_usec=1_000_000 * n,
        memory_anon=30 * MiB,
        memory_active_file=10 * MiB,
        memory_inactive_file=5 * MiB,
        memory_kernel=2 * MiB,
        pids=(400 + n,),
    )


def write_tree(
    root: Path,
    layout: TreeLayout,
    pods: Sequence[SyntheticPod],
    orphans: Sequence[SyntheticPod] = (),
    system_slices: bool = True,
) -> None:
    """Write the hierarchy roots, kubepods, QoS, pod, sandbox and container cgroups of
    `pods` (and of `orphans`: cgroups of pods the API does not know), plus system slices."""
    root.mkdir(parents=True, exist_ok=True)
    if layout.version != "v2" and layout.comount_cpu:
        for link in ("cpu", "cpuacct"):
            if not (root / link).is_symlink():
                (root / link).symlink_to("cpu,cpuacct")
    empty = ContainerUsage()
    write_cgroup(root, layout, "", _system_usage(50))
    if system_slices:
        daemon = {"containerd": "containerd", "cri-o": "crio", "docker": "docker"}
        for n, unit in enumerate((f"{daemon[layout.runtime]}.service", "kubelet.service")):
            write_cgroup(root, layout, "system.slice", empty)
            write_cgroup(root, layout, f"system.slice/{unit}", _system_usage(n + 1), leaf=True)
    kubepods = kubepods_dir(layout)
    write_cgroup(root, layout, kubepods, empty)
    for qos in ("burstable", "besteffort"):
        qos_dir = (
            f"{kubepods}/kubepods-{qos}.slice"
            if layout.driver == "systemd"
            else f"{kubepods}/{qos}"
        )
        write_cgroup(root, layout, qos_dir, empty)
    for pod in (*pods, *orphans):
        write_cgroup(root, layout, pod_dir(layout, pod), empty)
        sandbox = ContainerUsage(cpu_usage_usec=21_000, memory_anon=200_000, pids=(900,))
        write_cgroup(root, layout, container_dir(layout, pod, pod.sandbox_id), sandbox, leaf=True)
        for c in pod.containers:
            if c.usage is None:
                continue
            write_cgroup(
                root, layout, container_dir(layout, pod, c.container_id), c.usage, leaf=True
            )
            if layout.runtime == "cri-o":
                conmon = f"{pod_dir(layout, pod)}/" + container_dir_name(
                    layout, c.container_id, conmon=True
                )
                write_cgroup(root, layout, conmon, ContainerUsage(cpu_usage_usec=9_000), leaf=True)


def pod_snapshots(
    layout: TreeLayout, pods: Iterable[SyntheticPod], node: str = "node-1"
) -> tuple[PodSnapshot, ...]:
    """The pods as the API reports them (what the sampler is given)."""
    out: list[PodSnapshot] = []
    for pod in pods:
        containers = tuple(
            ContainerSnapshot(
                name=c.name,
                restart_count=c.restart_count,
                ready=c.state == "running",
                container_id=status_container_id(layout, c.container_id),
                state=c.state,
                last_terminated_reason=c.last_terminated_reason,
                init=c.init,
            )
            for c in pod.containers
        )
        out.append(
            PodSnapshot(
                uid=pod.uid,
                namespace=pod.namespace,
                name=pod.name,
                node=node,
                workload=pod.workload,
                revision=pod.revision,
                phase="Running",
                ready=True,
                qos_class=pod.qos,
                containers=containers,
            )
        )
    return tuple(out)


def reference_pods(
    runtime: Runtime, n_pods: int = 110, containers_per_pod: int = 3
) -> tuple[SyntheticPod, ...]:
    """`n_pods` running pods of mixed QoS with `containers_per_pod` containers each."""
    qos_cycle: tuple[QosClass, ...] = ("Guaranteed", "Burstable", "BestEffort")
    pods: list[SyntheticPod] = []
    for i in range(n_pods):
        name = f"app-{i:03d}"
        containers = tuple(
            SyntheticContainer(
                name=f"c{j}",
                container_id=hex_id(runtime, name, f"c{j}"),
                usage=ContainerUsage(
                    cpu_usage_usec=1_000_000 + i * 1000 + j,
                    nr_periods=5000,
                    nr_throttled=i % 7,
                    throttled_usec=(i % 7) * 1000,
                    memory_anon=64 * MiB,
                    memory_active_file=8 * MiB,
                    memory_inactive_file=4 * MiB,
                    memory_kernel=MiB,
                    memory_limit=None if i % 3 == 2 else 256 * MiB,
                    pids=(10000 + i * 10 + j,),
                ),
            )
            for j in range(containers_per_pod)
        )
        pods.append(
            SyntheticPod(
                namespace="bench",
                name=name,
                uid=pod_uid("bench", name),
                qos=qos_cycle[i % 3],
                sandbox_id=hex_id(runtime, name, "sandbox"),
                containers=containers,
                workload=Workload("Deployment", f"app-{i:03d}"),
            )
        )
    return tuple(pods)
