"""Fitted transformers composed into the model (``kubeserve-runtime optimize --preprocessing/--postprocessing``): the
bundled tabular sample served by the real runtime answers as the scikit-learn pipeline does (no skew), and graphs
that do not connect, or clash, fail with one line saying what.

Tolerance: the served probabilities are within ``TOLERANCE`` (absolute) of ``Pipeline.predict_proba``: ONNX
computes in FP32 what scikit-learn computes in FP64 (measured: below 1e-7).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
from kubeserve.runtime.cli import main
from kubeserve.runtime.compose import ComposeError, compose
from kubeserve.runtime.optimize import EXIT_FAILED, EXIT_INVALID
from kubeserve.runtime.samples import (
    MERCHANT_CATEGORIES,
    TABULAR_CATEGORY,
    TABULAR_NUMERIC,
    tabular_pipeline,
    tabular_rows,
    write_tabular,
)
from onnx import TensorProto, helper, numpy_helper

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    """The tabular sample's two graphs, as the runtime image carries them, and its fitted pipeline."""
    preprocessing, model = write_tabular(tmp_path_factory.mktemp("tabular"))
    assert (preprocessing.name, model.name) == ("preprocessing.onnx", "model.onnx")
    return {"preprocessing": preprocessing, "model": model, "pipeline": tabular_pipeline()}


def run_optimize(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(["optimize", *map(str, argv)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def model_of(graph: onnx.GraphProto, opset: int = 17, ir_version: int = 8, ml_opset: int | None = None):
    """A model every ONNX Runtime we support reads (onnx's own default IR version may be newer)."""
    opsets = [helper.make_opsetid("", opset)]
    if ml_opset is not None:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ml_opset))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version
    return model


def save(graph: onnx.GraphProto, path):
    onnx.save(model_of(graph), str(path))
    return path


def identity(name: str, inputs: dict[str, list], outputs: dict[str, list], element=TensorProto.FLOAT):
    """A graph passing input i (modulo their number) to output i, through inner edges called ``inner<i>``."""
    nodes = []
    sources = list(inputs)
    for index, target in enumerate(outputs):
        nodes += [
            helper.make_node("Identity", [sources[index % len(sources)]], [f"inner{index}"]),
            helper.make_node("Identity", [f"inner{index}"], [target]),
        ]
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(key, element, shape) for key, shape in inputs.items()],
        [helper.make_tensor_value_info(key, element, shape) for key, shape in outputs.items()],
    )


# --- No skew: the served answers are the pipeline's ---------------------------------------------------------


def v2_inputs(metadata: dict, rows: np.ndarray) -> list[dict]:
    """One V2 JSON input per column, of the datatype and shape the served model's metadata gives it."""
    columns = {name: rows[:, index] for index, name in enumerate([*TABULAR_NUMERIC, TABULAR_CATEGORY])}
    inputs = []
    for spec in metadata["inputs"]:
        column = columns[spec["name"]]
        data = [str(value) for value in column] if spec["datatype"] == "BYTES" else [float(v) for v in column]
        inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [len(rows), 1], "data": data})
    return inputs


def test_the_served_composed_graph_answers_as_the_pipeline_does(tabular, tmp_path, capsys, start_runtime):
    served = tmp_path / "fraud.onnx"
    code, _, err = run_optimize(
        capsys, tabular["model"], served, "--preprocessing", tabular["preprocessing"], "--runs", "1"
    )
    assert code == 0, err
    server = start_runtime(None, "--model-path", str(served), "--model-name", "fraud").wait_ready()
    rows, _ = tabular_rows(32, seed=11)  # one batch: the default max_batch_size
    rows[0, 3] = "jewellery"  # a category never seen in training: one-hot encoded as all zeros, by both

    metadata = requests.get(f"{server.url}/v2/models/fraud", timeout=10).json()
    response = requests.post(
        f"{server.url}/v2/models/fraud/infer", json={"inputs": v2_inputs(metadata, rows)}, timeout=10
    )
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}

    # The raw columns are the served inputs (the category as BYTES), the classifier's tensors its outputs.
    assert [(spec["name"], spec["datatype"], spec["shape"]) for spec in metadata["inputs"]] == [
        *((name, "FP32", [-1, 1]) for name in TABULAR_NUMERIC),
        (TABULAR_CATEGORY, "BYTES", [-1, 1]),
    ]
    assert [(spec["name"], spec["datatype"]) for spec in metadata["outputs"]] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]
    assert response.status_code == 200, response.text
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    expected = tabular["pipeline"].predict_proba(rows)
    assert probabilities.shape == expected.shape == (32, 2)
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    assert outputs["label"]["data"] == tabular["pipeline"].predict(rows).astype(int).tolist()


