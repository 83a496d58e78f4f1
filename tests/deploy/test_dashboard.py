"""The Grafana dashboard (charts/kubeserve/dashboards/kubeserve.json): a dashboard Grafana loads, shipped where the
Grafana chart's sidecar finds it, whose every query reads only series that exist.

Queries are parsed with promql-parser (PyPI; Python bindings of the Rust promql-parser crate, Prometheus' grammar),
after Grafana's variables are replaced by values of the same type. Runtime names come from a live runtime's
/metrics; the operator's from OPERATOR_METRICS below.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import promql_parser
import pytest
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
from prometheus_client.samples import Sample


def load_chart_tests() -> ModuleType:
    """test_chart.py's helpers (render, the live-runtime fixture): one way to render the chart and start a runtime.
    Loaded by path, since pytest imports test modules as files (--import-mode=importlib), not as a package."""
    spec = importlib.util.spec_from_file_location("kubeserve_chart_tests", Path(__file__).with_name("test_chart.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chart_tests = load_chart_tests()
helm = chart_tests.helm
runtime_samples = chart_tests.runtime_samples
render, of_kind = chart_tests.render, chart_tests.of_kind

DASHBOARD = chart_tests.CHART / "dashboards" / "kubeserve.json"

# The operator's metrics and their labels, as agreed with the operator's author (operator/metrics.py, in progress):
# the dashboard may read exactly these. Histograms list their series (_bucket with `le`, _sum, _count).
OPERATOR_METRICS: dict[str, frozenset[str]] = {
    "kubeserve_operator_revision_replicas": frozenset({"namespace", "inferenceservice", "revision", "state"}),
    "kubeserve_operator_canary_weight": frozenset({"namespace", "inferenceservice", "revision"}),
    "kubeserve_operator_rollout_phase": frozenset({"namespace", "inferenceservice", "phase"}),
    "kubeserve_operator_analyses_total": frozenset({"namespace", "inferenceservice", "verdict"}),
    "kubeserve_operator_reconciles_total": frozenset({"result"}),
    "kubeserve_operator_workqueue_delay_seconds_bucket": frozenset({"le"}),
    "kubeserve_operator_workqueue_delay_seconds_sum": frozenset(),
    "kubeserve_operator_workqueue_delay_seconds_count": frozenset(),
}
# What Prometheus puts on every scraped series (the Prometheus Operator's PodMonitor targets): the target's
# namespace, pod, job and instance, plus the container and endpoint.
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "container", "endpoint"})
VARIABLES = ("datasource", "namespace", "inferenceservice", "revision")
RUNTIME_SERIES = ("serving_kubeserve_io_inferenceservice", "serving_kubeserve_io_revision")

# Grafana's variables, replaced before parsing by a value of the type they stand for: a range for the interval
# variables, a number for the one that is one, a plain word inside label matchers' strings.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
NUMBER_VARIABLES = {"queue_delay_target": "0.01"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")
# Grafana's query variables: label_values(series selector, label).
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported(helm: str, runtime_samples: list[Sample]) -> dict[str, frozenset[str]]:
    """Every series name the dashboard may read, with the label names a query may use on it."""
    # podTargetLabels become label names as Prometheus sanitises them (every other character to "_").
    (monitor,) = [m for m in of_kind(render(helm, "monitoring.podMonitor.enabled=true"), "PodMonitor") if
                  m["metadata"]["name"] == "kubeserve-runtime"]  # fmt: skip
    pod_labels = {re.sub(r"[^a-zA-Z0-9_]", "_", label) for label in monitor["spec"]["podTargetLabels"]}
    assert pod_labels == set(RUNTIME_SERIES)
    runtime: dict[str, set[str]] = {}
    for sample in runtime_samples:
        runtime.setdefault(sample.name, set()).update(sample.labels)
    names = {name: frozenset(labels | pod_labels | TARGET_LABELS) for name, labels in runtime.items()}
    operator = {name: labels | TARGET_LABELS for name, labels in OPERATOR_METRICS.items()}
    assert not names.keys() & operator.keys()
    return names | operator


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) for every panel target."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"], target.get("legendFormat", "")


def promql(expression: str) -> str:
    """The query as Prometheus gets it, Grafana's variables filled in."""
    expression = GRAFANA_INTERVALS.sub("5m", expression)
    for name, value in NUMBER_VARIABLES.items():
        expression = expression.replace(f"${name}", value)
    return VARIABLE.sub(r"\1", expression)


def names_in(expression: str) -> tuple[set[str], set[str]]:
    """The metric names and label names a PromQL expression reads: selectors' names and matchers, and the labels of
    by/without, on/ignoring and group_left/right clauses."""
    metrics: set[str] = set()
    labels: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                metrics.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            modifier = node.modifier
            if modifier.matching is not None:
                labels.update(modifier.matching.labels)
            labels.update(modifier.group_labels or [])

    promql_parser.walk(promql_parser.parse(expression), visit)
    return metrics, labels


