{{/* Labels of the `helm test` pod. Not the release's selector labels on purpose: app.kubernetes.io/name is
"<name>-test", so no Service, PodDisruptionBudget or NetworkPolicy of the release (the default deny included)
selects it. */}}
{{- define "starling.helmTestLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "starling.helmTestSelectorLabels" . }}
app.kubernetes.io/part-of: starling
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "starling.helmTestSelectorLabels" -}}
app.kubernetes.io/name: {{ include "starling.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end -}}
