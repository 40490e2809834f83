"""The suite's own rules (tests/_plugin.py) hold: a test that reaches beyond loopback, in
this process or in a child, fails, even when the code under test swallows the error; a test
that logs an exception fails unless it says it expects one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._guard import ENV, OffLoopbackError, hosts_file, is_loopback_ip
from tests._plugin import Violations
from tests.conftest import assert_no_traceback

#: TEST-NET-1: documentation addresses, routed nowhere. The guard stops the call before a
#: packet could leave anyway; the sockets are non-blocking or time out at once.
NOWHERE = "192.0.2.1"


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A TCP listener on 127.0.0.2, another loopback address than the usual one."""
    with socket.socket() as server:
        server.bind(("127.0.0.2", 0))
        server.listen()
        yield server.getsockname()


def test_loopback_addresses() -> None:
    for address in ("127.0.0.1", "127.3.1.2", "127.255.255.254", "::1", "::ffff:127.0.0.9"):
        assert is_loopback_ip(address), address
    for address in ("10.96.0.10", NOWHERE, "0.0.0.0", "::", "fd00::1", "::ffff:10.0.0.1", "web"):
        assert not is_loopback_ip(address), address


def test_the_hosts_file_names_only_loopback_names(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost box # comment\n::1 ip6-localhost\n127.0.1.1 both\n")
    with hosts.open("a") as out:
        out.write(f"{NOWHERE} both printer\n")
    names, addresses = hosts_file(hosts)
    assert names == {"localhost", "box", "ip6-localhost"}
    assert addresses == {"127.0.0.1", "::1", "127.0.1.1", NOWHERE}


def test_a_connect_off_loopback_is_refused_and_recorded(loopback_violations: Violations) -> None:
    with socket.socket() as s:
        s.setblocking(False)
        with pytest.raises(OffLoopbackError, match=f"test tried to reach {NOWHERE} port 9"):
            s.connect((NOWHERE, 9))
        with pytest.raises(OffLoopbackError):
            s.connect_ex((NOWHERE, 9))
    violation, again = loopback_violations.take()
    assert f"{NOWHERE} port 9" in violation and f"{NOWHERE} port 9" in again
    assert "test_suite_rules.py" in violation  # where it happened


def test_a_swallowed_refusal_is_still_recorded(loopback_violations: Violations) -> None:
    """The prober, the watch client and aiohttp catch OSError: the record does not depend
    on the error reaching the test."""

    async def dial() -> None:
        with contextlib.suppress(OSError):
            await asyncio.wait_for(asyncio.open_connection(NOWHERE, 80), 1)

    asyncio.run(dial())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, contextlib.suppress(OSError):
        udp.sendto(b"x", (NOWHERE, 53))
    taken = loopback_violations.take()
    assert len(taken) == 2, taken
    assert all(NOWHERE in v for v in taken)


def test_names_only_dns_could_resolve_are_refused(loopback_violations: Violations) -> None:
    """The C resolver sends its DNS packets without an audit event: the name is refused."""
    with pytest.raises(OffLoopbackError, match=r"'nowhere\.invalid'"):
        socket.getaddrinfo("nowhere.invalid", 80)
    with pytest.raises(OffLoopbackError, match=r"'nowhere\.invalid'"):
        socket.gethostbyname("nowhere.invalid")
    with pytest.raises(OffLoopbackError, match="reverse-resolve"):
        socket.gethostbyaddr(NOWHERE)
    with pytest.raises(OffLoopbackError, match="only DNS"):
        socket.create_connection(("nowhere.invalid", 80), timeout=1)
    assert len(loopback_violations.take()) == 4


def test_listening_on_every_interface_is_refused(loopback_violations: Violations) -> None:
    for family, host in (
        (socket.AF_INET, "0.0.0.0"),
        (socket.AF_INET, ""),
        (socket.AF_INET6, "::"),
    ):
        with socket.socket(family) as s, pytest.raises(OffLoopbackError, match="every interface"):
            s.bind((host, 0))
    assert len(loopback_violations.take()) == 3


def test_loopback_and_unix_sockets_pass(listener: tuple[str, int], tmp_path: Path) -> None:
    with socket.create_connection(listener, timeout=5):
        pass
    with socket.socket(socket.AF_INET6) as v6:
        v6.bind(("::1", 0))
    with socket.socket(socket.AF_INET6) as mapped:
        mapped.settimeout(5)
        mapped.connect(("::ffff:127.0.0.2", listener[1]))
    assert socket.getaddrinfo("localhost", 80)
    assert socket.getaddrinfo("10.96.0.10", 80)  # numeric: nothing is sent, connect decides
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(path)
        server.listen()
        client.connect(path)


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_child_process_is_guarded_too(loopback_violations: Violations) -> None:
    """The agent runs as `python -m exporter` in the e2e tests: it inherits the guard."""
    child = run_child(
        f"""
        import socket
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect(("{NOWHERE}", 9))
        except OSError as exc:
            print("swallowed", type(exc).__name__)
        """
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "swallowed OffLoopbackError\n"
    assert "loopback guard: pid" in child.stderr
    assert f"test tried to reach {NOWHERE} port 9" in child.stderr
    [violation] = loopback_violations.take()
    assert NOWHERE in violation and "-c" in violation


def test_a_child_may_reach_loopback(listener: tuple[str, int]) -> None:
    child = run_child(
        f"""
        import socket
        socket.create_connection(("{listener[0]}", {listener[1]}), timeout=5).close()
        socket.getaddrinfo("localhost", 80)
        print("ok")
        """
    )
    assert child.returncode == 0 and child.stdout == "ok\n", child.stderr
    assert "loopback guard" not in child.stderr


def test_a_logged_exception_is_seen(logged_errors: object) -> None:
    log = logging.getLogger("tailwatch.tests")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.error("no exception info: not counted")
    log.warning("lower: not counted", exc_info=True)
    [record] = logged_errors()  # type: ignore[operator]
    assert record.getMessage() == "failed"


def test_assert_no_traceback() -> None:
    assert_no_traceback('{"level":"info","msg":"started"}\n')
    with pytest.raises(AssertionError, match="printed a traceback"):
        assert_no_traceback('{"level":"error","exc":"Traceback (most recent call last):\\n"}')


def test_the_rules_fail_the_tests_that_break_them(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session of its own, with the plugin, runs tests that break the rules."""
    monkeypatch.delenv(ENV)  # the inner session installs its own guard and report file
    pytester.makeconftest('pytest_plugins = ["tests._plugin"]\n')
    pytester.makepyfile(
        f"""
        import logging
        import socket
        import subprocess
        import sys

        import pytest

        def test_swallowed_off_loopback():
            try:
                socket.create_connection(("{NOWHERE}", 9), timeout=1)
            except OSError:
                pass

        def test_child_off_loopback():
            code = "import socket; socket.socket().connect_ex(('{NOWHERE}', 9))"
            subprocess.run([sys.executable, "-c", code], check=False)

        def test_logged_exception():
            try:
                1 / 0
            except ZeroDivisionError:
                logging.getLogger("x").exception("caught and logged")

        @pytest.mark.expect_logged_errors
        def test_expected_logged_exception():
            logging.getLogger("x").error("expected", exc_info=ValueError("v"))

        def test_loopback():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=5, errors=3)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_swallowed_off_loopback*",
            "*tests may only address loopback; this one tried to reach further:*",
        ]
    )
    text = result.stdout.str()
    assert "ERROR at teardown of test_child_off_loopback" in text
    assert "ERROR at teardown of test_logged_exception" in text
    assert "an exception was logged" in text and "ZeroDivisionError" in text
    assert "PASSED test_the_rules_fail_the_tests_that_break_them.py::test_expected_logged" in text
