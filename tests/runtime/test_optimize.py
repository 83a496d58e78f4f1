"""``kubeserve-runtime optimize``: dynamic INT8 quantization and precompiled graphs of the bundled models, what the
server makes of them (its session, its metadata), and the command's report and failures.

Tolerance: a dynamicInt8 model answers within ``TOLERANCE`` (absolute) of its FP32 original, on the bundled MLP's
class probabilities and the bundled CNN's logits (measured: about 0.003 and 0.016). A precompiled model answers as
its source does, to float rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as triton
from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse
from kubeserve.runtime.cli import build_parser, main
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.model import OnnxModel
from kubeserve.runtime.model_metadata import ModelOptimization, read_metadata_props
from kubeserve.runtime.optimize import EXIT_FAILED, EXIT_INVALID, OptimizeError, OptimizeOptions, optimize
from kubeserve.runtime.samples import write_sample
from onnx import TensorProto, helper, numpy_helper

TOLERANCE = 0.05
INT8 = OptimizeOptions(quantization="dynamicInt8")
PRECOMPILED = OptimizeOptions(precompile=True)
BOTH = OptimizeOptions(quantization="dynamicInt8", precompile=True)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled MLP (Gemm layers) and CNN (Conv layers, a Gemm head), FP32."""
    directory = tmp_path_factory.mktemp("bundled")
    return {name: write_sample(name, directory / f"{name}.onnx") for name in ("mlp", "cnn")}


def load(path, **settings):
    return OnnxModel.load(path, RuntimeSettings(model_path=path, model_name="m", **settings))


def random_rows(model, rows=4):
    (spec,) = model.signature.inputs
    return {spec.name: np.random.default_rng(3).random((rows, *spec.shape[1:]), dtype=np.float32)}


def answers(path, feeds):
    return load(path).run(feeds, None)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_quantized_model_is_smaller_loads_and_answers_within_tolerance(bundled, tmp_path, name):
    source = bundled[name]
    before = source.read_bytes()
    output = tmp_path / "int8.onnx"

    done = optimize(source, output, INT8)
    quantized = load(output)
    feeds = random_rows(quantized)
    expected, got = answers(source, feeds), quantized.run(feeds, None)

    assert output.stat().st_size < 0.35 * source.stat().st_size
    assert source.read_bytes() == before, "MODEL is never modified"
    assert done == ModelOptimization("dynamicInt8", "INT8", False, hashlib.sha256(before).hexdigest())
    assert quantized.optimization == done
    for output_name, array in expected.items():
        assert np.abs(got[output_name] - array).max() <= TOLERANCE
        assert not np.array_equal(got[output_name], array), "the weights really are INT8"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_pod_quantizing_the_same_model_serves_the_same_file(bundled, tmp_path, name):
    # Each pod's init container quantizes on its own: the revision's pods agree only if the result is deterministic.
    first, second = tmp_path / "pod-a.onnx", tmp_path / "pod-b.onnx"
    optimize(bundled[name], first, INT8)
    optimize(bundled[name], second, INT8)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_precompiled_model_loads_with_optimization_off_and_answers_the_same(bundled, tmp_path, name, caplog):
    output = tmp_path / "precompiled.onnx"
    optimize(bundled[name], output, PRECOMPILED)

    with caplog.at_level(logging.INFO, logger="kubeserve.runtime.model"):
        precompiled = load(output)
    (session,) = [r for r in caplog.records if getattr(r, "event", None) == "model_session"]
    feeds = random_rows(precompiled)

    assert session.graph_optimization_level == "disable"
    assert session.precompiled is True
    assert session.precision == "FP32"
    for output_name, array in answers(bundled[name], feeds).items():
        np.testing.assert_allclose(precompiled.run(feeds, None)[output_name], array, rtol=1e-5, atol=1e-6)


