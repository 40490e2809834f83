"""The sampler and collector on the machine's own cgroupfs: a kubelet-like tree (cgroupfs
driver layout) under a uniquely named directory, a real CPU quota with a real busy process,
a real OOM kill of a child process, a real cgroup removed under open descriptors.

Skipped, with the reason, where the cgroupfs is not writable. Everything created is killed
(by pid) and removed (deepest directory first) in a finally.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cgroups.layout import CgroupMode
from exporter.cgroups.sampler import DROP_VANISHED, CgroupSampler
from exporter.cgroups.source import CgroupSource
from exporter.cgroups.synthetic import hex_id
from exporter.core.events import PodEventKind, Workload
from exporter.core.pods import ContainerSnapshot, PodSnapshot
from exporter.exposition import Exposition
from tests.cgroups.real_cgroupfs import NotWritable, RealTree

UID = "3f6c2a1e-9b8d-4c7a-8e5f-0a1b2c3d4e5f"
POD = f"kubepods/burstable/pod{UID}"
BUSY = hex_id("real-kernel", "busy")
HOG = hex_id("real-kernel", "hog")
GONE = hex_id("real-kernel", "gone")
SANDBOX = hex_id("real-kernel", "sandbox")
LABELS = {"namespace": "real", "pod": "kernel-test"}

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[RealTree]:
    real = RealTree(tmp_path / "cgroup-root")
    try:
        real.setup()
    except (NotWritable, OSError) as exc:
        pytest.skip(f"cgroupfs not writable here: {exc}")
    try:
        for cid in (SANDBOX, BUSY, HOG, GONE):
            real.mkdir(f"{POD}/{cid}")
        yield real
    finally:
        leftovers = real.cleanup()
        assert leftovers == [], leftovers


def pods() -> list[PodSnapshot]:
    return [
        PodSnapshot(
            uid=UID,
            namespace="real",
            name="kernel-test",
            node="this-node",
            workload=Workload("Pod", "kernel-test"),
            revision="",
            qos_class="Burstable",
            containers=tuple(
                ContainerSnapshot(name, container_id=f"containerd://{cid}", state="running")
                for name, cid in (("busy", BUSY), ("hog", HOG), ("gone", GONE))
            ),
        )
    ]


def scrape(sampler: CgroupSampler) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    """name, container, extra labels -> value, parsed back from the exposition text."""
    sampler.sample(time.monotonic())
    text = Exposition([CgroupSource(sampler)]).render()
    out: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            container = labels.pop("container", "")
            if container and {k: labels.pop(k) for k in ("namespace", "pod")} != LABELS:
                continue
            out[(s.name, container, tuple(sorted(labels.items())))] = s.value
    return out


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` (each poll is a real sampling pass) until it holds or time is up."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)  # between passes: the kernel's CFS period is 100 ms


def test_cpu_quota_throttling_and_usage_grow(tree: RealTree) -> None:
    tree.set_cpu_quota(f"{POD}/{BUSY}", 10_000)  # 10 ms per 100 ms: a tenth of a CPU
    sampler = CgroupSampler(tree.root, pods)
    try:
        before = scrape(sampler)
        throttled = ("tailwatch_container_cpu_throttled_periods_total", "busy", ())
        usage = ("tailwatch_container_cpu_usage_seconds_total", "busy", ())
        throttled_s = ("tailwatch_container_cpu_throttled_seconds_total", "busy", ())
        assert before[throttled] == 0
        tree.start(f"{POD}/{BUSY}", "while True: pass")
        latest = before

        def throttled_enough() -> bool:
            nonlocal latest
            latest = scrape(sampler)
            return latest[throttled] >= 5 and latest[usage] > before[usage]

        wait_for(throttled_enough, 30, "5 throttled CFS periods of the busy container")
        assert latest[throttled_s] > 0
        assert latest[("tailwatch_container_cpu_periods_total", "busy", ())] >= latest[throttled]
        assert latest[("tailwatch_container_memory_working_set_bytes", "busy", ())] > 0
        # The sandbox cgroup exists but is no container of the pod status: not exported.
        assert {k[1] for k in latest} <= {"busy", "hog", "gone", ""}
        if tree.mode is not CgroupMode.V1:
            assert ("tailwatch_container_pressure_cpu_waiting_seconds_total", "busy", ()) in latest
    finally:
        sampler.close()


def test_oom_kill_of_a_child_is_counted_without_a_restart(tree: RealTree) -> None:
    limit = 64 << 20
    tree.set_memory_limit(f"{POD}/{HOG}", limit)
    sampler = CgroupSampler(tree.root, pods)
    try:
        first = sampler.sample(time.monotonic())
        [hog] = [s for s in first.samples if s.container == "hog"]
        assert hog.memory_limit_bytes == limit
        assert hog.oom_kills == 0
        # The container's main process starts a child that allocates past the limit; the
        # kernel kills the child (the largest, and it asks to be chosen), the parent lives.
        child = (
            "open('/proc/self/oom_score_adj', 'w').write('1000')\n"
            "chunks = []\n"
            "while True: chunks.append(b'x' * (4 << 20))\n"
        )
        main = (
            "import subprocess, sys\n"
            f"rc = subprocess.run([sys.executable, '-c', {child!r}]).returncode\n"
            "print(rc, flush=True)\n"
        )
        proc = tree.start(f"{POD}/{HOG}", main)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "-9"  # SIGKILL from the OOM killer
        result = sampler.sample(time.monotonic())
        [event] = [e for e in result.events if e.container == "hog"]
        assert (event.kind, event.pod, event.count) == (PodEventKind.OOM_KILL, "kernel-test", 1)
        [hog] = [s for s in result.samples if s.container == "hog"]
        assert (hog.oom_kills, hog.oom_kills_seen) == (1, 1)
        metrics = scrape(sampler)
        assert metrics[("tailwatch_container_oom_kills_total", "hog", ())] == 1
        assert metrics[("tailwatch_container_oom_kills_total", "busy", ())] == 0
    finally:
        sampler.close()


def test_cgroup_removed_under_open_descriptors(tree: RealTree) -> None:
    sampler = CgroupSampler(tree.root, pods)
    try:
        assert "gone" in {s.container for s in sampler.sample(time.monotonic()).samples}
        files = sampler.open_files
        assert files > 0
        for base in tree._distinct_bases():
            (base / POD / GONE).rmdir()  # the runtime removes an exited container's cgroup
        tree.created = [p for p in tree.created if p.name != GONE]
        result = sampler.sample(time.monotonic())
        assert "gone" not in {s.container for s in result.samples}
        assert {"busy", "hog"} <= {s.container for s in result.samples}
        assert dict(result.skipped) == {DROP_VANISHED: 1}
        # Its descriptors are closed: busy, hog and gone kept the same files open.
        assert sampler.open_files == files - files // 3
        assert ("tailwatch_container_cpu_usage_seconds_total", "gone", ()) not in scrape(sampler)
    finally:
        sampler.close()


def test_a_cgroup_made_anew_at_the_same_path_is_read_again(tree: RealTree) -> None:
    """The kept descriptors of a removed cgroup answer ENODEV; a cgroup made again at the
    same path is opened again by its path and read, nothing counted as lost."""
    sampler = CgroupSampler(tree.root, pods)
    try:
        assert "gone" in {s.container for s in sampler.sample(time.monotonic()).samples}
        files = sampler.open_files
        for base in tree._distinct_bases():
            (base / POD / GONE).rmdir()
        tree.created = [p for p in tree.created if p.name != GONE]
        tree.mkdir(f"{POD}/{GONE}")
        for _ in range(12):  # past the passes that re-read the limit and memory.stat
            result = sampler.sample(time.monotonic())
            assert dict(result.skipped) == {}
            again = {s.container: s for s in result.samples}["gone"]
            assert again.cpu_usage_seconds is not None
            assert again.memory_working_set_bytes is not None
        assert sampler.open_files == files
        assert sampler.dropped() == {}
    finally:
        sampler.close()
