"""Images in, labels out: the preprocess stage (``image_inputs``: JPEG and PNG decoded, converted, resized and
normalised into the model's tensor) and the postprocess stage (Triton's classification extension, ``labels_path``),
each under its timeout. What the server computes is compared with what Pillow and NumPy compute in the test the plain
way; bad images and bad settings are read as the client (or the operator) sees them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from kubeserve.runtime.classification import read_labels, top_classes
from kubeserve.runtime.config import RuntimeSettings
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.model import WARMUP_SYNTHETIC, WARMUP_USER, ModelLoadError, OnnxModel
from kubeserve.runtime.processing import Processing, ProcessingError
from kubeserve.runtime.protocol.errors import BadRequest
from kubeserve.runtime.protocol.v2_request import decode_request
from kubeserve.runtime.signature import ModelSignature, TensorSpec
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from wire import Answer, Client, assert_error, chunked, get, request  # bench/, put on sys.path above

CNN_IMAGES = {"resize": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PIXELS_IMAGES = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}  # the pixels model: 32x48, no resize
LABELS = ["cat", "dog", "bird", "fish", "frog", "horse", "ship", "truck"]  # 8 labels, 10 classes
MAX_PIXELS = 100_000


def encoded(image_format: str, height: int, width: int, channels: int = 3, seed: int = 0) -> bytes:
    """An image of random pixels, encoded."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, image_format)
    return data.getvalue()


def expected(data: bytes, setting: dict, dtype: type = np.float32) -> np.ndarray:
    """One image as the model must get it, computed the plain way: Pillow decodes (a JPEG to be resized at the
    DCT scale ``Image.draft`` picks, at least the target), converts and resizes (bilinear, from the drafted area);
    NumPy scales to 0..1, subtracts the mean and divides by the std, in float64."""
    order = setting.get("channel_order", "RGB")
    mode = "L" if order == "L" else "RGB"
    image = Image.open(io.BytesIO(data))
    box = None
    if "resize" in setting and image.format == "JPEG":
        height, width = setting["resize"]
        box = image.draft(mode, (width, height))[1]
    image = image.convert(mode)
    if "resize" in setting:
        height, width = setting["resize"]
        image = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if order == "BGR":
        pixels = pixels[:, :, ::-1]
    values = pixels
    if dtype is not np.uint8:
        values = (pixels / 255.0 - np.array(setting.get("mean", 0.0))) / np.array(setting.get("std", 1.0))
    if setting.get("layout", "NCHW") == "NCHW":
        values = values.transpose(2, 0, 1)
    return values.astype(dtype)


