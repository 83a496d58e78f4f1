"""Python handlers as a user writes them, loaded by the tests from this folder (``handler_path``) in front of the sample
MLP (``features`` FP32 [batch, 32] -> ``probabilities`` FP32 [batch, 10]): text in, a topic and its probability out.

A text's words are counted into the model's features, a word's feature its line in ``vocabulary.txt`` (shipped
beside this code, read by ``load``); words not in it count for nothing. Some words make the handler misbehave, for
the tests: ``boom`` raises, ``float64`` returns the wrong dtype, ``hang`` waits for ``RELEASE`` (set by a test in the
server's process; a pool's process never sees it), ``crash`` ends the process (in a pool only: in the stage threads it
would end the server), ``hold`` makes the file ``held`` in the folder ``$WORDS_HOLD_DIR`` names, then waits for
``release`` there (a pool's process sees them too: a test sets the variable before the pool starts). ``WordsBatched``
is the same, batched: it logs the rows of each call (event ``handler_batch``), and ``drop`` makes its preprocess lose
a row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from kubeserve.runtime.handler import HandlerContext, InvalidInput
from opentelemetry import trace

log = logging.getLogger("words_handler")
TOPICS = [f"topic-{index}" for index in range(10)]
HUNG = threading.Event()  # a text with "hang" is being preprocessed
RELEASE = threading.Event()  # lets it go on
LOOP_STALLED = threading.Event()  # an async preprocess awaits LOOP_RELEASE
LOOP_RELEASE = asyncio.Event()  # set on the server's loop
LOOP_THREADS: set[str] = set()  # the threads the async stages ran in
CURRENT_SPANS: list[tuple[str, trace.SpanContext]] = []  # Traced's stages and the span current in each


def hold(folder: Path) -> None:
    """Say so (``held``), then wait for ``release`` (60 s at most)."""
    (folder / "held").touch()
    for _ in range(6000):
        if (folder / "release").exists():
            return
        time.sleep(0.01)


class Words:
    inputs = {"text": ("BYTES", [-1])}
    outputs = {"topic": ("BYTES", [-1]), "probability": ("FP32", [-1])}

    def load(self, context: HandlerContext) -> None:
        spec = context.signature.input("features")
        assert spec is not None and context.handler_path is not None
        self.width = spec.shape[1]
        words = (context.handler_path / "vocabulary.txt").read_text().split()
        self.vocabulary = {word: index for index, word in enumerate(words)}
        log.info("loaded", extra={"event": "handler_loaded", "pid": os.getpid(), "model": context.model_name})

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [text.decode() if isinstance(text, bytes) else str(text) for text in inputs["text"]]
        features = np.zeros((len(texts), self.width), np.float32)
        for index, (row, text) in enumerate(zip(features, texts, strict=True)):
            known = [self.vocabulary[word] for word in text.split() if word in self.vocabulary]
            if not known:
                raise InvalidInput(f"text {index} has no word of the vocabulary")
            np.add.at(row, known, 1)
            words = set(text.split())
            if "boom" in words:
                _ = 1 / 0
            if "hang" in words:
                HUNG.set()
                RELEASE.wait(60)
            if "hold" in words:
                hold(Path(os.environ["WORDS_HOLD_DIR"]))
            if "crash" in words:
                os._exit(3)
            if "float64" in words:
                return {"features": features.astype(np.float64)}
        return {"features": features}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        probabilities = outputs["probabilities"]
        return {
            "topic": np.array([TOPICS[index] for index in probabilities.argmax(axis=1)]),  # NumPy strings: allowed
            "probability": probabilities.max(axis=1),
        }


class WordsOnLoop(Words):
    """The same, its stages ``async def`` (awaited on the server's event loop): ``stall`` awaits ``LOOP_RELEASE``
    (an asyncio event, on that loop), ``LOOP_STALLED`` says it does; ``cancelled`` raises CancelledError itself."""

    async def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        LOOP_THREADS.add(threading.current_thread().name)
        texts = [text.decode() if isinstance(text, bytes) else str(text) for text in inputs["text"]]
        if any("stall" in text for text in texts):
            LOOP_STALLED.set()
            await LOOP_RELEASE.wait()
        if any("cancelled" in text for text in texts):  # as if something it awaited was cancelled
            raise asyncio.CancelledError
        return super().preprocess(inputs)

    async def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        LOOP_THREADS.add(threading.current_thread().name)
        return super().postprocess(outputs)


class Traced(Words):
    """Records the span current in each of its stages, plain (a stage thread) and async (the loop): a span it made
    with ``opentelemetry.trace.get_tracer(...)`` would be that span's child."""

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        CURRENT_SPANS.append(("preprocess", trace.get_current_span().get_span_context()))
        return super().preprocess(inputs)

    async def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        CURRENT_SPANS.append(("postprocess", trace.get_current_span().get_span_context()))
        return super().postprocess(outputs)


class WordsInProcesses(Words):
    holds_gil = True


class WordsBatched(Words):
    batched = True

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = inputs["text"]
        log.info("batch", extra={"event": "handler_batch", "stage": "preprocess", "rows": len(texts)})
        made = super().preprocess(inputs)
        if any("drop" in (text.decode() if isinstance(text, bytes) else str(text)) for text in texts):
            return {"features": made["features"][:-1]}
        return made

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        log.info(
            "batch", extra={"event": "handler_batch", "stage": "postprocess", "rows": len(outputs["probabilities"])}
        )
        return super().postprocess(outputs)


class BatchedInProcesses(WordsBatched):
    holds_gil = True


class BatchedOnLoop(WordsOnLoop):
    batched = True


class OnLoopInProcesses(WordsOnLoop):
    holds_gil = True


class Doubled:
    """Changes no tensor's name: the model's signature is served."""

    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"features": inputs["features"] * np.float32(2)}


class MissesAnOutput(Words):
    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"topic": np.array(["none"] * len(outputs["probabilities"]), dtype=object)}


class FailsToLoad(Words):
    def load(self, context: HandlerContext) -> None:
        raise RuntimeError("the vocabulary is missing")


class FailsToLoadInProcesses(FailsToLoad):
    holds_gil = True


class NoStage:
    def load(self, context: HandlerContext) -> None:
        pass


class BadDatatype(Words):
    inputs = {"text": ("STRING", [-1])}


class NoRows(Words):
    inputs = {"text": ("BYTES", [1])}


class OutputsWithoutPostprocess(Doubled):
    outputs = {"topic": ("BYTES", [-1])}


class KeepsItsAnswer:
    """Answers every request with the first answer's dict, which it keeps (a cached answer)."""

    def load(self, context: HandlerContext) -> None:
        self.answer: dict[str, np.ndarray] | None = None

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.answer is None:
            self.answer = dict(outputs)
        return self.answer
