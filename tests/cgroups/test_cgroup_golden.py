"""End to end on the fixture trees: the exposition of each scenario against its golden file
(tests/fixtures/cgroups/<scenario>.prom), checked by promtool, and the trees against the
scenarios that generate them. TAILWATCH_UPDATE_GOLDEN=1 rewrites trees and golden files."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter.cgroups.sampler import CgroupSampler
from exporter.cgroups.source import CgroupSource
from exporter.exposition import Exposition
from tests.cgroups.cgroup_scenarios import FIXTURES, SCENARIOS, build, regenerate, snapshots

UPDATE = os.environ.get("TAILWATCH_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module", autouse=True)
def _update_trees() -> None:
    if UPDATE:
        regenerate(FIXTURES)


def exposition(name: str) -> str:
    ticks = iter([0.0, 0.0021])  # one pass costing 2.1 ms: a fixed histogram
    sampler = CgroupSampler(FIXTURES / name, lambda: snapshots(name), timer=lambda: next(ticks))
    sampler.sample(1.0)
    sampler.close()
    return Exposition([CgroupSource(sampler)]).render()


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_exposition(name: str) -> None:
    golden = FIXTURES / f"{name}.prom"
    text = exposition(name)
    if UPDATE:
        golden.write_text(text)
    assert golden.is_file(), "run with TAILWATCH_UPDATE_GOLDEN=1 to create the golden file"
    assert text == golden.read_text(), (
        f"exposition differs from {golden}; if intended, rerun with TAILWATCH_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_exposition_passes_promtool(name: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; make system-deps)")
    golden = (FIXTURES / f"{name}.prom").read_bytes()
    run = subprocess.run(
        [promtool, "check", "metrics"], input=golden, capture_output=True, timeout=30, check=False
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    assert run.stdout.decode().strip() == ""  # no lint remarks either


def _tree_differences(a: Path, b: Path) -> list[str]:
    out: list[str] = []
    cmp = filecmp.dircmp(a, b)
    out += [f"only in checked-in tree: {a / n}" for n in cmp.left_only]
    out += [f"missing from checked-in tree: {a / n}" for n in cmp.right_only]
    for n in cmp.common_files:
        if (a / n).is_symlink() or (b / n).is_symlink():
            if os.readlink(a / n) != os.readlink(b / n):
                out.append(f"symlink differs: {a / n}")
        elif (a / n).read_bytes() != (b / n).read_bytes():
            out.append(f"content differs: {a / n}")
    for n in cmp.common_dirs:
        if (a / n).is_symlink() != (b / n).is_symlink():
            out.append(f"symlink vs directory: {a / n}")
        elif not (a / n).is_symlink():
            out += _tree_differences(a / n, b / n)
    return out


@pytest.mark.parametrize("name", SCENARIOS)
def test_checked_in_tree_matches_its_scenario(name: str, tmp_path: Path) -> None:
    build(name, tmp_path / name)
    differences = _tree_differences(FIXTURES / name, tmp_path / name)
    assert differences == [], "stale fixture tree; rerun with TAILWATCH_UPDATE_GOLDEN=1"
