"""Python handlers (the ``handler`` and ``handler_path`` settings): a user's class in front of the sample MLP, loaded
from tests/runtime/user_handlers/ as code fetched beside the model would be, and served by real servers on 127.0.0.1;
answers are read as the client sees them and compared with in-process ONNX Runtime on the features the test counts
itself. The handler's own stages, in the stage threads and in a pool of processes; its errors, hangs and crashes;
a batched handler, once per batch; its load errors; the settings."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from kubeserve.runtime.config import ConfigError, RuntimeSettings, load_settings
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.handler_code import StageOutput, checked_stage_output, run_stage
from kubeserve.runtime.handler_stages import STAGE_DEADLINE
from kubeserve.runtime.model import ModelLoadError, OnnxModel
from kubeserve.runtime.protocol.errors import GatewayTimeout, InternalError
from kubeserve.runtime.server.stages import StageRunner
from kubeserve.runtime.signature import TensorSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from wire import Answer, Client, assert_error, request  # bench/, put on sys.path above

HANDLERS = Path(__file__).resolve().parent / "user_handlers"
VOCABULARY = (HANDLERS / "vocabulary.txt").read_text().split()
TOPICS = [f"topic-{index}" for index in range(10)]
FAILED = "the handler's preprocess failed (the server's log says why: event handler_failed)"


def handler(name: str) -> tuple[str, ...]:
    """The flags that load ``words_handler``'s class ``name`` from its folder."""
    return ("--handler", f"words_handler:{name}", "--handler-path", str(HANDLERS))


def texts_request(*texts: str, outputs: list[str] | None = None) -> bytes:
    document: dict[str, Any] = {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}
    if outputs is not None:
        document["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(document).encode()


async def post(server: Any, body: bytes, path: str = "/v2/models/mlp/infer") -> Answer:
    client = await Client.connect(server.url)
    try:
        client.send(request("POST", path, body))
        return await client.answer("POST")
    finally:
        await client.close()


def expected(reference, *texts: str) -> tuple[list[str], np.ndarray]:
    """The topic and probability of each text: its words counted into the MLP's features (a word's feature its line
    in the vocabulary), run by in-process ONNX Runtime."""
    features = np.zeros((len(texts), 32), np.float32)
    for row, text in zip(features, texts, strict=True):
        for word in text.split():
            if word in VOCABULARY:
                row[VOCABULARY.index(word)] += 1
    (probabilities,) = reference("mlp", {"features": features})
    return [TOPICS[index] for index in probabilities.argmax(axis=1)], probabilities.max(axis=1)


def outputs(answer: Answer) -> dict[str, dict]:
    assert answer.status == 200, answer.body
    return {output["name"]: output for output in answer.json()["outputs"]}


@pytest.fixture(scope="module")
def words_server(start_module_runtime):
    """The MLP behind the Words handler, in the stage threads."""
    return start_module_runtime("mlp", *handler("Words")).wait_ready()


@pytest.fixture(scope="module")
def pool_server(start_module_runtime):
    """The MLP behind the same handler in a pool of processes (holds_gil), a stage's timeout 2 s."""
    return start_module_runtime("mlp", *handler("WordsInProcesses"), "--preprocess-timeout-seconds", "2").wait_ready()


# -- text in, topics out -------------------------------------------------------------------------------------------


async def test_a_handler_serves_text_to_the_mlp_and_its_topics_back(words_server, reference):
    texts = ("cat dog cat", "fish", "bird bird frog ship and more")
    topics, probabilities = expected(reference, *texts)

    answer = await post(words_server, texts_request(*texts))
    served = outputs(answer)
    assert served["topic"] == {"name": "topic", "datatype": "BYTES", "shape": [3], "data": topics}
    assert (served["probability"]["datatype"], served["probability"]["shape"]) == ("FP32", [3])
    np.testing.assert_allclose(served["probability"]["data"], probabilities, rtol=1e-5)
    stages = [part.split(";")[0].strip() for part in answer.headers["server-timing"].split(",")]
    assert stages == ["deserialize", "preprocess", "queue", "compute", "postprocess", "serialize", "total"]

    # What the client asks for, of what the handler serves.
    assert list(outputs(await post(words_server, texts_request(*texts, outputs=["probability"])))) == ["probability"]

    # KServe V1: each instance a text, each prediction the outputs by name.
    answer = await post(words_server, json.dumps({"instances": list(texts)}).encode(), "/v1/models/mlp:predict")
    assert answer.status == 200, answer.body
    predictions = answer.json()["predictions"]
    assert [prediction["topic"] for prediction in predictions] == topics
    np.testing.assert_allclose([prediction["probability"] for prediction in predictions], probabilities, rtol=1e-5)


def test_stock_clients_see_what_the_handler_serves(words_server, reference):
    client = triton.InferenceServerClient(words_server.address)
    try:
        metadata = client.get_model_metadata("mlp")
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [
            {"name": "topic", "datatype": "BYTES", "shape": [-1]},
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
        ]
        text = triton.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"horse truck", b"frog"], dtype=object))  # binary, tritonclient's way
        result = client.infer("mlp", [text])
        topics, probabilities = expected(reference, "horse truck", "frog")
        assert [topic.decode() for topic in result.as_numpy("topic")] == topics
        np.testing.assert_allclose(result.as_numpy("probability"), probabilities, rtol=1e-5)
    finally:
        client.close()


