"""The recording rules: per-Service latency quantiles by state aggregated across agents, the
share of probes slower than each Service's SLO over the burn-rate windows, the fan-out
probability, the cross-node joins no single agent can make, and container ratios.

`Records` names every recorded series for one config; dashboards and alerts refer to them
through it, so a renamed rule or a changed window changes every user at once. Names follow
Prometheus' `level:metric:operations` convention, with the window in the operation.
"""

from __future__ import annotations

from typing import Any

from exporter.mixin.config import MixinConfig
from exporter.mixin.promql import PromQL, duration

#: The latency quantiles recorded for every Service, target and state.
QUANTILES = ("0.5", "0.99", "0.999")

Rule = dict[str, Any]
Group = dict[str, Any]


class Records:
    """The recorded series of one config."""

    def __init__(self, config: MixinConfig) -> None:
        w = config.windows
        self.latency_window = duration(w.latency)
        lat = self.latency_window
        self.probe_buckets = (
            f"namespace_service_target_state_le:tailwatch_probe_duration_seconds_bucket:rate{lat}"
        )
        self.probe_quantiles = (
            f"namespace_service_target_state:tailwatch_probe_duration_seconds:quantile{lat}"
        )
        self.probe_p99 = f"namespace_service_target:tailwatch_probe_duration_seconds:p99_rate{lat}"
        self.probe_baseline_p99 = (
            "namespace_service_target:tailwatch_probe_duration_seconds_steady:"
            f"p99_rate{duration(w.baseline)}"
        )
        self.probe_p99_ratio = "namespace_service_target:tailwatch_probe_p99:ratio_to_baseline"
        self.client_buckets = (
            f"namespace_service_state_le:tailwatch_client_request_duration_seconds_bucket:rate{lat}"
        )
        self.client_quantiles = (
            f"namespace_service_state:tailwatch_client_request_duration_seconds:quantile{lat}"
        )
        self.endpoint_pods = "namespace_service_pod:tailwatch_probe_endpoint_pods:group"
        self.slo_threshold = "namespace_service_le:tailwatch_service_slo_seconds:max"
        self.slo_within = f"namespace_service:tailwatch_slo_probes_within:rate{lat}"
        self.slo_probes = f"namespace_service:tailwatch_slo_probes:rate{lat}"
        self.slow_windows = tuple(
            sorted(
                {b.long for b in config.slo.burn_rates}
                | {b.short for b in config.slo.burn_rates}
                | {config.slo.fanout_window}
            )
        )
        fanout_window = duration(config.slo.fanout_window)
        self.fanout = f"namespace_service_calls:tailwatch_fanout_fast:ratio_rate{fanout_window}"
        self.pod_nodes = (
            f"namespace_workload_pod:tailwatch_pod_nodes:count_distinct{duration(w.reschedule)}"
        )
        self.workload_revisions = "namespace_workload:tailwatch_workload_revisions:count_distinct"
        res = duration(w.resources)
        self.cpu_usage = f"namespace_pod_container:tailwatch_container_cpu_usage_seconds:rate{res}"
        self.throttled = (
            f"namespace_pod_container:tailwatch_container_cpu_throttled_periods:ratio_rate{res}"
        )
        self.cpu_share = (
            f"namespace_pod_container:tailwatch_container_cpu_usage:pod_share_rate{res}"
        )

    def slow_ratio(self, window: float) -> str:
        """Share of a Service's probes slower than its SLO over `window`."""
        return f"namespace_service:tailwatch_slo_probes_slow:ratio_rate{duration(window)}"


def _record(name: str, expr: str, **labels: str) -> Rule:
    rule: Rule = {"record": name, "expr": expr}
    if labels:
        rule["labels"] = labels
    return rule


