"""Where a runtime pod finds its model file: fetched by an init container, on a PVC, or inside the image."""

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


def model_source(model: Model) -> ModelSource:
    scheme, rest = model.uri.split("://", 1)
    if scheme in FETCHED_SCHEMES:
        return ModelSource("fetch", naming.FETCHED_MODEL_PATH)
    if scheme == "pvc":
        claim, path = rest.split("/", 1)
        return ModelSource("pvc", posixpath.join(naming.MODELS_DIR, path), claim=claim)
    return ModelSource("image", rest)  # file:///opt/x.onnx -> /opt/x.onnx
