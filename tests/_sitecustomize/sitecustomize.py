"""Puts the tests' loopback guard (tests/_guard.py) into every Python process the test
session starts: the session prepends this directory to PYTHONPATH and sets
TESTS_LOOPBACK_GUARD to the file the children report to, so the agent run as
`python -m exporter ...`, the console script the Helm tests start and the demo are held to
loopback like the tests themselves. Without the variable it does nothing.

Then runs the `sitecustomize` this one shadows, if the interpreter has one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _guard() -> None:
    log = os.environ.get("TESTS_LOOPBACK_GUARD")
    if log:
        guard = _load("_tailwatch_tests_guard", HERE.parent / "_guard.py")
        guard.install_in_child(log)  # type: ignore[attr-defined]


def _shadowed() -> None:
    others = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.origin and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_guard()
_shadowed()
