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

{{- define "tailwatch.image" -}}
{{- $repository := .Values.image.repository }}
{{- with .Values.image.registry }}
{{- $repository = printf "%s/%s" . $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
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
{{- if and .Values.auth.enabled .Values.serviceMonitor.enabled (eq .Values.serviceMonitor.bearerToken.source "scraper") }}true{{ end }}
{{- end }}

{{- define "tailwatch.scraperName" -}}
{{- printf "%s-scraper" (include "tailwatch.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tailwatch.metricsReaderName" -}}
{{- printf "%s-metrics-reader" (include "tailwatch.fullname" .) }}
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
{{- if and .Values.auth.enabled .Values.serviceMonitor.enabled (eq .Values.serviceMonitor.bearerToken.source "secret") (not .Values.serviceMonitor.bearerToken.secret.name) }}
{{- fail "serviceMonitor.bearerToken.source=secret needs serviceMonitor.bearerToken.secret.name: the Secret holding Prometheus's bearer token" }}
{{- end }}
{{- end }}
