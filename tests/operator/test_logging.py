"""The JSON log lines the operator (and the runtime) write, through kopf's real logging path."""

from __future__ import annotations

import json
import logging

import pytest
from kubeserve.runtime.logs import json_handler

ISVC_PATH = "/apis/serving.kubeserve.io/v1alpha1/namespaces/ml/inferenceservices"
ISVCS = "serving.kubeserve.io/v1alpha1/inferenceservices"


def log_lines(stderr: str) -> list[dict]:
    assert "--- Logging error ---" not in stderr
    return [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object


@pytest.mark.looptime
async def test_kopfs_messages_about_an_object_are_one_json_line_each_naming_it(
    api, run_operator, eventually, objects, isvc_factory, capsys
):
    kopf_logger = logging.getLogger("kopf")
    handler, level = json_handler(), kopf_logger.level
    kopf_logger.addHandler(handler)
    kopf_logger.setLevel(logging.INFO)
    try:
        async with run_operator():
            await api.create(ISVC_PATH, isvc_factory())
            await eventually(lambda: objects(ISVCS, "ml", "mlp")["status"]["observedGeneration"] == 1)
    finally:
        kopf_logger.removeHandler(handler)
        kopf_logger.setLevel(level)

    lines = log_lines(capsys.readouterr().err)
    about_objects = [line for line in lines if line["logger"] == "kopf.objects"]
    assert {"Handler 'reconcile' succeeded.", "Creation is processed: 1 succeeded; 0 failed."} <= {
        line["message"] for line in about_objects
    }
    for line in about_objects:
        # The fields we choose; never kopf's settings object or its internal flags.
        assert set(line) == {"time", "level", "logger", "message", "namespace", "name"}, line
        assert (line["namespace"], line["name"]) == ("ml", "mlp")


def test_our_events_keep_their_facts_and_other_extras_are_left_out(capsys):
    logger = logging.getLogger("kubeserve.test")
    handler = json_handler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("model loaded", extra={"event": "model_loaded", "seconds": 0.4, "providers": ["CPU"]})
        logger.info("127.0.0.1 GET /", extra={"remote_address": "127.0.0.1", "request": object()})
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("inference failed", extra={"event": "inference_failed"})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True

    loaded, access, failed = log_lines(capsys.readouterr().err)
    assert loaded == {
        "time": loaded["time"],
        "level": "INFO",
        "logger": "kubeserve.test",
        "message": "model loaded",
        "event": "model_loaded",
        "seconds": 0.4,
        "providers": ["CPU"],
    }
    assert set(access) == {"time", "level", "logger", "message"}  # a library's record: no event, no extras
    assert failed["event"] == "inference_failed"
    assert "ValueError: bad" in failed["exc_info"]
