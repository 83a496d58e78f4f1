"""The operator's settings, from KUBESERVE_OPERATOR_* environment variables."""

from __future__ import annotations

import pytest
from kubeserve.operator.settings import SettingsError, load_settings


def test_defaults_watch_the_whole_cluster_with_peering():
    settings = load_settings({})
    assert settings.clusterwide
    assert (settings.standalone, settings.peering_name, settings.log_level) == (False, "kubeserve", "info")
    assert settings.cpu_image.startswith("ghcr.io/kubeserve/kubeserve-runtime:")
    assert settings.cuda_image.startswith("ghcr.io/kubeserve/kubeserve-runtime-cuda:")
    assert settings.peering_priority >= 1
    assert settings.health_port == 8081


def test_the_environment_sets_everything():
    settings = load_settings(
        {
            "KUBESERVE_OPERATOR_CPU_IMAGE": "mirror/cpu:1",
            "KUBESERVE_OPERATOR_CUDA_IMAGE": "mirror/cuda:1",
            "KUBESERVE_OPERATOR_IMAGE_PULL_POLICY": "Never",
            "KUBESERVE_OPERATOR_NAMESPACES": "team-a, team-b",
            "KUBESERVE_OPERATOR_LOG_LEVEL": "debug",
            "KUBESERVE_OPERATOR_PEERING_NAME": "serving",
            "KUBESERVE_OPERATOR_PEERING_PRIORITY": "100",
            "KUBESERVE_OPERATOR_STANDALONE": "true",
            "KUBESERVE_OPERATOR_HEALTH_PORT": "0",
            "KUBESERVE_OPERATOR_API_TIMEOUT_SECONDS": "5",
            "KUBESERVE_PORT": "tcp://10.0.0.1:80",  # a service link, not ours: ignored
        }
    )
    assert (settings.cpu_image, settings.cuda_image, settings.image_pull_policy) == (
        "mirror/cpu:1",
        "mirror/cuda:1",
        "Never",
    )
    assert settings.namespaces == ("team-a", "team-b") and not settings.clusterwide
    assert (settings.log_level, settings.peering_name, settings.peering_priority) == ("debug", "serving", 100)
    assert (settings.standalone, settings.health_port, settings.api_timeout_seconds) == (True, 0, 5.0)


def test_flags_override_the_environment_and_unset_flags_do_not():
    environment = {"KUBESERVE_OPERATOR_NAMESPACES": "team-a", "KUBESERVE_OPERATOR_LOG_LEVEL": "error"}
    settings = load_settings(environment, {"namespaces": ["team-b"], "log_level": None, "standalone": True})
    assert settings.namespaces == ("team-b",)
    assert settings.log_level == "error"
    assert settings.standalone


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KUBESERVE_OPERATOR_LOG_LEVEL", "verbose"),
        ("KUBESERVE_OPERATOR_STANDALONE", "maybe"),
        ("KUBESERVE_OPERATOR_HEALTH_PORT", "70000"),
        ("KUBESERVE_OPERATOR_IMAGE_PULL_POLICY", "Sometimes"),
        ("KUBESERVE_OPERATOR_CPU_IMAGE", ""),
    ],
)
def test_a_bad_value_names_its_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: value})


def test_the_otel_variables_are_kept_to_pass_on_and_are_no_setting_of_their_own():
    settings = load_settings(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_SERVICE_NAME": "serving",  # the operator's own: not passed on
            "OTEL_RESOURCE_ATTRIBUTES": "k8s.pod.name=operator-abc",
            "OTEL_RESOURCE_ATTRIBUTES_POD_NAME": "operator-abc",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=secret",  # a secret: never in a pod's spec
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=secret",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
            "OTEL_LOGS_EXPORTER": "otlp",  # not the runtime's
            "OTELX": "not OpenTelemetry's",
            "KUBESERVE_OPERATOR_OTEL_ENV": "{}",  # not a setting: ignored
        }
    )
    assert settings.otel_env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
    }
    assert load_settings({}).otel_env == {}
