"""The memory estimate against the real runtime: ``kubeserve-runtime serve`` of the bundled models, as FP32 and
quantized to INT8 (by ``kubeserve-runtime optimize``, as the init container does), at two batch sizes, and the
optimize command itself; peak resident memory read from /proc and wait4 (bench/memory_calibration.py, the
docs/guide/optimization.md's table).

The bound: the estimate is never below the measured peak (a limit set to it must not be OOMKilled), and at most two
and a half times it (the per-row allowance, sized for images, over-counts the MLP's rows at batch 32); at batch 1,
where that allowance weighs least, at most half above it. (The same process peaks about 14 MiB higher when its
packages sit on a tmpfs, as in a fresh clone under /tmp: the estimate covers both.)

The calibration's requests are small and answered at once: they hold no request bodies in the HTTP layer's buffers.
So the estimate is compared without its allowance for them (``BUFFERED_BYTES``, which the runtime's bound makes
true by construction; tests/runtime/test_http_limits.py measures a server holding that much).
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest
from kubeserve.operator.memory_estimate import MemoryInputs, estimate_bytes
from kubeserve.runtime import samples

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import memory_calibration  # bench/, put on sys.path above

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")

BUILDERS = {"mlp": samples.build_mlp, "cnn": samples.build_cnn}
UNBUFFERED = 0  # the estimate's allowance for request bodies held in the HTTP layer: none in this load


class Bundled:
    """The bundled models' files, the FP32 file's size (what spec.model.size says), and the optimize command's peak
    making the INT8 file."""

    def __init__(self, directory: Path) -> None:
        self.files: dict[tuple[str, str], Path] = {}
        self.sizes: dict[str, int] = {}
        self.optimize_peaks: dict[str, int] = {}
        for name, build in BUILDERS.items():
            fp32 = directory / f"{name}.onnx"
            onnx.save(build(), str(fp32))
            int8 = directory / f"{name}.int8.onnx"
            self.optimize_peaks[name] = memory_calibration.optimize(fp32, int8)
            self.files[name, "none"], self.files[name, "dynamicInt8"] = fp32, int8
            self.sizes[name] = fp32.stat().st_size


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Bundled:
    return Bundled(tmp_path_factory.mktemp("memory"))


@pytest.mark.parametrize("batch_size", memory_calibration.BATCH_SIZES)
@pytest.mark.parametrize("quantization", ["none", "dynamicInt8"])
@pytest.mark.parametrize("model", sorted(BUILDERS))
def test_the_estimate_bounds_the_served_models_peak(bundled, model, quantization, batch_size):
    measured = memory_calibration.measure(bundled.files[model, quantization], batch_size)
    estimated = estimate_bytes(
        MemoryInputs(
            model_bytes=bundled.sizes[model],
            quantization=quantization,
            max_batch_size=batch_size,
            buffered_bytes=UNBUFFERED,
        )
    )

    assert measured <= estimated <= 2.5 * measured, (measured, estimated)
    if batch_size == 1:
        assert estimated <= 1.5 * measured, (measured, estimated)


@pytest.mark.parametrize("model", sorted(BUILDERS))
def test_the_estimate_covers_the_optimize_init_container(bundled, model):
    measured = bundled.optimize_peaks[model]
    # The pod's estimate with the init container, at its lightest batching.
    inputs = MemoryInputs(
        model_bytes=bundled.sizes[model],
        quantization="dynamicInt8",
        max_batch_size=1,
        optimizes=True,
        buffered_bytes=UNBUFFERED,
    )

    assert measured <= estimate_bytes(inputs) <= 1.5 * measured, (measured, estimate_bytes(inputs))


def test_the_estimate_bounds_a_pod_of_workers(bundled):
    # Each worker holds its own session; the supervisor and multiprocessing's resource tracker come besides.
    measured = memory_calibration.measure(bundled.files["mlp", "none"], batch_size=1, workers=2)
    estimated = estimate_bytes(
        MemoryInputs(model_bytes=bundled.sizes["mlp"], max_batch_size=1, workers=2, buffered_bytes=UNBUFFERED)
    )

    assert measured <= estimated <= 1.5 * measured, (measured, estimated)