async def test_a_handler_that_renames_nothing_serves_the_models_signature(start_runtime, reference):
    server = start_runtime("mlp", *handler("Doubled")).wait_ready()
    client = await Client.connect(server.url)
    try:
        client.send(request("GET", "/v2/models/mlp"))
        metadata = (await client.answer()).json()
    finally:
        await client.close()
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 32]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]

    x = np.arange(64, dtype=np.float32).reshape(2, 32) / 64
    body = {"inputs": [{"name": "features", "shape": [2, 32], "datatype": "FP32", "data": x.ravel().tolist()}]}
    served = outputs(await post(server, json.dumps(body).encode()))["probabilities"]
    (want,) = reference("mlp", {"features": x * 2})
    np.testing.assert_allclose(np.reshape(served["data"], served["shape"]), want, rtol=1e-5)
    assert server.wait_for_event("model_ready")["handler"] == "words_handler:Doubled"


# -- errors: the client's (400), the handler's (500), and the server goes on ----------------------------------------


async def test_invalid_input_is_a_400_a_failure_a_500_and_the_server_goes_on(words_server):
    assert_error(await post(words_server, texts_request("cat", "a zebra")), 400, "text 1 has no word of the vocabulary")

    for text, logged in (
        ("cat boom", "ZeroDivisionError: division by zero"),
        ("float64 cat", "the handler's preprocess made 'features' of dtype float64; it is FP32 (float32) in the "
         "model's inputs"),
    ):  # fmt: skip
        failures = words_server.count_events("handler_failed")
        answer = await post(words_server, texts_request(text))
        assert_error(answer, 500, FAILED)
        assert answer.json() == {"error": FAILED}  # nothing of the handler's inside goes out
        event = words_server.wait_for_events("handler_failed", failures + 1)[-1]
        assert (event["level"], event["stage"], event["handler"]) == ("ERROR", "preprocess", "words_handler:Words")
        assert event["error"].startswith("Traceback (most recent call last):")
        assert logged in event["error"]
        assert outputs(await post(words_server, texts_request("cat")))["topic"]["shape"] == [1]


def test_a_postprocess_that_breaks_its_contract_fails_the_request(models, caplog):
    settings = RuntimeSettings(
        model_path=models["mlp"], model_name="mlp", handler="words_handler:MissesAnOutput", handler_path=HANDLERS
    )
    model = OnnxModel.load(models["mlp"], settings)
    processing = model.processing
    feeds = processing.preprocess({"text": np.array([b"cat"], dtype=object)})
    with caplog.at_level(logging.ERROR), pytest.raises(InternalError, match="the handler's postprocess failed"):
        processing.postprocess(model.run(feeds, None), {})
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "handler_failed"]
    assert record.stage == "postprocess"
    assert "returned ['topic']; the outputs served are ['topic', 'probability']" in record.error


