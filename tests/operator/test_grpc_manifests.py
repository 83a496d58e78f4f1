"""gRPC in the manifests: ports, probes and Services by ``spec.runtime.protocols``, the runtime's settings, the status's
gRPC address, and the GRPCRoute beside the HTTPRoute, valid as Gateway API's schema says."""

from __future__ import annotations

import kubernetes_validate
import yaml
from kubeserve.operator import manifests, naming
from kubeserve.operator.manifests.http_route import grpc_route, http_route
from kubeserve.operator.runtime_config import runtime_settings
from kubeserve.operator.settings import OperatorSettings
from kubeserve.operator.spec import parse
from kubeserve.runtime.config import RuntimeSettings

SETTINGS = OperatorSettings(cpu_image="registry.example/runtime:1", cuda_image="registry.example/runtime-cuda:1")


def _rendered(isvc_factory, **runtime) -> dict[str, dict]:
    body = isvc_factory(runtime=runtime) if runtime else isvc_factory()
    children = manifests.children(parse(body), SETTINGS)
    rendered: dict[str, dict] = {}
    for manifest in children.manifests:
        kubernetes_validate.validate(manifest, "1.37", strict=True)
        rendered.setdefault(manifest["kind"], manifest)
    return rendered


def _container(rendered: dict[str, dict]) -> dict:
    (container,) = rendered["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def test_both_protocols_by_default_http_probes_and_an_h2c_service_port(isvc_factory):
    rendered = _rendered(isvc_factory)
    container = _container(rendered)
    assert [(port["name"], port["containerPort"]) for port in container["ports"]] == [("http", 8080), ("grpc", 8001)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    (grpc_port,) = [port for port in rendered["Service"]["spec"]["ports"] if port["name"] == "grpc"]
    assert grpc_port == {
        "name": "grpc",
        "port": 8001,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    # Both is the runtime's default: the config file (and so every revision's digest) is what it was without gRPC.
    config = yaml.safe_load(rendered["ConfigMap"]["data"]["runtime.yaml"])
    assert "protocols" not in config and "grpc_port" not in config
    assert RuntimeSettings.model_validate(config).grpc_port == naming.GRPC_PORT


def test_grpc_only_pods_are_probed_over_grpc(isvc_factory):
    rendered = _rendered(isvc_factory, protocols=["grpc"])
    container = _container(rendered)
    assert [port["name"] for port in container["ports"]] == ["grpc"]
    assert container["readinessProbe"]["grpc"] == {"port": 8001, "service": ""}
    assert container["startupProbe"]["grpc"] == {"port": 8001, "service": ""}
    assert container["livenessProbe"]["grpc"] == {"port": 8001, "service": "liveness"}
    assert [port["name"] for port in rendered["Service"]["spec"]["ports"]] == ["grpc"]
    config = yaml.safe_load(rendered["ConfigMap"]["data"]["runtime.yaml"])
    assert RuntimeSettings.model_validate(config).protocols == ["grpc"]


def test_http_only_pods_have_no_grpc_port(isvc_factory):
    rendered = _rendered(isvc_factory, protocols=["http"])
    assert [port["name"] for port in _container(rendered)["ports"]] == ["http"]
    assert [port["name"] for port in rendered["Service"]["spec"]["ports"]] == ["http"]
    assert runtime_settings(parse(isvc_factory(runtime={"protocols": ["http"]})))["protocols"] == ["http"]


def test_the_crd_rejects_no_protocol_and_unknown_ones(crd_validator, isvc_factory):
    assert crd_validator.errors(isvc_factory(runtime={"protocols": ["grpc"]})) == []
    assert crd_validator.errors(isvc_factory(runtime={"protocols": []})) != []
    assert crd_validator.errors(isvc_factory(runtime={"protocols": ["h3"]})) != []
    defaulted = crd_validator.defaulted(isvc_factory())
    assert defaulted["spec"]["runtime"]["protocols"] == ["http", "grpc"]


def test_the_grpc_route_carries_the_http_routes_weights_and_is_valid_gateway_api(isvc_factory, crd_schemas):
    gateway = {"parentRef": {"name": "public", "namespace": "gateways"}, "hostnames": ["mlp.example.com"]}
    rollout = {"steps": [{"weight": 25, "pauseSeconds": 600}], "trafficRouting": {"gatewayAPI": gateway}}
    isvc = parse(isvc_factory(rollout=rollout))
    routing = isvc.spec.rollout.traffic_routing
    weights = {"r1": 75, "r2": 25}
    route, grpc = http_route(isvc, routing.gateway_api, weights), grpc_route(isvc, routing.gateway_api, weights)
    assert crd_schemas["GRPCRoute"].errors(grpc) == []
    assert grpc["kind"] == "GRPCRoute" and grpc["spec"]["parentRefs"] == route["spec"]["parentRefs"]
    assert grpc["spec"]["hostnames"] == route["spec"]["hostnames"]
    backends = grpc["spec"]["rules"][0]["backendRefs"]
    assert [(ref["name"], ref["weight"]) for ref in backends] == [
        (ref["name"], ref["weight"]) for ref in route["spec"]["rules"][0]["backendRefs"]
    ]
    assert {ref["port"] for ref in backends} == {8001}
