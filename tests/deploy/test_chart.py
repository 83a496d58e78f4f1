"""The Helm chart, rendered by the pinned helm (`make tools`) and checked against Kubernetes 1.37's own schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.samples import Sample

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubeserve"
HELM = REPO / ".tools" / "bin" / "helm"
KUBERNETES_VERSION = "1.37"
RELEASE_NAMESPACE = "kubeserve-system"

CLUSTER_WIDE: tuple[str, ...] = ()
NAMESPACED = ("watch.clusterWide=false", "watch.namespaces={models,team-b}")
MODES = {"cluster-wide": CLUSTER_WIDE, "namespaced": NAMESPACED}

# What the operator does with each resource, and so the only verbs it gets.
APPLICATION_RULES = {
    # kopf lists and watches InferenceServices, and patches them for its annotation and to remove the old finalizer.
    ("serving.kubeserve.io", "inferenceservices"): {"list", "watch", "patch"},
    # Status: conditions, replicas, URL, the model's last failure.
    ("serving.kubeserve.io", "inferenceservices/status"): {"patch"},
    # With autoscaling and no spec.replicas, the starting point (minReplicas), as `kubectl scale` would write it.
    ("serving.kubeserve.io", "inferenceservices/scale"): {"patch"},
    # blockOwnerDeletion on the children's owner references, where OwnerReferencesPermissionEnforcement is on.
    ("serving.kubeserve.io", "inferenceservices/finalizers"): {"update"},
    # Children: server-side apply (PATCH, authorised as create for a new object), and watched to repair drift. The
    # garbage collector deletes them with their InferenceService; the operator deletes pruned revisions and the
    # autoscaling objects no longer wanted (an HPA, KEDA's ScaledObject and InterceptorRoute, the NAME-proxy Service).
    ("", "configmaps"): {"list", "watch", "create", "patch", "delete"},
    ("", "services"): {"list", "watch", "create", "patch", "delete"},
    ("autoscaling", "horizontalpodautoscalers"): {"list", "watch", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"list", "watch", "create", "patch", "delete"},
    ("http.keda.sh", "interceptorroutes"): {"list", "watch", "create", "patch", "delete"},
    ("gateway.networking.k8s.io", "httproutes"): {"list", "watch", "create", "patch", "delete"},
    ("gateway.networking.k8s.io", "grpcroutes"): {"list", "watch", "create", "patch", "delete"},
    # ...and the Deployments (one per revision) are indexed by kopf too, to report the rollout; the rollout scales
    # them (a patch) and deletes the revisions it prunes (with their Service and ConfigMap).
    ("apps", "deployments"): {"list", "watch", "create", "patch", "delete"},
    # Runtime pods: indexed by kopf, to report fetch failures, image pulls and scheduling.
    ("", "pods"): {"list", "watch"},
    # kopf's warnings and InvalidSpec.
    ("", "events"): {"create"},
}
# kopf's own needs, as its RBAC documentation lists them (the operator's check that the object exists is a get).
CLUSTER_PEERING_RULES = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
NAMESPACED_PEERING_RULES = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
CRD_DISCOVERY_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACE_DISCOVERY_RULES = {("", "namespaces"): {"list", "watch"}}


@pytest.fixture(scope="session")
def helm() -> str:
    if not HELM.exists():
        pytest.fail("helm is missing: `make tools` puts the pinned helm in .tools/bin")
    return str(HELM)


def render(helm: str, *values: str) -> list[dict]:
    command = [helm, "template", "kubeserve", str(CHART), "--namespace", RELEASE_NAMESPACE, "--include-crds"]
    for value in values:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def of_kind(manifests: Iterable[dict], kind: str) -> list[dict]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def rules_of(role: dict) -> dict[tuple[str, str], set[str]]:
    """A role's rules as (group, resource) -> verbs, failing on anything a wildcard or a list would hide."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields in {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


