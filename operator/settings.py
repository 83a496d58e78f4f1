"""The operator's own settings, from ``KUBESERVE_OPERATOR_<NAME>`` environment variables (flags may override), and
the ``OTEL_*`` variables it passes on to the runtime pods.

Only OpenTelemetry's exporter, sampler and batch-processor settings are passed on (``OTEL_FORWARDED``,
``OTEL_FORWARDED_PREFIXES``): never the operator's own identity (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
and ``OTEL_RESOURCE_ATTRIBUTES_POD_NAME``, the operator pod's name, which the OpenTelemetry Operator injects and which
would change every revision at each operator restart), whose runtime values the operator sets per InferenceService,
and never a secret (``*HEADERS*``: the pods' spec is plain text; those go in ``spec.runtime.env`` with
``valueFrom.secretKeyRef``)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Literal

from kubeserve.operator.spec import PROMETHEUS_URL
from kubeserve.runtime import __version__
from kubeserve.runtime.config import describe_validation_error, settings_from_environment, split_commas
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "KUBESERVE_OPERATOR_"
# OpenTelemetry's variables the operator passes on from its own environment to every runtime container (docs:
# observability, "Tracing"): where and how spans are exported and sampled. The chart sets OTEL_EXPORTER_OTLP_ENDPOINT
# (tracing.otlpEndpoint) and any of these (tracing.env).
OTEL_FORWARDED = frozenset(
    {
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    }
)
OTEL_FORWARDED_PREFIXES = ("OTEL_BSP_",)  # the batch span processor's

# An in-cluster address as host:port (the KEDA HTTP add-on's services).
HOST_PORT = r"^[a-z0-9.-]+:[0-9]+$"
# kopf pauses every operator that sees a peer of the same priority, so each replica draws its own:
# the highest one works, the others wait and take over when its keep-alive expires.
_PRIORITY_RANGE = (1, 2**31 - 1)


class SettingsError(Exception):
    """The environment holds a setting that cannot be used; the message names it."""


class OperatorSettings(BaseModel):
    """Everything the operator can be told. Field descriptions double as documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_image: str = Field(
        default=f"ghcr.io/kubeserve/kubeserve-runtime:{__version__}",
        min_length=1,
        description="runtime image for InferenceServices that ask for no GPU",
    )
    cuda_image: str = Field(
        default=f"ghcr.io/kubeserve/kubeserve-runtime-cuda:{__version__}",
        min_length=1,
        description="runtime image for InferenceServices whose resources ask for nvidia.com/gpu",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="runtime pods' image pull policy when the spec sets none"
    )
    namespaces: tuple[str, ...] = Field(
        default=(), description="namespaces to watch (comma-separated); empty watches the whole cluster"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    peering_name: str = Field(
        default="kubeserve", min_length=1, description="the kopf peering object the replicas share"
    )
    peering_priority: int = Field(
        default_factory=lambda: random.randint(*_PRIORITY_RANGE),
        ge=0,
        description="this replica's peering priority (the highest works); random when unset",
    )
    standalone: bool = Field(default=False, description="run without peering (a single replica)")
    health_port: int = Field(
        default=8081, ge=0, le=65535, description="port of the liveness endpoint /healthz; 0 turns it off"
    )
    metrics_port: int = Field(
        default=8082, ge=0, le=65535, description="port of the operator's Prometheus metrics /metrics; 0 turns it off"
    )
    api_timeout_seconds: float = Field(
        default=30.0, gt=0, description="longest wait for one Kubernetes API request of the operator's own"
    )

    queue_delay_window: str = Field(
        default="1m",
        pattern=r"^([0-9]+(ms|s|m|h))+$",
        description="rate window of the per-pod mean queue delay in KEDA's Prometheus query (the chart passes "
        "monitoring.adapterRule.window, the adapter rule's)",
    )
    prometheus_server_address: str = Field(
        default="",
        pattern=f"^({PROMETHEUS_URL.strip('^$')})?$",  # the spec's own form, or empty
        description="the Prometheus KEDA queries for autoscaling engine keda, unless the InferenceService names one",
    )
    keda_http_interceptor: str = Field(
        default="keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local:8080",
        pattern=HOST_PORT,
        description="the KEDA HTTP add-on's interceptor proxy (host:port), which holds requests while an "
        "InferenceService scales from zero",
    )
    keda_http_scaler: str = Field(
        default="keda-add-ons-http-external-scaler.keda:9090",
        pattern=HOST_PORT,
        description="the KEDA HTTP add-on's external scaler (host:port), KEDA's trigger for scaling from zero",
    )

    otel_env: dict[str, str] = Field(
        default_factory=dict,
        description="the operator's own OTEL_* exporter settings (OTEL_FORWARDED), which every runtime container gets "
        "(tracing)",
    )

    @field_validator("otel_env")
    @classmethod
    def _forwarded_only(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: setting for name, setting in value.items() if otel_forwarded(name)}

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        return split_commas(value)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def otel_forwarded(name: str) -> bool:
    """Whether the operator's ``name`` variable goes on to the runtime containers (never a header: secrets)."""
    return "HEADERS" not in name and (name in OTEL_FORWARDED or name.startswith(OTEL_FORWARDED_PREFIXES))


# The settings read from KUBESERVE_OPERATOR_<NAME>: all but otel_env, which the OTEL_* variables themselves make.
SETTING_NAMES: tuple[str, ...] = tuple(name for name in OperatorSettings.model_fields if name != "otel_env")


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def load_settings(environ: Mapping[str, str], overrides: Mapping[str, object] | None = None) -> OperatorSettings:
    """Settings from the environment, then ``overrides`` (flags) on top; unset overrides are None."""
    values: dict[str, object] = dict(settings_from_environment(environ, SETTING_NAMES, ENV_PREFIX))
    values["otel_env"] = {name: value for name, value in environ.items() if otel_forwarded(name)}
    values.update({name: value for name, value in (overrides or {}).items() if value is not None})
    try:
        return OperatorSettings.model_validate(values)
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error, "invalid operator settings", env_name)) from error
