"""The runtime carries only the runtime: the operator's dependencies are an extra, which only the operator installs.

kopf and kubernetes (and what they pull in) are tens of megabytes the runtime image has no use for. These tests keep
them out of the runtime's imports, out of the base dependencies, and out of the runtime images' installs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
OPERATOR_ONLY = {"kopf", "kubernetes"}
RUNTIME_DOCKERFILES = ["runtime-cpu.Dockerfile", "runtime-cuda.Dockerfile"]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def imported(stderr: str) -> set[str]:
    """Top-level packages named in `-X importtime` output (`import time: self | cumulative | module`)."""
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def console_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def profiled() -> dict[str, str]:
    return {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONSAFEPATH": "1", "NO_COLOR": "1"}


def test_importing_the_runtime_imports_nothing_of_the_operator():
    # A fresh interpreter: this one has the operator's tests' imports.
    code = (
        "import json, sys, kubeserve.runtime.cli, kubeserve.runtime.server.inference_app; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    modules = {name.split(".")[0] for name in json.loads(result.stdout)}

    assert "httptools" in modules
    assert not modules & OPERATOR_ONLY


def test_serving_a_model_imports_nothing_of_the_operator(tmp_path):
    from kubeserve.runtime.samples import write_sample

    model = write_sample("tiny", tmp_path / "tiny.onnx")
    command = [console_script("kubeserve-runtime"), "serve", "--model-path", str(model), "--model-name", "tiny"]
    server = subprocess.Popen(
        [*command, "--port", "0", "--grpc-port", "0", "--host", "127.0.0.1"],
        env=profiled(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        # The server has imported everything it serves with once the model is loaded and warmed up.
        deadline = time.monotonic() + 60
        assert server.stderr is not None
        for line in server.stderr:
            lines.append(line)
            if '"model_ready"' in line or time.monotonic() > deadline:
                break
    finally:
        server.send_signal(signal.SIGTERM)
        remaining, _ = server.communicate(timeout=30)
    stderr = "".join(lines) + (remaining or "")

    assert '"model_ready"' in stderr, stderr[-2000:]
    modules = imported(stderr)
    assert "onnxruntime" in modules and "httptools" in modules
    assert not modules & OPERATOR_ONLY, f"serving imported {sorted(modules & OPERATOR_ONLY)}"


def test_fetching_a_model_imports_nothing_of_the_operator(tmp_path):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"bytes")
    command = [console_script("kubeserve-runtime"), "fetch", source.as_uri(), str(tmp_path / "fetched.onnx")]
    result = subprocess.run(command, env=profiled(), capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr[-2000:]
    assert not imported(result.stderr) & OPERATOR_ONLY


def names(requirements: list[str]) -> set[str]:
    return {Requirement(requirement).name.lower() for requirement in requirements}


def resolved(extra: str) -> set[str]:
    """The distributions an extra brings, following `kubeserve[...]` references to other extras."""
    found: set[str] = set()
    for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
        if requirement.name == PROJECT["name"]:
            for inner in requirement.extras:
                found |= resolved(inner)
        else:
            found.add(requirement.name.lower())
    return found


def test_the_operator_dependencies_are_an_extra_not_base_dependencies():
    assert not names(PROJECT["dependencies"]) & OPERATOR_ONLY
    assert resolved("operator") == OPERATOR_ONLY
    # What serving needs installs without the operator's dependencies; what the tests need brings them.
    for extra in ("cpu", "gpu", "samples"):
        assert not resolved(extra) & OPERATOR_ONLY, extra
    assert resolved("test") >= OPERATOR_ONLY


def third_party_imports(folder: Path) -> set[str]:
    pattern = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", re.M)
    found = {name for module in folder.rglob("*.py") for name in pattern.findall(module.read_text())}
    return found - set(sys.stdlib_module_names) - {"kubeserve", "__future__"}


def test_what_only_the_operator_imports_is_in_the_operator_extra():
    """A new operator-only import must land in the extra, not in the runtime's base dependencies."""
    from importlib.metadata import packages_distributions

    only_operator = third_party_imports(REPO / "operator") - third_party_imports(REPO / "runtime")
    distributions = packages_distributions()
    needed = {distribution.lower() for module in only_operator for distribution in distributions.get(module, [module])}

    assert needed == OPERATOR_ONLY


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` the Dockerfile runs (comments dropped, continuation lines joined)."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    installs = []
    for line in text.splitlines():
        if line.strip().upper().startswith("RUN "):
            for command in line.strip()[4:].split("&&"):
                words = shlex.split(command)
                if "pip" in " ".join(words[:2]) and "install" in words:
                    installs.append(words[words.index("install") + 1 :])
    return installs


def extras_installed(dockerfile: Path) -> list[set[str]]:
    """For each install of the project itself (`.` or `.[a,b]`), the extras it names."""
    found = []
    for arguments in pip_installs(dockerfile):
        for argument in arguments:
            match = re.fullmatch(r"\.(?:\[([\w,\s-]*)\])?", argument)
            if match:
                found.append({extra.strip() for extra in (match.group(1) or "").split(",") if extra.strip()})
    return found


def test_the_operator_image_installs_the_operator_extra():
    (extras,) = extras_installed(DOCKER / "operator.Dockerfile")

    assert extras == {"operator"}


@pytest.mark.parametrize("name", RUNTIME_DOCKERFILES)
def test_the_runtime_images_do_not_install_the_operator_extra(name):
    installs = extras_installed(DOCKER / name)

    assert installs
    for extras in installs:
        assert "operator" not in extras
        assert not extras & {"test"}
        for extra in extras:
            assert not resolved(extra) & OPERATOR_ONLY, f"{name}: the {extra} extra brings the operator's dependencies"
    packages = " ".join(" ".join(arguments) for arguments in pip_installs(DOCKER / name))
    assert not re.search(r"\b(kopf|kubernetes)\b", packages)


@pytest.mark.parametrize("name", RUNTIME_DOCKERFILES)
def test_the_runtime_images_install_tracing(name):
    """OpenTelemetry's SDK and OTLP exporter are in the image's venv (its first install): KServe's and Triton's users
    expect tracing there, switched on by OTEL_* variables alone."""
    assert "tracing" in extras_installed(DOCKER / name)[0]
    assert resolved("tracing") == {"opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}


def test_make_installs_the_operator_extra_for_the_tests():
    makefile = (REPO / "Makefile").read_text()
    stamp = makefile[makefile.index("$(STAMP):") :].split("\n\n", 1)[0]
    assert "$(call install,$(TEST_REQUIREMENT))" in stamp
    # Named outside the call: a comma inside $(call ...) would split the requirement ('.[cpu' and 'operator,test]').
    (extras,) = re.findall(r"^TEST_REQUIREMENT := \.\[([\w,]+)\]$", makefile, re.MULTILINE)
    assert "operator" in extras.split(",")
    assert not re.search(r"\$\(call install,[^)]*\[[^\]]*,", makefile)