def test_every_build_of_the_sample_and_every_pod_composing_it_write_the_same_bytes(tabular, tmp_path, capsys):
    # Each pod's init container composes on its own: the revision's pods agree only if the result is deterministic.
    again = write_tabular(tmp_path / "again")
    composed = []
    for pod in ("a", "b"):
        output = tmp_path / pod / "model.onnx"
        code, _, err = run_optimize(capsys, tabular["model"], output, "--preprocessing", again[0], "--no-compare")
        assert code == 0, err
        composed.append(output.read_bytes())

    assert [path.read_bytes() for path in again] == [
        tabular["preprocessing"].read_bytes(),
        tabular["model"].read_bytes(),
    ]
    assert composed[0] == composed[1]


def test_the_tabular_sample_is_two_graphs_that_connect_by_name(tabular):
    preprocessing, model = onnx.load(str(tabular["preprocessing"])), onnx.load(str(tabular["model"]))

    assert [value.name for value in preprocessing.graph.output] == [value.name for value in model.graph.input]
    assert (
        len(MERCHANT_CATEGORIES) + len(TABULAR_NUMERIC) == model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    )


# --- The composition rule ------------------------------------------------------------------------------------


def test_connected_names_leave_the_interface_and_inner_names_shared_by_two_graphs_are_prefixed():
    # Every graph has an inner edge "inner0"; the model takes "scaled" (from preprocessing) and "raw" (from the
    # request), and returns "score" (to postprocessing) and "debug" (to the response).
    preprocessing = identity("pre", {"x": ["batch", 2]}, {"scaled": ["batch", 2]})
    model = identity(
        "model", {"scaled": ["batch", 2], "raw": ["batch", 2]}, {"score": ["batch", 2], "debug": ["batch", 2]}
    )
    postprocessing = identity("post", {"score": ["batch", 2]}, {"answer": ["batch", 2]})

    composed = compose(*(model_of(graph) for graph in (model, preprocessing, postprocessing)))
    session = ort.InferenceSession(composed.SerializeToString(), providers=["CPUExecutionProvider"])
    x, raw = np.ones((1, 2), np.float32), np.full((1, 2), 2, np.float32)

    assert [value.name for value in session.get_inputs()] == ["x", "raw"]
    assert [value.name for value in session.get_outputs()] == ["debug", "answer"]
    assert session.run(None, {"x": x, "raw": raw}) == [pytest.approx(raw), pytest.approx(x)]


def test_weights_listed_as_inputs_stay_weights_when_inner_names_are_prefixed():
    # An older exporter's habit: the weight "scale" is an initializer and an input too. Both graphs have "inner0".
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, 2])
    preprocessing = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["inner0"]), helper.make_node("Identity", ["inner0"], ["y"])],
        "pre",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2]), scale],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(np.full((1, 2), 3, np.float32), "scale")],
    )
    model = identity("model", {"y": ["batch", 2]}, {"z": ["batch", 2]})

    composed = compose(model_of(model), model_of(preprocessing))
    session = ort.InferenceSession(composed.SerializeToString(), providers=["CPUExecutionProvider"])

    assert [value.name for value in session.get_inputs()] == ["x"]
    assert session.run(None, {"x": np.ones((1, 2), np.float32)}) == [pytest.approx(np.full((1, 2), 3))]


def test_graphs_of_different_opsets_are_composed_at_the_newer():
    preprocessing = model_of(identity("pre", {"x": ["batch", 2]}, {"y": ["batch", 2]}), opset=13, ir_version=7)
    model = model_of(identity("model", {"y": ["batch", 2]}, {"z": ["batch", 2]}), opset=17)

    composed = compose(model, preprocessing)

    assert [(opset.domain, opset.version) for opset in composed.opset_import] == [("", 17)]
    assert composed.ir_version == 8


def test_the_model_keeps_its_metadata_props():
    model = model_of(identity("model", {"y": ["batch", 2]}, {"z": ["batch", 2]}))
    preprocessing = model_of(identity("pre", {"x": ["batch", 2]}, {"y": ["batch", 2]}))
    helper.set_model_props(model, {"kubeserve.quantization": "none", "owner": "model"})
    helper.set_model_props(preprocessing, {"owner": "preprocessing"})

    composed = compose(model, preprocessing)

    assert {prop.key: prop.value for prop in composed.metadata_props} == {
        "kubeserve.quantization": "none",
        "owner": "model",
    }


