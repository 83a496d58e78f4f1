"""The bench's Python handlers (``--handler noop_handler:NoOp --handler-path bench``): they change nothing, so what
they cost is the handler stages' own: a preprocess and a postprocess stage per request, each in a stage thread
(``NoOp``) or awaited on the event loop (``NoOpOnLoop``, its stages ``async def``)."""

from __future__ import annotations

import numpy as np


class NoOp:
    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs


class NoOpOnLoop:
    async def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    async def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs
