"""One InferenceService's desired state, computed purely from what the operator observes: ``plan``.

``plan`` judges the spec, renders the children, asks the rollout (``rollout.decide``) how to split the replicas
between the revisions, and says everything ``apply`` is to do: children to apply and to delete, replicas to set,
revisions to prune, the HTTPRoute, the autoscaler's starting point, the canary analysis wanted, the Events, and when
to look again. ``Plan.status`` is the status to write, given how the apply went (its failure shows in the status).
Nothing here reads the cluster or the clock: the controller gathers ``Observed`` and the time, and tests build
them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubeserve.operator import manifests, naming, rollout, status
from kubeserve.operator.analysis import AnalysisResult
from kubeserve.operator.deployed_revisions import live_revisions, serving_version, wanted_revision
from kubeserve.operator.manifests.http_route import grpc_route, http_route
from kubeserve.operator.manifests.service import revision_service
from kubeserve.operator.memory_estimate import memory_check
from kubeserve.operator.object_ref import ObjectRef
from kubeserve.operator.runtime_config import served_precision
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import Analysis, InferenceService, SpecError, parse
from kubeserve.operator.validation import spec_problems

# Renderings kept (``RenderCache``): rendering costs about a millisecond (the runtime's config file), and one
# owner's events come close together; 256 renderings are a few MiB.
RENDER_CACHE_SIZE = 256


@dataclass(frozen=True)
class Assessment:
    """The spec as the operator judged it: usable (``isvc``) or not (``problems``)."""

    isvc: InferenceService | None
    problems: list[str]


def assess(body: Mapping[str, Any], settings: OperatorSettings | None = None) -> Assessment:
    """The spec judged against the operator's ``settings`` (its defaults when None: ``kubeserve-operator render``
    without settings, and tests)."""
    try:
        isvc = parse(body)
    except SpecError as error:
        return Assessment(None, error.problems)
    problems = spec_problems(isvc, settings or OperatorSettings())
    return Assessment(None if problems else isvc, problems)


@dataclass(frozen=True)
class Rendering:
    """The spec judged, and its children rendered when it is valid."""

    assessment: Assessment
    children: manifests.Children | None  # None for an invalid spec


def render(owner: Mapping[str, Any], settings: OperatorSettings) -> Rendering:
    assessment = assess(owner, settings)
    isvc = assessment.isvc
    return Rendering(assessment, None if isvc is None else manifests.children(isvc, settings))


class RenderCache:
    """``render`` remembered for the most recent owners: a rendering depends on the spec (its generation), the name,
    namespace and uid, and the operator's settings, nothing else."""

    def __init__(self, settings: OperatorSettings, size: int = RENDER_CACHE_SIZE) -> None:
        self._settings, self._size = settings, size
        self._renderings: OrderedDict[tuple[Any, ...], Rendering] = OrderedDict()

    def __call__(self, owner: Mapping[str, Any]) -> Rendering:
        metadata = owner["metadata"]
        identity = (metadata["namespace"], metadata["name"], metadata.get("uid"), metadata.get("generation"))
        rendering = self._renderings.get(identity)
        if rendering is not None:
            self._renderings.move_to_end(identity)
            return rendering
        rendering = self._renderings[identity] = render(owner, self._settings)
        if len(self._renderings) > self._size:
            self._renderings.popitem(last=False)
        return rendering


Renderer = Callable[[Mapping[str, Any]], Rendering]


@dataclass(frozen=True)
class Observed:
    """What the operator's watches show of one InferenceService's world (summaries: ``summaries``)."""

    deployments: Sequence[Mapping[str, Any]]  # its revision Deployments
    pods: Sequence[Mapping[str, Any]]
    autoscalers: Sequence[Mapping[str, Any]]  # its HPA (KEDA's, with engine keda), when there is one
    status: Mapping[str, Any]  # its status as last written (the operator's own write, until the watch shows it)
    present: frozenset[tuple[str, str]]  # (kind, name) of its own children that exist: only those are deleted


