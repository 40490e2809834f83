"""The fixture scenarios: one kubelet layout each, the same pods in all of them.

Every tree holds all three QoS classes, pause sandboxes, system slices, a pod the API no
longer knows (its cgroup lingers), and containers that exited (in the pod status, no
cgroup). `python tests/cgroups/cgroup_scenarios.py` (or TAILWATCH_UPDATE_GOLDEN=1 on
test_golden.py) rewrites tests/fixtures/cgroups/<scenario>/ from this file.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from exporter.cgroups.synthetic import (
    ContainerUsage,
    Kernel,
    MiB,
    SyntheticContainer,
    SyntheticPod,
    TreeLayout,
    hex_id,
    pod_snapshots,
    pod_uid,
    write_tree,
)
from exporter.core.events import Workload
from exporter.core.pods import PodSnapshot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroups"

# Kernels chosen so the trees carry each format variant the parsers must handle:
# 6.8 (Ubuntu 24.04: cpu.stat nice_usec, core_sched, bursts; memory.events oom_group_kill),
# 5.10 (Debian 11: no cpu.pressure "full" line, no bursts), 4.18 (RHEL 8, v1 with
# oom_kill in memory.oom_control), 3.10 (CentOS 7: no oom_kill line at all), and 6.18
# hybrid with cpu and cpuacct mounted apart (as on the machine these fixtures were made on).
SCENARIOS: dict[str, TreeLayout] = {
    "v2-systemd-containerd": TreeLayout("v2", "systemd", "containerd", Kernel(6, 8, True)),
    "v2-cgroupfs-containerd": TreeLayout("v2", "cgroupfs", "containerd", Kernel(5, 10)),
    "v1-systemd-crio": TreeLayout("v1", "systemd", "cri-o", Kernel(4, 18)),
    "v1-cgroupfs-docker": TreeLayout("v1", "cgroupfs", "docker", Kernel(3, 10)),
    "hybrid-systemd-docker": TreeLayout(
        "hybrid", "systemd", "docker", Kernel(6, 18), comount_cpu=False
    ),
}


def scenario_pods(layout: TreeLayout) -> tuple[tuple[SyntheticPod, ...], tuple[SyntheticPod, ...]]:
    """(pods the API reports, orphan pods whose cgroups linger)."""
    rt = layout.runtime

    def cid(*parts: str) -> str:
        return hex_id(rt, *parts)

    web = SyntheticPod(
        namespace="shop",
        name="web-7d4b9c8f5-x2x7k",
        uid=pod_uid("shop", "web-7d4b9c8f5-x2x7k"),
        qos="Guaranteed",
        sandbox_id=cid("web", "sandbox"),
        workload=Workload("Deployment", "web"),
        revision="7d4b9c8f5",
        containers=(
            SyntheticContainer(
                "app",
                cid("web", "app"),
                ContainerUsage(
                    cpu_usage_usec=1_234_567_890,
                    nr_periods=120_000,
                    nr_throttled=8_400,
                    throttled_usec=95_123_456,
                    cpu_quota_usec=100_000,
                    memory_anon=300 * MiB,
                    memory_active_file=40 * MiB,
                    memory_inactive_file=24 * MiB,
                    memory_kernel=6 * MiB,
                    memory_limit=512 * MiB,
                    psi_cpu_some=45_000_000,
                    psi_cpu_full=12_000_000,
                    psi_memory_some=1_200_000,
                    psi_memory_full=800_000,
                    psi_io_some=3_400_000,
                    psi_io_full=2_900_000,
                    pids=(4242, 4250, 4251),
                ),
            ),
            SyntheticContainer(
                "istio-proxy",
                cid("web", "istio-proxy"),
                ContainerUsage(
                    cpu_usage_usec=210_000_000,
                    nr_periods=120_000,
                    nr_throttled=310,
                    throttled_usec=4_100_000,
                    cpu_quota_usec=50_000,
                    memory_anon=70 * MiB,
                    memory_active_file=3 * MiB,
                    memory_inactive_file=1 * MiB,
                    memory_kernel=2 * MiB,
                    memory_limit=256 * MiB,
                    psi_cpu_some=2_000_000,
                    psi_cpu_full=500_000,
                    pids=(4300,),
                ),
            ),
        ),
    )
    cart = SyntheticPod(
        namespace="shop",
        name="cart-0",
        uid=pod_uid("shop", "cart-0"),
        qos="Burstable",
        sandbox_id=cid("cart", "sandbox"),
        workload=Workload("StatefulSet", "cart"),
        revision="cart-5c9f8d7b6",
        containers=(
            # An init container that completed: in the status, its cgroup long gone.
            SyntheticContainer("migrate", cid("cart", "migrate"), None, "terminated", init=True),
            SyntheticContainer(
                "cart",
                cid("cart", "cart"),
                ContainerUsage(
                    cpu_usage_usec=98_765_432,
                    nr_periods=40_000,
                    nr_throttled=0,
                    throttled_usec=0,
                    cpu_quota_usec=200_000,
                    memory_anon=900 * MiB,
                    memory_active_file=60 * MiB,
                    memory_inactive_file=100 * MiB,
                    memory_kernel=12 * MiB,
                    memory_limit=1024 * MiB,
                    memory_max_events=57,
                    oom=3,
                    oom_kill=2,  # two child processes killed; the container kept running
                    psi_memory_some=9_000_000,
                    psi_memory_full=7_500_000,
                    pids=(5100, 5101),
                ),
            ),
            SyntheticContainer(
                "log-shipper",
                cid("cart", "log-shipper"),
                ContainerUsage(
                    cpu_usage_usec=5_500_000,
                    memory_anon=20 * MiB,
                    memory_active_file=2 * MiB,
                    memory_inactive_file=3 * MiB,
                    memory_kernel=1 * MiB,
                    pids=(5200,),
                ),
            ),
        ),
    )
    report = SyntheticPod(
        namespace="batch",
        name="report-28391040-abcde",
        uid=pod_uid("batch", "report-28391040-abcde"),
        qos="BestEffort",
        sandbox_id=cid("report", "sandbox"),
        workload=Workload("Job", "report-28391040"),
        containers=(
            SyntheticContainer(
                "report",
                cid("report", "report"),
                ContainerUsage(
                    cpu_usage_usec=61_000_000,
                    memory_anon=150 * MiB,
                    memory_active_file=30 * MiB,
                    memory_inactive_file=200 * MiB,
                    memory_kernel=3 * MiB,
                    psi_io_some=8_000_000,
                    psi_io_full=6_000_000,
                    pids=(6000,),
                ),
            ),
            # A container that exited: its cgroup was removed by the runtime.
            SyntheticContainer(
                "uploader",
                cid("report", "uploader"),
                None,
                "terminated",
                last_terminated_reason="Completed",
            ),
        ),
    )
    orphan = SyntheticPod(
        namespace="shop",
        name="web-7d4b9c8f5-gone1",
        uid=pod_uid("shop", "web-7d4b9c8f5-gone1"),
        qos="Burstable",
        sandbox_id=cid("gone", "sandbox"),
        containers=(
            SyntheticContainer(
                "app", cid("gone", "app"), ContainerUsage(cpu_usage_usec=1_000, pids=(7000,))
            ),
        ),
    )
    return (web, cart, report), (orphan,)


def snapshots(name: str) -> tuple[PodSnapshot, ...]:
    layout = SCENARIOS[name]
    pods, _ = scenario_pods(layout)
    return pod_snapshots(layout, pods)


def build(name: str, root: Path) -> None:
    """Write scenario `name` under `root` (which must not exist or be empty)."""
    layout = SCENARIOS[name]
    pods, orphans = scenario_pods(layout)
    write_tree(root, layout, pods, orphans)


def regenerate(fixtures: Path = FIXTURES) -> None:
    for name in SCENARIOS:
        target = fixtures / name
        if target.exists():
            shutil.rmtree(target)
        build(name, target)


if __name__ == "__main__":
    regenerate(Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES)
