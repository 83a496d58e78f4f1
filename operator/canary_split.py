"""How a canary step splits the replica total between the canary and the stable revision: pure.

The rollout (``rollout``) chooses the weight; these functions turn it into replicas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """Replicas wanted for each side of a canary step. ``canary + stable`` may exceed the total while canary pods
    start (a surge): the stable side gives up a pod only once a canary pod is ready to take its place."""

    canary: int
    stable: int


def canary_replicas(total: int, weight: int) -> int:
    """The canary's share of ``total`` for a step's ``weight`` (percent), within one replica of exact.

    0 is none and 100 is all. In between, at least one canary pod (the step must measure something) and, from a
    total of 2, at least one stable pod (a step short of 100 still has its baseline to compare with).
    """
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100, not {weight}")
    if total <= 0 or weight == 0:
        return 0
    if weight == 100:
        return total
    exact = total * weight / 100
    nearest = math.floor(exact + 0.5)  # half up: the same answer whatever Python's rounding of halves
    return min(max(nearest, 1), max(total - 1, 1))


def split_replicas(total: int, weight: int, canary_ready: int) -> Split:
    """The split of ``total`` at ``weight``, never below the total in ready capacity.

    The stable side keeps ``total - canary_ready`` until the canary has its share ready, then ``total - canary``:
    a canary pod that is not ready yet (or never gets there) takes no stable pod away. Recomputed from the current
    total each time, so the split keeps following the weight when the HPA changes the total mid-step.
    """
    canary = canary_replicas(total, weight)
    stable = max(total - min(canary_ready, canary), 0)
    return Split(canary, stable)
