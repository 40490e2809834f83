"""A real Prometheus (Debian's package) on loopback for the mixin tests: started with a config
and rule files in a temporary directory, queried over its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.conftest import free_port, stop_process

T = TypeVar("T")


class PromQLError(AssertionError):
    """Prometheus refused a query; the message has its error and the query."""


def wait_until(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """The synchronous `wait_for`: poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        result = probe()
        if result:
            return result
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(0.05)


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def _get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')} in {params}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        result: list[dict[str, Any]] = self._get("/api/v1/query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )["result"]
        return result

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        found: list[dict[str, str]] = self._get(
            "/api/v1/series", **{"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        )
        return found

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._get("/api/v1/alerts")["alerts"]
        return found

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return active

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """/api/v1/query_exemplars (needs `features=("exemplar-storage",)`)."""
        found: list[dict[str, Any]] = self._get(
            "/api/v1/query_exemplars", query=expr, start=f"{start:.3f}", end=f"{end:.3f}"
        )
        return found


#: The flag that makes Prometheus 2.40+ ask targets for protobuf and store native histograms.
NATIVE_HISTOGRAMS = "--enable-feature=native-histograms"


@contextmanager
def running_prometheus(
    directory: Path,
    config: dict[str, Any],
    rule_files: tuple[Path, ...] = (),
    *,
    native_histograms: bool = False,
    features: tuple[str, ...] = (),
    ready: bool = True,
) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with `config` (rule_files added), storage in
    `directory`, with native histograms on if asked and the other `features`
    (--enable-feature) given; stopped (SIGTERM, then waited for) on
    exit. With `ready=False` it is yielded as soon as started: the caller waits for
    `Prometheus.ready()` (to start several at once)."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is needed (make system-deps)"
    config = {**config, "rule_files": [str(p) for p in rule_files]}
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *([NATIVE_HISTOGRAMS] if native_histograms else []),
                *(f"--enable-feature={feature}" for feature in features),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        if ready:
            wait_until(
                lambda: server.ready() or proc.poll() is not None, "Prometheus to be ready", 30
            )
        assert proc.poll() is None, f"prometheus exited: {log.read_text()[-2000:]}"
        yield server
    finally:
        stop_process(proc, 10)
