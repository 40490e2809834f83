"""The node's PSI (the pods' contention for CPU, memory and IO), read by the sampler from
the kubepods cgroup of the unified hierarchy: on v2, on hybrid where systemd mirrors
kubepods there (else the unified root), and not at all on v1 or without PSI."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cgroups.sampler import CgroupSampler
from exporter.cgroups.synthetic import (
    ContainerUsage,
    Kernel,
    TreeLayout,
    kubepods_dir,
    pod_snapshots,
    reference_pods,
    write_cgroup,
    write_tree,
)


def sampler_of(root: Path, layout: TreeLayout) -> CgroupSampler:
    pods = reference_pods(layout.runtime, n_pods=3)
    write_tree(root, layout, pods)
    snapshots = pod_snapshots(layout, pods)
    return CgroupSampler(root, lambda: snapshots)


def node_psi(sampler: CgroupSampler) -> dict[str, float]:
    return {p.resource: p.some_seconds for p in sampler.sample(0.0).node_pressure}


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_v2_reads_the_kubepods_cgroup_and_follows_it(tmp_path: Path, driver: str) -> None:
    layout = TreeLayout("v2", driver, "containerd")  # type: ignore[arg-type]
    sampler = sampler_of(tmp_path, layout)
    assert node_psi(sampler) == {"cpu": 0.0, "memory": 0.0, "io": 0.0}
    kubepods = kubepods_dir(layout)
    write_cgroup(tmp_path, layout, kubepods, ContainerUsage(psi_cpu_some=4_200_000))
    write_cgroup(tmp_path, layout, "", ContainerUsage(psi_cpu_some=9_000_000))  # the host's
    assert node_psi(sampler)["cpu"] == pytest.approx(4.2)
    assert sampler.open_files == 8 * 9  # the containers' budget: the node's are apart


def test_hybrid_without_kubepods_in_unified_reads_the_unified_root(tmp_path: Path) -> None:
    layout = TreeLayout("hybrid", "cgroupfs", "docker", unified_kubepods=False)
    sampler = sampler_of(tmp_path, layout)
    write_cgroup(tmp_path, layout, "", ContainerUsage(psi_memory_some=1_500_000))
    assert node_psi(sampler)["memory"] == pytest.approx(1.5)


def test_v1_and_a_kernel_without_psi_have_none(tmp_path: Path) -> None:
    assert node_psi(sampler_of(tmp_path / "v1", TreeLayout("v1", "systemd", "containerd"))) == {}
    layout = TreeLayout("v2", "systemd", "containerd", kernel=Kernel(5, 10))
    sampler = sampler_of(tmp_path / "nopsi", layout)
    for name in ("cpu.pressure", "memory.pressure", "io.pressure"):
        (tmp_path / "nopsi" / kubepods_dir(layout) / name).unlink()
    result = sampler.sample(0.0)
    assert result.node_pressure == ()
    assert dict(result.skipped) == {}  # not provided: nothing lost, nothing counted
    assert sampler.sample(1.0).node_pressure == ()
