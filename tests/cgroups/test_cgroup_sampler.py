"""The sampler on the fixture trees: mapping, values, what it reads and keeps, and how it
copes with cgroups that vanish, files that are cut or missing, and pods that come late."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.cgroups.reader import FdBudget
from exporter.cgroups.sampler import (
    DROP_PARSE_ERROR,
    DROP_SAMPLER_ERROR,
    DROP_UNREADABLE,
    DROP_VANISHED,
    CgroupSample,
    CgroupSampler,
)
from exporter.cgroups.source import CgroupSource
from exporter.cgroups.synthetic import (
    ContainerUsage,
    MiB,
    SyntheticContainer,
    SyntheticPod,
    container_dir,
    hex_id,
    pod_snapshots,
    write_tree,
    write_usage,
)
from exporter.core.events import PodEventKind
from exporter.core.histogram import cumulative_buckets
from exporter.core.pods import PodSnapshot
from exporter.exposition import Exposition
from tests.cgroups.cgroup_scenarios import FIXTURES, SCENARIOS, scenario_pods, snapshots

EXPORTED = {
    ("web-7d4b9c8f5-x2x7k", "app"),
    ("web-7d4b9c8f5-x2x7k", "istio-proxy"),
    ("cart-0", "cart"),
    ("cart-0", "log-shipper"),
    ("report-28391040-abcde", "report"),
}
# Files each mapped container keeps open: v2 reads 8, v1 6, hybrid 6 + 3 PSI files.
FILES_PER_CONTAINER = {"v2": 8, "v1": 6, "hybrid": 9}


def by_name(samples: tuple[CgroupSample, ...]) -> dict[tuple[str, str], CgroupSample]:
    return {(s.pod, s.container): s for s in samples}


def fixture_root(name: str) -> Path:
    root = FIXTURES / name
    if not root.is_dir():
        pytest.fail(f"fixture tree {root} missing: run TAILWATCH_UPDATE_GOLDEN=1 pytest")
    return root


@pytest.mark.parametrize("name", SCENARIOS)
def test_fixture_tree_maps_exactly_the_known_containers(name: str) -> None:
    layout = SCENARIOS[name]
    pods, _ = scenario_pods(layout)
    sampler = CgroupSampler(fixture_root(name), lambda: snapshots(name))
    result = sampler.sample(10.0)
    assert result.mode == layout.version
    samples = by_name(result.samples)
    # Not exported: pause sandboxes, CRI-O conmon scopes, system slices, the orphan pod's
    # lingering cgroup, and the exited init container and uploader (no cgroup).
    assert set(samples) == EXPORTED
    assert dict(result.skipped) == {}
    assert result.events == ()

    expected = {(p.name, c.name): c.usage for p in pods for c in p.containers if c.usage}
    for key, s in samples.items():
        usage = expected[key]
        assert s.cpu_usage_seconds == pytest.approx(usage.cpu_usage_usec / 1e6)
        assert s.cpu_periods == usage.nr_periods
        assert s.cpu_throttled_periods == usage.nr_throttled
        assert s.cpu_throttled_seconds == pytest.approx(usage.throttled_usec / 1e6)
        assert s.memory_working_set_bytes == usage.working_set
        assert s.memory_limit_bytes == usage.memory_limit
        if layout.kernel.at_least(4, 13):
            assert s.oom_kills == usage.oom_kill
        else:
            assert s.oom_kills is None  # v1 before 4.13 keeps no count
        assert s.oom_kills_seen == 0  # first look: the baseline, silently
        psi = {p.resource: p for p in s.pressure}
        if layout.version == "v1":
            assert psi == {}
        else:
            assert set(psi) == {"cpu", "memory", "io"}
            assert psi["io"].some_seconds == pytest.approx(usage.psi_io_some / 1e6)
            assert psi["memory"].full_seconds == pytest.approx(usage.psi_memory_full / 1e6)
            if layout.kernel.at_least(5, 13):
                assert psi["cpu"].full_seconds == pytest.approx(usage.psi_cpu_full / 1e6)
            else:
                assert psi["cpu"].full_seconds is None
    assert sampler.open_files == FILES_PER_CONTAINER[layout.version] * len(EXPORTED)
    sampler.close()
    assert sampler.open_files == 0


@pytest.mark.parametrize("name", ["v2-systemd-containerd", "v1-systemd-crio"])
def test_later_passes_neither_list_directories_nor_open_files(name: str) -> None:
    sampler = CgroupSampler(fixture_root(name), lambda: snapshots(name), full_rescan_every=60)
    sampler.sample(1.0)
    tree = sampler.tree
    assert tree is not None
    listings, files = tree.listings, sampler.open_files
    for t in range(2, 30):
        assert len(sampler.sample(float(t)).samples) == len(EXPORTED)
    assert (tree.listings, sampler.open_files) == (listings, files)
    sampler.close()


def test_full_rescan_every_n_passes() -> None:
    name = "v2-cgroupfs-containerd"
    sampler = CgroupSampler(fixture_root(name), lambda: snapshots(name), full_rescan_every=5)
    sampler.sample(1.0)
    tree = sampler.tree
    assert tree is not None
    first = tree.listings
    for t in range(2, 7):
        sampler.sample(float(t))
    assert tree.listings == 2 * first  # pass 6 listed everything again
    sampler.close()


def test_pod_cgroup_before_the_pod_is_known(scenario_copy: Callable[[str], Path]) -> None:
    name = "v2-systemd-containerd"
    root = scenario_copy(name)
    known: list[PodSnapshot] = []
    sampler = CgroupSampler(root, lambda: known, full_rescan_every=1000)
    assert sampler.sample(1.0).samples == ()  # cgroups exist, no pod known: nothing exported
    known.extend(snapshots(name))
    assert {(s.pod, s.container) for s in sampler.sample(2.0).samples} == EXPORTED
    sampler.close()


def test_pod_known_before_its_cgroup_appears(scenario_copy: Callable[[str], Path]) -> None:
    name = "v1-cgroupfs-docker"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pods, _ = scenario_pods(layout)
    late = SyntheticPod(
        namespace="shop",
        name="late-1",
        uid="5d2c9e8a-7b6c-4d4e-8f2a-1b0c9d8e7f6a",
        qos="Burstable",
        sandbox_id=hex_id("late", "sandbox"),
        containers=(
            SyntheticContainer(
                "main", hex_id("late", "main"), ContainerUsage(cpu_usage_usec=3_000_000)
            ),
        ),
    )
    all_pods = pod_snapshots(layout, (*pods, late))
    sampler = CgroupSampler(root, lambda: all_pods, full_rescan_every=1000)
    assert ("late-1", "main") not in by_name(sampler.sample(1.0).samples)
    # The kubelet creates the pod cgroup, then the runtime the container's.
    write_tree(root, layout, (late,), system_slices=False)
    got = by_name(sampler.sample(2.0).samples)
    assert got[("late-1", "main")].cpu_usage_seconds == 3.0
    assert set(got) == {*EXPORTED, ("late-1", "main")}
    sampler.close()


def test_a_container_whose_cgroup_never_appears_is_looked_for_with_backoff(
    scenario_copy: Callable[[str], Path],
) -> None:
    name = "v2-systemd-containerd"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pods, _ = scenario_pods(layout)
    ghost = SyntheticPod(
        namespace="vm",
        name="kata-1",
        uid="7e3a1c2b-0d9f-4e8a-9b7c-6d5e4f3a2b1c",
        qos="BestEffort",
        sandbox_id=hex_id("kata", "sandbox"),
        containers=(SyntheticContainer("main", hex_id("kata", "main"), None),),
    )
    snaps = pod_snapshots(layout, (*pods, ghost))
    sampler = CgroupSampler(root, lambda: snaps, full_rescan_every=1000)
    sampler.sample(1.0)
    tree = sampler.tree
    assert tree is not None
    before = tree.listings
    for t in range(2, 66):
        sampler.sample(float(t))
    # Looked for at passes 2, 3, 5, 9, 17, 33, 65: a handful of listings, not 64 rounds.
    rounds = (tree.listings - before) / 4  # a QoS-level scan lists 4 directories here
    assert 4 <= rounds <= 8
    sampler.close()


def test_vanished_container_is_counted_and_its_series_disappear(
    scenario_copy: Callable[[str], Path],
) -> None:
    name = "v2-systemd-containerd"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pods, _ = scenario_pods(layout)
    web = pods[0]
    # Without kept descriptors every read opens the path, as after a restart of the agent;
    # the real-kernel test covers a descriptor kept open on a removed cgroup (ENODEV).
    sampler = CgroupSampler(root, lambda: snapshots(name), fd_budget=FdBudget(0))
    assert len(sampler.sample(1.0).samples) == len(EXPORTED)
    shutil.rmtree(root / container_dir(layout, web, web.containers[0].container_id))
    result = sampler.sample(2.0)
    assert ("web-7d4b9c8f5-x2x7k", "app") not in by_name(result.samples)
    assert len(result.samples) == len(EXPORTED) - 1
    assert dict(result.skipped) == {DROP_VANISHED: 1}
    assert sampler.dropped() == {DROP_VANISHED: 1}
    # Not counted again: the container is forgotten until its pod directory lists it again.
    assert dict(sampler.sample(3.0).skipped) == {}


def test_deleted_pod_series_disappear_and_files_are_closed() -> None:
    name = "hybrid-systemd-docker"
    pods = list(snapshots(name))
    sampler = CgroupSampler(fixture_root(name), lambda: pods)
    registry_text = _exposition(sampler, 1.0)
    assert 'pod="cart-0"' in registry_text
    files = sampler.open_files
    pods[:] = [p for p in pods if p.name != "cart-0"]
    text = _exposition(sampler, 2.0)
    assert 'pod="cart-0"' not in text
    assert 'pod="web-7d4b9c8f5-x2x7k"' in text
    assert sampler.open_files == files - 2 * 9
    sampler.close()


def _exposition(sampler: CgroupSampler, now: float) -> str:
    sampler.sample(now)
    return Exposition([CgroupSource(sampler)]).render()


def _container_path(name: str, root: Path, pod_index: int, container_name: str) -> Path:
    layout = SCENARIOS[name]
    pods, _ = scenario_pods(layout)
    pod = pods[pod_index]
    [c] = [c for c in pod.containers if c.name == container_name]
    return root / container_dir(layout, pod, c.container_id)


@pytest.mark.parametrize(
    "content", [b"", b"usage_usec 12\nuser_us", b"\x00\x00\x00", b"usage_usec lots\n"]
)
def test_cut_or_garbage_file_is_counted_and_the_rest_sampled(
    scenario_copy: Callable[[str], Path], content: bytes
) -> None:
    name = "v2-systemd-containerd"
    root = scenario_copy(name)
    (_container_path(name, root, 0, "app") / "cpu.stat").write_bytes(content)
    sampler = CgroupSampler(root, lambda: snapshots(name))
    result = sampler.sample(1.0)
    app = by_name(result.samples)[("web-7d4b9c8f5-x2x7k", "app")]
    assert app.cpu_usage_seconds is None
    assert app.memory_working_set_bytes is not None
    assert len(result.samples) == len(EXPORTED)
    assert dict(result.skipped) == {DROP_PARSE_ERROR: 1}
    sampler.close()


def test_unreadable_file_is_counted_once_and_no_longer_read(
    scenario_copy: Callable[[str], Path],
) -> None:
    name = "hybrid-systemd-docker"
    root = scenario_copy(name)
    # Reading a directory fails with EISDIR: an error that is not "gone" nor "absent".
    pressure = root / "unified" / _container_path(name, root, 1, "cart").relative_to(root)
    (pressure / "memory.pressure").unlink()
    (pressure / "memory.pressure").mkdir()
    sampler = CgroupSampler(root, lambda: snapshots(name))
    result = sampler.sample(1.0)
    cart = by_name(result.samples)[("cart-0", "cart")]
    assert {p.resource for p in cart.pressure} == {"cpu", "io"}
    assert dict(result.skipped) == {DROP_UNREADABLE: 1}
    assert dict(sampler.sample(2.0).skipped) == {}
    assert sampler.dropped() == {DROP_UNREADABLE: 1}
    sampler.close()


def test_missing_controller_leaves_the_rest_sampled(scenario_copy: Callable[[str], Path]) -> None:
    name = "v1-systemd-crio"
    root = scenario_copy(name)
    shutil.rmtree(root / "memory")  # a host without the memory controller mounted
    sampler = CgroupSampler(root, lambda: snapshots(name))
    result = sampler.sample(1.0)
    assert {(s.pod, s.container) for s in result.samples} == EXPORTED
    for s in result.samples:
        assert s.cpu_usage_seconds is not None
        assert s.cpu_periods is not None
        assert (s.memory_working_set_bytes, s.memory_limit_bytes, s.oom_kills) == (None,) * 3
    assert dict(result.skipped) == {}
    sampler.close()


def test_files_not_provided_are_not_counted(scenario_copy: Callable[[str], Path]) -> None:
    name = "v2-cgroupfs-containerd"
    root = scenario_copy(name)
    app = _container_path(name, root, 0, "app")
    for psi in ("cpu.pressure", "memory.pressure", "io.pressure"):  # a kernel without PSI
        (app / psi).unlink()
    sampler = CgroupSampler(root, lambda: snapshots(name))
    result = sampler.sample(1.0)
    sample = by_name(result.samples)[("web-7d4b9c8f5-x2x7k", "app")]
    assert sample.pressure == ()
    # The other signals are there from the first pass, the working set included.
    [web, *_] = scenario_pods(SCENARIOS[name])[0]
    usage = web.containers[0].usage
    assert usage is not None
    assert sample.memory_working_set_bytes == usage.working_set
    assert sample.cpu_usage_seconds == pytest.approx(usage.cpu_usage_usec / 1e6)
    assert dict(result.skipped) == {}
    sampler.close()


def test_no_cgroupfs_at_all(tmp_path: Path) -> None:
    sampler = CgroupSampler(tmp_path / "nothing-here", lambda: snapshots("v2-systemd-containerd"))
    result = sampler.sample(1.0)
    assert (result.mode, result.samples, dict(result.skipped)) == ("none", (), {})


@pytest.mark.expect_logged_errors  # the pass logs the failure with its traceback
def test_a_failing_pod_source_never_escapes() -> None:
    def broken() -> list[PodSnapshot]:
        raise KeyError("boom")

    sampler = CgroupSampler(fixture_root("v2-systemd-containerd"), broken)
    result = sampler.sample(1.0)
    assert result.samples == ()
    assert dict(result.skipped) == {DROP_SAMPLER_ERROR: 1}


def test_pod_store_changing_while_iterated_is_retried() -> None:
    name = "v2-systemd-containerd"
    calls = 0

    def racing() -> list[PodSnapshot]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("dictionary changed size during iteration")
        return list(snapshots(name))

    sampler = CgroupSampler(fixture_root(name), racing)
    assert len(sampler.sample(1.0).samples) == len(EXPORTED)
    sampler.close()


# --- OOM kills ----------------------------------------------------------------------------


def _bump_oom(name: str, root: Path, pod_index: int, container: str, kills: int) -> None:
    layout = SCENARIOS[name]
    pods, _ = scenario_pods(layout)
    pod = pods[pod_index]
    [c] = [c for c in pod.containers if c.name == container]
    assert c.usage is not None
    write_usage(root, layout, pod, c.container_id, replace(c.usage, oom_kill=kills))


@pytest.mark.parametrize("name", [n for n, lay in SCENARIOS.items() if lay.kernel.at_least(4, 13)])
def test_oom_kill_increment_becomes_an_event_and_a_counter(
    scenario_copy: Callable[[str], Path], name: str
) -> None:
    root = scenario_copy(name)
    sampler = CgroupSampler(root, lambda: snapshots(name))
    first = sampler.sample(1.0)
    assert first.events == ()  # cart's 2 earlier kills are the baseline
    _bump_oom(name, root, 1, "cart", 5)
    second = sampler.sample(2.0)
    [event] = second.events
    assert (event.kind, event.namespace, event.pod, event.container, event.count, event.at) == (
        PodEventKind.OOM_KILL,
        "shop",
        "cart-0",
        "cart",
        3,
        2.0,
    )
    assert event.workload.kind == "StatefulSet"
    cart = by_name(second.samples)[("cart-0", "cart")]
    assert (cart.oom_kills, cart.oom_kills_seen) == (5, 3)
    text = _exposition(sampler, 3.0)
    assert (
        'tailwatch_container_oom_kills_total{container="cart",namespace="shop",pod="cart-0"} 3.0'
        in text
    )
    assert 'tailwatch_container_oom_kills_total{container="app"' in text  # 0 for the others
    assert sampler.sample(4.0).events == ()
    sampler.close()


def test_v1_before_4_13_exports_no_oom_counter() -> None:
    name = "v1-cgroupfs-docker"
    sampler = CgroupSampler(fixture_root(name), lambda: snapshots(name))
    text = _exposition(sampler, 1.0)
    assert "tailwatch_container_oom_kills_total{" not in text
    assert "tailwatch_container_cpu_usage_seconds_total{" in text


def test_container_created_after_start_counts_oom_kills_from_zero(
    scenario_copy: Callable[[str], Path],
) -> None:
    """A new container whose child was OOM-killed before the first look: counted, since its
    cgroup did not exist at the agent's first scan. Its restart keeps the pod's count."""
    name = "v2-systemd-containerd"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pods, _ = scenario_pods(layout)
    current: list[PodSnapshot] = list(pod_snapshots(layout, pods))
    sampler = CgroupSampler(root, lambda: current)
    sampler.sample(1.0)

    def new_pod(container_id: str, kills: int, restarts: int) -> SyntheticPod:
        return SyntheticPod(
            namespace="shop",
            name="worker-1",
            uid="1c2b3a4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
            qos="Burstable",
            sandbox_id=hex_id("worker", "sandbox"),
            containers=(
                SyntheticContainer(
                    "worker",
                    container_id,
                    ContainerUsage(cpu_usage_usec=10, oom=kills, oom_kill=kills),
                    restart_count=restarts,
                ),
            ),
        )

    first = new_pod(hex_id("worker", "1"), kills=1, restarts=0)
    write_tree(root, layout, (first,), system_slices=False)
    current.extend(pod_snapshots(layout, (first,)))
    [event] = sampler.sample(2.0).events
    assert (event.pod, event.container, event.count) == ("worker-1", "worker", 1)

    # The container is OOM-killed as a whole and restarted: a new cgroup, a new id.
    second = new_pod(hex_id("worker", "2"), kills=2, restarts=1)
    shutil.rmtree(root / container_dir(layout, first, first.containers[0].container_id))
    write_tree(root, layout, (second,), system_slices=False)
    current[-1:] = pod_snapshots(layout, (second,))
    result = sampler.sample(3.0)
    [event] = result.events
    assert event.count == 2
    worker = by_name(result.samples)[("worker-1", "worker")]
    assert worker.oom_kills_seen == 3  # the counter does not reset with the container
    sampler.close()


def test_pass_duration_comes_from_the_injected_timer() -> None:
    name = "v2-systemd-containerd"
    ticks = iter([10.0, 10.004, 11.0, 11.0125])
    sampler = CgroupSampler(fixture_root(name), lambda: snapshots(name), timer=lambda: next(ticks))
    assert sampler.sample(1.0).duration_seconds == pytest.approx(0.004)
    assert sampler.sample(2.0).duration_seconds == pytest.approx(0.0125)
    h = sampler.durations
    assert (h.count, h.total) == (2, pytest.approx(0.0165))
    assert dict(cumulative_buckets(h.bounds, h.bucket_counts))["0.005"] == 1
    assert dict(cumulative_buckets(h.bounds, h.bucket_counts))["+Inf"] == 2
    sampler.close()


def test_fixture_trees_are_not_written_by_the_sampler() -> None:
    name = "v1-systemd-crio"
    root = fixture_root(name)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    sampler = CgroupSampler(root, lambda: snapshots(name))
    sampler.sample(1.0)
    sampler.close()
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before
    assert os.access(root, os.R_OK)


# --- what is read when ----------------------------------------------------------------


def _app(name: str) -> tuple[SyntheticPod, SyntheticContainer]:
    pods, _ = scenario_pods(SCENARIOS[name])
    return pods[0], pods[0].containers[0]


def test_memory_stat_is_reread_when_usage_moves_or_after_ten_passes(
    scenario_copy: Callable[[str], Path],
) -> None:
    name = "v2-systemd-containerd"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pod, app = _app(name)
    assert app.usage is not None
    sampler = CgroupSampler(root, lambda: snapshots(name))

    def working_set(t: float) -> int | None:
        return by_name(sampler.sample(t).samples)[(pod.name, "app")].memory_working_set_bytes

    assert working_set(1.0) == app.usage.working_set
    # Page cache moves from the active to the inactive list: usage is the same, so the
    # costly memory.stat is not re-read at once...
    rotated = replace(
        app.usage,
        memory_active_file=app.usage.memory_active_file - 8 * MiB,
        memory_inactive_file=app.usage.memory_inactive_file + 8 * MiB,
    )
    write_usage(root, layout, pod, app.container_id, rotated)
    seen = [working_set(float(t)) for t in range(2, 12)]
    # ...but within 10 passes.
    assert seen[0] == app.usage.working_set
    assert seen[-1] == rotated.working_set
    # Usage moving by a MiB or more re-reads it in the same pass.
    grown = replace(rotated, memory_anon=rotated.memory_anon + 3 * MiB)
    write_usage(root, layout, pod, app.container_id, grown)
    assert working_set(12.0) == grown.working_set
    sampler.close()


def test_memory_limit_is_read_every_ten_passes(scenario_copy: Callable[[str], Path]) -> None:
    name = "v1-systemd-crio"
    layout = SCENARIOS[name]
    root = scenario_copy(name)
    pod, app = _app(name)
    assert app.usage is not None
    sampler = CgroupSampler(root, lambda: snapshots(name))

    def limit(t: float) -> int | None:
        return by_name(sampler.sample(t).samples)[(pod.name, "app")].memory_limit_bytes

    assert limit(1.0) == 512 * MiB
    write_usage(root, layout, pod, app.container_id, replace(app.usage, memory_limit=768 * MiB))
    seen = [limit(float(t)) for t in range(2, 12)]
    assert seen[0] == 512 * MiB  # an in-place resize shows within LIMIT_EVERY passes
    assert 768 * MiB in seen
    sampler.close()


def test_a_bad_file_is_counted_once_per_content(scenario_copy: Callable[[str], Path]) -> None:
    name = "v2-cgroupfs-containerd"
    root = scenario_copy(name)
    stat = _container_path(name, root, 0, "app") / "memory.events"
    stat.write_bytes(b"low 0\nhigh 0\nmax 0\noom 0\noom_ki")
    sampler = CgroupSampler(root, lambda: snapshots(name))
    assert dict(sampler.sample(1.0).skipped) == {DROP_PARSE_ERROR: 1}
    assert dict(sampler.sample(2.0).skipped) == {}  # the same bytes: not parsed again
    with stat.open("r+b") as f:  # in place, as the kernel's file changes
        f.write(b"low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    result = sampler.sample(3.0)
    assert dict(result.skipped) == {}
    assert by_name(result.samples)[("web-7d4b9c8f5-x2x7k", "app")].oom_kills == 0
    assert sampler.dropped() == {DROP_PARSE_ERROR: 1}
    sampler.close()
