"""End to end with a real Prometheus: `tailwatch demo --hold` runs as a subprocess, Debian's
Prometheus scrapes its agent every second with the rules of `fast_profile(SPEED)` (every
window and `for` compressed like the demo's clock), and then:

- every recording rule evaluated without error and produced series;
- every dashboard query, with its variables substituted, returns data;
- the disruption alert was at least pending while the scenario ran;
- the SLO alerts stayed silent for the Service the scenario never touches.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.mixin import Records, fast_profile, rules_yaml
from exporter.mixin.dashboards import DASHBOARDS
from exporter.mixin.generate import dashboard_json
from tests.conftest import free_port
from tests.mixin.conftest import REPO
from tests.mixin.dashboards import Query, queries, substitute
from tests.mixin.prometheus import Prometheus, running_prometheus, wait_until

pytestmark = pytest.mark.e2e

#: The demo's time compression, and the rules' (its 460 scenario seconds take ~31 s).
SPEED = 15.0
NAMESPACE = "shop"
#: Metric families the dashboards and rules read that the agent must export for every
#: query to have data. Checked first, so a missing family fails with its name.
REQUIRED_FAMILIES = (
    "tailwatch_probe_duration_seconds",
    "tailwatch_client_request_duration_seconds",
    "tailwatch_service_disrupted",
    "tailwatch_episodes",
    "tailwatch_episode_p99_ratio",
    "tailwatch_episode_recovery_seconds",
    "tailwatch_pod_info",
    "tailwatch_container_cpu_usage_seconds",
    # Each Service's SLO with the `le` of its SLO bucket: the SLO rules and panels join on it.
    "tailwatch_service_slo_seconds",
)


@dataclass
class AlertLog:
    """Every alert Prometheus reported while the scenario ran: (name, labels, state, since)."""

    seen: set[tuple[str, tuple[tuple[str, str], ...], str, str]] = field(default_factory=set)

    def record(self, prometheus: Prometheus) -> None:
        for alert in prometheus.alerts():
            labels = alert["labels"]
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "alertname"))
            self.seen.add((labels["alertname"], key, alert["state"], alert["activeAt"]))

    def of(self, name: str) -> list[dict[str, str]]:
        return [
            dict(labels) | {"state": state, "active_at": since}
            for n, labels, state, since in self.seen
            if n == name
        ]


@dataclass
class Run:
    prometheus: Prometheus
    start: float
    end: float
    report: dict[str, Any]
    families: set[str]
    alerts: AlertLog
    node: str


def _metric_families(url: str) -> set[str]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    # A counter family is `x` in OpenMetrics and `x_total` in the text format: know both.
    return names | {n.removesuffix("_total") for n in names}


def _rfc3339(text: str) -> float:
    """Prometheus' timestamps (nanoseconds, Z) as Unix seconds."""
    seconds, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.strptime(seconds, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return whole.timestamp() + float(f"0.{fraction or 0}")


def _agent_node(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=2) as resp:
            return str(json.load(resp)["node"])
    except OSError:
        return None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("e2e")
    config = fast_profile(SPEED)
    rules = tmp / "tailwatch.rules.yaml"
    rules.write_text(rules_yaml(config))
    port = free_port()
    agent = f"http://127.0.0.1:{port}"
    report_path = tmp / "report.json"
    log = tmp / "demo.log"
    env = {**os.environ, "COLUMNS": "160", "TERM": "dumb"}
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [
                sys.executable, "-m", "exporter", "demo", "--hold",
                "--listen", f"127.0.0.1:{port}", "--speed", f"{SPEED:g}", "--seed", "1",
                "--report", str(report_path),
            ],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp, env=env,
        )  # fmt: skip
    try:
        node = wait_until(
            lambda: _agent_node(agent) or demo.poll() is not None, "the demo's agent", 60
        )
        assert demo.poll() is None, log.read_text()[-3000:]
        scrape = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "tailwatch",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"node": node}}
                    ],
                }
            ],
        }
        with running_prometheus(tmp, scrape, (rules,)) as prometheus:
            start = time.time()
            alerts = AlertLog()

            def scenario_over() -> bool:
                alerts.record(prometheus)
                return "holding" in log.read_text() or demo.poll() is not None

            wait_until(scenario_over, "the demo's scenario to end", 100)
            assert demo.poll() is None, log.read_text()[-3000:]
            held = time.time()
            # Let every group evaluate once more on the last scrapes.
            wait_until(
                lambda: all(_rfc3339(g["lastEvaluation"]) > held for g in prometheus.rule_groups()),
                "the rules to evaluate after the scenario",
            )
            alerts.record(prometheus)
            yield Run(
                prometheus=prometheus,
                start=start,
                end=time.time(),
                report=json.loads(report_path.read_text()),
                families=_metric_families(agent),
                alerts=alerts,
                node=str(node),
            )
    finally:
        demo.terminate()
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()


