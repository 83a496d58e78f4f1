"""A closed-loop gRPC load generator: bench/loadgen.py's counterpart for ``ModelInfer``.

Each of ``--concurrency`` callers sends the same pre-serialized ``ModelInferRequest`` (``--body``), waits for the
answer, and sends again; the callers share ``--connections`` channels (each its own HTTP/2 connection, as separate
clients would have), round-robin. Requests and answers cross the channel as bytes, never parsed here: what the
client costs stays out of the measurement as far as Python allows. After ``--warmup`` seconds it measures for
``--duration`` seconds: requests/s, latency percentiles, and (with ``--server-pid``) the server's CPU-seconds over
that window, read from /proc for its process tree. Prints one JSON object with loadgen.py's keys (``statuses`` by
gRPC status name). Targets 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc

# PYTHONSAFEPATH keeps the script's folder off sys.path (the repository root holds `operator/`); add bench/ only.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import summary
from processes import tree_cpu_seconds

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
# Each channel its own connection (channels in one process share them otherwise); no size limit on answers.
OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]


async def drive(args: argparse.Namespace, request: bytes) -> dict:
    host = args.address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit("the load generator only targets this machine (127.0.0.1)")
    channels = [grpc.aio.insecure_channel(args.address, options=OPTIONS) for _ in range(args.connections)]
    calls = [channel.unary_unary(MODEL_INFER) for channel in channels]  # bytes in, bytes out
    for channel in channels:
        await channel.channel_ready()
    window_start = time.perf_counter() + args.warmup
    window_end = window_start + args.duration
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    cpu: dict[str, float] = {}

    async def caller(index: int) -> None:
        call = calls[index % len(calls)]
        while (started := time.perf_counter()) < window_end:
            try:
                await call(request)
                status = "OK"
            except grpc.aio.AioRpcError as error:
                status = error.code().name
            if started >= window_start:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    async def watch_cpu() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        cpu["start"] = tree_cpu_seconds(args.server_pid)
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        cpu["end"] = tree_cpu_seconds(args.server_pid)

    tasks = [caller(index) for index in range(args.concurrency)]
    if args.server_pid:
        tasks.append(watch_cpu())
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()
    return summary(latencies, statuses, args.duration, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--body", required=True, help="file holding a serialized ModelInferRequest")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--connections", type=int, default=0, help="channels the callers share; 0: one each")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--server-pid", type=int)
    args = parser.parse_args()
    args.connections = args.connections or args.concurrency
    import uvloop

    print(json.dumps(uvloop.run(drive(args, Path(args.body).read_bytes()))))


if __name__ == "__main__":
    main()
