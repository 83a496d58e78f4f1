"""What runs around the model for each request, built once at load from the settings: the preprocess stage (a
Python handler's preprocess, then image inputs decoded into the model's tensors) and the postprocess stage (the
handler's postprocess, then the classification extension's top classes).

``Processing`` is that, for one model:
- ``signature`` is what clients see (metadata, Triton's model configuration, request validation): the model's own
  (``OnnxModel.signature``, what the session takes), except that each image input is BYTES ``[batch]``, one encoded
  image per row; and where a handler declares its ``inputs`` or ``outputs``, those.
- ``preprocess(feeds)``: the tensors a client sent (validated against ``signature``) as the model takes them.
- ``postprocess(outputs, classifications)``: the model's outputs as the client asked for them.

Both block (Pillow, NumPy, the handler's code) and raise ``BadRequest`` for what the client got wrong; the server
runs them as the ``preprocess`` and ``postprocess`` stages, in threads under their timeouts (``server/stages.py``).
Warm-up runs the model through both too. A model without image inputs or a handler's preprocess has no preprocess
stage (``preprocesses`` is false), and a request without classification or a handler's postprocess
(``postprocesses``) no postprocess stage: nothing is added to their path. A batched handler (``batched = True``) is
no part of either stage: ``batch_preprocess`` and ``batch_postprocess`` are its stages, which the batcher runs in each
batch's compute.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from kubeserve.runtime.classification import class_count, read_labels, top_classes
from kubeserve.runtime.config import CHANNELS, ImageInput, RuntimeSettings
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.handler_code import Tensors
from kubeserve.runtime.handler_stages import Handler, load_handler
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.signature import ModelSignature, TensorSpec

if TYPE_CHECKING:
    from kubeserve.runtime.images import ImageDecoder

log = logging.getLogger(__name__)

# What an image input may be in the model: normalised floats, or the pixels as they are.
IMAGE_DATATYPES = ("FP32", "FP16", "UINT8")


class ProcessingError(Exception):
    """The processing settings do not fit the model (a failed load); the message says which and why."""


@dataclass(frozen=True, slots=True)
class Processing:
    signature: ModelSignature  # served: what clients send and get
    images: Mapping[str, ImageDecoder] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    handler: Handler | None = None
    # What follows is made once here from the above, being on every request's path.
    # The handler's ``async def`` preprocess and postprocess, awaited on the event loop before the rest of their
    # stage (what they make and raise go through the handler: ``Handler.on_loop_output``, ``on_loop_failure``); None:
    # none.
    preprocess_on_loop: Callable[[Tensors], Awaitable[object]] | None = field(init=False, default=None)
    postprocess_on_loop: Callable[[Tensors], Awaitable[object]] | None = field(init=False, default=None)
    # Requests have a preprocess stage; and it has work in a stage thread (``preprocess``): images, or the handler's
    # plain preprocess.
    preprocesses: bool = field(init=False, default=False)
    preprocesses_in_thread: bool = field(init=False, default=False)
    # Every request has a postprocess stage (the handler's), which gets every output of the model.
    postprocesses: bool = field(init=False, default=False)
    # The handler's plain (not batched, not ``async def``) preprocess and postprocess, run in a stage thread; None:
    # none.
    _handler_preprocess: Callable[[Tensors], Tensors] | None = field(init=False, default=None)
    _handler_postprocess: Callable[[Tensors], Tensors] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        handler = self.handler
        on_loop = {
            stage: handler.stage_on_loop(stage) if handler is not None and stage in handler.on_loop else None
            for stage in (PREPROCESS, POSTPROCESS)
        }
        handler_preprocess = self._handler_stage(PREPROCESS)
        handler_postprocess = self._handler_stage(POSTPROCESS)
        preprocesses_in_thread = bool(self.images) or handler_preprocess is not None
        made = {
            "preprocess_on_loop": on_loop[PREPROCESS],
            "postprocess_on_loop": on_loop[POSTPROCESS],
            "preprocesses": preprocesses_in_thread or on_loop[PREPROCESS] is not None,
            "preprocesses_in_thread": preprocesses_in_thread,
            "postprocesses": on_loop[POSTPROCESS] is not None or handler_postprocess is not None,
            "_handler_preprocess": handler_preprocess,
            "_handler_postprocess": handler_postprocess,
        }
        for name, value in made.items():
            object.__setattr__(self, name, value)  # the dataclass is frozen

    @classmethod
    def build(cls, settings: RuntimeSettings, signature: ModelSignature) -> Processing:
        """From the settings, checked against the model's signature; a mismatch raises ``ProcessingError``, a
        handler that cannot load ``HandlerError``."""
        images = {
            name: _image_decoder(name, setting, signature, settings.max_image_pixels)
            for name, setting in settings.image_inputs.items()
        }
        if images:
            bytes_type = DATATYPES["BYTES"]
            signature = ModelSignature(
                inputs=tuple(
                    TensorSpec(spec.name, bytes_type, spec.shape[:1]) if spec.name in images else spec
                    for spec in signature.inputs
                ),
                outputs=signature.outputs,
            )
        if settings.handler is None:
            return cls(signature, images, _labels(settings, signature))
        handler = load_handler(settings.handler, settings, signature)
        try:
            if images and handler.batched and handler.preprocesses:
                raise ProcessingError(
                    f"handler {handler.name} is batched, with a preprocess, and the model has image_inputs: a batched "
                    "preprocess runs in the batch's compute, after the images are decoded, so it cannot make them"
                )
            labels = _labels(settings, handler.signature)
        except ProcessingError:
            handler.close()
            raise
        return cls(handler.signature, images, labels, handler)

    def postprocesses_in_thread(self, classifications: Mapping[str, int]) -> bool:
        """A request's postprocess stage has work in a stage thread (``postprocess``): the handler's plain
        postprocess, or top classes asked for."""
        return bool(classifications) or self._handler_postprocess is not None

    @property
    def every_output(self) -> bool:
        """The model makes every output for each request: a handler's postprocess (per request or batched) gets them."""
        return self.handler is not None and self.handler.postprocesses

    @property
    def batch_preprocess(self) -> Callable[[Tensors], Tensors] | None:
        """A batched handler's preprocess, for the batcher to run on each batch's rows; None: none."""
        return self._handler_stage(PREPROCESS, batched=True)

    @property
    def batch_postprocess(self) -> Callable[[Tensors], Tensors] | None:
        """A batched handler's postprocess, for the batcher to run on each batch's outputs; None: none."""
        return self._handler_stage(POSTPROCESS, batched=True)

    def _handler_stage(self, stage: str, *, batched: bool = False) -> Callable[[Tensors], Tensors] | None:
        """The handler's ``stage``, if it has one and is batched (``batched``) or not."""
        handler = self.handler
        if handler is None or handler.batched != batched or stage in handler.on_loop:
            return None
        if stage == PREPROCESS:
            return handler.preprocess if handler.preprocesses else None
        return handler.postprocess if handler.postprocesses else None

    def preprocess(self, feeds: Tensors) -> Tensors:
        """The client's tensors as the model takes them: the handler's (plain) preprocess, then each image input's
        images decoded into its tensor."""
        handler_preprocess = self._handler_preprocess
        if handler_preprocess is not None:
            feeds = handler_preprocess(feeds)
        images = self.images
        if not images:
            return feeds
        return {name: images[name].decode(array) if name in images else array for name, array in feeds.items()}

    def postprocess(self, outputs: Tensors, classifications: Mapping[str, int]) -> Tensors:
        """The model's outputs as asked for: the handler's postprocess, then the outputs in ``classifications``
        (name: K) as their top K classes."""
        handler_postprocess = self._handler_postprocess
        if handler_postprocess is not None:
            outputs = handler_postprocess(outputs)
        if classifications:  # a copy to change: the outputs may be a dict the handler keeps
            outputs = dict(outputs)
        for name, count in classifications.items():
            outputs[name] = top_classes(name, outputs[name], count, self.labels)
        return outputs

    def close(self) -> None:
        """The handler's processes, if it has any, are stopped."""
        if self.handler is not None:
            self.handler.close()

    def synthetic_feeds(self) -> Tensors:
        """One row of every served input, for the synthetic warm-up: zeros, empty strings, a black image."""
        feeds = {}
        for spec in self.signature.inputs:
            shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
            if spec.name in self.images:
                feeds[spec.name] = np.full(shape, self.images[spec.name].blank_png(), dtype=object)
            elif spec.datatype.is_bytes:
                feeds[spec.name] = np.full(shape, b"", dtype=object)
            else:
                feeds[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
        return feeds


def _labels(settings: RuntimeSettings, signature: ModelSignature) -> tuple[str, ...]:
    path = settings.labels_path
    if path is None:
        return ()
    try:
        labels = read_labels(path)
    except OSError as error:
        raise ProcessingError(f"cannot read labels_path {path}: {error.strerror}") from None
    except UnicodeError:
        raise ProcessingError(f"labels_path {path} is not UTF-8 text") from None
    if not any(labels):
        raise ProcessingError(f"labels_path {path} names no class")
    short = {spec.name: count for spec in signature.outputs if (count := class_count(spec.shape)) > len(labels)}
    if short:
        # Not an error (Triton's rule too): the classes past the last label are answered without one.
        log.warning(
            "labels_path has fewer labels than an output has classes",
            extra={"event": "labels_short", "labels": len(labels), "classes": short},
        )
    return labels


def _image_decoder(name: str, setting: ImageInput, signature: ModelSignature, max_pixels: int) -> ImageDecoder:
    """One ``image_inputs`` entry checked against the model's input of that name."""
    spec = signature.input(name)
    if spec is None:
        inputs = ", ".join(s.name for s in signature.inputs)
        raise ProcessingError(f"image_inputs names '{name}', which is not an input of the model (its inputs: {inputs})")
    where = f"image_inputs: input '{name}'"
    datatype = spec.datatype.name
    if datatype not in IMAGE_DATATYPES:
        raise ProcessingError(f"{where} is {datatype}; an image input must be FP32, FP16 or UINT8")
    layout = setting.layout
    if len(spec.shape) != 4:
        raise ProcessingError(f"{where} has shape {list(spec.shape)}; an image input has 4 dimensions ({layout})")
    channels_last = layout == "NHWC"
    _, first, second, third = spec.shape
    height, width, channels = (first, second, third) if channels_last else (second, third, first)
    wanted = CHANNELS[setting.channel_order]
    if channels not in (-1, wanted):
        raise ProcessingError(
            f"{where} has {channels} channels ({layout}, shape {list(spec.shape)}), but channel_order "
            f"{setting.channel_order} makes {wanted}"
        )
    if setting.resize is not None:
        for label, dim, size in (("height", height, setting.resize[0]), ("width", width, setting.resize[1])):
            if dim not in (-1, size):
                raise ProcessingError(
                    f"{where}: resize {list(setting.resize)} makes images of {label} {size}, but the model's "
                    f"{label} is {dim} ({layout}, shape {list(spec.shape)})"
                )
    scale = offset = None
    if datatype == "UINT8":
        if setting.mean is not None or setting.std is not None:
            raise ProcessingError(
                f"{where} is UINT8: it takes the pixels as they are (0..255), so mean and std cannot apply (they "
                "need an FP32 or FP16 input)"
            )
    else:
        std = np.asarray(setting.std or (1.0,) * wanted, dtype=np.float64)
        per_channel = (wanted,) if channels_last else (wanted, 1, 1)
        scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(per_channel)
        if setting.mean is not None:
            offset = (np.asarray(setting.mean, dtype=np.float64) / std).astype(np.float32).reshape(per_channel)
    # Pillow is imported here, by models that take images, and only by them.
    from kubeserve.runtime.images import ImageDecoder

    return ImageDecoder(
        name=name,
        mode="L" if setting.channel_order == "L" else "RGB",
        bgr=setting.channel_order == "BGR",
        channels_last=channels_last,
        size=setting.resize or (height, width),
        resize=setting.resize is not None,
        dtype=spec.datatype.numpy,
        scale=scale,
        offset=offset,
        max_pixels=max_pixels,
    )
