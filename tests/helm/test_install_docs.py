"""docs/install.md and the image's lock files stay true: the values reference is the one the
generator makes from the chart, the scrape config it shows is one Prometheus accepts, and the
image installs every runtime dependency at a version pyproject.toml allows."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helm.chart import REPO, RULES_FILE, render

INSTALL_DOC = REPO / "docs" / "install.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def values_reference() -> ModuleType:
    path = REPO / "helm" / "values_reference.py"
    spec = importlib.util.spec_from_file_location("values_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_values_reference_in_install_doc_is_up_to_date() -> None:
    generator = values_reference()
    doc = INSTALL_DOC.read_text()
    table = generator.current_table()
    assert generator.with_table(doc, table) == doc, (
        "docs/install.md is stale: run python helm/values_reference.py"
    )
    # Every value the chart has appears in it, by its dotted key.
    for key in ("`config.spike-ratio`", "`otlp.hostPort.enabled`", "`auth.enabled`"):
        assert key in table


def test_values_reference_check_mode_reports_a_stale_table(tmp_path: Path) -> None:
    generator = values_reference()
    stale = generator.with_table(INSTALL_DOC.read_text(), "| key |\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        generator.with_table("no markers here", "")
    assert generator.with_table(stale, generator.current_table()) == INSTALL_DOC.read_text()


def test_scrape_config_without_the_operator_is_valid_for_prometheus(tmp_path: Path) -> None:
    doc = INSTALL_DOC.read_text()
    block = re.search(r"<!-- scrape-config -->\n```yaml\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    # The rules path is where the doc's reader puts the chart's rule file; here, the file.
    config["rule_files"] = [str(RULES_FILE)]
    # Debian's Prometheus is built without Kubernetes service discovery: check the rest of
    # the job (relabelings, rule files) with a static target in its place.
    [job] = config["scrape_configs"]
    assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
    job["static_configs"] = [{"targets": ["127.0.0.1:9808"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "rules found" in check.stdout


def test_scrape_config_with_endpoint_auth_is_valid_and_matches_the_chart(tmp_path: Path) -> None:
    """The doc's scrape job for agents with auth.enabled, without the operator: Prometheus
    accepts it, and it verifies and authenticates the way the chart's ServiceMonitor does."""
    doc = INSTALL_DOC.read_text()
    block = re.search(r"<!-- scrape-config-auth -->\n```yaml\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    [job] = config["scrape_configs"]
    assert job["scheme"] == "https"
    # The Service's name for the release `tailwatch` in namespace `tailwatch`, as the doc
    # installs it: what the chart's certificate names and its ServiceMonitor verifies.
    monitor = next(
        m
        for m in render(
            {"serviceMonitor": {"enabled": True}, "tls": {"existingSecret": "tailwatch-tls"}},
            release="tailwatch",
            namespace="tailwatch",
        )
        if m["kind"] == "ServiceMonitor"
    )
    server_name = monitor["spec"]["endpoints"][0]["tlsConfig"]["serverName"]
    assert job["tls_config"]["server_name"] == server_name == "tailwatch.tailwatch.svc"
    assert "insecure_skip_verify" not in job["tls_config"]
    assert job["authorization"]["credentials_file"].endswith("/serviceaccount/token")
    # Checked by promtool with the files in place (the CA and token paths exist only in
    # Prometheus's pod) and a static target instead of Kubernetes discovery.
    for section, key in (("tls_config", "ca_file"), ("authorization", "credentials_file")):
        local = tmp_path / key
        local.write_text("placeholder\n")
        job[section][key] = str(local)
    assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
    job["static_configs"] = [{"targets": ["127.0.0.1:9808"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run(
        ["promtool", "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) of a pip-compile --generate-hashes file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            pins[current] = (pin.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        ("requirements/image.txt", PYPROJECT["project"]["dependencies"]),
        ("requirements/build.txt", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_image_lock_pins_every_dependency_within_pyproject_ranges(
    lock: str, requirements: list[str]
) -> None:
    pins = locked(REPO / lock)
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {lock}"
        version, _ = pins[name]
        assert requirement.specifier.contains(version), f"{lock}: {name}=={version} vs {text}"
    # Hash-checked: every pin carries the hashes of its files.
    assert all(hashes > 0 for _, hashes in pins.values())
    # Nothing about this machine leaks into the lock (index URLs, local wheel directories).
    assert not re.search(
        r"--(index-url|extra-index-url|find-links)|file:|/opt/", (REPO / lock).read_text()
    )
