"""The bundled sample models, built with ``onnx.helper`` (no download): used by the demo, the benchmark,
the tests and the runtime image.

- ``tiny``: one Gemm, 4 features in, 3 out; the plumbing around inference dominates.
- ``mlp``: a classifier, 32 features -> 128 -> 128 -> 10 class probabilities.
- ``cnn``: four convolutions on 3x64x64 images (12 M multiply-adds), pooled into 10 logits; with binary
  tensors compute dominates, with JSON the decoding does.

All take a dynamic first (batch) dimension. Weights come from a fixed seed, so every build is the same.
``python -m kubeserve.runtime.samples DIR`` writes ``tiny.onnx``, ``mlp.onnx`` and ``cnn.onnx`` to DIR.
Needs the ``onnx`` package (the ``samples`` extra); the server itself does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

OPSET = 17


def initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(array.astype(np.float32), name)


def model_proto(nodes: list, inputs: list, outputs: list, initializers: list, name: str) -> onnx.ModelProto:
    from onnx import checker, helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kubeserve")
    model.ir_version = 8  # readable by every ONNX Runtime we support
    checker.check_model(model)
    return model


def dense(rng: np.random.Generator, name: str, fan_in: int, fan_out: int) -> tuple[np.ndarray, np.ndarray]:
    weight = rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=(fan_in, fan_out))
    bias = rng.normal(0.0, 0.01, size=(fan_out,))
    return weight, bias


def build_tiny() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weight, bias = dense(rng, "w", 4, 3)
    return model_proto(
        [helper.make_node("Gemm", ["input", "weight", "bias"], ["output"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        [initializer("weight", weight), initializer("bias", bias)],
        "tiny",
    )


def mlp(sizes: list[int], *, seed: int, input_name: str, output_name: str, batch: str, name: str) -> onnx.ModelProto:
    """A classifier: Gemm layers of ``sizes`` with Relu between them, then Softmax (the sample MLP, and the
    benchmark's wider one)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = input_name
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        weight, bias = dense(rng, f"l{layer}", fan_in, fan_out)
        initializers += [initializer(f"w{layer}", weight), initializer(f"b{layer}", bias)]
        nodes.append(helper.make_node("Gemm", [current, f"w{layer}", f"b{layer}"], [f"gemm{layer}"]))
        current = f"gemm{layer}"
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"relu{layer}"]))
            current = f"relu{layer}"
    nodes.append(helper.make_node("Softmax", [current], [output_name], axis=1))
    return model_proto(
        nodes,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, sizes[-1]])],
        initializers,
        name,
    )


def build_mlp() -> onnx.ModelProto:
    return mlp(
        [32, 128, 128, 10], seed=1, input_name="features", output_name="probabilities", batch="batch", name="mlp"
    )


def build_cnn() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    # (in, out, stride): about 12 million multiply-adds per image.
    layers = [(3, 16, 2), (16, 32, 1), (32, 64, 2), (64, 64, 2)]
    nodes, initializers = [], []
    current = "image"
    for index, (channels_in, channels_out, stride) in enumerate(layers):
        weight = rng.normal(0.0, (2.0 / (channels_in * 9)) ** 0.5, size=(channels_out, channels_in, 3, 3))
        initializers.append(initializer(f"conv{index}", weight))
        nodes.append(
            helper.make_node(
                "Conv", [current, f"conv{index}"], [f"c{index}"], strides=[stride, stride], pads=[1, 1, 1, 1]
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{index}"], [f"r{index}"]))
        current = f"r{index}"
    head, head_bias = dense(rng, "head", layers[-1][1], 10)
    initializers += [initializer("head", head), initializer("head_bias", head_bias)]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "head", "head_bias"], ["logits"]),
    ]
    return model_proto(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers,
        "cnn",
    )


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {"tiny": build_tiny, "mlp": build_mlp, "cnn": build_cnn}


def write_sample(name: str, path: Path) -> Path:
    """Write one sample model to ``path`` and return it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(BUILDERS[name](), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="write the bundled sample ONNX models")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--only", choices=sorted(BUILDERS), action="append", help="write only these")
    args = parser.parse_args()
    if importlib.util.find_spec("onnx") is None:
        parser.exit(2, "samples need the onnx package, which the server does not: pip install 'kubeserve[samples]'\n")
    for name in args.only or BUILDERS:
        print(write_sample(name, args.directory / f"{name}.onnx"))


if __name__ == "__main__":
    main()
