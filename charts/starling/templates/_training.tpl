{{/*
Pod template of the offline pipeline, shared by the install Job and the retraining CronJob.
The steps run in order as initContainers (a failing step stops the chain and fails the pod); the main
container evaluates the published model. Every step is idempotent, so a retried pod starts over safely.
`starling train` publishes `models/current` only when the quality gate passes (non-zero exit otherwise).
Usage: include "starling.trainingPod" (dict "root" $ "ingest" true ["sparkRun" NAME] ["skipTrain" true])
*/}}
{{- define "starling.trainingPod" -}}
{{- $root := .root -}}
{{- $workdir := $root.Values.workdir -}}
{{- $image := include "starling.image" $root.Values.image.ranker -}}
{{- $steps := list -}}
{{- if .ingest -}}
{{- $steps = append $steps (list "ingest" (list "data" "ingest" $root.Values.training.source "--out" $workdir "--on-bad" $root.Values.training.onBad)) -}}
{{- end -}}
{{- if .sparkRun -}}
{{- /* features.engine: spark: the chart's SparkApplication .sparkRun builds; this step asks it and waits */ -}}
{{- $steps = append $steps (list "features-build" (list "features" "build" $workdir "--engine" "spark" "--spark-application" .sparkRun "--wait-timeout" (toString $root.Values.features.spark.waitTimeoutSeconds))) -}}
{{- else -}}
{{- $steps = append $steps (list "features-build" (list "features" "build" $workdir)) -}}
{{- end -}}
{{- $steps = append $steps (list "features-materialize" (list "features" "materialize" $workdir)) -}}
{{- if not .skipTrain -}}
{{- $steps = append $steps (list "train" (list "train" $workdir "--model" $root.Values.training.model)) -}}
{{- end -}}
{{- /* the last container: evaluate the published model; without the train step (the PyTorchJob trains),
the last step itself */ -}}
{{- $last := list "evaluate" (list "evaluate" $workdir "--json") -}}
{{- if .skipTrain -}}
{{- $last = last $steps -}}
{{- $steps = initial $steps -}}
{{- end -}}
metadata:
  labels:
    {{- include "starling.labels" (dict "root" $root "component" "training") | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "starling.serviceAccountName" $root }}
  automountServiceAccountToken: false
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- include "starling.podSecurityContext" $root | nindent 4 }}
  initContainers:
    {{- range $step := $steps }}
    - name: {{ index $step 0 }}
      {{- include "starling.trainingContainer" (dict "root" $root "image" $image "args" (index $step 1)) | nindent 6 }}
    {{- end }}
  containers:
    - name: {{ index $last 0 }}
      {{- include "starling.trainingContainer" (dict "root" $root "image" $image "args" (index $last 1)) | nindent 6 }}
  volumes:
    {{- include "starling.volumes" $root | nindent 4 }}
  {{- with $root.Values.training.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.training.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{- define "starling.trainingContainer" -}}
{{- $root := .root -}}
image: {{ .image }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
command: ["python", "-m", "starling.cli"]
args:
  {{- range .args }}
  - {{ . | quote }}
  {{- end }}
envFrom:
  - configMapRef:
      name: {{ include "starling.fullname" $root }}-config
env:
  {{- include "starling.env" $root | nindent 2 }}
  - name: STARLING_DATASETS_DIR
    value: {{ printf "%s/datasets" $root.Values.workdir | quote }}
resources:
  {{- toYaml $root.Values.training.resources | nindent 2 }}
securityContext:
  {{- include "starling.containerSecurityContext" $root | nindent 2 }}
volumeMounts:
  {{- include "starling.volumeMounts" (dict "root" $root "readOnly" false) | nindent 2 }}
{{- end -}}