def images(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def processing(setting: dict, shape: tuple[int, ...], datatype: str = "FP32", **settings) -> Processing:
    """The processing built for a model whose input ``image`` has ``shape`` and ``datatype``."""
    signature = ModelSignature(
        inputs=(TensorSpec("image", DATATYPES[datatype], shape),),
        outputs=(TensorSpec("logits", DATATYPES["FP32"], (-1, 10)),),
    )
    config = RuntimeSettings(model_path="m.onnx", model_name="m", image_inputs={"image": setting}, **settings)
    return Processing.build(config, signature)


# -- the preprocess stage, in-process -----------------------------------------------------------------------------

# (setting, model input shape, datatype, the images, tolerance)
TENSOR_CASES = {
    "JPEG, NCHW RGB, resized, normalised": (
        CNN_IMAGES | {"resize": [24, 20]}, (-1, 3, 24, 20), "FP32",
        [encoded("JPEG", 90, 120), encoded("JPEG", 33, 47, seed=1)], 1e-5,
    ),
    "PNG with alpha, NHWC BGR, FP16": (
        {"resize": [24, 20], "layout": "NHWC", "channel_order": "BGR", "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]},
        (-1, 24, 20, 3), "FP16", [encoded("PNG", 40, 30, channels=4)], 2e-3,
    ),
    "PNG to grey, UINT8 as it is, the model's size": (
        {"channel_order": "L"}, (-1, 1, 32, 48), "UINT8", [encoded("PNG", 32, 48, seed=2)], 0,
    ),
    "JPEG, any size the model takes, 0..1": (
        {}, (-1, 3, -1, -1), "FP32", [encoded("JPEG", 30, 40, seed=3), encoded("JPEG", 30, 40, seed=4)], 1e-6,
    ),
}  # fmt: skip


@pytest.mark.parametrize(("setting", "shape", "datatype", "sent", "tolerance"), TENSOR_CASES.values(), ids=TENSOR_CASES)
def test_images_become_the_tensor_the_model_takes(setting, shape, datatype, sent, tolerance):
    built = processing(setting, shape, datatype)
    assert built.signature.inputs == (TensorSpec("image", DATATYPES["BYTES"], (-1,)),)

    tensor = built.preprocess({"image": images(*sent)})["image"]

    want = np.stack([expected(data, setting, DATATYPES[datatype].numpy.type) for data in sent])
    assert tensor.dtype == DATATYPES[datatype].numpy
    assert tensor.shape == want.shape
    np.testing.assert_allclose(tensor.astype(np.float64), want.astype(np.float64), rtol=tolerance, atol=tolerance)


def test_max_image_pixels_bounds_the_request_s_images_together():
    built = processing({}, (-1, 3, -1, -1), max_image_pixels=5_000)
    two = images(encoded("PNG", 30, 40), encoded("PNG", 30, 40, seed=1))  # 1,200 each
    assert built.preprocess({"image": two})["image"].shape == (2, 3, 30, 40)
    five = images(*(encoded("PNG", 30, 40, seed=seed) for seed in range(5)))  # 6,000 in all
    with pytest.raises(BadRequest, match=r"input 'image': the request's 5 images are 6,000 pixels .* in all, more "
                       r"than max_image_pixels \(5,000\)"):  # fmt: skip
        built.preprocess({"image": five})


def test_sixteen_bit_grey_keeps_its_high_byte():
    grey = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 42).astype(np.uint16)
    data = io.BytesIO()
    Image.fromarray(grey).save(data, "PNG")
    assert Image.open(io.BytesIO(data.getvalue())).mode == "I;16"
    high = (grey >> 8).astype(np.uint8)
    built = processing({"channel_order": "L"}, (-1, 1, 32, 48), "UINT8")
    np.testing.assert_array_equal(built.preprocess({"image": images(data.getvalue())})["image"][0, 0], high)
    built = processing({}, (-1, 3, 32, 48), "UINT8")
    np.testing.assert_array_equal(built.preprocess({"image": images(data.getvalue())})["image"][0], [high] * 3)


def test_without_resize_the_images_of_a_request_must_be_one_size():
    built = processing({}, (-1, 3, -1, -1))
    with pytest.raises(BadRequest, match=r"input 'image', image 1: the image is 30x41 \(height x width\), not 30x40"):
        built.preprocess({"image": images(encoded("PNG", 30, 40), encoded("PNG", 30, 41))})


# -- settings that do not fit the model: a failed load, saying why -------------------------------------------------

LOAD_CASES = {
    "unknown input": ({"picture": {}}, (-1, 3, 8, 8), "FP32",
                      "image_inputs names 'picture', which is not an input of the model (its inputs: image)"),
    "not a pixel type": ({"image": {}}, (-1, 3, 8, 8), "INT64",
                         "image_inputs: input 'image' is INT64; an image input must be FP32, FP16 or UINT8"),
    "not 4 dimensions": ({"image": {}}, (-1, 32), "FP32",
                         "image_inputs: input 'image' has shape [-1, 32]; an image input has 4 dimensions (NCHW)"),
    "channels against the order": ({"image": {"channel_order": "L"}}, (-1, 3, 64, 64), "FP32",
                                   "input 'image' has 3 channels (NCHW, shape [-1, 3, 64, 64]), but channel_order L "
                                   "makes 1"),
    "the wrong layout": ({"image": {"layout": "NHWC"}}, (-1, 3, 64, 64), "FP32",
                         "has 64 channels (NHWC, shape [-1, 3, 64, 64]), but channel_order RGB makes 3"),
    "resize against the model": ({"image": {"resize": [32, 32]}}, (-1, 3, 64, 64), "FP32",
                                 "resize [32, 32] makes images of height 32, but the model's height is 64"),
    "mean for UINT8": ({"image": {"mean": [0.5, 0.5, 0.5]}}, (-1, 3, 8, 8), "UINT8",
                       "input 'image' is UINT8: it takes the pixels as they are (0..255), so mean and std cannot "
                       "apply"),
}  # fmt: skip


@pytest.mark.parametrize(("image_inputs", "shape", "datatype", "message"), LOAD_CASES.values(), ids=LOAD_CASES)
def test_image_settings_that_do_not_fit_the_model_fail_the_load(image_inputs, shape, datatype, message):
    signature = ModelSignature((TensorSpec("image", DATATYPES[datatype], shape),), ())
    config = RuntimeSettings(model_path="m.onnx", model_name="m", image_inputs=image_inputs)
    with pytest.raises(ProcessingError) as raised:
        Processing.build(config, signature)
    assert message in str(raised.value)


def test_a_labels_file_that_cannot_be_read_fails_the_load(models, tmp_path):
    missing = RuntimeSettings(model_path=models["mlp"], model_name="mlp", labels_path=tmp_path / "labels.txt")
    with pytest.raises(ModelLoadError, match=r"cannot read labels_path .*labels\.txt: No such file or directory"):
        OnnxModel.load(missing.model_path, missing)
    (tmp_path / "empty.txt").write_text("\n\n")
    empty = RuntimeSettings(model_path=models["mlp"], model_name="mlp", labels_path=tmp_path / "empty.txt")
    with pytest.raises(ModelLoadError, match=r"labels_path .*empty\.txt names no class"):
        OnnxModel.load(empty.model_path, empty)


def test_settings_against_the_model_fail_the_real_servers_load(start_runtime):
    image_inputs = json.dumps({"image": {"channel_order": "L"}})
    server = start_runtime("cnn", "--image-inputs", image_inputs, "--load-failure-exit-seconds", "0")
    event = server.wait_for_event("model_load_failed")
    assert "channel_order L makes 1" in event["reason"]
    assert server.wait() == 3


# -- warm-up goes through the preprocess stage ---------------------------------------------------------------------


def test_warm_up_decodes_an_image(models, tmp_path):
    settings = {"model_path": models["cnn"], "model_name": "cnn", "image_inputs": {"image": CNN_IMAGES}}
    assert OnnxModel.load(models["cnn"], RuntimeSettings(**settings)).warmup == WARMUP_SYNTHETIC

    warmup = tmp_path / "warmup.json"
    image = base64.b64encode(encoded("JPEG", 70, 50)).decode()
    document = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [image],
                            "parameters": {"content_type": "base64"}}]}  # fmt: skip
    warmup.write_text(json.dumps(document))
    assert OnnxModel.load(models["cnn"], RuntimeSettings(**settings, warmup_inputs_path=warmup)).warmup == WARMUP_USER

    document["inputs"][0]["data"] = [base64.b64encode(b"not an image").decode()]
    warmup.write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match=r"is not a request this model takes: input 'image': not an image"):
        OnnxModel.load(models["cnn"], RuntimeSettings(**settings, warmup_inputs_path=warmup))


