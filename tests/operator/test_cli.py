"""``kubeserve-operator``, run as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

SCRIPT = str(Path(sys.executable).parent / "kubeserve-operator")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def kubeserve_operator(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1", **env},
        timeout=60,
        check=False,
    )


def test_render_prints_every_manifest_of_the_samples_as_valid_kubernetes_objects():
    result = kubeserve_operator("render", "-f", str(SAMPLES / "isvc-cpu.yaml"), "-f", str(SAMPLES / "isvc-gpu.yaml"))
    assert result.returncode == 0, result.stderr

    documents = list(yaml.safe_load_all(result.stdout))
    for document in documents:
        kubernetes_validate.validate(document, "1.37", strict=True)
    # Each InferenceService's revision (NAME-<version>-<digest>: ConfigMap, Service, Deployment), its Service, its HPA.
    mlp, resnet = (d["metadata"]["name"] for d in documents if d["kind"] == "Deployment")
    assert re.fullmatch(r"mlp-1-[0-9a-f]{6}", mlp) and re.fullmatch(r"resnet-2024-06-01-[0-9a-f]{6}", resnet)
    assert [(d["kind"], d["metadata"]["name"]) for d in documents] == [
        ("ConfigMap", mlp),
        ("Service", "mlp"),
        ("Service", mlp),
        ("Deployment", mlp),
        ("HorizontalPodAutoscaler", "mlp"),
        ("ConfigMap", resnet),
        ("Service", "resnet"),
        ("Service", resnet),
        ("Deployment", resnet),
        ("HorizontalPodAutoscaler", "resnet"),
    ]
    assert "ownerReferences" in result.stderr  # says why the output has none


def test_render_reads_several_documents_from_stdin_with_the_operators_images():
    stream = (SAMPLES / "isvc-cpu.yaml").read_text() + "\n---\n" + (SAMPLES / "isvc-gpu.yaml").read_text()
    result = kubeserve_operator(
        "render",
        "-f",
        "-",
        stdin=stream,
        KUBESERVE_OPERATOR_CPU_IMAGE="mirror.example/cpu:7",
        KUBESERVE_OPERATOR_CUDA_IMAGE="mirror.example/cuda:7",
    )
    assert result.returncode == 0, result.stderr

    deployments = [d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "Deployment"]
    images = [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deployments]
    assert images == ["mirror.example/cpu:7", "mirror.example/cuda:7"]
    # The runtime's config file comes out readable, as a literal block.
    assert "runtime.yaml: |\n    allow_spinning: false\n" in result.stdout


def test_render_rejects_an_invalid_file_with_every_problem_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "serving.kubeserve.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": "bad"},
                "spec": {
                    "model": {"version": "1", "uri": "ftp://example.com/m.onnx"},
                    "autoscaling": {"minReplicas": 4, "maxReplicas": 2},
                },
            }
        )
    )
    result = kubeserve_operator("render", "-f", str(bad))

    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert f"{bad}, document 1 (bad): spec.model.uri: uri must be https://HOST/PATH" in result.stderr
    assert "spec.autoscaling: minReplicas must be at most maxReplicas" in result.stderr


def test_render_explains_semantic_problems(tmp_path):
    body = yaml.safe_load((SAMPLES / "isvc-cpu.yaml").read_text())
    body["spec"]["runtime"]["device"] = "cuda"
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(body))

    result = kubeserve_operator("render", "-f", str(path))
    assert result.returncode == 1
    assert "spec.runtime.device: cuda needs a GPU" in result.stderr


def test_render_refuses_a_queue_delay_target_within_the_batching_window(tmp_path):
    body = yaml.safe_load((SAMPLES / "isvc-cpu.yaml").read_text())
    body["spec"]["autoscaling"]["targetQueueDelaySeconds"] = 0.002  # the sample's window is 2000 µs
    path = tmp_path / "target.yaml"
    path.write_text(yaml.safe_dump(body))

    result = kubeserve_operator("render", "-f", str(path))
    assert result.returncode == 1
    assert (
        "spec.autoscaling: targetQueueDelaySeconds must be above spec.batching.maxQueueDelayMicroseconds"
        in result.stderr
    )


def test_render_says_what_is_wrong_with_unreadable_input(tmp_path):
    missing = kubeserve_operator("render", "-f", str(tmp_path / "nope.yaml"))
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"kubeserve-operator: cannot read {tmp_path / 'nope.yaml'}: No such file or directory",
    )
    broken = kubeserve_operator("render", "-f", "-", stdin="spec: [unclosed\n")
    assert broken.returncode == 1
    assert broken.stderr.startswith("kubeserve-operator: stdin is not valid YAML")
    other = kubeserve_operator("render", "-f", "-", stdin="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert other.returncode == 1
    assert "kind: Input should be 'InferenceService'" in other.stderr
    assert "Traceback" not in broken.stderr + other.stderr


def test_run_without_a_cluster_says_so_without_a_traceback(tmp_path):
    result = kubeserve_operator("run", "--standalone", KUBECONFIG=str(tmp_path / "none"), HOME=str(tmp_path))
    assert result.returncode == 1
    # One line, plainly: the file is missing (not "invalid"), and nothing half-started complains afterwards.
    assert result.stderr.strip() == (
        f"kubeserve-operator: stopped: no cluster to talk to: not in a pod, and kubeconfig {tmp_path / 'none'} "
        "does not exist"
    )


def test_run_with_an_unusable_kubeconfig_says_why(tmp_path):
    broken = tmp_path / "kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\n")
    result = kubeserve_operator("run", "--standalone", KUBECONFIG=str(broken), HOME=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"kubeserve-operator: stopped: no cluster to talk to: not in a pod, and kubeconfig {broken} is unusable"
    )
    assert "Traceback" not in result.stderr and "never awaited" not in result.stderr


def test_bad_operator_settings_are_named_and_exit_2():
    result = kubeserve_operator("run", KUBESERVE_OPERATOR_HEALTH_PORT="eighty")
    assert result.returncode == 2
    assert "KUBESERVE_OPERATOR_HEALTH_PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.usefixtures("kopf_peering_crds")
async def test_run_reconciles_with_peering_serves_liveness_and_stops_cleanly_on_sigterm(
    api, objects, deployment_of, eventually, isvc_factory
):
    # Real time here: a separate process cannot share the test's fake clock. $KUBECONFIG points at the in-memory
    # API server.
    await api.create("/apis/kopf.dev/v1/clusterkopfpeerings", {"metadata": {"name": "kubeserve"}})
    health_port, metrics_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        "run",
        env={
            **os.environ,
            "PYTHONSAFEPATH": "1",
            "KUBESERVE_OPERATOR_HEALTH_PORT": str(health_port),
            "KUBESERVE_OPERATOR_METRICS_PORT": str(metrics_port),
            "KUBESERVE_OPERATOR_PEERING_PRIORITY": "7",
            "KUBESERVE_OPERATOR_CPU_IMAGE": "kubeserve-runtime:e2e",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await api.create("/apis/serving.kubeserve.io/v1alpha1/namespaces/ml/inferenceservices", isvc_factory())
        await eventually(lambda: deployment_of("ml", "mlp"), within=60)
        image = deployment_of("ml", "mlp")["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "kubeserve-runtime:e2e"

        peers = objects("kopf.dev/v1/clusterkopfpeerings", None, "kubeserve")["status"]
        assert [peer["priority"] for peer in peers.values() if peer] == [7]

        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{health_port}/healthz") as response,
        ):
            assert response.status == 200
        # Its own metrics: the reconcile of mlp counted, in Prometheus' text format. (Counted once the operator has
        # the answer to its apply, which may be a moment after the test sees the Deployment.)
        for _ in range(600):
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
            ):
                assert response.status == 200
                exposition = await response.text()
            families = {family.name: family for family in text_string_to_metric_families(exposition)}
            reconciles = {s.labels["result"]: s.value for s in families["kubeserve_operator_reconciles"].samples}
            if reconciles.get("ok", 0) >= 1:
                break
            await asyncio.sleep(0.05)
        assert reconciles.get("ok", 0) >= 1
        phases = [s for s in families["kubeserve_operator_rollout_phase"].samples if s.value == 1]
        assert [(s.labels["inferenceservice"], s.labels["phase"]) for s in phases] == [("mlp", "Progressing")]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode()
    # One JSON object per line, kopf's own messages included; those about an object name it.
    assert "--- Logging error ---" not in output.decode()
    lines = [json.loads(line) for line in output.decode().splitlines()]
    about_mlp = [line for line in lines if line["logger"] == "kopf.objects"]
    assert about_mlp
    assert {(line["namespace"], line["name"]) for line in about_mlp} == {("ml", "mlp")}
    assert not [line for line in lines if line.get("event") == "peering_off"]


@pytest.mark.usefixtures("kopf_peering_crds")
async def test_run_without_its_peering_object_works_alone_and_says_so(
    api, objects, deployment_of, eventually, isvc_factory
):
    # kopf's peering CRDs are installed (crds/kopf-peering.yaml), the peering object is not: kopf alone would idle.
    process = await asyncio.create_subprocess_exec(
        SCRIPT,
        "run",
        env={
            **os.environ,
            "PYTHONSAFEPATH": "1",
            "KUBESERVE_OPERATOR_HEALTH_PORT": "0",
            "KUBESERVE_OPERATOR_METRICS_PORT": "0",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await api.create("/apis/serving.kubeserve.io/v1alpha1/namespaces/ml/inferenceservices", isvc_factory())
        await eventually(lambda: deployment_of("ml", "mlp"), within=60)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, output.decode()
    lines = [json.loads(line) for line in output.decode().splitlines()]
    (warning,) = [line for line in lines if line.get("event") == "peering_off"]
    assert warning["level"] == "WARNING"
    assert "no ClusterKopfPeering 'kubeserve' (kopf.dev/v1)" in warning["message"]
