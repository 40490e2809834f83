"""The Node dashboard: lifecycle events on one node, pressure on its containers, the node's
agent's own cost (CPU, memory, descriptors, against its budget) and its health (watches,
prober lag, collector cost, dropped input, scrape size)."""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.dashboards import panels as p
from exporter.mixin.dashboards.episodes import quantile_in_range
from exporter.mixin.promql import PromQL, increase_with_new_series, indent, psi_waiting_rate

CONTAINER_LEGEND = "{{namespace}}/{{pod}}/{{container}}"
TOP = 10
#: The agent's own budget at the reference node (docs/design.md, *Reference load and
#: budgets*), drawn on its cost panels. The project's promise, not a setting of the mixin:
#: the line shows whether the agent keeps it on this node.
AGENT_CPU_BUDGET_CORES = 0.02
AGENT_MEMORY_BUDGET_BYTES = 64 * 2**20


def agent_cpu(q: PromQL, *matchers: str) -> str:
    """CPU cores used by each agent: the rate of its process_cpu_seconds_total."""
    return f"rate({q.raw('process_cpu_seconds_total', *matchers)}[$__rate_interval])"


def build(config: MixinConfig) -> Any:
    q = PromQL(config, dashboard=True)
    node = f'{q.node}="$node"'
    grid = p.Grid()

    def raw(metric: str, *matchers: str) -> str:
        return q.raw(metric, node, *matchers)

    def rate(metric: str, *matchers: str) -> str:
        return f"rate({raw(metric, *matchers)}[$__rate_interval])"

    def events(metric: str, *matchers: str) -> str:
        return indent(increase_with_new_series(raw(metric, *matchers), "$__rate_interval"))

    pod = [p.pod_link(config)]

    grid.row("Lifecycle on the node")
    grid.add(
        p.timeseries(
            "Pod lifecycle events",
            "Lifecycle events the agent saw on this node, by event.",
            p.targets(
                (f"sum by (event) (\n  {events('tailwatch_pod_events_total')}\n)", "{{event}}")
            ),
            "short",
            bars=True,
            stacked=True,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            "Container restarts and OOM kills",
            "Restarts by the reason of the last termination, and kernel OOM kills from the "
            "cgroups (which also count processes killed without a restart).",
            p.targets(
                (
                    "sum by (namespace, pod, container, reason) (\n  "
                    f"{events('tailwatch_container_restarts_total')}\n)",
                    CONTAINER_LEGEND + " restart {{reason}}",
                ),
                (
                    "sum by (namespace, pod, container) (\n  "
                    f"{events('tailwatch_container_oom_kills_total')}\n)",
                    CONTAINER_LEGEND + " OOM kill",
                ),
            ),
            "short",
            bars=True,
            links=pod,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            "Pods on the node",
            "Pods on the node by workload kind.",
            p.targets(
                (f"count by (workload_type) ({raw('tailwatch_pod_info')})", "{{workload_type}}")
            ),
            "short",
            stacked=True,
        ),
        8,
    )
    workload = ("namespace", "workload_kind", "workload", "workload_type")
    grid.add(
        p.table(
            "Pod startup and termination (time range)",
            "90th percentiles over the time range: arrival on the node to first Ready, and "
            "deletion to gone, by workload.",
            p.instant_targets(
                quantile_in_range(q, "0.9", "tailwatch_pod_startup_seconds", (node,), workload),
                quantile_in_range(q, "0.9", "tailwatch_pod_termination_seconds", (node,), workload),
            ),
            "s",
            columns={
                "Value #A": ("Startup p90", "s"),
                "Value #B": ("Termination p90", "s"),
            },
        ),
        16,
    )

    grid.row("Container pressure")
    keys = "namespace, pod, container"
    grid.add(
        p.timeseries(
            f"CPU throttling (top {TOP})",
            "Share of CFS periods in which the container's quota ran out.",
            p.targets(
                (
                    f"topk({TOP},\n  sum by ({keys}) "
                    f"({rate('tailwatch_container_cpu_throttled_periods_total')})\n  /\n"
                    f"  (sum by ({keys}) ({rate('tailwatch_container_cpu_periods_total')}) > 0)\n)",
                    CONTAINER_LEGEND,
                )
            ),
            "percentunit",
            thresholds=((config.thresholds.throttling_ratio, "red"),),
            links=pod,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            f"CPU by container (top {TOP})",
            "CPU used by the busiest containers of the node.",
            p.targets(
                (
                    f"topk({TOP}, sum by ({keys}) "
                    f"({rate('tailwatch_container_cpu_usage_seconds_total')}))",
                    CONTAINER_LEGEND,
                )
            ),
            "suffix: cores",
            links=pod,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            f"Pressure stall, PSI some (top {TOP})",
            "Share of time at least one task of the container waited, by resource (cgroup v2 "
            "PSI some: the kubelet's container_pressure_*_waiting_seconds_total).",
            p.targets(
                (
                    f"topk({TOP}, sum by ({keys}, resource) (\n"
                    f"  {indent(psi_waiting_rate(q.raw, '$__rate_interval', node))}\n))",
                    CONTAINER_LEGEND + " {{resource}}",
                )
            ),
            "percentunit",
            links=pod,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            f"Memory working set / limit (top {TOP})",
            "Working set as a share of the memory limit, for containers with a limit.",
            p.targets(
                (
                    f"topk({TOP},\n  max by ({keys}) "
                    f"({raw('tailwatch_container_memory_working_set_bytes')})\n  /\n"
                    f"  max by ({keys}) ({raw('tailwatch_container_memory_limit_bytes')})\n)",
                    CONTAINER_LEGEND,
                )
            ),
            "percentunit",
            links=pod,
        ),
        12,
    )

    grid.row("The agent's own cost")
    grid.add(
        p.timeseries(
            "Agent CPU",
            "CPU used by this node's agent (user + system, from its process_cpu_seconds_total), "
            f"with its budget of {AGENT_CPU_BUDGET_CORES:.0%} of a core at the reference node.",
            p.targets((f"sum({agent_cpu(q, node)})", "CPU")),
            "suffix: cores",
            thresholds=((AGENT_CPU_BUDGET_CORES, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Agent memory",
            "Resident memory of this node's agent (process_resident_memory_bytes), with its "
            f"budget of {AGENT_MEMORY_BUDGET_BYTES // 2**20} MiB at the reference node; it "
            "should stay flat once warm.",
            p.targets((f"sum({raw('process_resident_memory_bytes')})", "resident")),
            "bytes",
            thresholds=((AGENT_MEMORY_BUDGET_BYTES, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Agent open file descriptors",
            "Descriptors this node's agent has open: the cgroup files it keeps open (about 8 "
            "per container, ~2,600 on a full node), its watches, probes, OTLP clients and "
            "scrapers. It follows the containers; one that only grows is a leak. "
            "process_max_fds has the limit.",
            p.targets((f"sum({raw('process_open_fds')})", "open")),
            "short",
        ),
        8,
    )

    grid.row("The agent")
    last_event = raw("tailwatch_watch_last_event_timestamp_seconds")
    age = f"time() - max by (resource) ({last_event})"
    grid.add(
        p.timeseries(
            "Watch staleness",
            "Seconds since each watch's last list, event or bookmark (now minus "
            "tailwatch_watch_last_event_timestamp_seconds); healthy under ~60 s.",
            p.targets((age, "{{resource}}")),
            "s",
            thresholds=((config.thresholds.watch_stale_seconds, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Watch restarts",
            "Watch reconnections by reason (closed is the normal end at the server's timeout); "
            "a zero line per watch when there were none.",
            p.targets(
                (
                    "sum by (resource, reason) (\n  "
                    f"{events('tailwatch_watch_restarts_total')}\n)\n"
                    f"or on ()\nmax by (resource) ({last_event}) * 0",
                    "{{resource}} {{reason}}",
                )
            ),
            "short",
            bars=True,
        ),
        8,
    )

    def quantile(phi: str, metric: str, *labels: str) -> str:
        """The `phi` quantile by `labels` of a histogram of the node's agent."""
        return q.histogram(
            lambda h: (
                f"histogram_quantile({phi}, "
                f"{h.sum(labels, h.rate(metric, '$__rate_interval', node))})"
            )
        )

    grid.add(
        p.timeseries(
            "Prober schedule lag",
            "How late the prober started its probes: its own measurement noise, to read next to "
            "any tail latency it reports.",
            p.targets(
                *(
                    (quantile(phi, "tailwatch_probe_schedule_lag_seconds"), name)
                    for phi, name in (("0.5", "p50"), ("0.99", "p99"), ("0.999", "p99.9"))
                )
            ),
            "s",
            thresholds=((config.thresholds.prober_lag_p99_seconds, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Collector cost",
            "p99 wall time of each sampling pass, by collector.",
            p.targets(
                (
                    quantile("0.99", "tailwatch_collector_duration_seconds", "collector"),
                    "{{collector}}",
                )
            ),
            "s",
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Dropped input",
            "Input the agent dropped (malformed objects, limits), per second by reason; a zero "
            "line when nothing was dropped.",
            p.targets(
                (
                    f"sum by (reason) ({rate('tailwatch_dropped_total')})\n"
                    f"or on ()\nmax({last_event}) * 0",
                    "{{reason}}",
                )
            ),
            "ops",
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Scrape size",
            "Samples Prometheus scraped from the agent: its series count.",
            p.targets((f"max({raw('scrape_samples_scraped')})", "samples")),
            "short",
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Scrape duration",
            "How long Prometheus took to scrape the agent's /metrics.",
            p.targets((f"max({raw('scrape_duration_seconds')})", "duration")),
            "s",
        ),
        8,
    )

    return p.dashboard(
        config,
        title="tailwatch / Node",
        uid=config.dashboards.node_uid,
        description="One node: its lifecycle events, container pressure and its agent's health.",
        grid=grid,
        variables=[
            p.variable("node", "Node", f"label_values({q.raw('up')}, {q.node})"),
        ],
        links=[p.node_link(config, "${node}")],
        annotations=[
            p.annotation(
                "Pod events",
                f"sum by (namespace, workload, event, reason) (\n  "
                f"{events('tailwatch_pod_events_total')}\n) > 0",
                "{{event}} {{reason}}",
                "namespace,workload,event,reason",
                "orange",
            )
        ],
    )
