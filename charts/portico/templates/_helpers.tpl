{{/* Names and labels shared by the templates. */}}

{{- define "portico.controller" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portico.dataplaneRole" -}}
{{- printf "%s-dataplane" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portico.secretReaderRole" -}}
{{- printf "%s-secret-reader" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Where every Gateway's dataplane is provisioned. */}}
{{- define "portico.dataplaneNamespace" -}}
{{- default .Release.Namespace .Values.dataplane.namespace -}}
{{- end -}}

{{- define "portico.labels" -}}
app.kubernetes.io/name: portico
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "portico.selector" -}}
app.kubernetes.io/name: portico
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "portico.controllerImage" -}}
{{- printf "%s:%s" .Values.image.controller.repository (default .Chart.AppVersion .Values.image.controller.tag) -}}
{{- end -}}

{{- define "portico.dataplaneImage" -}}
{{- printf "%s:%s" .Values.image.dataplane.repository (default .Chart.AppVersion .Values.image.dataplane.tag) -}}
{{- end -}}
