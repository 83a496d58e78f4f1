"""The kind end-to-end test's setup: pinned tools, images built from this checkout, a throwaway cluster.

Only the module that needs Docker requests these fixtures; where Docker is unusable it skips before any runs.
"""

from __future__ import annotations

import hashlib
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools" / "bin"
CHART = REPO / "charts" / "kubeserve"

# kind is taken from PATH, else this release is downloaded to .tools/bin and checked against its published sha256.
KIND_VERSION = "v0.31.0"
KIND_SHA256 = {"x86_64": "eb244cbafcc157dff60cf68693c14c9a75c4e6e6fedaf9cd71c58117cb93e3fa"}
KIND_URL = "https://github.com/kubernetes-sigs/kind/releases/download/{version}/kind-linux-amd64"


def run(*command: str | Path, timeout: float, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run a command; on failure, fail with the command and everything it printed."""
    printable = shlex.join(str(part) for part in command)
    try:
        result = subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"`{printable}` took longer than {timeout} s\n{error.stdout}\n{error.stderr}") from error
    if check and result.returncode != 0:
        raise AssertionError(f"`{printable}` exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def pinned_tool(name: str) -> str:
    """helm and kubectl: the pinned ones from `make tools`, else whatever is on PATH."""
    if (TOOLS / name).exists():
        return str(TOOLS / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make tools` (it puts a pinned {name} in .tools/bin)")
    return found


def kind_binary() -> str:
    found = shutil.which("kind")
    if found is not None:
        return found
    pinned = TOOLS / f"kind-{KIND_VERSION}"
    if pinned.exists():
        return str(pinned)
    expected = KIND_SHA256.get(platform.machine())
    if platform.system() != "Linux" or expected is None:
        pytest.fail(f"no kind on PATH, and no pinned kind download for {platform.system()} {platform.machine()}")
    with urllib.request.urlopen(KIND_URL.format(version=KIND_VERSION), timeout=120) as response:
        binary = response.read()
    actual = hashlib.sha256(binary).hexdigest()
    if actual != expected:
        pytest.fail(f"kind {KIND_VERSION} download has sha256 {actual}, expected {expected}: not using it")
    TOOLS.mkdir(parents=True, exist_ok=True)
    partial = pinned.with_suffix(".new")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(pinned)
    return str(pinned)


@dataclass(frozen=True)
class Images:
    operator: str
    runtime: str


@dataclass(frozen=True)
class Cluster:
    name: str
    kubeconfig: Path
    kind: str
    kubectl_binary: str
    helm_binary: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str | Path, timeout: float = 120, check: bool = True) -> str:
        return run(self.kubectl_binary, *args, timeout=timeout, env=self.env, check=check)

    def helm(self, *args: str | Path, timeout: float = 600) -> str:
        return run(self.helm_binary, *args, timeout=timeout, env=self.env)

    def load(self, *images: str) -> None:
        run(self.kind, "load", "docker-image", "--name", self.name, *images, timeout=600)

    def diagnostics(self, namespace: str) -> str:
        """What a person would look at when the test fails: the objects, the pods, the operator's logs."""
        commands = [
            ("get", "inferenceservices,deployments,pods,services,hpa,events", "-n", namespace, "-o", "wide"),
            ("describe", "inferenceservices,pods", "-n", namespace),
            ("get", "pods", "-n", "kubeserve-system", "-o", "wide"),
            ("logs", "-n", "kubeserve-system", "-l", "app.kubernetes.io/name=kubeserve-operator", "--tail=200"),
        ]
        return "\n".join(f"$ kubectl {' '.join(args)}\n{self.kubectl(*args, check=False)}" for args in commands)


@pytest.fixture(scope="module")
def images() -> Images:
    """Both images, built from this checkout and tagged as the chart's defaults name them."""
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    built = Images(
        operator=f"{values['operator']['image']['repository']}:{version}", runtime=values["runtime"]["cpuImage"]
    )
    for dockerfile, tag in [("operator.Dockerfile", built.operator), ("runtime-cpu.Dockerfile", built.runtime)]:
        run("docker", "build", "-f", REPO / "docker" / dockerfile, "-t", tag, REPO, timeout=1800)
    return built


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A kind cluster of its own (its own kubeconfig, the user's is untouched), deleted afterwards."""
    created = Cluster(
        name=f"kubeserve-e2e-{secrets.token_hex(3)}",
        kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig",
        kind=kind_binary(),
        kubectl_binary=pinned_tool("kubectl"),
        helm_binary=pinned_tool("helm"),
    )
    try:
        run(
            created.kind, "create", "cluster", "--name", created.name,
            "--kubeconfig", created.kubeconfig, "--wait", "300s", timeout=900,
        )  # fmt: skip
        yield created
    finally:
        run(created.kind, "delete", "cluster", "--name", created.name, timeout=300, check=False)
