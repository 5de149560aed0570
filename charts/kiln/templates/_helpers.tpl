{{/* Names and labels shared by every template. */}}

{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.fullname" -}}
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

{{- define "kiln.operatorName" -}}
{{- printf "%s-operator" (include "kiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: kiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiln.operatorSelectorLabels" -}}
app.kubernetes.io/name: kiln-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The labels the operator puts on every kiln-agent pod it creates (the contract the PodMonitor, the
NetworkPolicy and the dashboard rely on): app.kubernetes.io/name=kiln-agent, and
kiln.dev/inference-service=<InferenceService name>; the API/metrics container port is named "http".
*/}}
{{- define "kiln.agentSelectorLabels" -}}
app.kubernetes.io/name: kiln-agent
{{- end -}}

{{- define "kiln.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/* True (non-empty) when the prometheus-operator kinds should be rendered. */}}
{{- define "kiln.monitoringApi" -}}
{{- if or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}


{{- define "kiln.operatorLabels" -}}
{{ include "kiln.labels" . }}
app.kubernetes.io/name: kiln-operator
{{- end -}}

{{- define "kiln.agentImage" -}}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) -}}
{{- end -}}
