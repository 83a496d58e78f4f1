"""Revisions of an InferenceService: their names, and how the replica total is split between two of them.

A revision is one distinct (model version, uri, runtime template and settings); it runs as its own Deployment
``NAME-<revision>`` behind its own Service of that name. Both functions here are pure: the operator computes the
digest of the rendered pod template and reads the replica counts; the rollout (``rollout``) chooses the weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kubeserve.operator import naming

# ``NAME-<revision>`` names the revision's Service, whose name is a DNS-1035 label.
MAX_OBJECT_NAME = naming.MAX_SERVICE_NAME
# The digest part of a revision name: 6 hex digits tell 16 M configurations apart, and a collision needs the same
# sanitised version too.
DIGEST_LENGTH = 6
# The version part's length when the InferenceService's name leaves room for it: an InferenceService name of up to
# 40 characters (63 - 1 - 15 - 1 - 6) keeps the whole budget. Longer names shrink the version part, down to none
# (then the revision is the digest alone), which fits names of up to 56 characters.
VERSION_BUDGET = 15
MAX_NAME_WITH_FULL_VERSION = MAX_OBJECT_NAME - 1 - VERSION_BUDGET - 1 - DIGEST_LENGTH
MAX_NAME = MAX_OBJECT_NAME - 1 - DIGEST_LENGTH
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NOT_LABEL = re.compile(r"[^a-z0-9]+")
_HEX = re.compile(r"^[0-9a-f]+$")


def revision_name(version: str, digest: str, *, isvc_name: str = "") -> str:
    """``<version>-<digest[:6]>``: the version lowercased, every run of other characters as one '-', cut to what
    ``NAME-<revision>`` leaves (``VERSION_BUDGET`` at most); a DNS-1123 label, the same for the same inputs.

    ``digest``: a lowercase hex digest of everything that makes the revision (``runtime_config.config_hash`` of the
    rendered pod template, say). ``isvc_name``: the InferenceService's, to fit ``NAME-<revision>`` in 63 characters.
    """
    if len(digest) < DIGEST_LENGTH or not _HEX.match(digest):
        raise ValueError(f"digest must be at least {DIGEST_LENGTH} lowercase hex digits, not {digest!r}")
    if len(isvc_name) > MAX_NAME:
        raise ValueError(f"an InferenceService name of {len(isvc_name)} characters leaves no room for a revision")
    room = (
        min(VERSION_BUDGET, MAX_OBJECT_NAME - len(isvc_name) - 1 - DIGEST_LENGTH - 1) if isvc_name else VERSION_BUDGET
    )
    readable = _NOT_LABEL.sub("-", version.lower())[:room].strip("-") if room > 0 else ""
    short = digest[:DIGEST_LENGTH]
    return f"{readable}-{short}" if readable else short


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
