"""The suite's own rules, checked on every test (a pytest plugin, loaded by tests/conftest.py).

1. Loopback only. The guard of `tests._guard` is installed in this process when the session
   starts, and in every Python process the tests start (PYTHONPATH gets
   tests/_sitecustomize, TESTS_LOOPBACK_GUARD the file the children report to; both are set
   in os.environ, so every child inherits them). A test during which anything addressed a
   host outside loopback fails at teardown, with where it happened, even if the code under
   test caught the error. Tests of the guard itself take what they provoked with the
   `loopback_violations` fixture.
2. Logged exceptions fail. A log record at ERROR or above that carries exception info
   (`log.exception(...)`, `exc_info=...`, asyncio's "Task exception was never retrieved")
   fails the test it was logged in: a failure the code caught and logged is still a
   failure. A test that provokes them on purpose says so with
   `@pytest.mark.expect_logged_errors`, or requests the `logged_errors` fixture to assert on
   them. Records are seen where they are made (a log record factory), so a test that
   reconfigures logging (the CLI replaces the root handlers) cannot hide them.

What happens outside any test (a module fixture's teardown, a child that outlives its test)
fails the session, listed at the end.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import _guard

SITECUSTOMIZE = Path(__file__).resolve().parent / "_sitecustomize"


class Violations:
    """Off-loopback attempts: this process' (reported by its guard) and its children's (read
    from the file they append to), each taken once."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._offset = 0
        self._here: list[str] = []
        self._lock = threading.Lock()

    def record(self, violation: str) -> None:
        with self._lock:
            self._here.append(violation)

    def take(self) -> list[str]:
        with self._lock:
            taken, self._here = self._here, []
        try:
            with self.log.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            data = b""
        complete = data[: data.rfind(b"\n") + 1]  # a child may be mid-line
        self._offset += len(complete)
        return taken + complete.decode(errors="replace").splitlines()


class LoggedErrors:
    """Log records at ERROR or above with exception info, from a log record factory."""

    def __init__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._lock = threading.Lock()
        self._previous: Callable[..., logging.LogRecord] | None = None

    def install(self) -> None:
        previous = self._previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if record.exc_info and (record.levelno or 0) >= logging.ERROR:
                with self._lock:
                    self._records.append(record)
            return record

        logging.setLogRecordFactory(factory)

    def uninstall(self) -> None:
        if self._previous is not None:
            logging.setLogRecordFactory(self._previous)

    def take(self) -> list[logging.LogRecord]:
        with self._lock:
            taken, self._records = self._records, []
        return taken


def describe(record: logging.LogRecord) -> str:
    text = f"{record.levelname} {record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text


VIOLATIONS = pytest.StashKey[Violations]()
LOGGED = pytest.StashKey[LoggedErrors]()
OUTSIDE = pytest.StashKey[list[str]]()
RESTORE = pytest.StashKey[dict[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_logged_errors: the test logs exceptions on purpose (tests/_plugin.py)",
    )
    fd, name = tempfile.mkstemp(prefix="tailwatch-tests-loopback-", suffix=".log")
    os.close(fd)
    violations = Violations(Path(name))
    _guard.install(violations.record)
    config.stash[VIOLATIONS] = violations
    config.stash[OUTSIDE] = []
    config.stash[RESTORE] = {k: os.environ.get(k) for k in (_guard.ENV, "PYTHONPATH")}
    os.environ[_guard.ENV] = name
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(SITECUSTOMIZE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    logged = config.stash[LOGGED] = LoggedErrors()
    logged.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    if LOGGED in config.stash:
        config.stash[LOGGED].uninstall()
    if VIOLATIONS in config.stash:
        config.stash[VIOLATIONS].log.unlink(missing_ok=True)
    for key, value in config.stash.get(RESTORE, {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _outside(config: pytest.Config, when: str) -> None:
    """Record what happened between tests, for the end of the session."""
    found = [f"off loopback {when}: {v}" for v in config.stash[VIOLATIONS].take()]
    found += [f"logged {when}: {describe(r)}" for r in config.stash[LOGGED].take()]
    config.stash[OUTSIDE].extend(found)


@pytest.fixture(autouse=True)
def _suite_rules(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails the test, at teardown, on an off-loopback attempt or a logged exception."""
    config = request.config
    _outside(config, f"before {request.node.nodeid}")
    yield
    problems = _first(
        "tests may only address loopback; this one tried to reach further:\n",
        config.stash[VIOLATIONS].take(),
    )
    logged = config.stash[LOGGED].take()
    expected = request.node.get_closest_marker("expect_logged_errors") is not None
    if logged and not expected and "logged_errors" not in request.fixturenames:
        problems += _first(
            "an exception was logged (mark the test expect_logged_errors if it is meant):\n",
            [describe(r) for r in logged],
        )
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _first(headline: str, found: list[str], shown: int = 3) -> list[str]:
    """The first `shown` of `found` in full, and how many more: a prober that dials the
    wrong address every 100 ms must not bury the report."""
    out = [headline + f for f in found[:shown]]
    if len(found) > shown:
        out.append(f"... and {len(found) - shown} more like these")
    return out


class ExpectedErrors:
    """The exceptions logged so far in a test that provokes them on purpose: call it."""

    def __init__(self, logged: LoggedErrors) -> None:
        self._logged = logged
        self._records: list[logging.LogRecord] = []

    def __call__(self) -> list[logging.LogRecord]:
        self._records += self._logged.take()
        return list(self._records)


@pytest.fixture
def logged_errors(request: pytest.FixtureRequest) -> ExpectedErrors:
    """For a test that provokes logged exceptions on purpose and asserts on them: they do not
    fail it. `logged_errors()` is every such record logged so far in the test."""
    return ExpectedErrors(request.config.stash[LOGGED])


@pytest.fixture
def loopback_violations(request: pytest.FixtureRequest) -> Violations:
    """The guard's record, for the tests of the guard: `take()` what the test provoked, so
    that only the rest fails it."""
    return request.config.stash[VIOLATIONS]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if OUTSIDE not in config.stash:
        return
    _outside(config, "after the last test")
    if config.stash[OUTSIDE] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    outside = config.stash.get(OUTSIDE, [])
    if outside:
        terminalreporter.section("outside any test", red=True)
        for problem in outside:
            terminalreporter.line(problem)
