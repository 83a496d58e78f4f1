"""A server's process tree as /proc shows it: the process and its descendants (a supervisor's workers), and what
the kernel counts for each. Processes that exit while they are read are left out. And the bench's child processes
pinned to CPUs of their own (``pinned_to``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, those still there."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = [
                int(child)
                for task in Path(f"/proc/{current}/task").iterdir()
                for child in (task / "children").read_text().split()
            ]
        except OSError:
            continue
        tree.append(current)
        pending += children
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_bytes(pid: int, field: str) -> int:
    """A memory field of /proc/PID/status (``VmRSS``, ``VmHWM``) in bytes; 0 if the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(process) for process in process_tree(pid))


def tree_bytes(pid: int, field: str) -> int:
    return sum(status_bytes(process, field) for process in process_tree(pid))


def pinned_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child process to ``cpus``; None (no pinning) for None or none."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
