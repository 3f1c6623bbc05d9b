{{/* Chart name, or nameOverride. */}}
{{- define "y-redis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object of this chart. */}}
{{- define "y-redis.fullname" -}}
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

{{- define "y-redis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "y-redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "y-redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "y-redis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "y-redis.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "y-redis.configName" -}}
{{ include "y-redis.fullname" . }}-config
{{- end }}

{{- define "y-redis.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "y-redis.fullname" . }}-secrets
{{- end }}
{{- end }}

{{- define "y-redis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "y-redis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The storage y-redis will use: s3, postgres or filesystem (y-redis picks S3
when S3_ENDPOINT is set, else Postgres when POSTGRES is set, else the
filesystem), or "none" when nothing shared is configured.
*/}}
{{- define "y-redis.storage" -}}
{{- if .Values.storage.type }}
{{- .Values.storage.type }}
{{- else if .Values.config.S3_ENDPOINT }}
{{- "s3" }}
{{- else if .Values.secrets.POSTGRES }}
{{- "postgres" }}
{{- else if .Values.persistence.enabled }}
{{- "filesystem" }}
{{- else }}
{{- "none" }}
{{- end }}
{{- end }}

{{/* The permission callback: the configured one, or the example backend's. */}}
{{- define "y-redis.permCallback" -}}
{{- if .Values.config.AUTH_PERM_CALLBACK }}
{{- .Values.config.AUTH_PERM_CALLBACK }}
{{- else if .Values.authExample.enabled }}
{{- printf "http://%s-auth-example:%v/auth/perm" (include "y-redis.fullname" .) .Values.authExample.port }}
{{- end }}
{{- end }}

{{/* Port name of /healthz, /readyz and /metrics on the servers. */}}
{{- define "y-redis.serverProbePort" -}}
{{- if .Values.server.internalPort }}internal{{ else }}http{{ end }}
{{- end }}

{{/*
Stops rendering with a message when the values cannot make a working
release (rendered from configmap.yaml, which every release has).
*/}}
{{- define "y-redis.validate" -}}
{{- $storage := include "y-redis.storage" . }}
{{- range $key := list "REDIS" "REDIS_SENTINEL_PASSWORD" "POSTGRES" "S3_ACCESS_KEY" "S3_SECRET_KEY" "ADMIN_SECRET" "AUTH_PUBLIC_KEY" "AUTH_PRIVATE_KEY" }}
{{- if index $.Values.config $key }}
{{- fail (printf "config.%s: set it under secrets (or in existingSecret); config is a ConfigMap and %s may hold a password or key" $key $key) }}
{{- end }}
{{- end }}
{{- if .Values.secrets.AUTH_PRIVATE_KEY }}
{{- fail "secrets.AUTH_PRIVATE_KEY: servers and workers never need the signing key; give it to authExample.privateKey (or your own auth backend)" }}
{{- end }}
{{- if not (has $storage (list "s3" "postgres" "filesystem")) }}
{{- fail (printf "y-redis needs storage that its pods share. Set one of: secrets.POSTGRES (postgres://user:password@host:5432/db); config.S3_ENDPOINT (with S3_REGION, S3_BUCKET and keys in secrets, or the AWS credential chain); or persistence.enabled=true for filesystem storage on a PersistentVolumeClaim (one worker). With existingSecret set storage.type. (storage.type is %q)" $storage) }}
{{- end }}
{{- if and (eq $storage "s3") (not .Values.config.S3_ENDPOINT) }}
{{- fail "storage.type=s3 needs config.S3_ENDPOINT" }}
{{- end }}
{{- if and (eq $storage "postgres") (not .Values.secrets.POSTGRES) (not .Values.existingSecret) }}
{{- fail "storage.type=postgres needs secrets.POSTGRES (or existingSecret holding POSTGRES)" }}
{{- end }}
{{- if and (ne $storage "s3") .Values.config.S3_ENDPOINT }}
{{- fail (printf "storage.type=%s, but config.S3_ENDPOINT is set: y-redis would use S3" $storage) }}
{{- end }}
{{- if and (eq $storage "filesystem") .Values.secrets.POSTGRES }}
{{- fail "storage.type=filesystem, but secrets.POSTGRES is set: y-redis would use Postgres" }}
{{- end }}
{{- if eq $storage "filesystem" }}
{{- if not .Values.persistence.enabled }}
{{- fail "filesystem storage needs persistence.enabled=true: the root filesystem is read-only and a pod's own disk is not shared. Or use secrets.POSTGRES or config.S3_ENDPOINT" }}
{{- end }}
{{- if ne (int .Values.worker.replicas) 1 }}
{{- fail (printf "filesystem storage runs exactly one worker (worker.replicas is %v); use Postgres or S3 for more" .Values.worker.replicas) }}
{{- end }}
{{- end }}
{{- if and (ne (toString .Values.config.AUTH_DISABLED) "true") (not .Values.existingSecret) (not .Values.secrets.AUTH_PUBLIC_KEY) }}
{{- fail "secrets.AUTH_PUBLIC_KEY is required: the JWK verifying client tokens (`y-redis keygen` prints a pair; pass it with --set-file or --set-string). Or config.AUTH_DISABLED=\"true\" to let everyone read and write" }}
{{- end }}
{{- if and (ne (toString .Values.config.AUTH_DISABLED) "true") (not (include "y-redis.permCallback" .)) }}
{{- fail "config.AUTH_PERM_CALLBACK is required: your auth backend's permission URL (GET <url>/<room>/<userid>). Or authExample.enabled=true to try the chart with the example backend" }}
{{- end }}
{{- if and .Values.authExample.enabled (not .Values.authExample.privateKey) (not .Values.authExample.existingSecret) }}
{{- fail "authExample.enabled needs authExample.privateKey (the AUTH_PRIVATE_KEY that `y-redis keygen` prints with the public key) or authExample.existingSecret" }}
{{- end }}
{{- range $part := list "server" "worker" }}
{{- $v := index $.Values $part }}
{{- $needMs := add (mul (int $v.preStopSleepSeconds) 1000) (int ($.Values.config.SHUTDOWN_GRACE_MS | default 2000)) }}
{{- if eq $part "server" }}{{ $needMs = add $needMs (int ($.Values.config.SHUTDOWN_DRAIN_MS | default 0)) }}{{ end }}
{{- if lt (mul (int $v.terminationGracePeriodSeconds) 1000) $needMs }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v s) is shorter than its preStop sleep + shutdown (%v ms): Kubernetes would kill it mid-shutdown" $part $v.terminationGracePeriodSeconds $needMs) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Soft spread over nodes and zones, for one component. */}}
{{- define "y-redis.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled -}}
topologySpreadConstraints:
  {{- range .root.Values.topologySpread.topologyKeys }}
  - maxSkew: {{ $.root.Values.topologySpread.maxSkew }}
    topologyKey: {{ . }}
    whenUnsatisfiable: {{ $.root.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "y-redis.selectorLabels" $.root | nindent 8 }}
        app.kubernetes.io/component: {{ $.component }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "y-redis.claimName" -}}
{{- default (printf "%s-data" (include "y-redis.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
Environment naming the Redis TLS files mounted from redisTls.secretName.
*/}}
{{- define "y-redis.redisTlsEnv" -}}
{{- with .Values.redisTls }}
{{- if .secretName }}
{{- if .caKey }}
- name: REDIS_TLS_CA_FILE
  value: {{ printf "%s/%s" .mountPath .caKey | quote }}
{{- end }}
{{- if and .certKey .keyKey }}
- name: REDIS_TLS_CERT_FILE
  value: {{ printf "%s/%s" .mountPath .certKey | quote }}
- name: REDIS_TLS_KEY_FILE
  value: {{ printf "%s/%s" .mountPath .keyKey | quote }}
{{- else if or .certKey .keyKey }}
{{- fail "redisTls.certKey and redisTls.keyKey: set both (a client certificate and its key) or neither" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
