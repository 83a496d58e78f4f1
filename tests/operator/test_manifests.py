"""The pure builders: InferenceService in, child manifests out, each checked against Kubernetes 1.37's schemas."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml
from kubernetes.utils import parse_quantity
from kubeserve.operator import manifests
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.settings import load_settings as load_operator_settings
from kubeserve.operator.spec import parse
from kubeserve.runtime.config import load_settings as load_runtime_settings

SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")


def render(body: dict, settings: OperatorSettings = SETTINGS) -> dict[str, dict]:
    """Every child manifest by kind, each validated against the real Kubernetes OpenAPI schema (strict)."""
    children = manifests.children(parse(body), settings)
    for manifest in children.manifests:
        kubernetes_validate.validate(manifest, "1.37", strict=True)
    rendered: dict[str, dict] = {}
    for manifest in children.manifests:  # the InferenceService's Service as "Service", the revision's after it
        rendered.setdefault(manifest["kind"], manifest)
    return rendered


def pod_spec(rendered: dict[str, dict]) -> dict:
    return rendered["Deployment"]["spec"]["template"]["spec"]


def runtime_container(rendered: dict[str, dict]) -> dict:
    (container,) = pod_spec(rendered)["containers"]
    return container


def runtime_config(rendered: dict[str, dict]) -> dict:
    return yaml.safe_load(rendered["ConfigMap"]["data"]["runtime.yaml"])


def with_uid(body: dict) -> dict:
    body = copy.deepcopy(body)
    body["metadata"].update(uid="0d6a5c1e-0000-4000-8000-000000000001", namespace="ml")
    return body


def test_cpu_sample_serves_the_bundled_model_from_the_image(samples):
    rendered = render(with_uid(samples["isvc-cpu"]))

    assert sorted(rendered) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service"]
    container = runtime_container(rendered)
    assert container["image"] == SETTINGS.cpu_image
    assert container["args"] == ["serve", "--config", "/etc/kubeserve/runtime.yaml"]
    assert "initContainers" not in pod_spec(rendered)  # file:// needs no download
    config = runtime_config(rendered)
    assert config["model_path"] == "/opt/kubeserve/samples/mlp.onnx"
    assert (config["model_name"], config["model_version"], config["device"]) == ("mlp", "1", "cpu")
    assert config["preferred_batch_size"] == [8, 16, 32]
    assert rendered["Deployment"]["spec"]["replicas"] == 1  # no spec.replicas: minReplicas, until the HPA writes
    assert "tolerations" not in pod_spec(rendered)


def test_cpu_sample_autoscales_above_its_batching_window(samples):
    """The first thing a user applies shows autoscaling: one to four pods, a target above the batcher's own wait."""
    sample = samples["isvc-cpu"]
    hpa = render(with_uid(sample))["HorizontalPodAutoscaler"]["spec"]

    assert "replicas" not in sample["spec"]  # the HPA's
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    (metric,) = hpa["metrics"]
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "10000"}  # 10 ms, in microseconds
    window = sample["spec"]["batching"]["maxQueueDelayMicroseconds"]
    assert parse_quantity(metric["pods"]["target"]["averageValue"]) > window