def test_a_model_without_our_metadata_is_served_as_fp32_and_optimized_by_the_server(bundled, caplog):
    with caplog.at_level(logging.INFO, logger="kubeserve.runtime.model"):
        model = load(bundled["mlp"], graph_optimization_level="extended")
    (session,) = [r for r in caplog.records if getattr(r, "event", None) == "model_session"]

    assert model.optimization == ModelOptimization()
    assert model.optimization.as_parameters() == {"precision": "FP32", "quantization": "none", "precompiled": False}
    assert session.graph_optimization_level == "extended"


def test_quantized_then_precompiled_carries_both_in_its_metadata(bundled, tmp_path):
    source, output = bundled["cnn"], tmp_path / "both.onnx"
    optimize(source, output, BOTH)
    model = load(output)
    feeds = random_rows(model)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])

    # The server reads the props from the file before it creates its session: the same as ORT's own reading.
    assert read_metadata_props(output) == session.get_modelmeta().custom_metadata_map
    assert read_metadata_props(output)["kubeserve.source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert model.optimization.as_parameters() == {
        "precision": "INT8",
        "quantization": "dynamicInt8",
        "precompiled": True,
    }
    for output_name, array in answers(source, feeds).items():
        assert np.abs(model.run(feeds, None)[output_name] - array).max() <= TOLERANCE


def test_the_metadata_reader_finds_nothing_in_files_that_are_not_optimized_models(bundled, models, tmp_path):
    assert read_metadata_props(bundled["mlp"]) == {}
    assert read_metadata_props(models["broken"]) == {}
    assert read_metadata_props(tmp_path / "missing.onnx") == {}
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(bundled["mlp"].read_bytes()[:1000])
    assert read_metadata_props(truncated) == {}


def test_the_served_quantized_model_reports_int8_in_its_metadata_and_log(bundled, tmp_path, start_runtime):
    output = tmp_path / "mlp-int8.onnx"
    optimize(bundled["mlp"], output, BOTH)
    server = start_runtime(None, "--model-path", str(output), "--model-name", "mlp").wait_ready()

    body = requests.get(f"{server.url}/v2/models/mlp").json()
    client = triton.InferenceServerClient(server.address)
    try:
        from_triton = client.get_model_metadata("mlp")
    finally:
        client.close()
    session = server.wait_for_event("model_session")

    assert body["parameters"] == {"precision": "INT8", "quantization": "dynamicInt8", "precompiled": True}
    assert from_triton["parameters"]["precision"] == "INT8"
    assert from_triton["inputs"][0]["name"] == "features"
    assert ModelMetadataResponse.model_validate(body).inputs[0].name == "features"
    assert (session["precision"], session["precompiled"], session["graph_optimization_level"]) == (
        "INT8",
        True,
        "disable",
    )


def test_an_unoptimized_served_model_reports_fp32(mlp_server):
    body = requests.get(f"{mlp_server.url}/v2/models/mlp/versions/1").json()

    assert body["parameters"] == {"precision": "FP32", "quantization": "none", "precompiled": False}


