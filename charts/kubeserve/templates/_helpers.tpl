{{/* The release's name for its objects, at most 63 characters (a label value). */}}
{{- define "kubeserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubeserve.selectorLabels" -}}
app.kubernetes.io/name: kubeserve-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubeserve.labels" -}}
{{ include "kubeserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeserve
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kubeserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubeserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces a namespaced operator watches, as a JSON list (the release's namespace by default). */}}
{{- define "kubeserve.watchedNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The prometheus-adapter rule that serves the Pods metric kubeserve_queue_delay_microseconds (the operator's HPA reads
it by that name): per pod, the mean queue delay of the requests in the last window, rate(_sum) / rate(_count), in
microseconds. An idle pod (no request in the window) reads 0, never NaN: clamp_min keeps the divisor above 0, so the
idle pod pulls the average down instead of dropping out of it. A pod with fewer than two scrapes in the window has
no value (the HPA counts it as missing). Microseconds, because the HPA reads a Pods metric as whole milli-units,
rounding up: in seconds that would be 1 ms resolution.
*/}}
{{/* As one item of a rules list. */}}
{{- define "kubeserve.queueDelayRule" -}}
{{- $window := .Values.monitoring.adapterRule.window -}}
- seriesQuery: '{__name__="kubeserve_queue_delay_seconds_count",namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name:
    matches: ^kubeserve_queue_delay_seconds_count$
    as: kubeserve_queue_delay_microseconds
  metricsQuery: >-
    1000000 * sum(rate(kubeserve_queue_delay_seconds_sum{<<.LabelMatchers>>}[{{ $window }}])) by (<<.GroupBy>>)
    / clamp_min(sum(rate(<<.Series>>{<<.LabelMatchers>>}[{{ $window }}])) by (<<.GroupBy>>), 1e-9)
{{- end -}}