# -- the classification extension's answers -------------------------------------------------------------------------


def test_top_classes_are_triton_strings_highest_first():
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [3, 1, 2, 0]], np.float32)
    # Ties: the lower index first. Classes without a label (past the file's end) are "value:index".
    assert top_classes("p", scores, 3, ["a", "b"]).tolist() == [
        ["0.500000:1:b", "0.500000:2", "0.200000:3"],
        ["3.000000:0:a", "2.000000:2", "1.000000:1:b"],
    ]
    # Integers as integers; a 1-D output is one row.
    assert top_classes("p", np.array([5, 9, 7], np.int64), 2, []).tolist() == ["9:1", "7:2"]
    # K past the classes: all of them (Triton clamps K), no longer a 400.
    assert top_classes("p", scores, 5, []).tolist() == [
        ["0.500000:1", "0.500000:2", "0.200000:3", "0.100000:0"],
        ["3.000000:0", "2.000000:2", "1.000000:1", "0.000000:3"],
    ]


def test_top_classes_rank_nan_last_and_answer_no_rows():
    scores = np.array([[np.nan, 1.0, np.nan, -np.inf, 2.0]], np.float32)
    assert top_classes("p", scores, 5, []).tolist() == [
        ["2.000000:4", "1.000000:1", "nan:0", "nan:2", "-inf:3"]  # NaN as -inf: ties, the lower index first
    ]
    assert top_classes("p", np.zeros((0, 10), np.float32), 3, []).shape == (0, 3)
    assert top_classes("p", np.zeros((0, 2, 5), np.float32), 20, []).shape == (0, 10)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.uint8, np.int64, np.uint64])
