"""`make kind` (bench/kind_cluster.py) where Docker cannot run: it stops at once, saying so; its plan, printed
without running, builds both images, creates and loads the cluster, installs the chart with values the chart's
schema accepts and that name the images built, and applies the CPU sample. The kind end-to-end test runs it for
real where Docker works."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from kind_cluster import (  # bench/, put on sys.path above
    CHART,
    OPERATOR_NAMESPACE,
    PULL_POLICY,
    REPO,
    RESOURCE,
    SAMPLE,
    Cluster,
    apply_ready,
    chart_values,
    cpu_sample,
    how_to_call,
    local_images,
    read_sample,
)

SCRIPT = REPO / "bench" / "kind_cluster.py"
HELM = REPO / ".tools" / "bin" / "helm"
NO_IMAGE = "No image is published; build it: make kind"


def no_docker_path(tmp_path: Path) -> str:
    """A PATH with the shell's tools but no `docker`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "test", "uname", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_without_docker_the_script_stops_at_once_and_says_why(tmp_path):
    env = {**os.environ, "PATH": no_docker_path(tmp_path)}
    for arguments in ([], ["--preflight"]):
        result = subprocess.run(
            [sys.executable, SCRIPT, *arguments], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert result.returncode == 1
        assert "make kind needs Docker, which is not usable here (no `docker` command)" in result.stderr
        assert result.stdout == ""


def test_make_kind_without_docker_fails_before_installing_anything(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make here")
    env = {**os.environ, "PATH": no_docker_path(tmp_path)}
    result = subprocess.run(
        [make, "-C", REPO, "kind", f"PYTHON={sys.executable}", f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "make kind needs Docker" in result.stderr
    assert not (tmp_path / "venv").exists()


def test_the_preflight_needs_nothing_but_python():
    """`make kind` runs it with the system's Python before the venv exists: only the standard library at import."""
    code = (
        "import runpy, sys; sys.modules['yaml'] = None; path = sys.argv[1]; sys.argv[:] = [path, '--help']; "
        "runpy.run_path(path, run_name='__main__')"
    )
    command = [sys.executable, "-c", code, SCRIPT]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def dry_run() -> tuple[dict, list[list[str]]]:
    result = subprocess.run(
        [sys.executable, SCRIPT, "--dry-run"], capture_output=True, text=True, timeout=60, check=True
    )
    values_line, *lines = result.stdout.splitlines()
    assert values_line.startswith("# values.json: ")
    return json.loads(values_line.removeprefix("# values.json: ")), [shlex.split(line) for line in lines]


def test_the_plan_builds_creates_loads_installs_and_applies_the_cpu_sample_in_that_order():
    values, commands = dry_run()
    images = local_images()
    assert values == chart_values(images)
    steps = [(Path(command[0]).name, *command[1:3]) for command in commands]
    assert steps == [
        ("docker", "build", "-f"),
        ("docker", "build", "-f"),
        ("kind", "create", "cluster"),
        ("kind", "load", "docker-image"),
        ("helm", "--kube-context", "kind-kubeserve"),
        ("kubectl", "--context", "kind-kubeserve"),
        ("kubectl", "--context", "kind-kubeserve"),
    ]
    builds = {Path(command[3]).name: command[command.index("-t") + 1] for command in commands[:2]}
    assert builds == {"operator.Dockerfile": images.operator, "runtime-cpu.Dockerfile": images.runtime}
    assert commands[3][-2:] == [images.operator, images.runtime]
    install = commands[4]
    assert install[3:6] == ["upgrade", "--install", "kubeserve"] and Path(install[6]) == CHART
    assert install[install.index("--namespace") + 1] == OPERATOR_NAMESPACE
    assert install[install.index("--values") + 1] == "values.json"
    assert commands[5][3:] == ["apply", "-n", "default", "-f", str(SAMPLE)]
    assert "--for=condition=Ready" in commands[6] and "inferenceservices.serving.kubeserve.io/mlp" in commands[6]


def merged(defaults: dict, overrides: dict) -> dict:
    out = dict(defaults)
    for key, value in overrides.items():
        out[key] = merged(defaults.get(key, {}), value) if isinstance(value, dict) else value
    return out


def test_the_chart_values_are_valid_against_the_chart_schema():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    # values.schema.json names draft 07 by its https address, which jsonschema does not recognize.
    jsonschema.Draft7Validator(schema).validate(merged(defaults, chart_values(local_images())))


def test_helm_renders_the_built_images_never_pulled(tmp_path):
    if not HELM.exists():
        pytest.fail("helm is missing: `make tools` puts the pinned helm in .tools/bin")
    images = local_images()
    values = tmp_path / "values.json"
    values.write_text(json.dumps(chart_values(images)))
    command = [HELM, "template", "kubeserve", CHART, "--namespace", OPERATOR_NAMESPACE, "--values", values]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == (images.operator, PULL_POLICY)
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert images.runtime in env.values()
    assert PULL_POLICY in env.values()


def test_what_it_prints_at_the_end_is_a_request_the_cpu_sample_answers():
    cluster = Cluster("kubeserve", None, "kind", "kubectl", "helm")
    text = how_to_call(cluster, cpu_sample())
    forward, request = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    assert forward == "kubectl --context kind-kubeserve port-forward -n default service/mlp 8080:80"
    body = json.loads(shlex.split(request)[-1])
    (tensor,) = body["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("features", "FP32", [1, 32])
    assert len(tensor["data"]) == 32
    assert "kind delete cluster --name kubeserve" in text


def test_the_chart_readme_and_notes_say_no_image_is_published():
    readme = (CHART / "README.md").read_text()
    assert NO_IMAGE in readme.replace("**", "").replace("`", "")
    assert NO_IMAGE in (CHART / "templates" / "NOTES.txt").read_text()


def test_applying_a_sample_waits_for_it_and_reads_back_the_object(tmp_path):
    """What the end-to-end tests call on each InferenceService they apply, against a kubectl that records its calls
    and answers `get` with an object: apply, wait for Ready, get, each naming the manifest's object."""
    calls = tmp_path / "calls"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        f'#!/bin/sh\necho "$@" >> {calls}\n'
        'case "$*" in *" get "*) echo \'{"metadata": {"name": "mlp", "namespace": "default"}}\';; esac\n'
    )
    kubectl.chmod(0o755)
    cluster = Cluster("e2e", None, "kind", str(kubectl), "helm")
    manifest = REPO / "samples" / "isvc-tabular.yaml"
    sample = read_sample(manifest)
    assert apply_ready(cluster, manifest) == {"metadata": {"name": "mlp", "namespace": "default"}}
    resource = f"{RESOURCE}/{sample.name}"
    assert [shlex.split(line) for line in calls.read_text().splitlines()] == [
        ["--context", "kind-e2e", "apply", "-n", sample.namespace, "-f", str(manifest)],
        ["--context", "kind-e2e", "wait", "-n", sample.namespace, resource, "--for=condition=Ready", "--timeout=600s"],
        ["--context", "kind-e2e", "get", "-n", sample.namespace, resource, "-o", "json"],
    ]
