"""The agent's configuration: one table of options read from flags, env and a YAML file.

Precedence (docs/design.md, *Interfaces*): a command-line flag wins over `TAILWATCH_<FLAG>` in the
environment, which wins over the `--config` YAML file, which wins over the default.
Every value is validated here; `ConfigError` carries the one-line reason the CLI prints
before exiting with status 2.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter.core.histogram import DEFAULT_CLASSIC_LAYOUT, check_layout
from exporter.core.units import parse_duration


class ConfigError(ValueError):
    """Invalid configuration; the message is the one line shown to the user."""


@dataclass(frozen=True)
class ListenAddress:
    host: str  # "" means every interface
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def parse_positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 < seconds < math.inf:  # a plain number may also be nan or inf
        raise ValueError(f"{text!r} must be a positive duration")
    return seconds


def parse_non_negative_duration(text: str) -> float:
    """A duration where 0 means "none" and stays 0 (not None: the value is a floor)."""
    seconds = parse_duration(text)
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{text!r} must be a duration, 0 or more")
    return seconds


def parse_listen(text: str) -> ListenAddress:
    """`:9808`, `0.0.0.0:9808`, `127.0.0.1:9808`, `[::1]:9808` or `localhost:9808`."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not host:port (e.g. :9808)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write IPv6 hosts in brackets, e.g. [::1]:9808")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{text!r}: port must be a number from 1 to 65535")
    return ListenAddress(host, int(port_text))


def parse_optional_listen(text: str) -> ListenAddress | None:
    return parse_listen(text) if text.strip() else None


#: An OpenTelemetry instrument name: a letter, then letters, digits, `_`, `.`, `-` or `/`.
_INSTRUMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,254}$")
#: --otlp-metric-names' default: the current semantic conventions' client durations (the
#: same as exporter.otlp.DEFAULT_METRICS; docs/otlp.md says why these).
DEFAULT_OTLP_METRIC_NAMES = (
    "http.client.request.duration,rpc.client.call.duration,db.client.operation.duration"
)


def parse_metric_names(text: str) -> tuple[str, ...]:
    """Comma-separated OTLP metric names (a YAML list too), at least one, no duplicates."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("needs at least one metric name")
    for name in names:
        if not _INSTRUMENT_NAME.match(name):
            raise ValueError(f"{name!r} is not an OpenTelemetry metric name")
    if len(set(names)) != len(names):
        raise ValueError(f"{text!r} names a metric twice")
    return names


def parse_ratio(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text!r} must be a finite number, 0 or more")
    return value


MIN_CONFIDENCE, MAX_CONFIDENCE = 0.5, 0.999


def parse_confidence(text: str) -> float:
    """The confidence of the quantiles' order-statistic bounds: below 0.5 a bound is more
    likely wrong than right; above 0.999 a p99 needs more samples (688 at 0.999) than most
    baseline windows hold."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not MIN_CONFIDENCE <= value <= MAX_CONFIDENCE:
        raise ValueError(f"{text!r} must be a number from {MIN_CONFIDENCE} to {MAX_CONFIDENCE}")
    return value


def parse_spike_ratio(text: str) -> float:
    value = parse_ratio(text)
    if value <= 1:
        raise ValueError(f"{text!r} must be above 1 (a spike is slower than the baseline)")
    return value


