"""An image per request, decoded where: in the server (the sample CNN with an image input: JPEG bytes in, as
``samples/isvc-image.yaml`` serves it) against the client (the same decode, resize and normalization done by the
caller, the tensor sent in binary). Same model, same load generator, same concurrency; the server CPU per request,
and the client's CPU per image for the work it took on.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kubeserve.runtime.samples import write_sample
from payloads import Payload
from PIL import Image
from server import RunningServer

# The sample CNN's input, and how samples/isvc-image.yaml has the server prepare it (ImageNet's mean and std).
INPUT, SIZE = "image", (64, 64)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_INPUTS = {INPUT: {"resize": list(SIZE), "layout": "NCHW", "channel_order": "RGB", "mean": MEAN, "std": STD}}
# A photo-sized JPEG: what a client has before anything is done to it.
PHOTO = (640, 480)
CONCURRENCY = 32

Drive = Callable[[RunningServer, Payload, int, float, Path], dict]


@dataclass(frozen=True)
class ImageRow:
    where: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float
    client_cpu_us_per_request: float  # the caller's own decode, resize and normalization


def photo(seed: int = 3) -> bytes:
    """A JPEG of smooth noise (compresses like a photo, not like flat colour)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(PHOTO[1] // 8, PHOTO[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(PHOTO, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def client_tensor(jpeg: bytes) -> np.ndarray:
    """What the client computes when the server takes tensors: the server's preprocessing, done by the caller."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((SIZE[1], SIZE[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    normalized = (pixels - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1)[np.newaxis])


def cpu_per_call(work: Callable[[], object], seconds: float = 1.0) -> float:
    """Microseconds of this process's CPU per call of ``work``."""
    calls, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        work()
        calls += 1
    return (time.process_time() - cpu) / calls * 1e6


def _binary(name: str, datatype: str, shape: list[int], raw: bytes) -> Payload:
    header = json.dumps(
        {
            "inputs": [
                {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return Payload(header + raw, {"Inference-Header-Content-Length": str(len(header))}, 1)


def image_payload(jpeg: bytes) -> Payload:
    """One JPEG as a V2 BYTES tensor in binary: 4-byte little-endian length, then the bytes."""
    return _binary(INPUT, "BYTES", [1], len(jpeg).to_bytes(4, "little") + jpeg)


def tensor_payload(tensor: np.ndarray) -> Payload:
    return _binary(INPUT, "FP32", list(tensor.shape), tensor.tobytes())


def measure_image_path(work: Path, seconds: float, drive: Drive) -> list[ImageRow]:
    model = write_sample("cnn", work / "image-cnn.onnx")
    jpeg = photo()
    rows = []
    decoding = ("--image-inputs", json.dumps(IMAGE_INPUTS))
    for where, flags, payload, client_cpu in (
        ("server decodes (JPEG in)", decoding, image_payload(jpeg), 0.0),
        (
            "client decodes (FP32 tensor in)",
            (),
            tensor_payload(client_tensor(jpeg)),
            cpu_per_call(lambda: client_tensor(jpeg)),
        ),
    ):
        with RunningServer(model, "cnn", *flags) as server:
            result = drive(server, payload, CONCURRENCY, seconds, work / "body")
        rows.append(
            ImageRow(
                where,
                result["requests_per_second"],
                result["p50_ms"],
                result["p99_ms"],
                result["server_cpu_us_per_request"],
                client_cpu,
            )
        )
        print(
            f"image path {where:32} {result['requests_per_second']:7,.0f} req/s p50 {result['p50_ms']:6.2f} ms "
            f"p99 {result['p99_ms']:6.2f} ms server cpu {result['server_cpu_us_per_request']:6,.0f} µs/req "
            f"client cpu {client_cpu:6,.0f} µs/req",
            flush=True,
        )
    return rows


def render_image_path(rows: list[ImageRow]) -> str:
    lines = [
        f"One {PHOTO[0]}x{PHOTO[1]} JPEG per request to the sample CNN ({SIZE[0]}x{SIZE[1]} input, resized and "
        f"normalized as samples/isvc-image.yaml asks), {CONCURRENCY} connections, binary tensors both ways:",
        "",
        "| where the image is decoded | req/s | p50 ms | p99 ms | server CPU µs/req | client CPU µs/req "
        "| total CPU µs/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        total = row.server_cpu_us_per_request + row.client_cpu_us_per_request
        lines.append(
            f"| {row.where} | {row.requests_per_second:,.0f} | {row.p50_ms:.2f} | {row.p99_ms:.2f} "
            f"| {row.server_cpu_us_per_request:,.0f} | {row.client_cpu_us_per_request:,.0f} | {total:,.0f} |"
        )
    return "\n".join(lines)