def test_classification_leaves_a_dict_the_handler_keeps_as_it_was(models):
    """Top classes replace an output in the answer, not in the dict the handler returned (it may keep and return it
    again): a request that asks for classes, then one that does not, get each what it asked for."""
    settings = RuntimeSettings(
        model_path=models["mlp"], model_name="mlp", handler="words_handler:KeepsItsAnswer", handler_path=HANDLERS
    )
    model = OnnxModel.load(models["mlp"], settings)
    processing = model.processing
    outputs = model.run({"features": np.ones((1, 32), np.float32)}, None)
    before = processing.postprocess(dict(outputs), {})["probabilities"].copy()
    assert processing.postprocess(dict(outputs), {"probabilities": 1})["probabilities"].dtype == object
    after = processing.postprocess(dict(outputs), {})["probabilities"]
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, before)


def test_a_bytes_output_of_anything_but_strings_breaks_the_contract():
    class Topics:
        def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"topic": outputs["topic"]}

    expected = {"postprocess": StageOutput((TensorSpec("topic", DATATYPES["BYTES"], (-1,)),), "the outputs served")}
    for good in (np.array([b"a", "b"], dtype=object), np.array(["a", "b"]), np.array([b"a", b"b"])):
        assert list(run_stage(Topics(), "postprocess", {"topic": good}, expected)["topic"]) == list(good)
    for bad in (np.array([b"a", 7], dtype=object), np.array([b"a", None], dtype=object)):
        with pytest.raises(TypeError, match="made 'topic' \\(BYTES in the outputs served\\) with an element of type"):
            run_stage(Topics(), "postprocess", {"topic": bad}, expected)
    with pytest.raises(TypeError, match="made 'topic' a NoneType, not a NumPy array"):
        run_stage(Topics(), "postprocess", {"topic": None}, expected)


class _Float32Subclass(np.ndarray):
    """An array of a subclass of NumPy's: as good as one of NumPy's own."""


def test_what_a_stage_returns_is_checked_alike_on_either_path():
    """The check on every request's path takes what most stages return (NumPy arrays of the datatype, the rows first,
    the other dimensions fixed) in a few comparisons; anything else goes through the full check, which takes what it
    may and says what is wrong with the rest."""
    specs = (TensorSpec("x", DATATYPES["FP32"], (-1, 3)), TensorSpec("y", DATATYPES["INT64"], (-1,)))
    expected = {"preprocess": StageOutput(specs, "the model's inputs")}
    assert expected["preprocess"].quick is not None  # the quick check applies

    def check(**made: object) -> object:
        return checked_stage_output("preprocess", made, expected)

    y = np.arange(2, dtype=np.int64)
    good = {"x": np.zeros((2, 3), np.float32), "y": y}
    assert checked_stage_output("preprocess", good, expected) is good  # as it came
    assert check(x=np.zeros((0, 3), np.float32), y=y[:0])["x"].shape == (0, 3)  # no rows
    # Taken by the full check alone: a subclass, and a dtype equal to the datatype's but not NumPy's own object.
    assert type(check(x=np.zeros((2, 3), np.float32).view(_Float32Subclass), y=y)["x"]) is _Float32Subclass
    assert check(x=np.zeros((2, 3), np.dtype("=f4", metadata={"a": 1})), y=y)["x"].dtype == np.float32
    for made, error, message in (
        ({"x": good["x"]}, ValueError, "returned ['x']; the model's inputs are ['x', 'y']"),
        ({**good, "z": y}, ValueError, "returned ['x', 'y', 'z']; the model's inputs are ['x', 'y']"),
        ({"x": good["x"].astype(np.float64), "y": y}, TypeError, "made 'x' of dtype float64; it is FP32"),
        ({"x": good["x"].astype(">f4"), "y": y}, TypeError, "made 'x' of dtype >f4; it is FP32"),
        (
            {"x": np.zeros((2, 4), np.float32), "y": y},
            ValueError,
            "made 'x' of shape [2, 4], which does not fit [-1, 3]",
        ),
        ({"x": np.zeros((3,), np.float32), "y": y}, ValueError, "made 'x' of shape [3], which does not fit [-1, 3]"),
        ({"x": [[0.0] * 3], "y": y}, TypeError, "made 'x' a list, not a NumPy array"),
    ):
        with pytest.raises(error, match=re.escape(message)):
            checked_stage_output("preprocess", made, expected)
    with pytest.raises(TypeError, match="returned list, not a dict of NumPy arrays"):
        checked_stage_output("preprocess", [good], expected)
    # Made again where it is unpickled (a pool's processes): the quick check compares with NumPy's own dtypes there too.
    assert pickle.loads(pickle.dumps(expected["preprocess"])).quick[0][1] is np.dtype(np.float32)
    # Where a tensor has a fixed first dimension, a dynamic one after it, or is BYTES, the full check alone runs.
    for spec in (
        TensorSpec("x", DATATYPES["FP32"], (2, 3)),
        TensorSpec("x", DATATYPES["FP32"], (-1, -1)),
        TensorSpec("x", DATATYPES["BYTES"], (-1,)),
    ):
        assert StageOutput((spec,), "the model's inputs").quick is None


