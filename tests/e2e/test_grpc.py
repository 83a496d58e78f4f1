"""End to end on kind, over gRPC: the CPU sample answers `inference.GRPCInferenceService` calls through its Service's
`grpc` port (status.grpcAddress), as in-process ONNX Runtime does, and its pods answer gRPC health checks.

Needs Docker (`make e2e`); elsewhere it is collected and skipped, as tests/e2e/test_inference_service.py is. The client
is the runtime's own generated stubs (the Triton proto): ``tritonclient.grpc`` cannot share a process with KServe's
client, which `make test` imports."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from kubeserve.runtime.config import GRPC_PORT

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from kind_cluster import SAMPLE, apply_ready, cpu_sample, docker_problem  # bench/, put on sys.path above

pytestmark = pytest.mark.e2e

_problem = docker_problem()
if _problem is not None:
    pytest.skip(f"kind end-to-end test needs Docker, which is not usable here ({_problem})", allow_module_level=True)
if os.environ.get("KUBESERVE_E2E") != "1":
    pytest.skip("kind end-to-end test: Docker works here; run it with `make e2e`", allow_module_level=True)


def test_the_cpu_sample_answers_grpc_through_its_service(cluster, images):
    import grpc
    import onnxruntime
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from kubeserve.runtime.grpc import grpc_service_pb2 as pb
    from kubeserve.runtime.grpc import grpc_service_pb2_grpc as rpc
    from kubeserve.runtime.samples import build_mlp

    sample = cpu_sample()
    name, namespace, model = sample.name, sample.namespace, sample.model

    cluster.install_chart(images)
    try:
        status = apply_ready(cluster, SAMPLE)
        assert status["status"]["grpcAddress"] == f"{name}.{namespace}.svc.cluster.local:{GRPC_PORT}"
        service = json.loads(cluster.kubectl("get", "-n", namespace, f"service/{name}", "-o", "json"))
        (grpc_port,) = [port for port in service["spec"]["ports"] if port["name"] == "grpc"]
        assert (grpc_port["port"], grpc_port["appProtocol"]) == (GRPC_PORT, "kubernetes.io/h2c")

        features = np.linspace(-1.0, 1.0, 3 * 32, dtype=np.float32).reshape(3, 32)
        with (
            cluster.port_forward(namespace, f"service/{name}", GRPC_PORT) as port,
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = rpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=30).ready
            request = pb.ModelInferRequest(model_name=model, id="e2e")
            request.inputs.add(name="features", datatype="FP32", shape=features.shape)
            request.raw_input_contents.append(features.tobytes())
            answer = stub.ModelInfer(request, timeout=60)
        assert answer.id == "e2e"
        (index,) = [i for i, output in enumerate(answer.outputs) if output.name == "probabilities"]
        assert list(answer.outputs[index].shape) == [3, 10]
        served = np.frombuffer(answer.raw_output_contents[index], dtype=np.float32).reshape(3, 10)
        session = onnxruntime.InferenceSession(build_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
        expected = session.run(["probabilities"], {"features": features})[0]
        np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-5)
    except AssertionError as error:
        raise AssertionError(f"{error}\n\n{cluster.diagnostics(namespace)}") from error
    finally:
        cluster.kubectl("delete", "-n", namespace, f"inferenceservice/{name}", "--timeout=180s", timeout=200)
