"""The operator's optimize init container and `kubeserve-runtime optimize` agree: the command the operator renders
is one the runtime's parser accepts, it reads the file the fetch wrote and writes the one the runtime serves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import yaml
from kubeserve.runtime.cli import build_parser
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.samples import write_sample

REPO = Path(__file__).resolve().parents[2]


def rendered_pod(tmp_path: Path, optimization: dict, uri: str, resources: dict | None = None) -> tuple[dict, dict]:
    """`kubeserve-operator render` of the GPU sample with this model: the pod spec, and the runtime's config."""
    isvc = yaml.safe_load((REPO / "samples" / "isvc-gpu.yaml").read_text())
    isvc["spec"]["model"].update(uri=uri, optimization=optimization)
    if resources is not None:
        isvc["spec"]["runtime"]["resources"] = resources
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump(isvc))
    operator = Path(sys.executable).parent / "kubeserve-operator"
    result = subprocess.run([operator, "render", "-f", path], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    (config_map,) = [doc for doc in documents if doc["kind"] == "ConfigMap"]
    return deployment["spec"]["template"]["spec"], yaml.safe_load(config_map["data"]["runtime.yaml"])


@pytest.mark.parametrize("provider", [None, "tensorrt"])
def test_the_optimize_init_container_is_a_command_optimize_accepts(tmp_path, provider):
    optimization = {"quantization": "dynamicInt8", "precompile": True}
    if provider:
        optimization["executionProvider"] = provider
    pod, config = rendered_pod(tmp_path, optimization, "https://models.example.com/resnet50/model.onnx")
    fetch, optimize = pod["initContainers"]
    (runtime,) = pod["containers"]

    assert optimize["image"] == runtime["image"] == fetch["image"]
    assert optimize["command"] == ["kubeserve-runtime"]
    args = build_parser().parse_args(optimize["args"])
    assert args.command == "optimize"
    assert (args.quantization, args.precompile) == ("dynamicInt8", True)
    # It reads what the fetch wrote, and writes what the runtime's config loads.
    fetched = build_parser().parse_args(fetch["args"])
    assert args.model == fetched.dest
    assert args.output == Path(config["model_path"])
    assert args.output != args.model  # the original stays, for comparison
    # The file the runtime loads is on a volume it mounts, which the optimize container writes.
    volumes = {mount["name"]: mount for mount in optimize["volumeMounts"]}
    runtime_mounts = {mount["mountPath"]: mount["name"] for mount in runtime["volumeMounts"]}
    (written,) = [name for name, mount in volumes.items() if args.output.parent == Path(mount["mountPath"])]
    assert not volumes[written].get("readOnly")
    assert runtime_mounts[str(args.output.parent)] == written
    # A failed optimization is explained in the pod's status: it writes the reason where the kubelet reads it.
    assert args.termination_message_path == Path(optimize.get("terminationMessagePath", "/dev/termination-log"))
    # The runtime accepts its config (TensorRT's settings included) and finds the engine cache on a volume.
    settings = RuntimeSettings.model_validate(config)
    if provider == "tensorrt":
        assert settings.device == "tensorrt"
        assert settings.tensorrt_engine_cache_path is not None
        assert str(settings.tensorrt_engine_cache_path.parent) in runtime_mounts


def test_a_model_in_the_image_is_optimized_from_where_it_is(tmp_path):
    pod, config = rendered_pod(
        tmp_path,
        {"quantization": "dynamicInt8"},
        "file:///opt/kubeserve/samples/mlp.onnx",
        resources={"limits": {"cpu": "1"}},
    )
    (optimize,) = pod["initContainers"]
    args = build_parser().parse_args(optimize["args"])
    assert args.model == Path("/opt/kubeserve/samples/mlp.onnx")
    assert args.output == Path(config["model_path"])
    assert args.precompile is False


def test_the_rendered_command_optimizes_the_model_the_runtime_then_serves_as_int8(tmp_path):
    """The init container's own command line, run here with the pod's volumes as folders: it writes the file the
    runtime's config names, marked INT8."""
    pod, config = rendered_pod(tmp_path, {"quantization": "dynamicInt8"}, "pvc://models/mlp/model.onnx")
    (optimize,) = pod["initContainers"]
    volumes = {mount["mountPath"]: tmp_path / mount["name"] for mount in optimize["volumeMounts"]}
    for folder in volumes.values():
        folder.mkdir(exist_ok=True)

    def here(path: str) -> str:
        mount = next(mount for mount in volumes if path.startswith(mount + "/"))
        return str(volumes[mount] / path.removeprefix(mount + "/"))

    args = build_parser().parse_args(optimize["args"])
    write_sample("mlp", Path(here(str(args.model))))
    command = [
        here(arg) if arg.startswith(tuple(f"{mount}/" for mount in volumes)) else arg for arg in optimize["args"]
    ]
    runtime = Path(sys.executable).parent / optimize["command"][0]
    result = subprocess.run([runtime, *command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr

    served = Path(here(config["model_path"]))
    metadata = {prop.key: prop.value for prop in onnx.load(str(served), load_external_data=False).metadata_props}
    assert metadata["kubeserve.precision"] == "INT8"
    assert Path(here(str(args.model))).exists()  # the original stays
