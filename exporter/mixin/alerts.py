"""The alerting rules. Each alert has a `severity`, a `summary`, a `description` and a
`runbook_url` pointing at its section of docs/runbooks.md (`ALERTS` lists every name, and a
test checks that each one has its runbook entry).

A summary names what fires and where, never a value: Alertmanager's grouped notification
takes its headline from the summaries, and one that changes with every evaluation
(`$value`) makes a new headline each time. Values go to the description.
"""

from __future__ import annotations

from exporter.mixin.config import MixinConfig
from exporter.mixin.promql import PromQL, duration, increase_with_new_series, indent
from exporter.mixin.records import Group, Records, Rule

ALERTS = (
    "TailwatchLatencyBudgetBurn",
    "TailwatchDisruptionImpact",
    "TailwatchSlowRecovery",
    "TailwatchRecoveryFailed",
    "TailwatchRolloutDegradedLatency",
    "TailwatchRolloutStuck",
    "TailwatchContainerRestartLoop",
    "TailwatchContainerOOMKilled",
    "TailwatchCPUThrottling",
    "TailwatchSidecarContention",
    "TailwatchAgentDown",
    "TailwatchWatchStale",
    "TailwatchProbeFailures",
    "TailwatchProberLagging",
)

SERVICE = "{{ $labels.namespace }}/{{ $labels.service }}"
CONTAINER = "{{ $labels.namespace }}/{{ $labels.pod }}/{{ $labels.container }}"
AGENT = "{{ $labels.instance }}"
WORKLOAD = "{{ $labels.workload_kind }} {{ $labels.namespace }}/{{ $labels.workload }}"


def _number(value: float) -> str:
    """Thresholds as PromQL and as text: 0.25, 3, 14.4."""
    return f"{value:g}"


