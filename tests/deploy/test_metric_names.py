"""Every metric name the samples and the chart mention is one that exists: a series the runtime or the operator
exports, or the Pods metric the operator's HPA reads (served by the chart's prometheus-adapter rule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubeserve.operator.manifests.autoscaler import QUEUE_DELAY_METRIC
from kubeserve.operator.metrics import OperatorMetrics
from kubeserve.runtime.metrics import ServerMetrics
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
# Not preceded by a name character: `serving_kubeserve_io_inferenceservice` is a label, not a metric.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_])kubeserve_[a-z_]+")
# The series each metric type exposes, as Prometheus stores them.
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count", ""), "gauge": ("",)}


def series(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def mentioning_files() -> list[Path]:
    chart = REPO / "charts" / "kubeserve"
    files = [*sorted((REPO / "samples").glob("*.yaml")), *sorted((chart / "templates").iterdir())]
    return [*files, chart / "values.yaml", chart / "README.md", *sorted((chart / "dashboards").iterdir())]


def test_the_files_are_found():
    assert any(METRIC_NAME.search(path.read_text()) for path in mentioning_files())


@pytest.mark.parametrize("path", mentioning_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_every_metric_named_in_the_samples_and_the_chart_exists(path: Path):
    known = series(ServerMetrics("m", "1").registry) | series(OperatorMetrics().registry) | {QUEUE_DELAY_METRIC}
    named = set(METRIC_NAME.findall(path.read_text()))
    assert named <= known, f"{path.name} names metrics that do not exist: {sorted(named - known)}"


@pytest.mark.parametrize("path", mentioning_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_what_says_pods_metric_names_the_one_the_hpa_reads(path: Path):
    """The runtime exports seconds (a histogram); the HPA reads the adapter's Pods metric in microseconds."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "Pods metric" in line and METRIC_NAME.search(line):
            assert QUEUE_DELAY_METRIC in line, f"{path.name}:{number} names another Pods metric"