@pytest.fixture(scope="module", params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def manifests(helm: str, mode: str) -> list[dict]:
    return render(helm, *MODES[mode])


# --- The chart as helm sees it -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        *MODES.values(),
        ("monitoring.adapterRule.enabled=true", "monitoring.podMonitor.enabled=true", "dashboard.enabled=true"),
        (*NAMESPACED, "networkPolicy.enabled=true", "networkPolicy.allowedNamespaces={apps}"),
    ],
    ids=[*MODES, "monitoring", "network-policy"],
)
def test_helm_lint_passes(helm, values):
    command = [helm, "lint", "--strict", str(CHART)]
    for value in values:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_valid_kubernetes(manifests):
    crd_schemas = {
        (crd["spec"]["group"], crd["spec"]["names"]["kind"]): version["schema"]["openAPIV3Schema"]
        for crd in of_kind(manifests, "CustomResourceDefinition")
        for version in crd["spec"]["versions"]
    }
    for manifest in manifests:
        group = manifest["apiVersion"].rpartition("/")[0]
        if (group, manifest["kind"]) in crd_schemas:
            # A custom resource: its CRD's schema, and the metadata every object needs.
            jsonschema.validate(manifest, crd_schemas[group, manifest["kind"]])
            assert manifest["metadata"]["name"]
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_namespaced_objects_go_to_the_release_or_watched_namespaces(manifests, mode):
    cluster_scoped = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    allowed = {RELEASE_NAMESPACE} if mode == "cluster-wide" else {RELEASE_NAMESPACE, "models", "team-b"}
    for manifest in manifests:
        namespace = manifest["metadata"].get("namespace")
        if manifest["kind"] in cluster_scoped:
            assert namespace is None, f"{manifest['kind']} is cluster-scoped"
        else:
            assert namespace in allowed, f"{manifest['kind']} {manifest['metadata']['name']} in {namespace}"


# --- CRDs ----------------------------------------------------------------------------------------------------


