"""How much memory a runtime pod needs, planned before it is scheduled: a pure formula, calibrated on the real
runtime (``bench/memory_calibration.py``; its numbers are in docs/guide/optimization.md).

    serve    = workers x (BASE + size x WEIGHTS[quantization] + instanceCount x max(maxBatchSize, 1) x PER_ROW
                          + BUFFERED + IMAGES)
               + SUPERVISOR                                                     (only with workers above 1)
    optimize = OPTIMIZE_BASE + size x OPTIMIZING[quantization]            (only with an optimize init container)
    estimate = max(serve, optimize)

- ``BASE``: the runtime process before any model (Python, aiohttp, NumPy, ONNX Runtime), with some margin.
- ``size``: the FP32 model file's size, ``spec.model.size`` (the operator cannot read the file). ONNX Runtime
  holds the weights once per pod (one session, shared by the ``instanceCount`` batches computing at once), and the
  parsed file besides while it builds the session: about twice the stored weights. Dynamic INT8 quantization
  stores them in a quarter of the bytes.
- ``PER_ROW``: each row of a batch in flight: the decoded request, the intermediate tensors, the answer. It depends
  on the model's inputs, which the operator cannot see either; the constant covers the bundled CNN's 3x64x64 images
  sent as JSON, the heaviest of the bundled models, and over-counts small inputs.
- ``BUFFERED``: request bodies arriving, or read and waiting their turn, which the runtime bounds per process at
  ``max_buffered_request_bytes`` (its default: the operator leaves it as it is), however many clients send at once.
- ``IMAGES``: with image inputs, the images being decoded: each of the worker's processing threads decodes one
  request's at a time, and ``maxImagePixels`` bounds a request's pixels per input, so ``processing threads x
  maxImagePixels x`` the bytes one pixel takes while it is decoded, summed over the image inputs
  (``IMAGE_BYTES_PER_PIXEL``: the decoded image, its conversion and the tensor; far more without ``resize``, where the
  tensor is as large as the image, in floats).
- ``workers``: each server process holds its own session, so all of the above once per worker; with more than one,
  the supervisor process and multiprocessing's resource tracker besides.
- ``optimize``: the init container's ``kubeserve-runtime optimize`` imports more (onnx, the quantizer), parses the
  model, rewrites it (ONNX Runtime's quantizer copies it more than once) and loads both files to compare their
  outputs: several times the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kubernetes.utils import parse_quantity
from kubeserve.operator.cpu_share import processing_threads, wanted_workers
from kubeserve.operator.spec import InferenceService, Quantization
from kubeserve.runtime.config import RuntimeSettings

MIB = 1024 * 1024
# Calibrated on CPU (docs/guide/optimization.md): the runtime's peak was 92 MiB with the sample MLP,
# and 106 MiB with the same packages installed on a tmpfs (file pages count too, as they do in a pod's cgroup).
BASE_BYTES = 120 * MIB
# Peak bytes per byte of the FP32 file: 1.82 measured for a 96 MiB MLP as FP32, 0.45 quantized.
WEIGHTS: dict[str, float] = {"none": 2.0, "dynamicInt8": 0.5}
# Up to 2.3 MiB measured per row of the CNNs' 3x64x64 images at batch 32.
PER_ROW_BYTES = math.ceil(2.5 * MIB)
# Request bodies held by one server process at most: the runtime's bound, which pods keep at its default.
BUFFERED_BYTES: int = RuntimeSettings.model_fields["max_buffered_request_bytes"].default
# Peak bytes per pixel of one request's images being decoded, by whether the input resizes them: up to 8.2 measured
# with resize (an RGBA PNG made RGB; 4.2 for RGB, 0.2 for a JPEG decoded at a smaller scale), 19.1 without (the
# float tensor is as large as the image).
IMAGE_BYTES_PER_PIXEL = {True: 9, False: 20}
# A request's pixels per image input when the spec does not say: the runtime's default.
MAX_IMAGE_PIXELS: int = RuntimeSettings.model_fields["max_image_pixels"].default
# With workers: the supervisor (38 MiB measured: it imports neither ONNX Runtime nor aiohttp) and multiprocessing's
# resource tracker (13 MiB), with some margin.
SUPERVISOR_BYTES = 56 * MIB
# The optimize command before any model (102 MiB measured quantizing the sample CNN, 115 MiB from a tmpfs), with
# some margin.
OPTIMIZE_BASE_BYTES = 130 * MIB
# The optimize command's peak bytes per byte of the FP32 file: 5.7 to 6.3 measured quantizing, 3.5 to 4.0
# precompiling alone (quantization none).
OPTIMIZING: dict[str, float] = {"none": 4.0, "dynamicInt8": 6.5}


@dataclass(frozen=True)
class MemoryInputs:
    """What the estimate depends on, as the spec says it."""

    model_bytes: int  # the FP32 model file's size
    quantization: Quantization = "none"
    max_batch_size: int = 32
    instance_count: int = 1
    optimizes: bool = False  # an init container writes the model served (quantization, precompile, composition)
    workers: int = 1  # server processes in the pod, each with its own session
    buffered_bytes: int = BUFFERED_BYTES  # request bodies one process may hold (max_buffered_request_bytes)
    image_bytes: int = 0  # one process's images being decoded at once (``image_bytes``)


def estimate_bytes(inputs: MemoryInputs) -> int:
    """The pod's peak memory in bytes: its runtime container's, or its optimize init container's if larger."""
    rows = inputs.instance_count * max(inputs.max_batch_size, 1)
    one = (
        BASE_BYTES
        + inputs.model_bytes * WEIGHTS[inputs.quantization]
        + rows * PER_ROW_BYTES
        + inputs.buffered_bytes
        + inputs.image_bytes
    )
    serve = inputs.workers * one + (SUPERVISOR_BYTES if inputs.workers > 1 else 0)
    optimize = OPTIMIZE_BASE_BYTES + inputs.model_bytes * OPTIMIZING[inputs.quantization]
    return math.ceil(max(serve, optimize) if inputs.optimizes else serve)