def test_top_classes_match_a_stable_full_sort(dtype):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, (7, 50)).astype(dtype)  # many ties
    for count in (1, 3, 10, 50, 60):
        got = [[int(item.split(":")[1]) for item in row] for row in top_classes("p", scores, count, [])]
        want = [np.argsort(-row.astype(np.float64), kind="stable")[:count].tolist() for row in scores]
        assert got == want, count


def test_labels_split_on_newlines_only(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("cat\r\n dog \nform\x0cfeed\n\nline\u2028sep\x1cfs\r\nlast".encode())
    assert read_labels(path) == ("cat", " dog ", "form\x0cfeed", "", "line\u2028sep\x1cfs", "last")
    path.write_bytes(b"a\nb\n")
    assert read_labels(path) == ("a", "b")


@pytest.mark.parametrize("datatype", ["BYTES", "BOOL"])
def test_classification_needs_numbers(datatype):
    signature = ModelSignature(
        (TensorSpec("x", DATATYPES["FP32"], (-1, 2)),), (TensorSpec("y", DATATYPES[datatype], (-1, 2)),)
    )
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                       "outputs": [{"name": "y", "parameters": {"classification": 1}}]})  # fmt: skip
    with pytest.raises(BadRequest, match=f"output 'y': classification needs numbers, and this output is {datatype}"):
        decode_request(body.encode(), None, signature)


# -- through the real server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_server(start_module_runtime, tmp_path_factory):
    """The sample CNN taking images: resized to 64x64, ImageNet's mean and std, labels for 8 of its 10 classes."""
    labels = tmp_path_factory.mktemp("labels") / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return start_module_runtime(
        "cnn",
        *("--image-inputs", json.dumps({"image": CNN_IMAGES})),
        *("--labels-path", str(labels), "--max-image-pixels", str(MAX_PIXELS)),
    ).wait_ready()


@pytest.fixture(scope="module")
def pixels_server(start_module_runtime):
    """The identity on [batch, 3, 32, 48] images, normalised, without resize: it answers the tensor itself."""
    return start_module_runtime("pixels", "--image-inputs", json.dumps({"image": PIXELS_IMAGES})).wait_ready()


def logits(reference, sent: list[bytes]) -> np.ndarray:
    """What the CNN answers for ``sent``: in-process ONNX Runtime on the tensor ``expected`` computes."""
    return reference("cnn", {"image": np.stack([expected(data, CNN_IMAGES) for data in sent])})[0]


def parse_classes(strings: np.ndarray) -> list[list[tuple[float, int, str | None]]]:
    rows = []
    for row in strings:
        parsed = []
        for item in row:
            value, index, *label = (item.decode() if isinstance(item, bytes) else item).split(":")
            parsed.append((float(value), int(index), label[0] if label else None))
        rows.append(parsed)
    return rows