# -- a handler that hangs: 504 naming the stage, and the others are answered ----------------------------------------


async def test_a_hung_handler_is_a_504_and_holds_nobody_up(serve_in_process, monkeypatch):
    # Two stage threads, whatever this machine has: one held, one free.
    server = await serve_in_process(
        "mlp",
        handler="words_handler:Words",
        handler_path=HANDLERS,
        preprocess_timeout_seconds=0.5,
        processing_threads=2,
    )
    import words_handler  # the server's own module: its handler_path is on sys.path now

    words_handler.HUNG.clear()
    words_handler.RELEASE.clear()
    try:
        started = time.monotonic()
        held = asyncio.create_task(post(server, texts_request("hang cat")))
        assert await asyncio.to_thread(words_handler.HUNG.wait, 30)
        # While that one hangs in its thread (until RELEASE, below), another request is preprocessed, batched and
        # answered, however long it takes: the hung call holds one thread, not the server.
        assert outputs(await post(server, texts_request("dog")))["topic"]["shape"] == [1]

        answer = await held
        assert_error(answer, 504, "the preprocess stage took longer than preprocess_timeout_seconds (0.5 s)")
        assert time.monotonic() - started >= 0.5
        # Answered, its call still hangs in its thread; the other thread goes on serving.
        assert not words_handler.RELEASE.is_set()
        assert outputs(await post(server, texts_request("cat")))["topic"]["shape"] == [1]
    finally:
        words_handler.RELEASE.set()  # the late call returns in its thread; its result is dropped
    assert outputs(await post(server, texts_request("fish")))["topic"]["shape"] == [1]


# -- stages written async def: on the event loop ---------------------------------------------------------------------


async def test_async_stages_are_awaited_on_the_loop_timed_and_bounded(serve_in_process, reference):
    server = await serve_in_process(
        "mlp", handler="words_handler:WordsOnLoop", handler_path=HANDLERS, preprocess_timeout_seconds=0.5
    )
    import words_handler

    texts = ("cat dog cat", "fish")
    topics, probabilities = expected(reference, *texts)
    answer = await post(server, texts_request(*texts))
    served = outputs(answer)
    assert served["topic"]["data"] == topics
    np.testing.assert_allclose(served["probability"]["data"], probabilities, rtol=1e-5)
    stages = [part.split(";")[0].strip() for part in answer.headers["server-timing"].split(",")]
    assert stages == ["deserialize", "preprocess", "queue", "compute", "postprocess", "serialize", "total"]
    # The stages ran on the loop's thread (this test's), not in a stage thread.
    assert {threading.current_thread().name} == words_handler.LOOP_THREADS

    assert_error(await post(server, texts_request("a zebra")), 400, "text 0 has no word of the vocabulary")
    assert_error(await post(server, texts_request("cat boom")), 500, FAILED)
    assert_error(await post(server, texts_request("cat float64")), 500, FAILED)  # what it made is checked too
    # Its own CancelledError (nobody cancelled the request) is the handler's failure too, answered.
    assert_error(await post(server, texts_request("cat cancelled")), 500, FAILED)

    # One that stalls past its timeout is cancelled and answered 504 on real time; the others go on meanwhile.
    words_handler.LOOP_STALLED.clear()
    words_handler.LOOP_RELEASE.clear()
    started = time.monotonic()
    held = asyncio.create_task(post(server, texts_request("stall cat")))
    assert await asyncio.to_thread(words_handler.LOOP_STALLED.wait, 30)
    assert outputs(await post(server, texts_request("dog")))["topic"]["shape"] == [1]
    assert_error(await held, 504, "the preprocess stage took longer than preprocess_timeout_seconds (0.5 s)")
    assert time.monotonic() - started >= 0.5
    assert outputs(await post(server, texts_request("fish")))["topic"]["shape"] == [1]