class _Alerts:
    def __init__(self, config: MixinConfig) -> None:
        self.c = config
        self.q = PromQL(config)
        self.r = Records(config)

    def alert(
        self,
        name: str,
        expr: str,
        severity: str,
        summary: str,
        description: str,
        *,
        pending: float = 0,
        **labels: str,
    ) -> Rule:
        assert name in ALERTS, name
        rule: Rule = {"alert": name, "expr": expr}
        if pending:
            rule["for"] = duration(pending)
        rule["labels"] = {"severity": severity, **labels}
        rule["annotations"] = {
            "summary": summary,
            "description": description,
            "runbook_url": f"{self.c.runbook_base_url}#{name.lower()}",
        }
        return rule

    def slo(self) -> Group:
        r, c = self.r, self.c
        budget = 1 - c.slo.objective
        rules = []
        for b in c.slo.burn_rates:
            threshold = _number(round(b.factor * budget, 10))
            rules.append(
                self.alert(
                    "TailwatchLatencyBudgetBurn",
                    f"{r.slow_ratio(b.long)} > {threshold}\n"
                    f"and\n{r.slow_ratio(b.short)} > {threshold}",
                    b.severity,
                    f"{SERVICE} is burning its latency error budget {_number(b.factor)}x too fast.",
                    f"{{{{ $value | humanizePercentage }}}} of the probes of {SERVICE} over the "
                    f"last {duration(b.long)} (and over the last {duration(b.short)}) were slower "
                    "than its tailwatch.io/slo-latency threshold; the SLO allows "
                    f"{_number(round(budget * 100, 6))}%. At this rate the 30-day error budget "
                    f"lasts {_number(round(30 / b.factor, 1))} days.",
                    pending=b.pending,
                    long=duration(b.long),
                    short=duration(b.short),
                )
            )
        return {"name": "tailwatch-slo.alerts", "rules": rules}

    def episodes(self) -> Group:
        q, r, c, t = self.q, self.r, self.c, self.c.thresholds
        w = c.windows
        ns_svc = q.by("namespace", "service")
        disrupted = q.raw("tailwatch_service_disrupted")
        episodes = q.raw(
            "tailwatch_episodes_total",
            'cause="rollout"',
            f'impact=~"{"|".join(t.rollout_impacts)}"',
        )
        not_recovered = q.raw("tailwatch_episodes_not_recovered_total")
        recovering = q.histograms.count_rate(
            "tailwatch_probe_duration_seconds", self.r.latency_window, 'state="recovering"'
        )
        ewin = duration(w.episodes)
        rules = [
            # Agents may name different causes for one disruption (only the node of a
            # restarted pod sees the restart), so the alert keys on the Service alone and
            # the Service dashboard shows the causes.
            self.alert(
                "TailwatchDisruptionImpact",
                f'max by ({ns_svc}) ({r.probe_p99_ratio}{{target="service"}})'
                f" > {_number(t.disruption_p99_ratio)}\n"
                f"and on ({ns_svc})\n"
                f"max by ({ns_svc}) ({disrupted}) == 1",
                "warning",
                f"A disruption raised the p99 latency of {SERVICE} above "
                f"{_number(t.disruption_p99_ratio)}x its baseline.",
                f"{SERVICE} has an open episode (a lifecycle disruption or a latency spike) "
                f'and the p99 latency of its address is {{{{ $value | printf "%.1f" }}}}x its '
                f"steady p99 of the {duration(w.baseline)} before the last "
                f"{self.r.latency_window} (threshold "
                f"{_number(t.disruption_p99_ratio)}x).",
                pending=t.disruption_for,
            ),
            self.alert(
                "TailwatchSlowRecovery",
                f"max by ({ns_svc}) ({recovering}) > 0",
                "warning",
                f"{SERVICE} has not recovered {duration(t.slow_recovery)} after an episode ended.",
                f"Every endpoint of {SERVICE} is ready again, but its rolling p99 has stayed above "
                f"its baseline (plus the agent's --recovery-tolerance) for more than "
                f"{duration(t.slow_recovery)}: probes are still recorded with state=recovering.",
                pending=t.slow_recovery,
            ),
            self.alert(
                "TailwatchRecoveryFailed",
                f"max by ({q.by('namespace', 'service', 'cause')}) (\n"
                f"  {indent(increase_with_new_series(not_recovered, ewin))}\n) > 0",
                "warning",
                f"An episode of {SERVICE} (cause {{{{ $labels.cause }}}}) never got back to its "
                "baseline latency.",
                f"In the last {ewin}, an episode of {SERVICE} (cause {{{{ $labels.cause }}}}) was "
                "still above its baseline p99 when the agent's --recovery-max ran out: the "
                "Service settled at a worse latency than before.",
            ),
            self.alert(
                "TailwatchRolloutDegradedLatency",
                f"max by ({q.by('namespace', 'service', 'impact')}) (\n"
                f"  {indent(increase_with_new_series(episodes, ewin))}\n) > 0",
                "warning",
                f"A rollout degraded the latency of {SERVICE} ({{{{ $labels.impact }}}}).",
                f"In the last {ewin}, a rollout episode of {SERVICE} ended with impact "
                "{{ $labels.impact }}: its p99 during the rollout was well above its baseline. "
                "Check the new revision's startup and warm-up.",
            ),
            # Every agent that reports a Service behind the workload follows its rollout:
            # their max is the workload's, so one stuck rollout is one alert.
            self.alert(
                "TailwatchRolloutStuck",
                f"max by ({q.by('namespace', 'workload_kind', 'workload', 'workload_type')}) "
                f"({q.raw('tailwatch_rollout_stuck')}) == 1",
                "warning",
                f"The rollout of {WORKLOAD} is stuck.",
                f"The rollout of {WORKLOAD} has made no progress (no endpoint of its new "
                "revision became ready, none of the old ones left) for the agents' "
                f"--rollout-stuck and {duration(t.rollout_stuck_for)} more: its new pods do "
                "not become ready, or the old ones do not go.",
                pending=t.rollout_stuck_for,
            ),
        ]
        return {"name": "tailwatch-episodes.alerts", "rules": rules}

    def containers(self) -> Group:
        q, r, c, t = self.q, self.r, self.c, self.c.thresholds
        w = c.windows
        keys = q.by(q.node, "namespace", "pod", "container")
        restarts = q.raw("tailwatch_container_restarts_total")
        oom = q.raw("tailwatch_container_oom_kills_total")
        oom_restarts = q.raw("tailwatch_container_restarts_total", 'reason="OOMKilled"')
        rwin, owin = duration(w.restart_loop), duration(w.oom_kills)
        oom_restarts_increase = indent(increase_with_new_series(oom_restarts, owin))
        probed_pods = f"group by ({q.by('namespace', 'pod')}) ({r.endpoint_pods})"
        degraded_pods = (
            f"group by ({q.by('namespace', 'pod')}) (\n"
            f"  {r.endpoint_pods}\n"
            f"  and on ({q.by('namespace', 'service')})\n"
            f'  ({r.probe_p99_ratio}{{target="service"}} > {_number(t.degraded_p99_ratio)})\n)'
        )
        sidecars = c.dashboards.sidecar_containers
        rules = [
            self.alert(
                "TailwatchContainerRestartLoop",
                f"sum by ({keys}) (\n  {indent(increase_with_new_series(restarts, rwin))}\n)"
                f" >= {t.restart_loop_restarts}",
                "warning",
                f"{CONTAINER} is restarting in a loop.",
                f"The container {CONTAINER} on {{{{ $labels.{q.node} }}}} restarted "
                f'{{{{ $value | printf "%.0f" }}}} times in the last {rwin} (threshold '
                f"{t.restart_loop_restarts}).",
            ),
            self.alert(
                "TailwatchContainerOOMKilled",
                f"sum by ({keys}) (\n  {indent(increase_with_new_series(oom, owin))}\n) > 0\n"
                f"or\nsum by ({keys}) (\n  {oom_restarts_increase}\n) > 0",
                "warning",
                f"A process of {CONTAINER} was OOM-killed.",
                f"The kernel OOM killer killed {{{{ $value }}}} process(es) of {CONTAINER} on "
                f"{{{{ $labels.{q.node} }}}} in the last {owin} (from the cgroup's counter, or "
                "restarts with reason OOMKilled).",
            ),
            self.alert(
                "TailwatchCPUThrottling",
                f"{r.throttled} > {_number(t.throttling_ratio)}\n"
                f"and on ({q.by('namespace', 'pod')})\n{probed_pods}",
                "warning",
                f"{CONTAINER}, behind a probed Service, is CPU-throttled.",
                f"{{{{ $value | humanizePercentage }}}} of the CFS periods of {CONTAINER} were "
                f"throttled over {duration(w.resources)} (threshold "
                f"{_number(t.throttling_ratio * 100)}%). Its pod backs a Service tailwatch "
                "probes, so the throttling shows in that Service's tail latency.",
                pending=t.throttling_for,
            ),
            self.alert(
                "TailwatchSidecarContention",
                f'{r.cpu_share}{{container=~"{sidecars}"}} > {_number(t.sidecar_cpu_share)}\n'
                f"and on ({q.by('namespace', 'pod')})\n{degraded_pods}",
                "warning",
                f"The sidecar {CONTAINER} takes over {_number(t.sidecar_cpu_share * 100)}% of "
                "its pod's CPU while latency is degraded.",
                f"The sidecar container {CONTAINER} used {{{{ $value | humanizePercentage }}}} of "
                f"its pod's CPU over {duration(w.resources)} (threshold "
                f"{_number(t.sidecar_cpu_share * 100)}%) while the p99 of a Service the pod "
                f"backs is above {_number(t.degraded_p99_ratio)}x its baseline.",
                pending=t.sidecar_for,
            ),
        ]
        return {"name": "tailwatch-containers.alerts", "rules": rules}

    def agent(self) -> Group:
        q, t, w = self.q, self.c.thresholds, self.c.windows
        h = q.histograms
        failures = q.raw("tailwatch_probe_failures_total", 'reason!="missed"')
        fwin, lwin = duration(w.probe_failures), duration(w.prober_lag)
        probes = h.count_rate("tailwatch_probe_duration_seconds", fwin)
        lag = h.rate("tailwatch_probe_schedule_lag_seconds", lwin)
        fkeys = q.by("namespace", "service", "target")
        rules = [
            self.alert(
                "TailwatchAgentDown",
                f"{q.raw('up')} == 0",
                "warning",
                f"The tailwatch agent {AGENT} is down.",
                f"Prometheus could not scrape the tailwatch agent {AGENT} (node "
                f"{{{{ $labels.{q.node} }}}}) for {duration(t.agent_down_for)}: the node's "
                "lifecycle events, container pressure and endpoint probes are not seen.",
                pending=t.agent_down_for,
            ),
            self.alert(
                "TailwatchWatchStale",
                f"time() - max by ({q.by(q.node, 'instance', 'resource')}) "
                f"({q.raw('tailwatch_watch_last_event_timestamp_seconds')}) > "
                f"{_number(t.watch_stale_seconds)}",
                "warning",
                f"The {{{{ $labels.resource }}}} watch of {AGENT} is stale.",
                f"The agent {AGENT} has seen no event nor bookmark on its "
                "{{ $labels.resource }} watch for {{ $value | humanizeDuration }} (a healthy "
                "watch sees a bookmark about every minute): its view of the cluster is out "
                "of date.",
                pending=t.watch_stale_for,
            ),
            self.alert(
                "TailwatchProbeFailures",
                f"sum by ({fkeys}) (rate({failures}[{fwin}]))\n/\n"
                f"sum by ({fkeys}) ({probes})\n"
                f"> {_number(t.probe_failure_ratio)}",
                "warning",
                f"Probes of {SERVICE} ({{{{ $labels.target }}}}) are failing.",
                f"{{{{ $value | humanizePercentage }}}} of the probes of the "
                f"{{{{ $labels.target }}}} target of {SERVICE} failed over {fwin} (threshold "
                f"{_number(t.probe_failure_ratio * 100)}%): timeouts, refused or reset "
                "connections, or bad HTTP statuses.",
                pending=t.probe_failures_for,
            ),
            self.alert(
                "TailwatchProberLagging",
                "histogram_quantile(0.99,\n"
                f"  sum by ({h.by(q.node, 'instance')}) ({lag})\n"
                f") > {_number(t.prober_lag_p99_seconds)}",
                "warning",
                f"The prober of {AGENT} starts its probes late.",
                f"The p99 of how late the prober of {AGENT} started its probes is "
                "{{ $value | humanizeDuration }} (threshold "
                f"{_number(t.prober_lag_p99_seconds)}s): the agent is short of CPU, so the "
                "latencies it reports include its own lateness.",
                pending=t.prober_lag_for,
            ),
        ]
        return {"name": "tailwatch-agent.alerts", "rules": rules}


def alert_groups(config: MixinConfig) -> list[Group]:
    a = _Alerts(config)
    return [a.slo(), a.episodes(), a.containers(), a.agent()]
