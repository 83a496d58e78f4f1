"""What the HTTP handlers share: the settings, the metrics, and the model once it is loaded."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kubeserve.runtime.admission import Rejected, Rejection
from kubeserve.runtime.batcher import BatchPolicy, DynamicBatcher
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import OnnxModel
from kubeserve.runtime.protocol.errors import NotFound
from kubeserve.runtime.server.connections import ConnectionTracker
from kubeserve.runtime.server.messages import Request
from kubeserve.runtime.server.stages import StageRunner
from kubeserve.runtime.server.unavailable import unavailable
from kubeserve.runtime.workers import WorkerContext, WorkerState

if TYPE_CHECKING:
    from kubeserve.runtime.server.tracing import Tracing


@dataclass(slots=True)
class LoadedModel:
    model: OnnxModel
    batcher: DynamicBatcher


@dataclass(slots=True)
class ServerState:
    settings: RuntimeSettings
    metrics: ServerMetrics
    loaded: LoadedModel | None = None
    load_error: str | None = None
    draining: bool = False
    in_flight: int = 0
    # Inference requests since start, as clients saw them: handling began, an answer was made (any status),
    # and of those, refused with 503 because the server was shutting down.
    accepted: int = 0
    answered: int = 0
    refused: int = 0
    # Requests read whole from their connections whose handling has not begun, or in their preprocess stage: what
    # could still join a batch.
    arriving: int = 0
    # Bytes of request bodies arriving, or read whole and waiting on their connections: max_buffered_request_bytes.
    body_bytes_held: int = 0
    connections: ConnectionTracker = field(default_factory=ConnectionTracker)
    worker: WorkerContext | None = None  # one of several server processes in the pod; None when alone
    tracing: Tracing | None = None  # inference requests' spans (server.tracing); None: not traced
    # Where the stages around the model (preprocess, postprocess) run.
    stages: StageRunner = field(init=False)
    _quiet: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.stages = StageRunner(self.settings)
        self._quiet.set()
        # Read when scraped: a count kept anyway costs nothing to change.
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.body_bytes_held.set_function(lambda: self.body_bytes_held)

    @property
    def serving(self) -> bool:
        """This process can serve; the pod is ready when every worker can (``ready``)."""
        return self.loaded is not None and not self.draining

    @property
    def ready(self) -> bool:
        return self.serving and (self.worker is None or self.worker.first_peer_not_ready() is None)

    @property
    def not_ready_reason(self) -> str:
        if self.load_error is not None:
            return f"model failed to load: {self.load_error}"
        if self.loaded is None:
            return "loading model"
        if self.draining:
            return "draining: the server is shutting down"
        assert self.worker is not None
        peer = self.worker.first_peer_not_ready()
        assert peer is not None
        index, worker_state = peer
        return f"worker {index} of {self.worker.count} {worker_state.described}"

    def publish(self) -> None:
        """Tell the other workers what this one is doing (loaded, failed, draining)."""
        if self.worker is None:
            return
        if self.draining:
            self.worker.set_state(WorkerState.DRAINING)
        elif self.load_error is not None:
            self.worker.set_state(WorkerState.FAILED)
        elif self.loaded is not None:
            self.worker.set_state(WorkerState.READY)

    def batch_policy(self, batchable: bool) -> BatchPolicy:
        s = self.settings
        return BatchPolicy(
            max_batch_size=s.max_batch_size if batchable else 0,
            max_queue_delay_microseconds=s.max_queue_delay_microseconds,
            preferred_batch_size=tuple(s.preferred_batch_size),
            max_queue_size=s.max_queue_size,
            default_timeout_microseconds=s.default_timeout_microseconds,
            instance_count=s.instance_count,
        )

    def check_model(self, name: str, version: str | None) -> None:
        """404 unless this server serves that model (and version)."""
        # Triton's wording first: its clients (and their users' scripts) look for it.
        if name != self.settings.model_name:
            raise NotFound(
                f"Request for unknown model: '{name}' is not found; this server serves '{self.settings.model_name}'"
            )
        if version is not None and version != self.settings.model_version:
            raise NotFound(
                f"Request for unknown model: '{name}' version '{version}' is not found; this server serves "
                f"version '{self.settings.model_version}'"
            )

    def model_for(self, request: Request) -> LoadedModel:
        """The loaded model a request names: 404 for another model or version, 503 until it is loaded."""
        self.check_model(request.match_info["name"], request.match_info.get("version"))
        if self.loaded is None:
            raise unavailable(Rejected(Rejection.NOT_READY, self.not_ready_reason))
        return self.loaded

    # In-flight inference requests: the drain waits for them.
    def request_started(self) -> None:
        self.accepted += 1
        self.in_flight += 1
        self._quiet.clear()

    def request_finished(self, answered: bool, refused: bool) -> None:
        self.answered += answered
        self.refused += refused
        self.in_flight -= 1
        if not self.in_flight:
            self._quiet.set()

    async def wait_quiet(self) -> None:
        await self._quiet.wait()