class _Unreadable(dict):
    """What a handler's stage may return: a dict that raises when it is read."""

    def __getitem__(self, key: str) -> np.ndarray:
        raise KeyError(key)


async def test_how_the_handler_judges_what_an_async_stage_raised_or_made(models, caplog):
    """The handler's judgement of an ``async def`` stage's outcome, which the server asks for where it awaits the
    stage: a cancel of the request (its client gone, the server stopping) goes through as it is, logged as nothing of
    the handler's (the handler's own CancelledError is its failure: tested above, on a real server); and whatever
    looking at what it made raises is its failure."""
    settings = RuntimeSettings(
        model_path=models["mlp"], model_name="mlp", handler="words_handler:WordsOnLoop", handler_path=HANDLERS
    )
    handler = OnnxModel.load(models["mlp"], settings).processing.handler
    assert handler is not None
    awaiting = asyncio.Event()

    async def request() -> bool:
        try:
            awaiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError as cancelled:
            return handler.on_loop_failure("preprocess", cancelled) is cancelled
        return False

    with caplog.at_level(logging.ERROR):
        task = asyncio.create_task(request())
        await awaiting.wait()
        task.cancel()
        assert await task
    assert not [r for r in caplog.records if getattr(r, "event", None) == "handler_failed"]

    with caplog.at_level(logging.ERROR), pytest.raises(InternalError, match="the handler's postprocess failed"):
        handler.on_loop_output("postprocess", _Unreadable(topic=None, probability=None))
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "handler_failed"]
    assert "KeyError: 'topic'" in record.error


async def test_a_stage_answered_while_it_waited_for_a_thread_never_runs(monkeypatch):
    stages = StageRunner(
        RuntimeSettings(
            model_path="m.onnx",
            model_name="m",
            preprocess_timeout_seconds=0.2,
            postprocess_timeout_seconds=300,
            processing_threads=1,
        )
    )
    entered, release, ran = threading.Event(), threading.Event(), []

    def hold() -> None:
        entered.set()
        release.wait(300)

    try:
        # The thread is held by a stage whose timeout is far off, until the test releases it.
        held = asyncio.create_task(stages.run("postprocess", hold))
        assert await asyncio.to_thread(entered.wait, 30)
        with pytest.raises(GatewayTimeout, match="the preprocess stage took longer than"):
            await stages.run("preprocess", ran.append, "late")  # waits behind the held one, past its timeout
        assert not held.done()
        release.set()
        assert await held is None
        # (Under a deadline far off: this one must run, however slowly a busy machine wakes the thread.)
        assert await stages.run("preprocess", ran.append, "next", deadline=time.monotonic() + 30) is None
        assert ran == ["next"]  # the thread, free again, skipped the answered one
    finally:
        release.set()
        stages.close()


# -- a handler that holds the GIL, in a pool of processes ------------------------------------------------------------


