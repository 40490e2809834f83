"""Which directory is which container: names of every kubelet layout, hierarchy detection,
and the whole product of cgroup versions, drivers, runtimes and QoS classes."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import get_args

import pytest

from exporter.cgroups.layout import (
    CgroupMode,
    KubepodsTree,
    container_id_of_dir,
    container_id_of_status,
    detect_hierarchies,
    is_kubepods_dir,
    pod_uid_of_dir,
    qos_of_dir,
)
from exporter.cgroups.sampler import CgroupSampler
from exporter.cgroups.synthetic import (
    ContainerUsage,
    Driver,
    Runtime,
    SyntheticContainer,
    SyntheticPod,
    TreeLayout,
    Version,
    container_dir,
    hex_id,
    pod_snapshots,
    pod_uid,
    write_tree,
)

CID = "4f1b5d2c9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c"
UID = "0a77fe3d-a911-4eb2-bf4e-1c6f76a69f72"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"cri-containerd-{CID}.scope", ("containerd", CID)),
        (f"crio-{CID}.scope", ("cri-o", CID)),
        (f"docker-{CID}.scope", ("docker", CID)),
        (CID, ("", CID)),  # cgroupfs driver: containerd, Docker
        (f"crio-{CID}", ("cri-o", CID)),  # cgroupfs driver: CRI-O
        (f"crio-conmon-{CID}.scope", None),  # CRI-O's monitor process, not a container
        (f"crio-conmon-{CID}", None),
        (f"{CID}.mount", None),
        ("cgroup.procs", None),
        (CID[:12], None),
    ],
)
def test_container_dir_names(name: str, expected: tuple[str, str] | None) -> None:
    assert container_id_of_dir(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"kubepods-pod{UID.replace('-', '_')}.slice", UID),  # Guaranteed, systemd
        (f"kubepods-burstable-pod{UID.replace('-', '_')}.slice", UID),
        (f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice", UID),
        (f"kubelet-kubepods-burstable-pod{UID.replace('-', '_')}.slice", UID),  # kind
        (f"pod{UID}", UID),  # cgroupfs
        (f"pod{UID.upper()}", UID),
        ("kubepods-burstable.slice", None),
        ("podman.slice", None),
    ],
)
def test_pod_dir_names(name: str, expected: str | None) -> None:
    assert pod_uid_of_dir(name) == expected


def test_qos_and_kubepods_names() -> None:
    assert qos_of_dir("kubepods-burstable.slice") == "burstable"
    assert qos_of_dir("kubepods-besteffort.slice") == "besteffort"
    assert qos_of_dir("burstable") == "burstable"
    assert qos_of_dir("kubelet-kubepods-besteffort.slice") == "besteffort"
    assert qos_of_dir(f"kubepods-burstable-pod{UID}.slice") is None
    assert all(map(is_kubepods_dir, ["kubepods", "kubepods.slice", "kubelet-kubepods.slice"]))
    assert not any(map(is_kubepods_dir, ["system.slice", "kubepods-burstable.slice"]))


def test_status_container_ids() -> None:
    assert container_id_of_status(f"containerd://{CID}") == CID
    assert container_id_of_status(f"cri-o://{CID}") == CID
    assert container_id_of_status(f"docker://{CID}") == CID
    assert container_id_of_status("") is None
    assert container_id_of_status(CID) is None


def test_detect_hierarchies(tmp_path: Path) -> None:
    assert detect_hierarchies(tmp_path).mode is CgroupMode.NONE
    (tmp_path / "memory").mkdir()
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    v1 = detect_hierarchies(tmp_path)
    # cpuacct has no symlink of its own here: found in the co-mount named after both.
    assert (v1.mode, v1.cpu, v1.cpuacct, v1.unified) == (
        CgroupMode.V1,
        tmp_path / "cpu",
        tmp_path / "cpu,cpuacct",
        None,
    )
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    hybrid = detect_hierarchies(tmp_path)
    assert (hybrid.mode, hybrid.unified) == (CgroupMode.HYBRID, tmp_path / "unified")
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    assert detect_hierarchies(tmp_path).mode is CgroupMode.V2


def test_detect_a_cpu_comount_without_symlinks(tmp_path: Path) -> None:
    for name in ("cpuacct,cpu", "memory", "pids"):
        (tmp_path / name).mkdir()
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    h = detect_hierarchies(tmp_path)
    assert (h.mode, h.cpu, h.cpuacct, h.memory) == (
        CgroupMode.HYBRID,
        tmp_path / "cpuacct,cpu",
        tmp_path / "cpuacct,cpu",
        tmp_path / "memory",
    )
    assert h.discovery_root == tmp_path / "cpuacct,cpu"


def test_kind_style_nested_kubepods(tmp_path: Path) -> None:
    cdir = tmp_path / "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
    cdir = cdir / f"kubelet-kubepods-besteffort-pod{UID.replace('-', '_')}.slice"
    (cdir / f"cri-containerd-{CID}.scope").mkdir(parents=True)
    (tmp_path / "system.slice/containerd.service").mkdir(parents=True)
    tree = KubepodsTree(tmp_path)
    tree.scan_all()
    [found] = tree.containers.values()
    assert (found.pod_uid, found.container_id, found.qos, found.runtime) == (
        UID,
        CID,
        "besteffort",
        "containerd",
    )


COMBINATIONS = list(itertools.product(get_args(Version), get_args(Driver), get_args(Runtime)))


@pytest.mark.parametrize(("version", "driver", "runtime"), COMBINATIONS)
def test_every_layout_maps_every_container(
    tmp_path: Path, version: Version, driver: Driver, runtime: Runtime
) -> None:
    layout = TreeLayout(version, driver, runtime)
    pods = tuple(
        SyntheticPod(
            namespace="ns",
            name=f"p-{qos.lower()}",
            uid=pod_uid(runtime, qos),
            qos=qos,
            sandbox_id=hex_id(runtime, qos, "sandbox"),
            containers=tuple(
                SyntheticContainer(
                    name, hex_id(runtime, qos, name), ContainerUsage(cpu_usage_usec=1_000_000)
                )
                for name in ("main", "sidecar")
            ),
        )
        for qos in ("Guaranteed", "Burstable", "BestEffort")
    )
    write_tree(tmp_path, layout, pods)
    sampler = CgroupSampler(tmp_path, lambda: pod_snapshots(layout, pods))
    result = sampler.sample(1.0)
    assert result.mode == version
    got = {(s.pod, s.container) for s in result.samples}
    assert got == {(p.name, c.name) for p in pods for c in p.containers}
    assert all(s.cpu_usage_seconds == 1.0 for s in result.samples)
    assert dict(result.skipped) == {}
    tree = sampler.tree
    assert tree is not None
    # The sandboxes (and CRI-O's conmon scopes) are found but never mapped, never read.
    assert {c.container_id for c in tree.containers.values()} >= {p.sandbox_id for p in pods}
    qos_of = {c.pod_uid: c.qos for c in tree.containers.values()}
    assert [qos_of[p.uid] for p in pods] == ["guaranteed", "burstable", "besteffort"]
    for p in pods:
        expected = container_dir(layout, p, p.containers[0].container_id)
        assert tree.containers[p.containers[0].container_id].relpath == expected


def test_rescans_intern_no_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory: a rescan of the tree joins its paths as strings. pathlib interns each part of
    a path it parses, and the names a rescan interns die with its paths: every full rescan
    left ~300 deleted entries in the interpreter's table of interned strings, which an
    agent at the reference load outgrew after about 20 minutes, and reallocated it at twice
    its size (405 -> 939 KiB). The count is taken at the one place pathlib interns."""
    layout = TreeLayout("v2", "systemd", "containerd")
    pods = tuple(
        SyntheticPod(
            namespace="ns",
            name=f"p{i}",
            uid=pod_uid("containerd", f"pod{i}"),
            qos="Burstable",
            sandbox_id=hex_id("containerd", f"pod{i}", "sandbox"),
            containers=(
                SyntheticContainer(
                    "main", hex_id("containerd", f"pod{i}", "main"), ContainerUsage()
                ),
            ),
        )
        for i in range(20)
    )
    write_tree(tmp_path, layout, pods)
    tree = KubepodsTree(tmp_path)
    tree.scan_all()
    interned: list[str] = []
    intern = sys.intern

    def counting(name: str) -> str:
        interned.append(name)
        return intern(name)

    monkeypatch.setattr(sys, "intern", counting)
    for _ in range(3):
        tree.scan_all()
        tree.scan_pods()
        assert all(tree.scan_pod(p.uid) for p in pods)
    assert interned == []
    assert len({c.pod_uid for c in tree.containers.values()}) == len(pods)
