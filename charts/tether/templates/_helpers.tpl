{{/* Helpers of the tether chart. */}}

{{/* Base name of every object: "tether" unless nameOverride says otherwise. */}}
{{- define "tether.name" -}}
{{- default "tether" .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* The operator's object names (Deployment, ServiceAccount, ClusterRole, Lease, ...). */}}
{{- define "tether.operator" -}}
{{- printf "%s-operator" (include "tether.name" .) -}}
{{- end -}}

{{- define "tether.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tether.operator" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "tether.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: tether
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of the operator pods. */}}
{{- define "tether.operator.selectorLabels" -}}
app.kubernetes.io/name: tether-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tether.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "tether.relay.image" -}}
{{- printf "%s:%s" .Values.relay.image.repository (default .Chart.AppVersion .Values.relay.image.tag) -}}
{{- end -}}

{{/* Whether the RelayPool kind is served (false on a first install that brings the CRDs). */}}
{{- define "tether.relayPoolServed" -}}
{{- if .Capabilities.APIVersions.Has "tether.dev/v1alpha1/RelayPool" -}}true{{- end -}}
{{- end -}}
