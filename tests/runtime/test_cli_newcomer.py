"""``kubeserve-runtime`` as a newcomer meets it: ``--model-path`` takes a model's directory (``model.onnx``, or
Triton's ``<version>/model.onnx``), ``--model-name`` defaults from the path, a failed load exits at once where
nothing collects the termination message, ``version: 1`` in YAML is told to be quoted, a V2 input without
``datatype`` is told so, and ``optimize`` with nothing asked for refuses."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubeserve.runtime.cli import main, setting_help, without_unread_wait
from kubeserve.runtime.config import ConfigError, RuntimeSettings, load_settings
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import checked_input
from kubeserve.runtime.signature import ModelSignature, TensorSpec


@pytest.fixture
def tiny(models: dict[str, Path]) -> Path:
    return models["tiny"]


def triton_layout(root: Path, tiny: Path, *versions: str) -> Path:
    for version in versions:
        (root / version).mkdir(parents=True)
        (root / version / "model.onnx").write_bytes(tiny.read_bytes())
    return root


def settings(**flags: str) -> RuntimeSettings:
    return load_settings(flags, {})


# --- --model-path DIR and the default name ---------------------------------------------------------------------


def test_a_file_gives_its_stem_as_the_name(tiny):
    loaded = settings(model_path=str(tiny))
    assert (loaded.model_path, loaded.model_name, loaded.model_version) == (tiny, "tiny", "1")
    assert settings(model_path=str(tiny), model_name="other").model_name == "other"


def test_a_directory_holding_model_onnx_serves_it_under_the_directorys_name(tiny, tmp_path):
    folder = tmp_path / "fraud"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(tiny.read_bytes())
    loaded = settings(model_path=str(folder))
    assert (loaded.model_path, loaded.model_name, loaded.model_version) == (folder / "model.onnx", "fraud", "1")


def test_tritons_layout_serves_the_highest_numeric_version_unless_one_is_set(tiny, tmp_path):
    repository = triton_layout(tmp_path / "resnet", tiny, "1", "3", "10")
    (repository / "config.pbtxt").write_text('name: "resnet"\n')  # Triton's own file: ignored
    (repository / "20").mkdir()  # a version folder without the file is not a version
    highest = settings(model_path=str(repository))
    assert (highest.model_path, highest.model_name, highest.model_version) == (
        repository / "10" / "model.onnx",
        "resnet",
        "10",
    )
    chosen = settings(model_path=str(repository), model_version="3")
    assert (chosen.model_path, chosen.model_version) == (repository / "3" / "model.onnx", "3")


def test_a_directory_without_a_model_lists_what_was_looked_for(tiny, tmp_path):
    with pytest.raises(ConfigError) as empty:
        settings(model_path=str(tmp_path))
    assert str(empty.value) == (
        f"--model-path: directory {tmp_path} holds no model: looked for {tmp_path}/model.onnx and "
        f"{tmp_path}/<version>/model.onnx (Triton's layout, numeric versions)"
    )
    repository = triton_layout(tmp_path / "m", tiny, "1")
    with pytest.raises(ConfigError) as missing_version:
        settings(model_path=str(repository), model_version="7")
    assert str(missing_version.value) == (
        f"--model-path: directory {repository} holds no model: looked for {repository}/7/model.onnx and "
        f"{repository}/model.onnx"
    )


def test_help_says_where_the_name_comes_from():
    text = setting_help("model_name", RuntimeSettings.model_fields["model_name"])
    assert "default: from model_path" in text and "required" not in text


def test_a_server_started_on_a_triton_directory_answers_under_its_name_and_version(start_runtime, tiny, tmp_path):
    repository = triton_layout(tmp_path / "tinyrepo", tiny, "2", "5")
    server = start_runtime(None, "--model-path", str(repository)).wait_ready()
    with urllib.request.urlopen(f"{server.url}/v2/models/tinyrepo", timeout=30) as response:
        metadata = json.load(response)
    assert (metadata["name"], metadata["versions"]) == ("tinyrepo", ["5"])


# --- a failed load ---------------------------------------------------------------------------------------------


def test_a_failed_load_waits_only_where_the_termination_message_is_collected(tmp_path):
    outside = settings(model_path="m.onnx", termination_message_path=str(tmp_path / "none"))
    assert without_unread_wait(outside).load_failure_exit_seconds == 0
    in_a_pod = tmp_path / "termination-log"  # the kubelet makes it before the container starts
    in_a_pod.touch()
    inside = settings(model_path="m.onnx", termination_message_path=str(in_a_pod))
    assert without_unread_wait(inside).load_failure_exit_seconds == 5.0
    asked = settings(
        model_path="m.onnx", termination_message_path=str(tmp_path / "none"), load_failure_exit_seconds="1"
    )
    assert without_unread_wait(asked).load_failure_exit_seconds == 1.0


def run_serve(start_runtime, *flags: str) -> tuple[int, list[dict]]:
    server = start_runtime(None, *flags)
    return server.wait(timeout=120), server.events


def test_outside_a_pod_a_failed_load_exits_3_without_waiting(start_runtime, tmp_path):
    missing, nowhere = str(tmp_path / "missing.onnx"), str(tmp_path / "none")
    code, events = run_serve(start_runtime, "--model-path", missing, "--termination-message-path", nowhere)
    assert code == 3
    names = [event.get("event") for event in events]
    assert "model_load_failed" in names and "exit_delayed" not in names


def test_in_a_pod_a_failed_load_says_why_it_waits(start_runtime, tmp_path):
    termination = tmp_path / "termination-log"
    termination.touch()
    missing = str(tmp_path / "missing.onnx")
    code, events = run_serve(start_runtime, "--model-path", missing, "--termination-message-path", str(termination),
                             "--load-failure-exit-seconds", "0.2")  # fmt: skip
    assert code == 3
    (delayed,) = [event for event in events if event.get("event") == "exit_delayed"]
    assert delayed["seconds"] == 0.2 and "/ready reports why" in delayed["message"]
    assert termination.read_text().startswith("model failed to load: model file")


# --- YAML numbers where a name goes ----------------------------------------------------------------------------


def test_an_unquoted_version_in_yaml_is_told_to_be_quoted(tiny, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model_path: {tiny}\nmodel_version: 1\n")
    with pytest.raises(ConfigError) as error:
        load_settings({}, {}, config)
    assert f'model_version in {config}: Input should be a valid string (got 1): quote it in YAML, "1"' in str(
        error.value
    )


# --- optimize with nothing asked for ---------------------------------------------------------------------------


def test_optimize_with_nothing_asked_for_refuses_and_writes_nothing(tiny, tmp_path, capsys):
    output = tmp_path / "out.onnx"
    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(tiny), str(output)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "nothing to do: give --quantization dynamicInt8, --precompile, --preprocessing FILE" in err
    assert not output.exists()


# --- a V2 input without datatype -------------------------------------------------------------------------------


def test_a_v2_input_without_datatype_is_told_it_is_missing(start_runtime):
    server = start_runtime("tiny").wait_ready()
    with urllib.request.urlopen(f"{server.url}/v2/models/tiny", timeout=30) as response:
        (model_input,) = json.load(response)["inputs"][:1]
    body = {"inputs": [{"name": model_input["name"], "shape": [1, 1], "data": [0]}]}
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{server.url}/v2/models/tiny/infer", json.dumps(body).encode(), headers)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert json.load(refused.value) == {
        "error": f"input '{model_input['name']}': datatype is missing (this input takes {model_input['datatype']})"
    }


@pytest.mark.parametrize("datatype", [None, ""])  # JSON without the field; gRPC's unset string
def test_every_wire_says_a_missing_datatype_is_missing(datatype):
    """The first checks every wire makes of an input (V2 JSON and binary, gRPC) are one function's."""
    signature = ModelSignature((TensorSpec("x", DATATYPES["FP32"], (-1, 4)),), ())
    with pytest.raises(BadRequest) as refused:
        checked_input("x", datatype, [1, 4], signature, set())
    assert str(refused.value) == "input 'x': datatype is missing (this input takes FP32)"
