"""Fixtures for the runtime's tests: tiny real ONNX models, the real server as a subprocess, and an
in-process server whose compute a test can hold at a gate (so queue behaviour is deterministic)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import onnx
import pytest
from kubeserve.runtime.batcher import ComputeCosts, DynamicBatcher
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import OnnxModel
from kubeserve.runtime.samples import write_sample
from kubeserve.runtime.server.inference_app import create_app
from kubeserve.runtime.server.state import LoadedModel, ServerState
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from kubeserve.runtime.server.tracing import Tracing

# Every datatype the protocol carries, with ONNX's element type.
ELEMENT_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_types(path: Path) -> Path:
    """``in_<DT>`` [batch, 2] -> Identity -> ``out_<DT>`` for every datatype."""
    nodes, inputs, outputs = [], [], []
    for name, element in ELEMENT_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, ["batch", 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return _save(helper.make_graph(nodes, "types", inputs, outputs), path)


def build_pair(path: Path) -> Path:
    """Two inputs ``a``, ``b`` FP32 [batch, 3]; outputs ``sum`` FP32 and ``greater`` BOOL."""
    return _save(
        helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Greater", ["a", "b"], ["greater"])],
            "pair",
            [
                helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3]),
            ],
            [
                helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("greater", TensorProto.BOOL, ["batch", 3]),
            ],
        ),
        path,
    )


def build_fixed(path: Path) -> Path:
    """No dynamic batch dimension: ``x`` FP32 [2, 3] -> ``y`` = 2x."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return _save(
        helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            "fixed",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
            initializer=[two],
        ),
        path,
    )


def build_sequence(path: Path) -> Path:
    """Two dynamic dimensions: ``tokens`` FP32 [batch, seq] -> ``total`` [batch, 1] (row sums)."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return _save(
        helper.make_graph(
            [helper.make_node("ReduceSum", ["tokens", "axes"], ["total"], keepdims=1)],
            "sequence",
            [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq"])],
            [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 1])],
            initializer=[axes],
        ),
        path,
    )


def build_simple(path: Path) -> Path:
    """Triton's ``simple`` example model: ``INPUT0``, ``INPUT1`` INT32 [batch, 16] -> ``OUTPUT0`` = sum,
    ``OUTPUT1`` = difference."""
    return _save(
        helper.make_graph(
            [
                helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
                helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
            ],
            "simple",
            [helper.make_tensor_value_info(f"INPUT{i}", TensorProto.INT32, ["batch", 16]) for i in range(2)],
            [helper.make_tensor_value_info(f"OUTPUT{i}", TensorProto.INT32, ["batch", 16]) for i in range(2)],
        ),
        path,
    )


def build_simple_string(path: Path) -> Path:
    """Triton's ``simple_string``: ``simple`` on BYTES holding numbers as text, ``Cast`` to INT32 and back.
    Empty strings (the synthetic warm-up's) cannot be parsed, so its warm-up fails."""
    nodes = [helper.make_node("Cast", [f"INPUT{i}"], [f"number{i}"], to=TensorProto.INT32) for i in range(2)]
    nodes += [
        helper.make_node("Add", ["number0", "number1"], ["sum"]),
        helper.make_node("Sub", ["number0", "number1"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    return _save(
        helper.make_graph(
            nodes,
            "simple_string",
            [helper.make_tensor_value_info(f"INPUT{i}", TensorProto.STRING, ["batch", 16]) for i in range(2)],
            [helper.make_tensor_value_info(f"OUTPUT{i}", TensorProto.STRING, ["batch", 16]) for i in range(2)],
        ),
        path,
    )


def build_pixels(path: Path) -> Path:
    """What an image input becomes: ``image`` FP32 [batch, 3, 32, 48] -> Identity -> ``pixels``."""
    return _save(
        helper.make_graph(
            [helper.make_node("Identity", ["image"], ["pixels"])],
            "pixels",
            [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 48])],
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, 32, 48])],
        ),
        path,
    )


def build_all(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: write_sample(name, directory / f"{name}.onnx") for name in ("tiny", "mlp", "cnn")}
    paths["pixels"] = build_pixels(directory / "pixels.onnx")
    paths["types"] = build_types(directory / "types.onnx")
    paths["pair"] = build_pair(directory / "pair.onnx")
    paths["fixed"] = build_fixed(directory / "fixed.onnx")
    paths["sequence"] = build_sequence(directory / "sequence.onnx")
    paths["simple"] = build_simple(directory / "simple.onnx")
    paths["simple_string"] = build_simple_string(directory / "simple_string.onnx")
    paths["broken"] = directory / "broken.onnx"
    paths["broken"].write_bytes(b"this is not an ONNX model")
    return paths


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def element_types() -> dict[str, int]:
    return ELEMENT_TYPES


