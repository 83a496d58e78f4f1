"""Revision names (``naming.revision_name``) and the replica split of a canary step (``canary_split``)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import yaml
from kubeserve.operator import manifests, spec
from kubeserve.operator.canary_split import Split, canary_replicas, split_replicas
from kubeserve.operator.naming import (
    DIGEST_LENGTH,
    MAX_ISVC_NAME,
    MAX_OBJECT_NAME,
    VERSION_BUDGET,
    revision_name,
    revision_object_name,
)
from kubeserve.operator.runtime_config import config_hash
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import parse

DIGEST = config_hash("model_version: v1\n")
DNS1123_LABEL = re.compile(spec.DNS1123_LABEL)
# The longest InferenceService name that leaves the version part its whole budget.
MAX_ISVC_NAME_WITH_FULL_VERSION = MAX_OBJECT_NAME - 1 - VERSION_BUDGET - 1 - DIGEST_LENGTH


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("v1", f"v1-{DIGEST[:6]}"),
        ("V1.2_beta", f"v1-2-beta-{DIGEST[:6]}"),
        ("2024.01.15", f"2024-01-15-{DIGEST[:6]}"),
        ("a" * 63, f"{'a' * 15}-{DIGEST[:6]}"),
        ("release_candidate-7", f"release-candida-{DIGEST[:6]}"),
        ("x" * 14 + ".y", f"{'x' * 14}-{DIGEST[:6]}"),  # no '-' left dangling where the cut falls
        ("__", DIGEST[:6]),
    ],
)
def test_a_revision_name_is_the_version_made_a_label_and_a_short_digest(version, expected):
    name = revision_name(version, DIGEST)
    assert name == expected
    assert DNS1123_LABEL.match(name)


def test_the_same_inputs_give_the_same_name_and_another_digest_another_name():
    other = config_hash("model_version: v1\nmax_batch_size: 8\n")
    assert revision_name("v1", DIGEST) == revision_name("v1", DIGEST)
    assert revision_name("v1", DIGEST) != revision_name("v1", other)


@pytest.mark.parametrize(
    "length", [1, 20, MAX_ISVC_NAME_WITH_FULL_VERSION, MAX_ISVC_NAME_WITH_FULL_VERSION + 1, 50, MAX_ISVC_NAME]
)
def test_name_and_revision_fit_a_service_name(length):
    isvc = "m" * length
    name = revision_object_name(isvc, revision_name("Version_With.Odd-Characters", DIGEST, isvc_name=isvc))
    assert len(name) <= MAX_OBJECT_NAME
    assert DNS1123_LABEL.match(name)
    if length <= MAX_ISVC_NAME_WITH_FULL_VERSION:
        assert "version-with-o" in name


def test_a_name_too_long_for_any_revision_and_a_bad_digest_are_refused():
    with pytest.raises(ValueError, match="no room"):
        revision_name("v1", DIGEST, isvc_name="m" * (MAX_ISVC_NAME + 1))
    with pytest.raises(ValueError, match="hex"):
        revision_name("v1", "XYZ123")


@pytest.mark.parametrize(
    ("total", "weight", "canary"),
    [
        (10, 0, 0),
        (10, 10, 1),
        (10, 50, 5),
        (10, 100, 10),
        (10, 4, 1),  # above 0: at least one canary pod
        (10, 99, 9),  # short of 100: one stable pod stays
        (3, 50, 2),  # 1.5 rounds half up
        (4, 10, 1),
        (2, 90, 1),
        (1, 10, 1),
        (1, 100, 1),
        (0, 50, 0),  # scaled to zero: nothing runs
    ],
)
def test_the_canary_share(total, weight, canary):
    assert canary_replicas(total, weight) == canary


@pytest.mark.parametrize(
    ("total", "weight", "ready", "split"),
    [
        (10, 10, 0, Split(1, 10)),  # a surge: the stable side waits for the canary pod
        (10, 10, 1, Split(1, 9)),
        (10, 50, 2, Split(5, 8)),
        (10, 50, 5, Split(5, 5)),
        (10, 100, 7, Split(10, 3)),
        (10, 100, 10, Split(10, 0)),
        (6, 50, 5, Split(3, 3)),  # the HPA lowered the total: extra ready canary pods take no more stable ones
        (20, 50, 5, Split(10, 15)),  # and raised it: the canary grows, the stable side waits for it
        (1, 10, 1, Split(1, 0)),  # a total of 1: the one canary pod serves alone once ready
    ],
)
def test_the_split_surges_and_shrinks_the_stable_side_only_for_ready_canary_pods(total, weight, ready, split):
    assert split_replicas(total, weight, ready) == split


def test_split_rules_hold_for_every_small_case():
    # Exhaustive over small totals, every weight and readiness (hypothesis is not in the test dependencies).
    for total, weight in itertools.product(range(0, 25), range(0, 101)):
        wanted = canary_replicas(total, weight)
        assert abs(wanted - total * weight / 100) < 1
        if weight > 0 and total > 0:
            assert wanted >= 1
        if 0 < weight < 100 and total >= 2:
            assert total - wanted >= 1
        for ready in range(0, wanted + 3):
            split = split_replicas(total, weight, ready)
            assert split.canary == wanted
            assert split.stable >= 0
            # Capacity never dips: the ready canary pods that count plus the stable side cover the total.
            assert min(ready, split.canary) + split.stable >= total
            # And the surge is no more than the canary pods not ready yet.
            assert split.canary + split.stable - total == split.canary - min(ready, split.canary)


# The bundled samples' revisions as the operator released before spec.model.optimization and spec.runtime.workers
# computed them: upgrading the operator must not roll an InferenceService that uses neither.
RELEASED_REVISIONS = {
    "isvc-canary.yaml": "mlp-canary-1-5ad242",
    "isvc-cpu.yaml": "mlp-1-e974a6",
    "isvc-gpu.yaml": "resnet-2024-06-01-03ab3a",
    "isvc-keda.yaml": "mlp-scale-to-zero-1-5ad242",
}


@pytest.mark.parametrize("sample", sorted(RELEASED_REVISIONS))
def test_upgrading_the_operator_keeps_the_samples_revisions(sample):
    path = Path(__file__).resolve().parents[2] / "samples" / sample
    (body,) = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == "InferenceService"]
    body["metadata"].setdefault("namespace", "default")
    children = manifests.children(parse(body), OperatorSettings(cpu_image="r:1", cuda_image="c:1"))
    (deployment,) = [m for m in children.manifests if m["kind"] == "Deployment"]
    assert deployment["metadata"]["name"] == RELEASED_REVISIONS[sample]
