"""values.schema.json: bad values fail at install with a message naming the key, every value is
described and closed where the chart owns the shape, and the agent's options in `config` are
exactly the agent's own (exporter/settings.py), with the same defaults and no looser checks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.settings import OPTIONS
from tests.helm.chart import CHART, NAMESPACE, RELEASE, walk_schema

SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
# Options the chart sets from its own values (flags and the downward API), not from `config`:
# --auth and the certificate files follow auth.enabled and tls, which also mount the files
# where the flags point (one switch, not two that could disagree).
CHART_SET_OPTIONS = {
    "node-name", "kubeconfig", "cgroup-root", "listen", "otlp-listen", "pod-namespace",
    "auth", "tls-cert-file", "tls-key-file", "otlp-grpc-listen",
}  # fmt: skip
# Options whose `config` default is null: the chart renders its own value in their place
# (peer-selector: the DaemonSet's selector labels; tests/helm/test_chart_render.py).
CHART_DERIVED_DEFAULTS = {"peer-selector"}
# Kubernetes objects passed through as they are: the API server checks their shape.
PASS_THROUGH = {
    "commonLabels",
    "imagePullSecrets",
    "serviceAccount.annotations",
    "service.annotations",
    "service.labels",
    *(
        f"{monitor}.{key}"
        for monitor in ("serviceMonitor", "podMonitor")
        for key in ("labels", "additionalLabels", "relabelings", "metricRelabelings", "tlsConfig")
    ),
    "prometheusRule.labels",
    "prometheusRule.additionalRuleLabels",
    "prometheusRule.additionalRuleAnnotations",
    "prometheusRule.disabled",
    "dashboards.annotations",
    "networkPolicy.metrics.from",
    "networkPolicy.otlp.from",
    "podSecurityContext",
    "securityContext",
    "resources.requests",
    "resources.limits",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podAnnotations",
    "podLabels",
    "extraEnv",
    "extraArgs",
    "extraVolumes",
    "extraVolumeMounts",
}
# Helm's `global` is shared with a parent chart, whose own keys it may hold: described, not
# closed.
OPEN = {"global"}
# Older spellings the schema still takes so that existing values keep working, and
# values.yaml no longer lists.
DEPRECATED = {"updateStrategy.maxUnavailable"}


def install_error(values: dict[str, Any]) -> str:
    """What `helm install` says about `values` (it must refuse them)."""
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as failed:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(failed.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # wrong types
        ({"metrics": {"port": "9808"}}, "at '/metrics/port': got string, want integer"),
        ({"image": {"tag": 1.2}}, "at '/image/tag': got number, want string"),
        ({"hostNetwork": "yes"}, "at '/hostNetwork': got string, want boolean"),
        (
            {"prometheus": {"nativeHistograms": "yes"}},
            "at '/prometheus/nativeHistograms': got string, want boolean",
        ),
        ({"tolerations": {"operator": "Exists"}}, "at '/tolerations': got object, want array"),
        ({"nodeSelector": {"pool": 1}}, "at '/nodeSelector/pool': got number, want string"),
        ({"resources": {"limits": {"memory": True}}}, "at '/resources/limits/memory'"),
        ({"extraEnv": [{"value": "x"}]}, "at '/extraEnv/0': missing property 'name'"),
        # unknown keys where the chart owns the shape
        ({"serviceMonitr": {"enabled": True}}, "additional properties 'serviceMonitr'"),
        ({"otlp": {"hostport": True}}, "at '/otlp': additional properties 'hostport'"),
        ({"config": {"sample_interval": "1s"}}, "at '/config': additional properties"),
        ({"config": {"node-name": "x"}}, "at '/config': additional properties 'node-name'"),
        ({"config": {"auth": "kubernetes"}}, "at '/config': additional properties 'auth'"),
        ({"config": {"tls-cert-file": "/x"}}, "at '/config': additional properties 'tls-cert"),
        ({"tls": {"existingSecert": "x"}}, "at '/tls': additional properties 'existingSecert'"),
        ({"tls": {"certManager": {"issuerRef": {"nam": "ca"}}}}, "at '/tls/certManager/issuerRef'"),
        ({"auth": {"metricsReader": {"subjects": [{"name": "p"}]}}}, "missing property 'kind'"),
        ({"resources": {"request": {}}}, "at '/resources': additional properties 'request'"),
        ({"livenessProbe": {"path": "/"}}, "at '/livenessProbe': additional properties"),
        # negative or zero intervals, counts and ratios
        ({"config": {"sample-interval": "-1s"}}, "at '/config/sample-interval': '-1s' does not"),
        ({"config": {"sample-interval": "0s"}}, "at '/config/sample-interval'"),
        ({"config": {"recovery-max": "-10m"}}, "at '/config/recovery-max': '-10m' does not"),
        ({"config": {"episode-settle": 30}}, "at '/config/episode-settle': got number"),
        ({"config": {"recovery-tolerance": -0.1}}, "at '/config/recovery-tolerance': minimum"),
        ({"config": {"spike-ratio": 1}}, "at '/config/spike-ratio': exclusiveMinimum"),
        ({"config": {"service-probers": 0}}, "at '/config/service-probers': minimum: got 0"),
        ({"config": {"series-limit": 0}}, "at '/config/series-limit': minimum: got 0"),
        ({"config": {"spike-min-slow": 0}}, "at '/config/spike-min-slow': minimum: got 0"),
        ({"config": {"window-min-samples": 2.5}}, "at '/config/window-min-samples': got number"),
        ({"config": {"spike-min-increase": "-2ms"}}, "at '/config/spike-min-increase': '-2ms'"),
        ({"config": {"spike-min-increase": 0}}, "at '/config/spike-min-increase': got number"),
        ({"config": {"quantile-confidence": 1}}, "at '/config/quantile-confidence': maximum"),
        ({"config": {"quantile-confidence": 0.4}}, "at '/config/quantile-confidence': minimum"),
        ({"config": {"series-ttl": "-15m"}}, "at '/config/series-ttl': '-15m' does not match"),
        ({"config": {"series-ttl": 0}}, "at '/config/series-ttl': got number, want string"),
        ({"config": {"auth-cache-ttl": "0s"}}, "at '/config/auth-cache-ttl'"),
        ({"tls": {"certManager": {"duration": "90d"}}}, "at '/tls/certManager/duration'"),
        ({"config": {"service-probers": 2.5}}, "at '/config/service-probers': got number"),
        ({"config": {"service-probers": "3"}}, "at '/config/service-probers': got string"),
        ({"config": {"peer-selector": "app tailwatch"}}, "at '/config/peer-selector': 'app"),
        ({"config": {"peer-selector": "app=tw,"}}, "at '/config/peer-selector': 'app=tw,'"),
        ({"config": {"peer-selector": ["app=tw"]}}, "at '/config/peer-selector': got array"),
        ({"serviceMonitor": {"interval": "-30s"}}, "at '/serviceMonitor/interval': '-30s'"),
        ({"serviceMonitor": {"scrapeTimeout": "10"}}, "at '/serviceMonitor/scrapeTimeout'"),
        ({"readinessProbe": {"periodSeconds": 0}}, "at '/readinessProbe/periodSeconds': minimum"),
        ({"terminationGracePeriodSeconds": -1}, "at '/terminationGracePeriodSeconds': minimum"),
        ({"helmTest": {"timeoutSeconds": 0}}, "at '/helmTest/timeoutSeconds': minimum"),
        ({"updateStrategy": {"maxUnavailable": 0}}, "at '/updateStrategy/maxUnavailable'"),
        ({"updateStrategy": {"maxUnavailable": "-1"}}, "at '/updateStrategy/maxUnavailable'"),
        # values outside their range or set
        ({"otlp": {"port": 70000}}, "at '/otlp/port': maximum: got 70,000, want 65,535"),
        ({"config": {"log-level": "loud"}}, "at '/config/log-level': value must be one of"),
        ({"config": {"otlp-sources": "node"}}, "at '/config/otlp-sources': value must be one"),
        (
            {"serviceMonitor": {"bearerToken": {"source": "file"}}},
            "at '/serviceMonitor/bearerToken/source': value must be one of",
        ),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"image": {"digest": "latest"}}, "at '/image/digest': 'latest' does not match"),
        ({"service": {"internalTrafficPolicy": "Node"}}, "at '/service/internalTrafficPolicy'"),
        ({"cgroup": {"hostPath": "sys/fs/cgroup"}}, "at '/cgroup/hostPath'"),
        ({"otlp": {"listenAddress": "4318"}}, "at '/otlp/listenAddress'"),
        # a combination the schema cannot express, refused by the templates
        (
            {"metrics": {"port": 4318}},
            "metrics.port and otlp.port are both 4318: the agent needs two ports",
        ),
    ],
)
def test_bad_values_fail_at_install_with_a_message_naming_the_key(
    values: dict[str, Any], message: str
) -> None:
    assert message in install_error(values)


def test_missing_generated_files_fail_with_the_command_that_makes_them(tmp_path: Path) -> None:
    chart = tmp_path / "tailwatch"
    shutil.copytree(CHART, chart, ignore=shutil.ignore_patterns("files"))
    for values, message in (
        ({"prometheusRule": {"enabled": True}}, "files/rules/tailwatch.rules.yaml is missing"),
        (
            {"prometheusRule": {"enabled": True}, "prometheus": {"nativeHistograms": True}},
            "files/rules/tailwatch-native.rules.yaml is missing",
        ),
        ({"dashboards": {"enabled": True}}, "files/dashboards/*.json are missing"),
    ):
        with helm.Chart.load(chart) as loaded, pytest.raises(helm.HelmRenderError) as failed:
            loaded.render(values, name=RELEASE, namespace=NAMESPACE)
        assert message in str(failed.value) and "make generate" in str(failed.value)


def test_schema_and_values_yaml_have_exactly_the_same_keys() -> None:
    def keys(values: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in values.items():
            path = f"{prefix}{key}"
            found.add(path)
            if isinstance(value, dict) and path not in PASS_THROUGH:
                found |= keys(value, path + ".")
        return found

    in_schema = {path for path, _ in walk_schema(SCHEMA)} - DEPRECATED
    assert keys(VALUES) == in_schema


def test_every_value_is_described_and_every_chart_owned_object_is_closed() -> None:
    assert SCHEMA["additionalProperties"] is False
    for path, sub in walk_schema(SCHEMA):
        assert sub.get("description"), f"{path} has no description"
        if sub.get("type") == "object" and path not in PASS_THROUGH | OPEN:
            assert sub.get("additionalProperties") is False, f"{path} is not closed"


def test_config_holds_exactly_the_agents_options_with_the_agents_defaults() -> None:
    by_name = {o.name: o for o in OPTIONS}
    schema_keys = set(SCHEMA["properties"]["config"]["properties"])
    assert schema_keys == set(by_name) - CHART_SET_OPTIONS
    assert set(VALUES["config"]) == schema_keys
    for name, value in VALUES["config"].items():
        option = by_name[name]
        if name in CHART_DERIVED_DEFAULTS:
            assert value is None, name
            continue
        assert option.parse(str(value)) == option.parse(option.default or ""), name


SAMPLES = [
    "1s", "1.5s", "250ms", "1m30s", "10us", "2h", "0s", "0.0ms", "-1s", "1", "fast", "1 s",
    "s", "", "1d", "1e3s", "0", "15m",
]  # fmt: skip
# Label selectors, good and bad (peer-selector).
SELECTORS = [
    "app.kubernetes.io/name=tailwatch", "a in (b, c),!d", "a!=b, c", "a notin (,x)", "a>1",
    "a b", "a,", ",a", "a=b=c", "Ex/a=b", "a/b/c=d", "a in ()", "a in (b", "a>b", "-a", "a=-b",
    "((a))", "a in (b)c", "  ", "x" * 64, "a=" + "x" * 64, "a\tin\t(b)",
]  # fmt: skip

# Values of the options that take one of a few words (log-level, list-mode, otlp-sources).
CHOICES = ["debug", "info", "warning", "error", "INFO", "auto", "list", "local", "any", "LOCAL"]


@pytest.mark.parametrize("name", sorted(set(SCHEMA["properties"]["config"]["properties"])))
def test_config_the_schema_accepts_is_config_the_agent_accepts(name: str) -> None:
    option = next(o for o in OPTIONS if o.name == name)
    kind = SCHEMA["properties"]["config"]["properties"][name]["type"]
    samples: list[Any] = (
        [*SAMPLES, *SELECTORS, *CHOICES]
        if "string" in kind  # a type or a list of types
        else [True, False, "true", 1, 0]
        if kind == "boolean"
        else [-1, 0, 0.2, 0.5, 0.95, 0.999, 0.9999, 1, 1.0001, 2, 100]
    )
    accepted = 0
    with helm.Chart.load(CHART) as chart:
        for sample in samples:
            try:
                chart.validate_schema({"config": {name: sample}})
            except helm.HelmValuesError:
                continue
            accepted += 1
            option.parse(str(sample))  # raises if the schema let through what the agent refuses
    assert accepted > 0


SELECTOR_PARTS = [
    "a", "b", "x.y/z", "in", "notin", "=", "==", "!=", "!", "(", ")", ",", " ", "\t", ">", "<",
    "1", "-", "A", "_", ".", "/", "ab-c", "Ex/a",
]  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(SELECTOR_PARTS), max_size=10).map("".join))
def test_the_peer_selector_pattern_accepts_only_what_the_agent_accepts(text: str) -> None:
    """The schema's pattern (RE2 syntax, the same meaning in Python's re for this one) is a
    subset of the agent's check: it refuses only blank text the agent would also take."""
    pattern = SCHEMA["properties"]["config"]["properties"]["peer-selector"]["pattern"]
    option = next(o for o in OPTIONS if o.name == "peer-selector")
    try:
        option.parse(text)
        agent_accepts = True
    except ValueError:
        agent_accepts = False
    schema_accepts = re.search(pattern, text) is not None
    assert agent_accepts or not schema_accepts, text
    assert schema_accepts or not agent_accepts or not text.strip(), text
