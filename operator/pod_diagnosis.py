"""Why a runtime pod is not serving, in the pod's own words: one reason a user can act on, and its message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubeserve.operator import naming

# The runtime's exit codes (see the runtime contract).
EXIT_INVALID_SETTINGS = 2
EXIT_MODEL_LOAD_FAILED = 3

# The kubelet's reason for a container the kernel killed at its cgroup's memory limit.
OOM_KILLED = "OOMKilled"
# The kubelet's reason for a pod it evicted: here, its emptyDir of fetched files past its sizeLimit (or the node short
# of disk or memory); the pod's message says which.
EVICTED = "Evicted"
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")
CONFIG_ERROR_REASONS = ("CreateContainerConfigError", "CreateContainerError")

# When pods disagree, the problem listed first is reported: the one furthest from a serving pod.
SEVERITY = (
    "Unschedulable",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "ModelFetchFailed",
    "ModelOptimizationFailed",
    "RuntimeConfigRejected",
    "ModelLoadFailed",
    OOM_KILLED,
    EVICTED,
    "CrashLoopBackOff",
)
# What each init container's failure is called.
_INIT_FAILURES = {
    naming.FETCH_CONTAINER: ("ModelFetchFailed", "fetching the model or a file beside it failed"),
    naming.OPTIMIZE_CONTAINER: ("ModelOptimizationFailed", "optimizing the model failed"),
}


@dataclass(frozen=True)
class PodProblem:
    reason: str
    message: str


def diagnose(pod: Mapping[str, Any]) -> PodProblem | None:
    """The pod's problem, or None when it is running, starting or already serving."""
    if is_ready(pod):
        return None  # restarted and recovered: what went wrong before is history
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    found = _unschedulable(status) or _evicted(status) or _init_problem(status) or _runtime_problem(status)
    if found is None:
        return None
    reason, message = found
    return PodProblem(reason, f"pod {name}: {message}")


def worst(pods: Sequence[Mapping[str, Any]]) -> PodProblem | None:
    problems = [problem for problem in map(diagnose, pods) if problem is not None]
    if any(map(is_ready, pods)):
        # An evicted pod stays (Failed) until it is collected, long after its replacement serves: no problem then.
        problems = [problem for problem in problems if problem.reason != EVICTED]
    if not problems:
        return None
    return min(problems, key=lambda problem: SEVERITY.index(problem.reason))


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _unschedulable(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for condition in status.get("conditions") or []:
        scheduled = condition.get("type") == "PodScheduled" and condition.get("status") == "False"
        if scheduled and condition.get("reason") == "Unschedulable":
            return "Unschedulable", condition.get("message") or "no node can run the pod"
    return None


def _evicted(status: Mapping[str, Any]) -> tuple[str, str] | None:
    if status.get("reason") == EVICTED:
        return EVICTED, status.get("message") or "the kubelet evicted the pod"
    return None


def _init_problem(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for container in status.get("initContainerStatuses") or []:
        name = container.get("name")
        if name not in _INIT_FAILURES:
            continue
        state, last = container.get("state") or {}, container.get("lastState") or {}
        if (state.get("terminated") or {}).get("exitCode") == 0:
            continue  # it has since succeeded: an earlier failure (lastState) is history, not why the pod waits
        waiting = state.get("waiting") or {}
        if problem := _waiting_problem(waiting):
            return problem
        for terminated in (state.get("terminated"), last.get("terminated")):
            if terminated and terminated.get("exitCode", 0) != 0:
                if terminated.get("reason") == OOM_KILLED:
                    return OOM_KILLED, _oom_message(name, terminated)
                reason, fallback = _INIT_FAILURES[name]
                return reason, _terminated_message(terminated, fallback)
    return None


def _runtime_problem(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for container in status.get("containerStatuses") or []:
        if container.get("name") != naming.RUNTIME_CONTAINER:
            continue
        state, last = container.get("state") or {}, container.get("lastState") or {}
        waiting = state.get("waiting") or {}
        if problem := _waiting_problem(waiting):
            return problem
        terminated = state.get("terminated") or last.get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            code = terminated.get("exitCode")
            if terminated.get("reason") == OOM_KILLED:
                return OOM_KILLED, _oom_message(naming.RUNTIME_CONTAINER, terminated)
            if code == EXIT_MODEL_LOAD_FAILED:
                return "ModelLoadFailed", _terminated_message(terminated, "the model failed to load")
            if code == EXIT_INVALID_SETTINGS:
                return "RuntimeConfigRejected", _terminated_message(terminated, "the runtime rejected its settings")
            if waiting.get("reason") == "CrashLoopBackOff" or state.get("terminated"):
                return "CrashLoopBackOff", _terminated_message(terminated, f"the runtime exited with code {code}")
    return None


def _waiting_problem(waiting: Mapping[str, Any]) -> tuple[str, str] | None:
    """A container that cannot start: its image cannot be pulled, or its configuration is broken."""
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        return "ImagePullBackOff", _waiting_message(waiting)
    if waiting.get("reason") in CONFIG_ERROR_REASONS:
        return "CreateContainerConfigError", _waiting_message(waiting)
    return None


def _waiting_message(waiting: Mapping[str, Any]) -> str:
    return waiting.get("message") or waiting.get("reason") or "waiting"


def _oom_message(container: str, terminated: Mapping[str, Any]) -> str:
    # Not the message: with FallbackToLogsOnError it is the log's last lines, written before the kill.
    return (
        f"container {container} was killed for using more memory than its limit "
        f"(exit code {terminated.get('exitCode')}, {OOM_KILLED})"
    )


def _terminated_message(terminated: Mapping[str, Any], fallback: str) -> str:
    # With FallbackToLogsOnError, message holds the termination log or the tail of the container's output.
    text = (terminated.get("message") or "").strip()
    detail = f"exit code {terminated.get('exitCode')}"
    if terminated.get("reason") and terminated.get("reason") != "Error":
        detail += f", {terminated['reason']}"
    return f"{text or fallback} ({detail})"