def parse_classic_buckets(text: str) -> tuple[float, ...]:
    """Comma-separated durations (`5ms,10ms,1s` or seconds), increasing; empty: the default
    layout of docs/latency.md."""
    if not text.strip():
        return DEFAULT_CLASSIC_LAYOUT
    try:
        bounds = tuple(parse_duration(part.strip()) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return check_layout(bounds)


def parse_node_name(text: str) -> str:
    text = text.strip()
    if not text:
        raise ValueError("is empty: set --node-name or NODE_NAME (downward API spec.nodeName)")
    if len(text) > 253 or not _DNS_SUBDOMAIN.match(text):
        raise ValueError(f"{text!r} is not a valid Kubernetes node name")
    return text


def parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser of one of `choices`, any case; its error lists them all."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return parse


LOG_LEVELS = ("debug", "info", "warning", "error")
LIST_MODES = ("auto", "stream", "list")  # exporter.kube.watching.LIST_MODES

parse_log_level = parse_choice(LOG_LEVELS)
parse_list_mode = parse_choice(LIST_MODES)


def parse_bool(text: str) -> bool:
    """true/false (also yes/no, on/off, 1/0), as YAML and Helm write them."""
    word = text.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def parse_positive_int(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} must be a whole number, 1 or more")
    return int(text)


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SELECTOR_WORD = r"[^\s=!(),<>]+"  # what the selector lexer reads as one identifier
_SELECTOR_TERM = re.compile(
    rf"!\s*(?P<absent>{_SELECTOR_WORD})"
    rf"|(?P<key>{_SELECTOR_WORD})(?:\s*(?:==|=|!=)\s*(?P<value>{_SELECTOR_WORD})?"
    rf"|\s*[<>]\s*(?P<number>{_SELECTOR_WORD})"
    rf"|\s+(?:in|notin)\s*\((?P<values>[^()]*)\))?"
)


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"key {key!r}: the prefix must be a lowercase DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"key {key!r}: the name must be 1-63 alphanumerics, '-', '_' or '.'"
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _LABEL_NAME.match(value)):
        return f"value {value!r} is not a label value"
    return None