def test_runtime_config_is_accepted_by_the_runtime_itself(samples, tmp_path):
    for name in ("isvc-cpu", "isvc-gpu", "isvc-tabular", "isvc-image"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(render(with_uid(samples[name]))["ConfigMap"]["data"]["runtime.yaml"])
        settings = load_runtime_settings({}, {}, path)
        assert settings.port == 8080


def test_gpu_sample_gets_the_cuda_image_a_toleration_a_download_and_an_hpa(samples):
    rendered = render(with_uid(samples["isvc-gpu"]))

    container = runtime_container(rendered)
    assert container["image"] == SETTINGS.cuda_image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert runtime_config(rendered)["device"] == "cuda"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod_spec(rendered)["tolerations"]
    assert pod_spec(rendered)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}

    (fetch,) = pod_spec(rendered)["initContainers"]
    assert fetch["image"] == SETTINGS.cuda_image
    assert fetch["command"] == ["kubeserve-runtime"]
    assert fetch["args"] == [
        "fetch",
        "https://models.example.com/resnet50/2024-06-01/model.onnx",
        "/models/model.onnx",
    ]
    assert "nvidia.com/gpu" not in str(fetch.get("resources"))  # the download needs no GPU
    assert runtime_config(rendered)["model_path"] == "/models/model.onnx"
    models = {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}["models"]
    assert models == {"name": "models", "emptyDir": {}}

    hpa = rendered["HorizontalPodAutoscaler"]["spec"]
    # The HPA scales the InferenceService (its scale subresource), never the Deployment behind the operator's back.
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "serving.kubeserve.io/v1alpha1",
        "kind": "InferenceService",
        "name": "resnet",
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 8)
    assert hpa["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                # Microseconds: 0.02 s. The HPA reads whole milli-units, so seconds would round to 1 ms.
                "metric": {"name": "kubeserve_queue_delay_microseconds"},
                "target": {"type": "AverageValue", "averageValue": "20000"},
            },
        }
    ]
    assert hpa["behavior"] == {
        "scaleDown": {
            "stabilizationWindowSeconds": 300,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        }
    }
    assert rendered["Deployment"]["spec"]["replicas"] == 1  # no spec.replicas yet: minReplicas, until the HPA writes


def test_pods_are_locked_down_and_drain_gracefully(samples):
    rendered = render(with_uid(samples["isvc-cpu"]))
    spec, container = pod_spec(rendered), runtime_container(rendered)

    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"

    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = runtime_config(rendered)["drain_timeout_seconds"]
    assert spec["terminationGracePeriodSeconds"] > pause + drain
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # the default startup timeout
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8001, "protocol": "TCP"},
    ]