def assert_top_classes(strings: np.ndarray, scores: np.ndarray, count: int) -> None:
    """Triton's strings for the top ``count`` of each row of ``scores``, labelled from LABELS where it has one."""
    assert strings.shape == (len(scores), count)
    for parsed, row in zip(parse_classes(strings), scores, strict=True):
        top = np.argsort(-row, kind="stable")[:count]
        assert [index for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [LABELS[i] if i < len(LABELS) else None for i in top]
        np.testing.assert_allclose([value for value, _, _ in parsed], row[top], atol=2e-6)


async def post(server, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    client = await Client.connect(server.url)
    try:
        client.send(request("POST", path, body, headers))
        return await client.answer("POST")
    finally:
        await client.close()


def binary_images(sent: list[bytes], outputs: list[dict] | None = None) -> tuple[bytes, dict[str, str]]:
    """A V2 request as tritonclient sends a BYTES tensor: binary, each element its 4-byte length then its bytes."""
    raw = b"".join(struct.pack("<I", len(data)) + data for data in sent)
    document: dict = {"inputs": [{"name": "image", "shape": [len(sent)], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": len(raw)}}]}  # fmt: skip
    if outputs is not None:
        document["outputs"] = outputs
    header = json.dumps(document).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def server_timing(answer: Answer) -> dict[str, float]:
    return {
        name: float(duration)
        for name, duration in (part.strip().split(";dur=") for part in answer.headers["server-timing"].split(","))
    }


def test_tritonclient_sends_images_and_reads_labels(cnn_server, reference):
    sent = [encoded("JPEG", 90, 120), encoded("PNG", 48, 40, seed=5)]
    client = triton.InferenceServerClient(cnn_server.address)
    try:
        metadata = client.get_model_metadata("cnn")
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert client.get_model_config("cnn")["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": []}]

        tensor = triton.InferInput("image", [len(sent)], "BYTES")
        tensor.set_data_from_numpy(np.array(sent, dtype=object))  # binary, tritonclient's default
        for binary in (True, False):
            requested = triton.InferRequestedOutput("logits", binary_data=binary, class_count=3)
            result = client.infer("cnn", [tensor], outputs=[requested])
            assert result.get_output("logits")["datatype"] == "BYTES"
            assert_top_classes(result.as_numpy("logits"), logits(reference, sent), 3)

        plain = client.infer("cnn", [tensor], outputs=[triton.InferRequestedOutput("logits")])
        np.testing.assert_allclose(plain.as_numpy("logits"), logits(reference, sent), rtol=1e-4, atol=1e-5)
    finally:
        client.close()


async def test_an_image_body_is_answered_in_json(cnn_server, reference):
    jpeg = encoded("JPEG", 100, 75, seed=6)
    answer = await post(cnn_server, "/v2/models/cnn/infer", jpeg, {"Content-Type": "image/jpeg"})
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    (output,) = answer.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [1, 10])
    np.testing.assert_allclose(np.reshape(output["data"], (1, 10)), logits(reference, [jpeg]), rtol=1e-4, atol=1e-5)
    stages = server_timing(answer)
    assert list(stages) == ["deserialize", "preprocess", "queue", "compute", "serialize", "total"]
    assert sum(stages.values()) - stages["total"] <= stages["total"] + 0.01  # ms, rounded to 3 decimals

    # Media types are case-insensitive (RFC 9110 §8.3.1).
    answer = await post(cnn_server, "/v2/models/cnn/infer", jpeg, {"Content-Type": "Image/JPEG"})
    assert answer.status == 200, answer.body

    # A body that came in pieces is read where it was assembled.
    pieces = chunked(*(jpeg[start : start + 1000] for start in range(0, len(jpeg), 1000)))
    answer = await post(
        cnn_server, "/v2/models/cnn/infer", pieces, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}
    )
    assert answer.status == 200, answer.body
    np.testing.assert_allclose(answer.json()["outputs"][0]["data"], logits(reference, [jpeg])[0], rtol=1e-4, atol=1e-5)


async def test_json_base64_with_classification_and_v1_b64(cnn_server, reference):
    png = encoded("PNG", 64, 64, seed=7)
    text = base64.b64encode(png).decode()
    document = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [text],
                    "parameters": {"content_type": "base64"}}],
        "outputs": [{"name": "logits", "parameters": {"classification": 10}}],
    }  # fmt: skip
    answer = await post(cnn_server, "/v2/models/cnn/infer", json.dumps(document).encode(), {})
    assert answer.status == 200, answer.body
    (output,) = answer.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [1, 10])
    assert_top_classes(np.array(output["data"]).reshape(1, 10), logits(reference, [png]), 10)
    assert list(server_timing(answer)) == [
        "deserialize", "preprocess", "queue", "compute", "postprocess", "serialize", "total",
    ]  # fmt: skip

    v1 = json.dumps({"instances": [{"b64": text}]}).encode()
    answer = await post(cnn_server, "/v1/models/cnn:predict", v1, {})
    assert answer.status == 200, answer.body
    np.testing.assert_allclose(answer.json()["predictions"], logits(reference, [png]), rtol=1e-4, atol=1e-5)


def _gif() -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (20, 10)).save(data, "GIF")
    return data.getvalue()


