{{/* Names and labels shared by the chart's objects. */}}
{{- define "triton-maskrcnn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "triton-maskrcnn.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "triton-maskrcnn.labels" -}}
{{ include "triton-maskrcnn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Where tritonserver reads the repository: the volume's mount, or the object store. */}}
{{- define "triton-maskrcnn.repositoryPath" -}}
{{- if eq .Values.modelRepository.source "uri" -}}
{{- required "modelRepository.uri is required when modelRepository.source is uri" .Values.modelRepository.uri -}}
{{- else -}}
/models
{{- end -}}
{{- end -}}