# --- The command ---------------------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exited:
        main(["optimize", *map(str, argv)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_the_report_has_one_fact_per_line(bundled, tmp_path, capsys):
    code, out, err = run_cli(
        capsys, bundled["mlp"], tmp_path / "out.onnx", "--quantization", "dynamicInt8", "--precompile", "--runs", "3"
    )
    facts = dict(line.split(": ", 1) for line in out.splitlines())

    assert code == 0, err
    assert err == ""
    assert facts["quantization"] == "dynamicInt8"
    assert facts["precision"] == "INT8"
    assert facts["precompiled"] == "true"
    assert facts["inputs"] == "random, dynamic dimensions 1"
    assert facts["original size"] == f"{bundled['mlp'].stat().st_size:,} bytes"
    assert facts["optimized size"].startswith(f"{(tmp_path / 'out.onnx').stat().st_size:,} bytes (0.")
    assert facts["original load"].endswith("ms (graph optimization all)")
    assert facts["optimized load"].endswith("ms (graph optimization disable)")
    assert facts["original latency p50"].endswith("ms (3 runs)")
    assert facts["optimized latency p50"].endswith("ms (3 runs)")
    assert float(facts["max abs difference probabilities"]) <= TOLERANCE
    assert facts["source sha256"] == hashlib.sha256(bundled["mlp"].read_bytes()).hexdigest()


def test_the_json_report_on_sample_inputs(bundled, tmp_path, capsys):
    sample = tmp_path / "request.json"
    features = np.random.default_rng(1).random((2, 32)).round(3).tolist()
    sample.write_text(
        json.dumps({"inputs": [{"name": "features", "shape": [2, 32], "datatype": "FP32", "data": features}]})
    )

    code, out, err = run_cli(
        capsys,
        bundled["mlp"],
        tmp_path / "out.onnx",
        "--precompile",
        "--sample-inputs",
        sample,
        "--runs",
        "2",
        "--json",
    )
    report = json.loads(out)

    assert code == 0, err
    assert report["inputs"] == str(sample)
    assert (report["precision"], report["quantization"], report["precompiled"]) == ("FP32", "none", True)
    assert report["original"]["bytes"] == bundled["mlp"].stat().st_size
    assert report["original"]["graph_optimization_level"] == "all"
    assert report["optimized"]["graph_optimization_level"] == "disable"
    assert report["original"]["load_ms"] > 0 and report["optimized"]["p50_ms"] > 0
    assert report["max_abs_diff"]["probabilities"] <= 1e-6


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing", "missing.onnx does not exist"),
        ("broken", "onnxruntime cannot load"),
        ("pair", "dynamicInt8 quantized nothing: the model has no MatMul, Gemm or Conv with constant weights"),
    ],
)
def test_a_model_that_cannot_be_optimized_exits_1_with_one_line(models, tmp_path, capsys, model, message):
    source = models.get(model, tmp_path / "missing.onnx")
    output = tmp_path / "out" / "model.onnx"
    termination = tmp_path / "termination-log"
    termination.write_text("")

    code, out, err = run_cli(
        capsys, source, output, "--quantization", "dynamicInt8", "--termination-message-path", termination
    )

    assert code == EXIT_FAILED
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"kubeserve-runtime optimize: cannot optimize {source}: ")
    assert message in err
    assert termination.read_text() == err.removeprefix("kubeserve-runtime optimize: ")
    assert not output.exists()
    assert not output.parent.exists() or list(output.parent.iterdir()) == [], "no temporary file is left"


def test_invalid_options_exit_2_and_touch_nothing(bundled, tmp_path, capsys):
    sample = tmp_path / "request.json"
    sample.write_text('{"inputs": [{"name": "nope"}]}')
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the model served now")

    same, _, same_err = run_cli(capsys, bundled["mlp"], bundled["mlp"], "--precompile")
    unfit, _, unfit_err = run_cli(capsys, bundled["mlp"], output, "--precompile", "--sample-inputs", sample)

    assert same == EXIT_INVALID
    assert "is MODEL: the original is never modified" in same_err
    assert unfit == EXIT_INVALID
    assert "--sample-inputs" in unfit_err and "unknown input 'nope'" in unfit_err
    assert output.read_bytes() == b"the model served now"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx", "request.json"]


def test_a_failure_after_quantization_leaves_output_as_it_was(models, tmp_path):
    output = tmp_path / "model.onnx"
    output.write_bytes(b"the model served now")

    with pytest.raises(OptimizeError):
        optimize(models["pair"], output, INT8)

    assert output.read_bytes() == b"the model served now"
    assert [path.name for path in tmp_path.iterdir()] == ["model.onnx"]


