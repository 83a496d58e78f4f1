"""The gRPC server: the stock clients' suite (``grpc_clients.py``, in a process of its own), and the generated protocol
modules in step with their .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kubeserve.runtime.grpc import generate

SUITE = Path(__file__).with_name("grpc_clients.py")


def test_stock_grpc_clients_suite():
    """``tritonclient.grpc`` cannot share a process with KServe's client, which other test modules import."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SUITE)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout[-20_000:] + done.stderr[-5_000:]


def test_generated_modules_are_in_step_with_the_proto_files():
    """Regenerate with `python -m kubeserve.runtime.grpc.generate` when this fails."""
    for name, text in generate.generate().items():
        assert (generate.HERE / name).read_text() == text, f"{name} is out of step with proto/"
