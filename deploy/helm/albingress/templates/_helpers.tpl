{{- define "albingress.labels" -}}
app.kubernetes.io/name: albingress
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "albingress.selector" -}}
app.kubernetes.io/name: albingress
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "albingress.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