@pytest.mark.parametrize(
    ("model", "preprocessing", "postprocessing", "message"),
    [
        (
            identity("model", {"features": ["batch", 2]}, {"p": ["batch", 2]}),
            identity("pre", {"x": ["batch", 2]}, {"scaled": ["batch", 2]}),
            None,
            "preprocessing output 'scaled' matches no model input (model inputs: features)",
        ),
        (
            identity("model", {"features": ["batch", 2]}, {"a": ["batch", 2], "b": ["batch", 2]}),
            None,
            identity("post", {"x": ["batch", 2]}, {"y": ["batch", 2]}),
            "postprocessing input 'x' matches no model output (model outputs: a, b)",
        ),
        (
            identity("model", {"features": ["batch", 8]}, {"p": ["batch", 2]}),
            identity("pre", {"x": ["batch", 2]}, {"features": ["batch", 5]}),
            None,
            "preprocessing output 'features' is FP32 [-1, 5] but model input 'features' is FP32 [-1, 8]",
        ),
        (
            identity("model", {"features": ["batch", 2], "x": ["batch", 2]}, {"p": ["batch", 2], "q": ["batch", 2]}),
            identity("pre", {"x": ["batch", 2]}, {"features": ["batch", 2]}),
            None,
            "preprocessing input 'x' and model input 'x' clash: the composed graph cannot have both under one name",
        ),
        (
            identity("model", {"features": ["batch", 2]}, {"label": ["batch", 2], "p": ["batch", 2]}),
            None,
            identity("post", {"p": ["batch", 2]}, {"label": ["batch", 2]}),
            "model output 'label' and postprocessing output 'label' clash: the composed graph cannot have both",
        ),
    ],
    ids=["nothing connects", "postprocessing reads no model output", "wrong width", "inputs clash", "outputs clash"],
)
def test_graphs_that_do_not_compose_fail_the_optimize_command_in_one_line(
    tmp_path, capsys, model, preprocessing, postprocessing, message
):
    paths = {"model": save(model, tmp_path / "model.onnx")}
    flags = []
    for role, graph in (("preprocessing", preprocessing), ("postprocessing", postprocessing)):
        if graph is not None:
            flags += [f"--{role}", save(graph, tmp_path / f"{role}.onnx")]
    output = tmp_path / "out" / "model.onnx"
    termination = tmp_path / "termination-log"
    termination.write_text("")

    code, out, err = run_optimize(capsys, paths["model"], output, *flags, "--termination-message-path", termination)

    assert code == EXIT_FAILED
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"kubeserve-runtime optimize: cannot optimize {paths['model']}: ")
    assert message in err
    assert termination.read_text() == err.removeprefix("kubeserve-runtime optimize: ")
    assert not output.exists()
    assert list(output.parent.iterdir()) == [], "no work directory is left"


def test_a_graph_that_is_not_onnx_is_named(tabular, tmp_path, capsys):
    broken = tmp_path / "preprocessing.onnx"
    broken.write_bytes(b"not a graph")

    code, _, err = run_optimize(capsys, tabular["model"], tmp_path / "out.onnx", "--preprocessing", broken)
    missing, _, missing_err = run_optimize(
        capsys, tabular["model"], tmp_path / "out.onnx", "--postprocessing", tmp_path / "gone.onnx"
    )

    assert code == EXIT_FAILED
    assert f"the preprocessing graph {broken} is not an ONNX model" in err
    assert missing == EXIT_FAILED
    assert f"the postprocessing graph {tmp_path / 'gone.onnx'} does not exist" in missing_err


def test_output_may_not_be_a_graph_it_composes(tabular, capsys):
    code, _, err = run_optimize(
        capsys, tabular["model"], tabular["preprocessing"], "--preprocessing", tabular["preprocessing"]
    )

    assert code == EXIT_INVALID
    assert "is PREPROCESSING: the original is never modified" in err


def test_composition_then_precompilation_reports_against_the_composed_graph(tabular, tmp_path, capsys):
    output = tmp_path / "fraud.onnx"

    code, out, err = run_optimize(
        capsys, tabular["model"], output, "--preprocessing", tabular["preprocessing"], "--precompile", "--runs", "2"
    )
    facts = dict(line.split(": ", 1) for line in out.splitlines())

    assert code == 0, err
    assert facts["model"] == f"{tabular['preprocessing']} + {tabular['model']}"
    assert facts["precompiled"] == "true"
    assert float(facts["max abs difference probabilities"]) <= 1e-6
    assert [value.name for value in onnx.load(str(output)).graph.input] == [*TABULAR_NUMERIC, TABULAR_CATEGORY]


def test_a_domain_whose_newer_version_does_not_fit_the_older_graph_is_a_clear_error():
    # LabelEncoder's attributes changed in ai.onnx.ml 2: a graph exported for 1 cannot be imported at 2.
    preprocessing = model_of(
        helper.make_graph(
            [
                helper.make_node(
                    "LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml", classes_strings=["a", "b"], default_int64=-1
                )
            ],
            "pre",
            [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch"])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])],
        ),
        ml_opset=1,
    )
    model = model_of(identity("model", {"y": ["batch"]}, {"z": ["batch"]}, TensorProto.INT64), ml_opset=2)

    with pytest.raises(ComposeError) as raised:
        compose(model, preprocessing)

    assert str(raised.value).startswith("cannot compose the preprocessing and model graphs: Unrecognized attribute")
    assert str(raised.value).endswith(
        "(the preprocessing graph's ai.onnx.ml 1 imported as 2: export both with the same opsets)"
    )
