"""The cgroup tree of one simulated node, kept consistent with the pods the API has on it
and the load the data plane gives their containers, in the kernel's file formats (cgroup
v2, the kubelet's systemd driver, containerd: `exporter.cgroups.synthetic`).

Every `update()` integrates each running container's rates since the last one into its
counters, as the kernel does: CPU time, CFS periods and throttled periods and time when
it hits its quota, PSI stall time (cpu, memory), memory.current and the working set,
memory.events `max` when it presses on its limit; and the kubepods cgroup's CPU PSI, the
time some pod's task waited for a core the node did not have (contention among the pods,
not one container's own quota). `oom_kill()` is the kernel's OOM killer:
`oom` and `oom_kill` grow in that container's memory.events. Pod and container cgroups are
created when the kubelet would start them (the pod status shows a running container) and
removed when it would clean them up (the pod is gone, or the container was replaced by a
restart), files being rewritten in place so a reader's open descriptors follow them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.cgroups.synthetic import (
    ContainerUsage,
    QosClass,
    SyntheticPod,
    TreeLayout,
    container_dir,
    cpu_stat_v2,
    hex_id,
    kubepods_dir,
    memory_events_v2,
    memory_stat_v2,
    pod_dir,
    write_cgroup,
    write_in_place,
    write_tree,
)
from exporter.simulator.latency import CFS_PERIOD
from exporter.simulator.load import ContainerLoad, MiB
from exporter.simulator.objects import parse_quantity
from exporter.simulator.store import Store

QOS_CLASSES: tuple[QosClass, ...] = ("Guaranteed", "Burstable", "BestEffort")
LAYOUT = TreeLayout(version="v2", driver="systemd", runtime="containerd")
LoadOf = Callable[[str, str, str], ContainerLoad | None]
#: Page cache a container keeps on its inactive list (not part of the working set).
INACTIVE_FILE = 6 * MiB


@dataclass(slots=True)
class ContainerCounters:
    """The cumulative values of one container cgroup (the kernel's counters)."""

    cpu_usec: float = 0.0
    periods: float = 0.0
    throttled_periods: float = 0.0
    throttled_usec: float = 0.0
    psi_cpu_some_usec: float = 0.0
    psi_cpu_full_usec: float = 0.0
    psi_memory_some_usec: float = 0.0
    psi_memory_full_usec: float = 0.0
    max_events: int = 0
    oom: int = 0
    oom_kill: int = 0
    working_set: int = 0
    cpu_quota_usec: int | None = None
    memory_limit: int | None = None
    pid: int = 0

    def usage(self) -> ContainerUsage:
        ws = self.working_set
        active_file = ws // 10
        kernel = ws // 50
        return ContainerUsage(
            cpu_usage_usec=int(self.cpu_usec),
            nr_periods=int(self.periods),
            nr_throttled=int(self.throttled_periods),
            throttled_usec=int(self.throttled_usec),
            cpu_quota_usec=self.cpu_quota_usec,
            memory_anon=max(0, ws - active_file - kernel),
            memory_active_file=active_file,
            memory_inactive_file=INACTIVE_FILE,
            memory_kernel=kernel,
            memory_limit=self.memory_limit,
            memory_max_events=self.max_events,
            oom=self.oom,
            oom_kill=self.oom_kill,
            psi_cpu_some=int(self.psi_cpu_some_usec),
            psi_cpu_full=int(self.psi_cpu_full_usec),
            psi_memory_some=int(self.psi_memory_some_usec),
            psi_memory_full=int(self.psi_memory_full_usec),
            pids=(self.pid,),
        )


def _psi(some: int, full: int) -> str:
    return (
        f"some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\n"
        f"full avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
    )


def _limits(container: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(CFS quota in µs per 100 ms period, memory limit in bytes) from a container spec."""
    limits = (container.get("resources") or {}).get("limits") or {}
    quota = None
    if "cpu" in limits:
        quota = int(parse_quantity(str(limits["cpu"])) * 100_000)
    memory = int(parse_quantity(str(limits["memory"]))) if "memory" in limits else None
    return quota, memory


@dataclass(slots=True)
class _Pod:
    synthetic: SyntheticPod
    containers: dict[str, tuple[str, ContainerCounters]]  # container id -> (name, counters)


class NodeCgroups:
    """The cgroup tree under `root` of the pods of `node` in `store`, with their
    containers' load from `load_of(namespace, pod, container)` (None: an idle container)."""

    def __init__(
        self,
        root: Path,
        store: Store,
        node: str,
        load_of: LoadOf,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.store = store
        self.node = node
        self.load_of = load_of
        self.interval = interval
        self.clock = clock
        self.layout = LAYOUT
        self._pods: dict[str, _Pod] = {}  # by pod uid
        self._last: float | None = None
        self._next_pid = 1000
        self._written: dict[str, dict[str, str]] = {}  # container id -> file -> content
        self.node_psi_cpu_usec = 0.0  # the kubepods cgroup's cpu.pressure `some` total
        write_tree(root, self.layout, [])

    # -- questions -------------------------------------------------------------------

    def container_path(self, namespace: str, pod: str, container: str) -> Path | None:
        for held in self._pods.values():
            if (held.synthetic.namespace, held.synthetic.name) == (namespace, pod):
                for cid, (name, _) in held.containers.items():
                    if name == container:
                        return self.root / container_dir(self.layout, held.synthetic, cid)
        return None

    # -- the kernel ------------------------------------------------------------------

    def oom_kill(self, namespace: str, pod: str, container: str) -> None:
        """The OOM killer kills the container's process: memory.events oom and oom_kill grow."""
        for held in self._pods.values():
            if (held.synthetic.namespace, held.synthetic.name) != (namespace, pod):
                continue
            for cid, (name, counters) in held.containers.items():
                if name == container:
                    counters.max_events += 1
                    counters.oom += 1
                    counters.oom_kill += 1
                    self._write(held.synthetic, cid, counters)
                    return
        raise KeyError(f"no running container {container} of {namespace}/{pod} on {self.node}")

    def update(self) -> None:
        """One pass, files written before it returns (tests and the first pass use this)."""
        for write in self.advance():
            write()

    def advance(self) -> list[Callable[[], None]]:
        """Follow the API's pods of this node and advance every counter; returns the file
        writes to make (cheap to run off the event loop: `run` does so)."""
        now = self.clock()
        dt = 0.0 if self._last is None else max(0.0, now - self._last)
        self._last = now
        wanted: dict[str, Mapping[str, Any]] = {}
        items, _ = self.store.snapshot("pods")  # shared objects: read only
        for _, pod in items:
            if (pod.get("spec") or {}).get("nodeName") != self.node:
                continue
            if "startTime" not in (pod.get("status") or {}):
                continue  # the kubelet has not started it: no cgroup yet
            wanted[pod["metadata"]["uid"]] = pod
        for uid in set(self._pods) - set(wanted):
            self._remove_pod(self._pods.pop(uid))
        writes: list[Callable[[], None]] = []
        waiting = 0.0
        for uid, body in wanted.items():
            held = self._pods.get(uid)
            if held is None:
                held = self._pods[uid] = self._add_pod(body)
            self._follow_containers(held, body)
            for cid, (name, counters) in held.containers.items():
                meta = body["metadata"]
                load = self.load_of(meta["namespace"], meta["name"], name)
                self._advance(counters, load, dt)
                if load is not None and load.usage > 0:
                    # A container's CPU stall beyond its own quota's is the node's contention.
                    waiting = max(waiting, load.psi_cpu_some - load.stall)
                writes.append(self._writer(held.synthetic, cid, counters.usage()))
        self.node_psi_cpu_usec += waiting * dt * 1e6
        pressure = self.root / kubepods_dir(self.layout) / "cpu.pressure"
        content = _psi(int(self.node_psi_cpu_usec), 0)
        writes.append(lambda: write_in_place(pressure, content))
        return writes

    async def run(self) -> None:
        """Update every `interval` seconds until cancelled, writing files in a thread."""
        while True:
            writes = self.advance()
            await asyncio.to_thread(_run_all, writes)
            await asyncio.sleep(self.interval)

    # -- internals -------------------------------------------------------------------

    def _add_pod(self, pod: Mapping[str, Any]) -> _Pod:
        meta = pod["metadata"]
        qos: QosClass = "BestEffort"
        for known in QOS_CLASSES:
            if (pod.get("status") or {}).get("qosClass") == known:
                qos = known
        synthetic = SyntheticPod(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            qos=qos,
            sandbox_id=hex_id(meta["uid"], "sandbox"),
            containers=(),
        )
        write_cgroup(self.root, self.layout, pod_dir(self.layout, synthetic), ContainerUsage())
        sandbox = ContainerUsage(cpu_usage_usec=21_000, memory_anon=200_000, pids=(self._pid(),))
        write_cgroup(
            self.root,
            self.layout,
            container_dir(self.layout, synthetic, synthetic.sandbox_id),
            sandbox,
            leaf=True,
        )
        return _Pod(synthetic, {})

    def _pid(self) -> int:
        self._next_pid += 1
        return self._next_pid

    def _follow_containers(self, held: _Pod, pod: Mapping[str, Any]) -> None:
        specs = {
            c["name"]: c
            for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
        }
        status = pod.get("status") or {}
        running: dict[str, str] = {}
        for cs in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
            cid = str(cs.get("containerID") or "").partition("://")[2]
            if cid and "running" in (cs.get("state") or {}):
                running[cid] = cs["name"]
        for cid in set(held.containers) - set(running):
            del held.containers[cid]
            self._written.pop(cid, None)
            shutil.rmtree(
                self.root / container_dir(self.layout, held.synthetic, cid), ignore_errors=True
            )
        for cid, name in running.items():
            if cid in held.containers:
                continue
            quota, memory = _limits(specs.get(name, {}))
            counters = ContainerCounters(cpu_quota_usec=quota, memory_limit=memory, pid=self._pid())
            held.containers[cid] = (name, counters)
            write_cgroup(
                self.root,
                self.layout,
                container_dir(self.layout, held.synthetic, cid),
                counters.usage(),
                leaf=True,
            )

    def _remove_pod(self, held: _Pod) -> None:
        for cid in held.containers:
            self._written.pop(cid, None)
        shutil.rmtree(self.root / pod_dir(self.layout, held.synthetic), ignore_errors=True)

    @staticmethod
    def _advance(counters: ContainerCounters, load: ContainerLoad | None, dt: float) -> None:
        if load is None:
            load = ContainerLoad("", 0.005, 0.005, 0, 0, 0, 0, 24 * MiB, None, 0, 0)
        usec = dt * 1e6
        counters.cpu_usec += load.usage * usec
        if counters.cpu_quota_usec is not None and load.demand > 0:
            periods = dt / CFS_PERIOD
            counters.periods += periods
            counters.throttled_periods += periods * load.throttled_share
            counters.throttled_usec += load.stall * usec
        counters.psi_cpu_some_usec += load.psi_cpu_some * usec
        counters.psi_cpu_full_usec += load.psi_cpu_full * usec
        counters.psi_memory_some_usec += load.psi_memory_some * usec
        counters.psi_memory_full_usec += load.psi_memory_full * usec
        counters.working_set = load.working_set
        limit = counters.memory_limit
        if limit is not None and load.working_set >= 0.98 * limit:
            counters.max_events += 1  # usage hit memory.max: reclaim ran

    def _write(self, pod: SyntheticPod, cid: str, counters: ContainerCounters) -> None:
        self._writer(pod, cid, counters.usage())()

    def _writer(self, pod: SyntheticPod, cid: str, usage: ContainerUsage) -> Callable[[], None]:
        """Rewrite the files that change; the others were written with the cgroup. Files
        whose content did not change are left alone (memory.stat is the costly one)."""
        directory = self.root / container_dir(self.layout, pod, cid)
        written = self._written.setdefault(cid, {})
        kernel = self.layout.kernel

        def write() -> None:
            if not directory.is_dir():
                return
            events = memory_events_v2(kernel, usage)
            files = {
                "cpu.stat": cpu_stat_v2(kernel, usage),
                "cpu.pressure": _psi(usage.psi_cpu_some, usage.psi_cpu_full),
                "memory.current": f"{usage.memory_usage}\n",
                "memory.events": events,
                "memory.events.local": events,
                "memory.pressure": _psi(usage.psi_memory_some, usage.psi_memory_full),
            }
            if written.get("memory.current") != files["memory.current"]:
                files["memory.stat"] = memory_stat_v2(kernel, usage)
            for name, content in files.items():
                if written.get(name) != content:
                    write_in_place(directory / name, content)
                    written[name] = content

        return write


def _run_all(writes: list[Callable[[], None]]) -> None:
    for write in writes:
        write()
