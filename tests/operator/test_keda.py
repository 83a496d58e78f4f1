"""Autoscaling engine keda: a ScaledObject on the queue delay, and scale to zero through the KEDA HTTP add-on.

Every rendered object is validated against its schema: KEDA's own CRDs (vendored in ``schemas/``, with their CEL
rules) for the ScaledObject and the InterceptorRoute, Kubernetes' own for the rest.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubeserve.operator import manifests
from kubeserve.operator.manifests.keda import PROMETHEUS_ISVC_LABEL
from kubeserve.operator.plan import assess
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.status import KEDA_METRIC_NOT_AVAILABLE, autoscaler_view

PROMETHEUS = "http://prometheus.monitoring.svc:9090"
SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")
KEDA = {"engine": "keda", "maxReplicas": 4, "targetQueueDelaySeconds": 0.01, "keda": {"serverAddress": PROMETHEUS}}
NS = "ml"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"
HPAS = "autoscaling/v2/horizontalpodautoscalers"
SCALED_OBJECTS = "keda.sh/v1alpha1/scaledobjects"
INTERCEPTOR_ROUTES = "http.keda.sh/v1beta1/interceptorroutes"
SERVICES = "v1/services"
ISVC_PATH = f"/apis/serving.kubeserve.io/v1alpha1/namespaces/{NS}/inferenceservices"


@pytest.fixture
def render(crd_schemas, isvc_factory):
    """The children of an InferenceService with these autoscaling settings, each validated, by kind and name."""

    def rendered(autoscaling: dict[str, Any], settings: OperatorSettings = SETTINGS, **spec: Any) -> Any:
        assessment = assess(isvc_factory(autoscaling=autoscaling, **spec), settings)
        assert assessment.problems == []
        plan = manifests.children(assessment.isvc, settings)
        for manifest in plan.manifests:
            if manifest["kind"] in crd_schemas:
                assert crd_schemas[manifest["kind"]].errors(manifest) == [], manifest
            else:
                kubernetes_validate.validate(manifest, "1.37", strict=True)
        return plan, {(m["kind"], m["metadata"]["name"]): m for m in plan.manifests}

    return rendered


def test_engine_keda_renders_a_scaled_object_on_the_queue_delay_instead_of_an_hpa(render):
    plan, children = render({**KEDA, "minReplicas": 2})
    _, with_hpa = render({key: value for key, value in KEDA.items() if key not in ("engine", "keda")})

    revision = f"mlp-{plan.revision}"
    assert sorted(children) == [
        ("ConfigMap", revision),
        ("Deployment", revision),
        ("ScaledObject", "mlp"),
        ("Service", "mlp"),
        ("Service", revision),
    ]
    assert ("HorizontalPodAutoscaler", "mlp") in [(ref.kind, ref.name) for ref in plan.absent]
    spec = children["ScaledObject", "mlp"]["spec"]
    # It scales the InferenceService through its scale subresource, as the HPA does.
    assert spec["scaleTargetRef"] == with_hpa["HorizontalPodAutoscaler", "mlp"]["spec"]["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 4)
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (15, 300)  # the CRD's defaults
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata["serverAddress"] == PROMETHEUS
    # The same target as the HPA's, in the same unit (microseconds per pod: KEDA's HPA averages the total).
    hpa_target = with_hpa["HorizontalPodAutoscaler", "mlp"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert metadata["threshold"] == hpa_target == "10000"
    assert metadata["activationThreshold"] == "0"
    # Only this InferenceService's pods, by the label Prometheus gives their series.
    assert f'namespace="{NS}",{PROMETHEUS_ISVC_LABEL}="mlp"' in metadata["query"]
    assert PROMETHEUS_ISVC_LABEL == "serving_kubeserve_io_inferenceservice"
    assert "advanced" not in spec
    assert plan.url == "http://mlp.ml.svc.cluster.local"


def test_scale_to_zero_routes_callers_through_the_http_add_ons_interceptor(render):
    plan, children = render({**KEDA, "minReplicas": 0})

    route = children["InterceptorRoute", "mlp"]["spec"]
    service = children["Service", "mlp"]
    # The add-on forwards to the InferenceService's own Service, on its port.
    assert route["target"] == {"service": "mlp", "port": service["spec"]["ports"][0]["port"]}
    # Callers use status.url: NAME-proxy, an ExternalName for the interceptor, on the interceptor's port; the
    # interceptor routes on the Host header, which is that URL's host.
    proxy = children["Service", "mlp-proxy"]["spec"]
    assert proxy == {
        "type": "ExternalName",
        "externalName": "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local",
    }
    assert plan.url == "http://mlp-proxy.ml.svc.cluster.local:8080"
    (rule,) = route["rules"]
    assert "mlp-proxy.ml.svc.cluster.local" in rule["hosts"]
    # The add-on's scaler is the second trigger: active while requests wait at the interceptor, it wakes the
    # InferenceService from zero, where no pod exports a queue delay.
    queue_delay, cold_start = children["ScaledObject", "mlp"]["spec"]["triggers"]
    assert queue_delay["type"] == "prometheus"
    assert cold_start == {
        "type": "external-push",
        "name": "cold-start",
        "metadata": {"scalerAddress": SETTINGS.keda_http_scaler, "interceptorRoute": "mlp"},
    }
    assert children["ScaledObject", "mlp"]["spec"]["minReplicaCount"] == 0
    # No pods until KEDA sees traffic: nothing else writes spec.replicas, so the operator starts at minReplicas.
    assert children["Deployment", f"mlp-{plan.revision}"]["spec"]["replicas"] == 0


def test_keda_settings_and_behavior_reach_the_scaled_object(render):
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 60}}
    keda = {"serverAddress": PROMETHEUS, "activationQueueDelaySeconds": 0.0025, "pollingIntervalSeconds": 5}
    _, children = render({**KEDA, "keda": {**keda, "cooldownPeriodSeconds": 30}, "behavior": behavior})

    spec = children["ScaledObject", "mlp"]["spec"]
    assert (spec["pollingInterval"], spec["cooldownPeriod"]) == (5, 30)
    assert spec["triggers"][0]["metadata"]["activationThreshold"] == "2500"  # microseconds, as the threshold
    # KEDA creates the HPA; the behavior goes to it.
    assert spec["advanced"] == {"horizontalPodAutoscalerConfig": {"behavior": behavior}}


def test_the_operators_prometheus_is_the_default_and_without_one_the_spec_says_so(render, isvc_factory):
    autoscaling = {"engine": "keda", "maxReplicas": 4}
    problems = assess(isvc_factory(autoscaling=autoscaling), SETTINGS).problems
    default = SETTINGS.model_copy(update={"prometheus_server_address": PROMETHEUS})
    _, children = render(autoscaling, default)

    assert problems == [
        "spec.autoscaling.keda.serverAddress: engine keda queries Prometheus, and the operator has no default one: "
        "name it here, or set the chart value keda.prometheusServerAddress"
    ]
    assert children["ScaledObject", "mlp"]["spec"]["triggers"][0]["metadata"]["serverAddress"] == PROMETHEUS


def test_status_shows_kedas_hpa_and_why_it_cannot_scale():
    # KEDA's HPA reads the trigger as an External metric s0-prometheus, averaged per pod (1300.5 µs here).
    reading = {
        "type": "External",
        "external": {"metric": {"name": "s0-prometheus"}, "current": {"averageValue": "1300500m"}},
    }
    working = {"currentReplicas": 2, "desiredReplicas": 3, "currentMetrics": [reading]}
    failing = {
        "type": "ScalingActive",
        "status": "False",
        "reason": "FailedGetExternalMetric",
        "message": "the HPA was unable to compute the replica count: unable to get external metric",
    }

    assert autoscaler_view({"status": working}) == {
        "currentReplicas": 2,
        "desiredReplicas": 3,
        "currentQueueDelay": "0.0013005",
    }
    view = autoscaler_view({"status": {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [failing]}})
    assert view["message"] == f"{KEDA_METRIC_NOT_AVAILABLE} The HPA says: FailedGetExternalMetric: {failing['message']}"


@pytest.mark.looptime
async def test_switching_engines_swaps_the_autoscaling_objects(api, run_operator, eventually, objects, isvc_factory):
    scale_to_zero = {**KEDA, "minReplicas": 0}
    async with run_operator():
        await api.create(ISVC_PATH, isvc_factory(autoscaling=scale_to_zero))
        await eventually(lambda: objects(SCALED_OBJECTS, NS, "mlp") and objects(SERVICES, NS, "mlp-proxy"))
        assert objects(INTERCEPTOR_ROUTES, NS, "mlp") is not None
        assert objects(HPAS, NS, "mlp") is None
        await eventually(
            lambda: objects(ISVCS, NS, "mlp")["status"]["url"].endswith("mlp-proxy.ml.svc.cluster.local:8080")
        )

        # Deleted behind the operator's back: back from the watch event.
        await api.delete(f"/apis/keda.sh/v1alpha1/namespaces/{NS}/scaledobjects/mlp")
        await eventually(lambda: objects(SCALED_OBJECTS, NS, "mlp"), within=1)

        # To the HPA: KEDA's objects go, the HPA comes, the URL is the Service's again.
        to_hpa = {"engine": "hpa", "keda": None, "minReplicas": 1}
        await api.patch(f"{ISVC_PATH}/mlp", {"spec": {"autoscaling": to_hpa}})
        await eventually(lambda: objects(HPAS, NS, "mlp") and objects(SCALED_OBJECTS, NS, "mlp") is None)
        await eventually(
            lambda: objects(INTERCEPTOR_ROUTES, NS, "mlp") is None and objects(SERVICES, NS, "mlp-proxy") is None
        )
        await eventually(lambda: objects(ISVCS, NS, "mlp")["status"]["url"] == "http://mlp.ml.svc.cluster.local")
        # KEDA had scaled it to zero (spec.replicas 0): an HPA would leave it there, so the operator starts it at
        # minReplicas.
        await eventually(lambda: objects(ISVCS, NS, "mlp")["spec"]["replicas"] == 1)


async def test_objects_no_longer_wanted_go_before_the_new_ones_are_applied():
    # KEDA's admission webhook refuses a ScaledObject for a target an HPA still scales: the HPA must go first.
    from kubeserve.operator.apply import apply_children
    from kubeserve.operator.object_ref import ObjectRef

    calls: list[tuple[str, str]] = []

    class Recording:
        async def apply(self, manifest: dict) -> None:
            calls.append(("apply", manifest["kind"]))

        async def delete(self, ref: ObjectRef) -> bool:
            calls.append(("delete", ref.kind))
            return True

    hpa = ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", NS, "mlp")
    scaled_object = {"kind": "ScaledObject", "metadata": {"name": "mlp"}}
    await apply_children(Recording(), [scaled_object], [hpa], applied=set())  # type: ignore[arg-type]
    assert calls == [("delete", "HorizontalPodAutoscaler"), ("apply", "ScaledObject")]