def test_the_init_container_arguments_parse():
    """What the operator renders (its contract test parses the rendered Deployment the same way)."""
    args = build_parser().parse_args(
        ["optimize", "/models/source.onnx", "/models/model.onnx", "--quantization", "dynamicInt8", "--no-precompile",
         "--termination-message-path", "/dev/termination-log"]
    )  # fmt: skip

    assert (args.command, args.quantization, args.precompile, args.compare) == ("optimize", "dynamicInt8", False, True)
    assert str(args.model) == "/models/source.onnx" and str(args.output) == "/models/model.onnx"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["optimize", "a.onnx", "b.onnx", "--quantization", "int4"])


@pytest.mark.parametrize(
    ("saved", "configured", "loaded"),
    [("all", "all", "disable"), ("all", "basic", "disable"), ("basic", "all", "all"), ("extended", "basic", "disable")],
)
def test_a_precompiled_graph_is_optimized_at_load_only_beyond_what_it_holds(saved, configured, loaded):
    precompiled = ModelOptimization("none", "FP32", True, None, saved)

    assert precompiled.load_level(configured) == loaded
    assert ModelOptimization().load_level(configured) == configured


def test_a_graph_precompiled_at_level_basic_gets_the_servers_level_at_load(bundled, tmp_path, caplog):
    output = tmp_path / "basic.onnx"
    optimize(bundled["mlp"], output, OptimizeOptions(precompile=True, precompile_level="basic"))

    with caplog.at_level(logging.INFO, logger="kubeserve.runtime.model"):
        model = load(output)
    (session,) = [r for r in caplog.records if getattr(r, "event", None) == "model_session"]

    assert read_metadata_props(output)["kubeserve.precompile_level"] == "basic"
    assert model.optimization.precompiled is True
    assert session.graph_optimization_level == "all"


def test_a_killed_attempts_work_directory_is_removed_and_the_models_own_props_kept(bundled, tmp_path):
    stale = tmp_path / ".model.onnx.x1y2.optimize"
    stale.mkdir()
    (stale / "source.onnx").write_bytes(b"half a model")
    precompiled = tmp_path / "model.onnx"

    optimize(bundled["mlp"], tmp_path / "int8.onnx", INT8)
    optimize(tmp_path / "int8.onnx", precompiled, PRECOMPILED)
    props = read_metadata_props(precompiled)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["int8.onnx", "model.onnx"]
    # Precompiling an INT8 model keeps it INT8; the source is the file it was given.
    assert props["kubeserve.precompiled"] == "true"
    assert (props["kubeserve.quantization"], props["kubeserve.precision"]) == ("dynamicInt8", "INT8")
    assert props["kubeserve.source_sha256"] == hashlib.sha256((tmp_path / "int8.onnx").read_bytes()).hexdigest()


def test_the_comparison_feeds_every_datatype_random_inputs(models, element_types, tmp_path, capsys):
    code, out, err = run_cli(capsys, models["types"], tmp_path / "types.onnx", "--precompile", "--runs", "1", "--json")
    differences = json.loads(out)["max_abs_diff"]

    assert code == 0, err
    assert differences == {f"out_{name}": 0.0 for name in element_types}


def _conv_with_free_height_and_width(path):
    """[N, 3, H, W] -> Conv 3x3, no padding: random inputs with H = W = 1 cannot run it; real images can."""
    weights = numpy_helper.from_array(np.random.default_rng(0).random((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["features"])],
        "free_hw",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4, None, None])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_random_inputs_cannot_run_is_optimized_all_the_same(tmp_path, capsys):
    # As the init container runs it (no sample inputs): a failed comparison must not keep every pod from starting.
    source = _conv_with_free_height_and_width(tmp_path / "free.onnx")
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()

    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(source), str(output), "--quantization", "dynamicInt8", "--runs", "1"])

    assert exited.value.code == 0
    assert "no comparison" in capsys.readouterr().err
    assert load(output).optimization.precision == "INT8"
    image = {"image": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)}
    assert load(output).run(image, None)["features"].shape == (1, 4, 6, 6)
