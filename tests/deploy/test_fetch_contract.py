"""The operator's init container and `kubeserve-runtime fetch` agree: what one writes, the other accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from kubeserve.runtime.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def test_the_operators_fetch_init_container_is_a_command_fetch_accepts():
    # The GPU sample's model comes over https, so its pods fetch it first.
    operator = Path(sys.executable).parent / "kubeserve-operator"
    result = subprocess.run(
        [operator, "render", "-f", REPO / "samples" / "isvc-gpu.yaml"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    (deployment,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (runtime,) = pod["containers"]

    assert init["image"] == runtime["image"]
    assert init["command"] == ["kubeserve-runtime"]
    args = build_parser().parse_args(init["args"])
    assert args.command == "fetch"
    uri, dest = args.files
    assert uri == "https://models.example.com/resnet50/2024-06-01/model.onnx"
    # DEST is on a volume the runtime container mounts too.
    mounts = {mount["name"]: mount["mountPath"] for mount in runtime["volumeMounts"]}
    assert any(Path(dest).parent == Path(path) for path in mounts.values())
    # A failed fetch is explained in the pod's status: the fetch writes the reason there.
    assert args.termination_message_path == Path(init.get("terminationMessagePath", "/dev/termination-log"))
