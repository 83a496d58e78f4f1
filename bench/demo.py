"""``make demo``: serve the bundled sample MLP locally, send it real requests, show what came back.

Builds the model with onnx.helper (no download), starts ``kubeserve-runtime serve`` on 127.0.0.1, sends
requests with Triton's stock client (JSON and binary tensors) and KServe's V1 protocol, prints the
predictions with each request's own ``Server-Timing``, sends a short burst from concurrent callers so the
batcher has something to batch, prints the per-stage latencies from ``/metrics``, and stops the server
with SIGTERM (a graceful drain).
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
from kubeserve.runtime.samples import write_sample
from payloads import json_payload
from prometheus_client.parser import text_string_to_metric_families
from server import RunningServer

CLASSES = [f"class-{i}" for i in range(10)]


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
    request = urllib.request.Request(url, data=json.dumps(document).encode(), method="POST")
    with urllib.request.urlopen(request) as response:
        return json.load(response), response.headers["Server-Timing"]


def burst_of_load(server: RunningServer, seconds: float, concurrency: int) -> dict:
    body = Path(tempfile.mkdtemp(prefix="kubeserve-demo-")) / "request.json"
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
             for stage in ("deserialize", "queue", "compute", "serialize", "total")]  # fmt: skip
    mean_batch = batch["kubeserve_batch_size_sum"] / batch["kubeserve_batch_size_count"]
    lines.append(f"  batches: {batch['kubeserve_batch_size_count']:.0f}, mean {mean_batch:.1f} rows")
    lines.append("  answered: " + ", ".join(f"{k} x{v:.0f}" for k, v in batch.items() if k.startswith("code")))
    return lines


def main() -> None:
    model = write_sample("mlp", Path(tempfile.mkdtemp(prefix="kubeserve-demo-")) / "mlp.onnx")
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

        burst = burst_of_load(server, seconds=2.0, concurrency=32)
        print(
            f"\n2 s of closed-loop load from 32 connections (bench/loadgen.py): {burst['requests']:,} requests, "
            f"{burst['requests_per_second']:,.0f} req/s, p50 {burst['p50_ms']:.2f} ms, p99 {burst['p99_ms']:.2f} ms"
        )
        print("\nper-stage latency, from /metrics:")
        print("\n".join(stage_latencies(server.url)))
        client.close()
        code = server.stop()
    print(f"\nstopped with SIGTERM: drained, exit code {code}")


if __name__ == "__main__":
    main()
