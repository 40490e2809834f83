"""One cgroup sampling pass at the reference load, this tree's sampler side by side with the
sampler of an earlier commit, in one process: CPU per pass and the size of the state kept.

Run: `.venv/bin/python -m pytest tests/bench/test_cgroup_pass.py -m bench -s -p no:randomly`
(`TAILWATCH_CGROUP_BASELINE`, default `HEAD`: the commit whose `exporter/cgroups` is the
baseline, taken with `git show` into a temporary package; empty: no baseline.)

The load is the reference load's (tests/bench/reference_load.py): the reference node's
tree (110 pods, 330 containers, systemd driver, containerd), whose cpu.stat, memory.current
and cpu.pressure grow before every pass (`Growth`), on cgroup v2 as in the reference load and
on hybrid (9 files per container). Each round steps the tree once and runs one pass of each
sampler on the same files, in alternating order; both must report the same samples (every
field of every sample), which makes this also a check that the new sampler reports what the
old one did. Reported: the median thread CPU time of a pass over `ROUNDS` rounds, for each of
`REPEATS` repeats, the median of those and the ratio; and the tracemalloc size of each
sampler's state after the warm-up (its own allocations: tree, open files, last values, last
samples). Numbers go to docs/performance.md, "cgroup sampling".
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import re
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exporter.cgroups import sampler as current
from exporter.cgroups.synthetic import (
    TreeLayout,
    Version,
    pod_snapshots,
    reference_pods,
    write_tree,
)
from exporter.core.pods import PodSnapshot
from tests.bench.reference_load import Growth

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 60
REPEATS = 5
WARMUP = 12  # passes: past the first full reads, the first limit and memory.stat re-reads
MODULES = ("__init__", "layout", "parse", "reader", "sampler", "source", "synthetic")


def baseline_sampler(tmp: Path) -> ModuleType | None:
    """The `sampler` module of the baseline commit's `exporter/cgroups`, imported as a
    package of its own (its absolute imports of `exporter.cgroups` pointed at it)."""
    rev = os.environ.get("TAILWATCH_CGROUP_BASELINE", "HEAD")
    if not rev:
        return None
    name = "baseline_cgroups_" + re.sub(r"\W", "_", rev)
    package = tmp / "baseline" / name
    package.mkdir(parents=True)
    for module in MODULES:
        try:
            text = subprocess.run(
                ["git", "show", f"{rev}:exporter/cgroups/{module}.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"no baseline {rev!r}: {exc}")
        text = text.replace("exporter.cgroups.", f"{name}.")
        text = text.replace("from exporter.cgroups import", f"from {name} import")
        (package / f"{module}.py").write_text(text)
    sys.path.insert(0, str(package.parent))
    try:
        return importlib.import_module(f"{name}.sampler")
    finally:
        sys.path.remove(str(package.parent))


def _fields(sample: Any) -> tuple[object, ...]:
    return (
        sample.namespace,
        sample.pod,
        sample.container,
        sample.pod_uid,
        sample.container_id,
        sample.cpu_usage_seconds,
        sample.cpu_periods,
        sample.cpu_throttled_periods,
        sample.cpu_throttled_seconds,
        sample.memory_working_set_bytes,
        sample.memory_limit_bytes,
        sample.oom_kills,
        sample.oom_kills_seen,
        tuple(_psi(sample.pressure)),
    )


def _psi(pressure: Sequence[Any]) -> list[tuple[object, ...]]:
    return [(p.resource, p.some_seconds, p.full_seconds) for p in pressure]


def _state_size(make: Callable[[], Any], passes: Callable[[Any], None]) -> tuple[Any, int]:
    """A sampler made and warmed up under tracemalloc: (it, bytes it still holds)."""
    gc.collect()
    tracemalloc.start()
    try:
        sampler = make()
        passes(sampler)
        gc.collect()
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return sampler, size


def _pass_cpu(sampler: Any, at: float) -> tuple[float, Any]:
    start = time.thread_time()
    result = sampler.sample(at)
    return time.thread_time() - start, result


@pytest.mark.parametrize("version", ["v2", "hybrid"])
def test_pass_cost_against_the_baseline(tmp_path: Path, version: Version) -> None:
    layout = TreeLayout(version, "systemd", "containerd")
    pods = reference_pods("containerd")
    write_tree(tmp_path / "cgroup", layout, pods)
    snaps: Sequence[PodSnapshot] = pod_snapshots(layout, pods)
    growth = Growth(tmp_path / "cgroup")
    old = baseline_sampler(tmp_path)
    kinds: dict[str, ModuleType] = {"new": current}
    if old is not None:
        kinds["old"] = old
    clock = [0.0]

    def warm(sampler: Any) -> None:
        for _ in range(WARMUP):
            growth.step()
            clock[0] += 1
            sampler.sample(clock[0])

    samplers: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for kind, module in kinds.items():
        samplers[kind], sizes[kind] = _state_size(
            functools.partial(module.CgroupSampler, tmp_path / "cgroup", lambda: snaps), warm
        )
    try:
        medians: dict[str, list[float]] = {kind: [] for kind in kinds}
        for repeat in range(REPEATS):
            cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
            for i in range(ROUNDS):
                growth.step()
                clock[0] += 1
                order = list(kinds) if (i + repeat) % 2 == 0 else list(reversed(kinds))
                results = {}
                for kind in order:
                    seconds, results[kind] = _pass_cpu(samplers[kind], clock[0])
                    cpu[kind].append(seconds)
                new = results["new"]
                assert len(new.samples) == 330
                assert new.skipped == {}
                if "old" in results:
                    assert list(map(_fields, new.samples)) == list(
                        map(_fields, results["old"].samples)
                    )
                    assert _psi(new.node_pressure) == _psi(results["old"].node_pressure)
                    assert new.events == results["old"].events
            for kind in kinds:
                medians[kind].append(statistics.median(cpu[kind]))
        print(f"\n[{version}, 330 containers, {REPEATS} x {ROUNDS} passes, interleaved]")
        for kind in kinds:
            runs = " ".join(f"{m * 1e6:6.0f}" for m in medians[kind])
            print(
                f"  {kind}: µs per pass (median of each repeat) {runs}; "
                f"median {statistics.median(medians[kind]) * 1e6:6.0f}; "
                f"state {sizes[kind] / 2**20:.2f} MiB"
            )
        if "old" in kinds:
            ratio = statistics.median(medians["new"]) / statistics.median(medians["old"])
            pairs = zip(medians["new"], medians["old"], strict=True)
            each = " ".join(f"{n / o:.2f}" for n, o in pairs)
            print(
                f"  new / old: CPU {ratio:.2f} (each repeat: {each}), "
                f"state {sizes['new'] / sizes['old']:.2f}"
            )
    finally:
        for sampler in samplers.values():
            sampler.close()
        growth.close()
