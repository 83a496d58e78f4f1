"""How many CPUs this process may use, which is what ONNX Runtime's threads default to (``intra_op_num_threads``
0) and what ``workers`` share: its affinity (a container's cpuset), capped by its cgroup's CPU quota (a pod's CPU
limit), which the affinity does not show. ORT's own default counts the machine's cores instead, and pins its
threads to them, out of any narrower affinity."""

from __future__ import annotations

import math
import os
from decimal import Decimal
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
MAX_WORKERS = 64  # the setting's bound, and the CRD's


def workers_for_cores(cores: Decimal | float) -> int:
    """Workers for ``cores`` CPUs: one per whole core, since one server process keeps about one busy (its event loop,
    under one GIL), and at least one. What the operator runs in a CPU pod by default, for its CPU request."""
    return max(1, min(MAX_WORKERS, math.floor(cores)))


def cpus_per_worker(cpus: int, workers: int) -> int:
    """One server process's share of ``cpus`` when ``workers`` share them: at least one."""
    return max(1, cpus // workers)


def processing_threads(configured: int, workers: int) -> int:
    """Threads running one server process's preprocess and postprocess stages (and processes, for a handler that
    holds the GIL): ``configured`` (the ``processing_threads`` setting), else the process's share of the CPUs."""
    return configured or cpus_per_worker(available_cpus(), workers)


def available_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity (a container's cpuset), capped by its cgroup's CPU quota (a pod's
    CPU limit), which the affinity does not show."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(cgroup_cpu_max)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cpu_quota(cgroup_cpu_max: Path) -> float | None:
    """CPUs per second the cgroup (v2) allows, from ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD": none)."""
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)
