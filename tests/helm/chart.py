"""The chart rendered by the real Helm engine (helm-python-sdk), as parsed manifests.

`VALUE_SETS` are the installs the tests cover: the defaults and the non-default sets a
reviewer asks about (every optional object on, with endpoint auth and a cert-manager
certificate; hostPort; host network; auth with an existing certificate Secret; TLS without
auth; custom scheduling and resources; the OTLP receiver off with a user-managed
ServiceAccount; a kube-prometheus-stack user's PodMonitor, rule options, extra flags and
volumes, renamed release and job).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tailwatch"
RULES_FILE = CHART / "files" / "rules" / "tailwatch.rules.yaml"
# The rules the PrometheusRule carries with prometheus.nativeHistograms=true.
NATIVE_RULES_FILE = CHART / "files" / "rules" / "tailwatch-native.rules.yaml"
DASHBOARDS_DIR = CHART / "files" / "dashboards"
RELEASE = "tw"
NAMESPACE = "monitoring"


def _claimed_versions() -> tuple[str, ...]:
    """The Kubernetes minors the chart claims (Chart.yaml), as x.y.0, oldest first."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    claim = chart["annotations"]["tailwatch.io/tested-kubernetes-versions"]
    (major, low), (_, high) = (tuple(map(int, end.split("."))) for end in claim.split("-"))
    return tuple(f"{major}.{minor}.0" for minor in range(low, high + 1))


# Every one is validated against; at least 1.29 to 1.34 (issue 7).
KUBERNETES_VERSIONS = _claimed_versions()

Values = dict[str, Any]
Manifest = dict[str, Any]

# A Prometheus's ServiceAccount, as a user binds it to the metrics reader role.
PROMETHEUS_ACCOUNT = {"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}
# The Secret of `tls.existingSecret` in the value sets.
TLS_SECRET = "tailwatch-serving-cert"

EVERYTHING_ON: Values = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"role": "alert-rules"}},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "tailwatch"}},
    "networkPolicy": {
        "enabled": True,
        "metrics": {
            "from": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                    }
                }
            ]
        },
        "otlp": {"from": [{"namespaceSelector": {}}]},
    },
    "auth": {"enabled": True, "metricsReader": {"subjects": [PROMETHEUS_ACCOUNT]}},
    "tls": {
        "certManager": {
            "enabled": True,
            "issuerRef": {"name": "cluster-ca", "kind": "ClusterIssuer"},
            "duration": "720h",
            "renewBefore": "240h",
        }
    },
    "otlp": {"hostPort": {"enabled": True, "port": 14318}},
    "priorityClassName": "system-node-critical",
    "commonLabels": {"team": "sre"},
    "podLabels": {"tier": "observability"},
    "podAnnotations": {"example.com/owner": "sre"},
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "image": {"registry": "registry.example", "repository": "obs/tailwatch"},
    # The environment wins over the config file: the agent runs with a spike ratio of 4.
    "extraEnv": [{"name": "TAILWATCH_SPIKE_RATIO", "value": "4"}],
    "config": {
        "sample-interval": "500ms",
        "spike-ratio": 3,
        # Every gate of the correlation core is a value of the chart too.
        "spike-min-increase": "0",
        "spike-min-slow": 4,
        "window-min-samples": 10,
        "quantile-confidence": 0.99,
    },
}

# What a kube-prometheus-stack user sets: a PodMonitor with the prometheus-community knobs,
# the rules customised, a renamed release name and job, flags and volumes of their own, a
# surge update, and the global registry and pull secrets of a parent chart.
ECOSYSTEM: Values = {
    "nameOverride": "latency",
    "global": {"imageRegistry": "mirror.example", "imagePullSecrets": ["mirror-credentials"]},
    "imagePullSecrets": ["registry-credentials", {"name": "mirror-credentials"}],
    "prometheus": {"job": "node-latency"},
    "podMonitor": {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "podTargetLabels": ["topology.kubernetes.io/zone"],
        "sampleLimit": 20000,
        "targetLimit": 1000,
        "labelLimit": 40,
        "labelNameLengthLimit": 128,
        "labelValueLengthLimit": 1024,
        "interval": "10s",
        "scrapeTimeout": "5s",
        "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"], "regex": "go_.*"}],
    },
    "prometheusRule": {
        "enabled": True,
        "additionalRuleLabels": {"team": "sre"},
        "additionalRuleAnnotations": {"dashboard": "tailwatch"},
        "disabled": {"TailwatchRolloutStuck": True},
        "runbookUrl": "https://runbooks.example/tailwatch",
    },
    "dashboards": {"enabled": True},
    # The flag wins over the config file: the agent runs with a spike ratio of 6.
    "config": {"spike-ratio": 3},
    "extraArgs": ["--spike-ratio=6", "--log-level=debug"],
    "extraVolumes": [{"name": "ca-bundle", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "ca-bundle", "mountPath": "/etc/ca-bundle", "readOnly": True}],
    "updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "10%"}},
}