def _require(run: Run, *families: str) -> None:
    missing = [f for f in families if f not in run.families]
    assert not missing, f"the agent exports no {', '.join(missing)}"


def _disrupted(run: Run) -> list[str]:
    """The Services the scenario disrupts (the report names them namespace/service)."""
    return sorted({d["service"].rpartition("/")[2] for d in run.report["disruptions"]})


def _unaffected(run: Run) -> str:
    namespace, service = run.report["unaffected_service"].split("/")
    assert namespace == NAMESPACE
    return service


def _values(run: Run, service: str) -> dict[str, str]:
    return {
        "namespace": NAMESPACE,
        "service": service,
        "node": run.node,
        "__rate_interval": "5s",
        "__interval": "1s",
        "__range": f"{math.ceil(run.end - run.start)}s",
    }


def _has_data(run: Run, query: Query, values: dict[str, str]) -> bool:
    expr = substitute(query.expr, values)
    if query.instant:
        return bool(run.prometheus.query(expr, at=run.end))
    return bool(run.prometheus.query_range(expr, run.start, run.end, 1))


def test_every_rule_evaluates_without_error(run: Run) -> None:
    for group in run.prometheus.rule_groups():
        for rule in group["rules"]:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


def test_every_recording_rule_produces_series(run: Run) -> None:
    _require(run, *REQUIRED_FAMILIES)
    records = {
        rule["name"]: rule["query"]
        for group in run.prometheus.rule_groups()
        for rule in group["rules"]
        if rule["type"] == "recording"
    }
    empty = sorted(
        r for r in records if not run.prometheus.series(f'{{__name__="{r}"}}', run.start, run.end)
    )
    assert not empty, f"recording rules without series: {empty}"


def test_every_dashboard_query_returns_data(run: Run) -> None:
    _require(run, *REQUIRED_FAMILIES)
    config = fast_profile(SPEED)
    empty = []
    for name, build in DASHBOARDS.items():
        dashboard = json.loads(dashboard_json(build(config)))
        # The Service dashboard is read for each disrupted Service: a panel must show data
        # for at least one (only recommend has a sidecar, only checkout rolls out).
        services = _disrupted(run) if name == "tailwatch-service" else [".+"]
        for query in queries(name, dashboard):
            where = f"{name}: {query.panel} {query.ref}".strip()
            if not any(_has_data(run, query, _values(run, s)) for s in services):
                empty.append(where)
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_the_disruption_alert_was_at_least_pending_for_a_disrupted_service(run: Run) -> None:
    seen = run.alerts.of("TailwatchDisruptionImpact")
    assert {a["service"] for a in seen} & set(_disrupted(run)), seen
    assert _unaffected(run) not in {a["service"] for a in seen}


def test_no_slo_alert_for_the_service_the_scenario_never_touches(run: Run) -> None:
    unaffected = _unaffected(run)
    config = fast_profile(SPEED)
    # A burn rate judged before Prometheus holds even the shortest window of data reflects
    # the agent's first probes while Prometheus itself starts on the same two cores, not
    # the Service; every alert that became active once that window was full counts.
    full = run.start + min(b.short for b in config.slo.burn_rates)
    burning = [
        a
        for a in run.alerts.of("TailwatchLatencyBudgetBurn")
        if a["service"] == unaffected and _rfc3339(a["active_at"]) >= full
    ]
    assert not burning
    # Silence means something only if its SLO was evaluated.
    short = config.slo.burn_rates[0].short
    series = run.prometheus.series(
        f'{Records(config).slow_ratio(short)}{{service="{unaffected}"}}', run.start, run.end
    )
    assert series, f"no SLO series for {unaffected}: its silence proves nothing"


def test_the_rules_file_of_the_run_is_the_committed_one_compressed() -> None:
    """The e2e rules differ from the committed ones only in windows and `for` durations."""
    committed = (REPO / "alerts" / "tailwatch.rules.yaml").read_text()
    fast = rules_yaml(fast_profile(SPEED))
    durations = re.compile(r"(?<![\d.])\d+(?:ms|s|m|h|d)\b")
    assert durations.sub("D", fast) == durations.sub("D", committed)
