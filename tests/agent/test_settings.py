"""Configuration precedence and validation: flags > TAILWATCH_* env > YAML file > defaults."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.agent import correlation_settings
from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT
from exporter.core.rules import CorrelationSettings
from exporter.core.units import parse_duration
from exporter.demo import MAX_SPEED, demo_settings
from exporter.settings import (
    OPTIONS,
    ConfigError,
    ListenAddress,
    Option,
    Settings,
    check_settings,
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
    assert (s.spike_min_increase, s.spike_min_slow) == (0.002, 5)
    assert (s.window_min_samples, s.quantile_confidence) == (5, 0.95)


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
        ({"node_name": "a", "recovery_max": "inf"}, "--recovery-max: 'inf' must be a positive"),
        ({"node_name": "a", "baseline_window": "nan"}, "--baseline-window: 'nan' must be a"),
        ({"node_name": "a", "series_ttl": "nan"}, "--series-ttl: 'nan' must not be negative"),
        ({"node_name": "a", "spike_min_increase": "-1ms"}, "--spike-min-increase: '-1ms'"),
        ({"node_name": "a", "spike_min_increase": "-0.001"}, "must be a duration, 0 or more"),
        ({"node_name": "a", "spike_min_increase": "inf"}, "must be a duration, 0 or more"),
        ({"node_name": "a", "spike_min_increase": "2 ms"}, "'2 ms' is not a duration"),
        ({"node_name": "a", "spike_min_slow": "0"}, "--spike-min-slow: '0' must be a whole"),
        ({"node_name": "a", "spike_min_slow": "2.5"}, "--spike-min-slow: '2.5' must be a"),
        ({"node_name": "a", "window_min_samples": "0"}, "--window-min-samples: '0' must be"),
        ({"node_name": "a", "window_min_samples": "-5"}, "--window-min-samples: '-5' must"),
        ({"node_name": "a", "quantile_confidence": "0.4"}, "from 0.5 to 0.999"),
        ({"node_name": "a", "quantile_confidence": "1"}, "--quantile-confidence: '1' must be"),
        ({"node_name": "a", "quantile_confidence": "0.9999"}, "from 0.5 to 0.999"),
        ({"node_name": "a", "quantile_confidence": "nan"}, "from 0.5 to 0.999"),
        ({"node_name": "a", "quantile_confidence": "95%"}, "'95%' is not a number"),
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


# The gates of the correlation core: (option attr, a value as text, the parsed value).
GATES = [
    ("spike_min_increase", "5ms", 0.005),
    ("spike_min_slow", "7", 7),
    ("window_min_samples", "12", 12),
    ("quantile_confidence", "0.99", 0.99),
]


@pytest.mark.parametrize(("attr", "text", "value"), GATES)
def test_correlation_gates_from_flag_env_and_file(
    attr: str, text: str, value: float, tmp_path: Path, cgroup_root: str
) -> None:
    config = tmp_path / "tailwatch.yaml"
    dashed = attr.replace("_", "-")
    config.write_text(f"{dashed}: {text}\n")
    env = {"NODE_NAME": "a"}
    default = getattr(load_settings(flags(cgroup_root=cgroup_root), env), attr)
    assert default != value
    from_file = load_settings(flags(cgroup_root=cgroup_root, config=str(config)), env)
    assert getattr(from_file, attr) == value
    env["TAILWATCH_" + attr.upper()] = text
    assert getattr(load_settings(flags(cgroup_root=cgroup_root), env), attr) == value
    # The flag wins over both, and reaches the correlation core under its own name there.
    overrides = {"cgroup_root": cgroup_root, "config": str(config), attr: str(default)}
    from_flag = load_settings(overrides, env)
    assert getattr(from_flag, attr) == default
    assert correlation_settings(from_file) != correlation_settings(from_flag)


def test_correlation_gates_reach_the_correlation_core(cgroup_root: str) -> None:
    overrides = {attr: text for attr, text, _ in GATES}
    s = load_settings({"cgroup_root": cgroup_root, **overrides}, {"NODE_NAME": "a"})
    c = correlation_settings(s)
    assert (c.spike_min_increase, c.spike_min_slow, c.min_samples, c.confidence) == tuple(
        value for _, _, value in GATES
    )


def test_zero_spike_min_increase_means_no_absolute_floor(cgroup_root: str) -> None:
    s = load_settings(flags(cgroup_root=cgroup_root, spike_min_increase="0"), {"NODE_NAME": "a"})
    assert s.spike_min_increase == 0.0
    assert correlation_settings(s).spike_threshold(0.001) == 0.002  # the ratio alone


def test_defaults_are_the_correlation_cores_defaults(cgroup_root: str) -> None:
    """The option table, the Settings dataclass (the demo builds one) and CorrelationSettings
    agree on every default: a default changed in one place only fails here."""
    s = load_settings(flags(cgroup_root=cgroup_root), {"NODE_NAME": "a"})
    assert correlation_settings(s) == CorrelationSettings()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    for option in OPTIONS:
        field = fields[option.attr]
        if field.default is not dataclasses.MISSING:
            assert option.parse(option.default or "") == field.default, option.name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"baseline_window": "30s"},
            "--baseline-window (30s) must be longer than --recovery-window (30s): a tail spike",
        ),
        (
            {"baseline_window": "1m", "recovery_window": "90s"},
            "--baseline-window (1m) must be longer than --recovery-window (1.5m)",
        ),
        (
            {"recovery_max": "20s"},
            "--recovery-max (20s) must be at least --recovery-window (30s): a recovery is "
            "confirmed by one whole rolling window after the close",
        ),
        (
            {"episode_settle": "10m"},
            "--recovery-max (10m) must be longer than --episode-settle (10m): an episode open",
        ),
        (
            {"recovery_tolerance": "1", "spike_ratio": "2"},
            "--recovery-tolerance (1) must be below --spike-ratio minus 1 (1): a rolling p99",
        ),
        (
            {"recovery_tolerance": "0.5", "spike_ratio": "1.5"},
            "so a Service still spiking would count as recovered",
        ),
    ],
)
def test_contradictory_correlation_settings_exit_2_with_one_line(
    overrides: dict[str, str], message: str, cgroup_root: str
) -> None:
    args = [
        arg for attr, text in overrides.items() for arg in (f"--{attr.replace('_', '-')}", text)
    ]
    result = run_cli("run", "--node-name", "n", "--cgroup-root", cgroup_root, *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("tailwatch: error: --")
    assert message in line


def test_contradictions_from_env_and_file_are_refused_too(tmp_path: Path, cgroup_root: str) -> None:
    config = tmp_path / "tailwatch.yaml"
    config.write_text("recovery-window: 5m\n")
    with pytest.raises(ConfigError, match=r"^--baseline-window \(5m\) must be longer than"):
        load_settings(flags(cgroup_root=cgroup_root, config=str(config)), {"NODE_NAME": "a"})
    env = {"NODE_NAME": "a", "TAILWATCH_RECOVERY_MAX": "30s", "TAILWATCH_EPISODE_SETTLE": "1m"}
    with pytest.raises(ConfigError, match=r"--recovery-max \(30s\) must be longer than"):
        load_settings(flags(cgroup_root=cgroup_root), env)


def test_correlation_settings_at_their_limits_are_accepted(cgroup_root: str) -> None:
    """The checks refuse contradictions only: a recovery-max of one window, a tolerance just
    below the spike ratio and a baseline just longer than the window all run."""
    s = load_settings(
        flags(
            cgroup_root=cgroup_root,
            episode_settle="10s",
            recovery_window="30s",
            recovery_max="30s",
            baseline_window="31s",
            recovery_tolerance="0.99",
            spike_ratio="2",
        ),
        {"NODE_NAME": "a"},
    )
    assert (s.recovery_max, s.baseline_window, s.recovery_tolerance) == (30.0, 31.0, 0.99)
    correlation_settings(s)


DEFAULT_SETTINGS = Settings(
    node_name="a",
    kubeconfig=None,
    cgroup_root=Path("."),
    listen=ListenAddress("", 9808),
    otlp_listen=None,
    sample_interval=1.0,
    log_level="info",
)

WINDOWS = st.sampled_from([0.5, 1.0, 10.0, 30.0, 60.0, 300.0, 600.0])


@settings(max_examples=500, deadline=None)
@given(
    settle=WINDOWS,
    baseline=WINDOWS,
    window=WINDOWS,
    recovery_max=WINDOWS,
    tolerance=st.sampled_from([0.0, 0.2, 0.5, 0.99, 1.0, 1.5, 3.0]),
    ratio=st.sampled_from([1.01, 1.2, 1.5, 2.0, 2.5, 4.0]),
)
def test_settings_the_checks_accept_the_correlation_core_accepts(
    settle: float,
    baseline: float,
    window: float,
    recovery_max: float,
    tolerance: float,
    ratio: float,
) -> None:
    """What passes the checks never fails in the correlation core at start-up (a traceback
    instead of the one-line error), and what is refused is refused in one line."""
    s = dataclasses.replace(
        DEFAULT_SETTINGS,
        episode_settle=settle,
        baseline_window=baseline,
        recovery_window=window,
        recovery_max=recovery_max,
        recovery_tolerance=tolerance,
        spike_ratio=ratio,
    )
    try:
        check_settings(s)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    correlation_settings(s)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-300, max_value=MAX_SPEED))
def test_demo_settings_pass_the_checks_at_every_speed(speed: float) -> None:
    """Down to speeds whose windows still are numbers (below ~1e-306 they overflow to inf)."""
    here = ListenAddress("127.0.0.1", 9808)
    s = demo_settings(speed, Path("kubeconfig"), Path("."), here, here)  # checks them
    assert s.recovery_window == 30.0 / speed
    correlation_settings(s)


def test_run_help_lists_every_correlation_gate_with_its_default() -> None:
    result = run_cli("run", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag, default in (
        ("--spike-min-increase", "2ms"),
        ("--spike-min-slow", "5"),
        ("--window-min-samples", "5"),
        ("--quantile-confidence", "0.95"),
    ):
        metavar = flag[2:].upper().replace("-", "_")
        help_text = text.split(f"{flag} {metavar} ", 2)[-1].split(" --", 1)[0]
        assert help_text.endswith(f"(default: {default})"), flag


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_documented(option: Option) -> None:
    """A setting nobody can find is a hidden constant: each one has its row in the README's
    flags table (flag and env var) and its place in docs/design.md's list of flags."""
    readme = (REPO / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `--")]
    [row] = [r for r in rows if f"`--{option.name}`" in r.split(" | ")[0]]
    assert f"`{option.env}`" in row
    assert f"`--{option.name}`" in (REPO / "docs" / "design.md").read_text()


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


def test_otlp_metric_names_and_grpc_listen(tmp_path: Path, cgroup_root: str) -> None:
    """The semantic conventions' current names by default, gRPC off; a YAML list or the
    flag's comma-separated text to change them; a name OpenTelemetry would refuse is an
    error."""
    env = {"NODE_NAME": "node-a"}
    s = load_settings(flags(cgroup_root=cgroup_root), env)
    assert s.otlp_metric_names == (
        "http.client.request.duration", "rpc.client.call.duration", "db.client.operation.duration"
    )  # fmt: skip
    assert s.otlp_grpc_listen is None
    cfg = tmp_path / "tailwatch.yaml"
    cfg.write_text(
        f"cgroup-root: {cgroup_root}\notlp-grpc-listen: ':4317'\n"
        "otlp-metric-names:\n  - rpc.client.duration\n  - http.client.request.duration\n"
    )
    s = load_settings(flags(config=str(cfg)), env)
    assert s.otlp_metric_names == ("rpc.client.duration", "http.client.request.duration")
    assert s.otlp_grpc_listen == ListenAddress("", 4317)
    flag = flags(cgroup_root=cgroup_root, otlp_metric_names=" my.client.duration , x ")
    assert load_settings(flag, env).otlp_metric_names == ("my.client.duration", "x")
    for bad in ("", "1st.metric", "a,a", "with space"):
        with pytest.raises(ConfigError, match="--otlp-metric-names"):
            load_settings(flags(cgroup_root=cgroup_root, otlp_metric_names=bad), env)
