"""Helpers shared by the cgroup tests: scenario trees copied to a temporary directory."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cgroups.cgroup_scenarios import FIXTURES, build


@pytest.fixture
def scenario_copy(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a checked-in fixture tree (or build it, if absent) into tmp_path to modify it."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        source = FIXTURES / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            build(name, target)
        return target

    return copy