JPEG = encoded("JPEG", 50, 60, seed=8)
PNG = encoded("PNG", 50, 60, seed=8)
# (case, body and headers, status, what the error says)
BAD_IMAGES = {
    "not an image": ((b"hello, world", {"Content-Type": "image/png"}), 400,
                     "input 'image': not an image (12 bytes that are neither JPEG nor PNG)"),
    "truncated": ((JPEG[: len(JPEG) // 2], {"Content-Type": "image/jpeg"}), 400,
                  "input 'image': the JPEG image cannot be decoded: image file is truncated"),
    "unsupported format": ((_gif(), {"Content-Type": "image/gif"}), 400,
                           "input 'image': unsupported image format GIF; send JPEG or PNG"),
    "too many pixels": ((encoded("PNG", 300, 400), {"Content-Type": "image/png"}), 400,
                        "input 'image': the image is 300x400 (height x width): 120,000 pixels, more than "
                        "max_image_pixels (100,000)"),
    "the second of two": (binary_images([JPEG, PNG[: len(PNG) // 2]]), 400,
                          "input 'image', image 1: the PNG image cannot be decoded: image file is truncated"),
    "a broken header": ((b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", {"Content-Type": "image/png"}), 400,
                        "input 'image': a broken or truncated image: Truncated File Read"),
    "text, not bytes": ((json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                 "data": ["a cat"]}]}).encode(), {}), 400,
                        "input 'image': an image comes as bytes"),
    "not base64": ((json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["a cat!"],
                                            "parameters": {"content_type": "base64"}}]}).encode(), {}), 400,
                   "input 'image': BYTES data is not base64"),
    "more images than a batch": (binary_images([JPEG] * 33), 400, "33 rows exceed the model's max_batch_size of 32"),
    "classification of text": (binary_images([JPEG], [{"name": "logits", "parameters": {"classification": "3"}}]),
                               400, "output 'logits': classification must be a whole number of classes, at least 1"),
}  # fmt: skip


@pytest.mark.parametrize(("sent", "status", "message"), BAD_IMAGES.values(), ids=BAD_IMAGES)
async def test_a_bad_image_is_a_400_naming_the_input(cnn_server, reference, sent, status, message):
    body, headers = sent
    answer = await post(cnn_server, "/v2/models/cnn/infer", body, headers)
    assert_error(answer, status, message)
    # The server goes on.
    answer = await post(cnn_server, "/v2/models/cnn/infer", JPEG, {"Content-Type": "image/jpeg"})
    assert answer.status == 200, answer.body


async def test_more_classes_than_the_output_has_answers_them_all(cnn_server, reference):
    # Triton clamps K to the classes: 11 of 10 is the 10 (this was a 400 before).
    body, headers = binary_images([JPEG], [{"name": "logits", "parameters": {"classification": 11}}])
    answer = await post(cnn_server, "/v2/models/cnn/infer", body, headers)
    assert answer.status == 200, answer.body
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [1, 10]
    assert_top_classes(np.array(output["data"]).reshape(1, 10), logits(reference, [JPEG]), 10)


async def test_the_tensor_is_what_pillow_and_numpy_make(pixels_server):
    sent = [encoded("JPEG", 32, 48, seed=9), encoded("PNG", 32, 48, seed=10)]
    body, headers = binary_images(sent)
    answer = await post(pixels_server, "/v2/models/pixels/infer", body, headers)
    assert answer.status == 200, answer.body
    (output,) = answer.json()["outputs"]
    assert output["shape"] == [2, 3, 32, 48]
    want = np.stack([expected(data, PIXELS_IMAGES) for data in sent])
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), want, rtol=1e-5, atol=1e-5)

    # Without resize, an image must have the model's size.
    body, headers = binary_images([encoded("JPEG", 40, 50)])
    answer = await post(pixels_server, "/v2/models/pixels/infer", body, headers)
    assert_error(answer, 400, "input 'image': the image is 40x50 (height x width), not 32x48: without resize")


