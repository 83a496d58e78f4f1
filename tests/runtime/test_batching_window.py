"""The batching window on a real server, a real event loop and real time: bursts with idle gaps between them,
served with the CPU sample's own batching settings exactly as the operator renders them for its pods. A
request that arrives when no other traffic follows must still leave after its window (a forgotten wake-up
made such requests wait for the next burst, or forever)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[2]
OPERATOR = str(Path(sys.executable).with_name("kubeserve-operator"))
BODY = json.dumps({"inputs": [{"name": "features", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]})


def rendered_runtime_config(sample: Path) -> dict:
    """The runtime.yaml the operator puts in the sample's ConfigMap (what its pods read)."""
    result = subprocess.run([OPERATOR, "render", "-f", str(sample)], capture_output=True, text=True, check=True)
    (config_map,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc["kind"] == "ConfigMap"]
    return yaml.safe_load(config_map["data"]["runtime.yaml"])


async def bursts(url: str, count: int, seed: int) -> list[int | str]:
    """``count`` bursts of 1-40 concurrent requests on keep-alive connections, idle gaps between them."""
    rng = random.Random(seed)
    outcomes: list[int | str] = []
    # The window is 2 ms: a request still waiting at 30 s was forgotten (a busy machine answers well within it).
    timeout = aiohttp.ClientTimeout(total=30)

    async def call(session: aiohttp.ClientSession) -> None:
        try:
            async with session.post(url, data=BODY, timeout=timeout) as response:
                await response.read()
                outcomes.append(response.status)
        except TimeoutError:
            outcomes.append("no answer within 30 s")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=40)) as session:
        for _ in range(count):
            await asyncio.gather(*(call(session) for _ in range(rng.randint(1, 40))))
            await asyncio.sleep(rng.uniform(0.005, 0.05))  # load shape: the batcher goes idle in between
    return outcomes


def test_bursts_with_gaps_are_all_answered_with_the_cpu_samples_batching(start_runtime, models, tmp_path):
    config = rendered_runtime_config(REPO / "samples" / "isvc-cpu.yaml")
    assert config["max_queue_delay_microseconds"] > 0  # the sample sets a window: that is what this test is for
    config_file = tmp_path / "runtime.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # Flags override the file: the model is the same sample, built for the tests instead of read from the image.
    server = start_runtime(None, "--config", str(config_file), "--model-path", str(models["mlp"])).wait_ready()

    outcomes = asyncio.run(bursts(f"{server.url}/v2/models/mlp/infer", count=40, seed=6))

    assert outcomes
    assert [o for o in outcomes if o != 200] == []
