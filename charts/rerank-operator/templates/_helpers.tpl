{{/* Chart name, at most 63 characters. */}}
{{- define "rerank-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects, at most 63 characters. */}}
{{- define "rerank-operator.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "rerank-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "rerank-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the operator pod. */}}
{{- define "rerank-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rerank-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "rerank-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rerank-operator.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the cluster-wide discovery role: the full name shortened so the suffix fits in 63 characters. */}}
{{- define "rerank-operator.discoveryName" -}}
{{- printf "%s-discovery" (include "rerank-operator.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* Selector labels of the operator pod as k=v,k=v (how the operator names its own pods to NetworkPolicies). */}}
{{- define "rerank-operator.selectorLabelList" -}}
{{- $labels := include "rerank-operator.selectorLabels" . | fromYaml }}
{{- $pairs := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $pairs = append $pairs (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
