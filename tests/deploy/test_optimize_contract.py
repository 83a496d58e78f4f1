"""The operator's optimize init container and `kubeserve-runtime optimize` agree: the command the operator renders
is one the runtime's parser accepts, it reads the file the fetch wrote and writes the one the runtime serves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import yaml
from kubeserve.runtime.cli import build_parser
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.samples import write_sample, write_tabular

REPO = Path(__file__).resolve().parents[2]


def render(tmp_path: Path, isvc: dict) -> tuple[dict, dict]:
    """`kubeserve-operator render` of ``isvc``: the pod spec, and the runtime's config."""
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump(isvc))
    operator = Path(sys.executable).parent / "kubeserve-operator"
    result = subprocess.run([operator, "render", "-f", path], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (deployment,) = [doc for doc in documents if doc["kind"] == "Deployment"]
    (config_map,) = [doc for doc in documents if doc["kind"] == "ConfigMap"]
    return deployment["spec"]["template"]["spec"], yaml.safe_load(config_map["data"]["runtime.yaml"])


def rendered_pod(tmp_path: Path, optimization: dict, uri: str, resources: dict | None = None) -> tuple[dict, dict]:
    """The GPU sample with this model, rendered."""
    isvc = yaml.safe_load((REPO / "samples" / "isvc-gpu.yaml").read_text())
    isvc["spec"]["model"].update(uri=uri, optimization=optimization)
    if resources is not None:
        isvc["spec"]["runtime"]["resources"] = resources
    return render(tmp_path, isvc)


def as_folders(tmp_path: Path, *containers: dict) -> Callable[[str], str]:
    """The containers' volumes as folders under ``tmp_path``: a path in the pod to the same file here (any other
    argument as it is)."""
    volumes = {mount["mountPath"]: tmp_path / mount["name"] for c in containers for mount in c["volumeMounts"]}
    for folder in volumes.values():
        folder.mkdir(exist_ok=True)

    def here(path: str) -> str:
        mount = next((mount for mount in volumes if path.startswith(mount + "/")), None)
        return path if mount is None else str(volumes[mount] / path.removeprefix(mount + "/"))

    return here


def run_here(container: dict, here: Callable[[str], str]) -> None:
    """The container's command line, run here with its paths in the pod as ``here`` maps them."""
    command = [here(arg) for arg in container["args"]]
    runtime = Path(sys.executable).parent / container["command"][0]
    result = subprocess.run([runtime, *command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


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
    _uri, fetched = build_parser().parse_args(fetch["args"]).files
    assert args.model == Path(fetched)
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
    here = as_folders(tmp_path, optimize)

    args = build_parser().parse_args(optimize["args"])
    write_sample("mlp", Path(here(str(args.model))))
    run_here(optimize, here)

    served = Path(here(config["model_path"]))
    metadata = {prop.key: prop.value for prop in onnx.load(str(served), load_external_data=False).metadata_props}
    assert metadata["kubeserve.precision"] == "INT8"
    assert Path(here(str(args.model))).exists()  # the original stays


def test_the_rendered_command_composes_the_graphs_the_fetch_wrote(tmp_path):
    """Graphs fetched beside the model: the fetch writes each where the optimize command reads it, and the command,
    run here with the pod's volumes as folders, serves the composed graph (the raw columns as its inputs)."""
    isvc = yaml.safe_load((REPO / "samples" / "isvc-tabular.yaml").read_text())
    isvc["spec"]["model"].update(
        uri="https://models.example.com/fraud/model.onnx",
        preprocessing="https://models.example.com/fraud/preprocessing.onnx",
    )
    pod, config = render(tmp_path, isvc)
    fetch, optimize = pod["initContainers"]
    here = as_folders(tmp_path, fetch, optimize)

    # What the fetch would write, by URI: the sample's two graphs.
    graphs = {graph.name: graph for graph in write_tabular(tmp_path / "exported")}
    pairs = build_parser().parse_args(fetch["args"]).files
    for uri, dest in zip(pairs[::2], pairs[1::2], strict=True):
        Path(here(dest)).write_bytes(graphs[uri.rsplit("/", 1)[1]].read_bytes())
    run_here(optimize, here)

    served = onnx.load(here(config["model_path"]))
    assert [value.name for value in served.graph.input] == ["amount", "hour", "distance_km", "merchant_category"]
    assert [value.name for value in served.graph.output] == ["label", "probabilities"]
