"""`tailwatch generate`: the committed dashboards and rule files of both histogram forms are
current (so `make test` fails on drift), the chart's copies are byte-identical, `--check`
names stale and missing files, dashboards are the only part that needs grafanalib, and only
the histogram helper writes classic series names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from exporter.mixin.generate import DASHBOARD_DIRS, PROMETHEUS_RULES, RULE_FILES
from tests.mixin.conftest import REPO

NAMES = ("tailwatch-overview", "tailwatch-service", "tailwatch-node")
#: A classic histogram series of the agents': `x_bucket`, `x_count`, `x_sum`.
CLASSIC_SERIES = re.compile(r"\btailwatch_\w+_(?:bucket|count|sum)\b")


def tailwatch(*args: str, cwd: Path = REPO, block: str = "") -> subprocess.CompletedProcess[str]:
    """`tailwatch` in a subprocess; `block` names a module made unimportable there."""
    code = "import sys\n"
    if block:
        code += f"sys.modules[{block!r}] = None\n"
    code += "from exporter.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_committed_files_are_current() -> None:
    result = tailwatch("generate", "all", "--out", str(REPO), "--check")
    assert result.returncode == 0, result.stderr
    assert "12 generated files are current" in result.stdout


def test_the_chart_carries_byte_identical_copies() -> None:
    main, chart = DASHBOARD_DIRS
    for name in NAMES:
        assert (REPO / chart / f"{name}.json").read_bytes() == (
            REPO / main / f"{name}.json"
        ).read_bytes()
    for main_copy, chart_copy in RULE_FILES.values():
        assert (REPO / chart_copy).read_bytes() == (REPO / main_copy).read_bytes()


def test_generate_writes_the_layout_and_check_names_stale_and_missing_files(
    tmp_path: Path,
) -> None:
    result = tailwatch("generate", "all", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(
        [f"dashboards/{n}.json" for n in NAMES]
        + [f"helm/tailwatch/files/dashboards/{n}.json" for n in NAMES]
        + [
            "alerts/tailwatch.rules.yaml",
            "alerts/tailwatch.prometheusrule.yaml",
            "helm/tailwatch/files/rules/tailwatch.rules.yaml",
            "alerts/tailwatch-native.rules.yaml",
            "alerts/tailwatch-native.prometheusrule.yaml",
            "helm/tailwatch/files/rules/tailwatch-native.rules.yaml",
        ]
    )
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (REPO / relative).read_bytes(), relative

    (tmp_path / "dashboards" / "tailwatch-node.json").write_text("{}\n")
    (tmp_path / PROMETHEUS_RULES[True]).unlink()
    result = tailwatch("generate", "all", "--out", str(tmp_path), "--check")
    assert result.returncode == 1
    assert "stale: dashboards/tailwatch-node.json" in result.stderr
    assert f"stale: {PROMETHEUS_RULES[True]}" in result.stderr
    assert "run `make generate`" in result.stderr

    result = tailwatch("generate", "alerts", "--out", str(tmp_path), "--check")
    assert result.returncode == 1
    assert "tailwatch-node.json" not in result.stderr  # only what `alerts` produces

    result = tailwatch("generate", "all", "--out", str(tmp_path))
    assert result.returncode == 0
    assert "2 changed" in result.stdout
    assert tailwatch("generate", "all", "--out", str(tmp_path), "--check").returncode == 0


def test_a_config_file_changes_rules_and_dashboards_together(tmp_path: Path) -> None:
    config = tmp_path / "mixin.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "selectors": {"job": 'job="tw"'},
                "windows": {"latency": "2m"},
                "runbook_base_url": "https://runbooks.example/tailwatch.md",
                # The files name their form: generate writes both whatever this says.
                "native_histograms": True,
            }
        )
    )
    out = tmp_path / "out"
    result = tailwatch("generate", "all", "--out", str(out), "--config", str(config))
    assert result.returncode == 0, result.stderr
    rules = (out / "alerts" / "tailwatch.rules.yaml").read_text()
    native = (out / "alerts" / "tailwatch-native.rules.yaml").read_text()
    overview = (out / "dashboards" / "tailwatch-overview.json").read_text()
    assert 'job="tailwatch"' not in rules + native and 'job=\\"tailwatch\\"' not in overview
    assert 'tailwatch_probe_duration_seconds_bucket{job="tw"}[2m]' in rules
    assert 'tailwatch_probe_duration_seconds{job="tw"}[2m]' in native
    assert "namespace_service_target_state:tailwatch_probe_duration_seconds:quantile2m" in overview
    assert "https://runbooks.example/tailwatch.md#tailwatchagentdown" in rules
    assert "https://runbooks.example/tailwatch.md#tailwatchagentdown" in native


def test_a_bad_config_file_exits_2_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "mixin.yaml"
    config.write_text("windows:\n  latncy: 2m\n")
    result = tailwatch("generate", "alerts", "--out", str(tmp_path), "--config", str(config))
    assert result.returncode == 2
    assert "unknown config key 'windows.latncy'" in result.stderr
    assert not (tmp_path / "alerts").exists()


def test_rules_generate_without_grafanalib_and_dashboards_say_how_to_get_it(
    tmp_path: Path,
) -> None:
    result = tailwatch("generate", "alerts", "--out", str(tmp_path), block="grafanalib")
    assert result.returncode == 0, result.stderr
    result = tailwatch("generate", "dashboards", "--out", str(tmp_path), block="grafanalib")
    assert result.returncode == 1
    assert "pip install 'tailwatch[generate]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_agent_loads_neither_the_mixin_nor_grafanalib() -> None:
    code = (
        "import sys, exporter.agent, exporter.cli, exporter.server\n"
        "prefixes = ('exporter.mixin', 'grafanalib')\n"
        "print(sorted(m for m in sys.modules if m.startswith(prefixes)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_native_rules_read_no_classic_series_and_the_classic_rules_no_native_one() -> None:
    for native, (path, _) in RULE_FILES.items():
        text = (REPO / path).read_text()
        exprs = "\n".join(
            rule["expr"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"]
        )
        classic = CLASSIC_SERIES.findall(exprs)
        if native:
            assert not classic, f"{path} reads classic series: {sorted(set(classic))}"
            assert "histogram_count(" in exprs
        else:
            assert classic and "histogram_count(" not in exprs, path


def test_only_the_histogram_helper_writes_classic_series_names() -> None:
    """Every rule, alert and panel reads histograms through exporter/mixin/promql.py."""
    helper = REPO / "exporter" / "mixin" / "promql.py"
    literal = re.compile(r"_(?:bucket|count|sum)\b")
    for path in sorted((REPO / "exporter" / "mixin").rglob("*.py")):
        if path == helper:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not literal.search(code), f"{path.relative_to(REPO)}:{number}: {line.strip()}"