def _selector_terms(text: str) -> list[str]:
    """The comma-separated requirements of a selector; commas inside (...) do not split."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError("unbalanced or nested parentheses")
        if char == "," and depth == 0:
            terms.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise ValueError("unbalanced parentheses")
    return [*terms, text[start:].strip()]


def _selector_problem(term: str) -> str | None:
    if not term:
        return "an empty requirement (a stray comma?)"
    match = _SELECTOR_TERM.fullmatch(term)
    if match is None:
        return f"{term!r} is not a requirement"
    values = [match["value"] or ""]
    if match["number"] is not None:
        if not match["number"].isdigit():
            return f"{term!r} compares with a value that is not a whole number"
        values = [match["number"]]
    elif match["values"] is not None:
        values = [v.strip() for v in match["values"].split(",")]
        if values == [""]:
            return f"{term!r} has an empty set of values"
    for problem in (
        _label_key_problem(match["absent"] or match["key"]),
        *map(_label_value_problem, values),
    ):
        if problem:
            return problem
    return None


def parse_label_selector(text: str) -> str:
    """A Kubernetes label selector (`a=b,c!=d,e in (f,g),!h,i`), checked as the API server
    checks it before it is sent; empty stays empty (the caller decides what that means)."""
    text = text.strip()
    if not text:
        return ""
    try:
        problems = [_selector_problem(term) for term in _selector_terms(text)]
    except ValueError as exc:
        problems = [str(exc)]
    problem = next((p for p in problems if p), None)
    if problem:
        raise ValueError(f"{text!r} is not a label selector: {problem}")
    return text


def parse_optional_namespace(text: str) -> str | None:
    text = text.strip()
    if text and (len(text) > 63 or not _DNS_LABEL.match(text)):
        raise ValueError(f"{text!r} is not a valid Kubernetes namespace name")
    return text or None


def parse_optional_path(text: str) -> str | None:
    return text.strip() or None


AUTH_MODES = ("none", "kubernetes")
OTLP_SOURCES = ("local", "any")


def parse_optional_duration(text: str) -> float | None:
    """A duration, or empty / 0 for none."""
    if not text.strip():
        return None
    seconds = parse_duration(text)
    if not 0 <= seconds < math.inf:
        raise ValueError(f"{text!r} must not be negative")
    return seconds or None


def parse_directory(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_dir():
        raise ValueError(f"{text!r} is not a directory")
    return path


@dataclass(frozen=True)
class Option:
    """One setting: its flag (`--name`), env var (`TAILWATCH_NAME`), YAML key (`name`)."""

    name: str
    help: str
    parse: Callable[[str], Any]
    default: str | None = None
    env_fallback: str | None = None  # a second env var read when TAILWATCH_<NAME> is unset

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "TAILWATCH_" + self.attr.upper()


OPTIONS: tuple[Option, ...] = (
    Option(
        "node-name",
        "the node this agent watches (default: env NODE_NAME)",
        parse_node_name,
        env_fallback="NODE_NAME",
    ),
    Option(
        "kubeconfig",
        "kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)",
        parse_optional_path,
        default="",
    ),
    Option(
        "cgroup-root", "root of the host's cgroup filesystem", parse_directory, "/sys/fs/cgroup"
    ),
    Option("listen", "address for /metrics, health and the JSON API", parse_listen, ":9808"),
    Option(
        "otlp-listen",
        "address of the OTLP/HTTP receiver (empty disables it)",
        parse_optional_listen,
        ":4318",
    ),
    Option(
        "otlp-grpc-listen",
        "address of the OTLP/gRPC receiver, e.g. :4317 (empty, the default: off; it loads "
        "grpcio, about 14 MiB more memory, only when set)",
        parse_optional_listen,
        "",
    ),
    Option(
        "otlp-metric-names",
        "OTLP histograms read as client latency, comma-separated (a YAML list in --config); "
        "points of other metrics are ignored",
        parse_metric_names,
        DEFAULT_OTLP_METRIC_NAMES,
    ),
    Option("sample-interval", "cgroup sampling interval", parse_positive_duration, "1s"),
    # Security (docs/security.md).
    Option(
        "tls-cert-file",
        "serve --listen over TLS with this certificate (PEM, with its chain); re-read when "
        "it changes. Needs --tls-key-file",
        parse_optional_path,
        default="",
    ),
    Option(
        "tls-key-file",
        "the private key of --tls-cert-file (PEM); re-read when it changes",
        parse_optional_path,
        default="",
    ),
    Option(
        "auth",
        "who may read /metrics and the JSON API: none (anyone who reaches --listen) or "
        "kubernetes (a bearer token checked with a TokenReview, allowed by a "
        "SubjectAccessReview for the URL with verb get; needs TLS). /healthz and /readyz "
        "stay open",
        parse_choice(AUTH_MODES),
        "none",
    ),
    Option(
        "auth-cache-ttl",
        "how long a TokenReview or SubjectAccessReview answer is reused",
        parse_positive_duration,
        "1m",
    ),
    Option(
        "otlp-sources",
        "who may send OTLP: local (the IPs of the pods on this node and the node's own "
        "addresses) or any",
        parse_choice(OTLP_SOURCES),
        "local",
    ),
    Option(
        "emit-events",
        "write each episode's open, close and recovery as an events.k8s.io/v1 Event on its "
        "Service, and read this node's recent ones back at start (needs RBAC on events)",
        parse_bool,
        "false",
    ),
    # Bounded series (docs/metrics.md, *Cardinality*).
    Option(
        "series-ttl",
        "series of a workload with no pod left on this node (its lifecycle events, startup "
        "and termination times) are dropped this long after its last pod left; 0 keeps them",
        parse_optional_duration,
        "15m",
    ),
    Option(
        "series-limit",
        "most label sets of one metric family; new ones past it are dropped and counted in "
        'tailwatch_dropped_total{reason="series_limit"}',
        parse_positive_int,
        "10000",
    ),
    Option("log-level", "debug, info, warning or error", parse_log_level, "info"),
    Option(
        "list-mode",
        "how watches get the full state from the API server's watch cache: auto (a streaming "
        "list, or lists at resourceVersion=0 where the server has none), stream or list",
        parse_list_mode,
        "auto",
    ),
    Option(
        "classic-buckets",
        "bounds of the latency histograms' classic layout in the text formats, comma-separated "
        "(default: 27 bounds from 0.5ms to 10s); the same on every agent of a cluster",
        parse_classic_buckets,
        "",
    ),
    # Correlation (docs/correlation.md).
    Option(
        "episode-settle",
        "an episode closes once every endpoint is ready and nothing changed for this long",
        parse_positive_duration,
        "30s",
    ),
    Option(
        "baseline-window",
        "steady latency this long before an episode is its baseline",
        parse_positive_duration,
        "5m",
    ),
    Option(
        "recovery-window",
        "window of the rolling p99 that decides recovery and tail spikes",
        parse_positive_duration,
        "30s",
    ),
    Option(
        "recovery-tolerance",
        "recovered when the rolling p99 is within baseline x (1 + this)",
        parse_ratio,
        "0.2",
    ),
    Option(
        "recovery-max",
        "an episode not recovered this long after it closed is reported as not recovered",
        parse_positive_duration,
        "10m",
    ),
    Option(
        "spike-ratio",
        "a rolling p99 this many times the baseline, with no lifecycle event, is a tail spike",
        parse_spike_ratio,
        "2",
    ),
    Option(
        "spike-min-increase",
        "a tail spike must also be this much slower than the baseline p99 (0: no such floor)",
        parse_non_negative_duration,
        "2ms",
    ),
    Option(
        "spike-min-slow",
        "distinct ticks (seconds) of the rolling window with samples over the spike threshold "
        "a tail spike needs (5 keeps steady heavy-tailed traffic under one false episode a day)",
        parse_positive_int,
        "5",
    ),
    Option(
        "window-min-samples",
        "samples the rolling window needs before a tail spike or a recovery is judged",
        parse_positive_int,
        "5",
    ),
    Option(
        "quantile-confidence",
        "confidence of the order-statistic bounds on quantiles, from 0.5 to 0.999; a quantile "
        "its samples cannot bound is reported as unsupported and decides nothing (a p99 needs "
        "299 samples at 0.95)",
        parse_confidence,
        "0.95",
    ),
    Option(
        "rollout-stuck",
        "a rollout of a workload behind an opted-in Service with no progress (no endpoint of "
        "the new revision ready, none of the old gone) for this long is reported stuck",
        parse_positive_duration,
        "10m",
    ),
    # Service addresses probed by k agents, not all (docs/design.md, *Architecture*). Peer
    # discovery needs both a selector and the namespace; without either, every agent probes
    # every Service address (Settings.peer_discovery).
    Option(
        "service-probers",
        "agents that probe each Service address (target=service), chosen among the peers",
        parse_positive_int,
        "3",
    ),
    Option(
        "peer-selector",
        "label selector of the agent pods (in --pod-namespace) that share the probing of "
        "Service addresses; empty: no sharing, every agent probes every Service address",
        parse_label_selector,
        "app.kubernetes.io/name=tailwatch",
    ),
    Option(
        "pod-namespace",
        "namespace of this agent's pod, where its peers are (default: env POD_NAMESPACE); "
        "unset: no sharing, every agent probes every Service address",
        parse_optional_namespace,
        default="",
        env_fallback="POD_NAMESPACE",
    ),
)


@dataclass(frozen=True)
class Settings:
    node_name: str
    kubeconfig: str | None
    cgroup_root: Path
    listen: ListenAddress
    otlp_listen: ListenAddress | None
    sample_interval: float
    log_level: str
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    auth: str = "none"  # none or kubernetes: see exporter.auth
    auth_cache_ttl: float = 60.0
    otlp_sources: str = "local"  # local or any: see exporter.otlp.receiver
    otlp_grpc_listen: ListenAddress | None = None  # None: no gRPC receiver, grpcio not loaded
    otlp_metric_names: tuple[str, ...] = tuple(DEFAULT_OTLP_METRIC_NAMES.split(","))
    series_ttl: float | None = 900.0  # None: workload series never expire
    series_limit: int = 10000
    list_mode: str = "auto"  # auto, stream or list: see exporter.kube.watching
    episode_settle: float = 30.0
    baseline_window: float = 300.0
    recovery_window: float = 30.0
    recovery_tolerance: float = 0.2
    recovery_max: float = 600.0
    spike_ratio: float = 2.0
    spike_min_increase: float = 0.002
    spike_min_slow: int = 5
    window_min_samples: int = 5
    quantile_confidence: float = 0.95
    rollout_stuck: float = 600.0
    emit_events: bool = False
    classic_buckets: tuple[float, ...] = DEFAULT_CLASSIC_LAYOUT
    service_probers: int = 3
    peer_selector: str = "app.kubernetes.io/name=tailwatch"
    pod_namespace: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def peer_discovery(self) -> bool:
        """k agents per Service address: needs a peer selector and the pod's namespace. Off,
        every agent probes every Service address (the agent says so in a log line)."""
        return bool(self.peer_selector) and self.pod_namespace is not None


#: Options whose value is a comma-separated list: in the YAML file, a list too.
LIST_OPTIONS = frozenset({"otlp_metric_names", "classic_buckets"})


def read_config_file(path: str) -> dict[str, str]:
    """The YAML config file: a mapping of option names (dashes or underscores) to scalars
    (for LIST_OPTIONS, lists of scalars too, read as their comma-separated text)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of option: value")
    known = {o.attr: o for o in OPTIONS}
    values: dict[str, str] = {}
    for key, value in data.items():
        attr = str(key).replace("-", "_")
        if attr not in known:
            raise ConfigError(f"config file {path}: unknown option {key!r}")
        if attr in LIST_OPTIONS and isinstance(value, list):
            if not all(isinstance(v, (str, int, float)) for v in value):
                raise ConfigError(f"config file {path}: {key} must be a list of single values")
            values[attr] = ",".join(str(v) for v in value)  # the flag's comma-separated text
            continue
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config file {path}: {key} must be a single value")
        values[attr] = "" if value is None else str(value)
    return values