def test_pods_are_scraped_labelled_and_selected_by_the_inference_service_only(samples):
    rendered = render(with_uid(samples["isvc-cpu"]))
    template = rendered["Deployment"]["spec"]["template"]["metadata"]

    assert template["annotations"]["prometheus.io/scrape"] == "true"
    assert template["annotations"]["prometheus.io/port"] == "8080"
    assert template["annotations"]["prometheus.io/path"] == "/metrics"
    revision = template["labels"]["serving.kubeserve.io/revision"]
    assert re.fullmatch(r"1-[0-9a-f]{6}", revision)  # the version, and a digest of what makes the revision
    assert template["labels"] == {
        "app.kubernetes.io/name": "kubeserve-runtime",
        "app.kubernetes.io/instance": "mlp",
        "app.kubernetes.io/managed-by": "kubeserve",
        "serving.kubeserve.io/inferenceservice": "mlp",
        "serving.kubeserve.io/revision": revision,
        "serving.kubeserve.io/version": "1",
    }
    # The InferenceService's Service spans every revision; the revision's Service and Deployment only this one.
    service = rendered["Service"]["spec"]
    assert service["selector"] == {"serving.kubeserve.io/inferenceservice": "mlp"}
    assert service["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]
    own = {"serving.kubeserve.io/inferenceservice": "mlp", "serving.kubeserve.io/revision": revision}
    children = manifests.children(parse(with_uid(samples["isvc-cpu"])), SETTINGS)
    (revision_service,) = [m for m in children.revision_objects() if m["kind"] == "Service"]
    assert revision_service["metadata"]["name"] == f"mlp-{revision}"
    assert revision_service["spec"]["selector"] == own
    assert rendered["Deployment"]["spec"]["selector"] == {"matchLabels": own}
    assert rendered["Deployment"]["metadata"]["name"] == rendered["ConfigMap"]["metadata"]["name"] == f"mlp-{revision}"


def test_every_child_is_owned_by_the_inference_service(samples):
    for manifest in render(with_uid(samples["isvc-gpu"])).values():
        assert manifest["metadata"]["namespace"] == "ml"
        assert manifest["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "serving.kubeserve.io/v1alpha1",
                "kind": "InferenceService",
                "name": "resnet",
                "uid": "0d6a5c1e-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_a_config_change_rolls_the_pods_and_the_same_spec_renders_the_same(isvc_factory):
    def config_hash(body: dict) -> str:
        return render(body)["Deployment"]["spec"]["template"]["metadata"]["annotations"][
            "serving.kubeserve.io/config-hash"
        ]

    base = isvc_factory()
    assert render(base) == render(copy.deepcopy(base))
    assert config_hash(base) != config_hash(isvc_factory(batching={"maxQueueDelayMicroseconds": 500}))
    assert config_hash(base) != config_hash(isvc_factory(model={"version": "2", "uri": "file:///m.onnx"}))


def test_a_pvc_model_is_mounted_read_only_without_a_download(isvc_factory):
    rendered = render(isvc_factory(model={"version": "3", "uri": "pvc://model-store/team-a/resnet/model.onnx"}))

    assert "initContainers" not in pod_spec(rendered)
    models = {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}["models"]
    assert models["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in runtime_container(rendered)["volumeMounts"]
    assert runtime_config(rendered)["model_path"] == "/models/team-a/resnet/model.onnx"


def test_an_s3_model_is_fetched_with_the_credentials_secret(isvc_factory):
    rendered = render(
        isvc_factory(model={"version": "1", "uri": "s3://models/mlp/model.onnx", "credentialsSecret": "s3-creds"})
    )

    (fetch,) = pod_spec(rendered)["initContainers"]
    assert fetch["args"] == ["fetch", "s3://models/mlp/model.onnx", "/models/model.onnx"]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "envFrom" not in runtime_container(rendered)  # the runtime never sees the credentials
    assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    assert fetch["securityContext"]["readOnlyRootFilesystem"] is True


def test_scheduling_fields_env_and_identity_pass_through(isvc_factory):
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
            }
        }
    }
    rendered = render(
        isvc_factory(
            runtime={
                "image": "mirror.example/kubeserve-runtime:pinned",
                "imagePullPolicy": "Always",
                "imagePullSecrets": [{"name": "mirror"}],
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                "affinity": affinity,
                "runtimeClassName": "gvisor",
                "priorityClassName": "serving-high",
                "serviceAccountName": "model-reader",
                "env": [
                    {"name": "KUBESERVE_ACCESS_LOG", "value": "true"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "hf"}}},
                ],
            }
        )
    )
    spec, container = pod_spec(rendered), runtime_container(rendered)

    assert (container["image"], container["imagePullPolicy"]) == ("mirror.example/kubeserve-runtime:pinned", "Always")
    assert spec["imagePullSecrets"] == [{"name": "mirror"}]
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert spec["affinity"] == affinity
    assert (spec["runtimeClassName"], spec["priorityClassName"]) == ("gvisor", "serving-high")
    assert (spec["serviceAccountName"], spec["automountServiceAccountToken"]) == ("model-reader", True)
    assert container["env"] == [
        {"name": "KUBESERVE_ACCESS_LOG", "value": "true"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tokens", "key": "hf"}}},
    ]


def test_a_gpu_pod_keeps_a_users_own_gpu_toleration(isvc_factory):
    toleration = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}
    rendered = render(
        isvc_factory(runtime={"resources": {"limits": {"nvidia.com/gpu": 2}}, "tolerations": [toleration]})
    )

    assert pod_spec(rendered)["tolerations"] == [toleration]
    assert runtime_container(rendered)["image"] == SETTINGS.cuda_image