@dataclass(frozen=True)
class Scale:
    deployment: str
    replicas: int


@dataclass(frozen=True)
class AnalysisWanted:
    """Keep an analysis interval of ``canary`` running, against ``stable`` (relative thresholds)."""

    analysis: Analysis
    canary: str
    stable: str | None


@dataclass(frozen=True)
class Plan:
    owner: Mapping[str, Any]  # the InferenceService (its summary): Events are posted about it
    rendering: Rendering
    decision: rollout.Decision | None  # None for an invalid spec: then nothing is applied
    children: list[dict[str, Any]]  # to apply, in order; the wanted revision's Deployment with the rollout's replicas
    absent: list[ObjectRef]  # children no longer wanted that exist: deleted before ``children`` are applied
    scales: list[Scale]  # revision Deployments whose replicas are not the rollout's
    prune: list[ObjectRef]  # the objects of the revisions the rollout prunes
    route: dict[str, Any] | None  # the HTTPRoute with the rollout's weights (Gateway API routing), else None
    grpc_route: dict[str, Any] | None  # the GRPCRoute beside it, for pods that serve gRPC, else None
    route_services: list[dict[str, Any]]  # Services the route needs for revisions from before revisions
    starting_replicas: int | None  # written through the scale subresource: autoscaling's starting point
    analysis: AnalysisWanted | None
    requeue_after: float | None  # seconds until the rollout has something due
    # What the status is made of, besides how the apply went.
    desired: status.Desired | None
    wanted_deployment: Mapping[str, Any] | None
    observed: Observed

    @property
    def events(self) -> tuple[rollout.Event, ...]:
        return self.decision.events if self.decision is not None else ()

    def status(
        self, apply_failure: status.ApplyFailure | None, applied_generation: int | None, written_at: datetime
    ) -> dict[str, Any]:
        """The status fields the operator owns, after an apply that failed with ``apply_failure`` (or not);
        ``applied_generation``: the generation last applied in full, or judged invalid; ``written_at``: the wall
        clock's time, for the transition times and the last failure's first sighting."""
        metadata = self.owner.get("metadata") or {}
        name = metadata.get("name", "")
        decision = self.decision
        observation = status.observe(
            desired=self.desired,
            spec_problems=self.rendering.assessment.problems,
            deployment=self.wanted_deployment,
            deployments=self.observed.deployments,
            pods=self.observed.pods,
            apply_failure=apply_failure,
            rollout=decision.condition if decision is not None else None,
        )
        return status.owned_status(
            self.observed.status,
            observation,
            generation=metadata.get("generation"),
            url=self.desired.url if self.desired is not None else naming.service_url(name, metadata["namespace"]),
            # An invalid spec changes nothing the pods serve: the address stays as it was.
            grpc_address=(
                self.desired.grpc_address if self.desired is not None else self.observed.status.get("grpcAddress")
            ),
            now=written_at,
            selector=naming.runtime_selector(name),
            autoscaler=status.autoscaler_view(next(iter(self.observed.autoscalers), None)),
            rollout_state=decision.rollout if decision is not None else None,
            revisions=decision.revisions if decision is not None else None,
            serving_version=serving_version(decision) if decision is not None else None,
            observed_generation=applied_generation if apply_failure is None else None,
        )


