"""The Dockerfiles, checked without Docker: pinned bases, pinned installs, non-root, real entrypoints.

Docker cannot build here (no image pulls); `make e2e` builds and runs the images where it can.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
IMAGES = {
    "runtime-cpu.Dockerfile": "kubeserve-runtime",
    "runtime-cuda.Dockerfile": "kubeserve-runtime",
    "operator.Dockerfile": "kubeserve-operator",
}
RUNTIME_IMAGES = ["runtime-cpu.Dockerfile", "runtime-cuda.Dockerfile"]
NON_ROOT = "65532:65532"
# An exact release: at least major.minor.patch, optionally a variant (3.11.15-slim-bookworm, 13.0.2-cudnn-...).
EXACT_TAG = re.compile(r"^[^:@\s]+:v?\d+\.\d+\.\d+(-[A-Za-z0-9.\-]+)?(@sha256:[0-9a-f]{64})?$")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, instruction: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == instruction]


def parse(path: Path) -> list[Stage]:
    """Instructions by stage, continuation lines joined, comments dropped (enough for these checks)."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[Stage] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        instruction, arguments = instruction.upper(), " ".join(arguments.split())
        if instruction == "FROM":
            base, _, name = arguments.partition(" AS ")
            stages.append(Stage(base=base, name=name or None))
        else:
            assert stages, f"{path.name}: {instruction} before FROM"
            stages[-1].instructions.append((instruction, arguments))
    return stages


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


@pytest.fixture(params=list(IMAGES))
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return DOCKER / request.param


def test_every_base_image_is_an_exact_release_or_an_earlier_stage(dockerfile):
    seen: set[str] = set()
    for stage in parse(dockerfile):
        assert stage.base in seen or EXACT_TAG.match(stage.base), f"{dockerfile.name}: FROM {stage.base} is not pinned"
        if stage.name:
            seen.add(stage.name)


def test_the_image_runs_its_console_script_as_a_numeric_non_root_user(dockerfile):
    final = parse(dockerfile)[-1]
    (entrypoint,) = final.arguments("ENTRYPOINT")
    (user,) = final.arguments("USER")

    assert json.loads(entrypoint) == [IMAGES[dockerfile.name]]
    assert IMAGES[dockerfile.name] in project()["project"]["scripts"]
    # Numeric, so that Kubernetes' runAsNonRoot can check it.
    assert user == NON_ROOT


def test_the_image_writes_no_bytecode_at_run_time(dockerfile):
    environment = " ".join(parse(dockerfile)[-1].arguments("ENV")).split()

    assert "PYTHONDONTWRITEBYTECODE=1" in environment


def test_every_pip_install_is_pinned_by_the_constraints(dockerfile):
    installs = [
        command
        for stage in parse(dockerfile)
        for run in stage.arguments("RUN")
        for command in run.split("&&")
        if "pip install" in command
    ]
    assert installs
    for command in installs:
        assert "-c constraints.txt" in command, f"{dockerfile.name}: {command.strip()}"


def test_the_cuda_image_pins_onnxruntime_gpu_to_the_cpu_release():
    # onnxruntime-gpu cannot sit in constraints.txt beside onnxruntime; it follows the same release.
    runs = " ".join(run for stage in parse(DOCKER / "runtime-cuda.Dockerfile") for run in stage.arguments("RUN"))
    (pinned,) = re.findall(r"onnxruntime-gpu==([\w.]+)", runs)

    assert pinned == constraints()["onnxruntime"]
    assert "'.[gpu,tracing]'" in runs


def test_the_operator_image_has_no_model_runtime():
    runs = " ".join(run for stage in parse(DOCKER / "operator.Dockerfile") for run in stage.arguments("RUN"))

    assert "onnxruntime" not in runs
    # kubeserve with the operator extra only (kopf, kubernetes): see test_packaging.py.
    assert re.search(r"pip install -c constraints.txt '\.\[operator\]'(\s|$)", runs)


@pytest.mark.parametrize("name", RUNTIME_IMAGES)
def test_runtime_images_carry_the_sample_models_built_in_a_build_stage(name):
    stages = parse(DOCKER / name)
    build_samples = "python -m kubeserve.runtime.samples /opt/kubeserve/samples"
    builders = [stage for stage in stages[:-1] if any(build_samples in run for run in stage.arguments("RUN"))]
    assert len(builders) == 1
    final = stages[-1]
    assert f"--from={builders[0].name} /opt/kubeserve/samples /opt/kubeserve/samples" in final.arguments("COPY")
    # onnx (the samples extra) stays in the build stage.
    assert not any("samples" in run for run in final.arguments("RUN"))
    assert json.loads(final.arguments("CMD")[0]) == ["serve", "--config", "/etc/kubeserve/runtime.yaml"]
    assert final.arguments("EXPOSE") == ["8080 8001"]  # REST, gRPC


def test_the_build_context_holds_what_the_dockerfiles_copy():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*", ".dockerignore sends nothing by default"
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for name in IMAGES:
        for stage in parse(DOCKER / name):
            for copy in stage.arguments("COPY"):
                if copy.startswith("--from="):
                    continue
                *sources, _ = copy.split()
                for source in sources:
                    assert source.rstrip("/") in included, f"{name} copies {source}, which .dockerignore leaves out"
                    assert (REPO / source).exists()


def test_the_images_install_every_package_folder():
    """The images install the package for real (not editable): a folder missing from pyproject's list is left out."""
    setuptools = project()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    for package, folder in setuptools["package-dir"].items():
        for module in (REPO / folder).rglob("*.py"):
            if "__pycache__" in module.parts or module.parent == REPO / folder:
                continue
            subpackage = ".".join([package, *module.parent.relative_to(REPO / folder).parts])
            assert subpackage in listed, f"{module.relative_to(REPO)} is in no installed package: add {subpackage}"