def test_the_chart_installs_exactly_the_crds_in_crds_folder(manifests):
    # charts/kubeserve/crds is a link to crds/: the API has one source of truth.
    sources = [doc for path in sorted((REPO / "crds").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    rendered = of_kind(manifests, "CustomResourceDefinition")

    assert any(doc["metadata"]["name"] == "inferenceservices.serving.kubeserve.io" for doc in sources)
    assert sorted(rendered, key=lambda d: d["metadata"]["name"]) == sorted(sources, key=lambda d: d["metadata"]["name"])


def test_the_chart_installs_the_inference_service_and_kopf_peering_crds(manifests):
    names = {crd["metadata"]["name"] for crd in of_kind(manifests, "CustomResourceDefinition")}

    assert names == {"inferenceservices.serving.kubeserve.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


# --- RBAC ----------------------------------------------------------------------------------------------------


def test_the_rbac_table_covers_what_the_operator_code_does():
    """Cross-check the table with the operator: its resource, every child it applies or deletes, its peering check."""
    from kubeserve.operator import handlers, manifests, peering
    from kubeserve.operator.plan import assess
    from kubeserve.operator.settings import OperatorSettings

    group, _, plural = handlers.RESOURCE
    assert {"list", "watch", "patch"} <= APPLICATION_RULES[group, plural]
    assert "patch" in APPLICATION_RULES[group, f"{plural}/status"]
    # The HPAs target the InferenceService's scale subresource; the operator writes the starting replica count there.
    assert "patch" in APPLICATION_RULES[group, f"{plural}/scale"]

    def rules(api_version: str, kind: str) -> set[str]:
        return APPLICATION_RULES[api_version.rpartition("/")[0], kind.lower() + "s"]

    watched = {(group, plural) for group, _, plural in handlers.CHILDREN}
    for sample in sorted((REPO / "samples").glob("isvc-*.yaml")):
        isvc = assess(yaml.safe_load(sample.read_text())).isvc
        assert isvc is not None, sample
        plan = manifests.children(isvc, OperatorSettings())
        for manifest in plan.manifests:
            # Applied, and watched for drift.
            assert {"list", "watch", "create", "patch"} <= rules(manifest["apiVersion"], manifest["kind"]), manifest
            assert (manifest["apiVersion"].rpartition("/")[0], manifest["kind"].lower() + "s") in watched
        for ref in plan.absent:
            assert "delete" in rules(ref.api_version, ref.kind), ref.kind
    peering_group = peering.API_VERSION.rpartition("/")[0]
    assert "get" in CLUSTER_PEERING_RULES[peering_group, peering.CLUSTER_PLURAL]
    assert "get" in NAMESPACED_PEERING_RULES[peering_group, peering.NAMESPACED_PLURAL]


def test_cluster_wide_rbac_grants_exactly_what_the_operator_uses(helm):
    manifests = render(helm, *CLUSTER_WIDE)

    (role,) = of_kind(manifests, "ClusterRole")
    assert rules_of(role) == APPLICATION_RULES | CLUSTER_PEERING_RULES | CRD_DISCOVERY_RULES
    assert of_kind(manifests, "Role") == []
    (binding,) = of_kind(manifests, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeserve"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubeserve", "namespace": RELEASE_NAMESPACE}]


def test_namespaced_rbac_is_a_role_in_each_watched_namespace(helm):
    manifests = render(helm, *NAMESPACED)

    roles = of_kind(manifests, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["models", "team-b"]
    for role in roles:
        assert rules_of(role) == APPLICATION_RULES | NAMESPACED_PEERING_RULES
    bindings = of_kind(manifests, "RoleBinding")
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["models", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubeserve", "namespace": RELEASE_NAMESPACE}]
    # Cluster-wide, only read access to the CRDs and namespaces kopf watches come and go.
    (discovery,) = of_kind(manifests, "ClusterRole")
    assert rules_of(discovery) == CRD_DISCOVERY_RULES | NAMESPACE_DISCOVERY_RULES


def test_namespaced_rbac_without_discovery_has_nothing_cluster_wide(helm):
    manifests = render(helm, *NAMESPACED, "rbac.discovery=false")

    assert of_kind(manifests, "ClusterRole") == []
    assert of_kind(manifests, "ClusterRoleBinding") == []


def test_a_namespaced_operator_watches_its_own_namespace_by_default(helm):
    manifests = render(helm, "watch.clusterWide=false")

    assert [role["metadata"]["namespace"] for role in of_kind(manifests, "Role")] == [RELEASE_NAMESPACE]
    assert [peering["metadata"]["namespace"] for peering in of_kind(manifests, "KopfPeering")] == [RELEASE_NAMESPACE]


def test_no_wildcards_anywhere_in_rbac(manifests):
    for role in of_kind(manifests, "ClusterRole") + of_kind(manifests, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{role['kind']} {role['metadata']['name']}: {rule}"


def test_rbac_can_be_left_to_the_platform(helm):
    manifests = render(helm, "rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=platform-sa")

    assert not [m for m in manifests if m["kind"] in {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}]
    assert of_kind(manifests, "ServiceAccount") == []
    (deployment,) = of_kind(manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-sa"


# --- The operator Deployment ---------------------------------------------------------------------------------


def operator_pod(manifests: list[dict]) -> dict:
    (deployment,) = of_kind(manifests, "Deployment")
    return deployment["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, str]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def test_two_operator_replicas_share_one_peering(manifests, mode):
    (deployment,) = of_kind(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    (container,) = operator_pod(manifests)["containers"]
    assert env_of(container)["KUBESERVE_OPERATOR_PEERING_NAME"] == "kubeserve"
    # kopf's identity in the peering object is the pod's name.
    (pod_id,) = [item for item in container["env"] if item["name"] == "POD_ID"]
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    if mode == "cluster-wide":
        assert [peering["metadata"]["name"] for peering in of_kind(manifests, "ClusterKopfPeering")] == ["kubeserve"]
        assert of_kind(manifests, "KopfPeering") == []
    else:
        peerings = of_kind(manifests, "KopfPeering")
        assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
            ("models", "kubeserve"),
            ("team-b", "kubeserve"),
        ]
        assert of_kind(manifests, "ClusterKopfPeering") == []
    (budget,) = of_kind(manifests, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1


def test_a_single_replica_gets_no_disruption_budget(helm):
    manifests = render(helm, "operator.replicas=1")

    assert of_kind(manifests, "PodDisruptionBudget") == []


def test_the_operator_runs_as_non_root_on_a_read_only_root_filesystem(manifests):
    pod = operator_pod(manifests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    (tmp,) = [mount for mount in container["volumeMounts"] if mount["mountPath"] == "/tmp"]
    (volume,) = [volume for volume in pod["volumes"] if volume["name"] == tmp["name"]]
    assert volume == {"name": tmp["name"], "emptyDir": {}}


def operator_settings(manifests: list[dict]):
    """The settings the operator reads from the rendered environment, through its own loader."""
    from kubeserve.operator.settings import ENV_PREFIX, SETTING_NAMES, env_name, load_settings

    (container,) = operator_pod(manifests)["containers"]
    env = {name: value for name, value in env_of(container).items() if value is not None}
    unknown = {name for name in env if name.startswith(ENV_PREFIX)} - {env_name(s) for s in SETTING_NAMES}
    assert not unknown, f"the chart sets variables the operator does not read: {unknown}"
    return load_settings(env)


def test_every_operator_setting_the_chart_sets_is_one_the_operator_reads(manifests, mode):
    settings = operator_settings(manifests)

    assert settings.clusterwide is (mode == "cluster-wide")
    assert settings.namespaces == (() if mode == "cluster-wide" else ("models", "team-b"))
    assert settings.peering_name == "kubeserve"
    assert settings.standalone is False
    (container,) = operator_pod(manifests)["containers"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["ports"] == [
        {"name": "health", "containerPort": settings.health_port},
        {"name": "metrics", "containerPort": settings.metrics_port},
    ]


def test_the_chart_defaults_to_the_operators_own_default_images(manifests):
    from kubeserve.operator.settings import OperatorSettings

    settings = operator_settings(manifests)
    defaults = OperatorSettings.model_fields

    assert settings.cpu_image == defaults["cpu_image"].default
    assert settings.cuda_image == defaults["cuda_image"].default
    assert settings.image_pull_policy == "IfNotPresent"
    (container,) = operator_pod(manifests)["containers"]
    assert container["image"] == "ghcr.io/kubeserve/kubeserve-operator:0.1.0"  # the chart's appVersion


def test_values_reach_the_operator(helm):
    manifests = render(
        helm,
        "operator.image.tag=1.2.3",
        "runtime.cpuImage=registry.example/runtime:1.2.3",
        "runtime.cudaImage=registry.example/runtime-cuda:1.2.3",
        "runtime.imagePullPolicy=Always",
        "operator.logLevel=debug",
        "peering.name=blue",
    )
    settings = operator_settings(manifests)
    (container,) = operator_pod(manifests)["containers"]

    assert container["image"] == "ghcr.io/kubeserve/kubeserve-operator:1.2.3"
    assert settings.cpu_image == "registry.example/runtime:1.2.3"
    assert settings.cuda_image == "registry.example/runtime-cuda:1.2.3"
    assert settings.image_pull_policy == "Always"
    assert settings.log_level == "debug"
    assert settings.peering_name == "blue"
    assert [peering["metadata"]["name"] for peering in of_kind(manifests, "ClusterKopfPeering")] == ["blue"]


def test_tracing_values_reach_the_runtime_pods_through_the_operator(helm):
    from kubeserve.operator import manifests as children
    from kubeserve.operator.spec import parse

    assert operator_settings(render(helm)).otel_env == {}  # by default: no tracing, runtime pods as before
    endpoint = "http://otel-collector.observability:4318"
    rendered = render(helm, f"tracing.otlpEndpoint={endpoint}", "tracing.env.OTEL_TRACES_SAMPLER=always_on")
    settings = operator_settings(rendered)
    assert settings.otel_env == {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_TRACES_SAMPLER": "always_on"}

    isvc = yaml.safe_load((REPO / "samples" / "isvc-cpu.yaml").read_text())
    isvc["metadata"]["namespace"] = "models"
    (deployment,) = [m for m in children.children(parse(isvc), settings).manifests if m["kind"] == "Deployment"]
    (runtime,) = deployment["spec"]["template"]["spec"]["containers"]
    env = env_of(runtime)
    assert (env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_TRACES_SAMPLER"]) == (endpoint, "always_on")
    assert env["OTEL_SERVICE_NAME"] == isvc["metadata"]["name"]


def test_turning_the_health_endpoint_off_drops_the_probe(helm):
    manifests = render(helm, "operator.healthPort=0")
    (container,) = operator_pod(manifests)["containers"]

    assert operator_settings(manifests).health_port == 0
    assert "livenessProbe" not in container
    assert [port["name"] for port in container["ports"]] == ["metrics"]


def test_turning_both_endpoints_off_drops_the_ports_and_the_operator_pod_monitor(helm):
    manifests = render(helm, "operator.healthPort=0", "operator.metricsPort=0", "monitoring.podMonitor.enabled=true")
    (container,) = operator_pod(manifests)["containers"]

    assert operator_settings(manifests).metrics_port == 0
    assert "ports" not in container
    assert [monitor["metadata"]["name"] for monitor in of_kind(manifests, "PodMonitor")] == ["kubeserve-runtime"]


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("runtime.imagePullPolicy=Sometimes", "at '/runtime/imagePullPolicy': value must be one of"),
        ("watch.namespaces={Not_A_Namespace}", "at '/watch/namespaces/0'"),
        ("operator.replicas=0", "at '/operator/replicas'"),
        ("runtime.image=old-name:1", "additional properties 'image' not allowed"),
        ("monitoring.adapterRule.window=soon", "at '/monitoring/adapterRule/window'"),
        ("monitoring.podMonitor.enabled=yes", "at '/monitoring/podMonitor/enabled'"),
        ("operator.metricsPort=70000", "at '/operator/metricsPort'"),
        ("networkPolicy.allowedNamespaces={Not_A_Namespace}", "at '/networkPolicy/allowedNamespaces/0'"),
        ("dashboard.enabled=yes", "at '/dashboard/enabled'"),
        ("tracing.otlpEndpoint=collector:4318", "at '/tracing/otlpEndpoint'"),
        ("tracing.env.SERVICE_NAME=mlp", "additional properties 'SERVICE_NAME' not allowed"),
    ],
)
def test_bad_values_are_rejected_with_the_path_to_fix(helm, value, complaint):
    command = [helm, "template", "kubeserve", str(CHART), "--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode != 0
    assert complaint in result.stderr


def test_replicas_spread_over_nodes(manifests):
    (spread,) = operator_pod(manifests)["topologySpreadConstraints"]
    (deployment,) = of_kind(manifests, "Deployment")

    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


# --- The autoscaling signal: the prometheus-adapter rule and the PodMonitor ------------------------------------

MONITORING = ("monitoring.adapterRule.enabled=true", "monitoring.podMonitor.enabled=true")
ADAPTER_RULES = "kubeserve-prometheus-adapter-rules"

# One discovery rule, as prometheus-adapter's docs/config.md (kubernetes-sigs/prometheus-adapter) defines it: a
# seriesQuery to discover series, resources (overrides: a Prometheus label -> a Kubernetes group-resource), name
# (matches: a regex on the series name, as: what the custom metrics API calls it), and a metricsQuery template.
ADAPTER_RULE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seriesQuery", "resources", "name", "metricsQuery"],
    "properties": {
        "seriesQuery": {"type": "string", "minLength": 1},
        "seriesFilters": {"type": "array"},
        "resources": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "template": {"type": "string"},
                "overrides": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["resource"],
                        "properties": {"group": {"type": "string"}, "resource": {"type": "string"}},
                    },
                },
            },
        },
        "name": {
            "type": "object",
            "additionalProperties": False,
            "required": ["matches"],
            "properties": {"matches": {"type": "string"}, "as": {"type": "string"}},
        },
        "metricsQuery": {"type": "string", "minLength": 1},
    },
}


def adapter_rules(manifests: list[dict]) -> dict[str, list[dict]]:
    """The rule lists of the rendered ConfigMap, per key: the adapter chart's values and its own config file."""
    (config_map,) = [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == ADAPTER_RULES]
    data = config_map["data"]
    return {
        "prometheus-adapter-values.yaml": yaml.safe_load(data["prometheus-adapter-values.yaml"])["rules"]["custom"],
        "config.yaml": yaml.safe_load(data["config.yaml"])["rules"],
    }


def the_rule(manifests: list[dict]) -> dict:
    rules = adapter_rules(manifests)
    (rule,) = rules["prometheus-adapter-values.yaml"]
    assert rules["config.yaml"] == [rule]  # the same rule in both forms
    return rule


def series_name(rule: dict) -> str:
    (name,) = re.findall(r'__name__="([a-zA-Z_:][a-zA-Z0-9_:]*)"', rule["seriesQuery"])
    return name


def metric_names_in(rule: dict) -> set[str]:
    """Every metric the rule's queries read, <<.Series>> being the series its seriesQuery discovers."""
    query = rule["metricsQuery"].replace("<<.Series>>", series_name(rule))
    return {series_name(rule), *re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query)}


@pytest.fixture(scope="module")
def runtime_samples(tmp_path_factory: pytest.TempPathFactory) -> list[Sample]:
    """The samples (names, labels) a live runtime exports on /metrics, after one inference request."""
    from prometheus_client.parser import text_string_to_metric_families

    models = tmp_path_factory.mktemp("models")
    written = subprocess.run(
        [sys.executable, "-m", "kubeserve.runtime.samples", str(models), "--only", "tiny"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    model = Path(written.stdout.strip())
    runtime = Path(sys.executable).with_name("kubeserve-runtime")
    command = [str(runtime), "serve", "--host", "127.0.0.1", "--port", "0", "--model-path", str(model)]
    command += ["--grpc-port", "0", "--model-name", "tiny", "--log-level", "info"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)  # a runtime that hangs fails the test instead of stalling it
    watchdog.start()
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:  # JSON log lines, until the model is ready (or the process ends)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "listening":
                port = int(event["port"])
            if event.get("event") == "model_ready":
                break
        assert port is not None and process.poll() is None, "the runtime did not start"
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/tiny/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            exposition = response.read().decode()
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    samples = [sample for family in text_string_to_metric_families(exposition) for sample in family.samples]
    assert any(s.name == "kubeserve_queue_delay_seconds_count" and s.value == 1 for s in samples), exposition
    return samples


@pytest.fixture(scope="module")
def runtime_metric_names(runtime_samples: list[Sample]) -> set[str]:
    return {sample.name for sample in runtime_samples}


def test_monitoring_is_off_unless_asked_for(manifests):
    assert not [m for m in of_kind(manifests, "ConfigMap") if m["metadata"]["name"] == ADAPTER_RULES]
    assert of_kind(manifests, "PodMonitor") == []


def test_with_monitoring_on_every_kubernetes_manifest_is_still_valid(helm):
    manifests = render(helm, *MONITORING)
    for manifest in manifests:
        # PodMonitor is the Prometheus Operator's CRD, not in Kubernetes' schemas: checked field by field below.
        if manifest["kind"] not in ("CustomResourceDefinition", "PodMonitor", "ClusterKopfPeering"):
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    assert len(of_kind(manifests, "PodMonitor")) == 2  # the runtime pods and the operator's


def test_the_adapter_rule_serves_the_metric_the_operators_hpa_reads(helm):
    from kubeserve.operator.manifests.autoscaler import QUEUE_DELAY_METRIC, QUEUE_DELAY_UNITS_PER_SECOND

    rule = the_rule(render(helm, "monitoring.adapterRule.enabled=true"))

    jsonschema.validate(rule, ADAPTER_RULE_SCHEMA)
    assert re.fullmatch(rule["name"]["matches"], series_name(rule))
    # The HPA's Pods metric: its name, and the unit its target is converted into.
    assert rule["name"]["as"] == QUEUE_DELAY_METRIC
    assert rule["metricsQuery"].startswith(f"{QUEUE_DELAY_UNITS_PER_SECOND} * ")
    # Per pod: the labels Prometheus puts on a pod's series name the pod and its namespace.
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    query = rule["metricsQuery"]
    assert query.count("{<<.LabelMatchers>>}") == 2
    assert query.count("by (<<.GroupBy>>)") == 2
    # An idle pod reads 0, not NaN (0/0): the divisor is kept above 0.
    assert "clamp_min(" in query


def test_the_adapter_rules_window_comes_from_the_values(helm):
    default = the_rule(render(helm, "monitoring.adapterRule.enabled=true"))["metricsQuery"]
    longer = the_rule(render(helm, "monitoring.adapterRule.enabled=true", "monitoring.adapterRule.window=3m"))

    assert re.findall(r"\[([^\]]+)\]", default) == ["1m", "1m"]  # values.yaml's default
    assert re.findall(r"\[([^\]]+)\]", longer["metricsQuery"]) == ["3m", "3m"]


def test_the_adapter_rule_reads_only_metrics_a_live_runtime_exports(helm, runtime_metric_names):
    rule = the_rule(render(helm, "monitoring.adapterRule.enabled=true"))

    read = metric_names_in(rule)
    assert read == {"kubeserve_queue_delay_seconds_sum", "kubeserve_queue_delay_seconds_count"}
    assert read <= runtime_metric_names


def test_kedas_query_reads_what_the_adapter_rule_reads_over_the_same_window(helm, runtime_metric_names):
    """Engine keda queries Prometheus itself: the same series a live runtime exports, and the chart hands the
    operator the adapter rule's window, so the two signals cannot drift apart."""
    from kubeserve.operator.manifests.keda import queue_delay_query
    from kubeserve.operator.plan import assess
    from kubeserve.operator.settings import load_settings

    (operator,) = of_kind(render(helm, "monitoring.adapterRule.window=3m"), "Deployment")
    environment = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = load_settings({k: v for k, v in environment.items() if k.startswith("KUBESERVE_OPERATOR_")})
    isvc = assess(yaml.safe_load((REPO / "samples" / "isvc-keda.yaml").read_text()), settings).isvc
    assert isvc is not None
    query = queue_delay_query(isvc, settings.queue_delay_window)
    rule = the_rule(render(helm, "monitoring.adapterRule.enabled=true", "monitoring.adapterRule.window=3m"))

    read = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query))
    assert read == metric_names_in(rule)
    assert read <= runtime_metric_names
    assert re.findall(r"\[([^\]]+)\]", query) == re.findall(r"\[([^\]]+)\]", rule["metricsQuery"]) == ["3m", "3m"]
    # Per pod as the rule's (0 when idle, never NaN), then summed over the InferenceService's pods.
    assert query.startswith(f"sum({rule['metricsQuery'].split(' * ')[0]} * ")
    assert query.count("clamp_min(") == 1 and query.count("sum by (pod)") == 2


def runtime_pod_template() -> dict:
    """The pod template of the runtime Deployment the operator renders for the CPU sample."""
    from kubeserve.operator import manifests
    from kubeserve.operator.plan import assess
    from kubeserve.operator.settings import OperatorSettings

    isvc = assess(yaml.safe_load((REPO / "samples" / "isvc-cpu.yaml").read_text())).isvc
    assert isvc is not None
    (deployment,) = [m for m in manifests.children(isvc, OperatorSettings()).manifests if m["kind"] == "Deployment"]
    return deployment["spec"]["template"]


def runtime_pod_monitor(manifests: list[dict]) -> dict:
    (monitor,) = [m for m in of_kind(manifests, "PodMonitor") if m["metadata"]["name"] == "kubeserve-runtime"]
    return monitor


def test_the_pod_monitor_scrapes_every_runtime_pod(helm, mode):
    monitor = runtime_pod_monitor(render(helm, *MODES[mode], *MONITORING))
    template = runtime_pod_template()
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "runtime"]

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "podTargetLabels", "podMetricsEndpoints"}
    # Every runtime pod the operator creates, and nothing else of the operator's (the operator's own pods differ).
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/managed-by"] == "kubeserve"
    # The port by name, and the path the pods' own scrape annotations name (kept for a Prometheus without operator).
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    annotations = template["metadata"]["annotations"]
    assert endpoint["port"] in [port["name"] for port in container["ports"]]
    assert [p["containerPort"] for p in container["ports"] if p["name"] == endpoint["port"]] == [
        int(annotations["prometheus.io/port"])
    ]
    assert endpoint["path"] == annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/scrape"] == "true"
    assert endpoint["interval"] == "15s"
    if mode == "cluster-wide":
        assert monitor["spec"]["namespaceSelector"] == {"any": True}
    else:
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["models", "team-b"]}


def test_the_pod_monitor_carries_the_labels_prometheus_selects_on(helm):
    monitors = of_kind(render(helm, *MONITORING, "monitoring.podMonitor.labels.release=kube-prometheus"), "PodMonitor")

    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"


# --- The operator's own metrics ------------------------------------------------------------------------------


def test_the_operator_pod_monitor_scrapes_the_operators_metrics_port(helm, mode):
    manifests = render(helm, *MODES[mode], *MONITORING)
    (monitor,) = [m for m in of_kind(manifests, "PodMonitor") if m["metadata"]["name"] == "kubeserve-operator"]
    (deployment,) = of_kind(manifests, "Deployment")
    (container,) = operator_pod(manifests)["containers"]

    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    # Both operator replicas of this release, and nothing else.
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (port,) = [port for port in container["ports"] if port["name"] == endpoint["port"]]
    assert port["containerPort"] == operator_settings(manifests).metrics_port == 8082
    assert endpoint["path"] == "/metrics"
    # The per-InferenceService series' own `namespace` label wins over the target's (the operator's namespace).
    assert endpoint["honorLabels"] is True


def test_the_metrics_port_reaches_the_operator(helm):
    manifests = render(helm, "operator.metricsPort=9100")
    (container,) = operator_pod(manifests)["containers"]

    assert operator_settings(manifests).metrics_port == 9100
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]


# --- NetworkPolicy -------------------------------------------------------------------------------------------

NETWORK_POLICY = ("networkPolicy.enabled=true", "networkPolicy.allowedNamespaces={apps,monitoring}")


def test_no_network_policy_unless_asked_for(manifests):
    assert of_kind(manifests, "NetworkPolicy") == []


def test_a_network_policy_in_each_watched_namespace_lets_only_the_listed_namespaces_and_the_operator_in(helm):
    manifests = render(helm, *NAMESPACED, *NETWORK_POLICY)
    policies = of_kind(manifests, "NetworkPolicy")
    template = runtime_pod_template()
    (runtime,) = [c for c in template["spec"]["containers"] if c["name"] == "runtime"]
    (deployment,) = of_kind(manifests, "Deployment")

    # The namespaces the PodMonitor scrapes: where the runtime pods are.
    assert (
        sorted(p["metadata"]["namespace"] for p in policies)
        == runtime_pod_monitor(render(helm, *NAMESPACED, *MONITORING))["spec"]["namespaceSelector"]["matchNames"]
    )
    for policy in policies:
        kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)
        spec = policy["spec"]
        selector = spec["podSelector"]["matchLabels"]
        assert selector == {"app.kubernetes.io/name": "kubeserve-runtime", "app.kubernetes.io/managed-by": "kubeserve"}
        assert selector.items() <= template["metadata"]["labels"].items()
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        operator, *listed = rule["from"]
        # The operator's pods (canary analysis reads /metrics), in the release's namespace only.
        assert operator == {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}},
            "podSelector": {"matchLabels": deployment["spec"]["selector"]["matchLabels"]},
        }
        assert listed == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}
            for name in ("apps", "monitoring")
        ]
        # The runtime's ports, by their names: http (inference, health and /metrics) and grpc.
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]
        assert [port["name"] for port in runtime["ports"]] == ["http", "grpc"]


