"""`tailwatch episodes --html FILE` end to end: the agents' pods listed from the API
simulator, their /api/v1/episodes read through its pod proxy over real HTTP, the records
drawn, and the page rendered by a real headless Chromium."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter.simulator import ApiServer
from tests.chromium import measured
from tests.conftest import free_port
from tests.e2e.test_episodes_command import agent_pod, run_cli
from tests.report.test_report import agent_doc

pytestmark = pytest.mark.e2e

#: Two agents on two nodes that saw the same restart of shop/db.
AGENTS = {"node-1": "127.62.0.1", "node-2": "127.62.0.2"}


@contextlib.asynccontextmanager
async def agents_serving(doc: dict[str, Any], port: int) -> AsyncIterator[None]:
    """An HTTP server on each agent's address answering /api/v1/episodes with `doc`."""

    async def episodes(_: web.Request) -> web.Response:
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/api/v1/episodes", episodes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for ip in AGENTS.values():
        await web.TCPSite(runner, ip, port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def test_the_records_are_drawn_as_timelines(
    api: ApiServer, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    for node, ip in AGENTS.items():
        api.store.create("pods", agent_pod(node, ip, port))
    page = tmp_path / "episodes.html"
    async with agents_serving(agent_doc(), port):
        code, out, err = await run_cli(
            capsys,
            ["episodes", "--kubeconfig", str(kubeconfig), "-o", "json", "--html", str(page)],
        )
    assert code == 0, err
    assert f"timelines written to {page}" in err
    (record,) = json.loads(out)["episodes"]  # the table or JSON is printed as without it
    (db,) = measured(page, tmp_path)
    assert db["service"] == "shop/db"
    assert len(db["bands"]) == 1 and len(db["recoveries"]) == 1
    # Both agents reported the same events: each is drawn once.
    assert [kind for kind, _ in db["markers"]] == ["oom_kill", "restart", "ready"]
    assert db["lines"] == []  # the records hold no latency over time, and the page says so
    assert "no latency lines" in page.read_text()
    assert record["cause"] == "restart"


async def test_an_unwritable_file_is_a_clear_error(
    api: ApiServer, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    node, ip = next(iter(AGENTS.items()))
    api.store.create("pods", agent_pod(node, ip, port))
    page = tmp_path / "missing" / "episodes.html"
    async with agents_serving(agent_doc(), port):
        code, _, err = await run_cli(
            capsys, ["episodes", "--kubeconfig", str(kubeconfig), "--html", str(page)]
        )
    assert code == 1
    assert f"tailwatch: error: cannot write {page}" in err
