"""Every metric family the agent exports, declared once: name, kind, help, label names and,
for a histogram, its classic bucket bounds. The encoders (exporter/exposition.py) render
every family from this catalogue by its kind; the adapters only say which series a family
has now (`FamilySnapshot`). The list is the contract of docs/design.md, *Metric catalogue*.

Pure: no I/O, and no adapter is imported here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    #: A histogram: classic buckets in the text formats, a native histogram in protobuf.
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family. `name` is the name in the text format (a counter's ends in
    `_total`); `buckets` are the classic bounds of a histogram whose series all share them,
    () for a latency histogram whose bounds come with each series (the classic layout with
    the Service's SLO as an exact boundary, docs/latency.md)."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind is Kind.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: only a counter's name ends in _total")
        if self.buckets and self.kind is not Kind.HISTOGRAM:
            raise ValueError(f"{self.name}: buckets on a {self.kind}")

    @property
    def base_name(self) -> str:
        """The name without a counter's `_total` (OpenMetrics' family name,
        prometheus_client's `name` argument)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name


class HistogramValue(Protocol):
    """What an encoder reads of one histogram series. Classic: `bounds` (without +Inf) and
    `bucket_counts` (per bucket, not cumulative, one more than bounds: the last is +Inf).
    Native (docs/latency.md, *Native histograms*): `native_zero_count` and
    `native_buckets()`, the indexes (ascending) and counts of the non-empty buckets of
    schema `NATIVE_SCHEMA` with `NATIVE_ZERO_THRESHOLD` (exporter/core/histogram.py).
    `version` changes whenever any of them does, so an encoder may keep what it made of an
    unchanged series. A value may also have `exemplars` (the client latency series,
    `ExemplarSeries` in exporter/core/histogram.py: the latest per classic bucket), which
    the encoders write where the format has them (OpenMetrics, protobuf)."""

    @property
    def bounds(self) -> tuple[float, ...]: ...
    @property
    def bucket_counts(self) -> Sequence[int]: ...
    @property
    def sum(self) -> float: ...
    @property
    def count(self) -> int: ...
    @property
    def native_zero_count(self) -> int: ...
    def native_buckets(self) -> tuple[Sequence[int], Sequence[int]]: ...
    @property
    def version(self) -> Hashable: ...


Value: TypeAlias = "float | HistogramValue"
#: One series: its label values, in the family's label order, and its value.
Series: TypeAlias = "tuple[tuple[str, ...], Value]"


@dataclass(frozen=True, slots=True)
class FamilySnapshot:
    """A family's series now, in any order (the encoders sort them by label values).
    `version`: when not None and equal to the one of the family's previous snapshot, the
    series are the same as then and need not be read again."""

    family: Family
    series: Iterable[Series]
    version: Hashable = None


class MetricSource(Protocol):
    """Something that has series of catalogue families: an adapter's state, read at scrape
    time. `snapshot()` yields the same families, in the same order, every time."""

    def snapshot(self) -> Iterable[FamilySnapshot]: ...


# -- the catalogue ------------------------------------------------------------------------------

#: `workload_type` is `workload_kind` lower-cased as kubernetes-mixin's
#: namespace_workload_pod:kube_pod_owner:relabel has it (exporter/core/events.py,
#: `workload_type`), so its recording rules join with ours; it comes after the families'
#: other labels, so a series' label values are the workload key and the type at the end.
WORKLOAD = ("namespace", "workload_kind", "workload")
CONTAINER = ("namespace", "pod", "container")
SERVICE = ("namespace", "service")