def test_removing_autoscaling_asks_for_the_hpa_to_go(isvc_factory):
    without = manifests.children(parse(isvc_factory(replicas=3)), SETTINGS)
    with_hpa = manifests.children(parse(isvc_factory(autoscaling={"maxReplicas": 3})), SETTINGS)

    # Neither KEDA's objects nor (without a traffic router) an HTTPRoute or a GRPCRoute may exist either.
    others = [("ScaledObject", "mlp"), ("InterceptorRoute", "mlp"), ("Service", "mlp-proxy"), ("HTTPRoute", "mlp")]
    others.append(("GRPCRoute", "mlp"))
    assert [(ref.kind, ref.name) for ref in without.absent] == [("HorizontalPodAutoscaler", "mlp"), *others]
    assert [(ref.kind, ref.name) for ref in with_hpa.absent] == others
    assert {manifest["kind"]: manifest for manifest in without.manifests}["Deployment"]["spec"]["replicas"] == 3


@pytest.mark.parametrize(
    ("seconds", "microseconds"),
    [(0.05, "50000"), (1.0, "1000000"), (0.0025, "2500"), (12.5, "12500000"), (0.0013, "1300"), (0.0000015, "1.5")],
)
def test_the_queue_delay_target_is_a_plain_quantity_in_microseconds(isvc_factory, seconds, microseconds):
    rendered = render(isvc_factory(autoscaling={"maxReplicas": 2, "targetQueueDelaySeconds": seconds}))
    target = rendered["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
    assert target == microseconds
    # The HPA reads a quantity as whole milli-units, rounding up: in microseconds none of these targets is rounded
    # (in seconds, 1.3 ms would have read as 2 ms).
    assert (parse_quantity(target) * 1000) % 1 == 0


@pytest.mark.parametrize(
    ("spec", "replicas"),
    [
        ({}, 1),
        ({"replicas": 3}, 3),
        ({"replicas": 0}, 0),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}}, 2),
        # What the HPA (or `kubectl scale`) wrote through the scale subresource, with autoscaling on.
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 6}, "replicas": 5}, 5),
    ],
)
def test_the_deployment_always_runs_the_inference_services_replica_count(isvc_factory, spec, replicas):
    rendered = render(isvc_factory(**spec))
    assert rendered["Deployment"]["spec"]["replicas"] == replicas


