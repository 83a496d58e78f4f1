"""The supervisor of ``workers`` server processes: it reserves the port, starts the workers, passes signals on,
watches that each one's event loop still runs, and exits with them.

It is the container's main process, so SIGTERM from the kubelet reaches it first: it sends SIGTERM to every
worker, each drains its own connections (``server.lifecycle``), and the supervisor exits when the last one has,
with the first failing worker's exit code (0 when all drained). A worker that exits on its own (a failed model
load, a crash, the OOM killer), or whose event loop has not run for ``worker_stall_seconds`` (then it is killed:
the kubelet's liveness probe reaches one worker of N only), stops the others the same way, and the pod restarts
whole, as a single-process server would. Workers are started with ``spawn``: nothing of this process is forked.
The supervisor imports neither ONNX Runtime nor the HTTP server.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from kubeserve.runtime.config import GRPC, RuntimeSettings
from kubeserve.runtime.cpus import available_cpus
from kubeserve.runtime.logs import configure_logging
from kubeserve.runtime.server.exits import listen_failed
from kubeserve.runtime.workers import (
    HEARTBEAT_SECONDS,
    STOP_SIGNALS,
    WorkerContext,
    WorkerState,
    worker_settings,
)

log = logging.getLogger("kubeserve.runtime")

SIGNAL_EXIT_BASE = 128  # a process killed by signal N exits 128 + N, as a shell reports it
PR_SET_PDEATHSIG = 1


class Supervisor:
    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.workers: list[BaseProcess] = []
        self.stopping = False

    def run(self) -> int:
        # First of all: a SIGTERM before the handler is in place would be lost (PID 1 ignores what it does not handle).
        previous = {signum: signal.signal(signum, self._signalled) for signum in STOP_SIGNALS}
        try:
            return self._run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self) -> int:
        settings = self.settings
        try:
            reserved = _reserve_port(settings.host, settings.port)
        except OSError as error:
            return listen_failed(settings, error)
        port = reserved.getsockname()[1]
        grpc_reserved = None
        if GRPC in settings.protocols:
            try:
                grpc_reserved = _reserve_port(settings.host, settings.grpc_port)
            except OSError as error:
                reserved.close()
                return listen_failed(settings, error)
        # One directory per port (the workers' sockets), emptied first: a killed supervisor's leftovers (the pod's
        # /tmp outlives a container restart) would stop the new workers from listening there.
        run_dir = Path(tempfile.gettempdir()) / f"kubeserve-{port}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        try:
            return self._supervise(run_dir, port, grpc_reserved.getsockname()[1] if grpc_reserved else None)
        finally:
            self._terminate()  # workers started before a failure here must not outlive it
            for worker in self.workers:
                if worker.pid is not None:
                    worker.join()
            reserved.close()
            if grpc_reserved is not None:
                grpc_reserved.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    def _supervise(self, run_dir: Path, port: int, grpc_port: int | None) -> int:
        settings = self.settings
        cpus = available_cpus()
        each = worker_settings(settings, cpus, port, grpc_port)
        context = multiprocessing.get_context("spawn")
        states = context.RawArray("b", settings.workers)  # WorkerState.LOADING each
        heartbeats = context.RawArray("d", settings.workers)  # 0.0: no beat yet
        for index in range(settings.workers):
            worker = context.Process(
                target=_worker_main,
                args=(each, WorkerContext(index, settings.workers, run_dir, states, heartbeats), os.getpid()),
                name=f"kubeserve-worker-{index}",
            )
            self.workers.append(worker)
            worker.start()
        log.info(
            "workers started",
            extra={
                "event": "workers_started",
                "workers": settings.workers,
                "cpus": cpus,
                "intra_op_num_threads": each.intra_op_num_threads,
                "port": port,
                "pids": [worker.pid for worker in self.workers],
            },
        )
        if self.stopping:  # a signal came while they started
            self._terminate()
        exit_code = 0
        running = dict(enumerate(self.workers))
        while running:
            exited = wait([worker.sentinel for worker in running.values()], timeout=HEARTBEAT_SECONDS)
            for index, worker in list(running.items()):
                if worker.sentinel in exited:
                    del running[index]
                    states[index] = WorkerState.FAILED
                    exit_code = exit_code or self._reap(worker)
                elif self._stalled(heartbeats[index]):
                    log.error(
                        "a worker's event loop stopped running; killing it",
                        extra={"event": "worker_stalled", "pid": worker.pid, "seconds": settings.worker_stall_seconds},
                    )
                    _signal(worker, signal.SIGKILL)
        log.info("stopped", extra={"event": "stopped", "exit_code": exit_code, "workers": settings.workers})
        return exit_code

    def _reap(self, worker: BaseProcess) -> int:
        """An exited worker's exit code; the others are stopped if it went on its own."""
        worker.join()
        code = _exit_code(worker)
        if self.stopping and code == SIGNAL_EXIT_BASE + signal.SIGTERM:
            code = 0  # told to stop before it could take the signal itself: nothing was accepted yet
        log.info("worker exited", extra={"event": "worker_exited", "pid": worker.pid, "exit_code": code})
        if not self.stopping:
            log.warning(
                "a worker exited on its own; stopping the others",
                extra={"event": "worker_lost", "pid": worker.pid, "exit_code": code},
            )
            self.stopping = True
            self._terminate()
        return code

    def _stalled(self, heartbeat: float) -> bool:
        return heartbeat > 0 and time.monotonic() - heartbeat > self.settings.worker_stall_seconds

    def _signalled(self, signum: int, _frame: FrameType | None) -> None:
        first, self.stopping = not self.stopping, True  # before logging: a second signal may interrupt this handler
        if first:
            log.info("stopping workers", extra={"event": "stopping_workers", "signal": signal.Signals(signum).name})
        self._terminate()

    def _terminate(self) -> None:
        for worker in self.workers:
            _signal(worker, signal.SIGTERM)


def supervise(settings: RuntimeSettings) -> int:
    configure_logging(settings.log_level, {"worker": "supervisor"})
    return Supervisor(settings).run()


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (never listening, so it is given no connection) with SO_REUSEPORT: it resolves port 0 for the
    workers, holds the port while they start, and fails early when a process of another user, or one without
    SO_REUSEPORT, has it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind((host, port))
    except OSError:
        reserved.close()
        raise
    return reserved


def _signal(worker: BaseProcess, signum: int) -> None:
    """Signal a worker that has started and not been reaped (the pid of a reaped one may be anyone's by now)."""
    if worker.pid is not None and worker.exitcode is None:
        with contextlib.suppress(ProcessLookupError):  # exited just now, not reaped yet
            os.kill(worker.pid, signum)


def _exit_code(worker: BaseProcess) -> int:
    code = worker.exitcode or 0
    return SIGNAL_EXIT_BASE - code if code < 0 else code


def _worker_main(settings: RuntimeSettings, worker: WorkerContext, supervisor_pid: int) -> None:
    # Held until the server's own handlers are in place (server.lifecycle unblocks them): a SIGTERM in between
    # would kill a worker already in the port's group, resetting the connections in its accept queue.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    _die_with(supervisor_pid)
    configure_logging(settings.log_level, {"worker": worker.index})
    from kubeserve.runtime.server.lifecycle import run_server

    raise SystemExit(run_server(settings, worker))


def _die_with(supervisor_pid: int) -> None:
    """SIGTERM (a drain) when the supervisor dies without passing a signal on (SIGKILL, say): never an orphan
    holding the port. Linux only; elsewhere a worker outlives a killed supervisor."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