def plan(
    owner: Mapping[str, Any], observed: Observed, analysis: AnalysisResult | None, now: datetime, *, renderer: Renderer
) -> Plan:
    """What to do for ``owner`` (an InferenceService) in the world ``observed`` at ``now`` (the rollout's clock);
    ``analysis``: the canary's latest judged interval, if any (the rollout counts each once); ``renderer``:
    ``render`` with the operator's settings, or a ``RenderCache`` of it."""
    rendering = renderer(owner)
    isvc, children = rendering.assessment.isvc, rendering.children
    if isvc is None or children is None:  # nothing is applied; the status says why
        return Plan(
            owner=owner,
            rendering=rendering,
            decision=None,
            children=[],
            absent=[],
            scales=[],
            prune=[],
            route=None,
            grpc_route=None,
            route_services=[],
            starting_replicas=None,
            analysis=None,
            requeue_after=None,
            desired=None,
            wanted_deployment=next(iter(observed.deployments), None),
            observed=observed,
        )
    namespace = isvc.namespace
    revisions = live_revisions(isvc.name, observed.deployments)
    wanted, adopted = wanted_revision(children, revisions)
    policy = isvc.spec.rollout
    decision = rollout.decide(
        policy,
        rollout.Wanted(wanted, children.version),
        [revision.as_rollout_revision() for revision in revisions],
        total=isvc.replicas,
        previous=observed.status.get("rollout"),
        analysis=analysis,
        now=now,
    )
    scales = [
        Scale(revision.deployment, decision.replicas[revision.name])
        for revision in revisions
        if revision.name in decision.replicas
        and revision.name not in decision.delete
        and revision.replicas != decision.replicas[revision.name]
    ]
    by_name = {revision.name: revision for revision in revisions}
    prune = [
        ref
        for name in decision.delete
        for ref in manifests.revision_objects(
            namespace, isvc.name, name, legacy=by_name[name].legacy if name in by_name else False
        )
        if ref.kind == "Deployment" or (ref.kind, ref.name) in observed.present
    ]
    routing = policy.traffic_routing
    route = http_route(isvc, routing.gateway_api, decision.route) if routing is not None else None
    serves_grpc = routing is not None and "grpc" in isvc.spec.runtime.protocols
    routed_grpc = grpc_route(isvc, routing.gateway_api, decision.route) if serves_grpc else None
    # A Deployment from before revisions has no Service of its own: the route needs one to send it requests.
    route_services = [
        revision_service(isvc, revision.name)
        for revision in revisions
        if route is not None and revision.legacy and revision.name in decision.route
    ]
    wanted_analysis = (
        AnalysisWanted(policy.analysis, decision.analyze, decision.stable)
        if decision.analyze is not None and policy.analysis is not None
        else None
    )
    desired = status.Desired(
        wanted,
        children.config_hash,
        isvc.model_name,
        children.url,
        isvc.spec.model.version,
        precision=served_precision(isvc),
        memory=memory_check(isvc),
        grpc_address=(
            naming.service_grpc_address(isvc.name, isvc.namespace) if "grpc" in isvc.spec.runtime.protocols else None
        ),
    )
    return Plan(
        owner=owner,
        rendering=rendering,
        decision=decision,
        children=children.with_replicas(decision.replicas.get(wanted, 0), adopted=adopted is not None),
        absent=[ref for ref in children.absent if (ref.kind, ref.name) in observed.present],
        scales=scales,
        prune=prune,
        route=route,
        grpc_route=routed_grpc,
        route_services=route_services,
        starting_replicas=_starting_replicas(isvc),
        analysis=wanted_analysis,
        requeue_after=decision.requeue_after,
        desired=desired,
        wanted_deployment=_deployment(observed, by_name[wanted].deployment) if wanted in by_name else None,
        observed=observed,
    )


def _starting_replicas(isvc: InferenceService) -> int | None:
    """With autoscaling and no spec.replicas, the starting point (minReplicas) to write through the scale
    subresource: an HPA reads an unset spec.replicas as 0, and does not scale a target at 0."""
    autoscaling = isvc.spec.autoscaling
    if autoscaling is None:
        return None
    # Also at 0 under an HPA (after KEDA scaled to zero, say): an HPA would leave it there for ever.
    parked = isvc.spec.replicas == 0 and autoscaling.engine == "hpa"
    return autoscaling.min_replicas if isvc.spec.replicas is None or parked else None


def _deployment(observed: Observed, name: str) -> Mapping[str, Any] | None:
    return next((d for d in observed.deployments if (d.get("metadata") or {}).get("name") == name), None)
