"""The kind end-to-end test's setup: images built from this checkout and a throwaway cluster, with the harness
`make kind` runs (bench/kind_cluster.py).

Only the module that needs Docker requests these fixtures; where Docker is unusable it skips before any runs.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from kind_cluster import (  # bench/, put on sys.path above
    Cluster,
    Images,
    SetupError,
    build_images,
    kind_binary,
    local_images,
    pinned_tool,
)


@pytest.fixture(scope="module")
def images() -> Images:
    """Both images, built from this checkout under the tags `make kind` gives them."""
    built = local_images()
    build_images(built)
    return built


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A kind cluster of its own (its own kubeconfig, the user's is untouched), deleted afterwards."""
    try:
        created = Cluster(
            name=f"kubeserve-e2e-{secrets.token_hex(3)}",
            kubeconfig=tmp_path_factory.mktemp("kind") / "kubeconfig",
            kind=kind_binary(),
            kubectl_binary=pinned_tool("kubectl"),
            helm_binary=pinned_tool("helm"),
        )
    except SetupError as error:
        pytest.fail(str(error))
    try:
        created.create()
        yield created
    finally:
        created.delete()
