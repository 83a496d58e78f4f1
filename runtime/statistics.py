"""Triton's statistics extension: cumulative counts and nanoseconds per model, served as
``GET /v2/models[/{name}[/versions/{version}]]/stats``.

The durations are the ones the server already measures for each request (``exchange``) and each batch
(``batcher``); recording one is a few integer additions on the event loop, so no lock is needed. The
stages map onto Triton's: ``queue`` is the wait for a batch, ``compute_input`` the batch's input
stacking, ``compute_infer`` the model's run, ``compute_output`` the split of the outputs back into
requests; ``success`` and ``fail`` count whole requests, arrival to answer.
"""

from __future__ import annotations

import time
from typing import Any

# Inference stats Triton reports that this server has no source for (it has no response cache).
_ALWAYS_ZERO = ("cache_hit", "cache_miss")
_BATCH_STAGES = ("compute_input", "compute_infer", "compute_output")


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1e9)


class Duration:
    """A count and the nanoseconds they took together: Triton's ``StatisticDuration``."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += _nanoseconds(seconds)

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class BatchSizeStatistics:
    """The compute of every batch of one size."""

    __slots__ = ("compute_infer", "compute_input", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class ModelStatistics:
    """One model version's statistics since the server started."""

    def __init__(self) -> None:
        self.last_inference_ms = 0  # milliseconds since the epoch; 0: never
        self.inference_count = 0  # rows (Triton counts each batch entry as one inference)
        self.execution_count = 0  # batches run by the model
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self._batches: dict[int, BatchSizeStatistics] = {}

    def request_succeeded(
        self, rows: int, total: float, queue: float, compute_input: float, compute_infer: float, compute_output: float
    ) -> None:
        self.inference_count += rows
        self.success.add(total)
        self.queue.add(queue)
        self.compute_input.add(compute_input)
        self.compute_infer.add(compute_infer)
        self.compute_output.add(compute_output)

    def request_failed(self, total: float) -> None:
        self.fail.add(total)

    def batch_computed(self, rows: int, compute_input: float, compute_infer: float, compute_output: float) -> None:
        self.execution_count += 1
        # Once per batch, not per request: the wall clock is only read here.
        self.last_inference_ms = time.time_ns() // 1_000_000
        batch = self._batches.get(rows)
        if batch is None:
            batch = self._batches[rows] = BatchSizeStatistics()
        batch.compute_input.add(compute_input)
        batch.compute_infer.add(compute_infer)
        batch.compute_output.add(compute_output)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        inference_stats = {
            "success": self.success.as_json(),
            "fail": self.fail.as_json(),
            "queue": self.queue.as_json(),
            "compute_input": self.compute_input.as_json(),
            "compute_infer": self.compute_infer.as_json(),
            "compute_output": self.compute_output.as_json(),
            **{stat: {"count": 0, "ns": 0} for stat in _ALWAYS_ZERO},
        }
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": inference_stats,
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": batch.compute_input.as_json(),
                    "compute_infer": batch.compute_infer.as_json(),
                    "compute_output": batch.compute_output.as_json(),
                }
                for size, batch in sorted(self._batches.items())
            ],
            "memory_usage": [],
        }


def _sum_durations(durations: list[dict[str, int]]) -> dict[str, int]:
    return {"count": sum(d["count"] for d in durations), "ns": sum(d["ns"] for d in durations)}


def merge_model_stats(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' entries for one model version as one: counts and durations summed, batch sizes
    merged, the latest inference kept."""
    first = entries[0]
    batches: dict[int, list[dict[str, Any]]] = {}
    for entry in entries:
        for batch in entry["batch_stats"]:
            batches.setdefault(batch["batch_size"], []).append(batch)
    return {
        "name": first["name"],
        "version": first["version"],
        "last_inference": max(entry["last_inference"] for entry in entries),
        "inference_count": sum(entry["inference_count"] for entry in entries),
        "execution_count": sum(entry["execution_count"] for entry in entries),
        "inference_stats": {
            stat: _sum_durations([entry["inference_stats"][stat] for entry in entries])
            for stat in first["inference_stats"]
        },
        "response_stats": {},
        "batch_stats": [
            {"batch_size": size, **{stage: _sum_durations([b[stage] for b in same]) for stage in _BATCH_STAGES}}
            for size, same in sorted(batches.items())
        ],
        "memory_usage": [],
    }
