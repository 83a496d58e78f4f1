"""The real server, started as a subprocess for the demo and the benchmark: ``kubeserve-runtime serve`` on a
free port of 127.0.0.1, its JSON log read for the port and for readiness. ``PlainServer`` starts the plain
reference server (bench/plain_server.py), which logs the same two events."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from processes import pinned_to

RUNTIME = str(Path(sys.executable).with_name("kubeserve-runtime"))
PLAIN = str(Path(__file__).resolve().with_name("plain_server.py"))


class RunningServer:
    def __init__(
        self, model_path: Path, model_name: str, *flags: str, workers: int = 1, cpus: set[int] | None = None
    ) -> None:
        """``cpus``: pin the server (and its workers) to these CPUs, away from the load generator's."""
        self._start(
            [RUNTIME, "serve", "--host", "127.0.0.1", "--port", "0", "--model-path", str(model_path),
             "--grpc-port", "0", "--model-name", model_name, "--workers", str(workers), *flags],
            model_name,
            workers,
            cpus,
        )  # fmt: skip

    def _start(self, command: list[str], model_name: str, workers: int = 1, cpus: set[int] | None = None) -> None:
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pinned_to(cpus),
        )
        self.model_name = model_name
        self.events: dict[str, dict] = {}  # the last log event of each name seen so far
        self.port = int(self._wait_for("listening")["port"])
        self.ready_event = self._wait_for("model_ready")
        for _ in range(workers - 1):  # every worker's model, with --workers
            self._wait_for("model_ready")

    def _wait_for(self, name: str) -> dict:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            try:
                event = json.loads(line)
            except ValueError:  # not a log event: a traceback from a server that failed to start
                raise RuntimeError(f"the server failed: {line.strip()} {self.process.stderr.read()}") from None
            self.events[event.get("event")] = event
            if event.get("event") == name:
                return event
            if event.get("level") == "ERROR":
                raise RuntimeError(f"the server failed: {line.strip()}")
        raise RuntimeError(f"the server exited (code {self.process.wait()}) before {name!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        """Where the server's gRPC is (it logs it before its model is ready)."""
        return f"127.0.0.1:{self.events['grpc_listening']['port']}"

    def stop(self) -> int:
        """SIGTERM (a graceful drain), then the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _trace: TracebackType | None
    ) -> None:
        self.stop()


class PlainServer(RunningServer):
    """bench/plain_server.py on a free port: the reference a server written in an afternoon sets."""

    def __init__(self, model_path: Path, model_name: str) -> None:
        self._start([sys.executable, PLAIN, "--model-path", str(model_path), "--model-name", model_name], model_name)
