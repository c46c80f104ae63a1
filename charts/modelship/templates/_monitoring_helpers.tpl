{{- /* Helpers of monitoring.yaml and dashboard.yaml only. */ -}}

{{- /* A ServiceMonitor endpoint's scrape timing, from monitoring.serviceMonitor. */ -}}
{{- define "modelship.monitoring.scrapeTiming" -}}
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- end -}}

{{- /* An alert's labels: its severity, then monitoring.prometheusRule.alertLabels.
       Called with (list $ "severity"). */ -}}
{{- define "modelship.monitoring.alertLabels" -}}
{{- $root := index . 0 -}}
severity: {{ index . 1 }}
{{- with $root.Values.monitoring.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /* An alert's runbook_url annotation, when monitoring.prometheusRule.runbookUrl is set.
       Called with (list $ "AlertName"). */ -}}
{{- define "modelship.monitoring.runbook" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- with $root.Values.monitoring.prometheusRule.runbookUrl -}}
runbook_url: {{ printf "%s#%s" . (lower $name) | quote }}
{{- end }}
{{- end -}}

{{- /* The series of this release's operator and router, as the ServiceMonitors label them
       (the Prometheus Operator sets job to the Service's name). */ -}}
{{- define "modelship.monitoring.operatorSeries" -}}
job="{{ include "modelship.operator" . }}-metrics", namespace="{{ .Release.Namespace }}"
{{- end -}}
{{- define "modelship.monitoring.routerSeries" -}}
job="{{ include "modelship.router" . }}", namespace="{{ .Release.Namespace }}"
{{- end -}}
