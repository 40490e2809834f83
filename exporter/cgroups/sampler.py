"""The cgroup sampler: one pass reads every known container's cgroup files and turns them
into `CgroupSample`s, kernel OOM kill increments into lifecycle events, and what it had to
skip into counts by reason. A pass never raises.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from exporter.catalogue import COLLECTOR_DURATION
from exporter.cgroups.layout import (
    CgroupMode,
    ContainerDir,
    Hierarchies,
    KubepodsTree,
    container_id_of_status,
    detect_hierarchies,
)
from exporter.cgroups.parse import (
    NO_CPU,
    CgroupParseError,
    CpuFields,
    cpu_stat_v2_fields,
    cpu_v1_fields,
    parse_inactive_file_v1,
    parse_inactive_file_v2,
    parse_int,
    parse_oom_kills_v1,
    parse_oom_kills_v2,
    parse_v1_limit,
    parse_v2_limit,
    pressure_fields,
    working_set,
)
from exporter.cgroups.reader import (
    PRESSURE_FILES,
    CgroupFile,
    ContainerFiles,
    FdBudget,
    Outcome,
    files_of,
    hierarchy_of,
)
from exporter.core.buckets import FixedBuckets
from exporter.core.events import LifecycleEvent, PodEventKind
from exporter.core.pods import ContainerSnapshot, PodSnapshot
from exporter.logs import LogOnce

log = logging.getLogger("tailwatch.cgroups")

# Reasons for tailwatch_dropped_total (stable slugs).
# A container's cgroup disappeared while being read: its directory in the discovery
# hierarchy is gone. A directory missing from another hierarchy is not counted.
DROP_VANISHED = "cgroup_vanished"
DROP_UNREADABLE = "cgroup_unreadable"  # a file that was there could not be read
DROP_PARSE_ERROR = "cgroup_parse_error"  # a file whose content was cut off or unexpected
DROP_SAMPLER_ERROR = "cgroup_sampler_error"  # a bug: a pass or a container failed unexpectedly

# tailwatch_collector_duration_seconds: a pass over 330 containers costs a few ms.
DURATION_BUCKETS = COLLECTOR_DURATION.buckets

# What is read less often than every pass, because it costs the kernel more or rarely changes
# (docs/cgroups.md): a memory limit changes only on an in-place resize; memory.stat, whose
# inactive_file turns usage into working set, is re-read when usage moved by a MiB or every
# 10 passes.
LIMIT_EVERY = 10
MEMORY_STAT_MAX_AGE = 10
MEMORY_STAT_DELTA = 1 << 20

# A running container whose cgroup is not found is looked for again after 1, 2, 4, ...
# passes, at most this many apart (a runtime that gives containers no cgroup of their own,
# such as a VM sandbox, must not cost a directory listing every second). The same delays
# apply to a hierarchy that has no directory for a container (the cgroupfs driver on a
# hybrid host creates none under unified/): looked for again with one stat, not re-opened.
MAX_LOOKUP_DELAY = 32


@dataclass(frozen=True, slots=True)
class ResourcePressure:
    """PSI totals of one resource (cpu, memory, io) of one container, in seconds."""

    resource: str
    some_seconds: float
    full_seconds: float | None


@dataclass(frozen=True, slots=True)
class CgroupSample:
    """One container's resource signals at one pass; None where the host does not provide
    the signal (see docs/cgroups.md)."""

    namespace: str
    pod: str
    container: str
    pod_uid: str
    container_id: str
    cpu_usage_seconds: float | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_seconds: float | None = None
    memory_working_set_bytes: int | None = None
    memory_limit_bytes: int | None = None
    # The cgroup's own kernel OOM kill count (None: not provided, e.g. v1 before 4.13).
    oom_kills: int | None = None
    # Kernel OOM kills this agent saw in this container name of this pod (all its
    # instances, after the silent baseline): the value of tailwatch_container_oom_kills_total.
    oom_kills_seen: int = 0
    pressure: tuple[ResourcePressure, ...] = ()


@dataclass(frozen=True, slots=True)
class SamplePass:
    """The result of one pass."""

    at: float
    duration_seconds: float
    mode: str
    samples: tuple[CgroupSample, ...]
    events: tuple[LifecycleEvent, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)
    # PSI totals of the pods of the node together: the kubepods cgroup's (the unified
    # hierarchy's root when there is none); empty without PSI (cgroup v1, PSI disabled).
    node_pressure: tuple[ResourcePressure, ...] = ()


_NO_CPU: CpuFields = NO_CPU

_CPU_STAT = CgroupFile.CPU_STAT
_CPUACCT_USAGE = CgroupFile.CPUACCT_USAGE
_MEMORY_USAGE = CgroupFile.MEMORY_USAGE
# memory.stat is read by _read_memory_stat, the limit every LIMIT_EVERY passes.
_SKIP_STAT = frozenset({CgroupFile.MEMORY_STAT})
_SKIP_STAT_AND_LIMIT = frozenset({CgroupFile.MEMORY_STAT, CgroupFile.MEMORY_LIMIT})


class _Tracked:
    """What the sampler keeps about one container cgroup between passes: its open files,
    the values parsed from them, and the last sample (reused whole when nothing changed)."""

    __slots__ = (
        "age",
        "cdir",
        "cpu",
        "files",
        "inactive_file",
        "kills",
        "last_oom",
        "limit",
        "missing",
        "missing_check_at",
        "missing_delay",
        "pod",
        "pressure",
        "pressure_tuple",
        "sample",
        "stat_read_at",
        "usage",
        "usage_at_stat",
        "working_set",
    )

    def __init__(self, cdir: ContainerDir, files: ContainerFiles) -> None:
        self.cdir = cdir
        self.files = files
        self.last_oom: int | None = None
        self.cpu: CpuFields = _NO_CPU
        self.working_set: int | None = None
        self.limit: int | None = None
        self.kills: int | None = None
        self.pressure: dict[str, ResourcePressure] = {}
        self.pressure_tuple: tuple[ResourcePressure, ...] = ()
        self.sample: CgroupSample | None = None
        self.pod: PodSnapshot | None = None  # the snapshot the last sample was built from
        self.usage: int | None = None
        self.inactive_file: int | None = None
        self.age = 0  # passes this container was read in
        self.stat_read_at = 0  # the age at which memory.stat was last read
        self.usage_at_stat: int | None = None  # memory usage when memory.stat was last read
        # Directories of other hierarchies that have none for this container, with the files
        # that would be read there; looked for again at age `missing_check_at`.
        self.missing: dict[str, dict[CgroupFile, str]] = {}
        self.missing_check_at = 0
        self.missing_delay = 0


_Index = dict[str, tuple[PodSnapshot, ContainerSnapshot]]
_RESOURCES = ("cpu", "memory", "io")


def _in_order(p: dict[str, ResourcePressure]) -> tuple[ResourcePressure, ...]:
    """The pressures of `p` in `_RESOURCES` order (without a generator: once per container
    per pass whose PSI moved)."""
    if len(p) == 3:
        return (p["cpu"], p["memory"], p["io"])
    return tuple([p[r] for r in _RESOURCES if r in p])


_NODE_PSI = {
    CgroupFile.PRESSURE_CPU: "cpu.pressure",
    CgroupFile.PRESSURE_MEMORY: "memory.pressure",
    CgroupFile.PRESSURE_IO: "io.pressure",
}


class CgroupSampler:
    """Samples the cgroups of the containers of the pods `pods()` returns.

    `pods` is called once per pass, from the thread that runs `sample`. `timer` measures
    the pass cost (perf_counter); `now`, given to `sample`, stamps the pass and its events.
    Every `full_rescan_every` passes the whole kubepods tree is listed again; in between,
    only pods with a running container whose cgroup is not known yet are (re-)listed.
    """

    def __init__(
        self,
        root: str | PathLike[str],
        pods: Callable[[], Iterable[PodSnapshot]],
        *,
        timer: Callable[[], float] = time.perf_counter,
        full_rescan_every: int = 60,
        fd_budget: FdBudget | None = None,
        duration_buckets: tuple[float, ...] = DURATION_BUCKETS,
    ) -> None:
        self.root = Path(root)
        self._pods = pods
        self._timer = timer
        self.full_rescan_every = max(1, full_rescan_every)
        self._budget = fd_budget or FdBudget()
        self._hierarchies: Hierarchies | None = None
        self._tree: KubepodsTree | None = None
        self._tracked: dict[str, _Tracked] = {}
        self._lookup: dict[str, tuple[int, int]] = {}  # cid -> (next pass, delay)
        self._seen_oom: dict[tuple[str, str], int] = {}  # (pod uid, container) -> kills
        self._passes = 0
        self._last_pods: tuple[PodSnapshot, ...] = ()
        self._index: _Index = {}
        self._dropped_total: dict[str, int] = {}
        self._warn = LogOnce(log)
        self._no_directory_logged: set[str] = set()
        # Published for other threads: replaced whole, never mutated.
        self._latest: SamplePass | None = None
        self._dropped: Mapping[str, int] = {}
        self._durations = FixedBuckets.empty(duration_buckets)
        # The node's PSI files (docs/cgroups.md): kept open like a container's.
        self._node_files: ContainerFiles | None = None
        self._node_dir: Path | None = None
        self._node_pressure: dict[str, ResourcePressure] = {}
        self._node_tuple: tuple[ResourcePressure, ...] = ()

    # --- what other threads read ---

    @property
    def latest(self) -> SamplePass | None:
        """The last completed pass."""
        return self._latest

    @property
    def durations(self) -> FixedBuckets:
        return self._durations

    def dropped(self) -> Mapping[str, int]:
        """Everything skipped since start, by reason (for tailwatch_dropped_total)."""
        return self._dropped

    @property
    def hierarchies(self) -> Hierarchies | None:
        return self._hierarchies

    @property
    def open_files(self) -> int:
        return self._budget.in_use

    @property
    def tree(self) -> KubepodsTree | None:
        return self._tree

    # --- the pass ---

    def sample(self, now: float) -> SamplePass:
        """Run one pass. Never raises: an unexpected failure is logged and counted."""
        start = self._timer()
        skipped: dict[str, int] = {}
        node: tuple[ResourcePressure, ...] = ()
        try:
            samples, events = self._sample(now, skipped)
        except Exception:
            log.exception("cgroup sampling pass failed")
            skipped[DROP_SAMPLER_ERROR] = skipped.get(DROP_SAMPLER_ERROR, 0) + 1
            samples, events = [], []
        try:  # apart: the containers' samples and OOM kills stand without the node's PSI
            node = self._read_node_pressure(skipped)
        except Exception:
            log.exception("reading the node's PSI failed")
            skipped[DROP_SAMPLER_ERROR] = skipped.get(DROP_SAMPLER_ERROR, 0) + 1
        duration = max(0.0, self._timer() - start)
        mode = self._hierarchies.mode.value if self._hierarchies else CgroupMode.NONE.value
        result = SamplePass(now, duration, mode, tuple(samples), tuple(events), skipped, node)
        if skipped:
            total = dict(self._dropped_total)
            for reason, n in skipped.items():
                total[reason] = total.get(reason, 0) + n
            self._dropped_total = total
            self._dropped = total
        self._durations = self._durations.observe(duration)
        self._latest = result
        return result

    def close(self) -> None:
        """Close every file kept open."""
        for tracked in self._tracked.values():
            tracked.files.close()
        self._tracked.clear()
        self._close_node_files()

    def _close_node_files(self) -> None:
        if self._node_files is not None:
            self._node_files.close()
            self._node_files = None
        self._node_pressure = {}
        self._node_tuple = ()

    def _node_directory(self) -> Path | None:
        """Where the node's pods' PSI is: the kubepods cgroup in the unified hierarchy (v2,
        or hybrid with systemd mirroring it), else the unified root; None without one."""
        h, tree = self._hierarchies, self._tree
        if h is None or h.unified is None or h.mode is CgroupMode.NONE:
            return None
        if tree is not None and tree.kubepods:
            kubepods = h.unified / tree.kubepods[0]
            if kubepods.is_dir():
                return kubepods
        return h.unified

    def _read_node_pressure(self, skipped: dict[str, int]) -> tuple[ResourcePressure, ...]:
        """The node's PSI totals, from three files kept open. A file the host does not
        provide is dropped quietly (said once); the directory is looked for again at each
        full rescan, so a kubepods cgroup created after the agent started is found."""
        if self._node_files is None or (self._passes - 1) % self.full_rescan_every == 0:
            directory = self._node_directory()
            if directory is None:
                self._close_node_files()
                return ()
            if self._node_files is None or directory != self._node_dir:
                self._close_node_files()
                self._node_dir = directory
                paths = {key: directory / name for key, name in _NODE_PSI.items()}
                # Three descriptors of their own, outside the containers' budget.
                budget = FdBudget(len(paths))
                self._node_files = ContainerFiles(paths, budget, home=directory)
        files = self._node_files
        changed, failed = files.read_all()
        for key, exc in failed:
            if files.classify(key, exc) is Outcome.UNREADABLE or files.was_read(key):
                skipped[DROP_UNREADABLE] = skipped.get(DROP_UNREADABLE, 0) + 1
                words = "cannot read the node's PSI file; no longer reading it: %s"
            else:
                words = "the node's PSI file is not provided by this host; not reported: %s"
            self._warn.warning(f"node:{key}", words, exc)
            files.drop(key)
            self._node_pressure.pop(PRESSURE_FILES[key], None)
        for key in changed:
            raw = files.get(key)
            resource_name = PRESSURE_FILES[key]
            self._node_pressure.pop(resource_name, None)
            if raw is None:
                continue
            try:
                some, full = pressure_fields(raw)
            except CgroupParseError as exc:
                self._parse_error(key, exc, skipped)
                continue
            self._node_pressure[resource_name] = ResourcePressure(resource_name, some, full)
        if changed or failed:
            p = self._node_pressure
            self._node_tuple = tuple(p[r] for r in _RESOURCES if r in p)
        return self._node_tuple

    def _detect(self) -> None:
        found = detect_hierarchies(self.root)
        if found != self._hierarchies:
            self.close()
            self._hierarchies = found
            droot = found.discovery_root
            self._tree = KubepodsTree(droot) if droot is not None else None
            if found.mode is CgroupMode.NONE:
                self._warn.warning(
                    "no_cgroupfs", "no cgroup hierarchy found under %s", str(self.root)
                )
            else:
                log.info(
                    "cgroup layout detected",
                    extra={"mode": found.mode.value, "cgroup_root": str(self.root)},
                )

    def _snapshot_pods(self) -> tuple[PodSnapshot, ...]:
        for _ in range(3):
            try:
                return tuple(self._pods())
            except RuntimeError:
                # The pod store changed while it was iterated from this thread; try again.
                continue
        return self._last_pods

    def _wanted(self, pods: tuple[PodSnapshot, ...]) -> _Index:
        last = self._last_pods
        if len(pods) == len(last) and all(a is b for a, b in zip(pods, last, strict=True)):
            return self._index
        index: _Index = {}
        for pod in pods:
            for container in pod.containers:
                cid = container_id_of_status(container.container_id)
                if cid is not None:
                    index[cid] = (pod, container)
        self._last_pods = pods
        self._index = index
        uids = {pod.uid for pod in pods}
        self._seen_oom = {k: v for k, v in self._seen_oom.items() if k[0] in uids}
        return index

    def _discover(self, tree: KubepodsTree, wanted: _Index) -> None:
        """Look for the cgroups of running containers not found yet: re-list their pod
        directory, or the QoS level when the pod directory itself is not known."""
        known = tree.containers
        pods_to_list: set[str] = set()
        list_pods = False
        due: list[str] = []
        for cid, (pod, container) in wanted.items():
            if cid in known or container.state != "running":
                continue
            next_pass, _ = self._lookup.get(cid, (0, 0))
            if self._passes < next_pass:
                continue
            due.append(cid)
            if tree.pod_known(pod.uid):
                pods_to_list.add(pod.uid)
            else:
                list_pods = True
        if list_pods:
            tree.scan_pods()
        for uid in pods_to_list:
            tree.scan_pod(uid)
        for cid in due:
            if cid in known:
                self._lookup.pop(cid, None)
            else:
                _, delay = self._lookup.get(cid, (0, 0))
                delay = min(MAX_LOOKUP_DELAY, max(1, delay * 2))
                self._lookup[cid] = (self._passes + delay, delay)

    def _sample(
        self, now: float, skipped: dict[str, int]
    ) -> tuple[list[CgroupSample], list[LifecycleEvent]]:
        self._passes += 1
        full = (self._passes - 1) % self.full_rescan_every == 0
        if self._hierarchies is None or (full and self._hierarchies.mode is CgroupMode.NONE):
            self._detect()
        h = self._hierarchies
        tree = self._tree
        if h is None or tree is None or h.mode is CgroupMode.NONE:
            return [], []
        wanted = self._wanted(self._snapshot_pods())
        if full:
            tree.scan_all()
        else:
            self._discover(tree, wanted)
        for cid in [c for c in self._lookup if c not in wanted]:
            del self._lookup[cid]

        samples: list[CgroupSample] = []
        events: list[LifecycleEvent] = []
        read: set[str] = set()
        v2 = h.mode is CgroupMode.V2
        known = tree.containers
        for cid, (pod, container) in wanted.items():
            cdir = known.get(cid)
            if cdir is None or cdir.pod_uid != pod.uid:
                continue
            tracked = self._tracked.get(cid)
            if tracked is None or tracked.cdir.relpath != cdir.relpath:
                if tracked is not None:
                    tracked.files.close()
                files = ContainerFiles(
                    files_of(h, cdir.relpath), self._budget, home=tree.root / cdir.relpath
                )
                tracked = _Tracked(cdir, files)
                self._tracked[cid] = tracked
            try:
                sample = self._read(
                    v2, tracked, pod, container, now, skipped=skipped, events=events
                )
            except Exception:
                log.exception("sampling one container failed", extra={"container_id": cid})
                skipped[DROP_SAMPLER_ERROR] = skipped.get(DROP_SAMPLER_ERROR, 0) + 1
                sample = None
            if sample is None:
                continue
            read.add(cid)
            samples.append(sample)
        for cid in [c for c in self._tracked if c not in read]:
            # Gone, unmapped (pod deleted, sandbox) or vanished: release its descriptors.
            self._tracked.pop(cid).files.close()
        return samples, events

    def _read(
        self,
        v2: bool,
        tracked: _Tracked,
        pod: PodSnapshot,
        container: ContainerSnapshot,
        now: float,
        *,
        skipped: dict[str, int],
        events: list[LifecycleEvent],
    ) -> CgroupSample | None:
        # Runs for every container on every pass: positional arguments, the memory.stat
        # decision inline, and the values parsed into tuples, not intermediate objects.
        files = tracked.files
        age = tracked.age = tracked.age + 1
        if tracked.missing and age >= tracked.missing_check_at:
            self._look_for_missing(tracked)
        changed, failed = files.read_all(
            _SKIP_STAT if age % LIMIT_EVERY == 0 else _SKIP_STAT_AND_LIMIT
        )
        usage_changed = _MEMORY_USAGE in changed
        usage = tracked.usage
        if usage_changed:
            # Parsed first: whether memory.stat is read depends on how far usage moved.
            raw = files.get(_MEMORY_USAGE)
            usage = tracked.usage = None
            try:
                usage = tracked.usage = None if raw is None else parse_int(raw)
            except CgroupParseError as exc:
                self._parse_error(_MEMORY_USAGE, exc, skipped)
        # memory.stat (the one costly file: the kernel formats some 40 counters, about 12 µs
        # on v1) only when its inactive_file may matter: when memory usage moved by
        # MEMORY_STAT_DELTA since it was last read, and at least every MEMORY_STAT_MAX_AGE
        # passes.
        if (
            age - tracked.stat_read_at >= MEMORY_STAT_MAX_AGE
            or tracked.inactive_file is None
            or (
                usage_changed
                and (
                    usage is None
                    or tracked.usage_at_stat is None
                    or abs(usage - tracked.usage_at_stat) >= MEMORY_STAT_DELTA
                )
            )
        ):
            self._read_memory_stat(tracked, changed, failed)
        if failed:
            dropped = self._failures(tracked, failed, skipped)
            if dropped is None:
                return None  # vanished
            if dropped:
                self._forget_values(tracked)
                changed = list(files.keys)
        if not changed and tracked.sample is not None and tracked.pod is pod:
            return tracked.sample  # nothing moved since the last pass: the same sample
        if changed:
            self._parse_changed(tracked, v2, changed, skipped)
            if CgroupFile.MEMORY_OOM in changed and tracked.kills is not None:
                self._count_oom(
                    tracked=tracked,
                    pod=pod,
                    container=container,
                    kills=tracked.kills,
                    now=now,
                    events=events,
                )
        cpu_usage, periods, throttled_periods, throttled = tracked.cpu
        sample = CgroupSample(
            pod.namespace,
            pod.name,
            container.name,
            pod.uid,
            tracked.cdir.container_id,
            cpu_usage,
            periods,
            throttled_periods,
            throttled,
            tracked.working_set,
            tracked.limit,
            tracked.kills,
            self._seen_oom.get((pod.uid, container.name), 0) if self._seen_oom else 0,
            tracked.pressure_tuple,
        )
        tracked.sample = sample
        tracked.pod = pod
        return sample

    def _parse_changed(
        self, tracked: _Tracked, v2: bool, changed: list[CgroupFile], skipped: dict[str, int]
    ) -> None:
        """Re-parse the values fed by the files that changed."""
        files = tracked.files
        data, index = files.data, files.index
        working_set_changed = pressure_changed = cpu_changed = False
        for key in changed:
            if key is _CPU_STAT or key is _CPUACCT_USAGE:
                cpu_changed = True  # v1 needs both files: parsed once, below
                continue
            if key is _MEMORY_USAGE:
                working_set_changed = True  # parsed by _read already
                continue
            i = index.get(key)
            raw = None if i is None else data[i]
            try:
                resource_name = PRESSURE_FILES.get(key)
                if resource_name is not None:  # the most frequent after CPU and usage
                    pressure_changed = True
                    pressure = tracked.pressure
                    pressure.pop(resource_name, None)
                    if raw is not None:
                        some, full = pressure_fields(raw)
                        pressure[resource_name] = ResourcePressure(resource_name, some, full)
                elif key is CgroupFile.MEMORY_STAT:
                    working_set_changed = True
                    tracked.inactive_file = None
                    if raw is not None:
                        tracked.inactive_file = (
                            parse_inactive_file_v2(raw) if v2 else parse_inactive_file_v1(raw)
                        )
                elif key is CgroupFile.MEMORY_LIMIT:
                    tracked.limit = None
                    if raw is not None:
                        tracked.limit = parse_v2_limit(raw) if v2 else parse_v1_limit(raw)
                elif key is CgroupFile.MEMORY_OOM:
                    tracked.kills = None
                    if raw is not None:
                        tracked.kills = parse_oom_kills_v2(raw) if v2 else parse_oom_kills_v1(raw)
            except CgroupParseError as exc:
                self._parse_error(key, exc, skipped)
        if cpu_changed:
            tracked.cpu = _NO_CPU  # stays so if the parse fails
            try:
                if v2:
                    stat = files.get(_CPU_STAT)
                    if stat is not None:
                        tracked.cpu = cpu_stat_v2_fields(stat)
                else:
                    acct = files.get(_CPUACCT_USAGE)
                    stat = files.get(_CPU_STAT)
                    if acct is not None or stat is not None:
                        tracked.cpu = cpu_v1_fields(acct, stat)
            except CgroupParseError as exc:
                self._parse_error(CgroupFile.CPU_STAT, exc, skipped)
        if working_set_changed:
            usage, inactive = tracked.usage, tracked.inactive_file
            tracked.working_set = (
                None if usage is None or inactive is None else working_set(usage, inactive)
            )
        if pressure_changed:
            tracked.pressure_tuple = _in_order(tracked.pressure)

    def _parse_error(self, key: CgroupFile, exc: CgroupParseError, skipped: dict[str, int]) -> None:
        # Counted once per content: an unchanged bad file is not parsed (nor counted) again.
        skipped[DROP_PARSE_ERROR] = skipped.get(DROP_PARSE_ERROR, 0) + 1
        self._warn.warning(f"parse:{key}", "unexpected content in %s: %s", key, exc)

    def _read_memory_stat(
        self,
        tracked: _Tracked,
        changed: list[CgroupFile],
        failed: list[tuple[CgroupFile, OSError]],
    ) -> None:
        """Re-read memory.stat (`_read` decides when)."""
        files = tracked.files
        usage = tracked.usage
        stat_changed, error = files.read_one(CgroupFile.MEMORY_STAT)
        tracked.stat_read_at = tracked.age
        tracked.usage_at_stat = usage
        if error is not None:
            failed.append((CgroupFile.MEMORY_STAT, error))
        elif stat_changed:
            changed.append(CgroupFile.MEMORY_STAT)

    def _failures(
        self,
        tracked: _Tracked,
        failed: list[tuple[CgroupFile, OSError]],
        skipped: dict[str, int],
    ) -> list[CgroupFile] | None:
        """Sort out the files that failed: None if the cgroup vanished, else the files
        dropped from this container's reading."""
        files = tracked.files
        dropped: list[CgroupFile] = []
        for key, exc in failed:
            if key not in files:
                continue  # dropped with the rest of its directory, or failed twice
            outcome = files.classify(key, exc)
            if outcome is Outcome.VANISHED:
                skipped[DROP_VANISHED] = skipped.get(DROP_VANISHED, 0) + 1
                if self._tree is not None:
                    self._tree.forget(tracked.cdir.container_id)
                return None
            if outcome is Outcome.NO_DIRECTORY:
                dropped.extend(self._set_aside(tracked, files.directory(key)))
                continue
            if outcome is Outcome.UNREADABLE or files.was_read(key):
                skipped[DROP_UNREADABLE] = skipped.get(DROP_UNREADABLE, 0) + 1
                self._warn.warning(
                    f"unreadable:{key}",
                    "cannot read a cgroup file; no longer reading it for this container: %s",
                    exc,
                )
            else:
                self._warn.warning(
                    f"absent:{key}",
                    "cgroup file not provided by this host; its signal is not exported: %s",
                    exc,
                )
            files.drop(key)
            dropped.append(key)
        return dropped

    def _set_aside(self, tracked: _Tracked, directory: str) -> list[CgroupFile]:
        """Stop reading the files of a hierarchy that has no directory for this container
        (not counted: nothing was lost, the host does not provide them for it), and look
        for that directory again later, with backoff."""
        files = tracked.files
        keys = [k for k in files.keys if files.directory(k) == directory]
        tracked.missing[directory] = {k: str(files.path(k)) for k in keys}
        for k in keys:
            files.drop(k)
        hierarchy = hierarchy_of(keys[0]) if keys else ""
        if hierarchy not in self._no_directory_logged:
            # Normal on some hosts (every container of a hybrid cgroupfs-driver node):
            # said once per hierarchy, at info level.
            self._no_directory_logged.add(hierarchy)
            log.info(
                "a cgroup hierarchy has no directory for a container (on a hybrid host the "
                "cgroupfs driver creates none under unified/); its signals are not exported",
                extra={"hierarchy": hierarchy, "directory": str(directory)},
            )
        tracked.missing_delay = 1
        tracked.missing_check_at = tracked.age + 1
        return keys

    def _look_for_missing(self, tracked: _Tracked) -> None:
        """One stat per missing directory: read its files from this pass on if it appeared,
        else look again after twice as many passes (at most MAX_LOOKUP_DELAY)."""
        for directory in list(tracked.missing):
            if os.path.isdir(directory):
                for key, path in tracked.missing.pop(directory).items():
                    tracked.files.add(key, path)
        if tracked.missing:
            tracked.missing_delay = min(MAX_LOOKUP_DELAY, max(1, tracked.missing_delay * 2))
            tracked.missing_check_at = tracked.age + tracked.missing_delay

    @staticmethod
    def _forget_values(tracked: _Tracked) -> None:
        """Forget what was parsed from files no longer read (everything is re-parsed; memory
        usage, parsed before the others, is kept while its file is still read)."""
        tracked.cpu = _NO_CPU
        tracked.working_set = tracked.limit = tracked.kills = None
        tracked.inactive_file = None
        if CgroupFile.MEMORY_USAGE not in tracked.files:
            tracked.usage = None
        tracked.pressure.clear()
        tracked.pressure_tuple = ()
        tracked.sample = None

    def _count_oom(
        self,
        *,
        tracked: _Tracked,
        pod: PodSnapshot,
        container: ContainerSnapshot,
        kills: int,
        now: float,
        events: list[LifecycleEvent],
    ) -> None:
        last = tracked.last_oom
        tracked.last_oom = kills
        if last is None:
            # First look at this cgroup. One that existed before the agent's first scan has
            # a count from before the agent started: that is the baseline, silently (like
            # the pod tracker's first list). One created since counts from zero.
            last = kills if tracked.cdir.preexisting else 0
        delta = kills - last
        if delta <= 0:
            return
        key = (pod.uid, container.name)
        self._seen_oom[key] = self._seen_oom.get(key, 0) + delta
        events.append(
            LifecycleEvent(
                kind=PodEventKind.OOM_KILL,
                at=now,
                namespace=pod.namespace,
                pod=pod.name,
                uid=pod.uid,
                workload=pod.workload,
                node=pod.node,
                revision=pod.revision,
                container=container.name,
                count=delta,
            )
        )
