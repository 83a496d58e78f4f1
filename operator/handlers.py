"""The kopf handlers: small, one concern each. Importing this module registers them with kopf.

- startup/cleanup: settings, the API client, peering; login: a service account in a pod, a kubeconfig elsewhere;
- two indexes keep the runtime Deployments and pods in memory (watched, never polled);
- create/update/resume apply the children; a timer re-applies them, so deleted or edited children come back;
- a second timer turns the indexed cluster state into status conditions.

Deleting an InferenceService needs no handler: its children's owner references let Kubernetes' garbage collector
delete them. kopf still puts its finalizer on every InferenceService: kopf timers require one (kopf stops an
object's timers before it lets the object go), and kopf has no way to turn that off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf
from kubeserve.operator import naming, peering
from kubeserve.operator.cluster import Cluster, ClusterError
from kubeserve.operator.reconcile import apply_children, assess, status_fields
from kubeserve.operator.settings import OperatorSettings, load_settings
from kubeserve.operator.status import ApplyFailure, Reason

RESOURCE = (naming.GROUP, naming.VERSION, naming.PLURAL)
RECONCILE_INTERVAL_SECONDS = 60.0
STATUS_INTERVAL_SECONDS = 10.0
# An apply the API server refused (RBAC, an admission policy) is retried slowly: a human has to act first.
REJECTED_RETRY_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 60.0

RUNTIME_OBJECTS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, naming.LABEL_ISVC: kopf.PRESENT}
Key = tuple[str, str]

log = logging.getLogger(__name__)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, retry: int, **_: Any) -> None:
    if "settings" not in memo:
        memo.settings = load_settings(os.environ)
    operator: OperatorSettings = memo.settings
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration"
    )
    # Handler chatter stays in the logs; Events are for what a user must see (warnings).
    settings.posting.level = logging.WARNING
    selector = f"{naming.LABEL_MANAGED_BY}={naming.MANAGED_BY}"
    settings.watching.label_selectors["pods"] = selector
    settings.watching.label_selectors["apps", "deployments"] = selector
    if "cluster" not in memo:  # a retried startup keeps its client
        try:
            memo.cluster = await Cluster.connect(request_timeout=operator.api_timeout_seconds)
        except ClusterError as error:
            raise kopf.PermanentError(str(error)) from error
    await _configure_peering(settings, operator, memo.cluster, retry)
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
                raise kopf.TemporaryError(str(error), delay=_backoff(retry)) from error
            raise kopf.PermanentError(f"cannot tell whether the peering object exists: {error}") from error
        if why is not None:
            log.warning(why, extra={"event": "peering_off"})
            standalone = True
    settings.peering.standalone = standalone
    # With its objects known to exist, kopf waits until it has seen its peers before it starts work.
    settings.peering.mandatory = not standalone


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    if "cluster" in memo:
        await memo.cluster.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # The same order as the operator's own API client: $KUBECONFIG, the pod's service account, ~/.kube/config.
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index("pods", labels=RUNTIME_OBJECTS)
def runtime_pods(namespace: str, meta: kopf.Meta, status: kopf.Status, **_: Any) -> dict[Key, dict[str, Any]]:
    summary = {
        "metadata": {
            "name": meta.get("name"),
            "labels": dict(meta.labels),
            "annotations": dict(meta.annotations),
            "deletionTimestamp": meta.get("deletionTimestamp"),
        },
        "status": dict(status),
    }
    return {(namespace, meta.labels[naming.LABEL_ISVC]): summary}


@kopf.index("apps", "deployments", labels=RUNTIME_OBJECTS)
def runtime_deployments(
    namespace: str, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Key, dict[str, Any]]:
    summary = {
        "metadata": {"name": meta.get("name"), "generation": meta.get("generation")},
        "spec": {"replicas": spec.get("replicas"), "template": {"metadata": spec.get("template", {}).get("metadata")}},
        "status": dict(status),
    }
    return {(namespace, meta.labels[naming.LABEL_ISVC]): summary}


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    runtime_pods: kopf.Index[Key, dict[str, Any]],
    runtime_deployments: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    await _reconcile(body, patch, memo, runtime_pods, runtime_deployments)


@kopf.timer(*RESOURCE, interval=RECONCILE_INTERVAL_SECONDS, initial_delay=RECONCILE_INTERVAL_SECONDS)
async def repair_drift(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    runtime_pods: kopf.Index[Key, dict[str, Any]],
    runtime_deployments: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    await _reconcile(body, patch, memo, runtime_pods, runtime_deployments)


@kopf.timer(*RESOURCE, interval=STATUS_INTERVAL_SECONDS)
async def report_status(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    runtime_pods: kopf.Index[Key, dict[str, Any]],
    runtime_deployments: kopf.Index[Key, dict[str, Any]],
    **_: Any,
) -> None:
    key = (body.metadata.namespace or "default", body.metadata.name or "")
    fields = status_fields(
        body,
        assess(body),
        deployments=runtime_deployments.get(key, []),
        pods=runtime_pods.get(key, []),
        apply_failure=memo.get("apply_failure"),
    )
    _write_status(body, patch, fields)


async def _reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    pods: kopf.Index[Key, dict[str, Any]],
    deployments: kopf.Index[Key, dict[str, Any]],
) -> None:
    if body.metadata.get("deletionTimestamp"):
        return  # being deleted: the garbage collector removes the children; never re-create them now
    assessment = assess(body)
    failure = None
    if assessment.isvc is not None:
        try:
            await apply_children(memo.cluster, assessment.isvc, memo.settings)
        except ClusterError as error:
            # Counted per object, whichever handler applied: the status shows one count of failures in a row.
            previous: ApplyFailure | None = memo.get("apply_failure")
            attempt = previous.attempt + 1 if previous else 1
            # Retryable (409, 429, 5xx, timeouts): back off. Refused (RBAC, an admission policy): a human acts first.
            delay = _backoff(attempt - 1) if error.retryable else REJECTED_RETRY_SECONDS
            failure = ApplyFailure(str(error), attempt=attempt, retry_in=delay)
            # An Event once per distinct error; a retryable one only once it has survived a retry (409s are routine).
            if (attempt > 1 or not error.retryable) and memo.get("announced_apply_error") != failure.error:
                kopf.warn(body, reason=Reason.APPLY_FAILED, message=failure.error)
                memo.announced_apply_error = failure.error
    memo.apply_failure = failure  # per object: the status timer reports it too, until an apply succeeds
    if failure is None:
        memo.announced_apply_error = None

    key = (body.metadata.namespace or "default", body.metadata.name or "")
    fields = status_fields(
        body,
        assessment,
        deployments=deployments.get(key, []),
        pods=pods.get(key, []),
        apply_failure=failure,
    )
    if failure is None:
        # Acted on: applied, or judged invalid with nothing applied.
        fields["observedGeneration"] = body.metadata.get("generation")
    _write_status(body, patch, fields)
    if failure is not None:
        raise kopf.TemporaryError(failure.error, delay=failure.retry_in)


def _write_status(body: kopf.Body, patch: kopf.Patch, fields: Mapping[str, Any]) -> None:
    """Patch only what changed, and post an Event for each new problem a user has to act on."""
    current = body.get("status") or {}
    for key, value in fields.items():
        if current.get(key) != value:
            patch.status[key] = value
    for reason, message in _news(current, fields):
        kopf.warn(body, reason=reason, message=message)


def _news(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(reason, message) of each problem the new status shows and the current one does not.

    A failed apply is announced where it happens, once per distinct error, not once per retry.
    """
    news = []
    before, after = _condition(current, "Ready"), _condition(new, "Ready")
    seen = (before.get("reason"), before.get("message")) == (after.get("reason"), after.get("message"))
    if after.get("reason") == Reason.INVALID_SPEC and not seen:
        news.append((after["reason"], after["message"]))
    failure, previous = new.get("lastFailure"), current.get("lastFailure")
    if failure and failure != previous:
        news.append((failure["reason"], failure["message"]))
    return news


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _backoff(retry: int) -> float:
    return min(2.0**retry, MAX_BACKOFF_SECONDS)
