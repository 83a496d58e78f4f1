"""spec.model.optimization: what the API server and the operator accept, the pods it renders (an optimize init
container, the runtime loading the optimized file, TensorRT's engine cache), and the revision it makes."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubeserve.operator import manifests, naming
from kubeserve.operator import spec as spec_module
from kubeserve.operator.plan import assess
from kubeserve.operator.runtime_config import served_precision
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import SpecError, parse
from kubeserve.runtime.config import RuntimeSettings

SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")
GPU = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
URIS = {
    "fetch": "https://models.example.com/mlp/model.onnx",
    "pvc": "pvc://models/mlp/model.onnx",
    "image": "file:///opt/kubeserve/samples/mlp.onnx",
}
ORIGINALS = {"fetch": "/models/model.onnx", "pvc": "/models/mlp/model.onnx", "image": "/opt/kubeserve/samples/mlp.onnx"}


def body(isvc_factory, optimization: dict[str, Any] | None, *, uri: str = URIS["image"], **spec: Any) -> dict:
    made = isvc_factory(**spec)
    made["spec"]["model"]["uri"] = uri
    if optimization is not None:
        made["spec"]["model"]["optimization"] = copy.deepcopy(optimization)
    return made


def render(made: dict) -> dict[str, dict]:
    """The children by kind (the revision's Service after the InferenceService's), each valid for Kubernetes."""
    children = manifests.children(parse(made), SETTINGS)
    rendered: dict[str, dict] = {}
    for manifest in children.manifests:
        kubernetes_validate.validate(manifest, "1.37", strict=True)
        rendered.setdefault(manifest["kind"], manifest)
    return rendered


def pod_spec(rendered: dict[str, dict]) -> dict:
    return rendered["Deployment"]["spec"]["template"]["spec"]


def config(rendered: dict[str, dict]) -> dict:
    return yaml.safe_load(rendered["ConfigMap"]["data"][naming.CONFIG_FILE])


def mounts(container: dict) -> dict[str, dict]:
    return {mount["mountPath"]: mount for mount in container["volumeMounts"]}


# --- what is accepted ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("optimization", "runtime"),
    [
        ({}, {}),
        ({"quantization": "dynamicInt8"}, {}),
        ({"quantization": "dynamicInt8", "precompile": True}, {}),
        ({"executionProvider": "cuda"}, GPU),
        ({"executionProvider": "tensorrt", "tensorrtPrecision": "fp16"}, GPU),
        ({"executionProvider": "tensorrt", "quantization": "dynamicInt8"}, {**GPU, "device": "auto"}),
    ],
)
def test_valid_optimizations_are_accepted_by_both(crd_validator, isvc_factory, optimization, runtime):
    made = body(isvc_factory, optimization, runtime=copy.deepcopy(runtime))
    assert crd_validator.errors(made) == []
    assert assess(made).problems == []


def test_the_api_server_defaults_an_optimization_block_but_adds_none(crd_validator, isvc_factory):
    assert "optimization" not in crd_validator.defaulted(isvc_factory())["spec"]["model"]
    defaulted = crd_validator.defaulted(body(isvc_factory, {"precompile": True}))
    assert defaulted["spec"]["model"]["optimization"] == {"quantization": "none", "precompile": True}


# (case, optimization, runtime, where, message): the CRD's CEL rules on spec, and the operator's same words.
ON_SPEC = [
    (
        "tensorrt without a GPU",
        {"executionProvider": "tensorrt"},
        {},
        spec_module.MSG_PROVIDER_NEEDS_GPU,
    ),
    ("cuda without a GPU", {"executionProvider": "cuda"}, {"resources": {"limits": {"cpu": 2}}}, None),
    ("tensorrt on device cpu", {"executionProvider": "tensorrt"}, {**GPU, "device": "cpu"}, None),
]


@pytest.mark.parametrize(("optimization", "runtime", "message"), [c[1:] for c in ON_SPEC], ids=[c[0] for c in ON_SPEC])
def test_an_execution_provider_needs_a_gpu_in_the_crd_and_the_operator_alike(
    crd_validator, isvc_factory, optimization, runtime, message
):
    made = body(isvc_factory, optimization, runtime=copy.deepcopy(runtime))
    if runtime.get("device") == "cpu":
        message = spec_module.MSG_PROVIDER_NOT_ON_CPU
    expected = f"spec.model.optimization.executionProvider: {message or spec_module.MSG_PROVIDER_NEEDS_GPU}"

    assessment = assess(made)
    assert assessment.isvc is None  # InvalidSpec: nothing is applied
    assert expected in assessment.problems
    assert expected in crd_validator.errors(made)


def test_tensorrt_precision_without_tensorrt_is_refused_by_both(crd_validator, isvc_factory):
    made = body(isvc_factory, {"executionProvider": "cuda", "tensorrtPrecision": "fp16"}, runtime=GPU)
    expected = f"spec.model.optimization.tensorrtPrecision: {spec_module.MSG_TENSORRT_PRECISION}"

    assert expected in crd_validator.errors(made)
    with pytest.raises(SpecError) as raised:
        parse(made)
    assert expected in raised.value.problems


@pytest.mark.parametrize(
    ("field", "value"), [("quantization", "int4"), ("executionProvider", "openvino"), ("tensorrtPrecision", "bf16")]
)
def test_unknown_choices_are_refused_by_both(crd_validator, isvc_factory, field, value):
    made = body(isvc_factory, {"executionProvider": "tensorrt", field: value}, runtime=GPU)
    where = f"spec.model.optimization.{field}"
    assert any(error.startswith(where) for error in crd_validator.errors(made))
    with pytest.raises(SpecError) as raised:
        parse(made)
    assert any(problem.startswith(where) for problem in raised.value.problems)


@pytest.mark.parametrize("size", ["0", "-5Mi"])
def test_a_model_size_must_be_a_size(crd_validator, isvc_factory, size):
    made = isvc_factory()
    made["spec"]["model"]["size"] = size
    assert crd_validator.errors(made) == []  # a quantity, as far as the schema can tell
    assert any(
        problem.startswith("spec.model.size: must be the model file's size") for problem in assess(made).problems
    )


# --- the pods ------------------------------------------------------------------------------------------------


def test_without_optimization_there_is_no_optimize_container_and_the_original_is_served(isvc_factory):
    rendered = render(body(isvc_factory, None, uri=URIS["fetch"]))
    (fetch,) = pod_spec(rendered)["initContainers"]
    assert fetch["name"] == naming.FETCH_CONTAINER
    assert config(rendered)["model_path"] == naming.FETCHED_MODEL_PATH
    assert "optimized" not in {volume["name"] for volume in pod_spec(rendered)["volumes"]}
    # Naming only where the work happens changes nothing: an empty block is not an optimization.
    assert "initContainers" not in pod_spec(render(body(isvc_factory, {})))


@pytest.mark.parametrize("kind", ["fetch", "pvc", "image"])
def test_an_optimize_init_container_writes_the_file_the_runtime_loads_and_the_original_stays(isvc_factory, kind):
    made = body(
        isvc_factory,
        {"quantization": "dynamicInt8", "precompile": True},
        uri=URIS[kind],
        runtime={"resources": {"limits": {"cpu": "2", "memory": "1Gi"}}},
    )
    rendered = render(made)
    pod = pod_spec(rendered)
    names = [container["name"] for container in pod["initContainers"]]
    # Fetched models are optimized after the download, from where it wrote them.
    assert names == ([naming.FETCH_CONTAINER] if kind == "fetch" else []) + [naming.OPTIMIZE_CONTAINER]
    optimize = pod["initContainers"][-1]
    (runtime,) = pod["containers"]

    assert optimize["command"] == ["kubeserve-runtime"]
    source, dest = optimize["args"][1:3]
    assert optimize["args"][0] == "optimize"
    assert source == ORIGINALS[kind]
    assert dest == config(rendered)["model_path"] == naming.OPTIMIZED_MODEL_PATH
    assert optimize["args"][3:5] == ["--quantization", "dynamicInt8"]
    # Precompiled for the CPU it runs on: every optimization, this CPU's layouts included.
    assert optimize["args"][5:8] == ["--precompile", "--precompile-level", "all"]
    # The same image, lock-down, failure reporting and CPU and memory as the runtime's (and the fetch's).
    for field in ("image", "imagePullPolicy", "securityContext", "terminationMessagePolicy", "resources"):
        assert optimize[field] == runtime[field], field
    # It writes to an emptyDir of the pod, reads the original where the runtime would, and the runtime reads both.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert volumes["optimized"] == {"name": "optimized", "emptyDir": {}}
    assert mounts(optimize)[naming.OPTIMIZED_DIR]["name"] == "optimized"
    assert not mounts(optimize)[naming.OPTIMIZED_DIR].get("readOnly")
    assert mounts(runtime)[naming.OPTIMIZED_DIR]["readOnly"] is True
    if kind != "image":
        assert mounts(optimize)[naming.MODELS_DIR]["readOnly"] is True
        assert naming.MODELS_DIR in mounts(runtime)  # the original, for comparison


def test_precompile_alone_keeps_fp32_and_says_so(isvc_factory):
    rendered = render(body(isvc_factory, {"precompile": True}))
    optimize = pod_spec(rendered)["initContainers"][-1]
    assert optimize["args"][3:6] == ["--quantization", "none", "--precompile"]
    assert served_precision(parse(body(isvc_factory, {"precompile": True}))) == "FP32"


def test_quantization_alone_precompiles_nothing(isvc_factory):
    optimize = pod_spec(render(body(isvc_factory, {"quantization": "dynamicInt8"})))["initContainers"][-1]
    assert "--precompile" not in optimize["args"]


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_pod_precompiles_only_what_any_provider_can_run(isvc_factory, provider):
    # The init container optimizes on the CPU; CPU-specific layouts would not run on CUDA or TensorRT.
    made = body(isvc_factory, {"precompile": True, "executionProvider": provider}, runtime=GPU)
    optimize = pod_spec(render(made))["initContainers"][-1]
    assert optimize["args"][5:8] == ["--precompile", "--precompile-level", "basic"]


def test_tensorrt_runs_the_runtime_on_tensorrt_with_its_engine_cache_on_a_pod_volume(isvc_factory):
    made = body(isvc_factory, {"executionProvider": "tensorrt", "tensorrtPrecision": "fp16"}, runtime=GPU)
    rendered = render(made)
    settings = config(rendered)
    (runtime,) = pod_spec(rendered)["containers"]

    assert settings["device"] == "tensorrt"
    assert settings["tensorrt_precision"] == "fp16"
    # An emptyDir outlives a container restart: the restarted runtime finds the engine it built.
    cache = settings["tensorrt_engine_cache_path"]
    assert cache.startswith(naming.OPTIMIZED_DIR + "/")
    volumes = {volume["name"]: volume for volume in pod_spec(rendered)["volumes"]}
    assert volumes[mounts(runtime)[naming.OPTIMIZED_DIR]["name"]] == {"name": "optimized", "emptyDir": {}}
    assert not mounts(runtime)[naming.OPTIMIZED_DIR].get("readOnly")  # TensorRT writes its engines there
    # Nothing to rewrite: the original file is loaded, with no init container.
    assert settings["model_path"] == ORIGINALS["image"]
    assert "initContainers" not in pod_spec(rendered)
    assert runtime["image"] == SETTINGS.cuda_image
    assert served_precision(parse(made)) == "FP16"


@pytest.mark.parametrize(
    ("optimization", "device", "precision"),
    [
        (None, "cuda", None),
        ({"executionProvider": "cuda"}, "cuda", None),
        # Unset, the runtime's own default.
        ({"executionProvider": "tensorrt"}, "tensorrt", RuntimeSettings.model_fields["tensorrt_precision"].default),
        ({"executionProvider": "tensorrt", "tensorrtPrecision": "int8"}, "tensorrt", "int8"),
    ],
)
def test_the_execution_provider_selects_the_runtimes_device(isvc_factory, optimization, device, precision):
    settings = config(render(body(isvc_factory, optimization, runtime=GPU)))
    assert settings["device"] == device
    assert settings.get("tensorrt_precision") == precision


def test_the_served_precision(isvc_factory):
    def precision(optimization: dict[str, Any] | None, runtime: dict[str, Any] | None = None) -> str:
        return served_precision(parse(body(isvc_factory, optimization, runtime=runtime or {})))

    assert precision(None) == "FP32"
    assert precision({"executionProvider": "cuda"}, GPU) == "FP32"
    default = RuntimeSettings.model_fields["tensorrt_precision"].default
    assert precision({"executionProvider": "tensorrt"}, GPU) == default.upper()  # the runtime's default
    assert precision({"quantization": "dynamicInt8"}) == "INT8"
    assert precision({"executionProvider": "tensorrt", "tensorrtPrecision": "int8"}, GPU) == "INT8"
    assert precision({"executionProvider": "tensorrt", "tensorrtPrecision": "fp16"}, GPU) == "FP16"


# --- the revision --------------------------------------------------------------------------------------------


def test_changing_the_optimization_makes_a_new_revision(isvc_factory):
    def revision(optimization: dict[str, Any] | None) -> str:
        return manifests.children(parse(body(isvc_factory, optimization)), SETTINGS).revision

    revisions = {
        revision(None),
        revision({"quantization": "dynamicInt8"}),
        revision({"quantization": "dynamicInt8", "precompile": True}),
        revision({"precompile": True}),
    }
    assert len(revisions) == 4
    # What the API server's defaults fill in is the same revision as what they leave out.
    assert revision({"precompile": True}) == revision({"precompile": True, "quantization": "none"})


def test_an_inference_service_without_the_new_fields_keeps_its_revision(isvc_factory):
    """Upgrading the operator must not roll every InferenceService: unset, the new fields are not in what a
    revision's digest covers, so the digest is the one earlier versions computed."""
    model = parse(isvc_factory()).spec.model.model_dump(mode="json", by_alias=True)
    assert model == {
        "name": None,
        "version": "1",
        "uri": "file:///opt/kubeserve/samples/mlp.onnx",
        "format": "onnx",
        "credentialsSecret": None,
    }
    # An empty optimization block asks for nothing, and is no new revision either.
    assert parse(body(isvc_factory, {})).spec.model.model_dump(mode="json", by_alias=True) == model
    sized = body(isvc_factory, {"precompile": True})
    sized["spec"]["model"]["size"] = "1Mi"
    assert set(parse(sized).spec.model.model_dump(by_alias=True)) == {*model, "size", "optimization"}
