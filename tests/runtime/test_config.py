"""The runtime's settings (flag > environment > file > default) and the ONNX Runtime options they become."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest
from kubeserve.runtime.config import ConfigError, RuntimeSettings, load_settings
from kubeserve.runtime.model import CPU, CUDA, ModelLoadError, OnnxModel, execution_providers, session_options

REQUIRED = {"model_path": "m.onnx", "model_name": "m"}


def test_defaults_fill_what_nobody_set():
    settings = load_settings(REQUIRED, {})
    assert settings.port == 8080
    assert settings.max_batch_size == 32
    assert settings.max_queue_delay_microseconds == 0
    assert settings.allow_spinning is False
    assert settings.model_version == "1"


def test_flag_beats_environment_beats_file(tmp_path: Path):
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: m\nmax_batch_size: 4\nmax_queue_size: 7\nport: 9000\n")
    env = {"KUBESERVE_MAX_BATCH_SIZE": "6", "KUBESERVE_MAX_QUEUE_SIZE": "8"}
    settings = load_settings({"max_queue_size": "9", "port": None}, env, config)
    assert settings.max_batch_size == 6
    assert settings.max_queue_size == 9
    assert settings.port == 9000


def test_the_config_file_can_come_from_the_environment(tmp_path: Path):
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: from-file\n")
    assert load_settings({}, {"KUBESERVE_CONFIG": str(config)}).model_name == "from-file"


def test_lists_and_booleans_arrive_as_text_from_the_environment():
    env = {"KUBESERVE_PREFERRED_BATCH_SIZE": "4, 8,16", "KUBESERVE_ALLOW_SPINNING": "true"}
    settings = load_settings(REQUIRED, env)
    assert settings.preferred_batch_size == [4, 8, 16]
    assert settings.allow_spinning is True


def test_other_kubeserve_variables_are_not_settings():
    # Kubernetes service links look like ours; only names of settings count.
    settings = load_settings(REQUIRED, {"KUBESERVE_SERVICE_HOST": "10.0.0.1", "KUBESERVE_CONFIG_X": "1"})
    assert settings.host == "0.0.0.0"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("model_path: [unclosed", "is not valid YAML"),
        ("- a\n- b\n", "must hold a mapping of settings, not list"),
        ("model_path: m.onnx\nmodel_name: m\nbatch: 3\n", "unknown settings: batch"),
    ],
)
def test_a_bad_config_file_is_named_and_explained(tmp_path: Path, content: str, message: str):
    config = tmp_path / "runtime.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings({}, {}, config)
    assert str(config) in str(raised.value)


def test_a_missing_config_file_is_an_error():
    with pytest.raises(ConfigError, match=r"cannot read config file /nowhere\.yaml"):
        load_settings({}, {}, Path("/nowhere.yaml"))


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as raised:
        load_settings({"max_queue_size": "0", "port": "99999"}, {})
    message = str(raised.value)
    for expected in ("model_path (", "model_name (", "--max-queue-size:", "--port:"):
        assert expected in message


def test_cuda_is_chosen_when_the_build_has_it():
    settings = RuntimeSettings(**REQUIRED, cuda_device_id=1, cuda_memory_limit_bytes=2**30)
    assert execution_providers(settings, [CUDA, CPU]) == [
        (CUDA, {"device_id": 1, "gpu_mem_limit": 2**30}),
        CPU,
    ]
    assert execution_providers(settings, [CPU]) == [CPU]


def test_device_cpu_ignores_a_gpu_and_device_cuda_requires_one():
    assert execution_providers(RuntimeSettings(**REQUIRED, device="cpu"), [CUDA, CPU]) == [CPU]
    with pytest.raises(ModelLoadError, match=r"install kubeserve\[gpu\]"):
        execution_providers(RuntimeSettings(**REQUIRED, device="cuda"), [CPU])


def test_thread_settings_reach_onnx_runtime():
    settings = RuntimeSettings(
        **REQUIRED, intra_op_num_threads=3, inter_op_num_threads=2, graph_optimization_level="basic"
    )
    options = session_options(settings)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(RuntimeSettings(**REQUIRED, allow_spinning=True))
    assert spinning.get_session_config_entry("session.inter_op.allow_spinning") == "1"


def test_asking_for_cuda_on_a_cpu_build_fails_the_load(models):
    settings = RuntimeSettings(model_path=models["mlp"], model_name="mlp", device="cuda")
    with pytest.raises(ModelLoadError, match="no CUDA provider"):
        OnnxModel.load(settings.model_path, settings)


def test_every_setting_is_documented_in_the_settings_reference():
    page = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "settings.md").read_text()
    section = page.split("<!-- runtime:begin -->", 1)[1].split("<!-- runtime:end -->", 1)[0]
    missing = [name for name in RuntimeSettings.model_fields if f"`{name}`" not in section]
    assert not missing, f"docs/reference/settings.md's runtime section does not describe: {missing}"


def test_image_inputs_arrive_as_json_from_flags_and_environment_and_as_yaml_from_the_file(tmp_path: Path):
    given = '{"image": {"resize": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}'
    from_environment = load_settings(REQUIRED, {"KUBESERVE_IMAGE_INPUTS": given}).image_inputs["image"]
    assert from_environment.resize == (224, 224)
    assert (from_environment.layout, from_environment.channel_order) == ("NCHW", "RGB")
    assert load_settings({**REQUIRED, "image_inputs": given}, {}).image_inputs["image"] == from_environment
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: m\nimage_inputs:\n  image:\n    channel_order: L\n")
    assert load_settings({}, {}, config).image_inputs["image"].channel_order == "L"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KUBESERVE_IMAGE_INPUTS": "{image: 1}"}, "KUBESERVE_IMAGE_INPUTS: Value error, is not valid JSON"),
        ({"KUBESERVE_IMAGE_INPUTS": '["image"]'}, "KUBESERVE_IMAGE_INPUTS: Input should be a valid dictionary"),
        (
            {"KUBESERVE_IMAGE_INPUTS": '{"image": {"mean": [0.5, 0.5]}}'},
            "KUBESERVE_IMAGE_INPUTS, at image: Value error, mean has 2 values, but channel_order RGB has 3 channels",
        ),
        (
            {"KUBESERVE_IMAGE_INPUTS": '{"image": {"std": [1, 0, 1]}}'},
            "KUBESERVE_IMAGE_INPUTS, at image.std.1: Input should be greater than 0",
        ),
        (
            {"KUBESERVE_IMAGE_INPUTS": '{"image": {"layout": "CHW", "size": 3}}'},
            "KUBESERVE_IMAGE_INPUTS, at image.layout: Input should be 'NCHW' or 'NHWC'",
        ),
        ({"KUBESERVE_IMAGE_INPUTS": '{"image": {"size": 3}}'}, "at image.size: Extra inputs are not permitted"),
        ({"KUBESERVE_IMAGE_INPUTS": '{"image": {"resize": [0, 3]}}'}, "at image.resize.0: Input should be greater"),
        ({"KUBESERVE_MAX_IMAGE_PIXELS": "0"}, "KUBESERVE_MAX_IMAGE_PIXELS: Input should be greater than or equal to 1"),
        (
            {"KUBESERVE_PREPROCESS_TIMEOUT_SECONDS": "0"},
            "KUBESERVE_PREPROCESS_TIMEOUT_SECONDS: Input should be greater",
        ),
        ({"KUBESERVE_POSTPROCESS_TIMEOUT_SECONDS": "-1"}, "KUBESERVE_POSTPROCESS_TIMEOUT_SECONDS: Input should be"),
    ],
)
def test_bad_image_and_stage_settings_are_named(environ: dict[str, str], message: str):
    with pytest.raises(ConfigError) as raised:
        load_settings(REQUIRED, environ)
    assert message in str(raised.value)
