"""The failure contract over gRPC: each error REST answers with an HTTP status is a gRPC status code here, with the
same message (docs/grpc.md has the table).

Overload (the queue full, stages waiting past their bound), the drain and a model not ready yet are ``UNAVAILABLE``:
gRPC's code for "transient, retry with a back-off", which clients' retry policies and proxies (Envoy maps HTTP 503 to
it) treat as safe to retry, where ``RESOURCE_EXHAUSTED`` means a quota, and is retried by nobody by default. Triton
answers its full queue with ``UNAVAILABLE`` too. The retry hint rides in the trailing metadata: ``retry-after``
(seconds, as REST's header) and gRPC's own ``grpc-retry-pushback-ms``, which gRPC's retry policy obeys. A request
whose deadline passed in the queue (the client's gRPC deadline, or its ``timeout`` parameter) is
``DEADLINE_EXCEEDED``, as is a stage past its timeout; a body past ``max_request_bytes`` is ``RESOURCE_EXHAUSTED``,
as gRPC's own message size limit answers.
"""

from __future__ import annotations

import grpc
from kubeserve.runtime.admission import Rejection
from kubeserve.runtime.protocol.errors import (
    BadRequest,
    GatewayTimeout,
    InferenceError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)

# The HTTP status of each error class, and the gRPC code it is.
CODES: dict[type[InferenceError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    MethodNotAllowed: grpc.StatusCode.UNIMPLEMENTED,
    PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    GatewayTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}
Metadata = tuple[tuple[str, str], ...]


def grpc_status(error: InferenceError) -> tuple[grpc.StatusCode, Metadata]:
    """The code a gRPC client is told for ``error``, and the trailing metadata that goes with it."""
    if isinstance(error, Unavailable):
        if error.reason is Rejection.TIMEOUT:
            return grpc.StatusCode.DEADLINE_EXCEEDED, ()
        seconds = error.retry_after_seconds
        return grpc.StatusCode.UNAVAILABLE, (
            ("retry-after", str(seconds)),
            ("grpc-retry-pushback-ms", str(seconds * 1000)),
        )
    for kind, code in CODES.items():
        if isinstance(error, kind):
            return code, ()
    return grpc.StatusCode.INTERNAL, ()
