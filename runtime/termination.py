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


def write_termination_message(path: Path | None, message: str) -> None:
    """Only where the kubelet made the file: never create one on a developer's machine."""
    if path is None or not path.is_file():
        return
    with contextlib.suppress(OSError):
        path.write_text(message[: LIMIT - 1] + "\n")
