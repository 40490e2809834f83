"""Configuration precedence and validation: flags > TAILWATCH_* env > YAML file > defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT
from exporter.core.units import parse_duration
from exporter.settings import (
    ConfigError,
    ListenAddress,
    load_settings,
    parse_label_selector,
    parse_listen,
)
from exporter.simulator.selectors import SelectorError
from exporter.simulator.selectors import parse_label_selector as api_parse_label_selector


def flags(**values: str | None) -> dict[str, str | None]:
    return dict(values)


@pytest.fixture
def cgroup_root(tmp_path: Path) -> str:
    root = tmp_path / "cgroup"
    root.mkdir()
    return str(root)


def test_defaults_with_node_name_from_downward_api_env(cgroup_root: str) -> None:
    s = load_settings(flags(cgroup_root=cgroup_root), {"NODE_NAME": "node-a"})
    assert s.node_name == "node-a"
    assert s.listen == ListenAddress("", 9808)
    assert s.otlp_listen == ListenAddress("", 4318)
    assert s.sample_interval == 1.0
    assert s.kubeconfig is None
    assert s.log_level == "info"
    # The correlation defaults of docs/correlation.md.
    assert (s.episode_settle, s.baseline_window, s.recovery_window) == (30.0, 300.0, 30.0)
    assert (s.recovery_tolerance, s.recovery_max, s.spike_ratio) == (0.2, 600.0, 2.0)


def test_flag_beats_env_beats_file(tmp_path: Path, cgroup_root: str) -> None:
    cfg = tmp_path / "tailwatch.yaml"
    cfg.write_text(
        "node-name: from-file\nlisten: ':7000'\nsample_interval: 5s\nlog-level: debug\n"
        f"cgroup-root: {cgroup_root}\n"
    )
    env = {"TAILWATCH_LISTEN": "127.0.0.1:7001", "NODE_NAME": "from-downward-api"}
    s = load_settings(flags(config=str(cfg), listen="[::1]:7002"), env)
    assert s.listen == ListenAddress("::1", 7002)  # flag
    assert s.node_name == "from-downward-api"  # NODE_NAME env beats the file
    assert s.sample_interval == 5.0  # file
    assert s.log_level == "debug"  # file
    s = load_settings(flags(config=str(cfg)), env)
    assert s.listen == ListenAddress("127.0.0.1", 7001)  # env


def test_tailwatch_env_beats_node_name_env(cgroup_root: str) -> None:
    env = {"TAILWATCH_NODE_NAME": "explicit", "NODE_NAME": "downward"}
    assert load_settings(flags(cgroup_root=cgroup_root), env).node_name == "explicit"


def test_empty_otlp_listen_disables_the_receiver(cgroup_root: str) -> None:
    s = load_settings(flags(cgroup_root=cgroup_root, otlp_listen=""), {"NODE_NAME": "n"})
    assert s.otlp_listen is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "--node-name: is empty"),
        ({"node_name": "Node_A"}, "not a valid Kubernetes node name"),
        ({"node_name": "a", "listen": "9808"}, "--listen: '9808' is not host:port"),
        ({"node_name": "a", "listen": ":99999"}, "port must be a number from 1 to 65535"),
        ({"node_name": "a", "listen": "::1:80"}, "write IPv6 hosts in brackets"),
        ({"node_name": "a", "sample_interval": "0s"}, "must be a positive duration"),
        ({"node_name": "a", "sample_interval": "fast"}, "is not a duration"),
        ({"node_name": "a", "log_level": "loud"}, "is not one of debug"),
        ({"node_name": "a", "cgroup_root": "/does/not/exist"}, "is not a directory"),
        ({"node_name": "a", "episode_settle": "0s"}, "--episode-settle: '0s' must be a positive"),
        ({"node_name": "a", "baseline_window": "soon"}, "--baseline-window: 'soon' is not a"),
        ({"node_name": "a", "recovery_tolerance": "-0.1"}, "must be a finite number, 0 or more"),
        ({"node_name": "a", "recovery_tolerance": "nan"}, "must be a finite number, 0 or more"),
        ({"node_name": "a", "spike_ratio": "1"}, "--spike-ratio: '1' must be above 1"),
        ({"node_name": "a", "spike_ratio": "x2"}, "--spike-ratio: 'x2' is not a number"),
        ({"node_name": "a", "classic_buckets": "5ms,1ms"}, "--classic-buckets: classic bucket"),
        ({"node_name": "a", "classic_buckets": "5ms,,1s"}, "--classic-buckets: '5ms,,1s'"),
        ({"node_name": "a", "classic_buckets": "0s,1s"}, "must be positive, finite"),
        ({"node_name": "a", "service_probers": "0"}, "--service-probers: '0' must be a whole"),
        ({"node_name": "a", "service_probers": "2.5"}, "--service-probers: '2.5' must be"),
        ({"node_name": "a", "service_probers": "-1"}, "--service-probers: '-1' must be"),
        ({"node_name": "a", "peer_selector": "app tailwatch"}, "--peer-selector: 'app tailwatch'"),
        ({"node_name": "a", "peer_selector": "app=tw,"}, "a stray comma"),
        ({"node_name": "a", "peer_selector": "App.io/name=tw"}, "prefix must be a lowercase DNS"),
        ({"node_name": "a", "peer_selector": "app in ()"}, "has an empty set of values"),
        ({"node_name": "a", "pod_namespace": "Monitoring"}, "--pod-namespace: 'Monitoring' is"),
    ],
)
def test_invalid_values_name_the_option(
    overrides: dict[str, str], message: str, cgroup_root: str
) -> None:
    values: dict[str, str | None] = {"cgroup_root": cgroup_root, **overrides}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        load_settings(values, {})
    assert "\n" not in str(info.value)


def test_classic_buckets_default_and_from_env(cgroup_root: str) -> None:
    s = load_settings(flags(cgroup_root=cgroup_root), {"NODE_NAME": "n"})
    assert s.classic_buckets == DEFAULT_CLASSIC_LAYOUT and len(s.classic_buckets) == 27
    env = {"NODE_NAME": "n", "TAILWATCH_CLASSIC_BUCKETS": "5ms, 25ms,0.1,1s"}
    s = load_settings(flags(cgroup_root=cgroup_root), env)
    assert s.classic_buckets == (0.005, 0.025, 0.1, 1.0)


def test_correlation_windows_from_env_and_file(tmp_path: Path, cgroup_root: str) -> None:
    config = tmp_path / "tailwatch.yaml"
    config.write_text("episode-settle: 10s\nrecovery_max: 20m\nspike-ratio: 3\n")
    env = {"NODE_NAME": "a", "TAILWATCH_BASELINE_WINDOW": "10m", "TAILWATCH_SPIKE_RATIO": "4"}
    s = load_settings(flags(cgroup_root=cgroup_root, config=str(config)), env)
    assert (s.episode_settle, s.recovery_max, s.baseline_window) == (10.0, 1200.0, 600.0)
    assert s.spike_ratio == 4.0  # env beats the file


def test_service_probing_by_peers_defaults_and_sources(cgroup_root: str) -> None:
    s = load_settings(flags(cgroup_root=cgroup_root), {"NODE_NAME": "n", "POD_NAMESPACE": "mon"})
    assert s.service_probers == 3
    assert s.peer_selector == "app.kubernetes.io/name=tailwatch"
    assert s.pod_namespace == "mon"  # the downward API's metadata.namespace
    assert s.peer_discovery
    env = {
        "NODE_NAME": "n",
        "POD_NAMESPACE": "mon",
        "TAILWATCH_POD_NAMESPACE": "explicit",
        "TAILWATCH_SERVICE_PROBERS": "5",
        "TAILWATCH_PEER_SELECTOR": " app.kubernetes.io/instance in (tw, tw2),!canary ",
    }
    s = load_settings(flags(cgroup_root=cgroup_root), env)
    assert (s.pod_namespace, s.service_probers) == ("explicit", 5)
    assert s.peer_selector == "app.kubernetes.io/instance in (tw, tw2),!canary"
    s = load_settings(flags(cgroup_root=cgroup_root, service_probers="1"), env)
    assert s.service_probers == 1


def test_peer_discovery_is_off_without_a_selector_or_a_namespace(cgroup_root: str) -> None:
    # Without POD_NAMESPACE (run outside the chart) every agent probes every Service address.
    s = load_settings(flags(cgroup_root=cgroup_root), {"NODE_NAME": "n"})
    assert s.pod_namespace is None and not s.peer_discovery
    env = {"NODE_NAME": "n", "POD_NAMESPACE": "mon", "TAILWATCH_PEER_SELECTOR": ""}
    s = load_settings(flags(cgroup_root=cgroup_root), env)
    assert s.peer_selector == "" and not s.peer_discovery
    s = load_settings(flags(cgroup_root=cgroup_root, peer_selector="  "), {"NODE_NAME": "n"})
    assert s.peer_selector == "" and not s.peer_discovery


def test_service_probing_settings_from_the_config_file(tmp_path: Path, cgroup_root: str) -> None:
    config = tmp_path / "tailwatch.yaml"
    config.write_text("service-probers: 2\npeer_selector: app.kubernetes.io/component=agent\n")
    env = {"NODE_NAME": "n", "POD_NAMESPACE": "mon"}
    s = load_settings(flags(cgroup_root=cgroup_root, config=str(config)), env)
    assert (s.service_probers, s.peer_selector) == (2, "app.kubernetes.io/component=agent")
    config.write_text("peer-selector:\n")  # null: empty, no sharing
    assert not load_settings(flags(cgroup_root=cgroup_root, config=str(config)), env).peer_discovery


SELECTOR_PARTS = [
    "a", "b", "x.y/z", "in", "notin", "=", "==", "!=", "!", "(", ")", ",", " ", ">", "<", "1",
    "-", "A", "_", ".", "/", "ab-c", "Ex/a",
]  # fmt: skip


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(SELECTOR_PARTS), min_size=1, max_size=10).map("".join))
def test_peer_selector_accepts_what_the_api_server_accepts(text: str) -> None:
    """The API's own parser (as the simulator implements it) is the reference."""
    try:
        api_parse_label_selector(text)
        accepted = True
    except SelectorError:
        accepted = False
    if not text.strip():
        assert parse_label_selector(text) == ""  # empty: no sharing, not an error
        return
    try:
        assert parse_label_selector(text) == text.strip()
    except ValueError:
        assert not accepted, text
    else:
        assert accepted, text


