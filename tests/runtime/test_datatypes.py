"""Every datatype the protocol carries, through JSON and through binary tensors, both ways."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kubeserve.runtime.datatypes import DATATYPES

SAMPLES = {
    "BOOL": np.array([[True, False], [False, True]]),
    "UINT8": np.array([[0, 255], [7, 8]], np.uint8),
    "UINT16": np.array([[0, 65535], [7, 8]], np.uint16),
    "UINT32": np.array([[0, 4294967295], [7, 8]], np.uint32),
    "UINT64": np.array([[0, 2**63], [7, 8]], np.uint64),
    "INT8": np.array([[-128, 127], [7, 8]], np.int8),
    "INT16": np.array([[-32768, 32767], [7, 8]], np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1], [7, 8]], np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1], [7, 8]], np.int64),
    "FP16": np.array([[0.5, -65504], [1.5, 0.0009765625]], np.float16),
    "FP32": np.array([[0.1, -3.4e38], [1e-30, 2.5]], np.float32),
    "FP64": np.array([[0.1, -1.7e308], [1e-300, 2.5]], np.float64),
    "BYTES": np.array([[b"hello", b""], ["\u00fcn\u00efcode".encode(), b"x" * 300]], dtype=object),
}


def test_every_datatype_is_sampled():
    assert set(SAMPLES) == set(DATATYPES)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_through_tritonclient(start_runtime, binary):
    server = start_runtime("types").wait_ready()
    client = triton.InferenceServerClient(server.address)
    inputs, outputs = [], []
    for name, values in SAMPLES.items():
        tensor = triton.InferInput(f"in_{name}", list(values.shape), name)
        tensor.set_data_from_numpy(values, binary_data=binary)
        inputs.append(tensor)
        outputs.append(triton.InferRequestedOutput(f"out_{name}", binary_data=binary))
    result = client.infer("types", inputs, outputs=outputs)
    for name, values in SAMPLES.items():
        got = result.as_numpy(f"out_{name}")
        assert got.shape == values.shape, name
        if name == "BYTES":
            expected = values if binary else np.vectorize(lambda b: b.decode(), otypes=[object])(values)
            got = (
                got
                if binary
                else np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else s, otypes=[object])(got)
            )
            assert got.tolist() == expected.tolist()
        else:
            assert got.dtype == values.dtype, name
            np.testing.assert_array_equal(got, values, err_msg=name)
    client.close()


def test_json_integers_are_range_checked_and_floats_refused(start_runtime):
    server = start_runtime("types").wait_ready()

    def send(datatype: str, data: list) -> requests.Response:
        body = {"inputs": []}
        for name in SAMPLES:
            value = (
                data
                if name == datatype
                else (["a", "b"] if name == "BYTES" else [True, False] if name == "BOOL" else [1, 2])
            )
            body["inputs"].append({"name": f"in_{name}", "shape": [1, 2], "datatype": name, "data": value})
        return requests.post(f"{server.url}/v2/models/types/infer", json=body)

    assert send("UINT8", [0, 255]).status_code == 200
    overflow = send("UINT8", [0, 256])
    assert overflow.status_code == 400
    assert "out of range for UINT8" in overflow.json()["error"]
    fractional = send("INT32", [1.5, 2])
    assert fractional.status_code == 400
    assert "fractional numbers, not INT32 values" in fractional.json()["error"]
    not_bool = send("BOOL", [1, 0])
    assert not_bool.status_code == 400
    strings = send("FP32", ["1.0", "2.0"])
    assert strings.status_code == 400
    assert "strings" in strings.json()["error"]
