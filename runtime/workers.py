"""Past one core: ``workers`` server processes behind one port, and what they share to stay one pod.

On CPU each worker is a whole server: its own event loop, batcher and ONNX Runtime session with an equal share
of the CPUs, all listening on the pod's port with ``SO_REUSEPORT`` so that the kernel spreads connections over
them. What a user sees per pod stays per pod:

- readiness: a worker answers ready only when every worker is (the kubelet probes whichever one its connection
  lands on, and so would the clients), through a shared array of worker states;
- ``/metrics``: the answering worker merges every worker's exposition, each read over its own Unix socket;
- Triton's statistics: the answering worker sums every worker's, each read over its own Unix socket;
- the drain: SIGTERM to the supervisor is SIGTERM to every worker, and each drains its own connections.

On a GPU the session must stay single (each worker would hold its own copy of the weights, its own CUDA context
and its own share of the memory). The design there: the same front-end workers decode and batch, and hand each
batch's tensors to one model process through shared memory; the batcher's ``RunModel`` is that interface (a
``run`` that ships the feeds and waits for the outputs, in place of ``OnnxModel.run``). It is not built: with
``workers`` above 1 a model that runs on CUDA fails its load with a message saying so.
"""

from __future__ import annotations

import asyncio
import enum
import signal
import time
from collections.abc import MutableSequence
from dataclasses import dataclass
from pathlib import Path

from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.cpus import cpus_per_worker

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# How often a worker's event loop says it still runs, and the supervisor looks.
HEARTBEAT_SECONDS = 1.0


class WorkerState(enum.IntEnum):
    LOADING = 0
    READY = 1
    DRAINING = 2
    FAILED = 3

    @property
    def described(self) -> str:
        return {
            WorkerState.LOADING: "is loading the model",
            WorkerState.READY: "is ready",
            WorkerState.DRAINING: "is draining",
            WorkerState.FAILED: "failed to load the model",
        }[self]


@dataclass(frozen=True)
class WorkerContext:
    """What one worker knows of its pod: its place, the shared run directory and everyone's state."""

    index: int
    count: int
    run_dir: Path
    states: MutableSequence[int]  # a multiprocessing RawArray shared by all workers, one WorkerState each
    heartbeats: MutableSequence[float]  # another: each worker's last beat, on the system's monotonic clock

    def set_state(self, state: WorkerState) -> None:
        self.states[self.index] = state

    def beat(self) -> None:
        self.heartbeats[self.index] = time.monotonic()

    def first_peer_not_ready(self) -> tuple[int, WorkerState] | None:
        for index in range(self.count):
            state = WorkerState(self.states[index])
            if index != self.index and state is not WorkerState.READY:
                return index, state
        return None

    def socket_path(self, index: int) -> Path:
        """Where worker ``index`` answers its peers (its statistics)."""
        return self.run_dir / f"worker-{index}.sock"

    @property
    def peers(self) -> list[int]:
        return [index for index in range(self.count) if index != self.index]


class Heartbeat:
    """A worker's beat, now and every HEARTBEAT_SECONDS while its event loop runs: the supervisor kills a worker
    whose beats stop (its loop is blocked, or the process stopped), as a liveness probe would a lone server."""

    def __init__(self, worker: WorkerContext) -> None:
        self._worker = worker
        self._next: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._worker.beat()
        self._next = asyncio.get_running_loop().call_later(HEARTBEAT_SECONDS, self.start)

    def stop(self) -> None:
        if self._next is not None:
            self._next.cancel()


def worker_settings(settings: RuntimeSettings, cpus: int, port: int, grpc_port: int | None = None) -> RuntimeSettings:
    """One worker's settings: the ports the supervisor reserved, and (unless set) its share of ORT's threads."""
    changes: dict[str, object] = {"port": port}
    if grpc_port is not None:
        changes["grpc_port"] = grpc_port
    if settings.intra_op_num_threads == 0:
        changes["intra_op_num_threads"] = cpus_per_worker(cpus, settings.workers)
    return settings.model_copy(update=changes)