def test_the_dashboard_loads_as_a_grafana_dashboard_model(dashboard):
    model = Dashboard.from_json(dashboard)

    assert model.uid == "kubeserve" and model.title
    assert model.panels is not None
    # Every panel survives the model's round trip: its type, datasource and queries.
    assert [p.to_json() for p in model.panels] and len(model.panels) == len(dashboard["panels"])
    for loaded, source in zip(model.panels, dashboard["panels"], strict=True):
        assert isinstance(loaded, RowPanel if source["type"] == "row" else Panel)
        assert loaded.title == source["title"]
        if isinstance(loaded, Panel):
            assert loaded.type_val == source["type"]
            assert [t.to_json()["expr"] for t in loaded.targets or []] == [t["expr"] for t in source["targets"]]
    names = [variable.name for variable in model.templating.list_val or []]
    assert names[: len(VARIABLES)] == list(VARIABLES)


def test_the_dashboard_is_well_formed(dashboard):
    """What the model does not check: unique ids, panels on the 24-column grid, queries on the chosen datasource."""
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_query_parses_as_promql(dashboard):
    for where, expression, _ in queries(dashboard):
        try:
            promql_parser.parse(promql(expression))
        except ValueError as error:
            pytest.fail(f"{where}: {error}")


def test_every_query_reads_only_series_and_labels_that_are_exported(dashboard, exported):
    for where, expression, legend in queries(dashboard):
        metrics, labels = names_in(promql(expression))
        unknown = metrics - exported.keys()
        assert not unknown, f"{where} reads {unknown}, which no runtime or operator exports"
        known = frozenset().union(*(exported[name] for name in metrics))
        used = labels | set(LEGEND_LABEL.findall(legend))
        assert used <= known, f"{where} uses labels {used - known}, which {sorted(metrics)} do not carry"


def test_every_variable_query_reads_a_label_its_series_carries(dashboard, exported):
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in VARIABLES[1:]:
        variable = variables[name]
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {name}: {query}"
        metrics, labels = names_in(promql(match["selector"]))
        (metric,) = metrics
        assert {match["label"], *labels} <= exported[metric], f"variable {name}"
        assert variable["datasource"]["uid"] == "${datasource}"


def test_the_panels_cover_what_the_issue_asks_for(dashboard):
    expressions = " ".join(expression for _, expression, _ in queries(dashboard))
    durations = [e for _, e, _ in queries(dashboard) if "kubeserve_request_duration_seconds_bucket" in e]

    # p50 and p99 of every stage: grouped by stage, so each stage is its own series.
    assert {re.search(r"histogram_quantile\(([0-9.]+)", e)[1] for e in durations} == {"0.5", "0.99"}
    assert all("stage" in names_in(promql(e))[1] for e in durations)
    # Every stage the runtime exports (deserialize, preprocess, queue, compute, postprocess, serialize, total) is drawn:
    # none is filtered out.
    assert not re.search(r'stage\s*=~?\s*"', expressions)
    for metric in (
        "kubeserve_requests_total",
        "kubeserve_queue_delay_seconds_sum",
        "kubeserve_queue_delay_seconds_count",
        "kubeserve_batch_size_bucket",
        "kubeserve_queue_depth",
        "kubeserve_requests_in_flight",
        "kubeserve_rejected_requests_total",
        *(name for name in OPERATOR_METRICS if not name.endswith(("_sum", "_count"))),
    ):
        assert metric in expressions, metric
    # The runtime panels select per InferenceService and revision, as the variables choose.
    for _, expression, _ in queries(dashboard):
        if "kubeserve_operator_" not in expression and "kubeserve_" in expression:
            for label in RUNTIME_SERIES:
                assert label in expression, expression
    # The autoscaling target: no metric carries it; a dashboard variable draws it next to the queue delay.
    assert "$queue_delay_target" in expressions


def test_the_dashboard_ships_in_a_configmap_the_grafana_sidecar_picks_up(helm, dashboard):
    assert of_kind(render(helm), "ConfigMap") == []

    manifests = render(helm, "dashboard.enabled=true")
    (config_map,) = of_kind(manifests, "ConfigMap")
    kubernetes_validate.validate(config_map, chart_tests.KUBERNETES_VERSION, strict=True)
    assert config_map["metadata"]["namespace"] == chart_tests.RELEASE_NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["kubeserve.json"]) == dashboard

    elsewhere = render(
        helm,
        "dashboard.enabled=true",
        "dashboard.label=grafana-dashboards",
        "dashboard.labelValue=kubeserve",
        "dashboard.namespace=monitoring",
        "dashboard.annotations.grafana_folder=Serving",
    )
    (config_map,) = of_kind(elsewhere, "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana-dashboards"] == "kubeserve"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Serving"}