async def test_a_handler_that_holds_the_gil_runs_in_its_own_processes(pool_server, reference):
    loaded = pool_server.wait_for_events("handler_loaded", 1)
    assert pool_server.process.pid not in {event["pid"] for event in loaded}  # each process loaded its own instance

    texts = ("cat dog cat", "ship")
    topics, probabilities = expected(reference, *texts)
    served = outputs(await post(pool_server, texts_request(*texts)))
    assert served["topic"]["data"] == topics
    np.testing.assert_allclose(served["probability"]["data"], probabilities, rtol=1e-5)

    assert_error(await post(pool_server, texts_request("a zebra")), 400, "text 0 has no word of the vocabulary")
    failures = pool_server.count_events("handler_failed")
    assert_error(await post(pool_server, texts_request("cat boom")), 500, FAILED)
    event = pool_server.wait_for_events("handler_failed", failures + 1)[-1]
    assert event["stage"] == "preprocess" and "ZeroDivisionError" in event["error"]  # the traceback, from its process


async def test_a_crashed_or_hung_process_is_replaced(pool_server):
    assert_error(await post(pool_server, texts_request("crash cat")), 500, FAILED)
    replaced = pool_server.wait_for_events("handler_process_replaced", 1)[-1]
    assert replaced["exit_code"] == 3

    started = time.monotonic()
    answer = await post(pool_server, texts_request("hang cat"))
    assert_error(answer, 504, "the preprocess stage took longer than preprocess_timeout_seconds (2 s)")
    assert time.monotonic() - started >= 2
    replaced = pool_server.wait_for_events("handler_process_replaced", 2)[-1]
    assert replaced["exit_code"] == -9  # killed: it was still busy at the timeout
    for text in ("cat", "dog", "fish"):
        assert outputs(await post(pool_server, texts_request(text)))["topic"]["shape"] == [1]


async def test_while_a_process_hangs_the_others_answer(serve_in_process, monkeypatch, tmp_path):
    monkeypatch.setenv("WORDS_HOLD_DIR", str(tmp_path))  # the processes' "hold" waits for tmp_path/release
    server = await serve_in_process(  # two processes, and two stage threads to wait on them
        "mlp",
        handler="words_handler:WordsInProcesses",
        handler_path=HANDLERS,
        preprocess_timeout_seconds=60.0,
        processing_threads=2,
    )
    try:
        held = asyncio.create_task(post(server, texts_request("hold cat")))
        for _ in range(3000):  # until its process holds it (30 s at most)
            if (tmp_path / "held").exists():
                break
            await asyncio.sleep(0.01)
        assert (tmp_path / "held").exists()
        # One process is held until the test releases it; the other answers meanwhile.
        assert outputs(await post(server, texts_request("dog")))["topic"]["shape"] == [1]
        assert not held.done()
    finally:
        (tmp_path / "release").touch()
    assert outputs(await held)["topic"]["shape"] == [1]


def test_a_call_past_its_deadline_is_the_stage_timeouts_504_and_never_sent(models, monkeypatch, tmp_path):
    monkeypatch.setenv("WORDS_HOLD_DIR", str(tmp_path))
    settings = RuntimeSettings(
        model_path=models["mlp"],
        model_name="mlp",
        handler="words_handler:WordsInProcesses",
        handler_path=HANDLERS,
        processing_threads=1,  # one process
    )
    model = OnnxModel.load(models["mlp"], settings)
    processes = model.processing.handler.processes
    try:
        text = {"text": np.array([b"hold cat"], dtype=object)}
        late = "the preprocess stage took longer than preprocess_timeout_seconds (30 s)"
        with pytest.raises(GatewayTimeout, match=re.escape(late)):  # its request has had its 504: not sent
            processes.call("preprocess", text, deadline=time.monotonic() - 1)
        # The same by the deadline the stage thread that calls it runs under (its request's).
        passed = STAGE_DEADLINE.set(time.monotonic() - 1)
        try:
            with pytest.raises(GatewayTimeout, match=re.escape(late)):
                processes.call("preprocess", text)
        finally:
            STAGE_DEADLINE.reset(passed)
        assert not (tmp_path / "held").exists()
        cat = {"text": np.array([b"cat"], dtype=object)}
        assert processes.call("preprocess", cat)["features"].shape == (1, 32)  # the process is still free
    finally:
        model.processing.close()


# -- a batched handler: once per batch, in the batch's compute --------------------------------------------------------

# Requests sent at once to the batched server: its preferred batch size, so they leave in one batch (its window, 60 s,
# is far longer than they take to arrive), whatever the timing.
BATCH = 4


