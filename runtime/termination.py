"""The termination message: Kubernetes shows this file's contents as the container's last words
(``lastState.terminated.message``), which the operator turns into the InferenceService's status."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

# Kubernetes caps the message at 4 KiB.
LIMIT = 4096
DEFAULT_PATH = Path("/dev/termination-log")  # the container's terminationMessagePath unless the pod sets another


def add_termination_message_argument(parser: argparse.ArgumentParser) -> None:
    """``--termination-message-path``, as the commands that run in a pod (fetch, optimize) take it."""
    parser.add_argument(
        "--termination-message-path",
        type=Path,
        default=DEFAULT_PATH,
        metavar="FILE",
        help="on failure, write the reason here if the file exists (Kubernetes creates it; default %(default)s)",
    )


def termination_message_read(path: Path | None) -> bool:
    """Whether something reads the termination message: the kubelet creates the file before the container starts, so
    it exists in a pod, and nowhere else unless someone made it. (An environment variable such as
    KUBERNETES_SERVICE_HOST would also say "in a pod", but not whether this container's message is collected.)"""
    return path is not None and path.is_file()


def write_termination_message(path: Path | None, message: str) -> None:
    """Only where the kubelet made the file: never create one on a developer's machine."""
    if path is None or not termination_message_read(path):
        return
    with contextlib.suppress(OSError):
        path.write_text(message[: LIMIT - 1] + "\n")
