"""The plain reference server of `make bench`'s comparison: what one writes in an afternoon to serve an ONNX model.

aiohttp on uvloop, the standard library's ``json``, ``session.run`` called in the handler (no batching, no
metrics, no validation), ONNX Runtime with 2 intra-op threads. It speaks just enough of V2
``/v2/models/{model}/infer`` for bench/loadgen.py to send it the same requests as the runtime: JSON, or a
JSON header followed by binary tensors (Triton's extension). Logs ``listening`` and ``model_ready`` as JSON
lines on stderr, like the runtime, so bench/server.py starts both the same way.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import numpy as np
import onnxruntime as ort
import uvloop
from aiohttp import web

BINARY_HEADER = "Inference-Header-Content-Length"


def make_app(session: ort.InferenceSession, model_name: str) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        header_length = request.headers.get(BINARY_HEADER)
        document = json.loads(body if header_length is None else body[: int(header_length)])
        spec = document["inputs"][0]
        if header_length is None:
            data = np.asarray(spec["data"], dtype=np.float32)
        else:
            data = np.frombuffer(body, dtype=np.float32, offset=int(header_length))
        (output,) = session.run(None, {spec["name"]: data.reshape(spec["shape"])})
        answer = {"model_name": model_name, "outputs": [{"name": "y", "shape": list(output.shape), "datatype": "FP32"}]}
        if document.get("parameters", {}).get("binary_data_output"):
            answer["outputs"][0]["parameters"] = {"binary_data_size": output.nbytes}
            header = json.dumps(answer).encode()
            return web.Response(body=header + output.tobytes(), headers={BINARY_HEADER: str(len(header))})
        answer["outputs"][0]["data"] = output.ravel().tolist()
        return web.Response(text=json.dumps(answer), content_type="application/json")

    app = web.Application(client_max_size=64 * 2**20)  # a batch of cnn images in JSON is megabytes
    app.router.add_post(f"/v2/models/{model_name}/infer", infer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--port", type=int, default=0, help="0: a free port, logged")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(args.model_path, sess_options=options, providers=["CPUExecutionProvider"])
    # Bound here rather than by aiohttp so that the port (0: any free one) is known before serving.
    listener = socket.create_server(("127.0.0.1", args.port), backlog=1024)
    for event in ({"event": "listening", "port": listener.getsockname()[1]}, {"event": "model_ready"}):
        print(json.dumps(event), file=sys.stderr, flush=True)
    # run_app turns SIGTERM into a graceful exit; no access log, as nobody reads stderr once ready.
    app = make_app(session, args.model_name)
    web.run_app(app, sock=listener, print=None, access_log=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
