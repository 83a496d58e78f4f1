"""How ``kubeserve-runtime serve`` ends: its exit codes, and the report of an address it cannot listen on, which the
single server (``lifecycle``) and the supervisor of workers (``supervisor``) make alike. Imports neither the HTTP
server nor ONNX Runtime: the supervisor uses it."""

from __future__ import annotations

import logging

from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.termination import write_termination_message

log = logging.getLogger("kubeserve.runtime")

EXIT_OK = 0
EXIT_MODEL_LOAD_FAILED = 3
EXIT_LISTEN_FAILED = 4


def listen_failed(settings: RuntimeSettings, error: OSError) -> int:
    """One log line and the termination message, in the same words; the exit code to return."""
    reason = error.strerror or str(error)
    log.error(
        "cannot listen",
        extra={"event": "listen_failed", "host": settings.host, "port": settings.port, "reason": reason},
    )
    write_termination_message(
        settings.termination_message_path, f"cannot listen on {settings.host}:{settings.port}: {reason}"
    )
    return EXIT_LISTEN_FAILED