VALUE_SETS: dict[str, Values] = {
    "defaults": {},
    "everything-on": EVERYTHING_ON,
    "ecosystem": ECOSYSTEM,
    "host-network": {"hostNetwork": True, "otlp": {"hostPort": {"enabled": True}}},
    "auth": {
        "auth": {"enabled": True},
        "tls": {"existingSecret": TLS_SECRET},
        "serviceMonitor": {"enabled": True},
    },
    "tls-only": {"tls": {"existingSecret": TLS_SECRET}},
    "scheduling-and-resources": {
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "latency", "effect": "NoSchedule"}
        ],
        "nodeSelector": {"kubernetes.io/os": "linux", "pool": "latency"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["latency"]}
                            ]
                        }
                    ]
                }
            }
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "200Mi"},
            "limits": {"cpu": 1, "memory": "400Mi"},
        },
        "updateStrategy": {"maxUnavailable": "20%"},
    },
    "otlp-off-external-account": {
        "otlp": {"enabled": False},
        "serviceAccount": {"create": False, "name": "tailwatch-agent"},
        "rbac": {"create": False},
        "helmTest": {"enabled": False},
        "fullnameOverride": "node-latency",
    },
}


@cache
def _render(values_json: str, release: str, namespace: str) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(
            json.loads(values_json), name=release, namespace=namespace, is_install=True
        )
    return tuple(sorted(rendered.items()))


def render_files(
    values: Mapping[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Template path -> rendered text, exactly as `helm template` would print it."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), release, namespace))


@cache
def _parsed(values_json: str, release: str, namespace: str) -> tuple[Manifest, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the dashboards are large
    manifests: list[Manifest] = []
    for path, text in _render(values_json, release, namespace):
        if path.endswith(".txt"):
            continue
        manifests.extend(doc for doc in yaml.load_all(text, Loader=loader) if doc)
    return tuple(manifests)


def render(
    values: Mapping[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> list[Manifest]:
    """Every object the chart renders (NOTES.txt excluded), parsed; the caller's own copy."""
    values_json = json.dumps(values or {}, sort_keys=True)
    return copy.deepcopy(list(_parsed(values_json, release, namespace)))


def objects(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in objects(manifests, kind) if not is_hook(m)]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def is_hook(manifest: Manifest) -> bool:
    return "helm.sh/hook" in manifest["metadata"].get("annotations", {})


def helm_test_pod(manifests: list[Manifest]) -> Manifest:
    hooks = [m for m in manifests if is_hook(m)]
    assert len(hooks) == 1, f"expected one helm test hook, found {len(hooks)}"
    return hooks[0]


def agent_container(manifests: list[Manifest]) -> Manifest:
    containers = one(manifests, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["tailwatch"]
    return containers[0]  # type: ignore[no-any-return]


def flags(container: Manifest) -> dict[str, str]:
    """The container's `--name=value` args as {name: value}; every arg must have that form."""
    parsed: dict[str, str] = {}
    for arg in container["args"]:
        assert arg.startswith("--") and "=" in arg, f"{arg!r} is not --flag=value"
        name, _, value = arg[2:].partition("=")
        parsed[name] = value
    return parsed


def walk_schema(schema: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping]]:
    """(dotted key, schema) of every property, depth first, parents before children."""
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        yield path, sub
        yield from walk_schema(sub, path + ".")