# -- the real server, as a subprocess ---------------------------------------------------------------

RUNTIME = str(Path(sys.executable).with_name("kubeserve-runtime"))


class ClosedLoopLoad(Protocol):
    """Clients a drain test signals the server under (tests/runtime/test_drain.py, test_grpc_drain.py)."""

    enough: asyncio.Event  # set once the clients are under way
    signalled: bool  # the server has been sent SIGTERM

    async def run(self) -> None: ...


class RuntimeProcess:
    """``kubeserve-runtime serve`` in a subprocess; its JSON log lines are collected as they come."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [RUNTIME, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # A free gRPC port too (the default, 8001, would be shared by every server a test run starts).
            env={**os.environ, "KUBESERVE_GRPC_PORT": "0", **(env or {})},
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    self.events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        """The first log event called ``name``; fails if the process exits first."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: self._event(name) is not None or not self._reader.is_alive(), timeout
            )
            event = self._event(name)
        assert found and event is not None, f"no {name!r} event; server said:\n{''.join(self.lines)}"
        return event

    def _event(self, name: str) -> dict[str, Any] | None:
        return next((event for event in self.events if event.get("event") == name), None)

    @property
    def port(self) -> int:
        return int(self.wait_for_event("listening")["port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.wait_for_event('grpc_listening')['port']}"

    def wait_ready(self, workers: int = 1) -> RuntimeProcess:
        """Until the model is ready in every one of ``workers`` server processes."""
        self.wait_for_events("model_ready", workers)
        return self

    def wait_for_events(self, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The first ``count`` log events called ``name`` (one per worker, say); fails if the process exits first."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._events(name)) >= count or not self._reader.is_alive(), timeout)
            events = self._events(name)
        assert len(events) >= count, f"{len(events)} {name!r} events of {count}; server said:\n{''.join(self.lines)}"
        return events[:count]

    def count_events(self, name: str) -> int:
        """How many log events called ``name`` have been read so far: ``wait_for_events(name, count + 1)[-1]`` is then
        the next one (a line the server logs before it answers may be read after the answer arrives)."""
        with self._changed:
            return len(self._events(name))

    def _events(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("event") == name]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def sigterm_under(self, load: ClosedLoopLoad) -> None:
        """SIGTERM once ``load``'s clients are under way (``enough``), marked ``signalled`` from then; until they are
        done, within 60 s."""
        running = asyncio.create_task(load.run())
        await load.enough.wait()
        load.signalled = True
        self.signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await running

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def _runtimes(models: dict[str, Path]) -> Iterator[Callable[..., RuntimeProcess]]:
    started: list[RuntimeProcess] = []

    def start(model: str | None = "mlp", *flags: str, env: dict[str, str] | None = None) -> RuntimeProcess:
        args = ["serve", "--host", "127.0.0.1", "--port", "0", "--log-level", "info", *flags]
        if model is not None:
            args += ["--model-path", str(models[model]), "--model-name", model]
        process = RuntimeProcess(args, env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_runtime(models: dict[str, Path]) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start ``kubeserve-runtime serve`` on a free port: ``start_runtime("mlp", "--max-batch-size", "8")``."""
    with _runtimes(models) as start:
        yield start


@pytest.fixture(scope="module")
def start_module_runtime(models: dict[str, Path]) -> Iterator[Callable[..., RuntimeProcess]]:
    """``start_runtime`` for servers that a module's tests share."""
    with _runtimes(models) as start:
        yield start


@pytest.fixture(scope="module")
def mlp_server(models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    """One MLP server shared by a module's read-mostly tests."""
    process = RuntimeProcess(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--model-path", str(models["mlp"]), "--model-name", "mlp"]
    )
    yield process.wait_ready()
    process.stop()


@pytest.fixture(scope="module")
def simple_server(models: dict[str, Path]) -> Iterator[RuntimeProcess]:
    """One server of Triton's ``simple`` example model, shared by a module's tests."""
    process = RuntimeProcess(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--model-path", str(models["simple"]), "--model-name", "simple"]
    )
    yield process.wait_ready()
    process.stop()


# -- the server in-process, with compute held at a gate ----------------------------------------------


@dataclass
class Gate:
    """Wraps a model's run: records each batch and, while closed, holds compute until opened."""

    batches: list[dict[str, np.ndarray]] = field(default_factory=list)
    entered: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _open: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._open.set()

    def close(self) -> None:
        """Hold compute from now on; ``wait_entered`` counts the batches that reach the model from now on (not those
        that went through while it was open)."""
        self._open.clear()
        while self.entered.acquire(blocking=False):
            pass

    def open(self) -> None:
        self._open.set()

    def wrap(self, run: Callable[..., dict[str, np.ndarray]]) -> Callable[..., dict[str, np.ndarray]]:
        def gated(feeds: dict[str, np.ndarray], names: Sequence[str] | None) -> dict[str, np.ndarray]:
            self.batches.append(feeds)
            self.entered.release()
            assert self._open.wait(30), "the test never opened the gate"
            return run(feeds, names)

        return gated

    async def wait_entered(self) -> None:
        """Until a batch has reached the model (one per call)."""
        assert await asyncio.to_thread(self.entered.acquire, True, 30), "no batch reached the model"

    @property
    def batch_rows(self) -> list[int]:
        return [len(next(iter(feeds.values()))) for feeds in self.batches]


class ComputedInThreads(ComputeCosts):
    """Every batch handed to a thread, however cheap it measures: a batch held at a closed ``Gate`` on the event loop
    would hold the test's own loop (whether batches measure cheap depends on the machine's load)."""

    def inline(self) -> bool:
        return False

    @property
    def cheap(self) -> bool:
        return False


@dataclass
class InProcessServer:
    url: str
    state: ServerState
    gate: Gate

    @property
    def batcher(self) -> DynamicBatcher:
        assert self.state.loaded is not None
        return self.state.loaded.batcher

    async def until_queued(self, count: int) -> None:
        """Yield to the loop until ``count`` requests wait in the queue."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 30
        while self.batcher.queued != count:
            assert loop.time() < give_up, f"queue holds {self.batcher.queued}, never {count}"
            await asyncio.sleep(0)


@pytest.fixture
async def serve_in_process(
    models: dict[str, Path],
) -> AsyncIterator[Callable[..., Any]]:
    """Serve a model in this test's event loop on 127.0.0.1, with its compute behind a ``Gate``."""
    listeners: list[tuple[asyncio.Server, ServerState]] = []

    async def start(model: str = "mlp", tracing: Tracing | None = None, **settings: Any) -> InProcessServer:
        config = RuntimeSettings(model_path=models[model], model_name=model, **settings)
        state = ServerState(config, ServerMetrics(model, config.model_version), tracing=tracing)
        onnx_model = await asyncio.to_thread(OnnxModel.load, config.model_path, config)
        gate = Gate()
        policy = state.batch_policy(onnx_model.signature.batchable)
        processing = onnx_model.processing
        batcher = DynamicBatcher(
            gate.wrap(onnx_model.run),
            policy,
            state.metrics,
            ComputedInThreads(),
            preprocess=processing.batch_preprocess,
            postprocess=processing.batch_postprocess,
        )
        state.loaded = LoadedModel(onnx_model, batcher)
        listener = await create_app(state).listen("127.0.0.1", 0)
        listeners.append((listener, state))
        host, port = listener.sockets[0].getsockname()[:2]
        return InProcessServer(f"http://{host}:{port}", state, gate)

    yield start
    for listener, state in listeners:
        listener.close()
        if state.loaded is not None:
            state.loaded.batcher.close()
            state.loaded.model.processing.close()  # a handler's processes
        state.connections.close_all()
        state.stages.close()


def v2_request(name: str, array: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    """A JSON V2 request body with one input."""
    return {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}],
        **extra,
    }


@pytest.fixture(scope="session")
def v2_body() -> Callable[..., dict[str, Any]]:
    return v2_request


@pytest.fixture(scope="session")
def reference(models: dict[str, Path]) -> Callable[[str, dict[str, np.ndarray]], list[np.ndarray]]:
    """In-process ONNX Runtime on the same model file: what the server must answer."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}

    def run(model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if model not in sessions:
            sessions[model] = ort.InferenceSession(str(models[model]), providers=["CPUExecutionProvider"])
        return sessions[model].run(None, feeds)

    return run


@pytest.fixture
def gate() -> Gate:
    return Gate()
