"""The bench's Python handler (``--handler noop_handler:NoOp --handler-path bench``): it changes nothing, so what it
costs is the handler stages' own: a preprocess and a postprocess stage per request, each in a stage thread."""

from __future__ import annotations

import numpy as np


class NoOp:
    def preprocess(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return inputs

    def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return outputs
