"""The Service dashboard: one Service's latency by target and state, its endpoints and
episodes, lifecycle events as annotations, and the resources of the containers behind it."""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.dashboards import panels as p
from exporter.mixin.dashboards.episodes import episode_table, not_recovered_stat
from exporter.mixin.dashboards.overview import (
    episode_annotation,
    rollout_annotation,
    rollouts_in_progress,
)
from exporter.mixin.promql import (
    PromQL,
    duration,
    increase_with_new_series,
    indent,
    psi_waiting_rate,
)
from exporter.mixin.records import QUANTILES, Records

NS = 'namespace="$namespace"'
SVC = 'service="$service"'
CONTAINER_LEGEND = "{{pod}}/{{container}}"


def build(config: MixinConfig) -> Any:
    q = PromQL(config, dashboard=True)
    r = Records(config)
    t = config.thresholds
    grid = p.Grid()
    slo_line = (
        f"max({q.raw('tailwatch_service_slo_seconds', NS, SVC)})",
        "SLO threshold",
    )
    # The Service's pods: those whose endpoints the agents probe.
    pods = f"group by ({q.by('namespace', 'pod')}) ({q.rec(r.endpoint_pods, NS, SVC)})"

    def of_service(expr: str) -> str:
        return f"{expr}\nand on ({q.by('namespace', 'pod')})\n{pods}"

    def rate(metric: str, *matchers: str) -> str:
        return f"rate({q.raw(metric, NS, *matchers)}[$__rate_interval])"

    pod = [p.pod_link(config)]

    grid.row("Latency by target and state")
    for quantile, name in zip(QUANTILES, ("p50", "p99", "p99.9"), strict=True):
        grid.add(
            p.timeseries(
                f"{name} by target and state",
                f"{name} probe latency: target=service is the Service's address through "
                "kube-proxy (from the k agents that probe it), target=endpoint the endpoints "
                "probed by the agent of their node; by the state the Service was in.",
                p.targets(
                    (
                        q.rec(r.probe_quantiles, NS, SVC, f'quantile="{quantile}"'),
                        "{{target}} {{state}}",
                    ),
                    slo_line,
                ),
                "s",
            ),
            8,
        )
    grid.add(
        p.timeseries(
            "p99 / steady baseline",
            f"p99 now over the steady p99 of the {duration(config.windows.baseline)} before "
            f"the last {r.latency_window}.",
            p.targets((q.rec(r.probe_p99_ratio, NS, SVC), "{{target}}")),
            "suffix:x",
            thresholds=((t.degraded_p99_ratio, "orange"), (t.disruption_p99_ratio, "red")),
        ),
        8,
    )
    first = config.slo.burn_rates[0]
    grid.add(
        p.timeseries(
            "Probes slower than the SLO",
            "Share of probes of the Service's address over its tailwatch.io/slo-latency (the "
            "agents count them exactly, failed probes included), over the page alert's two "
            "windows.",
            p.targets(
                (q.rec(r.slow_ratio(first.short), NS, SVC), duration(first.short)),
                (q.rec(r.slow_ratio(first.long), NS, SVC), duration(first.long)),
            ),
            "percentunit",
            thresholds=((first.factor * (1 - config.slo.objective), "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Client-reported latency (OTLP)",
            "Quantiles of the latency clients reported over OTLP for this Service, by state.",
            p.targets(
                (q.rec(r.client_quantiles, NS, SVC), "p{{quantile}} {{state}}"),
                slo_line,
            ),
            "s",
        ),
        8,
    )
    client = "tailwatch_client_request_duration_seconds"
    client_requests = q.histogram(lambda h: h.count_rate(client, "$__rate_interval", NS, SVC))
    client_slow = rate("tailwatch_client_request_slow_total", SVC)
    grid.add(
        p.timeseries(
            "Client requests slower than the SLO (OTLP)",
            "Share of the requests clients reported over OTLP that were slower than the "
            "Service's tailwatch.io/slo-latency, by state (the agents count them against the "
            "SLO exactly).",
            p.targets(
                (
                    f"sum by (state) ({client_slow})\n/\n"
                    f"sum by (state) (\n  {indent(client_requests)}\n)",
                    "{{state}}",
                )
            ),
            "percentunit",
            thresholds=((1 - config.slo.objective, "red"),),
        ),
        8,
    )
    probes = q.histogram(
        lambda h: h.count_rate("tailwatch_probe_duration_seconds", "$__rate_interval", NS, SVC)
    )
    probes_by_target = f"sum by (target) (\n  {indent(probes)}\n)"
    grid.add(
        p.timeseries(
            "Probe failures by reason",
            "Failed probes per second by target and reason; a zero line per target when none "
            "failed. Their time is in the latency panels too.",
            p.targets(
                (
                    f"sum by (target, reason) ({rate('tailwatch_probe_failures_total', SVC)})\n"
                    f"or on ()\n{probes_by_target} * 0",
                    "{{target}} {{reason}}",
                )
            ),
            "ops",
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Probes per second",
            "Probes run per second by target: the Service's address from its k probing agents, "
            "each endpoint from its node's agent.",
            p.targets((probes_by_target, "{{target}}")),
            "ops",
        ),
        8,
    )

    grid.row("Endpoints and episodes")
    endpoints = q.raw("tailwatch_service_endpoints", NS, SVC)
    grid.add(
        p.state_timeline(
            "Endpoints by condition",
            "Endpoints of the Service that are ready, serving and terminating (cluster view).",
            p.targets((f"max by (condition) ({endpoints})", "{{condition}}")),
            "short",
            [],
        ),
        12,
    )
    endpoint_events = q.raw("tailwatch_endpoint_events_total", NS, SVC)
    grid.add(
        p.timeseries(
            "Endpoint events",
            "Endpoint changes of the Service (every agent reporting it sees the same: max across "
            "agents).",
            p.targets(
                (
                    f"max by (event) (\n  "
                    f"{indent(increase_with_new_series(endpoint_events, '$__rate_interval'))}\n)",
                    "{{event}}",
                )
            ),
            "short",
            bars=True,
        ),
        12,
    )
    grid.add(
        p.state_timeline(
            "Open episodes by cause",
            "When an episode of the Service was open, by the cause the agents gave it.",
            p.targets((f"max by (cause) ({disrupted_by_cause(q)})", "{{cause}}")),
            "none",
            p.value_mappings({"0": ("closed", "green"), "1": ("open", "red")}),
        ),
        24,
        5,
    )
    grid.add(episode_table(q, (NS, SVC), ("cause",)), 18, 8)
    grid.add(not_recovered_stat(q, (NS, SVC)), 6, 8)

    grid.row("Containers of the Service's pods")
    keys = q.by("namespace", "pod", "container")
    cpu_rate = rate("tailwatch_container_cpu_usage_seconds_total")
    cpu = f"sum by ({keys}) ({cpu_rate})"
    grid.add(
        p.timeseries(
            "CPU by container",
            "CPU used by each container of the pods behind the Service (1 s cgroup samples).",
            p.targets((of_service(cpu), CONTAINER_LEGEND)),
            "suffix: cores",
            links=pod,
        ),
        12,
    )
    throttled = (
        f"sum by ({keys}) ({rate('tailwatch_container_cpu_throttled_periods_total')})\n/\n"
        f"(sum by ({keys}) ({rate('tailwatch_container_cpu_periods_total')}) > 0)"
    )
    grid.add(
        p.timeseries(
            "CPU throttling",
            "Share of CFS periods in which the container's quota ran out.",
            p.targets((of_service(throttled), CONTAINER_LEGEND)),
            "percentunit",
            thresholds=((t.throttling_ratio, "red"),),
            links=pod,
        ),
        12,
    )
    grid.add(
        p.timeseries(
            "Memory working set vs limit",
            "Working set (usage minus inactive file, as the kubelet computes it) and the limit.",
            p.targets(
                (
                    of_service(
                        f"max by ({keys}) "
                        f"({q.raw('tailwatch_container_memory_working_set_bytes', NS)})"
                    ),
                    CONTAINER_LEGEND,
                ),
                (
                    of_service(
                        f"max by ({keys}) ({q.raw('tailwatch_container_memory_limit_bytes', NS)})"
                    ),
                    CONTAINER_LEGEND + " limit",
                ),
            ),
            "bytes",
            links=pod,
        ),
        8,
    )
    pressure = f"sum by ({q.by('namespace', 'pod', 'container', 'resource')}) ({psi_rate(q, NS)})"
    grid.add(
        p.timeseries(
            "Pressure stall (PSI some)",
            "Share of time at least one task of the container waited on CPU, memory or IO "
            '(cgroup v2 PSI "some": the kubelet\'s container_pressure_*_waiting_seconds_total).',
            p.targets((of_service(pressure), CONTAINER_LEGEND + " {{resource}}")),
            "percentunit",
            links=pod,
        ),
        8,
    )
    sidecars = config.dashboards.sidecar_containers
    sidecar_rate = rate("tailwatch_container_cpu_usage_seconds_total", sidecar_matcher(sidecars))
    sidecar_cpu = (
        f"sum by ({keys}) ({sidecar_rate})\n"
        f"/ on ({q.by('namespace', 'pod')}) group_left ()\n"
        f"(sum by ({q.by('namespace', 'pod')}) ({cpu_rate}) > 0)"
    )
    grid.add(
        p.timeseries(
            "Sidecar share of its pod's CPU",
            "CPU of each sidecar container (names matching the mixin's sidecar pattern) as a "
            "share of its pod's CPU.",
            p.targets((of_service(sidecar_cpu), CONTAINER_LEGEND)),
            "percentunit",
            thresholds=((t.sidecar_cpu_share, "red"),),
            links=pod,
        ),
        8,
    )

    return p.dashboard(
        config,
        title="tailwatch / Service",
        uid=config.dashboards.service_uid,
        description="One opted-in Service: latency by target and state, endpoints, episodes, "
        "and the containers behind it.",
        grid=grid,
        variables=[
            p.variable(
                "namespace",
                "Namespace",
                f"label_values({q.raw('tailwatch_service_endpoints')}, namespace)",
            ),
            p.variable(
                "service",
                "Service",
                f"label_values({q.raw('tailwatch_service_endpoints', NS)}, service)",
            ),
        ],
        annotations=[
            episode_annotation(q, (NS, SVC)),
            p.annotation(
                "Endpoint events",
                f"max by ({q.by('namespace', 'service', 'event')}) (\n  "
                f"{indent(increase_with_new_series(endpoint_events, '$__rate_interval'))}\n) > 0",
                "endpoint {{event}}",
                "namespace,service,event",
                "blue",
            ),
            p.annotation(
                "Pod events",
                workload_events(q, r),
                "{{event}} {{reason}}",
                "namespace,workload,event,reason",
                "orange",
            ),
            rollout_annotation(q, workload_rollouts(q, r)),
        ],
    )


def disrupted_by_cause(q: PromQL) -> str:
    return q.raw("tailwatch_service_disrupted", NS, SVC, 'cause!="none"')


def psi_rate(q: PromQL, *matchers: str) -> str:
    """PSI "some" (the kubelet's `waiting`) of each container, by resource."""
    return psi_waiting_rate(q.raw, "$__rate_interval", *matchers)


def sidecar_matcher(pattern: str) -> str:
    return f'container=~"{pattern}"'


def workload_events(q: PromQL, r: Records) -> str:
    """Lifecycle events of the workloads whose pods back the Service."""
    events = q.raw("tailwatch_pod_events_total", NS)
    backing = (
        f"group by ({q.by('namespace', 'workload')}) (\n"
        f"  {q.raw('tailwatch_pod_info', NS)}\n"
        f"  and on ({q.by('namespace', 'pod')})\n"
        f"  {q.rec(r.endpoint_pods, NS, SVC)}\n)"
    )
    return (
        f"sum by ({q.by('namespace', 'workload', 'event', 'reason')}) (\n  "
        f"{indent(increase_with_new_series(events, '$__rate_interval'))}\n) > 0\n"
        f"and on ({q.by('namespace', 'workload')})\n{backing}"
    )


def workload_rollouts(q: PromQL, r: Records) -> str:
    """Rollouts in progress of the workloads whose pods back the Service (their pods on
    the agents' nodes, joined with the endpoints the agents probe)."""
    keys = q.by("namespace", "workload_kind", "workload", "workload_type")
    backing = (
        f"group by ({keys}) (\n"
        f"  {q.raw('tailwatch_pod_info', NS)}\n"
        f"  and on ({q.by('namespace', 'pod')})\n"
        f"  {q.rec(r.endpoint_pods, NS, SVC)}\n)"
    )
    return f"{rollouts_in_progress(q, NS)}\nand on ({keys})\n{backing}"
