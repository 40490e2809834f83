"""The Overview dashboard: every opted-in Service's tail latency in and out of disruption, its
SLO compliance and budget burn, the fan-out view, the episodes of the time range, and what
the agents themselves cost."""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.dashboards import panels as p
from exporter.mixin.dashboards.episodes import (
    episode_table,
    not_recovered_stat,
    quantile_in_range,
)
from exporter.mixin.dashboards.node import (
    AGENT_CPU_BUDGET_CORES,
    AGENT_MEMORY_BUDGET_BYTES,
    agent_cpu,
)
from exporter.mixin.promql import PromQL, duration
from exporter.mixin.records import Records

NS = 'namespace=~"$namespace"'
SVC = 'service=~"$service"'
SERVICE_LEGEND = "{{namespace}}/{{service}}"


def service_link(config: MixinConfig, field: str = p.FIELD_LABEL) -> dict[str, Any]:
    """A data link to the Service dashboard of the series' (or, with
    `field="${__data.fields.%s}"`, the table row's) namespace and service."""
    uid = config.dashboards.service_uid
    namespace, service = field % "namespace", field % "service"
    return p.data_link(
        f"Service dashboard for {namespace}/{service}",
        f"/d/{uid}?${{__url_time_range}}&var-datasource=${{datasource}}"
        f"&var-namespace={namespace}&var-service={service}",
    )


