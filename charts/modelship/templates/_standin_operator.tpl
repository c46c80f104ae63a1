{{- /*
TEMPORARY STAND-IN, branch `monitoring` only: drop this file at merge. The main session's
_helpers.tpl defines these two helpers (the same names, the same output) with the operator's
Deployment; they are here only so that monitoring.yaml renders and is tested before then.
*/ -}}
{{- define "modelship.operator" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "modelship.operatorSelector" -}}
app.kubernetes.io/name: modelship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
