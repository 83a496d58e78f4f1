"""``kubeserve-runtime serve``: help that explains each flag, and errors that name where a bad value came from."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubeserve.runtime.cli import build_parser, main
from kubeserve.runtime.config import ConfigError, RuntimeSettings, env_name, flag_name, load_settings
from kubeserve.runtime.model_location import DERIVED_SETTINGS


def help_text(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: a flag's help is on one line
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def flag_line(text: str, name: str) -> str:
    """A flag's entry in the options list: its line, and the next, where argparse puts a long flag's help."""
    lines = text.split("options:", 1)[1].splitlines()
    (index,) = [
        i for i, line in enumerate(lines) if line.strip().startswith((flag_name(name) + " ", flag_name(name) + ","))
    ]
    return " ".join(lines[index : index + 2])


def test_serve_help_names_every_flag_with_its_default_and_variable(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "serve")
    for name, field in RuntimeSettings.model_fields.items():
        line = flag_line(text, name)
        assert f"env: {env_name(name)}" in line, line
        assert ("required" if field.is_required() and name not in DERIVED_SETTINGS else "default: ") in line, line
    assert "(required; env: KUBESERVE_MODEL_PATH)" in flag_line(text, "model_path")
    assert "default: 32;" in flag_line(text, "max_batch_size")
    assert "default: none;" in flag_line(text, "preferred_batch_size")
    assert "default: false;" in flag_line(text, "allow_spinning")
    assert "default: /dev/termination-log;" in flag_line(text, "termination_message_path")
    assert "--config CONFIG" in text and "env: KUBESERVE_CONFIG" in text


def test_serve_help_lists_the_allowed_values(capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, "serve")
    assert "one of: auto, cpu, cuda, tensorrt; default: auto;" in flag_line(text, "device")
    assert "one of: disable, basic, extended, all; default: all;" in flag_line(text, "graph_optimization_level")
    assert "one of: debug, info, warning, error; default: info;" in flag_line(text, "log_level")


@pytest.mark.parametrize("command", [(), ("serve",), ("fetch",)])
def test_help_has_no_restructuredtext_markup(capsys, monkeypatch, command):
    text = help_text(capsys, monkeypatch, *command)
    assert "``" not in text
    assert ":class:" not in text and ":func:" not in text


def test_a_value_outside_the_allowed_ones_names_the_flag(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model-path", "m.onnx", "--model-name", "m", "--device", "tpu"])
    assert exited.value.code == 2
    assert "argument --device: invalid choice: 'tpu'" in capsys.readouterr().err


def test_a_bad_flag_value_is_reported_by_its_flag():
    with pytest.raises(ConfigError, match=r"--max-queue-size: Input should be greater than or equal to 1"):
        load_settings({"model_path": "m.onnx", "model_name": "m", "max_queue_size": "0"}, {})


def test_a_bad_environment_value_is_reported_by_its_variable():
    env = {"KUBESERVE_PORT": "99999", "KUBESERVE_MODEL_PATH": "m.onnx", "KUBESERVE_MODEL_NAME": "m"}
    with pytest.raises(
        ConfigError, match=r"KUBESERVE_PORT: Input should be less than or equal to 65535 \(got '99999'\)"
    ):
        load_settings({}, env)


def test_a_bad_file_value_is_reported_by_its_key_and_file(tmp_path: Path):
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: m\ninstance_count: 0\n")
    with pytest.raises(ConfigError, match=rf"instance_count in {config}: Input should be greater than or equal to 1"):
        load_settings({}, {}, config)


def test_a_bad_list_item_names_the_item():
    flags = {"model_path": "m.onnx", "model_name": "m", "preferred_batch_size": "4,x"}
    with pytest.raises(ConfigError, match=r"--preferred-batch-size, item 1: Input should be a valid integer"):
        load_settings(flags, {})


def test_a_missing_setting_names_its_flag_and_variable():
    with pytest.raises(ConfigError) as raised:
        load_settings({"model_name": "m"}, {})
    assert "model_path (--model-path or KUBESERVE_MODEL_PATH): Field required" in str(raised.value)


def test_the_command_line_reports_settings_errors_by_source(capsys, monkeypatch):
    monkeypatch.setenv("KUBESERVE_MAX_BATCH_SIZE", "-1")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model-path", "m.onnx", "--model-name", "m", "--port", "http"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--port: Input should be a valid integer" in err
    assert "KUBESERVE_MAX_BATCH_SIZE: Input should be greater than or equal to 0" in err
