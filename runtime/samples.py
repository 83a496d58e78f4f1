"""The bundled sample models, built with ``onnx.helper`` (no download): used by the demo, the benchmark,
the tests and the runtime image.

- ``tiny``: one Gemm, 4 features in, 3 out; the plumbing around inference dominates.
- ``mlp``: a classifier, 32 features -> 128 -> 128 -> 10 class probabilities.
- ``cnn``: four convolutions on 3x64x64 images (12 M multiply-adds), pooled into 10 logits; with binary
  tensors compute dominates, with JSON the decoding does. Its ten class names (CIFAR-10's; the weights are random,
  so which one wins says nothing about the image) are ``cnn-labels.txt``, for the classification extension.
- ``tabular``: a fraud-style classifier of raw transaction columns, a scikit-learn pipeline trained at build time
  on synthetic data and exported with skl2onnx as two graphs: ``preprocessing.onnx`` (a ColumnTransformer: the
  numeric columns standardized, the merchant category one-hot encoded) and ``model.onnx`` (a LogisticRegression),
  for ``kubeserve-runtime optimize --preprocessing`` (or ``spec.model.preprocessing``) to compose into one.

All take a dynamic first (batch) dimension. Weights and data come from fixed seeds, so every build is the same.
``python -m kubeserve.runtime.samples DIR`` writes ``tiny.onnx``, ``mlp.onnx``, ``cnn.onnx``, ``cnn-labels.txt``
and ``tabular/{preprocessing,model}.onnx`` to DIR. Needs the ``samples`` extra (onnx; scikit-learn and skl2onnx for
``tabular``); the server itself does not.
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
    from sklearn.pipeline import Pipeline

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
# The cnn's classes, one per line in class order (Triton's label file): line i names logit i.
CNN_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CNN_LABELS_FILE = "cnn-labels.txt"


def write_labels(path: Path) -> Path:
    """Write the cnn's label file to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\n" for label in CNN_LABELS))
    return path


def write_sample(name: str, path: Path) -> Path:
    """Write one sample model to ``path`` and return it."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(BUILDERS[name](), str(path))
    return path


# --- The tabular sample: fitted transformers exported beside the model ---------------------------------------

TABULAR = "tabular"
# The raw columns, each one input of the preprocessing graph (and of the composed one), [batch, 1].
TABULAR_NUMERIC = ("amount", "hour", "distance_km")
TABULAR_CATEGORY = "merchant_category"
MERCHANT_CATEGORIES = ("grocery", "restaurant", "online", "electronics", "travel")
# What connects the two graphs: the preprocessing graph's output, the model's input.
TABULAR_FEATURES = "features"


def tabular_rows(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic transactions, one row each (amount, hour, distance_km, merchant_category; an object array, as a
    DataFrame's values would be), and whether each is fraud: more likely for large amounts, at night, far from home,
    and for electronics and travel."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, count)
    hour = rng.integers(0, 24, count).astype(np.float64)
    distance = rng.exponential(15.0, count)
    category = rng.choice(MERCHANT_CATEGORIES, count)
    risk = (
        0.004 * amount
        + 0.08 * np.abs(hour - 13)
        + 0.04 * distance
        + np.select([category == "electronics", category == "travel"], [1.2, 0.8], 0.0)
        - 3.5
    )
    fraud = rng.random(count) < 1 / (1 + np.exp(-risk))
    rows = np.empty((count, 4), dtype=object)
    rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] = amount, hour, distance, category
    return rows, fraud


def tabular_pipeline() -> Pipeline:
    """The fitted pipeline: a ColumnTransformer (StandardScaler on the numeric columns, OneHotEncoder on the
    category; unknown categories encode as all zeros) and a LogisticRegression, trained on ``tabular_rows``."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    preprocessing = ColumnTransformer(
        [
            ("numeric", StandardScaler(), [0, 1, 2]),
            ("category", OneHotEncoder(categories=[list(MERCHANT_CATEGORIES)], handle_unknown="ignore"), [3]),
        ],
        sparse_threshold=0,
    )
    pipeline = Pipeline([("preprocessing", preprocessing), ("classifier", LogisticRegression())])
    return pipeline.fit(*tabular_rows(4000, seed=3))


def export_tabular(pipeline: Pipeline) -> dict[str, onnx.ModelProto]:
    """The pipeline as two graphs, by file name: the ColumnTransformer (raw columns in, ``features`` out) and the
    classifier (``features`` in; ``label`` INT64 and ``probabilities`` FP32 [batch, 2] out: no ZipMap, tensors)."""
    from onnx import helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    opsets = {"": OPSET, "ai.onnx.ml": 3}
    width = len(TABULAR_NUMERIC) + len(MERCHANT_CATEGORIES)
    columns = [(name, FloatTensorType([None, 1])) for name in TABULAR_NUMERIC]
    features = [(TABULAR_FEATURES, FloatTensorType([None, width]))]
    preprocessing = convert_sklearn(
        pipeline.named_steps["preprocessing"],
        initial_types=[*columns, (TABULAR_CATEGORY, StringTensorType([None, 1]))],
        final_types=features,
        target_opset=opsets,
    )
    model = convert_sklearn(
        pipeline.named_steps["classifier"], initial_types=features, options={"zipmap": False}, target_opset=opsets
    )
    # skl2onnx names each graph with a random UUID and lists its opsets in a set's order (some twice): fixed names
    # and one sorted entry per domain keep every build the same, byte for byte.
    for graph, name in ((preprocessing, "tabular_preprocessing"), (model, "tabular")):
        graph.graph.name = name
        versions = {opset.domain: opset.version for opset in graph.opset_import}
        del graph.opset_import[:]
        graph.opset_import.extend(helper.make_opsetid(domain, versions[domain]) for domain in sorted(versions))
    return {"preprocessing.onnx": preprocessing, "model.onnx": model}


def write_tabular(directory: Path) -> list[Path]:
    """Train the tabular sample and write its two graphs into ``directory``; their paths."""
    import onnx

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, graph in export_tabular(tabular_pipeline()).items():
        onnx.save(graph, str(directory / name))
        paths.append(directory / name)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="write the bundled sample ONNX models")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--only", choices=sorted([*BUILDERS, TABULAR]), action="append", help="write only these")
    args = parser.parse_args()
    if importlib.util.find_spec("onnx") is None:
        parser.exit(2, "samples need the onnx package, which the server does not: pip install 'kubeserve[samples]'\n")
    for name in args.only or [*BUILDERS, TABULAR]:
        paths = (
            write_tabular(args.directory / TABULAR)
            if name == TABULAR
            else [write_sample(name, args.directory / f"{name}.onnx")]
        )
        if name == "cnn":
            paths.append(write_labels(args.directory / CNN_LABELS_FILE))
        for path in paths:
            print(path)


if __name__ == "__main__":
    main()
