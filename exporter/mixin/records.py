"""The recording rules: per-Service latency quantiles by state aggregated across agents (from
classic or native histograms, as the config says), the share of probes slower than each
Service's SLO over the burn-rate windows (from the agents' slow-probe counters), the fan-out
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
        h = PromQL(config).histograms
        self.latency_window = duration(w.latency)
        lat = self.latency_window
        # Classic histograms: the bucket rates summed over every agent, recorded once for
        # the quantile rules. Native histograms: none (see `_Builder.latency`).
        self.probe_rate: str | None = None
        self.client_rate: str | None = None
        if not h.native:
            self.probe_rate = h.bucket_record(
                "namespace_service_target_state", "tailwatch_probe_duration_seconds", f"rate{lat}"
            )
            self.client_rate = h.bucket_record(
                "namespace_service_state", "tailwatch_client_request_duration_seconds", f"rate{lat}"
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
        self.client_quantiles = (
            f"namespace_service_state:tailwatch_client_request_duration_seconds:quantile{lat}"
        )
        self.endpoint_pods = "namespace_service_pod:tailwatch_probe_endpoint_pods:group"
        self.slo_slow = f"namespace_service:tailwatch_slo_probes_slow:rate{lat}"
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

    def _quantile(
        self,
        phi: str,
        metric: str,
        labels: tuple[str, ...],
        record: str | None,
        recorded_by: tuple[str, ...],
    ) -> str:
        """The `phi` quantile of `metric` by `labels` over the latency window: from the
        bucket rates `record`ed by `recorded_by` (classic), or from the agents' histograms
        themselves (native: `record` is None)."""
        h = self.q.histograms
        if record is None:
            return (
                f"histogram_quantile({phi},\n"
                f"  sum by ({h.by(*labels)}) (\n"
                f"    {h.rate(metric, self.r.latency_window)}\n"
                "  )\n)"
            )
        if labels == recorded_by:
            return f"histogram_quantile({phi}, {record})"
        return f"histogram_quantile({phi},\n  sum by ({h.by(*labels)}) ({record})\n)"

    def latency(self) -> Group:
        q, r, lat = self.q, self.r, self.r.latency_window
        h = q.histograms
        base = duration(self.config.windows.baseline)
        probe = "tailwatch_probe_duration_seconds"
        client = "tailwatch_client_request_duration_seconds"
        by_state = ("namespace", "service", "target", "state")
        client_by_state = ("namespace", "service", "state")
        endpoint, steady_state = 'target="endpoint"', 'state="steady"'
        # Classic: record the bucket rates once and compute every quantile from them.
        # Native: Prometheus 2.42 to 2.46 records native histograms but drops a few percent
        # of them ("Rule evaluation result discarded ... observations found in buckets",
        # prometheus/prometheus#12713) and writes a stale marker in their place, so every
        # quantile read from such a record would have gaps. Each quantile rule reads the
        # agents' histograms instead: one series per label set, cheap to read.
        probe_rates, client_rates = [], []
        if r.probe_rate is not None and r.client_rate is not None:
            probe_rates = [
                _record(r.probe_rate, f"sum by ({h.by(*by_state)}) (\n  {h.rate(probe, lat)}\n)")
            ]
            client_rates = [
                _record(
                    r.client_rate,
                    f"sum by ({h.by(*client_by_state)}) (\n  {h.rate(client, lat)}\n)",
                )
            ]
        # The steady baseline reads only steady samples, so an ongoing disruption never
        # raises its own baseline, and ends one latency window ago: the first slow probes
        # of an episode are recorded as steady until the agent opens it, and must not raise
        # the very baseline the episode is compared with.
        back = f"[{base}] offset {lat}"
        if h.native:
            # Prometheus before 2.45 has no sum_over_time() of native histograms (2.42
            # returns nothing): rate the steady series themselves over the window.
            steady = f"rate({h.series(probe, steady_state)}{back})"
        else:
            # Sum the recorded per-second rates over the window.
            steady = f"sum_over_time({r.probe_rate}{{{steady_state}}}{back})"
        rules = [
            *probe_rates,
            *(
                _record(
                    r.probe_quantiles,
                    self._quantile(quantile, probe, by_state, r.probe_rate, by_state),
                    quantile=quantile,
                )
                for quantile in QUANTILES
            ),
            _record(
                r.probe_p99,
                self._quantile("0.99", probe, by_state[:3], r.probe_rate, by_state),
                quantile="0.99",
            ),
            _record(
                r.probe_baseline_p99,
                "histogram_quantile(0.99,\n"
                f"  sum by ({h.by('namespace', 'service', 'target')}) (\n"
                f"    {steady}\n"
                "  )\n)",
                quantile="0.99",
            ),
            _record(r.probe_p99_ratio, f"{r.probe_p99}\n/\n{r.probe_baseline_p99}"),
            *client_rates,
            *(
                _record(
                    r.client_quantiles,
                    self._quantile(
                        quantile, client, client_by_state, r.client_rate, client_by_state
                    ),
                    quantile=quantile,
                )
                for quantile in QUANTILES
            ),
            # Which pods back which Service: the endpoint targets the agents probe.
            _record(
                r.endpoint_pods,
                f"group by ({q.by('namespace', 'service', 'pod')}) (\n"
                f"  {h.count(probe, endpoint)}\n)",
            ),
        ]
        return {"name": "tailwatch-latency.rules", "rules": rules}

    def slo(self) -> Group:
        q, r, c, lat = self.q, self.r, self.config, self.r.latency_window
        ns_svc = q.by("namespace", "service")
        service = 'target="service"'
        slow = q.raw("tailwatch_probe_slow_total", service)
        probes = q.histograms.count_rate("tailwatch_probe_duration_seconds", lat, service)
        rules = [
            # The agents count the probes slower than each Service's SLO (only Services with
            # one have the counter): exact whatever the histogram form or its buckets.
            _record(r.slo_slow, f"sum by ({ns_svc}) (\n  rate({slow}[{lat}])\n)"),
            _record(
                r.slo_probes,
                f"sum by ({ns_svc}) (\n  {probes}\n)\nand on ({ns_svc})\n{r.slo_slow}",
            ),
            # Longer windows add up the recorded per-second rates: a 3-day window costs 3
            # days of two recorded series per Service.
            *(
                _record(
                    r.slow_ratio(window),
                    f"sum_over_time({r.slo_slow}[{duration(window)}])\n/\n"
                    f"sum_over_time({r.slo_probes}[{duration(window)}])",
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
        # workload_type rides along, so the records join kubernetes-mixin's on it.
        workload = ("namespace", "workload_kind", "workload", "workload_type")
        pod_keys = (*workload, "pod")
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
                f"count by ({q.by(*workload)}) (\n"
                f"  group by ({q.by(*workload, 'revision')}) (\n"
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
