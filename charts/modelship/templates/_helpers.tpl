{{- define "modelship.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "modelship.router" -}}{{ .Release.Name }}-router{{- end -}}
{{- define "modelship.operator" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "modelship.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "modelship.labels" -}}
app.kubernetes.io/name: modelship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "modelship.routerSelector" -}}
app.kubernetes.io/name: modelship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}
{{- define "modelship.operatorSelector" -}}
app.kubernetes.io/name: modelship
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- /* The pod security context of the `restricted` Pod Security Standard, for both programs. */ -}}
{{- define "modelship.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "modelship.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
{{- end -}}
{{- /* Namespaced rules granted in every watched namespace (RoleBindings) or cluster-wide. */ -}}
{{- define "modelship.bindings" -}}
{{- $root := .root -}}
{{- if $root.Values.namespaces }}
{{- range $root.Values.namespaces }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $.name }}-{{ $root.Release.Namespace }}
  namespace: {{ . }}
  labels: {{- include "modelship.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $.component }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ $.name }}-{{ $root.Release.Namespace }}
subjects:
  - kind: ServiceAccount
    name: {{ $.name }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- else }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {{ .name }}-{{ $root.Release.Namespace }}
  labels: {{- include "modelship.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {{ .name }}-{{ $root.Release.Namespace }}
subjects:
  - kind: ServiceAccount
    name: {{ .name }}
    namespace: {{ $root.Release.Namespace }}
{{- end }}
{{- end -}}
