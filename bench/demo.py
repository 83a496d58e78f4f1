"""``make demo``: serve the bundled samples locally, send them real requests, show what came back.

Builds the models (no download) and serves each with ``kubeserve-runtime serve`` on 127.0.0.1:

- the MLP: requests with Triton's stock client (JSON and binary tensors) and KServe's V1 protocol, the predictions
  with each request's own ``Server-Timing``, a short burst from concurrent callers so the batcher has something to
  batch, the per-stage latencies from ``/metrics``, and a stop with SIGTERM (a graceful drain);
- the tabular sample: its scikit-learn preprocessing composed into the model (``kubeserve-runtime optimize
  --preprocessing``), raw transaction columns in, the same probabilities as the pipeline's ``predict_proba``;
- the image sample: a JPEG in (decoded, resized and normalized in the server), class labels out (Triton's
  classification extension), with the preprocess and postprocess stages in ``Server-Timing``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import tritonclient.http as triton
from image_path import IMAGE_INPUTS, photo
from kubeserve.runtime.samples import (
    tabular_pipeline,
    tabular_rows,
    write_labels,
    write_sample,
    write_tabular,
)
from payloads import json_payload, tabular_inputs
from prometheus_client.parser import text_string_to_metric_families
from server import RUNTIME, RunningServer

CLASSES = [f"class-{i}" for i in range(10)]
# The stages of a request, as /metrics names them (those a request went through have samples).
STAGES = ("deserialize", "preprocess", "queue", "compute", "postprocess", "serialize", "total")


def show(title: str, probabilities: np.ndarray, timing: str | None = None) -> None:
    print(f"\n{title}")
    for row, p in enumerate(probabilities):
        best = int(np.argmax(p))
        print(f"  sample {row}: {CLASSES[best]} (p={p[best]:.3f})")
    if timing:
        print(f"  Server-Timing: {timing}")


def triton_request(client: triton.InferenceServerClient, features: np.ndarray, binary: bool) -> np.ndarray:
    tensor = triton.InferInput("features", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer("mlp", [tensor], outputs=[output], request_id="demo").as_numpy("probabilities")


def post_json(url: str, document: dict) -> tuple[dict, str]:
    """A plain HTTP request, to show the Server-Timing header the stock clients do not surface."""
    return post(url, json.dumps(document).encode(), "application/json")


def post(url: str, body: bytes, content_type: str) -> tuple[dict, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request) as response:
        return json.load(response), response.headers["Server-Timing"]


def burst_of_load(server: RunningServer, work: Path, seconds: float, concurrency: int) -> dict:
    body = work / "request.json"
    body.write_bytes(json_payload("mlp", 1).body)
    command = [
        sys.executable, str(Path(__file__).with_name("loadgen.py")), "--url", f"{server.url}/v2/models/mlp/infer",
        "--body", str(body), "--concurrency", str(concurrency), "--warmup", "0.2", "--duration", str(seconds),
    ]  # fmt: skip
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def stage_latencies(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/metrics") as response:
        text = response.read().decode()
    sums, counts, batch = {}, {}, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = sample.labels.get("stage")
            if sample.name == "kubeserve_request_duration_seconds_sum":
                sums[stage] = sample.value
            elif sample.name == "kubeserve_request_duration_seconds_count":
                counts[stage] = sample.value
            elif sample.name in ("kubeserve_batch_size_sum", "kubeserve_batch_size_count"):
                batch[sample.name] = sample.value
            elif sample.name == "kubeserve_requests_total":
                batch[f"code {sample.labels['code']}"] = sample.value
    lines = [f"  {stage:12} mean {sums[stage] / counts[stage] * 1e3:7.3f} ms over {counts[stage]:.0f} requests"
             for stage in STAGES if counts.get(stage)]  # fmt: skip
    mean_batch = batch["kubeserve_batch_size_sum"] / batch["kubeserve_batch_size_count"]
    lines.append(f"  batches: {batch['kubeserve_batch_size_count']:.0f}, mean {mean_batch:.1f} rows")
    lines.append("  answered: " + ", ".join(f"{k} x{v:.0f}" for k, v in batch.items() if k.startswith("code")))
    return lines


def tabular(work: Path) -> None:
    """The fraud-style sample: the fitted ColumnTransformer composed in front of the classifier, raw rows in."""
    preprocessing, model = write_tabular(work / "tabular")
    composed = work / "fraud.onnx"
    subprocess.run(
        [RUNTIME, "optimize", "--no-compare", "--preprocessing", str(preprocessing), str(model), str(composed)],
        check=True,
        capture_output=True,
    )
    print(f"\ncomposed the tabular sample's preprocessing ({preprocessing.name}) with its classifier: {composed}")
    rows, _fraud = tabular_rows(4, seed=99)
    with RunningServer(composed, "fraud") as server:
        answer, timing = post_json(f"{server.url}/v2/models/fraud/infer", {"inputs": tabular_inputs(rows)})
        served = next(o for o in answer["outputs"] if o["name"] == "probabilities")
        probabilities = np.reshape(served["data"], served["shape"])[:, 1]
        expected = tabular_pipeline().predict_proba(rows)[:, 1]
        print("raw transactions in, fraud probability out (served | the scikit-learn pipeline's predict_proba):")
        for row, got, want in zip(rows, probabilities, expected, strict=True):
            amount, hour, distance, category = row
            print(f"  {amount:8.2f} at {hour:2.0f}h, {distance:5.1f} km, {category:11} -> {got:.6f} | {want:.6f}")
        print(f"  Server-Timing: {timing}")
        server.stop()


def image(work: Path) -> None:
    """The image sample: a JPEG in, decoded in the server, the top classes out by name."""
    model, labels = write_sample("cnn", work / "cnn.onnx"), write_labels(work / "cnn-labels.txt")
    jpeg = photo()
    flags = ("--image-inputs", json.dumps(IMAGE_INPUTS), "--labels-path", str(labels))
    with RunningServer(model, "cnn", *flags) as server:
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        served = client.get_model_metadata("cnn")["inputs"]
        print(f"\nserving the sample CNN with an image input (labels from {labels.name}): inputs {served}")
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([jpeg], dtype=object))
        output = triton.InferRequestedOutput("logits", class_count=3)
        top = client.infer("cnn", [tensor], outputs=[output]).as_numpy("logits")
        print(f"tritonclient, a {len(jpeg):,}-byte JPEG as BYTES, class_count=3: {[c.decode() for c in top[0]]}")
        answer, timing = post(f"{server.url}/v2/models/cnn/infer", jpeg, "image/jpeg")
        print(f"the JPEG itself, POSTed as image/jpeg: logits {np.round(answer['outputs'][0]['data'][:3], 3)}...")
        print(f"  Server-Timing: {timing}")
        client.close()
        server.stop()


def main() -> None:
    # Everything the demo builds lives in one folder, removed when it ends (or fails).
    with tempfile.TemporaryDirectory(prefix="kubeserve-demo-") as scratch:
        demo(Path(scratch))


def demo(work: Path) -> None:
    model = write_sample("mlp", work / "mlp.onnx")
    print(f"built the sample MLP (32 features -> 10 class probabilities): {model}")
    with RunningServer(model, "mlp") as server:
        print(f"serving at {server.url} on {', '.join(server.ready_event['providers'])}")
        rng = np.random.default_rng(7)
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        metadata = client.get_model_metadata("mlp")
        print(f"model metadata: inputs {metadata['inputs']}, outputs {metadata['outputs']}")

        features = rng.random((3, 32), dtype=np.float32)
        show("tritonclient, JSON tensors (3 samples):", triton_request(client, features, binary=False))
        show("tritonclient, binary tensors (same 3 samples):", triton_request(client, features, binary=True))
        v2 = {"inputs": [{"name": "features", "shape": [3, 32], "datatype": "FP32", "data": features.tolist()}]}
        answer, timing = post_json(f"{server.url}/v2/models/mlp/infer", v2)
        output = answer["outputs"][0]
        show("V2 over plain HTTP (same 3 samples):", np.reshape(output["data"], output["shape"]), timing)
        answer, timing = post_json(f"{server.url}/v1/models/mlp:predict", {"instances": features[:2].tolist()})
        show("KServe V1 :predict (first 2 samples):", np.array(answer["predictions"]), timing)

        burst = burst_of_load(server, work, seconds=2.0, concurrency=32)
        print(
            f"\n2 s of closed-loop load from 32 connections (bench/loadgen.py): {burst['requests']:,} requests, "
            f"{burst['requests_per_second']:,.0f} req/s, p50 {burst['p50_ms']:.2f} ms, p99 {burst['p99_ms']:.2f} ms"
        )
        print("\nper-stage latency, from /metrics:")
        print("\n".join(stage_latencies(server.url)))
        client.close()
        code = server.stop()
    print(f"\nstopped with SIGTERM: drained, exit code {code}")
    tabular(work)
    image(work)


if __name__ == "__main__":
    main()
