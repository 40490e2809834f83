"""docs/otlp.md's Collector example is valid YAML that sends the agent what it reads: the
filter keeps exactly the default metric names, and the exporters aim at the node's agent
on the OTLP ports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from exporter.otlp import DEFAULT_METRICS
from exporter.settings import DEFAULT_OTLP_METRIC_NAMES

DOC = Path(__file__).parents[2] / "docs" / "otlp.md"


def test_the_collector_example_fans_out_to_the_node_local_agent() -> None:
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
                if "k8sattributes" in b]  # fmt: skip
    env, config = yaml.safe_load_all(block)
    assert {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}} in (
        env["env"]
    )
    (condition,) = config["processors"]["filter/tailwatch"]["metrics"]["metric"]
    assert set(re.findall(r'name != "([^"]+)"', condition)) == set(DEFAULT_METRICS)
    assert tuple(DEFAULT_OTLP_METRIC_NAMES.split(",")) == DEFAULT_METRICS
    exporters = config["exporters"]
    assert exporters["otlp/tailwatch"]["endpoint"] == "${env:NODE_IP}:4317"
    assert exporters["otlphttp/tailwatch"]["endpoint"] == "http://${env:NODE_IP}:4318"
    pipeline = config["service"]["pipelines"]["metrics/tailwatch"]
    assert "k8sattributes" in pipeline["processors"]
    assert set(pipeline["exporters"]) <= set(exporters)
