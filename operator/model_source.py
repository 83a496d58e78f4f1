"""Where a runtime pod finds its model file: fetched by an init container, on a PVC, or inside the image; and,
with an optimization that rewrites it, the optimized copy an init container writes next to nothing it reads."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from kubeserve.operator import naming
from kubeserve.operator.spec import Model

FETCHED_SCHEMES = ("http", "https", "s3", "gs")


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["fetch", "pvc", "image"]
    model_path: str  # the ONNX file as the runtime container sees it
    claim: str | None = None  # the PersistentVolumeClaim, for kind "pvc"
    optimized: bool = False  # an init container writes the optimized model from model_path

    @property
    def served_path(self) -> str:
        """The file the runtime loads: the optimized copy, or the original (which stays, for comparison)."""
        return naming.OPTIMIZED_MODEL_PATH if self.optimized else self.model_path


def model_source(model: Model) -> ModelSource:
    scheme, rest = model.uri.split("://", 1)
    optimized = model.optimization is not None and model.optimization.rewrites_model
    if scheme in FETCHED_SCHEMES:
        return ModelSource("fetch", naming.FETCHED_MODEL_PATH, optimized=optimized)
    if scheme == "pvc":
        claim, path = rest.split("/", 1)
        return ModelSource("pvc", posixpath.join(naming.MODELS_DIR, path), claim=claim, optimized=optimized)
    return ModelSource("image", rest, optimized=optimized)  # file:///opt/x.onnx -> /opt/x.onnx