@pytest.fixture(scope="module")
def batched_server(start_module_runtime):
    return start_module_runtime(
        "mlp",
        *handler("WordsBatched"),
        "--max-queue-delay-microseconds", "60000000",
        "--preferred-batch-size", str(BATCH),
    ).wait_ready()  # fmt: skip


async def post_batch(server: Any, *texts: str) -> list[Answer]:
    """``BATCH`` requests at once, one text each: one batch."""
    assert len(texts) == BATCH
    return await asyncio.gather(*(post(server, texts_request(text)) for text in texts))


async def logged_a_batch(server: Any, stage: str, rows: int) -> bool:
    """Whether the batched handler's ``stage`` logged a call of ``rows`` rows (event ``handler_batch``), waiting up
    to 30 s for the log, which is read beside the answers."""
    for _ in range(600):
        if any(e.get("event") == "handler_batch" and (e["stage"], e["rows"]) == (stage, rows) for e in server.events):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_batched_handler_gets_a_whole_batchs_rows_and_each_request_its_own(batched_server, reference):
    texts = ("cat dog cat", "fish", "bird frog ship", "truck")
    answers = await post_batch(batched_server, *texts)
    topics, probabilities = expected(reference, *texts)
    for answer, topic, probability in zip(answers, topics, probabilities, strict=True):
        served = outputs(answer)
        assert served["topic"]["data"] == [topic]
        np.testing.assert_allclose(served["probability"]["data"], [probability], rtol=1e-5)
        # Its stages are the batch's compute: the request has no preprocess or postprocess stage of its own.
        stages = [part.split(";")[0].strip() for part in answer.headers["server-timing"].split(",")]
        assert stages == ["deserialize", "queue", "compute", "serialize", "total"]
    assert await logged_a_batch(batched_server, "preprocess", BATCH)  # the four requests' rows in one call
    assert await logged_a_batch(batched_server, "postprocess", BATCH)


async def test_a_batched_handlers_mistakes_answer_its_whole_batch(batched_server):
    # InvalidInput: the client's mistake, for every request of the batch, in one message (its row is the zebra's in
    # the batch, counted from the batch's first: which it is depends on the order the four connections arrived in).
    answers = await post_batch(batched_server, "cat", "a zebra", "dog", "fish")
    for answer in answers:
        assert_error(answer, 400, "text ")
    (message,) = {answer.json()["error"] for answer in answers}
    assert re.fullmatch(r"text [0-3] has no word of the vocabulary", message), message

    # A preprocess that loses a row: the handler's mistake, a 500 for each, the traceback in the log.
    for answer in await post_batch(batched_server, "cat", "dog drop", "fish", "ship"):
        assert_error(answer, 500, FAILED)
    event = batched_server.wait_for_event("handler_failed")  # the only one this server logs
    assert (event["stage"], event["handler"]) == ("preprocess", "words_handler:WordsBatched")
    assert "made 'features' of 3 rows from 4: a batched handler returns one row for each row it gets" in event["error"]

    for answer in await post_batch(batched_server, "cat", "dog", "fish", "ship"):  # and the server goes on
        assert outputs(answer)["topic"]["shape"] == [1]


def test_a_batched_handler_needs_a_model_that_batches(models):
    settings = RuntimeSettings(
        model_path=models["mlp"],
        model_name="mlp",
        handler="words_handler:WordsBatched",
        handler_path=HANDLERS,
        max_batch_size=0,
    )
    with pytest.raises(ModelLoadError, match="handler words_handler:WordsBatched is batched, but the model does not"):
        OnnxModel.load(models["mlp"], settings)


# -- load errors, and the settings -----------------------------------------------------------------------------------

