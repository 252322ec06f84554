{{/*
Labels of every object: the same as deploy/manifests (name and part-of), plus the two Helm
conventions, which tests/deploy/test_renderings_agree.py removes before comparing with kustomize.
Call with (dict "root" $ "name" "agentops-webhook").
*/}}
{{- define "agentops.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: agentops
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Labels of a component's pods; its selector is the name alone. */}}
{{- define "agentops.podLabels" -}}
app.kubernetes.io/name: {{ . }}
app.kubernetes.io/part-of: agentops
{{- end }}

{{- define "agentops.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Where every component finds Redis: the external URL, else the bundled Service. */}}
{{- define "agentops.redisURL" -}}
{{- if .Values.redis.external.url -}}
{{ .Values.redis.external.url }}
{{- else -}}
redis://redis.{{ .Release.Namespace }}.svc:6379/0
{{- end -}}
{{- end }}

{{/* host:port of Redis for KEDA's redis-streams scaler, which runs outside this namespace. */}}
{{- define "agentops.redisAddress" -}}
{{- if .Values.redis.external.url -}}
{{- $host := regexReplaceAll "^rediss?://([^@/?#]*@)?([^/]+).*$" .Values.redis.external.url "${2}" -}}
{{- if regexMatch ":[0-9]+$" $host -}}{{ $host }}{{- else -}}{{ $host }}:6379{{- end -}}
{{- else -}}
redis.{{ .Release.Namespace }}.svc:6379
{{- end -}}
{{- end }}

{{/* imagePullSecrets, nodeSelector and tolerations of a pod spec (nothing when unset). */}}
{{- define "agentops.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Checks values.schema.json cannot make without echoing the value in its message: a misplaced API
key or a Redis password must not end up in a terminal or a CI log.
*/}}
{{- define "agentops.validate" -}}
{{- with .Values.provider.apiKeySecret.name }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" .) }}
{{- fail (printf "provider.apiKeySecret.name (%d characters, not shown) is not the name of a Secret (lowercase letters, digits, '-' and '.'): give the NAME of a Secret holding the API key, never the key itself, e.g. `kubectl -n NAMESPACE create secret generic anthropic-api-key --from-literal=api-key=...` and provider.apiKeySecret.name=anthropic-api-key" (len .)) }}
{{- end }}
{{- if gt (len .) 253 }}
{{- fail (printf "provider.apiKeySecret.name (%d characters, not shown) is longer than a Secret name can be (253): give the NAME of a Secret holding the API key, never the key itself" (len .)) }}
{{- end }}
{{- end }}
{{- with .Values.redis.external.url }}
{{- /* Matched by a regular expression, not urlParse: its parse errors quote the whole URL. */}}
{{- if not (regexMatch "^rediss?://([^@/?#]*@)?([[][0-9a-fA-F:.]+[]]|[-a-zA-Z0-9.]+)(:[0-9]{1,5})?(/[0-9]*)?$" .) }}
{{- fail (printf "redis.external.url %q is not a Redis URL: use redis://[:password@]host[:port][/db] or rediss://... (or leave it empty for the bundled Redis)" (regexReplaceAll "^([^:/]*://)?.*@" . "${1}***@")) }}
{{- end }}
{{- end }}
{{- end }}
