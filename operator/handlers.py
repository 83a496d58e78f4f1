"""The kopf handlers: small, one concern each. Importing this module registers them with kopf.

What kopf does here: the watches (with label selectors), the in-memory indexes of InferenceServices and their
Deployments, pods and HPAs (``summaries`` trims them), peering between operator replicas, the login, posting the
Events ``apply`` asks for, and retrying the startup (until the peering object can be read). What it does not:
applying, retrying and the status of InferenceServices are ``plan``'s and ``apply``'s, driven by the controller
(``controller``; docs/design.md); the handlers only tell it what happened and return at once, never raising, so
kopf's handler retries never run for them, and no handler uses kopf's timers, daemons or patches. kopf writes only
its own bookkeeping (``status.kopf``, the last-handled annotation) and removes the finalizer that earlier versions
put on InferenceServices.

- startup/cleanup: settings, the API client, peering, the controller; login: a service account in a pod, a
  kubeconfig elsewhere;
- four indexes keep InferenceServices, runtime Deployments, pods and HPAs in memory, trimmed to what rendering
  and status read (watched, never polled);
- create/update/resume hand an InferenceService to the controller, which applies its children;
- watch events of the children (``CHILDREN``: ConfigMaps, Services, HPAs, Deployments, KEDA's ScaledObjects and
  InterceptorRoutes, HTTPRoutes, with the operator's labels) repair drift, and those of Deployments, HPAs and pods
  refresh the status. Event handlers store nothing on the objects they watch.

No timers, so no finalizer: deleting an InferenceService needs nothing from the operator, its children's owner
references let Kubernetes' garbage collector delete them.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from kubeserve.operator import drift, metrics, naming, peering, summaries
from kubeserve.operator.apply import backoff
from kubeserve.operator.cluster import Cluster, ClusterError
from kubeserve.operator.controller import Controller, Key
from kubeserve.operator.settings import OperatorSettings, load_settings

RESOURCE = (naming.GROUP, naming.VERSION, naming.PLURAL)
# (group, version, plural); "" is the core group.
PODS = ("", "v1", "pods")
DEPLOYMENTS = ("apps", "v1", "deployments")
HPAS = ("autoscaling", "v2", "horizontalpodautoscalers")
# The kinds the operator applies, watched for drift. KEDA's two are applied only for autoscaling engine keda, the
# HTTPRoute only for Gateway API routing; where their CRDs are not installed, kopf says so once at start and watches
# them if they appear.
CHILDREN = (
    ("", "v1", "configmaps"),
    ("", "v1", "services"),
    HPAS,
    DEPLOYMENTS,
    ("keda.sh", "v1alpha1", "scaledobjects"),
    ("http.keda.sh", "v1beta1", "interceptorroutes"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "grpcroutes"),
)
# The children whose status the InferenceService's status reports.
_REPORTED = {(group, plural) for group, _, plural in (DEPLOYMENTS, HPAS)}

RUNTIME_OBJECTS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_ISVC: kopf.PRESENT}

log = logging.getLogger(__name__)


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: logging.Logger,
    retry: int,
    inference_services: kopf.Index[Key, dict[str, Any]],
    runtime_deployments: kopf.Index[Key, dict[str, Any]],
    runtime_pods: kopf.Index[Key, dict[str, Any]],
    runtime_autoscalers: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    if "settings" not in memo:
        memo.settings = load_settings(os.environ)
    operator: OperatorSettings = memo.settings
    # No handler needs a finalizer any more; naming the one earlier versions had kopf put on every
    # InferenceService lets kopf see it is not needed and remove it.
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration"
    )
    # Handler chatter stays in the logs; Events are for what a user must see (warnings).
    settings.posting.level = logging.WARNING
    # Only the operator's own objects reach it (and its memory), filtered by the API server.
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    for resource in (PODS, *CHILDREN):
        settings.watching.label_selectors[resource] = selector
    if "cluster" not in memo:  # a retried startup keeps its client
        try:
            memo.cluster = await Cluster.connect(request_timeout=operator.api_timeout_seconds)
        except ClusterError as error:
            raise kopf.PermanentError(str(error)) from error
    await _configure_peering(settings, operator, memo.cluster, retry)
    if "controller" not in memo:
        # kopf's indexes are live views: the controller reads the same ones the handlers are given.
        memo.controller = Controller(
            memo.cluster,
            operator,
            owners=inference_services,
            deployments=runtime_deployments,
            pods=runtime_pods,
            autoscalers=runtime_autoscalers,
        )
    if operator.metrics_port and "metrics_server" not in memo:
        memo.metrics_server = await metrics.serve(memo.controller.metrics, operator.metrics_port)
    logger.info(f"kubeserve operator: CPU image {operator.cpu_image}, CUDA image {operator.cuda_image}")


async def _configure_peering(
    settings: kopf.OperatorSettings, operator: OperatorSettings, cluster: Cluster, retry: int
) -> None:
    """Peering as the settings ask, unless its objects are missing: then standalone, with a warning."""
    settings.peering.name = operator.peering_name
    settings.peering.priority = operator.peering_priority
    standalone = operator.standalone
    if not standalone:
        try:
            why = await peering.why_standalone(cluster, operator)
        except ClusterError as error:
            if error.retryable:
                raise kopf.TemporaryError(str(error), delay=backoff(retry)) from error
            raise kopf.PermanentError(f"cannot tell whether the peering object exists: {error}") from error
        if why is not None:
            log.warning(why, extra={"event": "peering_off"})
            standalone = True
    settings.peering.standalone = standalone
    # With its objects known to exist, kopf waits until it has seen its peers before it starts work.
    settings.peering.mandatory = not standalone


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "controller" in memo:
        await memo.controller.stop()
    if "cluster" in memo:
        await memo.cluster.close()
    if "metrics_server" in memo:
        await memo.metrics_server.cleanup()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The same order as the operator's own API client: $KUBECONFIG, the pod's service account, ~/.kube/config.
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index(*RESOURCE)
async def inference_services(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): summaries.owner(body)}


@kopf.index(*PODS, labels=RUNTIME_OBJECTS)
async def runtime_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[naming.LABEL_ISVC]): summaries.pod(body)}


@kopf.index(*DEPLOYMENTS, labels=RUNTIME_OBJECTS)
async def runtime_deployments(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[naming.LABEL_ISVC]): summaries.deployment(body)}


@kopf.index(*HPAS, labels=RUNTIME_OBJECTS)
async def runtime_autoscalers(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Key, dict[str, Any]]:
    return {(namespace, labels[naming.LABEL_ISVC]): summaries.autoscaler(body)}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    # The controller applies, retries and reports in the status; kopf's part ends here.
    memo.controller.spec_changed((namespace, name))


@kopf.on.event(*RESOURCE, when=lambda type, **_: type == drift.DELETED)
async def forget(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.forget((namespace, name))


@kopf.on.event(*CHILDREN[0], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[1], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[2], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[3], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[4], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[5], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[6], labels=RUNTIME_OBJECTS)
@kopf.on.event(*CHILDREN[7], labels=RUNTIME_OBJECTS)
async def child_changed(
    type: str | None,
    namespace: str,
    labels: kopf.Labels,
    body: kopf.Body,
    resource: kopf.Resource,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    key = (namespace, labels[naming.LABEL_ISVC])
    memo.controller.child_changed(key, type, resource.kind, body)
    if (resource.group, resource.plural) in _REPORTED:
        memo.controller.runtime_changed(key)


@kopf.on.event(*PODS, labels=RUNTIME_OBJECTS)
async def pod_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.controller.runtime_changed((namespace, labels[naming.LABEL_ISVC]))


class _QuietWatchHandlers(logging.Filter):
    """Drops kopf's "Handler '...' succeeded." for the watch-event handlers, which run for every event of every
    child and pod (thousands at start): a line each would cost more than the handlers. Their failures still log."""

    QUIET = frozenset(f"Handler {handler.__name__!r} succeeded." for handler in (forget, child_changed, pod_changed))

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.INFO or record.getMessage() not in self.QUIET


logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())