class _Builder:
    def __init__(self, config: MixinConfig) -> None:
        self.config = config
        self.q = PromQL(config)
        self.r = Records(config)

    def latency(self) -> Group:
        q, r, lat = self.q, self.r, self.r.latency_window
        base = duration(self.config.windows.baseline)
        endpoint_probes = q.raw("tailwatch_probe_duration_seconds_count", 'target="endpoint"')
        rules = [
            _record(
                r.probe_buckets,
                f"sum by ({q.by('namespace', 'service', 'target', 'state', 'le')}) (\n"
                f"  rate({q.raw('tailwatch_probe_duration_seconds_bucket')}[{lat}])\n)",
            ),
            *(
                _record(
                    r.probe_quantiles,
                    f"histogram_quantile({quantile}, {r.probe_buckets})",
                    quantile=quantile,
                )
                for quantile in QUANTILES
            ),
            _record(
                r.probe_p99,
                "histogram_quantile(0.99,\n"
                f"  sum by ({q.by('namespace', 'service', 'target', 'le')}) ({r.probe_buckets})\n)",
                quantile="0.99",
            ),
            # The steady baseline sums the recorded per-second rates over the window: only
            # steady samples, so an ongoing disruption never raises its own baseline.
            _record(
                r.probe_baseline_p99,
                "histogram_quantile(0.99,\n"
                f"  sum by ({q.by('namespace', 'service', 'target', 'le')}) (\n"
                f'    sum_over_time({r.probe_buckets}{{state="steady"}}[{base}])\n'
                "  )\n)",
                quantile="0.99",
            ),
            _record(r.probe_p99_ratio, f"{r.probe_p99}\n/\n{r.probe_baseline_p99}"),
            _record(
                r.client_buckets,
                f"sum by ({q.by('namespace', 'service', 'state', 'le')}) (\n"
                f"  rate({q.raw('tailwatch_client_request_duration_seconds_bucket')}[{lat}])\n)",
            ),
            *(
                _record(
                    r.client_quantiles,
                    f"histogram_quantile({quantile}, {r.client_buckets})",
                    quantile=quantile,
                )
                for quantile in QUANTILES
            ),
            # Which pods back which Service: the endpoint targets the agents probe.
            _record(
                r.endpoint_pods,
                f"group by ({q.by('namespace', 'service', 'pod')}) (\n  {endpoint_probes}\n)",
            ),
        ]
        return {"name": "tailwatch-latency.rules", "rules": rules}

    def slo(self) -> Group:
        q, r, c = self.q, self.r, self.config
        ns_svc = q.by("namespace", "service")
        slo_seconds = q.raw("tailwatch_service_slo_seconds")
        rules = [
            # The agents export each Service's SLO threshold with the exact `le` string of
            # its SLO bucket (slo_le): the join below reads that one bucket, no interpolation.
            _record(
                r.slo_threshold,
                f"max by ({q.by('namespace', 'service', 'le')}) (\n"
                f'  label_replace({slo_seconds}, "le", "$1", "slo_le", "(.+)")\n)',
            ),
            _record(
                r.slo_within,
                f"sum by ({ns_svc}) (\n"
                f'  {r.probe_buckets}{{target="service"}}\n'
                f"  and on ({q.by('namespace', 'service', 'le')})\n"
                f"  {r.slo_threshold}\n)",
            ),
            _record(
                r.slo_probes,
                f'sum by ({ns_svc}) ({r.probe_buckets}{{target="service", le="+Inf"}})\n'
                f"and on ({ns_svc})\n{r.slo_threshold}",
            ),
            *(
                _record(
                    r.slow_ratio(window),
                    f"1 - (\n  sum_over_time({r.slo_within}[{duration(window)}])\n  /\n"
                    f"  sum_over_time({r.slo_probes}[{duration(window)}])\n)",
                )
                for window in r.slow_windows
            ),
            *(
                _record(r.fanout, f"(1 - {r.slow_ratio(c.slo.fanout_window)}) ^ {n}", calls=str(n))
                for n in c.slo.fanout_calls
            ),
        ]
        return {"name": "tailwatch-slo.rules", "rules": rules}

    def cluster(self) -> Group:
        q, r = self.q, self.r
        window = duration(self.config.windows.reschedule)
        pod_keys = ("namespace", "workload_kind", "workload", "pod")
        statefulset_pods = q.raw("tailwatch_pod_info", 'workload_kind="StatefulSet"')
        revisioned_pods = q.raw("tailwatch_pod_info", 'revision!=""')
        rules = [
            # A StatefulSet pod keeps its name when it is recreated elsewhere: seen on more
            # than one node within the window means it was rescheduled (value = nodes).
            _record(
                r.pod_nodes,
                f"count by ({q.by(*pod_keys)}) (\n"
                f"  group by ({q.by(q.node, *pod_keys)}) (\n"
                f"    max_over_time({statefulset_pods}[{window}])\n"
                "  )\n)",
            ),
            # More than one revision of a workload running anywhere: a rollout in progress.
            _record(
                r.workload_revisions,
                f"count by ({q.by('namespace', 'workload_kind', 'workload')}) (\n"
                f"  group by ({q.by('namespace', 'workload_kind', 'workload', 'revision')}) (\n"
                f"    {revisioned_pods}\n"
                "  )\n)",
            ),
        ]
        return {"name": "tailwatch-cluster.rules", "rules": rules}

    def resources(self) -> Group:
        q, r = self.q, self.r
        window = duration(self.config.windows.resources)
        keys = q.by(q.node, "namespace", "pod", "container")
        throttled_periods = q.raw("tailwatch_container_cpu_throttled_periods_total")
        rules = [
            _record(
                r.cpu_usage,
                f"sum by ({keys}) (\n"
                f"  rate({q.raw('tailwatch_container_cpu_usage_seconds_total')}[{window}])\n)",
            ),
            _record(
                r.throttled,
                f"sum by ({keys}) (\n"
                f"  rate({throttled_periods}[{window}])\n)\n/\n"
                f"(sum by ({keys}) (\n"
                f"  rate({q.raw('tailwatch_container_cpu_periods_total')}[{window}])\n) > 0)",
            ),
            _record(
                r.cpu_share,
                f"{r.cpu_usage}\n/ on ({q.by('namespace', 'pod')}) group_left ()\n"
                f"(sum by ({q.by('namespace', 'pod')}) ({r.cpu_usage}) > 0)",
            ),
        ]
        return {"name": "tailwatch-resources.rules", "rules": rules}


def recording_groups(config: MixinConfig) -> list[Group]:
    b = _Builder(config)
    return [b.latency(), b.slo(), b.cluster(), b.resources()]
