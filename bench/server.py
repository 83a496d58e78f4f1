"""The real server, started as a subprocess for the demo and the benchmark: ``kubeserve-runtime serve`` on a
free port of 127.0.0.1, its JSON log read for the port and for readiness."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

RUNTIME = str(Path(sys.executable).with_name("kubeserve-runtime"))


class RunningServer:
    def __init__(self, model_path: Path, model_name: str, *flags: str) -> None:
        self.process = subprocess.Popen(
            [RUNTIME, "serve", "--host", "127.0.0.1", "--port", "0", "--model-path", str(model_path),
             "--model-name", model_name, *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.model_name = model_name
        self.port = int(self._wait_for("listening")["port"])
        self.ready_event = self._wait_for("model_ready")

    def _wait_for(self, name: str) -> dict:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            event = json.loads(line)
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
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
