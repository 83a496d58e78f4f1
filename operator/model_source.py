"""Where a runtime pod finds its files: the model, and the graphs, labels file and handler code beside it. Each is
fetched by an init container into the pod's emptyDir at /models, read from a PVC, or read inside the image; with an
optimization that rewrites the model, or graphs composed with it, an init container writes the file the runtime
loads next to nothing it reads."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Literal

from kubeserve.operator import naming
from kubeserve.operator.spec import Model


@dataclass(frozen=True)
class Fetch:
    """One URI for the fetch init container: a file to ``dest``, or with ``unpack`` Python code into that directory."""

    uri: str
    dest: str
    unpack: bool = False


@dataclass(frozen=True)
class ModelSource:
    # The pod's "models" volume: an emptyDir the fetch init container fills, the model's claim, or none.
    kind: Literal["fetch", "pvc", "image"]
    model_path: str  # the ONNX file as the runtime container sees it
    claim: str | None = None  # the PersistentVolumeClaim, for kind "pvc"
    optimized: bool = False  # an init container writes the served model from model_path (and the graphs beside it)
    preprocessing_path: str | None = None
    postprocessing_path: str | None = None
    labels_path: str | None = None
    handler_path: str | None = None  # the directory of the handler's code, when fetched
    fetches: tuple[Fetch, ...] = ()  # in the fetch init container's order
    claims: tuple[str, ...] = ()  # claims the fetch init container copies from, mounted at PVC_ROOT/CLAIM

    @property
    def served_path(self) -> str:
        """The file the runtime loads: the optimized copy, or the original (which stays, for comparison)."""
        return naming.OPTIMIZED_MODEL_PATH if self.optimized else self.model_path


def model_source(model: Model) -> ModelSource:
    """A model alone is fetched (http, https, s3, gs), mounted (its claim at /models) or read in the image. With a
    file beside it that is not in the image, or handler code (unpacked into a directory), /models is an emptyDir and
    the fetch init container brings every file not in the image there: a claim's by copying it."""
    beside = {
        naming.PREPROCESSING_PATH: model.preprocessing,
        naming.POSTPROCESSING_PATH: model.postprocessing,
        naming.LABELS_PATH: model.labels,
    }
    handler_uri = model.handler.uri if model.handler is not None else None
    fetches_beside = handler_uri is not None or any(uri and not _in_image(uri) for uri in beside.values())
    fetches: list[Fetch] = []
    claim = None
    if model.uri.startswith("pvc://") and not fetches_beside:
        claim, path = model.uri.removeprefix("pvc://").split("/", 1)
        model_path = posixpath.join(naming.MODELS_DIR, path)
    else:
        model_path = _place(model.uri, naming.FETCHED_MODEL_PATH)
        if not _in_image(model.uri):
            fetches.append(Fetch(model.uri, model_path))
    paths: dict[str, str | None] = {}
    for dest, uri in beside.items():
        paths[dest] = None if uri is None else _place(uri, dest)
        if uri is not None and not _in_image(uri):
            fetches.append(Fetch(uri, dest))
    if handler_uri is not None:
        fetches.append(Fetch(handler_uri, naming.HANDLER_DIR, unpack=True))
    copied_claims = {_claim(fetch.uri) for fetch in fetches if fetch.uri.startswith("pvc://")}
    return ModelSource(
        "fetch" if fetches else ("pvc" if claim is not None else "image"),
        model_path,
        claim=claim,
        optimized=model.rewritten,
        preprocessing_path=paths[naming.PREPROCESSING_PATH],
        postprocessing_path=paths[naming.POSTPROCESSING_PATH],
        labels_path=paths[naming.LABELS_PATH],
        handler_path=naming.HANDLER_DIR if handler_uri is not None else None,
        fetches=tuple(fetches),
        claims=tuple(sorted(copied_claims)),
    )


def _claim(uri: str) -> str:
    return uri.removeprefix("pvc://").split("/", 1)[0]


def _in_image(uri: str) -> bool:
    return uri.startswith("file://")


def _place(uri: str, dest: str) -> str:
    """Where a file is in the pod: inside the image where its URI says (file:///opt/x -> /opt/x), else fetched to
    ``dest``."""
    return uri.removeprefix("file://") if _in_image(uri) else dest