def test_the_hpa_targets_the_scale_subresource_of_its_own_inference_service(isvc_factory, crd):
    rendered = render(with_uid(isvc_factory(name="other", autoscaling={"maxReplicas": 3})))
    target = rendered["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    owner = rendered["HorizontalPodAutoscaler"]["metadata"]["ownerReferences"][0]
    assert (target["apiVersion"], target["kind"], target["name"]) == (owner["apiVersion"], owner["kind"], "other")
    assert target["kind"] == crd["spec"]["names"]["kind"]
    assert "scale" in crd["spec"]["versions"][0]["subresources"]


# --- Files beside the model: graphs composed with it, labels, image inputs, handler code -------------------------

BESIDE = {
    "version": "1",
    "uri": "https://models.example.com/fraud/model.onnx",
    "preprocessing": "https://models.example.com/fraud/preprocessing.onnx",
    "postprocessing": "pvc://shared-graphs/fraud/postprocessing.onnx",
    "labels": "s3://models/fraud/labels.txt",
    "handler": {"class": "fraud.handlers:Explain", "uri": "s3://models/fraud/handler.tar.gz"},
    "credentialsSecret": "s3-creds",
    "inputs": [{"name": "photo", "image": {"resize": [224, 224], "channelOrder": "BGR", "mean": [0.4, 0.5, 0.6]}}],
}


def init_containers(rendered: dict[str, dict]) -> dict[str, dict]:
    return {container["name"]: container for container in pod_spec(rendered).get("initContainers", [])}


def volumes(rendered: dict[str, dict]) -> dict[str, dict]:
    return {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}


def test_the_tabular_sample_composes_its_preprocessing_from_the_image(samples):
    rendered = render(with_uid(samples["isvc-tabular"]))

    assert list(init_containers(rendered)) == ["optimize-model"]  # no download: both graphs are in the image
    optimize = init_containers(rendered)["optimize-model"]
    assert optimize["args"][:3] == ["optimize", "/opt/kubeserve/samples/tabular/model.onnx", "/optimized/model.onnx"]
    assert optimize["args"][optimize["args"].index("--preprocessing") + 1] == (
        "/opt/kubeserve/samples/tabular/preprocessing.onnx"
    )
    assert "--postprocessing" not in optimize["args"]
    assert "--precompile" not in optimize["args"]  # composing asks for nothing else
    assert runtime_config(rendered)["model_path"] == "/optimized/model.onnx"
    assert "models" not in volumes(rendered)


def test_files_beside_the_model_are_fetched_into_models_by_the_one_fetch_container(isvc_factory):
    rendered = render(isvc_factory(model=copy.deepcopy(BESIDE)))

    assert list(init_containers(rendered)) == ["fetch-model", "optimize-model"]
    fetch, optimize = init_containers(rendered).values()
    assert fetch["args"] == [
        "fetch",
        "https://models.example.com/fraud/model.onnx",
        "/models/model.onnx",
        "https://models.example.com/fraud/preprocessing.onnx",
        "/models/preprocessing.onnx",
        "pvc://shared-graphs/fraud/postprocessing.onnx",
        "/models/postprocessing.onnx",
        "s3://models/fraud/labels.txt",
        "/models/labels.txt",
        "--unpack",
        "s3://models/fraud/handler.tar.gz",
        "/models/handler",
    ]
    assert fetch["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    # A claim's file is copied from where the fetch reads claims (--pvc-root), mounted read-only for it alone.
    assert {"name": "claim-0", "mountPath": "/mnt/pvc/shared-graphs", "readOnly": True} in fetch["volumeMounts"]
    assert volumes(rendered)["claim-0"]["persistentVolumeClaim"] == {"claimName": "shared-graphs", "readOnly": True}
    assert all(mount["name"] != "claim-0" for mount in runtime_container(rendered)["volumeMounts"])
    assert volumes(rendered)["models"] == {"name": "models", "emptyDir": {}}
    # The graphs are composed from where the fetch put them.
    args = optimize["args"]
    assert args[:3] == ["optimize", "/models/model.onnx", "/optimized/model.onnx"]
    assert args[args.index("--preprocessing") + 1] == "/models/preprocessing.onnx"
    assert args[args.index("--postprocessing") + 1] == "/models/postprocessing.onnx"
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in optimize["volumeMounts"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in runtime_container(rendered)["volumeMounts"]


def test_the_spec_beside_the_model_maps_to_the_runtimes_settings(isvc_factory):
    config = runtime_config(
        render(
            isvc_factory(
                model=copy.deepcopy(BESIDE), runtime={"preprocessTimeoutSeconds": 2.5, "postprocessTimeoutSeconds": 10}
            )
        )
    )

    assert config["model_path"] == "/optimized/model.onnx"
    assert config["labels_path"] == "/models/labels.txt"
    assert config["image_inputs"] == {
        "photo": {"resize": [224, 224], "layout": "NCHW", "channel_order": "BGR", "mean": [0.4, 0.5, 0.6]}
    }
    assert (config["handler"], config["handler_path"]) == ("fraud.handlers:Explain", "/models/handler")
    assert (config["preprocess_timeout_seconds"], config["postprocess_timeout_seconds"]) == (2.5, 10)


def test_the_rendered_config_beside_the_model_is_accepted_by_the_runtime_itself(isvc_factory, tmp_path):
    path = tmp_path / "runtime.yaml"
    path.write_text(render(isvc_factory(model=copy.deepcopy(BESIDE)))["ConfigMap"]["data"]["runtime.yaml"])

    settings = load_runtime_settings({}, {}, path)

    assert str(settings.labels_path) == "/models/labels.txt"
    assert settings.image_inputs["photo"].channel_order == "BGR"
    assert (settings.handler, str(settings.handler_path)) == ("fraud.handlers:Explain", "/models/handler")


def test_a_model_on_a_claim_is_copied_beside_fetched_files(isvc_factory):
    model = {"version": "1", "uri": "pvc://model-store/fraud/model.onnx", "labels": "https://h/labels.txt"}
    rendered = render(isvc_factory(model=model))

    (fetch,) = init_containers(rendered).values()
    assert fetch["args"] == [
        "fetch",
        "pvc://model-store/fraud/model.onnx",
        "/models/model.onnx",
        "https://h/labels.txt",
        "/models/labels.txt",
    ]
    assert {"name": "claim-0", "mountPath": "/mnt/pvc/model-store", "readOnly": True} in fetch["volumeMounts"]
    assert volumes(rendered)["models"] == {"name": "models", "emptyDir": {}}
    assert runtime_config(rendered)["model_path"] == "/models/model.onnx"


def test_files_in_the_image_leave_a_model_on_a_claim_mounted_and_a_handler_from_the_image_fetches_nothing(
    isvc_factory,
):
    model = {
        "version": "1",
        "uri": "pvc://model-store/fraud/model.onnx",
        "postprocessing": "file:///opt/fraud/postprocessing.onnx",
        "labels": "file:///opt/fraud/labels.txt",
        "handler": {"class": "fraud.handlers:Explain"},
    }
    rendered = render(isvc_factory(model=model))

    (optimize,) = init_containers(rendered).values()
    assert optimize["args"][optimize["args"].index("--postprocessing") + 1] == "/opt/fraud/postprocessing.onnx"
    assert volumes(rendered)["models"]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    config = runtime_config(rendered)
    assert (config["labels_path"], config["handler"]) == ("/opt/fraud/labels.txt", "fraud.handlers:Explain")
    assert "handler_path" not in config  # the code is in the image (one built FROM the runtime's)


def test_what_goes_beside_the_model_makes_a_revision_and_the_timeouts_default_makes_none(isvc_factory):
    def revision(**spec) -> str:
        return manifests.children(parse(isvc_factory(**spec)), SETTINGS).revision

    plain = {"version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx"}
    base = revision(model=plain)

    assert revision(model={**plain, "preprocessing": "file:///opt/pre.onnx"}) != base
    assert revision(model={**plain, "labels": "file:///opt/labels.txt"}) != base
    # What the API server fills in is what the operator assumed before: no new revision.
    assert revision(model=plain, runtime={"preprocessTimeoutSeconds": 30, "postprocessTimeoutSeconds": 30}) == base
    assert revision(model=plain, runtime={"preprocessTimeoutSeconds": 5}) != base


# --- Tracing: the operator's OTEL_* variables, passed on -------------------------------------------------------

IMAGES = {"KUBESERVE_OPERATOR_CPU_IMAGE": SETTINGS.cpu_image, "KUBESERVE_OPERATOR_CUDA_IMAGE": SETTINGS.cuda_image}
TRACING = {
    **IMAGES,
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector.observability:4318",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.25",
}


def test_the_operators_otel_variables_reach_the_runtime_with_a_service_and_resource_per_inference_service(
    isvc_factory, monkeypatch
):
    from kubeserve.runtime.server.lifecycle import tracing_configured
    from opentelemetry.sdk.resources import OTELResourceDetector

    rendered = render(isvc_factory(name="fraud", namespace="risk", model={"version": "2024.06", "uri": "file:///m"}),
                      load_operator_settings(TRACING))  # fmt: skip
    env = runtime_container(rendered)["env"]

    assert env == [
        {"name": "OTEL_RESOURCE_ATTRIBUTES_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector.observability:4318"},
        {"name": "OTEL_RESOURCE_ATTRIBUTES",
         "value": "k8s.namespace.name=risk,k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),service.version=2024.06"},
        {"name": "OTEL_SERVICE_NAME", "value": "fraud"},
        {"name": "OTEL_TRACES_SAMPLER", "value": "parentbased_traceidratio"},
        {"name": "OTEL_TRACES_SAMPLER_ARG", "value": "0.25"},
    ]  # fmt: skip
    # What the runtime's SDK makes of it, once the kubelet has put the pod's name in.
    values = {var["name"]: var.get("value", "fraud-2024-06-abc-x1y2z") for var in env}
    values = {name: value.replace("$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME)", "fraud-2024-06-abc-x1y2z")
              for name, value in values.items()}  # fmt: skip
    assert tracing_configured(values)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert dict(OTELResourceDetector().detect().attributes) == {
        "service.name": "fraud",
        "service.version": "2024.06",
        "k8s.namespace.name": "risk",
        "k8s.pod.name": "fraud-2024-06-abc-x1y2z",
    }


def test_the_spec_overrides_the_tracing_defaults(isvc_factory):
    own = [{"name": "OTEL_TRACES_SAMPLER_ARG", "value": "1"}, {"name": "KUBESERVE_ACCESS_LOG", "value": "true"}]
    env = runtime_container(render(isvc_factory(runtime={"env": own}), load_operator_settings(TRACING)))["env"]

    assert [var["name"] for var in env].count("OTEL_TRACES_SAMPLER_ARG") == 1
    assert env[-2:] == own  # the spec's own last, as they were


# What the OpenTelemetry Operator injects into the operator's own pod, beside the exporter settings.
INJECTED = {
    "OTEL_SERVICE_NAME": "kubeserve-operator",
    "OTEL_RESOURCE_ATTRIBUTES_POD_NAME": "kubeserve-operator-7d9f8-abcde",
    "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=$(OTEL_RESOURCE_ATTRIBUTES_POD_NAME),k8s.namespace.name=kubeserve",
    "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer secret",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=secret",
    "OTEL_BSP_SCHEDULE_DELAY": "500",
}


def test_the_operators_identity_and_secrets_never_reach_the_runtime_nor_its_revision(isvc_factory):
    settings = load_operator_settings({**TRACING, **INJECTED})
    env = runtime_container(render(isvc_factory(name="fraud"), settings))["env"]
    values = {var["name"]: var.get("value") for var in env}

    assert values["OTEL_SERVICE_NAME"] == "fraud"
    assert values["OTEL_RESOURCE_ATTRIBUTES"].startswith("k8s.namespace.name=")
    assert "kubeserve-operator" not in str(env)
    assert "secret" not in str(env)
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in values
    assert values["OTEL_BSP_SCHEDULE_DELAY"] == "500"
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == TRACING["OTEL_EXPORTER_OTLP_ENDPOINT"]

    def revision(environ: dict[str, str]) -> str:
        return manifests.children(parse(isvc_factory()), load_operator_settings(environ)).revision

    restarted = {**INJECTED, "OTEL_RESOURCE_ATTRIBUTES_POD_NAME": "kubeserve-operator-7d9f8-zzzzz"}
    assert revision({**TRACING, **INJECTED}) == revision({**TRACING, **restarted})
    injected_only = {name: value for name, value in INJECTED.items() if not name.startswith("OTEL_BSP_")}
    assert revision({**TRACING, **injected_only}) == revision(TRACING)


def test_tracing_makes_a_revision_and_an_operator_without_otel_variables_keeps_the_ones_it_had(isvc_factory):
    def revision(settings: OperatorSettings) -> str:
        return manifests.children(parse(isvc_factory()), settings).revision

    without = load_operator_settings({**IMAGES, "KUBESERVE_PORT": "tcp://10.0.0.1:80"})
    assert without.otel_env == {}
    assert revision(without) == revision(SETTINGS)
    assert "env" not in runtime_container(render(isvc_factory(), without))
    assert revision(load_operator_settings(TRACING)) != revision(SETTINGS)
