"""The Helm chart as a reviewer reads it: rendered by the real Helm engine, linted, every
manifest valid for every supported Kubernetes minor, least privilege, the security posture
of docs/design.md (endpoint auth over TLS wired from the certificate to the ServiceMonitor,
the NetworkPolicy on both ports), wiring that holds together, and the generated rules and
dashboards carried unchanged."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from exporter import __version__
from exporter.simulator.selectors import parse_label_selector
from tests.helm.chart import (
    CHART,
    DASHBOARDS_DIR,
    EVERYTHING_ON,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    NATIVE_RULES_FILE,
    PROMETHEUS_ACCOUNT,
    RELEASE,
    RULES_FILE,
    TLS_SECRET,
    VALUE_SETS,
    Manifest,
    agent_container,
    flags,
    helm_test_pod,
    objects,
    one,
    render,
    render_files,
)

# Objects of prometheus-operator's and cert-manager's CRDs: kubernetes-validate has no schema
# for them, so their structure is checked by the tests below.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate"}
READ = {"get", "list", "watch"}
# docs/design.md, *Kubernetes contract*, as (API group, resource, verb).
WATCH_RULES = {
    (group, resource, verb)
    for group, resource in (
        ("", "pods"),
        ("", "services"),
        ("", "nodes"),  # its own Node only, by a field selector: the agent's choice, not RBAC's
        ("discovery.k8s.io", "endpointslices"),
    )
    for verb in READ
}
AUTH_RULES = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
}
# docs/design.md, *Security posture*: shutdown completes within this.
AGENT_SHUTDOWN_SECONDS = 5
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.fixture(params=sorted(VALUE_SETS), ids=str)
def value_set(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def manifests(value_set: str) -> list[Manifest]:
    return render(VALUE_SETS[value_set])


@cache
def validate(manifest_json: str, version: str) -> None:
    """Strict validation; the same object rendered by several value sets is checked once."""
    kubernetes_validate.validate(json.loads(manifest_json), version, strict=True)


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    return one(manifests, "DaemonSet")["spec"]["template"]["spec"]  # type: ignore[no-any-return]


# -- Helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", [KUBERNETES_VERSIONS[0], KUBERNETES_VERSIONS[-1]])
def test_helm_lint_is_clean_in_strict_mode(value_set: str, kube_version: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_chart_claims_kubernetes_versions_that_are_all_tested() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__
    assert chart["kubeVersion"] == f">={KUBERNETES_VERSIONS[0]}-0"
    assert {"1.29.0", "1.34.0"} <= set(KUBERNETES_VERSIONS)
    # kubernetes-validate has the OpenAPI schemas of every claimed minor.
    assert set(KUBERNETES_VERSIONS) <= set(all_versions())


# -- Kubernetes schemas -----------------------------------------------------------------------


def test_every_manifest_is_valid_for_every_supported_kubernetes_version(
    manifests: list[Manifest],
) -> None:
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in KUBERNETES_VERSIONS:
            validate(json.dumps(manifest, sort_keys=True), version)


def test_the_kinds_each_value_set_renders(value_set: str, manifests: list[Manifest]) -> None:
    kinds = sorted(m["kind"] for m in manifests if m["kind"] != "Pod")
    base = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Service"]
    # With auth and a ServiceMonitor: the metrics reader role, its binding, and the scraper
    # account with its token Secret.
    scraping = ["ClusterRole", "ClusterRoleBinding", "ServiceAccount", "Secret"]
    expected = {
        "defaults": [*base, "ServiceAccount"],
        "everything-on": sorted(
            [*base, "ServiceAccount", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"]
            + ["Certificate", *scraping]
            + ["ConfigMap"] * len(list(DASHBOARDS_DIR.glob("*.json")))
        ),
        "auth": [*base, "ServiceAccount", "ServiceMonitor", *scraping],
        "ecosystem": sorted(
            [*base, "ServiceAccount", "PodMonitor", "PrometheusRule"]
            + ["ConfigMap"] * len(list(DASHBOARDS_DIR.glob("*.json")))
        ),
        "otlp-off-external-account": ["ConfigMap", "DaemonSet", "Service"],
    }.get(value_set, sorted([*base, "ServiceAccount"]))
    assert kinds == sorted(expected)


# -- Security and least privilege (docs/design.md) --------------------------------------------


def test_pod_and_container_security_context_by_default() -> None:
    manifests = render()
    spec = pod_spec(manifests)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert agent_container(manifests)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert host_namespace not in spec
    # The token is mounted because the agent needs it, and only into the agent's pod.
    assert spec["automountServiceAccountToken"] is True
    assert one(manifests, "ServiceAccount")["automountServiceAccountToken"] is False
    assert helm_test_pod(manifests)["spec"]["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False


def test_the_only_host_path_is_the_cgroup_filesystem_mounted_read_only(
    manifests: list[Manifest],
) -> None:
    spec = pod_spec(manifests)
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {"cgroup": {"path": "/sys/fs/cgroup", "type": "Directory"}}
    container = agent_container(manifests)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cgroup"]["readOnly"] is True
    assert mounts["config"]["readOnly"] is True
    # The agent reads the cgroup tree where it is mounted.
    assert flags(container)["cgroup-root"] == mounts["cgroup"]["mountPath"]
    # A read-only root filesystem, and a scratch /tmp for anything that needs a file.
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert {v["name"]: v for v in spec["volumes"]}["tmp"]["emptyDir"]["medium"] == "Memory"


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in objects(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def agent_role(manifests: list[Manifest]) -> Manifest:
    """The agent's ClusterRole: the one its ServiceAccount is bound to."""
    account = pod_spec(manifests)["serviceAccountName"]
    [binding] = [
        b
        for b in objects(manifests, "ClusterRoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE} in b["subjects"]
    ]
    return named(manifests, "ClusterRole", binding["roleRef"]["name"])


def rbac_rules(manifests: list[Manifest]) -> set[tuple[str, str, str]]:
    role = agent_role(manifests)
    granted = set()
    for rule in role["rules"]:
        # Only named API groups, resources and verbs: no wildcards, URLs or name limits.
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    return granted


def test_rbac_grants_exactly_the_watches_of_design_section_2() -> None:
    manifests = render()
    assert rbac_rules(manifests) == WATCH_RULES
    assert objects(manifests, "Role") == [] and objects(manifests, "RoleBinding") == []
    binding = one(manifests, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": one(manifests, "ClusterRole")["metadata"]["name"],
    }
    assert agent_role(manifests) == one(manifests, "ClusterRole")
    account = one(manifests, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]
    assert pod_spec(manifests)["serviceAccountName"] == account["name"]


def test_token_and_access_reviews_are_granted_only_with_endpoint_auth() -> None:
    assert rbac_rules(render(VALUE_SETS["auth"])) == WATCH_RULES | AUTH_RULES
    assert rbac_rules(render(EVERYTHING_ON)) == WATCH_RULES | AUTH_RULES
    # TLS alone reads no tokens: no reviews.
    assert rbac_rules(render(VALUE_SETS["tls-only"])) == WATCH_RULES
    notes = render_files(VALUE_SETS["auth"])["tailwatch/templates/NOTES.txt"]
    assert "Endpoint authentication is on" in notes
    assert "Endpoint authentication" not in render_files()["tailwatch/templates/NOTES.txt"]


def test_a_user_managed_service_account_gets_no_rbac_from_the_chart() -> None:
    manifests = render(VALUE_SETS["otlp-off-external-account"])
    assert pod_spec(manifests)["serviceAccountName"] == "tailwatch-agent"
    assert not objects(manifests, "ClusterRole") and not objects(manifests, "ServiceAccount")


def test_pod_security_level_is_documented_in_notes_and_readme() -> None:
    notes = render_files()["tailwatch/templates/NOTES.txt"]
    readme = (CHART / "README.md").read_text()
    for text in (notes, readme):
        assert "pod-security.kubernetes.io/enforce=privileged" in text
        assert "baseline" in text and "hostPath" in text


# -- The DaemonSet ----------------------------------------------------------------------------


def test_downward_api_gives_node_name_host_ip_and_namespace(manifests: list[Manifest]) -> None:
    env = {e["name"]: e for e in agent_container(manifests)["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def agent_config(manifests: list[Manifest]) -> dict[str, Any]:
    """The agent's --config file, as the chart renders it."""
    config_maps = [m for m in objects(manifests, "ConfigMap") if "config.yaml" in m["data"]]
    assert len(config_maps) == 1
    return yaml.safe_load(config_maps[0]["data"]["config.yaml"])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("values", "release"),
    [({}, RELEASE), ({"nameOverride": "latency"}, "other"), ({"fullnameOverride": "x"}, "r2")],
)
def test_agents_share_service_probes_with_exactly_the_releases_agent_pods(
    values: dict[str, Any], release: str
) -> None:
    manifests = render(values, release=release)
    config = agent_config(manifests)
    assert config["service-probers"] == 3
    # The default peer selector is the DaemonSet's own selector: its pods, whatever the
    # release and name, and neither the helm test pod nor another release's agents.
    selector = parse_label_selector(config["peer-selector"])
    ds = one(manifests, "DaemonSet")
    match_labels = ds["spec"]["selector"]["matchLabels"]
    assert {(r.key, r.values) for r in selector.requirements} == {
        (key, (value,)) for key, value in match_labels.items()
    }
    assert selector.matches(ds["spec"]["template"]["metadata"]["labels"])
    assert not selector.matches(helm_test_pod(manifests)["metadata"]["labels"])
    other_release = one(render(values, release=release + "-b"), "DaemonSet")
    assert not selector.matches(other_release["spec"]["template"]["metadata"]["labels"])
    # The peers are looked for in the pod's own namespace: POD_NAMESPACE, --pod-namespace's
    # fallback (test_downward_api_gives_node_name_host_ip_and_namespace).
    assert "POD_NAMESPACE" in {e["name"] for e in agent_container(manifests)["env"]}


def test_service_probers_and_peer_selector_reach_the_agent_as_set() -> None:
    config = agent_config(
        render({"config": {"service-probers": 5, "peer-selector": "team=sre,!canary"}})
    )
    assert (config["service-probers"], config["peer-selector"]) == (5, "team=sre,!canary")
    # Empty turns the sharing off: every agent probes every Service address.
    assert agent_config(render({"config": {"peer-selector": ""}}))["peer-selector"] == ""


def test_probes_hit_health_and_readiness_on_the_metrics_port(manifests: list[Manifest]) -> None:
    container = agent_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen_port = int(flags(container)["listen"].rpartition(":")[2])
    assert ports["metrics"] == listen_port
    # Over TLS when the agent serves TLS (the kubelet does not verify the certificate, and
    # /healthz and /readyz need no token).
    scheme = {"scheme": "HTTPS"} if "tls-cert-file" in flags(container) else {}
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics", **scheme}


def test_runs_on_every_node_by_default_with_a_rolling_update() -> None:
    manifests = render()
    spec = pod_spec(manifests)
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert one(manifests, "DaemonSet")["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    # The agent exits within 5 s of SIGTERM (docs/design.md): the grace period covers that.
    assert spec["terminationGracePeriodSeconds"] == 30 > AGENT_SHUTDOWN_SECONDS
    resources = agent_container(manifests)["resources"]
    assert resources["requests"] == {"cpu": "50m", "memory": "128Mi"}
    # No CPU limit: throttling the agent would show up as prober lag in what it measures.
    assert resources["limits"] == {"memory": "256Mi"}


def test_custom_scheduling_and_resources_reach_the_pod() -> None:
    values = VALUE_SETS["scheduling-and-resources"]
    manifests = render(values)
    spec = pod_spec(manifests)
    for key in ("tolerations", "nodeSelector", "affinity"):
        assert spec[key] == values[key]
        # The helm test pod lands where agents run.
        assert helm_test_pod(manifests)["spec"][key] == values[key]
    assert agent_container(manifests)["resources"] == values["resources"]
    ds = one(manifests, "DaemonSet")
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "20%"}


def test_everything_on_reaches_the_pod() -> None:
    manifests = render(EVERYTHING_ON)
    spec = pod_spec(manifests)
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    container = agent_container(manifests)
    assert container["image"] == f"registry.example/obs/tailwatch:{__version__}"
    assert "command" not in container  # the image's entry point runs
    ports = {p["name"]: p for p in container["ports"]}
    assert ports["otlp-http"] == {
        "name": "otlp-http",
        "containerPort": 4318,
        "protocol": "TCP",
        "hostPort": 14318,
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["TAILWATCH_SPIKE_RATIO"] == {"name": "TAILWATCH_SPIKE_RATIO", "value": "4"}
    template = one(manifests, "DaemonSet")["spec"]["template"]["metadata"]
    assert template["annotations"]["example.com/owner"] == "sre"
    assert template["labels"]["tier"] == "observability"


def test_otlp_binds_pod_addresses_or_the_node_address_with_host_network() -> None:
    pod_network = render({"otlp": {"hostPort": {"enabled": True}}})
    assert flags(agent_container(pod_network))["otlp-listen"] == ":4318"
    host_network = render(VALUE_SETS["host-network"])
    spec = pod_spec(host_network)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    container = agent_container(host_network)
    # docs/design.md, *Security posture*: in the node's network namespace, the receiver binds
    # the node address only.
    assert flags(container)["otlp-listen"] == "$(HOST_IP):4318"
    assert all("hostPort" not in p for p in container["ports"])  # implied by hostNetwork
    disabled = render({"otlp": {"enabled": False}})
    assert flags(agent_container(disabled))["otlp-listen"] == ""
    assert [p["name"] for p in agent_container(disabled)["ports"]] == ["metrics"]


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        ds = one(render(values), "DaemonSet")
        return str(ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config": {"log-level": "debug"}})
    assert checksum({}) == checksum({"podLabels": {"a": "b"}})


# -- Wiring: Service, ServiceMonitor, NetworkPolicy, helm test -------------------------------


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor_scrapes_every_agent_as_job_tailwatch_with_a_node_label() -> None:
    manifests = render(EVERYTHING_ON)
    ds = one(manifests, "DaemonSet")
    service = one(manifests, "Service")
    monitor = one(manifests, "ServiceMonitor")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert selects(ds["spec"]["selector"]["matchLabels"], pod_labels)
    assert selects(service["spec"]["selector"], pod_labels)
    container_ports = {p["name"] for p in agent_container(manifests)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The rules and dashboards select job="tailwatch": the Service label named by jobLabel.
    assert service["metadata"]["labels"][spec["jobLabel"]] == "tailwatch"
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s" and endpoint["scrapeTimeout"] == "10s"
    assert endpoint["honorLabels"] is True  # else the workloads' labels become exported_*
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
    } in endpoint["relabelings"]
    assert set(spec) == {"jobLabel", "selector", "namespaceSelector", "endpoints"}


def test_network_policy_admits_the_configured_peers_to_each_port() -> None:
    manifests = render(EVERYTHING_ON)
    policy = one(manifests, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels_of(manifests))
    assert policy["policyTypes"] == ["Ingress"]  # egress: the API server and every target
    by_port = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["ingress"]}
    # The `helm test` pod may still check /readyz through the Service.
    test_pod = {"podSelector": {"matchLabels": selector_of(helm_test_pod(manifests))}}
    assert by_port == {
        "metrics": [*EVERYTHING_ON["networkPolicy"]["metrics"]["from"], test_pod],
        "otlp-http": EVERYTHING_ON["networkPolicy"]["otlp"]["from"],
    }


def selector_of(pod: Manifest) -> dict[str, str]:
    labels = pod["metadata"]["labels"]
    keys = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
    return {key: labels[key] for key in keys}


def test_network_policy_covers_both_ports_and_admits_only_pods_to_otlp_by_default() -> None:
    manifests = render({"networkPolicy": {"enabled": True}})
    policy = one(manifests, "NetworkPolicy")["spec"]
    container_ports = {p["name"] for p in agent_container(manifests)["ports"]}
    rules = {rule["ports"][0]["port"]: rule for rule in policy["ingress"]}
    assert set(rules) == container_ports == {"metrics", "otlp-http"}
    assert all(len(rule["ports"]) == 1 for rule in rules.values())
    # Metrics: every source until the user names Prometheus's namespace (with auth, a token
    # is needed anyway). OTLP: every pod of the cluster, nothing from outside it; which pods
    # may send to an agent (those on its node) the agent decides (--otlp-sources=local).
    assert "from" not in rules["metrics"]
    assert rules["otlp-http"]["from"] == [{"namespaceSelector": {}}]
    assert agent_config(manifests)["otlp-sources"] == "local"
    # Without the receiver, the metrics port alone.
    off = one(
        render({"networkPolicy": {"enabled": True}, "otlp": {"enabled": False}}), "NetworkPolicy"
    )
    assert [rule["ports"][0]["port"] for rule in off["spec"]["ingress"]] == ["metrics"]


def pod_labels_of(manifests: list[Manifest]) -> dict[str, str]:
    return one(manifests, "DaemonSet")["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_helm_test_pod_checks_readyz_through_the_service_and_is_not_an_agent() -> None:
    manifests = render()
    pod = helm_test_pod(manifests)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = one(manifests, "Service")
    url = pod["spec"]["containers"][0]["command"][-1]
    assert url == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:9808/readyz"
    # Neither the DaemonSet (which would adopt it) nor the Service selects the test pod.
    labels = pod["metadata"]["labels"]
    assert not selects(one(manifests, "DaemonSet")["spec"]["selector"]["matchLabels"], labels)
    assert not selects(service["spec"]["selector"], labels)
    assert pod["spec"]["securityContext"] == pod_spec(manifests)["securityContext"]
    assert all(m["kind"] != "Pod" for m in render({"helmTest": {"enabled": False}}))


# -- Endpoint authentication and TLS ------------------------------------------------------------

SERVICE_DNS_NAME = f"{RELEASE}-tailwatch.{NAMESPACE}.svc"
SA_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def tls_volume(manifests: list[Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) of the certificate the agent serves with, found through its flags."""
    container = agent_container(manifests)
    cert, key = flags(container)["tls-cert-file"], flags(container)["tls-key-file"]
    directory = cert.rpartition("/")[0]
    assert key == f"{directory}/tls.key" and cert == f"{directory}/tls.crt"
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    [volume] = [v for v in pod_spec(manifests)["volumes"] if v["name"] == mount["name"]]
    return volume, mount


def scrape_endpoint(manifests: list[Manifest]) -> dict[str, Any]:
    [endpoint] = one(manifests, "ServiceMonitor")["spec"]["endpoints"]
    return endpoint  # type: ignore[no-any-return]


def reader_grants(manifests: list[Manifest]) -> dict[tuple[str, str, str | None], set[str]]:
    """Subject (kind, name, namespace) -> the non-resource URLs it may `get`, through the
    chart's metrics reader role."""
    role = named(manifests, "ClusterRole", f"{RELEASE}-tailwatch-metrics-reader")
    assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    bindings = [
        b for b in objects(manifests, "ClusterRoleBinding")
        if b["roleRef"]["name"] == role["metadata"]["name"]
    ]  # fmt: skip
    grants: dict[tuple[str, str, str | None], set[str]] = {}
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "ClusterRole"
        for subject in binding["subjects"]:
            key = (subject["kind"], subject["name"], subject.get("namespace"))
            grants[key] = set(role["rules"][0]["nonResourceURLs"])
    return grants


def test_auth_with_an_existing_secret_serves_tls_and_checks_tokens_end_to_end() -> None:
    manifests = render(VALUE_SETS["auth"])
    container = agent_container(manifests)
    assert flags(container)["auth"] == "kubernetes"
    # The certificate: the user's Secret, mounted whole and read-only. No subPath and no
    # `items`: the kubelet's updates of a renewed certificate reach the files the agent
    # re-reads.
    volume, mount = tls_volume(manifests)
    assert volume["secret"] == {"secretName": TLS_SECRET}
    assert mount["readOnly"] is True and "subPath" not in mount
    assert mount["mountPath"].startswith("/var/run/secrets/")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"

    # Prometheus: HTTPS, verifying the Service's name (it scrapes pod IPs) against the CA
    # in the certificate's Secret, with the scraper account's token.
    endpoint = scrape_endpoint(manifests)
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": TLS_SECRET, "key": "ca.crt"}},
        "serverName": SERVICE_DNS_NAME,
    }
    assert "insecureSkipVerify" not in endpoint["tlsConfig"]
    assert "bearerTokenFile" not in endpoint  # deprecated: `authorization` instead
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    token_secret = named(manifests, "Secret", credentials["name"])
    assert token_secret["type"] == "kubernetes.io/service-account-token"
    assert credentials["key"] == "token"  # what the token controller writes
    scraper = token_secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    account = named(manifests, "ServiceAccount", scraper)
    assert account["automountServiceAccountToken"] is False
    # That account may read /metrics and nothing else; the agent may review tokens.
    assert reader_grants(manifests) == {("ServiceAccount", scraper, NAMESPACE): {"/metrics"}}
    assert rbac_rules(manifests) == WATCH_RULES | AUTH_RULES
    # The `helm test` pod checks /readyz over HTTPS too.
    url = helm_test_pod(manifests)["spec"]["containers"][0]["command"][-1]
    assert url == f"https://{SERVICE_DNS_NAME}:9808/readyz"


def test_cert_manager_issues_the_certificate_the_pods_mount_for_the_service_name() -> None:
    manifests = render(EVERYTHING_ON)
    certificate = one(manifests, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    volume, _ = tls_volume(manifests)
    assert volume["secret"]["secretName"] == spec["secretName"]
    endpoint = scrape_endpoint(manifests)
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": spec["secretName"], "key": "ca.crt"}
    # The name Prometheus verifies is one the certificate carries, and so are the Service's
    # shorter names.
    assert endpoint["tlsConfig"]["serverName"] in spec["dnsNames"]
    service = one(manifests, "Service")["metadata"]["name"]
    assert spec["dnsNames"] == [service, f"{service}.{NAMESPACE}", SERVICE_DNS_NAME]
    assert spec["issuerRef"] == {
        "name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io",
    }  # fmt: skip
    assert (spec["duration"], spec["renewBefore"]) == ("720h", "240h")
    assert "server auth" in spec["usages"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    assert certificate["metadata"]["namespace"] == NAMESPACE
    # The user's Prometheus account is bound to the reader role next to the scraper.
    grants = reader_grants(manifests)
    prometheus = (PROMETHEUS_ACCOUNT["kind"], PROMETHEUS_ACCOUNT["name"], "monitoring")
    assert grants[prometheus] == {"/metrics"} and len(grants) == 2
    # Extra names, e.g. with the cluster domain.
    extra = f"{service}.{NAMESPACE}.svc.cluster.local"
    more = {**EVERYTHING_ON["tls"]["certManager"], "extraDnsNames": [extra]}
    renamed = one(render({**EVERYTHING_ON, "tls": {"certManager": more}}), "Certificate")
    assert renamed["spec"]["dnsNames"][-1] == extra


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"auth": {"enabled": True}},
            "auth.enabled needs a certificate: the agent accepts bearer tokens over TLS only. "
            "Set tls.existingSecret",
        ),
        (
            {"tls": {"existingSecret": "a", "certManager": {"enabled": True}}},
            "tls.existingSecret and tls.certManager.enabled are two sources for one certificate",
        ),
        (
            {"tls": {"certManager": {"enabled": True}}},
            "tls.certManager.enabled needs tls.certManager.issuerRef.name",
        ),
        (
            {
                **VALUE_SETS["auth"],
                "serviceMonitor": {"enabled": True, "bearerToken": {"source": "secret"}},
            },
            "serviceMonitor.bearerToken.source=secret needs serviceMonitor.bearerToken.secret.name",
        ),
    ],
)
def test_auth_without_what_it_needs_fails_with_what_to_set(
    values: dict[str, Any], message: str
) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as failed:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert message in str(failed.value)


def test_without_auth_or_tls_none_of_it_renders() -> None:
    manifests = render({"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}})
    container = agent_container(manifests)
    assert not {"auth", "tls-cert-file", "tls-key-file"} & set(flags(container))
    assert {v["name"] for v in pod_spec(manifests)["volumes"]} == {"cgroup", "config", "tmp"}
    assert all("scheme" not in container[p]["httpGet"] for p in ("livenessProbe", "readinessProbe"))
    endpoint = scrape_endpoint(manifests)
    assert endpoint["scheme"] == "http"
    assert not {"tlsConfig", "authorization", "bearerTokenFile"} & set(endpoint)
    assert rbac_rules(manifests) == WATCH_RULES
    assert [r["metadata"]["name"] for r in objects(manifests, "ClusterRole")] == [
        f"{RELEASE}-tailwatch"
    ]
    assert not objects(manifests, "Certificate") and not objects(manifests, "Secret")
    assert len(objects(manifests, "ServiceAccount")) == 1


def test_tls_without_auth_encrypts_the_scrape_and_asks_no_token() -> None:
    manifests = render({**VALUE_SETS["tls-only"], "serviceMonitor": {"enabled": True}})
    assert "auth" not in flags(agent_container(manifests))
    endpoint = scrape_endpoint(manifests)
    assert endpoint["scheme"] == "https" and endpoint["tlsConfig"]["serverName"] == SERVICE_DNS_NAME
    assert not {"authorization", "bearerTokenFile"} & set(endpoint)
    assert not objects(manifests, "Secret") and len(objects(manifests, "ClusterRole")) == 1


def test_prometheus_may_present_its_own_token_or_a_secret_and_verify_its_own_way() -> None:
    own = {
        **VALUE_SETS["auth"],
        "serviceMonitor": {
            "enabled": True,
            "bearerToken": {"source": "prometheusServiceAccount"},
            # A CA of its own, e.g. a corporate one in a ConfigMap.
            "tlsConfig": {
                "ca": {"configMap": {"name": "corp-ca", "key": "ca.pem"}},
                "serverName": SERVICE_DNS_NAME,
            },
        },
        "auth": {"enabled": True, "metricsReader": {"subjects": [PROMETHEUS_ACCOUNT]}},
    }
    manifests = render(own)
    endpoint = scrape_endpoint(manifests)
    assert endpoint["bearerTokenFile"] == SA_TOKEN_FILE and "authorization" not in endpoint
    assert endpoint["tlsConfig"] == own["serviceMonitor"]["tlsConfig"]
    # No scraper account; the reader role is bound to the Prometheus the user named.
    assert not objects(manifests, "Secret") and len(objects(manifests, "ServiceAccount")) == 1
    assert reader_grants(manifests) == {
        ("ServiceAccount", "prometheus", "monitoring"): {"/metrics"}
    }
    # Nobody named: the role alone, for the user to bind (no binding without subjects).
    own["auth"] = {"enabled": True}
    manifests = render(own)
    assert reader_grants(manifests) == {}
    assert named(manifests, "ClusterRole", f"{RELEASE}-tailwatch-metrics-reader")

    secret = {
        **VALUE_SETS["auth"],
        "serviceMonitor": {
            "enabled": True,
            "bearerToken": {"source": "secret", "secret": {"name": "prom-token", "key": "t"}},
        },
    }
    endpoint = scrape_endpoint(render(secret))
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "prom-token", "key": "t"},
    }  # fmt: skip


def test_no_cluster_rbac_from_the_chart_when_rbac_create_is_off() -> None:
    manifests = render({**VALUE_SETS["auth"], "rbac": {"create": False}})
    assert not objects(manifests, "ClusterRole") and not objects(manifests, "ClusterRoleBinding")
    off = render(
        {**VALUE_SETS["auth"], "auth": {"enabled": True, "metricsReader": {"create": False}}}
    )
    assert [r["metadata"]["name"] for r in objects(off, "ClusterRole")] == [f"{RELEASE}-tailwatch"]


# -- Labels -----------------------------------------------------------------------------------


def test_every_object_has_the_app_kubernetes_io_labels(
    value_set: str, manifests: list[Manifest]
) -> None:
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        name = VALUE_SETS[value_set].get("nameOverride", "tailwatch")
        assert labels["app.kubernetes.io/name"] == name
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == __version__
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "tailwatch"
        assert labels["app.kubernetes.io/component"] in {"agent", "rules", "dashboards", "test"}
        assert labels["helm.sh/chart"] == f"tailwatch-{__version__}"
        for value in labels.values():
            assert len(value) <= 63 and LABEL_VALUE.match(value), value
        if value_set == "everything-on":
            assert labels["team"] == "sre"


def test_user_labels_cannot_override_the_chart_labels() -> None:
    manifests = render(
        {
            "commonLabels": {"app.kubernetes.io/name": "other"},
            "podLabels": {"app.kubernetes.io/component": "x"},
        }
    )
    assert all(m["metadata"]["labels"]["app.kubernetes.io/name"] == "tailwatch" for m in manifests)
    assert pod_labels_of(manifests)["app.kubernetes.io/component"] == "agent"


# -- The generated rules and dashboards, carried unchanged ------------------------------------


@pytest.mark.parametrize("native", [False, True], ids=["classic", "native-histograms"])
def test_prometheus_rule_carries_the_generated_rule_file(native: bool, tmp_path: Path) -> None:
    # prometheus.nativeHistograms picks the rules for the form the Prometheus stores.
    manifests = render({**EVERYTHING_ON, "prometheus": {"nativeHistograms": native}})
    rule = one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    assert set(rule["spec"]) == {"groups"}
    generated = yaml.safe_load((NATIVE_RULES_FILE if native else RULES_FILE).read_text())
    assert rule["spec"]["groups"] == generated["groups"]
    # And Prometheus accepts the groups exactly as the operator will hand them over.
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], check=False, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboard_config_maps_hold_the_generated_files_byte_for_byte() -> None:
    manifests = render(EVERYTHING_ON)
    maps = [
        m for m in objects(manifests, "ConfigMap") if "grafana_dashboard" in m["metadata"]["labels"]
    ]
    files = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert files, "no generated dashboards in the chart"
    held = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "tailwatch"}
        assert config_map["metadata"]["namespace"] == NAMESPACE
        [(name, content)] = config_map["data"].items()
        held[name] = content.encode()
    assert held == {path.name: path.read_bytes() for path in files}
    for content in held.values():
        json.loads(content)


def test_dashboard_sidecar_label_and_namespace_are_configurable() -> None:
    manifests = render(
        {
            "dashboards": {
                "enabled": True,
                "label": "grafana.io/dashboard",
                "labelValue": "tailwatch",
                "namespace": "grafana",
            }
        }
    )
    maps = [
        m
        for m in objects(manifests, "ConfigMap")
        if m["metadata"]["labels"].get("grafana.io/dashboard") == "tailwatch"
    ]
    assert len(maps) == len(list(DASHBOARDS_DIR.glob("*.json")))
    assert {m["metadata"]["namespace"] for m in maps} == {"grafana"}
