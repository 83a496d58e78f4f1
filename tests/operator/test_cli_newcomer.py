"""``kubeserve-operator`` as a newcomer meets it: plain-text help, a KServe manifest named as KServe's (not a list of
fields unknown to kubeserve), `render` without kopf, and the CRD's category beside the short name KServe shares."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(sys.executable).parent / "kubeserve-operator")
KSERVE_ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {"name": "sklearn-iris"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "gs://bucket/model"}}},
}


def kubeserve_operator(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", [("--help",), ("run", "--help"), ("render", "--help")])
def test_help_is_plain_text(args):
    result = kubeserve_operator(*args)
    assert result.returncode == 0
    assert "``" not in result.stdout
    assert result.stdout.startswith("usage: kubeserve-operator")


@pytest.mark.parametrize(
    "document",
    [
        KSERVE_ISVC,
        {**KSERVE_ISVC, "apiVersion": "serving.kserve.io/v1alpha1", "spec": {}},  # the group alone says it
        {key: value for key, value in KSERVE_ISVC.items() if key != "apiVersion"},  # spec.predictor alone says it
    ],
)
def test_render_names_a_kserve_manifest_as_kserves_api(document):
    result = kubeserve_operator("render", "-f", "-", stdin=yaml.safe_dump(document))
    assert result.returncode == 1 and result.stdout == ""
    assert "stdin, document 1 (sklearn-iris): this is KServe's InferenceService" in result.stderr
    assert "not kubeserve's: kubeserve takes apiVersion serving.kubeserve.io/v1alpha1 with spec.model" in result.stderr
    assert "unknown field" not in result.stderr


def test_our_api_with_a_predictor_is_ours_with_an_unknown_field():
    sample = yaml.safe_load((REPO / "samples" / "isvc-cpu.yaml").read_text())
    sample["spec"]["predictor"] = {}
    result = kubeserve_operator("render", "-f", "-", stdin=yaml.safe_dump(sample))
    assert result.returncode == 1
    assert "spec.predictor: unknown field" in result.stderr
    assert "KServe" not in result.stderr


def test_render_needs_no_kopf():
    code = (
        "import sys; sys.modules['kopf'] = None; from kubeserve.operator.cli import main; "
        "sys.argv = ['kubeserve-operator', 'render', '-f', sys.argv[1]]; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "samples" / "isvc-cpu.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "kind: Deployment" in result.stdout


def test_the_crd_has_a_category_of_its_own_beside_the_short_name_kserve_shares():
    names = yaml.safe_load((REPO / "crds" / "inferenceservices.yaml").read_text())["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("InferenceService", "inferenceservices", ["isvc"])
    assert names["categories"] == ["kubeserve"]


def test_render_says_to_quote_a_version_yaml_reads_as_a_number():
    sample = yaml.safe_load((REPO / "samples" / "isvc-cpu.yaml").read_text())
    sample["spec"]["model"]["version"] = 1
    result = kubeserve_operator("render", "-f", "-", stdin=yaml.safe_dump(sample))
    assert result.returncode == 1
    assert 'spec.model.version: Input should be a valid string: quote it in YAML, "1"' in result.stderr
