"""``make kind``: kubeserve on a local kind cluster in one command, and the harness the kind end-to-end test uses.

No image is published: this builds both images from the checkout (``docker/operator.Dockerfile``,
``docker/runtime-cpu.Dockerfile``), creates the kind cluster ``kubeserve`` (or reuses it), loads the images into it,
installs the chart with values that name those images and never pull them, applies ``samples/isvc-cpu.yaml``,
waits for it to be Ready and prints how to send it a request.

    python bench/kind_cluster.py              # all of it (make kind)
    python bench/kind_cluster.py --dry-run    # print the commands and the chart values, run nothing
    python bench/kind_cluster.py --preflight  # only check that Docker answers (needs nothing but Python)

``tests/e2e`` builds, creates, loads and installs with the same functions, on a throwaway cluster of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
CHART = REPO / "charts" / "kubeserve"
SAMPLE = REPO / "samples" / "isvc-cpu.yaml"
RELEASE = "kubeserve"
OPERATOR_NAMESPACE = "kubeserve-system"
CLUSTER_NAME = "kubeserve"  # make kind's cluster; the end-to-end test makes its own
# The InferenceService resource by its full name: KServe's has the same kind and short name (isvc).
RESOURCE = "inferenceservices.serving.kubeserve.io"

# kind is taken from PATH, else this release is downloaded to .tools/bin and checked against its published sha256
# (no package registry ships it).
KIND_VERSION = "v0.31.0"
KIND_SHA256 = {"x86_64": "eb244cbafcc157dff60cf68693c14c9a75c4e6e6fedaf9cd71c58117cb93e3fa"}
KIND_URL = "https://github.com/kubernetes-sigs/kind/releases/download/{version}/kind-linux-amd64"
KIND_INSTALL = "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"

# The images exist only in the cluster (kind load): never pull them.
PULL_POLICY = "Never"
# How long an InferenceService may take to be Ready (its pods started, its model fetched and loaded).
READY_SECONDS = 600


class SetupError(Exception):
    """Something this machine lacks (Docker, kind, helm, kubectl); the message says what to do."""


class CommandFailed(AssertionError):
    """A command exited non-zero or ran too long. An AssertionError, so that a test reports it as its failure."""


def docker_problem() -> str | None:
    """Why Docker cannot be used here, or None when `docker info` answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` command"
    try:
        result = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return f"`docker info` failed: {lines[-1] if lines else f'exit code {result.returncode}'}"
    return None


def run(*command: str | Path, timeout: float, env: dict[str, str] | None = None, check: bool = True) -> str:
    """Run a command; on failure, raise with the command and everything it printed."""
    printable = shlex.join(str(part) for part in command)
    try:
        result = subprocess.run(
            [str(part) for part in command], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise CommandFailed(f"`{printable}` took longer than {timeout} s\n{error.stdout}\n{error.stderr}") from error
    if check and result.returncode != 0:
        raise CommandFailed(f"`{printable}` exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result.stdout


def pinned_tool(name: str) -> str:
    """helm and kubectl: the pinned ones from `make tools`, else whatever is on PATH."""
    if (TOOLS / name).exists():
        return str(TOOLS / name)
    found = shutil.which(name)
    if found is None:
        raise SetupError(f"{name} is not installed: run `make tools` (it puts a pinned {name} in .tools/bin)")
    return found


def kind_binary() -> str:
    """kind from PATH, else the pinned release in .tools/bin, downloaded once and checked against its sha256."""
    found = shutil.which("kind")
    if found is not None:
        return found
    pinned = TOOLS / f"kind-{KIND_VERSION}"
    if pinned.exists():
        return str(pinned)
    expected = KIND_SHA256.get(platform.machine())
    if platform.system() != "Linux" or expected is None:
        raise SetupError(
            f"no `kind` on PATH, and no pinned kind download for {platform.system()} {platform.machine()}: "
            f"install kind {KIND_VERSION} ({KIND_INSTALL})"
        )
    url = KIND_URL.format(version=KIND_VERSION)
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            binary = response.read()
    except OSError as error:
        raise SetupError(
            f"no `kind` on PATH, and downloading kind {KIND_VERSION} from {url} failed ({error}): "
            f"install kind ({KIND_INSTALL}) and run this again"
        ) from error
    actual = hashlib.sha256(binary).hexdigest()
    if actual != expected:
        raise SetupError(f"kind {KIND_VERSION} download has sha256 {actual}, expected {expected}: not using it")
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


def local_images() -> Images:
    """The tags the images are built and loaded under: local names (nothing is pushed), the chart's appVersion."""
    import yaml

    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return Images(operator=f"kubeserve-operator:{version}", runtime=f"kubeserve-runtime:{version}")


def build_commands(images: Images) -> list[tuple[str | Path, ...]]:
    """`docker build` for each image, from the repository root."""
    return [
        ("docker", "build", "-f", REPO / "docker" / dockerfile, "-t", tag, REPO)
        for dockerfile, tag in (("operator.Dockerfile", images.operator), ("runtime-cpu.Dockerfile", images.runtime))
    ]


def build_images(images: Images) -> None:
    for command in build_commands(images):
        run(*command, timeout=1800)


def chart_values(images: Images) -> dict[str, Any]:
    """The values `helm install` gets: the images as built here, never pulled (they exist only in the cluster)."""
    repository, tag = images.operator.rsplit(":", 1)
    return {
        "operator": {"image": {"repository": repository, "tag": tag, "pullPolicy": PULL_POLICY}},
        "runtime": {"cpuImage": images.runtime, "imagePullPolicy": PULL_POLICY},
    }


@dataclass(frozen=True)
class Cluster:
    """A kind cluster and the tools that talk to it. Every kubectl and helm call names the cluster's context, so
    whatever the kubeconfig's current context is does not matter."""

    name: str
    kubeconfig: Path | None  # None: kind's default, the user's kubeconfig
    kind: str
    kubectl_binary: str
    helm_binary: str

    @property
    def context(self) -> str:
        return f"kind-{self.name}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else dict(os.environ)

    def kubectl_command(self, *args: str | Path) -> tuple[str | Path, ...]:
        return (self.kubectl_binary, "--context", self.context, *args)

    def kubectl(self, *args: str | Path, timeout: float = 120, check: bool = True) -> str:
        return run(*self.kubectl_command(*args), timeout=timeout, env=self.env, check=check)

    def helm(self, *args: str | Path, timeout: float = 600) -> str:
        return run(self.helm_binary, "--kube-context", self.context, *args, timeout=timeout, env=self.env)

    def create_command(self) -> tuple[str | Path, ...]:
        where = ("--kubeconfig", self.kubeconfig) if self.kubeconfig else ()
        return (self.kind, "create", "cluster", "--name", self.name, *where, "--wait", "300s")

    def exists(self) -> bool:
        return self.name in run(self.kind, "get", "clusters", timeout=60).split()

    def export_kubeconfig(self) -> None:
        where = ("--kubeconfig", self.kubeconfig) if self.kubeconfig else ()
        run(self.kind, "export", "kubeconfig", "--name", self.name, *where, timeout=60)

    def create(self) -> None:
        run(*self.create_command(), timeout=900)

    def delete(self) -> None:
        run(self.kind, "delete", "cluster", "--name", self.name, timeout=300, check=False)

    def load_command(self, images: Images) -> tuple[str, ...]:
        return (self.kind, "load", "docker-image", "--name", self.name, images.operator, images.runtime)

    def load(self, images: Images) -> None:
        run(*self.load_command(images), timeout=600)

    def install_command(self, values_file: Path) -> tuple[str | Path, ...]:
        return (
            self.helm_binary, "--kube-context", self.context, "upgrade", "--install", RELEASE, CHART,
            "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--values", values_file,
            "--wait", "--timeout", "5m",
        )  # fmt: skip

    def install_chart(self, images: Images) -> None:
        """The images loaded into the cluster and the chart installed (again: an upgrade when it is there)."""
        self.load(images)
        with tempfile.TemporaryDirectory(prefix="kubeserve-kind-") as scratch:
            values_file = Path(scratch) / "values.json"  # JSON is YAML
            values_file.write_text(json.dumps(chart_values(images)))
            run(*self.install_command(values_file), timeout=600, env=self.env)

    @contextlib.contextmanager
    def port_forward(self, namespace: str, target: str, port: int = 80) -> Iterator[int]:
        """`kubectl port-forward` of ``target``'s ``port`` to a free port on 127.0.0.1, for as long as the block
        runs."""
        process = subprocess.Popen(
            [str(part) for part in self.kubectl_command("port-forward", "-n", namespace, target, f":{port}")],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline() if ready else ""
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if match is None:
                process.terminate()
                raise AssertionError(f"kubectl port-forward {target} did not start: {line}{process.communicate()[1]}")
            yield int(match.group(1))
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)

    def diagnostics(self, namespace: str) -> str:
        """What a person would look at when something fails: the objects, the pods, the operator's logs."""
        commands = [
            ("get", "inferenceservices,deployments,pods,services,hpa,events", "-n", namespace, "-o", "wide"),
            ("describe", "inferenceservices,pods", "-n", namespace),
            ("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"),
            ("logs", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=kubeserve-operator", "--tail=200"),
        ]
        return "\n".join(f"$ kubectl {' '.join(args)}\n{self.kubectl(*args, check=False)}" for args in commands)


@dataclass(frozen=True)
class Sample:
    name: str
    namespace: str
    model: str


def read_sample(manifest: Path) -> Sample:
    """The InferenceService in ``manifest``: its name, namespace and model's name."""
    import yaml

    sample = yaml.safe_load(manifest.read_text())
    name = sample["metadata"]["name"]
    return Sample(name, sample["metadata"].get("namespace", "default"), sample["spec"]["model"].get("name", name))


def cpu_sample() -> Sample:
    return read_sample(SAMPLE)


def sample_commands(cluster: Cluster, sample: Sample, manifest: Path = SAMPLE) -> list[tuple[str | Path, ...]]:
    """Apply ``manifest`` (``sample``'s; the CPU sample by default) and wait until its InferenceService is Ready."""
    resource = f"{RESOURCE}/{sample.name}"
    return [
        cluster.kubectl_command("apply", "-n", sample.namespace, "-f", manifest),
        cluster.kubectl_command(
            "wait", "-n", sample.namespace, resource, "--for=condition=Ready", f"--timeout={READY_SECONDS}s"
        ),
    ]


def apply_ready(cluster: Cluster, manifest: Path) -> dict[str, Any]:
    """Apply the InferenceService in ``manifest`` and wait until it is Ready (``sample_commands``): the object then."""
    sample = read_sample(manifest)
    for command in sample_commands(cluster, sample, manifest):
        run(*command, timeout=READY_SECONDS + 60, env=cluster.env)
    return json.loads(cluster.kubectl("get", "-n", sample.namespace, f"{RESOURCE}/{sample.name}", "-o", "json"))


def how_to_call(cluster: Cluster, sample: Sample) -> str:
    """What to type next: a port-forward to the sample's Service and one V2 request (input "features", FP32
    [1, 32], the bundled MLP's)."""
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 32], "data": [0.5] * 32}]}
    kind = "kind" if shutil.which("kind") else cluster.kind  # the pinned one by its path
    forward = shlex.join(
        ["kubectl", "--context", cluster.context, "port-forward", "-n", sample.namespace, f"service/{sample.name}",
         "8080:80"]
    )  # fmt: skip
    request = shlex.join(
        ["curl", "-s", f"http://127.0.0.1:8080/v2/models/{sample.model}/infer",
         "-H", "Content-Type: application/json", "-d", json.dumps(body, separators=(",", ":"))]
    )  # fmt: skip
    return "\n".join(
        [
            f"InferenceService {sample.name} is Ready in namespace {sample.namespace} of kind cluster {cluster.name}.",
            "Send it a request: in one terminal",
            f"  {forward}",
            "and in another",
            f"  {request}",
            f"Status and reasons: kubectl --context {cluster.context} describe -n {sample.namespace} "
            f"{RESOURCE}/{sample.name}",
            f"Remove everything: {shlex.join([kind, 'delete', 'cluster', '--name', cluster.name])}",
        ]
    )


def plan(cluster: Cluster, images: Images, sample: Sample, values_file: Path) -> list[tuple[str | Path, ...]]:
    """Every command `make kind` runs, in order (the cluster is created only when it does not exist yet)."""
    return [
        *build_commands(images),
        cluster.create_command(),
        cluster.load_command(images),
        cluster.install_command(values_file),
        *sample_commands(cluster, sample),
    ]


def make_cluster(name: str, *, dry_run: bool) -> Cluster:
    """The cluster make kind uses (the user's kubeconfig, so that kubectl reaches it afterwards) and its tools; a
    dry run runs nothing, so it names a tool it cannot find by its bare name."""
    if not dry_run:
        return Cluster(name, None, kind_binary(), pinned_tool("kubectl"), pinned_tool("helm"))

    def named(tool: str) -> str:
        try:
            return pinned_tool(tool)
        except SetupError:
            return tool

    return Cluster(name, None, shutil.which("kind") or "kind", named("kubectl"), named("helm"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the commands and the chart values, run nothing")
    mode.add_argument("--preflight", action="store_true", help="only check that Docker answers")
    parser.add_argument("--name", default=CLUSTER_NAME, help="the kind cluster's name (default %(default)s)")
    arguments = parser.parse_args(argv)

    if not arguments.dry_run:
        problem = docker_problem()
        if problem is not None:
            print(
                f"make kind needs Docker, which is not usable here ({problem}). It builds the kubeserve images "
                "(no image is published) and runs the kind cluster in Docker: install or start Docker, then run "
                "make kind again.",
                file=sys.stderr,
            )
            return 1
        if arguments.preflight:
            return 0
    try:
        cluster = make_cluster(arguments.name, dry_run=arguments.dry_run)
    except SetupError as error:
        print(f"make kind: {error}", file=sys.stderr)
        return 1
    images, sample = local_images(), cpu_sample()
    if arguments.dry_run:
        values_file = Path("values.json")
        print(f"# {values_file}: {json.dumps(chart_values(images))}")
        for command in plan(cluster, images, sample, values_file):
            print(shlex.join(str(part) for part in command))
        return 0
    try:
        for command in build_commands(images):
            print(f"$ {shlex.join(str(part) for part in command)}", flush=True)
            run(*command, timeout=1800)
        if cluster.exists():
            print(f"kind cluster {cluster.name} exists: using it", flush=True)
            cluster.export_kubeconfig()  # its context, in case the kubeconfig lost it
        else:
            print(f"$ {shlex.join(str(part) for part in cluster.create_command())}", flush=True)
            cluster.create()
        print(f"loading the images into {cluster.name}, installing the chart in {OPERATOR_NAMESPACE}", flush=True)
        cluster.install_chart(images)
    except CommandFailed as error:
        print(f"make kind: {error}", file=sys.stderr)
        return 1
    try:
        for command in sample_commands(cluster, sample):
            print(f"$ {shlex.join(str(part) for part in command)}", flush=True)
            run(*command, timeout=READY_SECONDS + 60, env=cluster.env)
    except CommandFailed as error:
        print(f"make kind: {error}\n\n{cluster.diagnostics(sample.namespace)}", file=sys.stderr)
        return 1
    print(f"\n{how_to_call(cluster, sample)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
