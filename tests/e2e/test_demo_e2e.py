"""End to end: `tailwatch demo`'s whole scenario, seeded and time-compressed, with the real
agent reading the simulated cluster through a kubeconfig, its pods' real traffic and the
node's cgroup tree. Every injected disruption must come back as an episode with the right
cause, the Service nobody touched must have none, the sidecar burst must be pinned on the
sidecar, and the JSON report must be written."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from exporter.cli import main
from exporter.demo import DemoOptions, run
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

# 20x: the 400 s script plays in 20 s (probes every 100 ms, the agent's windows 20x shorter).
SPEED = 20.0


def episode(report: dict[str, Any], episode_id: str) -> dict[str, Any]:
    doc = report["episodes"]
    return next(e for e in [*doc["open"], *doc["recent"]] if e["id"] == episode_id)


def what_the_agent_reported(report: dict[str, Any]) -> str:
    """The disruptions and every episode with its baseline, for a failure message."""
    doc = report["episodes"]
    lines = [json.dumps(report["disruptions"], indent=1)]
    for e in [*doc["open"], *doc["recent"]]:
        baseline = (e["latency"] or {}).get("baseline") or {}
        lines.append(
            f"{e['id']} {e['cause']} {e['status']} opened {e['opened_at']} baseline p99 "
            f"{baseline.get('p99')} from {baseline.get('samples')} samples; {e['event_counts']}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    import asyncio

    path = tmp_path_factory.mktemp("demo") / "report.json"
    out = io.StringIO()
    options = DemoOptions(
        speed=SPEED,
        seed=9,
        listen=f"127.0.0.1:{free_port()}",
        report=path,
        port=0,
        live=False,
    )
    report = asyncio.run(run(options, Console(file=out, width=200)))
    return report, path, out.getvalue()


def test_every_disruption_is_an_episode_with_its_cause(
    demo_run: tuple[dict[str, Any], Path, str],
) -> None:
    report, _, _ = demo_run
    found = {d["kind"]: (d["expected_cause"], d["detected_cause"]) for d in report["disruptions"]}
    assert found == {
        "rollout": ("rollout", "rollout"),
        "oom_kill": ("restart", "restart"),
        "sidecar_burst": ("resource_pressure", "resource_pressure"),
        "drain": ("reschedule", "reschedule"),
    }, what_the_agent_reported(report)
    assert report["checks"]["every_disruption_detected"] is True


def test_what_the_agent_saw_of_each(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = demo_run
    by_kind = {d["kind"]: episode(report, d["episode"]) for d in report["disruptions"]}
    counts = {kind: e["event_counts"] for kind, e in by_kind.items()}
    # The rollout: three pods of a new ReplicaSet came while the three of the old one left.
    rollout = by_kind["rollout"]["events"]
    added = {e["pod"].rsplit("-", 1)[0] for e in rollout if e["event"] == "added"}
    removed = {e["pod"].rsplit("-", 1)[0] for e in rollout if e["event"] == "removed"}
    assert len(added) == len(removed) == 1 and added != removed, (added, removed)
    assert counts["rollout"]["endpoint/added"] == counts["rollout"]["endpoint/removed"] == 3
    # The OOM kill: the kernel's (cgroup memory.events) and the kubelet's (OOMKilled).
    restart = by_kind["oom_kill"]
    assert counts["oom_kill"].get("pod/oom_kill", 0) >= 1, counts["oom_kill"]
    assert any(
        e["event"] == "container_restart" and e["reason"] == "OOMKilled" for e in restart["events"]
    )
    # The drain: db-2 left node-3 and came back on node-1.
    assert counts["drain"].get("endpoint/moved", 0) == 1, counts["drain"]
    # Each had a steady baseline to compare with. At 20x an episode holds only a few dozen
    # probes, too few to assert how much slower each was (docs/demo.md has the numbers of
    # the default 4x run); the burst was found by its latency in the first place.
    for kind, e in by_kind.items():
        assert e["latency"]["baseline"] is not None, kind
    latency = by_kind["sidecar_burst"]["latency"]
    assert latency["during"]["p99"] > 2 * latency["baseline"]["p99"], latency


def test_the_sidecar_burst_is_attributed_to_the_sidecar(
    demo_run: tuple[dict[str, Any], Path, str],
) -> None:
    report, _, _ = demo_run
    burst = next(d for d in report["disruptions"] if d["kind"] == "sidecar_burst")
    top = episode(report, burst["episode"])["attribution"][0]
    assert (top["container"], top["sidecar"]) == ("envoy", True), top
    assert "cpu_throttling" in top["signals"]
    assert top["pod"].startswith("recommend-")


def test_the_untouched_service_has_no_episode(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = demo_run
    doc = report["episodes"]
    assert [e["id"] for e in [*doc["open"], *doc["recent"]] if e["service"] == "cart"] == []
    assert report["checks"]["unaffected_service_quiet"] is True


def test_the_report_is_written_and_printed(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    report, path, printed = demo_run
    assert json.loads(path.read_text()) == report
    assert report["tailwatch_demo"]["speed"] == SPEED
    assert report["tailwatch_demo"]["seed"] == 9
    assert f"report written to {path}" in printed.replace("\n", "")
    assert "what was injected, and what the agent reported" in printed


def test_the_cli_rejects_a_bad_speed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--speed", "0"]) == 2
    assert "--speed" in capsys.readouterr().out
