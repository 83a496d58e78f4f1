"""Write docs/metrics.md from the metrics registries themselves: the runtime's, and the operator's when it has one.

    python docs/metrics_reference.py            # rewrite docs/metrics.md
    python docs/metrics_reference.py --check    # exit 1 if it is out of date

Names, types, help texts, label names and buckets are read from a freshly built registry (what ``GET /metrics``
serves), so the reference cannot drift from the code; tests/deploy/test_docs.py fails when the checked-in file
differs. Needs kubeserve installed (``make`` does it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "metrics.md"
# Labels whose values are the deployment's own (the model's name and version, the InferenceService), not a fixed set.
PER_DEPLOYMENT = {"model", "version", "namespace", "inferenceservice", "revision"}
# The series a family is exposed as, by type (prometheus_client's naming; `_created` series are disabled).
SERIES = {
    "counter": ["_total"],
    "histogram": ["_bucket", "_sum", "_count"],
    "gauge": [""],
    "summary": ["_sum", "_count"],
}


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    documentation: str
    labels: tuple[str, ...]
    values: dict[str, tuple[str, ...]]
    buckets: tuple[float, ...]


def families(registry: CollectorRegistry) -> Iterator[Family]:
    # A labelled metric yields no samples until a child exists, so its families carry no label names: those come
    # from the metric objects, which prometheus_client exposes only through the registry's collector map (our own
    # collectors, ``runtime.metrics.LoopHistogram``, say theirs as ``labelnames``).
    by_name = {name: collector for collector, names in registry._collector_to_names.items() for name in names}
    for family in registry.collect():
        collector = by_name[family.name]
        labels = tuple(getattr(collector, "labelnames", None) or getattr(collector, "_labelnames", ()))
        yield Family(
            name=family.name,
            type=family.type,
            documentation=family.documentation,
            labels=labels,
            values=known_values(family, labels),
            buckets=bucket_bounds(family) or tuple(getattr(collector, "_upper_bounds", ())),
        )


def bucket_bounds(family: Metric) -> tuple[float, ...]:
    """A histogram's bucket bounds, from its first label set's ``_bucket`` samples; () without samples."""
    bounds: list[float] = []
    for sample in family.samples:
        if sample.name == f"{family.name}_bucket":
            bound = float(sample.labels["le"])
            if bounds and bound <= bounds[-1]:  # the next label set's buckets
                break
            bounds.append(bound)
    return tuple(bounds)


def known_values(family: Metric, labels: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Label values the code creates up front (stages, rejection reasons): the complete set for those labels."""
    found: dict[str, list[str]] = {}
    for sample in family.samples:
        for label in labels:
            value = sample.labels.get(label)
            if label not in PER_DEPLOYMENT and value is not None and value not in found.setdefault(label, []):
                found[label].append(value)
    return {label: tuple(values) for label, values in found.items()}


def bucket(bound: float) -> str:
    return "+Inf" if bound == float("inf") else f"{bound:g}"


def table(registry: CollectorRegistry) -> list[str]:
    lines = ["| Metric | Type | Labels | Meaning | Buckets |", "| --- | --- | --- | --- | --- |"]
    for family in families(registry):
        series = ", ".join(f"`{family.name}{suffix}`" for suffix in SERIES[family.type])
        labels = []
        for label in family.labels:
            values = family.values.get(label)
            labels.append(f"`{label}`" + (f" ({', '.join(f'`{value}`' for value in values)})" if values else ""))
        buckets = ", ".join(bucket(bound) for bound in family.buckets)
        meaning = " ".join(family.documentation.split()).replace("|", "\\|")
        lines.append(f"| {series} | {family.type} | {', '.join(labels)} | {meaning} | {buckets} |")
    return lines


def operator_registry() -> CollectorRegistry | None:
    """The operator's registry, if this checkout's operator exports metrics (kubeserve.operator.metrics)."""
    try:
        module = importlib.import_module("kubeserve.operator.metrics")
    except ModuleNotFoundError as error:
        if error.name != "kubeserve.operator.metrics":
            raise
        return None
    return module.OperatorMetrics().registry


def render() -> str:
    from kubeserve.runtime.metrics import ServerMetrics

    # The label values of model and version are the deployment's; any will do to build the registry.
    runtime = ServerMetrics(model="MODEL", version="VERSION").registry
    lines = [
        "# Metrics reference",
        "",
        "<!-- Generated by docs/metrics_reference.py from the metrics registries: do not edit by hand. -->",
        "",
        "Every metric kubeserve exports, read from the code's own registries. A label's values are listed where the",
        "code fixes them; `model` and `version` are the served model's name and version, `namespace` and",
        "`inferenceservice` name the InferenceService, `revision` one of its revisions. Buckets are the histograms'",
        "upper bounds (`le`), in seconds for durations.",
        "",
        "## The runtime (`GET /metrics` on each runtime pod, port 8080)",
        "",
        *table(runtime),
        "",
        "## The operator (`GET /metrics` on the operator's metrics port)",
        "",
    ]
    registry = operator_registry()
    if registry is None:
        lines += [
            "<!-- TO FILL: kubeserve.operator.metrics does not exist yet. Once it exposes OperatorMetrics().registry,",
            "     `python docs/metrics_reference.py` writes its table here. -->",
            "",
            "Not exported yet.",
        ]
    else:
        lines += table(registry)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in file is out of date")
    args = parser.parse_args()
    generated = render()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != generated:
            sys.exit(f"{OUTPUT.relative_to(REPO)} is out of date: run python docs/metrics_reference.py")
        return
    OUTPUT.write_text(generated)
    print(OUTPUT.relative_to(REPO))


if __name__ == "__main__":
    main()