def test_env_value_errors_name_the_variable(cgroup_root: str) -> None:
    env = {"NODE_NAME": "a", "TAILWATCH_SAMPLE_INTERVAL": "-1s"}
    with pytest.raises(ConfigError, match=r"^TAILWATCH_SAMPLE_INTERVAL: "):
        load_settings(flags(cgroup_root=cgroup_root), env)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("nodename: a\n", "unknown option 'nodename'"),
        ("- a\n- b\n", "must be a mapping"),
        ("listen: [1, 2]\n", "listen must be a single value"),
        ("listen: ':80\n", "is not valid YAML"),
    ],
)
def test_bad_config_files(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(flags(config=str(cfg)), {"NODE_NAME": "a"})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(flags(config=str(tmp_path / "nope.yaml")), {"NODE_NAME": "a"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0), ("2h", 7200.0), ("0.5", 0.5), ("3", 3.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "s1", "1s garbage", "1 s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_listen_round_trips() -> None:
    assert str(parse_listen("[::]:9808")) == "[::]:9808"
    assert str(parse_listen(":9808")) == ":9808"
    assert parse_listen("localhost:1") == ListenAddress("localhost", 1)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_invalid_configuration_exits_2_with_one_line(cgroup_root: str) -> None:
    result = run_cli("run", "--node-name", "n", "--listen", "nope", "--cgroup-root", cgroup_root)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tailwatch: error: --listen: 'nope' is not host:port (e.g. :9808)"
    ]


def test_unusable_kubeconfig_exits_2(tmp_path: Path, cgroup_root: str) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    result = run_cli(
        "run", "--node-name", "n", "--kubeconfig", str(bad), "--cgroup-root", cgroup_root
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("tailwatch: error: cannot load Kubernetes configuration")


def test_no_api_configured_exits_2(tmp_path: Path, cgroup_root: str) -> None:
    result = run_cli(
        "run", "--node-name", "n", "--cgroup-root", cgroup_root, env={"HOME": str(tmp_path)}
    )
    assert result.returncode == 2
    assert "no API server configured" in result.stderr
    assert "pass --kubeconfig" in result.stderr