# Pods on this node (the kube adapter and the lifecycle core).
POD_EVENTS = Family(
    "tailwatch_pod_events_total",
    Kind.COUNTER,
    "Node-local pod lifecycle events seen by this agent.",
    (*WORKLOAD, "event", "reason", "workload_type"),
)
CONTAINER_RESTARTS = Family(
    "tailwatch_container_restarts_total",
    Kind.COUNTER,
    "Container restarts seen by this agent, by the reason of the last termination.",
    ("namespace", "pod", "container", "reason"),
)
POD_STARTUP = Family(
    "tailwatch_pod_startup_seconds",
    Kind.HISTOGRAM,
    "Time from a pod's scheduling to its first Ready, by the API's timestamps.",
    (*WORKLOAD, "workload_type"),
    (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
POD_TERMINATION = Family(
    "tailwatch_pod_termination_seconds",
    Kind.HISTOGRAM,
    "Time from a pod's deletion request to the pod being gone.",
    (*WORKLOAD, "workload_type"),
    (1, 2, 5, 10, 20, 30, 45, 60, 120, 300, 600),
)
POD_INFO = Family(
    "tailwatch_pod_info",
    Kind.GAUGE,
    "Pods on this node (value 1), with their workload and revision.",
    ("namespace", "pod", "workload_kind", "workload", "revision", "workload_type"),
)

# This agent's own Node (the node watch and exporter/core/nodes.py).
NODE_EVENTS = Family(
    "tailwatch_node_events_total",
    Kind.COUNTER,
    "Changes of this agent's node: not_ready, ready, memory/disk/pid pressure and its "
    "clearing, cordoned, uncordoned, tainted and untainted (NoExecute).",
    ("event", "reason"),
)

# Opted-in Services (cluster view, from EndpointSlices).
ENDPOINT_EVENTS = Family(
    "tailwatch_endpoint_events_total",
    Kind.COUNTER,
    "Endpoint changes of opted-in Services (cluster view, from EndpointSlices).",
    (*SERVICE, "event"),
)
SERVICE_ENDPOINTS = Family(
    "tailwatch_service_endpoints",
    Kind.GAUGE,
    "Endpoints of each opted-in Service by condition (ready, serving, terminating).",
    (*SERVICE, "condition"),
)

# Client latency (OTLP).
CLIENT_DURATION = Family(
    "tailwatch_client_request_duration_seconds",
    Kind.HISTOGRAM,
    "Client-observed latency of opted-in Services, from clients' OTLP histograms.",
    (*SERVICE, "state"),
)
CLIENT_SLOW = Family(
    "tailwatch_client_request_slow_total",
    Kind.COUNTER,
    "Client-reported requests slower than the Service's tailwatch.io/slo-latency (Services "
    "with an SLO only).",
    (*SERVICE, "state"),
)
OTLP_DATAPOINTS = Family(
    "tailwatch_otlp_datapoints_total",
    Kind.COUNTER,
    "OTLP histogram data points of client duration metrics received, by outcome: accepted, "
    "unmapped (no opted-in Service), malformed, over_limit; and ignored, the points of "
    "other metrics.",
    ("outcome",),
)

# The prober.
PROBE_DURATION = Family(
    "tailwatch_probe_duration_seconds",
    Kind.HISTOGRAM,
    "Probe latency from each probe's intended start on its fixed schedule (open loop), "
    "failed probes included.",
    (*SERVICE, "target", "pod", "state"),
)
PROBE_SLOW = Family(
    "tailwatch_probe_slow_total",
    Kind.COUNTER,
    "Probes slower than the Service's tailwatch.io/slo-latency, failed probes included "
    "(Services with an SLO only).",
    (*SERVICE, "target", "state"),
)
PROBE_FAILURES = Family(
    "tailwatch_probe_failures_total",
    Kind.COUNTER,
    "Failed probes by reason: timeout, refused, reset, unreachable, bad_status, "
    "bad_response, missed, error.",
    (*SERVICE, "target", "reason"),
)
PROBE_SCHEDULE_LAG = Family(
    "tailwatch_probe_schedule_lag_seconds",
    Kind.HISTOGRAM,
    "How late the prober started each probe after its intended start (its own noise).",
    (),
)

# Containers (cgroups).
CPU_USAGE = Family(
    "tailwatch_container_cpu_usage_seconds_total",
    Kind.COUNTER,
    "CPU time used by the container (cgroup).",
    CONTAINER,
)
CPU_THROTTLED = Family(
    "tailwatch_container_cpu_throttled_seconds_total",
    Kind.COUNTER,
    "Time the container's runnable tasks were throttled by its CFS quota.",
    CONTAINER,
)
CPU_THROTTLED_PERIODS = Family(
    "tailwatch_container_cpu_throttled_periods_total",
    Kind.COUNTER,
    "CFS periods in which the container hit its CPU quota.",
    CONTAINER,
)
CPU_PERIODS = Family(
    "tailwatch_container_cpu_periods_total",
    Kind.COUNTER,
    "CFS enforcement periods that elapsed while the container was runnable.",
    CONTAINER,
)
MEMORY_WORKING_SET = Family(
    "tailwatch_container_memory_working_set_bytes",
    Kind.GAUGE,
    "Memory usage minus inactive file pages, as the kubelet computes it.",
    CONTAINER,
)
MEMORY_LIMIT = Family(
    "tailwatch_container_memory_limit_bytes",
    Kind.GAUGE,
    "Memory limit of the container's cgroup (absent when it has none).",
    CONTAINER,
)


def _pressure(resource: str, stall: str, full: bool) -> Family:
    who = "all" if full else "some"
    return Family(
        f"tailwatch_container_pressure_{resource}_{stall}_seconds_total",
        Kind.COUNTER,
        f"PSI {'full' if full else 'some'}: time {who} of the container's tasks were stalled "
        f"on {resource} (cgroup v2 and the hybrid layout's unified tree), as the kubelet's "
        f"container_pressure_{resource}_{stall}_seconds_total.",
        CONTAINER,
    )


#: PSI, named as the kubelet and cAdvisor name it: `waiting` is the kernel's "some" line
#: (some tasks stalled), `stalled` its "full" line (all of them). A kernel without the
#: cpu.pressure "full" line (before 5.13) has no cpu stalled series rather than a 0.
PRESSURE_WAITING = {r: _pressure(r, "waiting", False) for r in ("cpu", "memory", "io")}
PRESSURE_STALLED = {r: _pressure(r, "stalled", True) for r in ("cpu", "memory", "io")}
#: (resource, full?) -> family, in the order /metrics shows them.
PRESSURE: dict[tuple[str, bool], Family] = {
    **{(r, False): f for r, f in PRESSURE_WAITING.items()},
    **{(r, True): f for r, f in PRESSURE_STALLED.items()},
}

OOM_KILLS = Family(
    "tailwatch_container_oom_kills_total",
    Kind.COUNTER,
    "Processes of the container killed by the kernel OOM killer, seen by this agent.",
    CONTAINER,
)
COLLECTOR_DURATION = Family(
    "tailwatch_collector_duration_seconds",
    Kind.HISTOGRAM,
    "Wall time of one sampling pass, by collector.",
    ("collector",),
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

# The agent's own watches and input.
WATCH_EVENTS = Family(
    "tailwatch_watch_events_total",
    Kind.COUNTER,
    "Kubernetes API watch events handled, bookmarks included.",
    ("resource", "type"),
)
WATCH_RESTARTS = Family(
    "tailwatch_watch_restarts_total",
    Kind.COUNTER,
    "Watch reconnections by reason (closed, gone, connection_error, tls_error, "
    "inactivity_timeout, ...).",
    ("resource", "reason"),
)
WATCH_LAST_EVENT = Family(
    "tailwatch_watch_last_event_timestamp_seconds",
    Kind.GAUGE,
    "When each watch last had a list, event or bookmark (unix seconds; its age is time() - this).",
    ("resource",),
)
DROPPED = Family(
    "tailwatch_dropped_total",
    Kind.COUNTER,
    "Input dropped because it was malformed or over a limit, by reason.",
    ("reason",),
)
BUILD_INFO = Family(
    "tailwatch_build_info",
    Kind.GAUGE,
    "Build information (value 1): the version, the git commit it was built from (revision, "
    "unknown when not said) and the Python version.",
    ("version", "revision", "python"),
)

# Episodes (the correlation core).
EPISODES = Family(
    "tailwatch_episodes_total",
    Kind.COUNTER,
    "Closed episodes of opted-in Services, by cause and impact (none, degraded, severe, "
    "unknown when there was no steady baseline).",
    (*SERVICE, "cause", "impact"),
)
EPISODE_P99_RATIO = Family(
    "tailwatch_episode_p99_ratio",
    Kind.HISTOGRAM,
    "p99 latency during an episode divided by the steady baseline p99 before it (its lower "
    "bound when the episode's samples cannot bound its p99).",
    (*SERVICE, "cause"),
    (1, 1.2, 1.5, 2, 3, 5, 10, 20, 50, 100),
)
EPISODE_RECOVERY = Family(
    "tailwatch_episode_recovery_seconds",
    Kind.HISTOGRAM,
    "Time from an episode's close until latency really returned within tolerance of the "
    "baseline p99 (observed once a recovery window confirms it).",
    (*SERVICE, "cause"),
    (1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
)
EPISODES_NOT_RECOVERED = Family(
    "tailwatch_episodes_not_recovered_total",
    Kind.COUNTER,
    "Episodes whose latency was not back to baseline --recovery-max after they closed.",
    (*SERVICE, "cause"),
)
SERVICE_DISRUPTED = Family(
    "tailwatch_service_disrupted",
    Kind.GAUGE,
    "1 while an episode of the Service is open (with its cause so far), else 0 (cause none).",
    (*SERVICE, "cause"),
)
SERVICE_SLO = Family(
    "tailwatch_service_slo_seconds",
    Kind.GAUGE,
    "The tailwatch.io/slo-latency of each opted-in Service that has one; slo_le is the `le` "
    "of that boundary in the Service's latency histograms, for joining them in PromQL.",
    (*SERVICE, "slo_le"),
)

# Rollouts of the workloads behind opted-in Services (cluster view; docs/lifecycle.md).
ROLLOUT_DURATION = Family(
    "tailwatch_rollout_duration_seconds",
    Kind.HISTOGRAM,
    "Time from a rollout's start (the first endpoint or pod of the new revision) to every "
    "endpoint of the workload running the new revision and ready.",
    (*WORKLOAD, "workload_type"),
    (5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, 3600),
)
ROLLOUT_IN_PROGRESS = Family(
    "tailwatch_rollout_in_progress",
    Kind.GAUGE,
    "1 while a rollout of the workload is in progress, 0 for a while after it ended.",
    (*WORKLOAD, "workload_type"),
)
ROLLOUT_STUCK = Family(
    "tailwatch_rollout_stuck",
    Kind.GAUGE,
    "1 while a rollout of the workload has made no progress for --rollout-stuck, else 0.",
    (*WORKLOAD, "workload_type"),
)

# The agent's own process: the standard families of Prometheus' client libraries, named,
# typed and helped as client_python's ProcessCollector has them (exporter/process.py), so
# the agent's cost reads as any exporter's.
PROCESS_VIRTUAL_MEMORY = Family(
    "process_virtual_memory_bytes", Kind.GAUGE, "Virtual memory size in bytes.", ()
)
PROCESS_RESIDENT_MEMORY = Family(
    "process_resident_memory_bytes", Kind.GAUGE, "Resident memory size in bytes.", ()
)
PROCESS_START_TIME = Family(
    "process_start_time_seconds",
    Kind.GAUGE,
    "Start time of the process since unix epoch in seconds.",
    (),
)
PROCESS_CPU = Family(
    "process_cpu_seconds_total",
    Kind.COUNTER,
    "Total user and system CPU time spent in seconds.",
    (),
)
PROCESS_OPEN_FDS = Family("process_open_fds", Kind.GAUGE, "Number of open file descriptors.", ())
PROCESS_MAX_FDS = Family(
    "process_max_fds", Kind.GAUGE, "Maximum number of open file descriptors.", ()
)

#: Every family, in the order /metrics shows them.
FAMILIES: tuple[Family, ...] = (
    POD_EVENTS,
    CONTAINER_RESTARTS,
    POD_STARTUP,
    POD_TERMINATION,
    POD_INFO,
    NODE_EVENTS,
    ENDPOINT_EVENTS,
    SERVICE_ENDPOINTS,
    WATCH_EVENTS,
    WATCH_RESTARTS,
    WATCH_LAST_EVENT,
    DROPPED,
    BUILD_INFO,
    CLIENT_DURATION,
    CLIENT_SLOW,
    CPU_USAGE,
    CPU_THROTTLED,
    CPU_THROTTLED_PERIODS,
    CPU_PERIODS,
    MEMORY_WORKING_SET,
    MEMORY_LIMIT,
    *PRESSURE.values(),
    OOM_KILLS,
    COLLECTOR_DURATION,
    OTLP_DATAPOINTS,
    PROBE_DURATION,
    PROBE_FAILURES,
    PROBE_SCHEDULE_LAG,
    PROBE_SLOW,
    EPISODES,
    EPISODE_P99_RATIO,
    EPISODE_RECOVERY,
    EPISODES_NOT_RECOVERED,
    SERVICE_DISRUPTED,
    SERVICE_SLO,
    ROLLOUT_DURATION,
    ROLLOUT_IN_PROGRESS,
    ROLLOUT_STUCK,
    PROCESS_VIRTUAL_MEMORY,
    PROCESS_RESIDENT_MEMORY,
    PROCESS_START_TIME,
    PROCESS_CPU,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
)
