{{/*
The operator's permissions, verb by verb, from what kubeserve.operator and kopf do (tests/deploy/test_chart.py
holds the same table and checks it against the operator's code). kubeserve reads its objects through
watches (kopf indexes), never one at a time, so it needs no get on them.
*/}}
{{- define "kubeserve.rules.application" -}}
# InferenceServices: kopf lists and watches them, and patches them for its annotation (the last spec handled)
# and to remove the finalizer earlier versions of the operator put on them.
- apiGroups: [serving.kubeserve.io]
  resources: [inferenceservices]
  verbs: [list, watch, patch]
# Their status: conditions, replicas, URL, the model's last failure (written only when it changes).
- apiGroups: [serving.kubeserve.io]
  resources: [inferenceservices/status]
  verbs: [patch]
# Their scale subresource: with autoscaling and no spec.replicas, the operator writes minReplicas there as the
# starting point (an HPA does not scale a target whose replica count reads 0); the HPA writes it from then on.
- apiGroups: [serving.kubeserve.io]
  resources: [inferenceservices/scale]
  verbs: [patch]
# The children's owner references set blockOwnerDeletion, which needs this where the
# OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: [serving.kubeserve.io]
  resources: [inferenceservices/finalizers]
  verbs: [update]
# The children: server-side apply (a PATCH, authorised as create when the object is new), and watched (those with
# the operator's labels) to repair drift when someone else changes or deletes one. Kubernetes' garbage collector
# deletes them with their InferenceService (owner references); the operator deletes the revisions its rollouts
# prune (a Deployment, its Service and ConfigMap) and the autoscaling objects an InferenceService no longer wants (an
# HPA, KEDA's ScaledObject and InterceptorRoute, the NAME-proxy Service).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# Autoscaling engine keda (harmless where KEDA is not installed).
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [http.keda.sh]
  resources: [interceptorroutes]
  verbs: [list, watch, create, patch, delete]
# Rollouts with a Gateway API traffic router (harmless where Gateway API is not installed).
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, grpcroutes]
  verbs: [list, watch, create, patch, delete]
# Runtime Deployments (one per revision) are also indexed to report the rollout in the status; the rollout scales
# them (a patch of spec.replicas) and deletes pruned ones.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
# Runtime pods: only watched (a kopf index), to report fetch failures, image pulls and scheduling.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events on InferenceServices (kopf's warnings, InvalidSpec).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{- define "kubeserve.rules.clusterPeering" -}}
# kopf peering, cluster-wide: each replica keeps itself alive in the ClusterKopfPeering; one is active
# (the verbs of kopf's own RBAC documentation; the operator gets it at start to see whether it exists).
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{- define "kubeserve.rules.namespacedPeering" -}}
# kopf peering, per namespace: each replica keeps itself alive in the KopfPeering; one is active
# (the verbs of kopf's own RBAC documentation; the operator gets it at start to see whether it exists).
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end -}}

{{- define "kubeserve.rules.discovery" -}}
# kopf discovery: notice CRDs (and, when namespaced, namespaces) that appear or go.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if not .Values.watch.clusterWide }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}
