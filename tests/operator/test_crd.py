"""The InferenceService CRD: a valid Kubernetes object, its schema and CEL rules, and the operator kept in step."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from kubeserve.operator import spec as spec_module
from kubeserve.operator.plan import assess
from kubeserve.operator.runtime_config import runtime_settings
from kubeserve.operator.spec import SpecError, parse
from kubeserve.runtime.config import RuntimeSettings
from pydantic import BaseModel


def test_the_crd_is_a_valid_kubernetes_object(crd):
    kubernetes_validate.validate(crd, "1.37", strict=True)


def test_the_crd_names_printer_columns_and_status(crd):
    assert crd["metadata"]["name"] == "inferenceservices.serving.kubeserve.io"
    assert crd["spec"]["group"] == "serving.kubeserve.io"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("InferenceService", "inferenceservices", ["isvc"])
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {column["name"]: column for column in version["additionalPrinterColumns"] if "priority" not in column}
    assert list(columns) == ["Ready", "URL", "Version", "Canary", "Rollout", "Replicas", "Age"]
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["URL"]["jsonPath"] == ".status.url"
    # The version serving and the rollout's weight and phase, as the operator writes them (status.owned_status).
    assert columns["Version"]["jsonPath"] == ".status.servingVersion"
    assert (columns["Canary"]["jsonPath"], columns["Rollout"]["jsonPath"]) == (
        ".status.rollout.weight",
        ".status.rollout.phase",
    )
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf keeps its progress there
    # The Replicas column shows the pods that exist, as the scale subresource reports them to an HPA.
    assert columns["Replicas"]["jsonPath"] == version["subresources"]["scale"]["statusReplicasPath"]


def test_the_scale_subresource_points_at_fields_the_schema_declares(crd):
    (version,) = crd["spec"]["versions"]
    scale, root = version["subresources"]["scale"], version["schema"]["openAPIV3Schema"]

    def field(path: str) -> dict[str, Any]:
        node = root
        for part in path.removeprefix(".").split("."):
            node = node["properties"][part]
        return node

    assert field(scale["specReplicasPath"])["type"] == "integer"
    assert field(scale["statusReplicasPath"])["type"] == "integer"
    assert field(scale["labelSelectorPath"])["type"] == "string"
    # No schema default: one would be filled into every write that leaves replicas out.
    assert "default" not in field(scale["specReplicasPath"])


@pytest.mark.parametrize("name", ["isvc-cpu", "isvc-gpu"])
def test_samples_are_accepted_by_the_crd_and_by_the_operator(crd_validator, samples, name):
    assert crd_validator.errors(samples[name]) == []
    assessment = assess(samples[name])
    assert assessment.problems == []
    assert assessment.isvc is not None


def test_the_api_server_fills_in_the_defaults(crd_validator, isvc_factory):
    defaulted = crd_validator.defaulted(isvc_factory())
    assert defaulted["spec"]["model"]["format"] == "onnx"
    assert defaulted["spec"]["batching"] == {
        "maxBatchSize": 32,
        "maxQueueDelayMicroseconds": 0,
        "maxQueueSize": 1024,
        "defaultTimeoutMicroseconds": 0,
    }
    assert defaulted["spec"]["runtime"]["drainTimeoutSeconds"] == 30
    assert "replicas" not in defaulted["spec"] and "autoscaling" not in defaulted["spec"]


@pytest.mark.parametrize(
    ("spec", "replicas"),
    [
        ({}, 1),
        ({"replicas": 0}, 0),
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}}, 2),
        # The HPA writes spec.replicas through the scale subresource: it must be accepted next to autoscaling.
        ({"autoscaling": {"minReplicas": 2, "maxReplicas": 5}, "replicas": 4}, 4),
    ],
)
def test_replicas_is_the_users_or_the_hpas_and_unset_means_min_replicas_or_one(
    crd_validator, isvc_factory, spec, replicas
):
    body = isvc_factory(**spec)
    defaulted = crd_validator.defaulted(body)
    assert crd_validator.errors(defaulted) == []
    assert defaulted["spec"].get("replicas") == spec.get("replicas")  # nothing filled in
    assert parse(defaulted).replicas == replicas


def _crd_defaults(schema: dict, prefix: str = "") -> dict[str, Any]:
    found = {}
    for key, sub in (schema.get("properties") or {}).items():
        if "default" in sub and sub["default"] != {}:
            found[prefix + key] = sub["default"]
        found.update(_crd_defaults(sub, f"{prefix}{key}."))
    return found


# An analysis with every threshold, for the defaults inside them.
ANALYSIS = {"errorRatio": {"max": 0.1}, "p99Seconds": {"max": 1}, "meanQueueDelaySeconds": {"max": 1}}


def test_crd_defaults_are_the_runtimes_and_the_operators_defaults(crd, camel_to_snake):
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = _crd_defaults(spec_schema)
    runtime_fields = RuntimeSettings.model_fields
    checked = 0
    for path, value in defaults.items():
        section, _, field = path.rpartition(".")
        setting = camel_to_snake(field)
        if section in ("batching", "runtime") and setting in runtime_fields:
            assert runtime_fields[setting].default == value, path
            checked += 1
    assert checked >= 10
    # And the operator, reading an object the API server did not default (render), assumes the same: with the
    # default engine, and with KEDA's own settings (present only with engine keda).
    specs = [
        parse(
            {
                "apiVersion": "serving.kubeserve.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": "a"},
                "spec": {
                    "model": {"version": "1", "uri": "file:///m.onnx", **model},
                    "autoscaling": autoscaling,
                    **more,
                },
            }
        ).spec
        for autoscaling, model, more in (
            ({"maxReplicas": 2}, {}, {}),
            # And the defaults inside an optimization block (which has none of its own: unset, nothing is done).
            (
                {"maxReplicas": 2, "engine": "keda", "keda": {}},
                {"optimization": {"executionProvider": "cuda"}},
                {"rollout": {"analysis": ANALYSIS}},
            ),
        )
    ]
    dumped = [spec.model_dump(by_alias=True) for spec in specs]
    for path, value in defaults.items():
        nodes: list[Any] = []
        for node in dumped:
            for part in path.split("."):
                node = None if node is None else node.get(part)
            nodes.append(node)
        # A field left out of dumps at its default (so that revisions stay as they were) is read from the object.
        assert nodes[0] == value or (nodes[0] is None and nodes[1] == value) or _field(specs[0], path) == value, path


def _field(node: Any, path: str) -> Any:
    """The value at a CRD path (camelCase names) of a parsed object."""
    for part in path.split("."):
        fields = type(node).model_fields
        node = getattr(node, next(name for name, info in fields.items() if (info.alias or name) == part))
    return node


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        return [model for arg in typing.get_args(annotation) for model in _nested_models(arg)]
    return []


def _compare(schema: dict, model: type[BaseModel], path: str) -> list[str]:
    node = schema.get("items", schema) if schema.get("type") == "array" else schema
    crd_fields = set((node.get("properties") or {}).keys())
    model_fields = {info.alias or name: info for name, info in model.model_fields.items()}
    problems = [f"{path}.{name}: only in the CRD" for name in crd_fields - set(model_fields)]
    problems += [f"{path}.{name}: only in the operator" for name in set(model_fields) - crd_fields]
    for name in crd_fields & set(model_fields):
        for nested in _nested_models(model_fields[name].annotation):
            problems += _compare(node["properties"][name], nested, f"{path}.{name}")
    return problems


def test_the_operator_reads_exactly_the_fields_the_crd_declares(crd):
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _compare(spec_schema, spec_module.Spec, "spec") == []


def test_env_may_not_override_what_the_spec_controls(crd, isvc_factory):
    env_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["runtime"][
        "properties"
    ]["env"]
    (rule,) = env_schema["x-kubernetes-validations"]
    in_cel = set(rule["rule"].split("[", 1)[1].split("]", 1)[0].replace("'", "").replace(",", " ").split())
    # What the config file holds: every setting, TensorRT's too when TensorRT is asked for, workers with several.
    tensorrt = isvc_factory(runtime={"resources": {"limits": {"nvidia.com/gpu": 1}}})
    tensorrt["spec"]["model"]["optimization"] = {"executionProvider": "tensorrt"}
    workers = isvc_factory(runtime={"workers": 2})
    # And what the files beside the model, image inputs, a handler and the hook timeouts add.
    beside = isvc_factory(
        model={**EVERY_MODEL_FIELD, "version": "1", "uri": "file:///opt/kubeserve/samples/mlp.onnx"},
        runtime={"preprocessTimeoutSeconds": 5, "postprocessTimeoutSeconds": 5},
    )
    written = {
        f"KUBESERVE_{name.upper()}"
        for body in (isvc_factory(), tensorrt, workers, beside)
        for name in runtime_settings(parse(body))
    }
    assert in_cel == set(spec_module.SPEC_CONTROLLED_ENV) == written | {"KUBESERVE_CONFIG"}


# spec.model's optional fields beside the model file, each set.
EVERY_MODEL_FIELD = {
    "preprocessing": "https://models.example.com/fraud/preprocessing.onnx",
    "postprocessing": "pvc://models/fraud/postprocessing.onnx",
    "labels": "file:///opt/kubeserve/labels.txt",
    "inputs": [
        {"name": "image", "image": {"resize": [224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.2, 0.2, 0.2]}}
    ],
    "maxImagePixels": 4_000_000,
    "handler": {"class": "fraud.handlers:Explain", "uri": "s3://models/fraud/handler.tar.gz"},
}


def _with(path: str, value: Any) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        *parents, last = path.split(".")
        node = body
        for part in parents:
            node = node.setdefault(part, {})
        if value is _DELETE:
            node.pop(last)
        else:
            node[last] = value

    return change


def _all(*changes: Callable[[dict], None]) -> Callable[[dict], None]:
    def change(body: dict) -> None:
        for each in changes:
            each(body)

    return change


def _window_and_target(window_microseconds: int, target_seconds: float | None) -> Callable[[dict], None]:
    autoscaling: dict[str, Any] = {"maxReplicas": 2}
    if target_seconds is not None:
        autoscaling["targetQueueDelaySeconds"] = target_seconds
    return _all(
        _with("spec.batching", {"maxQueueDelayMicroseconds": window_microseconds}),
        _with("spec.autoscaling", autoscaling),
    )


_DELETE = object()

# (case, change, where the error is reported, the CEL rule's message or None for plain schema rules)
INVALID = [
    ("no version", _with("spec.model.version", _DELETE), "spec.model.version", None),
    ("version ends badly", _with("spec.model.version", "1-"), "spec.model.version", None),
    ("ftp uri", _with("spec.model.uri", "ftp://host/m.onnx"), "spec.model.uri", spec_module.MSG_URI),
    ("uri without a path", _with("spec.model.uri", "https://host"), "spec.model.uri", spec_module.MSG_URI),
    ("pvc escape", _with("spec.model.uri", "pvc://claim/../etc/m.onnx"), "spec.model.uri", spec_module.MSG_DOTDOT),
    (
        "credentials for https",
        _with("spec.model", {"version": "1", "uri": "https://h/m.onnx", "credentialsSecret": "s"}),
        "spec.model.credentialsSecret",
        spec_module.MSG_CREDENTIALS,
    ),
    ("unknown format", _with("spec.model.format", "tensorflow"), "spec.model.format", None),
    ("negative replicas", _with("spec.replicas", -1), "spec.replicas", None),
    (
        "min above max",
        _with("spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
        "spec.autoscaling",
        spec_module.MSG_MIN_MAX,
    ),
    ("no maxReplicas", _with("spec.autoscaling", {"minReplicas": 2}), "spec.autoscaling.maxReplicas", None),
    (
        "scale to zero with an HPA",
        _with("spec.autoscaling", {"minReplicas": 0, "maxReplicas": 2}),
        "spec.autoscaling",
        spec_module.MSG_ZERO_NEEDS_KEDA,
    ),
    (
        "keda settings with an HPA",
        _with("spec.autoscaling", {"maxReplicas": 2, "keda": {"cooldownPeriodSeconds": 60}}),
        "spec.autoscaling",
        spec_module.MSG_KEDA_SETTINGS,
    ),
    (
        "steps not increasing",
        _with("spec.rollout", {"steps": [{"weight": 10}, {"weight": 50}, {"weight": 50}]}),
        "spec.rollout.steps",
        spec_module.MSG_STEPS_INCREASING,
    ),
    ("a step of 100", _with("spec.rollout", {"steps": [{"weight": 100}]}), "spec.rollout.steps.0.weight", None),
    ("unknown strategy", _with("spec.rollout", {"strategy": "BlueGreen"}), "spec.rollout.strategy", None),
    (
        "analysis too often",
        _with("spec.rollout", {"analysis": {"intervalSeconds": 1}}),
        "spec.rollout.analysis.intervalSeconds",
        None,
    ),
    (
        "threshold without a limit",
        _with("spec.rollout", {"analysis": {"errorRatio": {"relativeToStable": True}}}),
        "spec.rollout.analysis.errorRatio.max",
        None,
    ),
    ("unknown engine", _with("spec.autoscaling", {"maxReplicas": 2, "engine": "vpa"}), "spec.autoscaling.engine", None),
    (
        "prometheus without a scheme",
        _with("spec.autoscaling", {"maxReplicas": 2, "engine": "keda", "keda": {"serverAddress": "prometheus:9090"}}),
        "spec.autoscaling.keda.serverAddress",
        None,
    ),
    (
        "negative activation",
        _with("spec.autoscaling", {"maxReplicas": 2, "engine": "keda", "keda": {"activationQueueDelaySeconds": -1}}),
        "spec.autoscaling.keda.activationQueueDelaySeconds",
        None,
    ),
    (
        "zero queue delay target",
        _with("spec.autoscaling", {"maxReplicas": 2, "targetQueueDelaySeconds": 0}),
        "spec.autoscaling.targetQueueDelaySeconds",
        None,
    ),
    (
        "queue delay target at the batching window",
        _window_and_target(2000, 0.002),
        "spec.autoscaling",
        spec_module.MSG_TARGET_ABOVE_BATCHING,
    ),
    (
        "queue delay target below the batching window",
        _window_and_target(5000, 0.001),
        "spec.autoscaling",
        spec_module.MSG_TARGET_ABOVE_BATCHING,
    ),
    (
        "default queue delay target below a long batching window",
        _window_and_target(100_000, None),
        "spec.autoscaling",
        spec_module.MSG_TARGET_ABOVE_BATCHING,
    ),
    (
        "preferred above max",
        _with("spec.batching", {"maxBatchSize": 8, "preferredBatchSize": [4, 16]}),
        "spec.batching.preferredBatchSize",
        spec_module.MSG_PREFERRED,
    ),
    ("negative batch", _with("spec.batching", {"maxBatchSize": -1}), "spec.batching.maxBatchSize", None),
    (
        "env overrides the spec",
        _with("spec.runtime", {"env": [{"name": "KUBESERVE_MAX_BATCH_SIZE", "value": "4"}]}),
        "spec.runtime.env",
        spec_module.MSG_ENV,
    ),
    (
        "memory in GB",
        _with("spec.runtime", {"resources": {"limits": {"memory": "2GB"}}}),
        "spec.runtime.resources.limits.memory",
        None,
    ),
    (
        "fractional cpu as a number",
        _with("spec.runtime", {"resources": {"requests": {"cpu": 1.5}}}),
        "spec.runtime.resources.requests.cpu",
        None,
    ),
    ("unknown device", _with("spec.runtime", {"device": "tpu"}), "spec.runtime.device", None),
    ("a typo", _with("spec.runtime", {"gpus": 1}), "spec.runtime", None),
    (
        "bad toleration operator",
        _with("spec.runtime", {"tolerations": [{"key": "k", "operator": "Maybe"}]}),
        "spec.runtime.tolerations.0.operator",
        None,
    ),
    (
        "bad select policy",
        _with("spec.autoscaling", {"maxReplicas": 2, "behavior": {"scaleUp": {"selectPolicy": "Sometimes"}}}),
        "spec.autoscaling.behavior.scaleUp.selectPolicy",
        None,
    ),
    (
        "bad optimization level",
        _with("spec.runtime", {"graphOptimizationLevel": "max"}),
        "spec.runtime.graphOptimizationLevel",
        None,
    ),
    (
        "preprocessing over ftp",
        _with("spec.model.preprocessing", "ftp://host/preprocessing.onnx"),
        "spec.model.preprocessing",
        spec_module.MSG_URI,
    ),
    (
        "postprocessing escaping the claim",
        _with("spec.model.postprocessing", "pvc://claim/../post.onnx"),
        "spec.model.postprocessing",
        spec_module.MSG_DOTDOT,
    ),
    ("labels without a path", _with("spec.model.labels", "https://host"), "spec.model.labels", spec_module.MSG_URI),
    (
        "credentials for no s3 or gs uri",
        _with(
            "spec.model",
            {"version": "1", "uri": "file:///m.onnx", "preprocessing": "https://h/p.onnx", "credentialsSecret": "s"},
        ),
        "spec.model.credentialsSecret",
        spec_module.MSG_CREDENTIALS,
    ),
    (
        "handler code that is not python",
        _with("spec.model.handler", {"class": "fraud.handlers:Explain", "uri": "https://h/code.rar"}),
        "spec.model.handler.uri",
        spec_module.MSG_HANDLER_CODE,
    ),
    (
        "handler code over ftp",
        _with("spec.model.handler", {"class": "fraud.handlers:Explain", "uri": "ftp://h/code.py"}),
        "spec.model.handler.uri",
        spec_module.MSG_URI,
    ),
    ("handler without a module", _with("spec.model.handler", {"class": "Explain"}), "spec.model.handler.class", None),
    (
        "handler without a class",
        _with("spec.model.handler", {"uri": "https://h/h.py"}),
        "spec.model.handler.class",
        None,
    ),
    (
        "two inputs of one name",
        _with("spec.model.inputs", [{"name": "image", "image": {}}, {"name": "image", "image": {"layout": "NHWC"}}]),
        "spec.model.inputs",
        spec_module.MSG_INPUT_NAMES,
    ),
    (
        "three means for a grey image",
        _with("spec.model.inputs", [{"name": "image", "image": {"channelOrder": "L", "mean": [0.5, 0.5, 0.5]}}]),
        "spec.model.inputs",
        spec_module.MSG_CHANNELS,
    ),
    (
        "one std for a colour image",
        _with("spec.model.inputs", [{"name": "image", "image": {"std": [0.2]}}]),
        "spec.model.inputs",
        spec_module.MSG_CHANNELS,
    ),
    (
        "a std of zero",
        _with("spec.model.inputs", [{"name": "image", "image": {"std": [0.2, 0, 0.2]}}]),
        "spec.model.inputs.0.image.std.1",
        None,
    ),
    (
        "resize to one number",
        _with("spec.model.inputs", [{"name": "image", "image": {"resize": [224]}}]),
        "spec.model.inputs.0.image.resize",
        None,
    ),
    (
        "unknown layout",
        _with("spec.model.inputs", [{"name": "image", "image": {"layout": "CHW"}}]),
        "spec.model.inputs.0.image.layout",
        None,
    ),
    ("an input without image", _with("spec.model.inputs", [{"name": "image"}]), "spec.model.inputs.0.image", None),
    (
        "no preprocess time",
        _with("spec.runtime", {"preprocessTimeoutSeconds": 0}),
        "spec.runtime.preprocessTimeoutSeconds",
        None,
    ),
    (
        "a postprocess hour and more",
        _with("spec.runtime", {"postprocessTimeoutSeconds": 3601}),
        "spec.runtime.postprocessTimeoutSeconds",
        None,
    ),
    ("name with capitals", _with("metadata.name", "My_Model"), "metadata.name", None),
    ("name too long", _with("metadata.name", "m" * 64), "metadata.name", None),
    # NAME-<revision> names each revision's Deployment and Service, which must fit 63 characters.
    ("name too long for revisions", _with("metadata.name", "m" * 57), "metadata.name", None),
]


@pytest.mark.parametrize(("change", "where", "message"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_objects_are_rejected_by_the_crd_and_the_operator_alike(
    crd_validator, isvc_factory, change, where, message
):
    body = isvc_factory()
    change(body)

    crd_errors = crd_validator.errors(body)
    with pytest.raises(SpecError) as raised:
        parse(body)
    operator_errors = raised.value.problems

    for errors in (crd_errors, operator_errors):
        assert errors, "accepted"
        if message is None:
            assert any(error.startswith(where) for error in errors), errors
        else:
            assert f"{where}: {message}" in errors


# Objects with the fields beside the model that both must accept: each URI scheme, credentials used by one s3:// URI,
# image inputs of every layout and channel order, a handler with its code or from the image.
VALID_BESIDE = [
    ("preprocessing in the image", {"preprocessing": "file:///opt/kubeserve/samples/tabular/preprocessing.onnx"}, {}),
    (
        "every field",
        {
            **EVERY_MODEL_FIELD,
            "credentialsSecret": "s3-creds",
            "inputs": [
                {"name": "rgb", "image": {"resize": [224, 224], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
                {"name": "grey", "image": {"layout": "NHWC", "channelOrder": "L", "mean": [0.5], "std": [0.5]}},
                {"name": "bgr", "image": {"channelOrder": "BGR"}},
            ],
        },
        {"preprocessTimeoutSeconds": 0.5, "postprocessTimeoutSeconds": 120},
    ),
    (
        "a handler from the image, code from a pre-signed URL",
        {"handler": {"class": "handler:Handler"}, "labels": "https://h/labels.txt?X-Amz-Signature=abc"},
        {},
    ),
]


@pytest.mark.parametrize(("model", "runtime"), [case[1:] for case in VALID_BESIDE], ids=[c[0] for c in VALID_BESIDE])
def test_what_goes_beside_the_model_is_accepted_by_the_crd_and_the_operator(
    crd_validator, isvc_factory, model, runtime
):
    body = isvc_factory(runtime=copy.deepcopy(runtime))
    body["spec"]["model"].update(copy.deepcopy(model))

    assert crd_validator.errors(body) == []
    # The operator's assessment includes the runtime's own check of the config file it renders.
    assert assess(body).problems == []


@pytest.mark.parametrize(
    ("window_microseconds", "target_seconds"), [(2000, 0.0021), (2000, 0.01), (0, 0.0001), (999_999, 1), (0, None)]
)
def test_a_queue_delay_target_above_the_batching_window_is_accepted_by_both(
    crd_validator, isvc_factory, window_microseconds, target_seconds
):
    body = isvc_factory()
    _window_and_target(window_microseconds, target_seconds)(body)

    assert crd_validator.errors(body) == []
    assert assess(body).problems == []


SEMANTIC = [
    ("a GPU only in requests", {"resources": {"requests": {"nvidia.com/gpu": 1}}}, "set it in limits"),
    ("requests above limits", {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}, "more than the limit"),
    ("half a GPU", {"resources": {"limits": {"nvidia.com/gpu": "500m"}}}, "whole number of GPUs"),
    ("cuda without a GPU", {"device": "cuda"}, "cuda needs a GPU"),
]


@pytest.mark.parametrize(("runtime", "words"), [case[1:] for case in SEMANTIC], ids=[c[0] for c in SEMANTIC])
def test_what_the_schema_cannot_catch_the_operator_does(crd_validator, isvc_factory, runtime, words):
    body = isvc_factory(runtime=copy.deepcopy(runtime))

    assert crd_validator.errors(body) == []
    assessment = assess(body)
    assert assessment.isvc is None
    assert any(words in problem for problem in assessment.problems), assessment.problems


def _nodes(schema: dict, path: str = ""):
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], f"{path}[{key}]")


def test_the_schema_is_structural_and_its_defaults_are_valid(crd, crd_validator):
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        untyped = node.get("x-kubernetes-int-or-string") or (
            node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node
        )
        assert "type" in node or untyped, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "nullable" not in node, path
    assert set(root["properties"]["metadata"]["properties"]) == {"name"}  # all a CRD may restrict there
    # Every default must itself pass the schema (the API server refuses the CRD otherwise).
    filled = crd_validator.defaulted(
        {
            "apiVersion": "serving.kubeserve.io/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "defaults"},
            "spec": {"model": {"version": "1", "uri": "file:///m.onnx"}, "autoscaling": {"maxReplicas": 1}},
        }
    )
    assert crd_validator.errors(filled) == []
    assert filled["spec"]["autoscaling"] == {
        "engine": "hpa",
        "maxReplicas": 1,
        "minReplicas": 1,
        "targetQueueDelaySeconds": 0.05,
    }
