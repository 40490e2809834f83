"""`ContainerFiles` on real files: what a pass reads and reports as changed, with every
file kept open (read by one `map` of preads) and without, and what a container's files
share with another's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from exporter.cgroups.reader import CgroupFile, ContainerFiles, FdBudget
from exporter.cgroups.sampler import CgroupSampler
from exporter.cgroups.synthetic import write_in_place, write_usage
from tests.cgroups.cgroup_scenarios import SCENARIOS, scenario_pods, snapshots

CPU = CgroupFile.CPU_STAT
USAGE = CgroupFile.MEMORY_USAGE
LIMIT = CgroupFile.MEMORY_LIMIT


def _files(tmp_path: Path, budget: FdBudget, name: str = "c") -> tuple[ContainerFiles, Path]:
    directory = tmp_path / name
    directory.mkdir(parents=True)
    (directory / "cpu.stat").write_bytes(b"usage_usec 1\n")
    (directory / "memory.current").write_bytes(b"100\n")
    (directory / "memory.max").write_bytes(b"max\n")
    paths = {
        CPU: directory / "cpu.stat",
        USAGE: directory / "memory.current",
        LIMIT: directory / "memory.max",
    }
    return ContainerFiles(paths, budget, home=directory), directory


def test_every_changed_file_is_reported_on_the_next_pass_and_no_other(tmp_path: Path) -> None:
    for budget in (FdBudget(), FdBudget(0)):  # descriptors kept, and every read by path
        files, directory = _files(tmp_path / str(budget.limit), budget)
        assert files.read_all() == ([CPU, USAGE, LIMIT], [])
        for step in range(2, 6):
            write_in_place(directory / "cpu.stat", f"usage_usec {step}\n")
            assert files.read_all() == ([CPU], [])
            assert files.get(CPU) == f"usage_usec {step}\n".encode()
            assert files.read_all() == ([], [])
        # A file left out by `skip` is not read; it is once `skip` no longer names it.
        write_in_place(directory / "memory.max", "1048576\n")
        assert files.read_all(frozenset({LIMIT})) == ([], [])
        assert files.read_all() == ([LIMIT], [])
        files.close()
        assert budget.in_use == 0


def test_a_file_that_outgrows_the_read_buffer_is_read_whole(tmp_path: Path) -> None:
    files, directory = _files(tmp_path, FdBudget())
    files.read_all()
    assert files.open_files == 3
    big = "usage_usec 7\n" + "".join(f"line_{i} {i}\n" for i in range(2000))
    assert len(big) > 16384
    for content in (big, big.replace("usage_usec 7", "usage_usec 8"), "usage_usec 9\n"):
        write_in_place(directory / "cpu.stat", content)
        assert files.read_all() == ([CPU], [])
        assert files.get(CPU) == content.encode()
    files.close()


def test_a_file_dropped_in_one_container_is_still_read_in_another(tmp_path: Path) -> None:
    budget = FdBudget()
    first, _ = _files(tmp_path, budget, "first")
    second, directory = _files(tmp_path, budget, "second")
    first.read_all()
    second.read_all()
    first.drop(USAGE)
    assert USAGE not in first
    assert first.get(CPU) == b"usage_usec 1\n"
    write_in_place(directory / "memory.current", "200\n")
    assert second.read_all() == ([USAGE], [])
    assert second.get(USAGE) == b"200\n"
    assert (first.open_files, second.open_files, budget.in_use) == (2, 3, 5)
    first.close()
    second.close()
    assert budget.in_use == 0


def test_limit_and_samples_are_the_same_with_kept_descriptors_as_by_path(
    scenario_copy: Callable[[str], Path],
) -> None:
    """The same moving tree sampled with every file kept open and with none: the same
    samples at every pass, the limit changed in place seen by both within LIMIT_EVERY."""
    name = "v2-systemd-containerd"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pods, _ = scenario_pods(layout)
    pod = pods[0]
    app = pod.containers[0]
    assert app.usage is not None
    kept = CgroupSampler(root, lambda: snapshots(name))
    by_path = CgroupSampler(root, lambda: snapshots(name), fd_budget=FdBudget(0))
    usage = app.usage
    for t in range(1, 25):
        usage = replace(usage, cpu_usage_usec=usage.cpu_usage_usec + 1000)
        if t == 5:
            usage = replace(usage, memory_limit=768 << 20)
        write_usage(root, layout, pod, app.container_id, usage)
        a, b = kept.sample(float(t)), by_path.sample(float(t))
        assert a.samples == b.samples
        assert dict(a.skipped) == dict(b.skipped) == {}
    [sample] = [s for s in a.samples if (s.pod, s.container) == (pod.name, app.name)]
    assert sample.memory_limit_bytes == 768 << 20
    assert sample.cpu_usage_seconds == usage.cpu_usage_usec / 1e6
    assert kept.open_files > 0
    assert by_path.open_files == 0
    kept.close()
    by_path.close()