LOAD_ERRORS = {
    "no such module": ("no_such_module:Handler", "handler no_such_module:Handler: cannot import no_such_module: "
                       "ModuleNotFoundError: No module named 'no_such_module'"),
    "no such class": ("words_handler:Missing", "handler words_handler:Missing: module words_handler ("),
    "no stage": ("words_handler:NoStage", "handler words_handler:NoStage defines neither preprocess nor postprocess"),
    "load raises": ("words_handler:FailsToLoad", "handler words_handler:FailsToLoad failed to load: RuntimeError: the "
                    "vocabulary is missing"),
    "load raises in a process": ("words_handler:FailsToLoadInProcesses", "handler words_handler:FailsToLoadInProcesses "
                                 "failed to load: RuntimeError: the vocabulary is missing"),
    "an unknown datatype": ("words_handler:BadDatatype", "handler words_handler:BadDatatype: inputs['text'] is "
                            "('STRING', [-1]): it must be (datatype, shape)"),
    "no rows": ("words_handler:NoRows", "handler words_handler:NoRows: inputs['text'] has shape [1]: the model batches "
                "requests, so it must lead with -1"),
    "batched, in processes": ("words_handler:BatchedInProcesses", "handler words_handler:BatchedInProcesses is batched "
                              "and holds_gil: a batched handler runs in the batch's inference thread"),
    "async, batched": ("words_handler:BatchedOnLoop", "handler words_handler:BatchedOnLoop has an async postprocess "
                       "and preprocess and is batched: an async stage is awaited on the server's event loop, not in "
                       "the batch"),
    "async, in processes": ("words_handler:OnLoopInProcesses", "handler words_handler:OnLoopInProcesses has an async "
                            "postprocess and preprocess and is holds_gil: an async stage is awaited on the server's "
                            "event loop, not in a pool of processes"),
    "outputs nothing makes": ("words_handler:OutputsWithoutPostprocess",
                              "handler words_handler:OutputsWithoutPostprocess declares outputs, but has no postprocess"
                              " to make them"),
}  # fmt: skip


@pytest.mark.parametrize(("name", "message"), LOAD_ERRORS.values(), ids=LOAD_ERRORS)
def test_a_handler_that_cannot_load_fails_the_model_load(models, name, message):
    settings = RuntimeSettings(model_path=models["mlp"], model_name="mlp", handler=name, handler_path=HANDLERS)
    with pytest.raises(ModelLoadError) as raised:
        OnnxModel.load(models["mlp"], settings)
    assert str(raised.value).startswith(message)


def test_handler_path_must_be_a_directory(models, tmp_path):
    settings = RuntimeSettings(
        model_path=models["mlp"], model_name="mlp", handler="words_handler:Words", handler_path=tmp_path / "none"
    )
    with pytest.raises(ModelLoadError, match=r"handler_path .*none is not a directory"):
        OnnxModel.load(models["mlp"], settings)


def test_the_real_server_exits_3_naming_the_handler(start_runtime):
    server = start_runtime("mlp", *handler("FailsToLoad"), "--load-failure-exit-seconds", "0")
    event = server.wait_for_event("model_load_failed")
    assert (
        event["reason"] == "handler words_handler:FailsToLoad failed to load: RuntimeError: the vocabulary is missing"
    )
    failed = server.wait_for_event("handler_failed")
    assert failed["stage"] == "load" and "RuntimeError: the vocabulary is missing" in failed["error"]
    assert server.wait() == 3


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"handler": "words_handler"}, "--handler: String should match pattern"),
        ({"handler": "words handler:Words"}, "--handler: String should match pattern"),
        ({"handler_path": "/models/handler"}, "handler_path /models/handler is set without handler"),
    ],
)
def test_bad_handler_settings_are_named(given: dict[str, str], message: str):
    with pytest.raises(ConfigError) as raised:
        load_settings({"model_path": "m.onnx", "model_name": "m", **given}, {})
    assert message in str(raised.value)


def test_handler_settings_come_from_flags_environment_and_file(tmp_path):
    config = tmp_path / "runtime.yaml"
    config.write_text("model_path: m.onnx\nmodel_name: m\nhandler: fraud.handlers:Explain\n")
    settings = load_settings({}, {"KUBESERVE_HANDLER_PATH": "/models/handler"}, config)
    assert (settings.handler, settings.handler_path) == ("fraud.handlers:Explain", Path("/models/handler"))
    assert load_settings({"handler": "a.b:C"}, {}, config).handler == "a.b:C"