def test_a_cluster_wide_operator_needs_the_network_policys_namespaces_named(helm):
    command = [helm, "template", "kubeserve", str(CHART), "--set", "networkPolicy.enabled=true"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "networkPolicy.namespaces is required with watch.clusterWide=true" in result.stderr

    manifests = render(helm, *NETWORK_POLICY, "networkPolicy.namespaces={models}")
    (policy,) = of_kind(manifests, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "models"
    kubernetes_validate.validate(policy, KUBERNETES_VERSION, strict=True)


# --- NOTES.txt: what `helm install` prints -------------------------------------------------------------------


def notes(helm: str, *values: str) -> str:
    """NOTES.txt as `helm install` prints it: `helm template` never renders NOTES, a client-side dry run does."""
    command = [helm, "install", "kubeserve", str(CHART), "--namespace", RELEASE_NAMESPACE, "--dry-run=client"]
    for value in values:
        command += ["--set", value]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    _, found, text = result.stdout.partition("\nNOTES:\n")
    assert found, result.stdout
    return text


def test_the_notes_say_what_was_installed(helm):
    default = notes(helm)
    assert "release kubeserve in namespace kubeserve-system" in default
    assert "Deployment kubeserve, 2 replica(s)" in default
    assert "Watching:      every namespace" in default
    for switch in ("monitoring.podMonitor.enabled", "monitoring.adapterRule.enabled", "dashboard.enabled"):
        assert f"off ({switch})" in default

    switched = notes(helm, *NAMESPACED, *MONITORING, "dashboard.enabled=true", *NETWORK_POLICY)
    assert "Watching:      models, team-b" in switched
    assert "PodMonitors:   on (runtime pods, operator pods)" in switched
    assert "ConfigMap kubeserve-dashboard" in switched
    assert "take calls from apps, monitoring and the operator only" in switched


def test_the_notes_apply_the_cpu_sample_and_call_it_as_its_model_expects(helm):
    from kubeserve.runtime.samples import build_mlp

    text = notes(helm, *NAMESPACED)
    sample = yaml.safe_load((REPO / "samples" / "isvc-cpu.yaml").read_text())
    name = sample["metadata"]["name"]
    (model_input,) = build_mlp().graph.input
    (model_output,) = build_mlp().graph.output
    features = model_input.type.tensor_type.shape.dim[1].dim_value

    # The sample, as a file of the repository, applied in the first watched namespace.
    assert "kubectl apply -n models -f samples/isvc-cpu.yaml" in text
    assert "https://github.com/kubeserve/kubeserve/blob/main/samples/isvc-cpu.yaml" in text
    assert "kubectl get isvc -n models -w" in text
    # A V2 request the model accepts: its Service, its input's name, type and shape.
    assert f"http://{name}.models.svc.cluster.local/v2/models/{name}/infer" in text
    (body,) = re.findall(r"-d '(\{.*\})'", text)
    (request,) = json.loads(body)["inputs"]
    assert request["name"] == model_input.name == "features"
    assert request["datatype"] == "FP32"
    assert request["shape"] == [1, features] == [1, 32]
    assert len(request["data"]) == features
    assert f'"{model_output.name}"' in text


# --- The chart README ----------------------------------------------------------------------------------------


def test_the_chart_readme_is_what_its_generator_writes():
    command = [sys.executable, str(REPO / "charts" / "chart_readme.py"), "--check"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr  # the fix: python charts/chart_readme.py


def test_the_chart_readme_describes_every_leaf_value():
    readme = (CHART / "README.md").read_text()
    rows = {
        match["path"]: match["description"]
        for match in re.finditer(r"^\| `(?P<path>[^`]+)` \|.*\| (?P<description>[^|]*) \|$", readme, re.MULTILINE)
    }

    def leaves(values: dict, schema: dict, prefix: str = "") -> Iterable[str]:
        for key, value in values.items():
            path, sub = f"{prefix}{key}", schema.get("properties", {}).get(key, {})
            # Mappings the schema leaves free-form (resources, nodeSelector) are one value, as the README lists them.
            if isinstance(value, dict) and value and "properties" in sub:
                yield from leaves(value, sub, f"{path}.")
            else:
                yield path

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    every = list(leaves(values, schema))
    assert {"operator.metricsPort", "networkPolicy.allowedNamespaces", "dashboard.label"} <= set(every)
    for path in every:
        assert path in rows, f"{path} is missing from the chart README"
        assert rows[path].strip(), f"{path} has no description: comment it in values.yaml"


def test_helm_show_readme_prints_the_chart_readme(helm):
    result = subprocess.run(
        [helm, "show", "readme", str(CHART)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (CHART / "README.md").read_text().strip()
