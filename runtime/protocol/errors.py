"""Errors a caller sees: each carries its HTTP status and becomes ``{"error": message}``."""

from __future__ import annotations

from kubeserve.runtime.admission import Rejection


class InferenceError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(InferenceError):
    status = 400


class NotFound(InferenceError):
    status = 404


class MethodNotAllowed(InferenceError):
    status = 405

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class PayloadTooLarge(InferenceError):
    status = 413


class Unavailable(InferenceError):
    """503: retry later (or elsewhere). Made from a rejection by ``server.unavailable`` alone."""

    status = 503

    def __init__(self, message: str, reason: Rejection, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_seconds = retry_after_seconds

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class InternalError(InferenceError):
    status = 500


class GatewayTimeout(InferenceError):
    """504: a stage around the model (preprocess, postprocess) ran past its timeout."""

    status = 504