def load_settings(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Settings:
    """Resolve every option; `flags` maps option attrs to the flag's value or None if not given."""
    config_path = flags.get("config") or environ.get("TAILWATCH_CONFIG")
    from_file = read_config_file(config_path) if config_path else {}
    resolved: dict[str, Any] = {}
    for option in OPTIONS:
        raw = flags.get(option.attr)
        source = f"--{option.name}"
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is None and option.env_fallback and option.env_fallback in environ:
            raw, source = environ[option.env_fallback], option.env_fallback
        if raw is None and option.attr in from_file:
            raw, source = from_file[option.attr], f"{option.name} in {config_path}"
        if raw is None:
            raw, source = option.default or "", f"--{option.name}"
        try:
            resolved[option.attr] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    settings = Settings(**resolved)
    check_settings(settings)
    return settings


def _duration_text(seconds: float) -> str:
    """A duration as a flag would take it: 300.0 -> 5m, 0.002 -> 2ms."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds / 1e-6:g}us"


def check_settings(settings: Settings) -> None:
    """What no single option can check alone: options that contradict each other."""
    _check_correlation(settings)
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("--tls-cert-file and --tls-key-file go together: set both or neither")
    if settings.auth == "kubernetes" and not settings.tls:
        raise ConfigError(
            "--auth=kubernetes reads bearer tokens from requests: serve them over TLS "
            "(--tls-cert-file and --tls-key-file)"
        )


def _check_correlation(settings: Settings) -> None:
    """The correlation windows and ratios against each other (docs/correlation.md,
    *Settings*): each combination refused here would quietly make episodes meaningless (every
    episode not recovered, none waiting for ready endpoints, a Service still spiking counted
    as recovered), so it is a configuration error instead."""
    s = settings
    baseline, window = _duration_text(s.baseline_window), _duration_text(s.recovery_window)
    if s.baseline_window <= s.recovery_window:
        raise ConfigError(
            f"--baseline-window ({baseline}) must be longer than --recovery-window ({window}): "
            "a tail spike is the rolling window compared with the steady baseline before it, "
            "and a baseline no longer than that window is no steadier than what it judges"
        )
    recovery_max = _duration_text(s.recovery_max)
    if s.recovery_max < s.recovery_window:
        raise ConfigError(
            f"--recovery-max ({recovery_max}) must be at least --recovery-window ({window}): "
            "a recovery is confirmed by one whole rolling window after the close, so every "
            "episode would end not recovered"
        )
    settle = _duration_text(s.episode_settle)
    if s.recovery_max <= s.episode_settle:
        raise ConfigError(
            f"--recovery-max ({recovery_max}) must be longer than --episode-settle ({settle}): "
            "an episode open for --recovery-max closes without waiting for ready endpoints, "
            "so with a settle that long no episode would wait for them"
        )
    if s.recovery_tolerance >= s.spike_ratio - 1:
        raise ConfigError(
            f"--recovery-tolerance ({s.recovery_tolerance:g}) must be below --spike-ratio "
            f"minus 1 ({s.spike_ratio - 1:g}): a rolling p99 within baseline x (1 + tolerance) "
            "could still be a tail spike, so a Service still spiking would count as recovered"
        )
