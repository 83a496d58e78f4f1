"""Admission: why a request is turned away without compute, one list of reasons for the batcher, the metrics
and the server.

The batcher and the server's state raise ``Rejected`` with a reason and the facts behind it; they know no
HTTP. The metrics label ``kubeserve_rejected_requests_total`` with these values. The HTTP layer alone
turns a rejection into a status code, a ``Retry-After`` and a message (``server/unavailable.py``).
"""

from __future__ import annotations

import enum


class Rejection(enum.StrEnum):
    QUEUE_FULL = "queue_full"  # the queue holds max_queue_size requests
    TIMEOUT = "timeout"  # the request's deadline passed while it was queued
    DRAINING = "draining"  # the server is shutting down
    NOT_READY = "not_ready"  # the model is loading, or failed to load


class Rejected(Exception):
    """A request refused for ``reason``; ``detail`` says what the caller should know beyond the reason."""

    def __init__(self, reason: Rejection, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else str(reason))
        self.reason = reason
        self.detail = detail
