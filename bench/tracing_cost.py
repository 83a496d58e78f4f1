"""What tracing costs an inference request: the request path in-process (the application's ``handle``, as the HTTP
layer calls it: routing, decoding, the batcher, the model, encoding, the bookkeeping after the answer), one request
at a time on the bundled tiny model, with tracing off and on (the SDK's in-memory exporter behind the batch span
processor the server uses, every request sampled), in alternating rounds of one run; each mode's median round.

``python bench/tracing_cost.py`` prints it; ``make bench`` (bench/run.py) prints the same line.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvloop
from kubeserve.runtime.batcher import DynamicBatcher
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.metrics import ServerMetrics
from kubeserve.runtime.model import OnnxModel
from kubeserve.runtime.samples import write_sample
from kubeserve.runtime.server.inference_app import create_app
from kubeserve.runtime.server.messages import Request
from kubeserve.runtime.server.state import LoadedModel, ServerState
from kubeserve.runtime.server.tracing import Tracing
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from payloads import json_payload

MODEL = "tiny"
HEADERS = {"host": "127.0.0.1:8080", "content-type": "application/json", "user-agent": "bench"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class TracingCost:
    off_us: float  # per request, tracing off
    on_us: float  # per request, tracing on
    spans: int  # exported per traced request

    def render(self) -> str:
        return (
            f"Tracing, the request path in-process ({MODEL}, one request at a time): off {self.off_us:.1f} µs per "
            f"request, on {self.on_us:.1f} µs (+{self.on_us - self.off_us:.1f} µs, {self.spans} spans per request, "
            "in-memory exporter)"
        )


async def _rounds(path: Path, requests: int, rounds: int) -> TracingCost:
    settings = RuntimeSettings(model_path=path, model_name=MODEL)
    state = ServerState(settings, ServerMetrics(MODEL, settings.model_version))
    model = await asyncio.to_thread(OnnxModel.load, path, settings)
    state.loaded = LoadedModel(model, DynamicBatcher(model.run, state.batch_policy(True), state.metrics))
    application = create_app(state)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing = Tracing(provider, settings)
    body = json_payload(MODEL, 1).body
    headers = {**HEADERS, "content-length": str(len(body)), "traceparent": TRACEPARENT}

    async def round_(traced: Tracing | None) -> float:
        state.tracing = traced
        started = time.perf_counter()
        for _ in range(requests):
            response = await application.handle(Request("POST", f"/v2/models/{MODEL}/infer", "", headers, body))
            assert response.status == 200, response.body
            await asyncio.sleep(0)  # what follows an answer on a connection: the bookkeeping scheduled after it
        return (time.perf_counter() - started) / requests * 1e6

    times: dict[bool, list[float]] = {False: [], True: []}
    spans = 0
    await round_(None)  # warm-up
    for _ in range(rounds):
        for traced in (False, True):
            times[traced].append(await round_(tracing if traced else None))
        provider.force_flush()
        spans = len(exporter.get_finished_spans()) // requests
        exporter.clear()
    tracing.shutdown()
    state.stages.close()
    return TracingCost(statistics.median(times[False]), statistics.median(times[True]), spans)


def measure_tracing(work: Path, requests: int = 2000, rounds: int = 7) -> TracingCost:
    path = write_sample(MODEL, work / f"{MODEL}.onnx")
    return uvloop.run(_rounds(path, requests, rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each mode")
    args = parser.parse_args()
    print(measure_tracing(Path(tempfile.mkdtemp(prefix="kubeserve-tracing-")), args.requests, args.rounds).render())


if __name__ == "__main__":
    main()
