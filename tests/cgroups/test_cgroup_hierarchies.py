"""Hierarchies that have no directory for a container: on a hybrid host the cgroupfs driver
creates container cgroups only in the v1 controllers, nothing under unified/. Only the
discovery hierarchy decides that a cgroup is gone; a directory missing elsewhere only
removes that hierarchy's signals, is not counted, and is looked for again with backoff.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.cgroups.reader import FdBudget
from exporter.cgroups.sampler import DROP_VANISHED, CgroupSampler
from exporter.cgroups.source import CgroupSource
from exporter.cgroups.synthetic import (
    Kernel,
    SyntheticPod,
    TreeLayout,
    container_dir,
    pod_snapshots,
    write_tree,
    write_usage,
)
from exporter.exposition import Exposition
from tests.cgroups.cgroup_scenarios import scenario_pods

# The machine these tests were written on: 6.18, cpu and cpuacct mounted apart, cgroup2 at
# unified/, container cgroups (cgroupfs driver, containerd) only in the v1 controllers.
V1_ONLY = TreeLayout(
    "hybrid", "cgroupfs", "containerd", Kernel(6, 18), comount_cpu=False, unified_kubepods=False
)
MIRRORED = TreeLayout("hybrid", "systemd", "docker", Kernel(6, 18), comount_cpu=False)
EXPORTED = {
    ("web-7d4b9c8f5-x2x7k", "app"),
    ("web-7d4b9c8f5-x2x7k", "istio-proxy"),
    ("cart-0", "cart"),
    ("cart-0", "log-shipper"),
    ("report-28391040-abcde", "report"),
}
V1_FILES = 6  # cpu.stat, cpuacct.usage, and four memory files


def tree_of(root: Path, layout: TreeLayout) -> tuple[SyntheticPod, ...]:
    pods, orphans = scenario_pods(layout)
    write_tree(root, layout, pods, orphans)
    return pods


def container_path(layout: TreeLayout, pod: SyntheticPod, name: str) -> str:
    [c] = [c for c in pod.containers if c.name == name]
    return container_dir(layout, pod, c.container_id)


@pytest.mark.parametrize("comount", [False, True], ids=["cpu-apart", "cpu-comounted"])
def test_v1_only_containers_on_a_hybrid_host_export_cpu_and_memory(
    tmp_path: Path, comount: bool
) -> None:
    layout = TreeLayout(
        "hybrid", "cgroupfs", "containerd", Kernel(6, 18), comount_cpu=comount,
        unified_kubepods=False,
    )  # fmt: skip
    pods = tree_of(tmp_path, layout)
    assert not (tmp_path / "unified" / "kubepods").exists()
    snaps = pod_snapshots(layout, pods)
    sampler = CgroupSampler(tmp_path, lambda: snaps, full_rescan_every=1000)
    result = sampler.sample(1.0)
    assert result.mode == "hybrid"
    samples = {(s.pod, s.container): s for s in result.samples}
    assert set(samples) == EXPORTED
    expected = {(p.name, c.name): c.usage for p in pods for c in p.containers if c.usage}
    for key, s in samples.items():
        usage = expected[key]
        assert s.cpu_usage_seconds == pytest.approx(usage.cpu_usage_usec / 1e6)
        assert s.cpu_periods == usage.nr_periods
        assert s.cpu_throttled_periods == usage.nr_throttled
        assert s.cpu_throttled_seconds == pytest.approx(usage.throttled_usec / 1e6)
        assert s.memory_working_set_bytes == usage.working_set
        assert s.memory_limit_bytes == usage.memory_limit
        assert s.oom_kills == usage.oom_kill
        assert s.pressure == ()  # not provided for these cgroups: absent, not an error
    assert dict(result.skipped) == {}
    assert sampler.open_files == V1_FILES * len(EXPORTED)
    tree = sampler.tree
    assert tree is not None
    listings = tree.listings
    for t in range(2, 40):
        result = sampler.sample(float(t))
        assert {(s.pod, s.container) for s in result.samples} == EXPORTED
    # No re-listing, no re-opening: nothing was taken for a vanished cgroup.
    assert (tree.listings, sampler.open_files) == (listings, V1_FILES * len(EXPORTED))
    assert sampler.dropped() == {}
    text = Exposition([CgroupSource(sampler)]).render()
    assert 'tailwatch_container_cpu_throttled_periods_total{container="app"' in text
    assert 'tailwatch_container_memory_working_set_bytes{container="app"' in text
    # v1 has no PSI: none of the six families has a series.
    assert "_waiting_seconds_total{" not in text and "_stalled_seconds_total{" not in text
    sampler.close()


def test_a_unified_directory_that_appears_later_is_found_with_backoff(tmp_path: Path) -> None:
    pods = tree_of(tmp_path, V1_ONLY)
    snaps = pod_snapshots(V1_ONLY, pods)
    web = pods[0]
    [app] = [c for c in web.containers if c.name == "app"]
    assert app.usage is not None
    sampler = CgroupSampler(tmp_path, lambda: snaps, full_rescan_every=1000)

    def app_pressure(now: float) -> set[str]:
        result = sampler.sample(now)
        assert dict(result.skipped) == {}
        [s] = [s for s in result.samples if (s.pod, s.container) == (web.name, "app")]
        assert s.cpu_usage_seconds is not None
        return {p.resource for p in s.pressure}

    for t in range(1, 11):
        assert app_pressure(float(t)) == set()
    # The directory appears after pass 10 (systemd mirroring a cgroup late, say). It was
    # looked for at passes 2, 4 and 8: the next look is at pass 16, not at every pass.
    write_usage(tmp_path, replace(V1_ONLY, unified_kubepods=True), web, app.container_id, app.usage)
    unified = tmp_path / "unified" / container_dir(V1_ONLY, web, app.container_id)
    assert unified.is_dir()
    for t in range(11, 16):
        assert app_pressure(float(t)) == set()
    assert app_pressure(16.0) == {"cpu", "memory", "io"}
    assert sampler.open_files == V1_FILES * len(EXPORTED) + 3
    sampler.close()


def test_only_the_discovery_hierarchy_decides_that_a_container_vanished(
    tmp_path: Path,
) -> None:
    pods = tree_of(tmp_path, V1_ONLY)
    snaps = pod_snapshots(V1_ONLY, pods)
    web, cart = pods[0], pods[1]
    # Paths, not kept descriptors: a directory removed from an ordinary filesystem stays
    # readable through them (the real-kernel tests cover cgroupfs's ENODEV).
    sampler = CgroupSampler(tmp_path, lambda: snaps, fd_budget=FdBudget(0))
    assert len(sampler.sample(1.0).samples) == len(EXPORTED)

    # A hierarchy other than the discovery one (cpu) loses the container's directory: its
    # memory signals go, its CPU stays, nothing is counted.
    shutil.rmtree(tmp_path / "memory" / container_path(V1_ONLY, cart, "cart"))
    result = sampler.sample(2.0)
    got = {(s.pod, s.container): s for s in result.samples}
    assert set(got) == EXPORTED
    assert got[("cart-0", "cart")].cpu_usage_seconds is not None
    assert got[("cart-0", "cart")].memory_working_set_bytes is None
    assert got[("cart-0", "cart")].memory_limit_bytes is None
    assert dict(result.skipped) == {}

    # The container exits: the runtime removes its cgroup from every controller.
    rel = container_path(V1_ONLY, web, "app")
    for hierarchy in ("cpu", "cpuacct", "memory"):
        shutil.rmtree(tmp_path / hierarchy / rel)
    result = sampler.sample(3.0)
    assert {(s.pod, s.container) for s in result.samples} == EXPORTED - {(web.name, "app")}
    assert dict(result.skipped) == {DROP_VANISHED: 1}
    assert dict(sampler.sample(4.0).skipped) == {}
    assert sampler.dropped() == {DROP_VANISHED: 1}
    sampler.close()


def test_a_mirrored_unified_directory_removed_first_is_no_vanished_cgroup(
    tmp_path: Path,
) -> None:
    """At exit the runtime removes a container's cgroup hierarchy by hierarchy; a pass can
    fall between two removals. unified/ going first is no disappearance yet: its PSI goes,
    and the container is counted as vanished once, when its cpu directory goes."""
    pods = tree_of(tmp_path, MIRRORED)
    snaps = pod_snapshots(MIRRORED, pods)
    web = pods[0]
    sampler = CgroupSampler(tmp_path, lambda: snaps, fd_budget=FdBudget(0))
    first = {(s.pod, s.container): s for s in sampler.sample(1.0).samples}
    assert {p.resource for p in first[(web.name, "app")].pressure} == {"cpu", "memory", "io"}
    rel = container_path(MIRRORED, web, "app")
    shutil.rmtree(tmp_path / "unified" / rel)
    result = sampler.sample(2.0)
    app = {(s.pod, s.container): s for s in result.samples}[(web.name, "app")]
    assert (app.pressure, app.cpu_usage_seconds is not None) == ((), True)
    assert dict(result.skipped) == {}
    for hierarchy in ("memory", "cpuacct", "cpu"):
        shutil.rmtree(tmp_path / hierarchy / rel)
    result = sampler.sample(3.0)
    assert (web.name, "app") not in {(s.pod, s.container) for s in result.samples}
    assert dict(result.skipped) == {DROP_VANISHED: 1}
    sampler.close()
