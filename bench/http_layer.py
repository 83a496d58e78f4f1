"""What the HTTP layer costs: the tiny-model floors of `make bench` against the server the requests go through.

On the comparison's tiny model, at concurrency 1 and 32, with the bench's load generator
(``python bench/http_layer.py``):

- ``plain`` and ``kubeserve``: as ``make bench`` runs them (bench/plain_server.py, ``kubeserve-runtime serve``);
- ``..., fixed answer``: an HTTP layer alone, answering a constant body to every POST: aiohttp's (what the
  runtime was served with before, and what the plain server uses), the runtime's own (``runtime/server/http.py``
  with its application and router), uvicorn's with a bare ASGI application (``uvicorn`` installed), and a bare
  asyncio protocol parsing with httptools and nothing else (the floor any Python server on this loop stands on).

They say what a request costs before any model work.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as comparison_models
from payloads import json_payload
from server import PlainServer, RunningServer

FIXED = b'{"model_name":"tiny","outputs":[{"name":"y","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}'
KINDS = (
    "kubeserve's HTTP layer, fixed answer",
    "aiohttp, fixed answer",
    "uvicorn + ASGI, fixed answer",
    "bare httptools, fixed answer",
)


class ProbeServer(RunningServer):
    """This file, serving ``kind`` on a free port of 127.0.0.1."""

    def __init__(self, model_path: Path, model_name: str, kind: str) -> None:
        command = [sys.executable, __file__, "--serve", kind, "--model-path", str(model_path)]
        self._start(command, model_name)


def _listening() -> socket.socket:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    for event in ({"event": "listening", "port": listener.getsockname()[1]}, {"event": "model_ready"}):
        print(json.dumps(event), file=sys.stderr, flush=True)
    return listener


def _httptools_protocol(answer: Callable[[bytes], Awaitable[bytes]]) -> type[asyncio.Protocol]:
    """One POST route answered by ``answer``: every request on every connection, in order (no pipelining)."""
    import httptools

    class Connection(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body, self.body = b"".join(self.body), []
            asyncio.get_running_loop().create_task(self.respond(body))

        async def respond(self, body: bytes) -> None:
            out = await answer(body)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(out)
            self.transport.write(head + out)

    return Connection


async def _serve(kind: str, model_path: Path) -> None:
    loop = asyncio.get_running_loop()
    if kind == "aiohttp, fixed answer":
        from aiohttp import web

        async def fixed(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=FIXED, content_type="application/json")

        app = web.Application()
        app.router.add_post("/v2/models/tiny/infer", fixed)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, _listening()).start()
        await asyncio.Event().wait()  # until SIGTERM
    elif kind == "uvicorn + ASGI, fixed answer":
        import uvicorn

        async def asgi(_scope: dict, receive: Callable, send: Callable) -> None:
            while (await receive()).get("more_body"):
                pass
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(FIXED)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": FIXED})

        config = uvicorn.Config(asgi, loop="none", http="httptools", lifespan="off", access_log=False)
        await uvicorn.Server(config).serve(sockets=[_listening()])
    elif kind == "kubeserve's HTTP layer, fixed answer":
        from kubeserve.runtime.config import RuntimeSettings
        from kubeserve.runtime.metrics import ServerMetrics
        from kubeserve.runtime.server.application import Application
        from kubeserve.runtime.server.messages import Request, Response
        from kubeserve.runtime.server.router import Router
        from kubeserve.runtime.server.state import ServerState

        async def fixed_answer(state: ServerState, request: Request) -> Response:
            return Response(FIXED)

        router = Router()
        router.post("/v2/models/{name}/infer", fixed_answer)
        state = ServerState(RuntimeSettings(model_path=model_path, model_name="tiny"), ServerMetrics("tiny", "1"))
        application = Application(state, router, state.connections)
        server = await loop.create_server(application.connection, sock=_listening())
        await server.serve_forever()
    else:

        async def constant(body: bytes) -> bytes:
            return FIXED

        server = await loop.create_server(_httptools_protocol(constant), sock=_listening())
        await server.serve_forever()


def _installed(kind: str) -> bool:
    """uvicorn comes with the test dependencies (kserve's), not the runtime's."""
    return not kind.startswith("uvicorn") or importlib.util.find_spec("uvicorn") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(_serve(args.serve, args.model_path))
        return

    import tempfile

    from run import drive

    work = Path(tempfile.mkdtemp(prefix="kubeserve-http-"))
    path = comparison_models.write_model("tiny", work / "tiny.onnx")
    payload = json_payload("tiny", 1, inputs=comparison_models.INPUTS)
    servers = {
        "plain": lambda: PlainServer(path, "tiny"),
        "kubeserve": lambda: RunningServer(path, "tiny"),
        **{kind: (lambda kind=kind: ProbeServer(path, "tiny", kind)) for kind in KINDS if _installed(kind)},
    }
    print("| server | c=1 p50 ms | c=1 CPU µs/req | c=32 req/s | c=32 CPU µs/req |\n|---|---:|---:|---:|---:|")
    for name, start in servers.items():
        with start() as server:
            one = drive(server, payload, 1, args.seconds, work / "body")
            many = drive(server, payload, 32, args.seconds, work / "body")
        print(
            f"| {name} | {one['p50_ms']:.3f} | {one['server_cpu_us_per_request']:,.0f} "
            f"| {many['requests_per_second']:,.0f} | {many['server_cpu_us_per_request']:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