async def test_the_stages_are_measured_and_counted(cnn_server):
    async def scraped() -> tuple[dict[tuple[str, str], float], dict]:
        client = await Client.connect(cnn_server.url)
        try:
            client.send(get("/metrics"))
            metrics = (await client.answer()).body.decode()
            client.send(get("/v2/models/cnn/stats"))
            (stats,) = (await client.answer()).json()["model_stats"]
        finally:
            await client.close()
        samples = {
            (sample.name, sample.labels.get("stage", "")): sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name.startswith("kubeserve_request_duration_seconds_") and sample.labels["protocol"] == "http"
        }
        return samples, stats["inference_stats"]

    before, stats_before = await scraped()
    body, headers = binary_images([JPEG], [{"name": "logits", "parameters": {"classification": 2}}])
    for _ in range(3):
        assert (await post(cnn_server, "/v2/models/cnn/infer", body, headers)).status == 200
    assert (await post(cnn_server, "/v2/models/cnn/infer", JPEG, {"Content-Type": "image/jpeg"})).status == 200
    after, stats_after = await scraped()

    def added(name: str, stage: str) -> float:
        return after[(name, stage)] - before.get((name, stage), 0.0)

    count = "kubeserve_request_duration_seconds_count"
    assert [added(count, stage) for stage in ("deserialize", "preprocess", "compute", "postprocess", "total")] == [
        4, 4, 4, 3, 4,
    ]  # fmt: skip
    # Triton's statistics: the preprocess stage counts in compute_input, postprocess in compute_output.
    seconds = "kubeserve_request_duration_seconds_sum"
    for stat, stage in (("compute_input", "preprocess"), ("compute_output", "postprocess")):
        assert stats_after[stat]["ns"] - stats_before[stat]["ns"] >= added(seconds, stage) * 1e9 - 4


# -- stages past their timeouts: 504, and the server goes on -----------------------------------------------------


async def test_a_preprocess_past_its_timeout_is_a_504_and_holds_nobody_up(serve_in_process, monkeypatch):
    from kubeserve.runtime.images import ImageDecoder

    slow, fast = encoded("PNG", 32, 48, seed=11), encoded("PNG", 32, 48, seed=12)
    entered, release = threading.Event(), threading.Event()
    decode = ImageDecoder.decode

    def held_decode(self: ImageDecoder, items: np.ndarray) -> np.ndarray:
        if items[0] == slow:  # as a huge image would, in a thread of its own
            entered.set()
            release.wait(30)
        return decode(self, items)

    monkeypatch.setattr(ImageDecoder, "decode", held_decode)
    # Two stage threads, whatever this machine has: one held, one free.
    server = await serve_in_process(
        "pixels", image_inputs={"image": PIXELS_IMAGES}, preprocess_timeout_seconds=1.0, processing_threads=2
    )
    try:
        started = time.monotonic()
        held = asyncio.create_task(post(server, "/v2/models/pixels/infer", slow, {"Content-Type": "image/png"}))
        assert await asyncio.to_thread(entered.wait, 30)
        # While the slow image is held (until the release, below), another request is decoded, batched and
        # answered, however long it takes: the held decode holds one thread, not the server.
        answer = await post(server, "/v2/models/pixels/infer", fast, {"Content-Type": "image/png"})
        assert answer.status == 200, answer.body

        answer = await held
        waited = time.monotonic() - started
        assert_error(answer, 504, "the preprocess stage took longer than preprocess_timeout_seconds (1 s)")
        assert waited >= 1.0
        # Answered, its decode still holds its thread; the other thread goes on serving.
        assert not release.is_set()
        answer = await post(server, "/v2/models/pixels/infer", fast, {"Content-Type": "image/png"})
        assert answer.status == 200, answer.body
    finally:
        release.set()  # the late decode finishes in its thread; its result is dropped
    answer = await post(server, "/v2/models/pixels/infer", fast, {"Content-Type": "image/png"})
    assert answer.status == 200, answer.body


async def test_a_postprocess_past_its_timeout_is_a_504(serve_in_process, monkeypatch):
    release = threading.Event()

    def held_top_classes(*args: object) -> np.ndarray:
        release.wait(30)
        return top_classes(*args)

    monkeypatch.setattr("kubeserve.runtime.processing.top_classes", held_top_classes)
    server = await serve_in_process("mlp", postprocess_timeout_seconds=0.2)
    features = {"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}
    classified = {"inputs": [features], "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
    try:
        answer = await post(server, "/v2/models/mlp/infer", json.dumps(classified).encode(), {})
        assert_error(answer, 504, "the postprocess stage took longer than postprocess_timeout_seconds (0.2 s)")
        # A request without classification has no postprocess stage to wait for.
        answer = await post(server, "/v2/models/mlp/infer", json.dumps({"inputs": [features]}).encode(), {})
        assert answer.status == 200, answer.body
    finally:
        release.set()
