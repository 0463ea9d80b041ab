{{/* ---- Names and labels ---------------------------------------------------------------- */}}

{{- define "escalon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "escalon.fullname" -}}
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

{{- define "escalon.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "escalon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: escalon
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "router"). */}}
{{- define "escalon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "escalon.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "escalon.componentLabels" -}}
{{ include "escalon.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "escalon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "escalon.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "escalon.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "escalon.promoteServiceAccountName" -}}
{{- printf "%s-promote" (include "escalon.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The promote job's settings on the distill workers: where promotion applies a winner in the cluster. */}}
{{- define "escalon.promoteEnv" -}}
{{- if .Values.promotion.cluster.enabled }}
- name: ESCALON_PROMOTE_CLUSTER
  value: "on"
- name: ESCALON_PROMOTE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: ESCALON_PROMOTE_CONFIGMAP
  value: {{ printf "%s-catalogue" (include "escalon.fullname" .) | quote }}
{{- if include "escalon.localTiers" . | fromYaml }}
- name: ESCALON_PROMOTE_RAYSERVICE
  value: {{ include "escalon.rayServiceName" . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "escalon.rayServiceName" -}}
{{- printf "%s-tiers" (include "escalon.fullname" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* ---- The services this chart runs ---------------------------------------------------- */}}

{{/*
Enabled components as YAML: each one's values plus the facts that are contracts, not settings
(entry point, probe kind, settings prefix). deployments/services/hpas/pdbs all range over this,
so a component is described once.
*/}}
{{- define "escalon.components" -}}
{{- $v := .Values -}}
{{- $all := dict
  "router"  (dict "on" $v.router.enabled "values" $v.router "args" (list "-m" "escalon.router") "probe" "grpc" "envPrefix" "ESCALON_ROUTER_" "public" true)
  "judge"   (dict "on" $v.judge.enabled "values" $v.judge "args" (list "-m" "escalon.judge") "probe" "grpc" "envPrefix" "ESCALON_JUDGE_" "public" false)
  "serving" (dict "on" $v.serving.enabled "values" $v.serving "args" (list "-m" "escalon.serving") "probe" "grpc" "envPrefix" "ESCALON_SERVING_" "public" false)
  "distill" (dict "on" $v.distill.enabled "values" $v.distill.front "args" (list "-m" "escalon.distill") "probe" "grpc" "envPrefix" "ESCALON_DISTILL_" "public" false)
  "gateway" (dict "on" $v.gateway.enabled "values" $v.gateway "args" (list "-m" "escalon.gateway") "probe" "http" "envPrefix" "ESCALON_GATEWAY_" "public" true)
-}}
{{- $on := dict -}}
{{- range $name, $c := $all -}}
{{- if $c.on -}}{{- $_ := set $on $name (omit $c "on") -}}{{- end -}}
{{- end -}}
{{- toYaml $on -}}
{{- end -}}

{{- define "escalon.address" -}}
{{- printf "%s-%s:%v" (include "escalon.fullname" .root) .component (index .root.Values .component).port -}}
{{- end -}}

{{/* Tiers that are not switched off (enabled defaults to true), as YAML. */}}
{{- define "escalon.tiers" -}}
{{- $on := dict -}}
{{- range $name, $tier := .Values.tiers -}}
{{- if dig "enabled" true $tier -}}{{- $_ := set $on $name $tier -}}{{- end -}}
{{- end -}}
{{- toYaml $on -}}
{{- end -}}

{{/* Enabled tiers that run a model in the RayService (backend local-gguf or hf), as YAML. */}}
{{- define "escalon.localTiers" -}}
{{- $local := dict -}}
{{- range $name, $tier := include "escalon.tiers" . | fromYaml -}}
{{- if has $tier.backend (list "local-gguf" "hf") -}}
{{- $_ := set $local $name $tier -}}
{{- end -}}
{{- end -}}
{{- toYaml $local -}}
{{- end -}}

{{/* ---- The rung catalogue (the ConfigMap's catalogue.yaml) ------------------------------ */}}

{{/* One catalogue entry; call with (dict "name" $name "tier" $tier). */}}
{{- define "escalon.rung" -}}
{{- $t := .tier -}}
name: {{ .name }}
family: {{ $t.family | quote }}
backend: {{ $t.backend }}
model: {{ $t.model | quote }}
prompt_format: {{ $t.promptFormat | default "chat" }}
{{- with $t.price }}
price: {input_per_1m: {{ .inputPer1M }}, output_per_1m: {{ .outputPer1M }}}
{{- end }}
context_limit: {{ int $t.contextLimit }}
{{- with $t.baseUrl }}
base_url: {{ . | quote }}
{{- end }}
{{- with $t.apiKeyEnv }}
api_key_env: {{ . }}
{{- end }}
{{- with $t.benchmark }}
benchmark: {{ . | quote }}
{{- end }}
{{- with $t.maxTokens }}
max_tokens: {{ int . }}
{{- end }}
{{- with $t.timeoutSeconds }}
timeout_s: {{ . }}
{{- end }}
{{- with $t.connectTimeoutSeconds }}
connect_timeout_s: {{ . }}
{{- end }}
{{- with $t.firstTokenTimeoutSeconds }}
first_token_timeout_s: {{ . }}
{{- end }}
{{- with $t.retries }}
{{- $r := dict }}
{{- range $key, $field := dict "attempts" "attempts" "initialBackoffSeconds" "initial_backoff_s" "maxBackoffSeconds" "max_backoff_s" "maxRetryAfterSeconds" "max_retry_after_s" }}
{{- if hasKey $.tier.retries $key }}{{- $_ := set $r $field (index $.tier.retries $key) }}{{- end }}
{{- end }}
retries: {{ toJson $r }}
{{- end }}
{{- with $t.circuit }}
{{- $c := dict }}
{{- range $key, $field := dict "failures" "failures" "cooldownSeconds" "cooldown_s" "maxCooldownSeconds" "max_cooldown_s" "slowCallSeconds" "slow_call_s" }}
{{- if hasKey $.tier.circuit $key }}{{- $_ := set $c $field (index $.tier.circuit $key) }}{{- end }}
{{- end }}
circuit: {{ toJson $c }}
{{- end }}
{{- if has $t.backend (list "local-gguf" "hf") }}
autoscaling: {min_replicas: {{ int $t.autoscaling.minReplicas }}, max_replicas: {{ int $t.autoscaling.maxReplicas }}, target_ongoing_requests: {{ $t.autoscaling.targetOngoingRequests }}}
resources: {num_cpus: {{ $t.resources.cpus }}, num_gpus: {{ $t.resources.gpus | default 0 }}}
{{- end }}
{{- end -}}

{{- define "escalon.catalogue" -}}
# Rendered by the escalon chart from .Values.tiers; edit the values, not this file.
rungs:
{{- range $name, $tier := include "escalon.tiers" . | fromYaml }}
  - {{ include "escalon.rung" (dict "name" $name "tier" $tier) | indent 4 | trim }}
{{- end }}
{{- end -}}

{{/* Pods that read the catalogue carry its hash, so a catalogue change rolls them. */}}
{{- define "escalon.catalogueChecksum" -}}
checksum/catalogue: {{ include "escalon.catalogue" . | sha256sum }}
{{- end -}}

{{/* ---- Pieces shared by every Escalon pod ---------------------------------------------- */}}

{{- define "escalon.commonEnv" -}}
- name: ESCALON_CATALOGUE
  value: /etc/escalon/catalogue.yaml
- name: ESCALON_DATA_DIR
  value: /var/lib/escalon
- name: ESCALON_GRACE_SECONDS
  value: {{ .root.Values.graceSeconds | quote }}
- name: OTEL_SERVICE_NAME
  value: escalon-{{ .component }}
{{- with .root.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- include "escalon.tenancyEnv" .root }}
{{- if .root.Values.promotion.cluster.enabled }}
# Promoted rungs: the catalogue ConfigMap's key that the promote job applies; re-read when the kubelet updates it.
- name: ESCALON_PROMOTED_CATALOGUE
  value: /etc/escalon/catalogue.promoted.yaml
{{- end }}
# The root filesystem is read-only: caches go to the writable volumes.
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /var/lib/escalon/huggingface
{{- end -}}

{{/* API keys of the enabled remote tiers, each from the provider Secret (deduplicated). */}}
{{- define "escalon.providerKeyEnv" -}}
{{- $keys := dict -}}
{{- range $name, $tier := include "escalon.tiers" . | fromYaml -}}
{{- if $tier.apiKeyEnv -}}{{- $_ := set $keys $tier.apiKeyEnv true -}}{{- end -}}
{{- end -}}
{{- range $key, $_ := $keys }}
- name: {{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.providerKeys.existingSecret }}
      key: {{ $key }}
{{- end }}
{{- end -}}

{{/*
An environment variable from a URL setting {url, existingSecret, existingSecretKey}, or from
a fallback value; call with (dict "env" NAME "setting" $setting "fallback" "..." ).
*/}}
{{- define "escalon.urlEnv" -}}
{{- if .setting.existingSecret }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .setting.existingSecret }}
      key: {{ .setting.existingSecretKey | default "url" }}
{{- else if .setting.url }}
- name: {{ .env }}
  value: {{ .setting.url | quote }}
{{- else if .fallback }}
- name: {{ .env }}
  value: {{ .fallback | quote }}
{{- end }}
{{- end -}}

{{/* Escalon's database (route log, tenants, keys), the profile, auth and shared rate limits. */}}
{{- define "escalon.tenancyEnv" -}}
{{- if or .Values.database.existingSecret .Values.database.url }}
{{- include "escalon.urlEnv" (dict "env" "ESCALON_DATABASE_URL" "setting" .Values.database) }}
{{- else if .Values.postgresql.enabled }}
{{- $pg := .Values.postgresql }}
- name: ESCALON_PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.auth.existingSecret | default (printf "%s-postgresql" .Release.Name) }}
      key: password
- name: ESCALON_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(ESCALON_PGPASSWORD)@%s-postgresql:5432/%s" $pg.auth.username .Release.Name $pg.auth.database | quote }}
{{- end }}
- name: ESCALON_PROFILE
  value: {{ .Values.profile | quote }}
- name: ESCALON_AUTH
  value: {{ .Values.auth | quote }}
- name: ESCALON_ROUTE_LOG
  value: {{ .Values.routeLog.enabled | quote }}
- name: ESCALON_ROUTE_LOG_PROMPTS
  value: {{ .Values.routeLog.storePrompts | quote }}
- name: ESCALON_ROUTE_LOG_RETENTION_DAYS
  value: {{ .Values.routeLog.retentionDays | quote }}
{{- include "escalon.urlEnv" (dict "env" "ESCALON_REDIS_URL" "setting" .Values.rateLimits "fallback" (ternary (printf "redis://%s-redis:6379/2" .Release.Name) "" .Values.redis.enabled)) }}
# the operator's page reads every replica's routes from the route log (gateway only)
- name: ESCALON_GATEWAY_TRAFFIC_SOURCE
  value: route_log
{{- end -}}

{{/* Broker, result backend and database for the distill front and workers. */}}
{{- define "escalon.distillEnv" -}}
{{- $d := .Values.distill -}}
{{- $redis := printf "redis://%s-redis:6379" .Release.Name -}}
{{- include "escalon.urlEnv" (dict "env" "ESCALON_DISTILL_BROKER_URL" "setting" $d.broker "fallback" (ternary (printf "%s/0" $redis) "" .Values.redis.enabled)) }}
{{- include "escalon.urlEnv" (dict "env" "ESCALON_DISTILL_RESULT_BACKEND" "setting" $d.resultBackend "fallback" (ternary (printf "%s/1" $redis) "" .Values.redis.enabled)) }}
{{- if or $d.database.existingSecret $d.database.url }}
{{- include "escalon.urlEnv" (dict "env" "ESCALON_DISTILL_DATABASE_URL" "setting" $d.database) }}
{{- else if .Values.postgresql.enabled }}
{{- $pg := .Values.postgresql }}
# libpq reads PGPASSWORD too; the URL refers to it with Kubernetes' $(VAR) expansion.
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.auth.existingSecret | default (printf "%s-postgresql" .Release.Name) }}
      key: password
