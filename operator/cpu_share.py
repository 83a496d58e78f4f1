"""How a runtime pod shares its CPUs: how many server processes (``workers``) its CPU request asks for, and how many
ONNX Runtime threads each has.

One server process keeps about one core busy (its event loop, under one GIL), so a pod that asks for N cores asks
for N workers, and each worker's ONNX Runtime gets the cores it would otherwise fight the others for. A GPU pod
keeps one process: one session per GPU. Each worker holds its own session, so how many a pod runs in the end is
also a question of memory (``memory_estimate.planned_workers``).
"""

from __future__ import annotations

import math
from decimal import Decimal

from kubernetes.utils import parse_quantity
from kubeserve.operator.spec import InferenceService
from kubeserve.runtime.cpus import workers_for_cores


def requested_cores(isvc: InferenceService) -> Decimal | None:
    """The CPU the pod asks for (its request, else its limit, which Kubernetes then requests), or None."""
    resources = isvc.spec.runtime.resources
    cpu = resources.requests.get("cpu", resources.limits.get("cpu"))
    return parse_quantity(cpu) if cpu is not None else None


def wanted_workers(isvc: InferenceService) -> int:
    """spec.runtime.workers, or the CPU request's whole cores (at least 1); 1 on a GPU."""
    if isvc.spec.runtime.workers is not None:
        return isvc.spec.runtime.workers
    cores = requested_cores(isvc)
    if isvc.wants_gpu or cores is None:
        return 1
    return workers_for_cores(cores)


def intra_op_threads(isvc: InferenceService, workers: int) -> int:
    """spec.runtime.intraOpNumThreads; with several workers and none set, the CPU request shared between them (the
    runtime alone would see the node's cores, not the pod's); otherwise 0, the runtime's own choice."""
    runtime = isvc.spec.runtime
    cores = requested_cores(isvc)
    if runtime.intra_op_num_threads or workers == 1 or cores is None:
        return runtime.intra_op_num_threads
    return max(1, math.floor(cores / workers))


def processing_threads(isvc: InferenceService, workers: int) -> int:
    """Each worker's preprocess and postprocess threads: spec.runtime.processingThreads, else the CPU request shared
    between the workers, at least one; one without a CPU request, which promises the pod none. Set for image inputs
    rather than left to the runtime, which would count the node's cores (or the pod's CPU limit) and so decode that
    many requests' images at once: the memory estimate counts on it."""
    if isvc.spec.runtime.processing_threads is not None:
        return isvc.spec.runtime.processing_threads
    cores = requested_cores(isvc)
    return 1 if cores is None else max(1, math.floor(cores / workers))
