"""Warm-up never makes a valid model unloadable: the user's inputs (``warmup_inputs_path``) are used when
given and must work; without them, a failed synthetic warm-up is a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.model import WARMUP_FAILED, WARMUP_SYNTHETIC, WARMUP_USER, ModelLoadError, OnnxModel


def load(models: dict[str, Path], model: str, warmup: Path | None = None) -> OnnxModel:
    settings = RuntimeSettings(model_path=models[model], model_name=model, warmup_inputs_path=warmup)
    return OnnxModel.load(settings.model_path, settings)


def write_request(path: Path, value: str, datatype: str = "BYTES") -> Path:
    inputs = [{"name": f"INPUT{i}", "shape": [1, 16], "datatype": datatype, "data": [value] * 16} for i in range(2)]
    path.write_text(json.dumps({"inputs": inputs}))
    return path


def test_a_model_that_takes_zeros_is_warmed_up_synthetically(models):
    assert load(models, "simple").warmup == WARMUP_SYNTHETIC


def test_a_failed_synthetic_warm_up_is_logged_and_the_model_loads(models, caplog):
    with caplog.at_level(logging.WARNING, logger="kubeserve.runtime.model"):
        model = load(models, "simple_string")
    assert model.warmup == WARMUP_FAILED
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "warmup_failed"]
    assert record.levelno == logging.WARNING
    assert record.source == "synthetic"
    assert "Cast" in record.reason


def test_user_inputs_are_used(models, tmp_path):
    assert load(models, "simple_string", write_request(tmp_path / "w.json", "5")).warmup == WARMUP_USER


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read warmup_inputs_path"),
        ("{not json", "is not a request this model takes: request body is not valid JSON"),
        ('{"inputs": [{"name": "nope"}]}', "is not a request this model takes: unknown input 'nope'"),
    ],
)
def test_unusable_user_inputs_fail_the_load_naming_the_setting(models, tmp_path, content, message):
    path = tmp_path / "warmup.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        load(models, "simple_string", path)


def test_user_inputs_the_model_cannot_run_fail_the_load(models, tmp_path):
    # The user's own inputs are meant to work: their failure is a failed load, as a bad setting is.
    path = write_request(tmp_path / "w.json", "not a number")
    with pytest.raises(ModelLoadError, match=r"warm-up with warmup_inputs_path .* failed"):
        load(models, "simple_string", path)
