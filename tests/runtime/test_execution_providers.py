"""Which ONNX Runtime execution providers each ``device`` asks for, in which order and with which options: a pure
function of the settings and of what the onnxruntime build offers, so every case runs here without a GPU."""

from __future__ import annotations

import pytest
from kubeserve.runtime.cli import build_parser
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.model import CPU, CUDA, TENSORRT, ModelLoadError, OnnxModel, execution_providers

REQUIRED = {"model_path": "model.onnx", "model_name": "m"}
GPU_BUILD = [TENSORRT, CUDA, CPU]
CUDA_BUILD = [CUDA, CPU]
CPU_BUILD = [CPU]


def providers(available, **settings):
    return execution_providers(RuntimeSettings(**REQUIRED, **settings), available)


def test_tensorrt_comes_first_then_cuda_then_cpu_with_fp16_by_default():
    assert providers(GPU_BUILD, device="tensorrt", cuda_device_id=1, cuda_memory_limit_bytes=2**30) == [
        (
            TENSORRT,
            {
                "device_id": 1,
                "trt_fp16_enable": True,
                "trt_int8_enable": False,
                "trt_engine_cache_enable": False,
                "trt_timing_cache_enable": False,
            },
        ),
        (CUDA, {"device_id": 1, "gpu_mem_limit": 2**30}),
        CPU,
    ]


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False), ("int8", True, True)]
)
def test_tensorrt_precision(precision, fp16, int8):
    (tensorrt, options), *_ = providers(GPU_BUILD, device="tensorrt", tensorrt_precision=precision)

    assert tensorrt == TENSORRT
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)


def test_the_tensorrt_engine_cache_is_on_where_a_path_is_given(tmp_path):
    ((_, options), *_) = providers(GPU_BUILD, device="tensorrt", tensorrt_engine_cache_path=tmp_path / "trt")

    assert options["trt_engine_cache_enable"] is True
    assert options["trt_timing_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert options["trt_timing_cache_path"] == str(tmp_path / "trt")


@pytest.mark.parametrize(
    ("available", "missing"),
    [(CPU_BUILD, "no TensorRT provider (TensorrtExecutionProvider"), (CUDA_BUILD, "no TensorRT provider")],
)
def test_device_tensorrt_without_the_provider_fails_naming_it(available, missing):
    with pytest.raises(ModelLoadError, match=r"device is 'tensorrt', but this onnxruntime has") as raised:
        providers(available, device="tensorrt")

    assert missing in str(raised.value)
    assert "available: " + ", ".join(available) in str(raised.value)


def test_the_other_devices_never_pick_tensorrt():
    assert providers(GPU_BUILD, device="auto") == [(CUDA, {"device_id": 0}), CPU]
    assert providers(GPU_BUILD, device="cuda") == [(CUDA, {"device_id": 0}), CPU]
    assert providers(GPU_BUILD, device="cpu") == [CPU]
    assert providers(CPU_BUILD, device="auto") == [CPU]


def test_device_tensorrt_fails_the_load_on_this_cpu_build(models):
    settings = RuntimeSettings(model_path=models["mlp"], model_name="mlp", device="tensorrt")

    with pytest.raises(ModelLoadError, match=r"no TensorRT provider .*install kubeserve\[gpu\]"):
        OnnxModel.load(settings.model_path, settings)


def test_the_tensorrt_settings_are_flags():
    args = build_parser().parse_args(
        ["serve", "--device", "tensorrt", "--tensorrt-precision", "int8", "--tensorrt-engine-cache-path", "/models/trt"]
    )

    assert (args.device, args.tensorrt_precision, args.tensorrt_engine_cache_path) == (
        "tensorrt",
        "int8",
        "/models/trt",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--tensorrt-precision", "int4"])
