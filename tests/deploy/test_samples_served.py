"""The processing samples as users copy them, served here: the operator renders samples/isvc-tabular.yaml and
samples/isvc-image.yaml, their init container's commands and runtime config run as rendered (the image's paths
pointed at samples built in a temporary folder), and the real runtime on 127.0.0.1 answers raw rows as the
scikit-learn pipeline does and a JPEG with its labels. tests/e2e runs the same samples on kind."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kubeserve.operator import manifests
from kubeserve.operator.naming import OPTIMIZED_DIR
from kubeserve.operator.plan import assess
from kubeserve.operator.settings import OperatorSettings
from kubeserve.runtime.samples import (
    CNN_LABELS,
    CNN_LABELS_FILE,
    tabular_pipeline,
    tabular_rows,
    write_labels,
    write_sample,
    write_tabular,
)

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from image_path import photo  # noqa: E402  (bench/, above)
from payloads import tabular_inputs  # noqa: E402
from server import RUNTIME, RunningServer  # noqa: E402

# Where the runtime image keeps the samples (docker/runtime-*.Dockerfile), as the samples' file:// URIs name them.
IMAGE_SAMPLES = "/opt/kubeserve/samples"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The samples the runtime image carries, built here."""
    folder = tmp_path_factory.mktemp("samples")
    write_sample("cnn", folder / "cnn.onnx")
    write_labels(folder / CNN_LABELS_FILE)
    write_tabular(folder / "tabular")
    return folder


def rendered(sample: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sample's runtime config file and its Deployment, as the operator renders them."""
    body = yaml.safe_load((REPO / "samples" / sample).read_text())
    isvc = assess(body).isvc
    assert isvc is not None
    children = manifests.children(isvc, OperatorSettings())
    config_map = next(m for m in children.manifests if m["kind"] == "ConfigMap")
    deployment = next(m for m in children.manifests if m["kind"] == "Deployment")
    return yaml.safe_load(config_map["data"]["runtime.yaml"]), deployment


def here(value: Any, built: Path, optimized: Path) -> Any:
    """A rendered path as it is in this test: the image's samples and the optimized model's folder."""
    if isinstance(value, str):
        return value.replace(IMAGE_SAMPLES, str(built)).replace(OPTIMIZED_DIR, str(optimized))
    return value


def serve(config: dict[str, Any], tmp_path: Path) -> RunningServer:
    path = tmp_path / "runtime.yaml"
    path.write_text(yaml.safe_dump(config))
    return RunningServer(Path(config["model_path"]), config["model_name"], "--config", str(path))


def post(url: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_the_tabular_sample_answers_raw_rows_as_its_pipeline(built, tmp_path):
    config, deployment = rendered("isvc-tabular.yaml")
    optimized = tmp_path / "optimized"
    optimized.mkdir()
    (optimize,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "optimize-model"]
    arguments = [here(argument, built, optimized) for argument in optimize["args"]]
    arguments[arguments.index("--termination-message-path") + 1] = str(tmp_path / "termination-log")
    subprocess.run([RUNTIME, *arguments], check=True, capture_output=True)

    config = {name: here(value, built, optimized) for name, value in config.items()}
    rows, _fraud = tabular_rows(32, seed=11)
    with serve(config, tmp_path) as server:
        answer = post(
            f"{server.url}/v2/models/{config['model_name']}/infer",
            json.dumps({"inputs": tabular_inputs(rows)}).encode(),
            {"Content-Type": "application/json"},
        )
    (served,) = [output for output in answer["outputs"] if output["name"] == "probabilities"]
    probabilities = np.asarray(served["data"]).reshape(served["shape"])
    np.testing.assert_allclose(probabilities, tabular_pipeline().predict_proba(rows), atol=1e-5)


def test_the_image_sample_answers_a_jpeg_with_its_labels(built, tmp_path):
    config, _deployment = rendered("isvc-image.yaml")
    config = {name: here(value, built, tmp_path) for name, value in config.items()}
    jpeg = photo()
    header = json.dumps(
        {
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                        "parameters": {"binary_data_size": 2 * (len(jpeg) + 4)}}],
            "outputs": [{"name": "logits", "parameters": {"classification": 3, "binary_data": False}}],
        }
    ).encode()  # fmt: skip
    tensor = 2 * (len(jpeg).to_bytes(4, "little") + jpeg)
    with serve(config, tmp_path) as server:
        answer = post(
            f"{server.url}/v2/models/{config['model_name']}/infer",
            header + tensor,
            {"Inference-Header-Content-Length": str(len(header))},
        )
    (top,) = answer["outputs"]
    assert (top["datatype"], top["shape"]) == ("BYTES", [2, 3])
    first, second = top["data"][:3], top["data"][3:]
    assert first == second  # the same image, the same answer
    scores = [float(entry.split(":")[0]) for entry in first]
    assert scores == sorted(scores, reverse=True)
    assert {entry.split(":")[2] for entry in first} <= set(CNN_LABELS)
