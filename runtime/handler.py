"""What a Python handler is given, and what it raises for a client's mistake: the public side of the ``handler``
setting (``module:Class``; docs/guide/processing.md, "Python handlers").

The class may define any of these, and at least one of ``preprocess`` and ``postprocess``::

    import numpy as np
    from kubeserve.runtime.handler import HandlerContext, InvalidInput

    class Handler:
        inputs = {"text": ("BYTES", [-1])}  # what clients send, where preprocess changes it
        outputs = {"label": ("BYTES", [-1])}  # what clients get, where postprocess changes it
        holds_gil = False  # True: in a pool of processes, not the stage threads
        batched = False  # True: each call gets a batch's rows (its requests' concatenated), in the batch's compute

        def load(self, context: HandlerContext) -> None: ...  # once, at model load, before the warm-up

        def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...  # what the model takes

        def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...  # what clients get

Each call gets one request's tensors (its rows); with ``batched = True``, a whole batch's, every request's rows in
order, and it must return as many rows as it got. ``InvalidInput`` from a batched call rejects every request of the
batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeserve.runtime.signature import ModelSignature


class InvalidInput(Exception):
    """What the client sent cannot be used: the request is answered 400 with this exception's message."""


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What ``load(context)`` is given."""

    # What preprocess returns and postprocess receives: the model's inputs (an image input of image_inputs as BYTES,
    # the encoded images, which the server decodes after preprocess) and its outputs.
    signature: ModelSignature
    model_name: str
    model_version: str
    model_path: Path
    handler_path: Path | None  # where the handler's code was fetched (files shipped with it are there); None: none