def build(config: MixinConfig) -> Any:
    q = PromQL(config, dashboard=True)
    r = Records(config)
    t = config.thresholds
    slo = config.slo
    grid = p.Grid()
    link = [service_link(config)]

    grid.row("Tail latency of each Service's address, steady vs disrupted")
    for quantile, name in (("0.5", "p50"), ("0.99", "p99"), ("0.999", "p99.9")):
        grid.add(
            p.timeseries(
                f"{name} by Service and state",
                f"{name} latency of probes of each Service's address (what clients see through "
                "kube-proxy), summed over the k agents probing it, by the state the Service was in "
                "when the "
                "probe ran: steady, disrupted (an episode is open) or recovering.",
                p.targets(
                    (
                        q.rec(
                            r.probe_quantiles, NS, SVC, 'target="service"', f'quantile="{quantile}"'
                        ),
                        SERVICE_LEGEND + " {{state}}",
                    )
                ),
                "s",
                links=link,
            ),
            8,
        )
    grid.add(
        p.timeseries(
            "p99 / steady baseline",
            f"p99 now (all states, {r.latency_window} window) divided by the steady p99 of the "
            f"{duration(config.windows.baseline)} before that window. Above "
            f"{t.disruption_p99_ratio:g}x during an episode, TailwatchDisruptionImpact fires.",
            p.targets((q.rec(r.probe_p99_ratio, NS, SVC, 'target="service"'), SERVICE_LEGEND)),
            "suffix:x",
            thresholds=((t.degraded_p99_ratio, "orange"), (t.disruption_p99_ratio, "red")),
            links=link,
        ),
        12,
    )
    grid.add(
        p.state_timeline(
            "Disruption",
            "Whether an episode is open for each Service (any agent reports one).",
            p.targets(
                (
                    f"max by ({q.by('namespace', 'service')}) "
                    f"({q.raw('tailwatch_service_disrupted', NS, SVC)})",
                    SERVICE_LEGEND,
                )
            ),
            "none",
            p.value_mappings({"0": ("steady", "green"), "1": ("disrupted", "red")}),
        ),
        12,
    )

    grid.row("SLO: share of probes within each Service's tailwatch.io/slo-latency")
    first = slo.burn_rates[0]
    longest = max(b.long for b in slo.burn_rates)
    budget = 1 - slo.objective
    grid.add(
        p.table(
            f"SLO compliance (objective {slo.objective:.2%})",
            "Each Service's SLO threshold and the share of probes of its address within it over "
            "several windows. Services without a tailwatch.io/slo-latency annotation have no SLO.",
            p.instant_targets(
                f"max by ({q.by('namespace', 'service')}) "
                f"({q.raw('tailwatch_service_slo_seconds', NS, SVC)})",
                f"1 - {q.rec(r.slow_ratio(first.short), NS, SVC)}",
                f"1 - {q.rec(r.slow_ratio(first.long), NS, SVC)}",
                f"1 - {q.rec(r.slow_ratio(longest), NS, SVC)}",
            ),
            "percentunit",
            columns={
                "Value #A": ("SLO threshold", "s"),
                "Value #B": (f"Within SLO, {duration(first.short)}", "percentunit"),
                "Value #C": (f"Within SLO, {duration(first.long)}", "percentunit"),
                "Value #D": (f"Within SLO, {duration(longest)}", "percentunit"),
            },
        ),
        12,
    )
    grid.add(
        p.timeseries(
            f"Error budget burn rate ({duration(first.long)})",
            f"Share of slow probes over {duration(first.long)} divided by the error budget "
            f"({budget:.2%}): 1 spends the budget in exactly 30 days; "
            f"{first.factor:g} pages when the {duration(first.short)} window agrees.",
            p.targets((f"{q.rec(r.slow_ratio(first.long), NS, SVC)} / {budget:g}", SERVICE_LEGEND)),
            "suffix:x",
            thresholds=tuple(
                sorted(
                    {
                        (b.factor, "red" if b.severity == "critical" else "orange")
                        for b in slo.burn_rates
                    }
                )
            ),
        ),
        12,
    )
    grid.add(
        p.timeseries(
            "Fan-out: chance an interaction stays fast",
            "If an interaction makes N calls to a Service and each is slow (over the SLO) with "
            f"the probability seen over {duration(slo.fanout_window)}, the chance that none is "
            "slow is (1 - slow ratio)^N. At 1% slow: 99% for 1 call, 90% for 10, 37% for 100.",
            p.targets(
                (q.rec(r.fanout, NS, SVC), SERVICE_LEGEND + ", {{calls}} calls"),
            ),
            "percentunit",
            minimum=0,
            maximum=1,
            links=link,
        ),
        24,
    )

    grid.row("Episodes")
    keys = ("namespace", "service", "cause")
    row_link = service_link(config, "${__data.fields.%s}")
    grid.add(episode_table(q, (NS, SVC), keys, (row_link,)), 16, 9)
    grid.add(not_recovered_stat(q, (NS, SVC)), 8, 9)
    grid.add(
        p.stat(
            "Recovery p90 by Service",
            "90th percentile of the time from an episode's close until the rolling p99 was "
            "back within the baseline tolerance, over the episodes of the time range.",
            [
                p.target(
                    quantile_in_range(
                        q,
                        "0.9",
                        "tailwatch_episode_recovery_seconds",
                        (NS, SVC),
                        ("namespace", "service"),
                    ),
                    SERVICE_LEGEND,
                    instant=True,
                )
            ],
            "s",
        ),
        24,
        5,
    )

    grid.row("Across nodes: what no single agent sees")
    grid.add(
        p.timeseries(
            "Revisions running per workload",
            "Distinct revisions of each workload's pods across every node: 2 or more is a "
            "rollout in progress.",
            p.targets(
                (
                    q.rec(r.workload_revisions, 'namespace=~"$namespace"'),
                    "{{namespace}}/{{workload}} ({{workload_kind}})",
                )
            ),
            "short",
            thresholds=((2, "orange"),),
        ),
        12,
    )
    grid.add(
        p.timeseries(
            f"Nodes per StatefulSet pod ({duration(config.windows.reschedule)})",
            "Nodes each StatefulSet pod ran on within the window, joined across agents: 2 or "
            "more means it left one node and came back on another (a reschedule).",
            p.targets((q.rec(r.pod_nodes, 'namespace=~"$namespace"'), "{{namespace}}/{{pod}}")),
            "short",
            thresholds=((2, "red"),),
            links=[p.pod_link(config)],
        ),
        12,
    )

    grid.row("The agents' own cost")
    by = q.by()

    def across(operation: str, expr: str) -> str:
        """An aggregation over every agent (per cluster when the cluster label is kept)."""
        return f"{operation} by ({by}) ({expr})" if by else f"{operation}({expr})"

    cpu = agent_cpu(q)
    rss = q.raw("process_resident_memory_bytes")
    grid.add(
        p.timeseries(
            "Agent CPU across nodes",
            "CPU of the busiest agent and the average agent (from process_cpu_seconds_total), "
            f"with the budget of {AGENT_CPU_BUDGET_CORES:.0%} of a core at the reference node; "
            "the Node dashboard shows each node's.",
            p.targets((across("max", cpu), "max"), (across("avg", cpu), "average")),
            "suffix: cores",
            thresholds=((AGENT_CPU_BUDGET_CORES, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "Agent memory across nodes",
            "Resident memory of the largest agent and the average agent "
            f"(process_resident_memory_bytes), with the budget of "
            f"{AGENT_MEMORY_BUDGET_BYTES // 2**20} MiB at the reference node.",
            p.targets((across("max", rss), "max"), (across("avg", rss), "average")),
            "bytes",
            thresholds=((AGENT_MEMORY_BUDGET_BYTES, "red"),),
        ),
        8,
    )
    grid.add(
        p.timeseries(
            "All agents together",
            "CPU cores used by every agent together: what tailwatch costs the cluster.",
            p.targets((across("sum", cpu), "all agents")),
            "suffix: cores",
        ),
        8,
    )

    return p.dashboard(
        config,
        title="tailwatch / Overview",
        uid=config.dashboards.overview_uid,
        description="Tail latency of opted-in Services, SLOs, fan-out and lifecycle episodes.",
        grid=grid,
        variables=[
            p.variable(
                "namespace",
                "Namespace",
                f"label_values({q.raw('tailwatch_service_endpoints')}, namespace)",
                multi=True,
                include_all=True,
            ),
            p.variable(
                "service",
                "Service",
                f"label_values({q.raw('tailwatch_service_endpoints', NS)}, service)",
                multi=True,
                include_all=True,
            ),
        ],
        annotations=[
            episode_annotation(q, (NS, SVC)),
            rollout_annotation(q, rollouts_in_progress(q, NS)),
        ],
    )


def episode_annotation(q: PromQL, matchers: tuple[str, ...]) -> dict[str, Any]:
    return p.annotation(
        "Episodes",
        f"max by ({q.by('namespace', 'service', 'cause')}) "
        f"({q.raw('tailwatch_service_disrupted', *matchers)}) == 1",
        "{{cause}} episode of {{namespace}}/{{service}}",
        "namespace,service,cause",
        "red",
    )


def rollouts_in_progress(q: PromQL, *matchers: str) -> str:
    """The workloads with a rollout in progress: the max over the agents that follow each
    (every agent that reports a Service behind it), so a rollout is one series, not k."""
    keys = q.by("namespace", "workload_kind", "workload", "workload_type")
    return f"max by ({keys}) ({q.raw('tailwatch_rollout_in_progress', *matchers)}) == 1"


def rollout_annotation(q: PromQL, expr: str) -> dict[str, Any]:
    """Each rollout as a region of the time panels: it begins at the rollout's start and
    ends at its finish (docs/dashboards.md)."""
    return p.annotation(
        "Rollouts",
        expr,
        "rollout of {{workload_kind}} {{namespace}}/{{workload}}",
        "namespace,workload_kind,workload",
        "purple",
    )
