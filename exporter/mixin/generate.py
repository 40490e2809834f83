"""`tailwatch generate`: render the dashboards and rule files of a config, write them into a
directory laid out like this repository, or check that the files there are current.

Files (paths relative to the output directory):
- `dashboards/<name>.json`, and their copies in `helm/tailwatch/files/dashboards/` (they read
  classic and native histograms alike);
- for each histogram form the rules may read, whatever the config's `native_histograms`:
  `alerts/tailwatch.rules.yaml` (classic) and `alerts/tailwatch-native.rules.yaml` (native),
  plain Prometheus rule files, their copies in `helm/tailwatch/files/rules/`, and
  `alerts/tailwatch.prometheusrule.yaml` and `alerts/tailwatch-native.prometheusrule.yaml`
  (the same groups in a prometheus-operator PrometheusRule).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.mixin.config import MixinConfig, MixinConfigError, fast_profile, from_mapping
from exporter.mixin.rulefiles import prometheus_rule_yaml, rules_yaml

WHAT = ("dashboards", "alerts", "all")
DASHBOARD_DIRS = (Path("dashboards"), Path("helm/tailwatch/files/dashboards"))
#: By histogram form (`native_histograms`): the plain rule file and its chart copy.
RULE_FILES = {
    False: (
        Path("alerts/tailwatch.rules.yaml"),
        Path("helm/tailwatch/files/rules/tailwatch.rules.yaml"),
    ),
    True: (
        Path("alerts/tailwatch-native.rules.yaml"),
        Path("helm/tailwatch/files/rules/tailwatch-native.rules.yaml"),
    ),
}
#: By histogram form: the PrometheusRule.
PROMETHEUS_RULES = {
    False: Path("alerts/tailwatch.prometheusrule.yaml"),
    True: Path("alerts/tailwatch-native.prometheusrule.yaml"),
}


class GeneratorUnavailable(RuntimeError):
    """grafanalib is not installed; the message says how to install it."""


def dashboard_json(dashboard: Any) -> str:
    """grafanalib's convention: sorted keys, two-space indent, a trailing newline."""

    def encode(obj: Any) -> Any:
        to_json = getattr(obj, "to_json_data", None)
        if to_json is None:
            raise TypeError(f"cannot encode {type(obj).__name__} in a dashboard")
        return to_json()

    return json.dumps(dashboard.to_json_data(), sort_keys=True, indent=2, default=encode) + "\n"


def dashboards(config: MixinConfig) -> dict[str, str]:
    """Dashboard file stem → JSON text."""
    try:
        from exporter.mixin.dashboards import DASHBOARDS  # noqa: PLC0415 (needs grafanalib)
    except ImportError as exc:
        raise GeneratorUnavailable(
            f"generating dashboards needs grafanalib ({exc}): pip install 'tailwatch[generate]'"
        ) from None
    return {name: dashboard_json(build(config)) for name, build in DASHBOARDS.items()}


def render(what: str, config: MixinConfig) -> dict[Path, bytes]:
    """Relative path → content of every file `what` (dashboards, alerts or all) produces."""
    if what not in WHAT:
        raise ValueError(f"{what!r} is not one of {', '.join(WHAT)}")
    files: dict[Path, bytes] = {}
    if what in ("dashboards", "all"):
        for name, text in dashboards(config).items():
            for directory in DASHBOARD_DIRS:
                files[directory / f"{name}.json"] = text.encode()
    if what in ("alerts", "all"):
        for native, paths in RULE_FILES.items():
            form = dataclasses.replace(config, native_histograms=native)
            rules = rules_yaml(form).encode()
            for path in paths:
                files[path] = rules
            files[PROMETHEUS_RULES[native]] = prometheus_rule_yaml(form).encode()
    return files


def write(files: dict[Path, bytes], out: Path) -> list[Path]:
    """Write the files that differ; returns the paths written."""
    written = []
    for relative, content in files.items():
        path = out / relative
        if path.is_file() and path.read_bytes() == content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        written.append(relative)
    return written


def stale(files: dict[Path, bytes], out: Path) -> list[Path]:
    """The files under `out` that are missing or differ from what would be generated."""
    return [
        relative
        for relative, content in files.items()
        if not (out / relative).is_file() or (out / relative).read_bytes() != content
    ]


def load_config(path: Path | None) -> MixinConfig:
    """The defaults, with the overrides of a YAML file if one is given."""
    if path is None:
        return MixinConfig()
    try:
        overrides = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MixinConfigError(f"{path}: {exc}") from None
    return from_mapping(overrides)


def run(
    what: str,
    out: Path,
    *,
    check: bool = False,
    config_file: Path | None = None,
    speed: float | None = None,
) -> int:
    """The command: 0 when written or current, 1 when stale (with --check) or grafanalib is
    missing, 2 for an invalid config file or speed."""
    try:
        config = load_config(config_file)
        if speed is not None:
            config = fast_profile(speed, config)
        files = render(what, config)
    except MixinConfigError as exc:
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return 2
    except GeneratorUnavailable as exc:
        print(f"tailwatch: error: {exc}", file=sys.stderr)
        return 1
    if check:
        outdated = stale(files, out)
        for path in outdated:
            print(f"stale: {path}", file=sys.stderr)
        if outdated:
            print(
                f"tailwatch: {len(outdated)} generated file(s) are stale: run `make generate`",
                file=sys.stderr,
            )
            return 1
        print(f"{len(files)} generated files are current")
        return 0
    written = write(files, out)
    for path in written:
        print(f"wrote {path}")
    print(f"{len(files)} files, {len(written)} changed")
    return 0
