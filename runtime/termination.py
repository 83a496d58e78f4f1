"""The termination message: Kubernetes shows this file's contents as the container's last words
(``lastState.terminated.message``), which the operator turns into the InferenceService's status."""

from __future__ import annotations

import contextlib
from pathlib import Path

# Kubernetes caps the message at 4 KiB.
LIMIT = 4096


def write_termination_message(path: Path | None, message: str) -> None:
    """Only where the kubelet made the file: never create one on a developer's machine."""
    if path is None or not path.is_file():
        return
    with contextlib.suppress(OSError):
        path.write_text(message[: LIMIT - 1] + "\n")