- name: ESCALON_DISTILL_DATABASE_URL
  value: {{ printf "postgresql+psycopg://%s:$(PGPASSWORD)@%s-postgresql:5432/%s" $pg.auth.username .Release.Name $pg.auth.database | quote }}
{{- end }}
{{- end -}}

{{- define "escalon.volumeMounts" -}}
- name: catalogue
  mountPath: /etc/escalon
  readOnly: true
- name: data
  mountPath: /var/lib/escalon
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
The catalogue is mounted as a directory (not subPath) so running pods see updates too. The data
dir is scratch space, except for the distill front and workers (call with "shared" true): they
share job artefacts and benchmark files through one claim when distill.sharedData is enabled.
*/}}
{{- define "escalon.volumes" -}}
{{- $shared := and .shared .root.Values.distill.sharedData.enabled -}}
- name: catalogue
  configMap:
    name: {{ include "escalon.fullname" .root }}-catalogue
- name: data
{{- if $shared }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.distill.sharedData.existingClaim | default (printf "%s-distill-data" (include "escalon.fullname" .root)) }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "escalon.podSpecCommon" -}}
serviceAccountName: {{ include "escalon.serviceAccountName" . }}
# No Escalon process talks to the Kubernetes API.
automountServiceAccountToken: false
{{ include "escalon.podSecurity" . | trim }}
{{- end -}}

{{- define "escalon.podSecurity" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* The Ray head's own account: KubeRay binds the autoscaler's Role to it, and to nothing else. */}}
{{- define "escalon.rayHeadServiceAccountName" -}}
{{- printf "%s-ray-head" (include "escalon.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Soft spread over nodes, so one node's loss takes at most a share of a component. */}}
{{- define "escalon.spread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "escalon.selectorLabels" . | nindent 8 }}
{{- end -}}