def memory_inputs(isvc: InferenceService, workers: int | None = None) -> MemoryInputs | None:
    """The estimate's inputs (for ``workers``, else the pod's ``planned_workers``), or None when there is no plan to
    make: without ``spec.model.size``, or on a GPU (the host memory of the CUDA libraries was not calibrated, and the
    weights live in GPU memory there)."""
    size = isvc.spec.model.size
    if size is None or isvc.wants_gpu:
        return None
    optimization = isvc.optimization
    if workers is None:
        workers = planned_workers(isvc)
    return MemoryInputs(
        model_bytes=quantity_bytes(size),
        quantization=optimization.quantization,
        max_batch_size=isvc.spec.batching.max_batch_size,
        instance_count=isvc.spec.runtime.instance_count,
        optimizes=isvc.spec.model.rewritten,
        workers=workers,
        image_bytes=image_bytes(isvc, workers),
    )


def image_bytes(isvc: InferenceService, workers: int) -> int:
    """One worker's images being decoded at once, at most: none without image inputs."""
    model = isvc.spec.model
    pixels = model.max_image_pixels or MAX_IMAGE_PIXELS
    per_pixel = sum(IMAGE_BYTES_PER_PIXEL[each.image.resize is not None] for each in model.inputs or ())
    return processing_threads(isvc, workers) * pixels * per_pixel


def planned_workers(isvc: InferenceService) -> int:
    """The pod's server processes: spec.runtime.workers as given; else what its CPU request asks for
    (``cpu_share``), as many of them as its memory limit holds. Each holds its own session, so a pod sized for one
    process is not given four on an operator upgrade: with a memory limit and no ``spec.model.size`` to plan
    against, one."""
    wanted = wanted_workers(isvc)
    limit = isvc.spec.runtime.resources.limits.get("memory")
    if isvc.spec.runtime.workers is not None or wanted == 1 or limit is None:
        return wanted
    one = memory_inputs(isvc, workers=1)
    if one is None:
        return 1
    # The processing threads, and so the images decoded at once, are the CPU request shared among the workers.
    fitting = [
        n
        for n in range(1, wanted + 1)
        if estimate_bytes(replace(one, workers=n, image_bytes=image_bytes(isvc, n))) <= quantity_bytes(limit)
    ]
    return max(fitting, default=1)


def estimate(isvc: InferenceService) -> int | None:
    """The pods' estimated peak memory in bytes (``estimate_bytes``), or None (``memory_inputs``)."""
    inputs = memory_inputs(isvc)
    return None if inputs is None else estimate_bytes(inputs)


def as_quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity in whole MiB, rounded up (``"312Mi"``)."""
    return f"{math.ceil(size / MIB)}Mi"


def quantity_bytes(quantity: int | str) -> int:
    """A Kubernetes quantity (``"2Gi"``, ``"500M"``, ``1024``) in bytes, rounded up."""
    return math.ceil(parse_quantity(quantity))


@dataclass(frozen=True)
class MemoryCheck:
    """A revision's estimate against its pods' memory limit (None: no limit), for the status."""

    estimate: int
    limit: int | None

    @property
    def too_low(self) -> bool:
        return self.limit is not None and self.limit < self.estimate


def memory_check(isvc: InferenceService) -> MemoryCheck | None:
    """None when there is no estimate (``memory_inputs``)."""
    planned = estimate(isvc)
    if planned is None:
        return None
    limit = isvc.spec.runtime.resources.limits.get("memory")
    return MemoryCheck(planned, None if limit is None else quantity_bytes(limit))
