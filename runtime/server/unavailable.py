"""What a client sees when a request is rejected: the one place a ``Rejection`` becomes HTTP.

Every reason is a 503 with ``Retry-After``: the request cost no compute, and this pod or another can serve
it later. Triton answers the same conditions with 503 too ("Exceeds maximum queue size", "Request timeout
expired"), without the retry hint.
"""

from __future__ import annotations

from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.protocol.errors import Unavailable

RETRY_AFTER_SECONDS = 1

# Each message may quote the rejection's detail as {detail}.
MESSAGES: dict[Rejection, str] = {
    Rejection.QUEUE_FULL: "the queue is full ({detail}); retry later",
    Rejection.TIMEOUT: "request timeout expired before compute started (Triton's 'timeout', in µs)",
    Rejection.DRAINING: "the server is shutting down",
    Rejection.NOT_READY: "the model is not ready: {detail}",
}


def unavailable(rejected: Rejected) -> Unavailable:
    """The HTTP error a rejection answers with."""
    message = MESSAGES[rejected.reason].format(detail=rejected.detail)
    return Unavailable(message, rejected.reason, retry_after_seconds=RETRY_AFTER_SECONDS)
