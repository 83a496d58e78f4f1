"""The models of `make bench`'s comparison, built with ``onnx.helper``: FP32, dynamic batch dimension, fixed seeds.

They differ from the bundled samples (runtime/samples.py), which stay as they are for the demo and the tests:
these are sized so that each stresses a different part of a server against a plain one.

- ``tiny``: ``x[N,16]`` -> Gemm -> ``y[N,4]``; the request path dominates.
- ``mlp``: ``x[N,256]`` -> Gemm 1024 -> Relu -> Gemm 1024 -> Relu -> Gemm 10 -> Softmax (5 KB of JSON per row).
- ``cnn``: ``x[N,3,64,64]`` -> 3 x (Conv 3x3 pad 1 -> Relu -> MaxPool 2x2), channels 16/32/64 -> global average
  pool -> Gemm 10 -> Softmax (245 KB of JSON or 48 KB binary per image).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from kubeserve.runtime.samples import dense, initializer, mlp, model_proto
from onnx import TensorProto, helper

# Each model's single input: name and the shape of one sample (the batch dimension is added in front).
INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {"tiny": ("x", (16,)), "mlp": ("x", (256,)), "cnn": ("x", (3, 64, 64))}


def _io(name: str, shape: tuple[int, ...]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])


def build_tiny() -> onnx.ModelProto:
    weight, bias = dense(np.random.default_rng(10), "w", 16, 4)
    return model_proto(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        [_io("x", (16,))],
        [_io("y", (4,))],
        [initializer("w", weight), initializer("b", bias)],
        "tiny",
    )


def build_mlp() -> onnx.ModelProto:
    return mlp([256, 1024, 1024, 10], seed=11, input_name="x", output_name="y", batch="N", name="mlp")


def build_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(12)
    nodes, initializers = [], []
    current = "x"
    for index, (channels_in, channels_out) in enumerate(itertools.pairwise([3, 16, 32, 64])):
        weight = rng.normal(0.0, (2.0 / (channels_in * 9)) ** 0.5, size=(channels_out, channels_in, 3, 3))
        initializers += [initializer(f"conv{index}", weight), initializer(f"conv{index}_b", np.zeros(channels_out))]
        nodes += [
            helper.make_node("Conv", [current, f"conv{index}", f"conv{index}_b"], [f"c{index}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{index}"], [f"r{index}"]),
            helper.make_node("MaxPool", [f"r{index}"], [f"p{index}"], kernel_shape=[2, 2], strides=[2, 2]),
        ]
        current = f"p{index}"
    head, head_bias = dense(rng, "head", 64, 10)
    initializers += [initializer("head", head), initializer("head_b", head_bias)]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "head", "head_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    return model_proto(nodes, [_io("x", (3, 64, 64))], [_io("y", (10,))], initializers, "cnn")


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {"tiny": build_tiny, "mlp": build_mlp, "cnn": build_cnn}


def write_model(name: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(BUILDERS[name](), str(path))
    return path
