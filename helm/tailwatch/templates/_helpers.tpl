{{/* Names, labels and the image reference shared by every template. */}}

{{- define "tailwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<name>", or the release name alone when it already contains the name. */}}
{{- define "tailwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tailwatch.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the agent's pods: never change them, selectors are immutable.
     The component keeps pods of this release that are not agents (the helm test pod) out. */}}
{{- define "tailwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The agent's --peer-selector unless config.peer-selector is set: exactly the selector
     labels above, so that only this release's agents share the probing of Service addresses
     (not the helm test pod, not another release's agents). */}}
{{- define "tailwatch.peerSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" (include "tailwatch.name" .) .Release.Name }}
{{- end }}

{{/* The labels of every object: the app.kubernetes.io/* set with the given component, over
     `extra` (an object's own labels from values), over commonLabels. Ours always win, so
     no value can produce a duplicate key or break a selector.
     Call with (dict "ctx" $ "component" "agent" "extra" $labels). */}}
{{- define "tailwatch.labelsFor" -}}
{{- $ctx := .ctx }}
{{- $labels := dict
      "helm.sh/chart" (include "tailwatch.chart" $ctx)
      "app.kubernetes.io/name" (include "tailwatch.name" $ctx)
      "app.kubernetes.io/instance" $ctx.Release.Name
      "app.kubernetes.io/version" $ctx.Chart.AppVersion
      "app.kubernetes.io/part-of" "tailwatch"
      "app.kubernetes.io/managed-by" $ctx.Release.Service
      "app.kubernetes.io/component" .component }}
{{- toYaml (merge $labels (.extra | default dict) ($ctx.Values.commonLabels | default dict)) }}
{{- end }}

{{- define "tailwatch.labels" -}}
{{ include "tailwatch.labelsFor" (dict "ctx" . "component" "agent") }}
{{- end }}

{{- define "tailwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tailwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* global.imageRegistry wins over image.registry, as in prometheus-community's charts. */}}
{{- define "tailwatch.image" -}}
{{- $repository := .Values.image.repository }}
{{- with (.Values.global).imageRegistry | default .Values.image.registry }}
{{- $repository = printf "%s/%s" . $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets then global.imagePullSecrets, each a name or a {name: ...} object, as
     a list of {name: ...} without repeats (YAML; empty when there are none). */}}
{{- define "tailwatch.imagePullSecrets" -}}
{{- $names := list }}
{{- range concat (.Values.imagePullSecrets | default list) ((.Values.global).imagePullSecrets | default list) }}
{{- if kindIs "string" . }}
{{- $names = append $names . }}
{{- else }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- range $name := uniq $names }}
- name: {{ $name }}
{{- end }}
{{- end }}

{{/* The `job` of the agents' series: the value the monitor's jobLabel label carries, and the
     matcher of every rule and dashboard the chart installs. Never derived from the release
     or chart name, so renaming either breaks no rule. */}}
{{- define "tailwatch.job" -}}
{{- .Values.prometheus.job }}
{{- end }}

{{/* The generated rules and dashboards select job="tailwatch" (the mixin's default job
     selector); the chart rewrites that matcher to prometheus.job in the text it installs,
     in both of the spellings the files use (YAML, and JSON with escaped quotes).
     Call with (dict "ctx" $ "text" $content). */}}
{{- define "tailwatch.withJob" -}}
{{- $job := include "tailwatch.job" .ctx }}
{{- .text | replace "job=\"tailwatch\"" (printf "job=\"%s\"" $job) | replace "job=\\\"tailwatch\\\"" (printf "job=\\\"%s\\\"" $job) }}
{{- end }}

{{/* The label named by jobLabel with the job as its value, for the Service
     (serviceMonitor.jobLabel) or the agent pods (podMonitor.jobLabel). */}}
{{- define "tailwatch.jobLabels" -}}
{{- toYaml (dict .jobLabel (include "tailwatch.job" .ctx)) }}
{{- end }}

{{/* The address the OTLP receiver binds (--otlp-listen); empty when it is off. */}}
{{- define "tailwatch.otlpListen" -}}
{{- if .Values.otlp.enabled }}
{{- if .Values.otlp.listenAddress }}
{{- .Values.otlp.listenAddress }}
{{- else if .Values.hostNetwork }}
{{- /* In the node's network namespace, bind the node's own address only
       (docs/design.md, Security posture). */}}
{{- printf "$(HOST_IP):%d" (int .Values.otlp.port) }}
{{- else }}
{{- /* In the pod's own network namespace the node address does not exist: binding it would
       fail. hostPort and the Service deliver to the pod address. */}}
{{- printf ":%d" (int .Values.otlp.port) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tailwatch.configPath" -}}
/etc/tailwatch/config.yaml
{{- end }}

{{/* The Secret holding the agents' certificate: tls.existingSecret, or the one cert-manager
     writes for the chart's Certificate; empty when the agents serve plain HTTP. */}}
{{- define "tailwatch.tlsSecretName" -}}
{{- if .Values.tls.existingSecret }}
{{- .Values.tls.existingSecret }}
{{- else if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "tailwatch.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where that Secret is mounted: a directory (no subPath), so the kubelet's updates of a
     renewed certificate reach the agent, which re-reads the files when they change. */}}
{{- define "tailwatch.tlsMountPath" -}}
/var/run/secrets/tailwatch/tls
{{- end }}

{{/* The name the agents' certificate is verified against: the Service's. Prometheus scrapes
     pod IPs, which no certificate names, so its tlsConfig sets this as serverName. */}}
{{- define "tailwatch.serviceDnsName" -}}
{{- printf "%s.%s.svc" (include "tailwatch.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The scraper ServiceAccount (serviceMonitor.bearerToken.source=scraper), and its token
     Secret: rendered only when the ServiceMonitor presents a token, i.e. with auth on. */}}
{{- define "tailwatch.scraperEnabled" -}}
{{- $monitor := include "tailwatch.monitor" . }}
{{- if and .Values.auth.enabled $monitor (eq (get .Values $monitor).bearerToken.source "scraper") }}true{{ end }}
{{- end }}

{{/* The values key of the prometheus-operator monitor the chart renders: serviceMonitor,
     podMonitor, or empty for none. */}}
{{- define "tailwatch.monitor" -}}
{{- if .Values.serviceMonitor.enabled }}serviceMonitor{{ else if .Values.podMonitor.enabled }}podMonitor{{ end }}
{{- end }}

{{/* The one scrape endpoint of the ServiceMonitor or PodMonitor (without its port), from
     that monitor's values: scheme and TLS, the token with auth, honorLabels, intervals and
     relabelings. Call with (dict "ctx" $ "m" $values "kind" "ServiceMonitor"). */}}
{{- define "tailwatch.scrapeEndpoint" -}}
{{- $ctx := .ctx }}
{{- $m := .m }}
{{- $tlsSecret := include "tailwatch.tlsSecretName" $ctx }}
{{- $scheme := $m.scheme | default (ternary "https" "http" (ne $tlsSecret "")) }}
path: /metrics
scheme: {{ $scheme }}
{{- if eq $scheme "https" }}
{{- if $m.tlsConfig }}
tlsConfig:
  {{- toYaml $m.tlsConfig | nindent 2 }}
{{- else if $tlsSecret }}
tlsConfig:
  # The CA that signed the agents' certificate (cert-manager writes it next to the
  # certificate) and the name the certificate carries: Prometheus dials pod IPs, so
  # it verifies against the Service's name instead of skipping verification.
  ca:
    secret:
      name: {{ $tlsSecret }}
      key: ca.crt
  serverName: {{ include "tailwatch.serviceDnsName" $ctx }}
{{- end }}
{{- end }}
{{- if $ctx.Values.auth.enabled }}
{{- $token := $m.bearerToken }}
{{- if eq $token.source "prometheusServiceAccount" }}
# Prometheus's own ServiceAccount token, re-read as the kubelet rotates it.
bearerTokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token
{{- else }}
authorization:
  type: Bearer
  credentials:
    {{- if eq $token.source "scraper" }}
    name: {{ include "tailwatch.scraperName" $ctx }}-token
    key: token
    {{- else }}
    name: {{ $token.secret.name }}
    key: {{ $token.secret.key }}
    {{- end }}
{{- end }}
{{- end }}
# The agent's namespace/pod/container/service labels are those of the workloads it
# watches: keep them, instead of Prometheus renaming them exported_*.
honorLabels: true
interval: {{ $m.interval }}
scrapeTimeout: {{ $m.scrapeTimeout }}
relabelings:
  # Each agent speaks for one node: name it, as the rules and dashboards expect.
  - action: replace
    sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
  {{- with $m.relabelings }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The monitor's spec-level limits and copied labels, each only when set. */}}
{{- define "tailwatch.monitorLimits" -}}
{{- range $key := list "targetLabels" "podTargetLabels" "sampleLimit" "targetLimit" "labelLimit" "labelNameLengthLimit" "labelValueLengthLimit" }}
{{- with get $.m $key }}
{{ $key }}: {{ toJson . }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tailwatch.scraperName" -}}
{{- printf "%s-scraper" (include "tailwatch.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tailwatch.metricsReaderName" -}}
{{- printf "%s-metrics-reader" (include "tailwatch.fullname" .) }}
{{- end }}

{{/* The DaemonSet's updateStrategy: the `updateStrategy` object as given, with the older
     updateStrategy.maxUnavailable moved into rollingUpdate, a maxSurge of 0 left out (the
     API's default) and no rollingUpdate for OnDelete. */}}
{{- define "tailwatch.updateStrategy" -}}
{{- $given := .Values.updateStrategy }}
{{- $type := $given.type | default "RollingUpdate" }}
{{- $strategy := dict "type" $type }}
{{- if eq $type "RollingUpdate" }}
{{- $rolling := deepCopy ($given.rollingUpdate | default dict) }}
{{- if hasKey $given "maxUnavailable" }}
{{- $_ := set $rolling "maxUnavailable" $given.maxUnavailable }}
{{- end }}
{{- if eq (toString (get $rolling "maxSurge" | default 0)) "0" }}
{{- $_ := unset $rolling "maxSurge" }}
{{- end }}
{{- $_ := set $strategy "rollingUpdate" $rolling }}
{{- end }}
{{- /* type first, as the API server writes it back. */}}
type: {{ $type }}
{{- with $strategy.rollingUpdate }}
rollingUpdate:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Combinations of values the schema cannot refuse, refused with what to set instead. */}}
{{- define "tailwatch.validate" -}}
{{- if and .Values.otlp.enabled (eq (int .Values.metrics.port) (int .Values.otlp.port)) }}
{{- fail (printf "metrics.port and otlp.port are both %d: the agent needs two ports" (int .Values.metrics.port)) }}
{{- end }}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled }}
{{- fail "tls.existingSecret and tls.certManager.enabled are two sources for one certificate: set only one" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name: the Issuer or ClusterIssuer (issuerRef.kind) that signs the agents' certificate" }}
{{- end }}
{{- if and .Values.auth.enabled (not (include "tailwatch.tlsSecretName" .)) }}
{{- fail "auth.enabled needs a certificate: the agent accepts bearer tokens over TLS only. Set tls.existingSecret (a kubernetes.io/tls Secret naming <fullname>.<namespace>.svc) or tls.certManager.enabled=true with tls.certManager.issuerRef.name" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled would scrape every agent twice: set only one" }}
{{- end }}
{{- range $key := list "serviceMonitor" "podMonitor" }}
{{- $m := get $.Values $key }}
{{- if and $.Values.auth.enabled $m.enabled (eq $m.bearerToken.source "secret") (not $m.bearerToken.secret.name) }}
{{- fail (printf "%s.bearerToken.source=secret needs %s.bearerToken.secret.name: the Secret holding Prometheus's bearer token" $key $key) }}
{{- end }}
{{- if and $m.enabled $m.namespace (ne $m.namespace $.Release.Namespace) }}
{{- $chartTls := and (include "tailwatch.tlsSecretName" $) (not $m.tlsConfig) (ne $m.scheme "http") }}
{{- $scraper := and $.Values.auth.enabled (eq $m.bearerToken.source "scraper") }}
{{- if or $chartTls $scraper }}
{{- fail (printf "%s.namespace=%s: Prometheus reads the Secrets a monitor names from the monitor's namespace, and the chart's certificate and scraper token are in %s. Keep the release namespace, or set %s.tlsConfig and %s.bearerToken.source=secret with Secrets in %s" $key $m.namespace $.Release.Namespace $key $key $m.namespace) }}
{{- end }}
{{- end }}
{{- /* A jobLabel the chart already sets for its own purpose keeps the chart's value. */}}
{{- $own := fromYaml (include "tailwatch.labelsFor" (dict "ctx" $ "component" "agent")) }}
{{- if and (hasKey $own $m.jobLabel) (ne (get $own $m.jobLabel) (include "tailwatch.job" $)) }}
{{- fail (printf "%s.jobLabel=%s gives job=%q, but the rules and dashboards select job=%q (prometheus.job): leave %s.jobLabel at tailwatch.io/job, or set prometheus.job=%s" $key $m.jobLabel (get $own $m.jobLabel) (include "tailwatch.job" $) $key (get $own $m.jobLabel)) }}
{{- end }}
{{- end }}
{{- if and .Values.podMonitor.enabled .Values.auth.enabled (eq .Values.podMonitor.bearerToken.source "prometheusServiceAccount") }}
{{- fail "podMonitor.bearerToken.source=prometheusServiceAccount: a PodMonitor has no bearerTokenFile. Use scraper or secret" }}
{{- end }}
{{- $strategy := include "tailwatch.updateStrategy" . | fromYaml }}
{{- with $strategy.rollingUpdate }}
{{- /* The API server takes exactly one of the two non-zero. */}}
{{- $unavailable := ne (toString (.maxUnavailable | default 0) | trimSuffix "%") "0" }}
{{- $surge := ne (toString (.maxSurge | default 0) | trimSuffix "%") "0" }}
{{- if and $unavailable $surge }}
{{- fail "updateStrategy.rollingUpdate: with maxSurge set maxUnavailable to 0 (the API server takes one of the two)" }}
{{- end }}
{{- if not (or $unavailable $surge) }}
{{- fail "updateStrategy.rollingUpdate: maxUnavailable and maxSurge are both 0, so no agent could ever be replaced" }}
{{- end }}
{{- if and $surge (or $.Values.hostNetwork (and $.Values.otlp.enabled $.Values.otlp.hostPort.enabled)) }}
{{- fail "updateStrategy.rollingUpdate.maxSurge with hostNetwork or otlp.hostPort: the new agent could not bind the ports the old one holds on its node. Use maxUnavailable" }}
{{- end }}
{{- end }}
{{- end }}
