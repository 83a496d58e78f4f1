"""The generated references (docs/crd-reference.md, docs/metrics.md) match their sources, and the README links them."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def generator(name: str) -> ModuleType:
    # docs/ is not a package: load the generator from its file, as `python docs/NAME.py` runs it.
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def leaves(schema: dict, path: str = "") -> list[str]:
    """Every leaf field's path, walked here independently of the generator: `[]` for list items, `*` for map values."""
    found = []
    nested = [(f"{path}.{name}".lstrip("."), child) for name, child in schema.get("properties", {}).items()]
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        child = schema.get(key)
        if isinstance(child, dict) and (child.get("properties") or child.get("items")):
            nested.append((path + suffix, child))
    for child_path, child in nested:
        found.extend(leaves(child, child_path) or [child_path])
    return found


def test_the_crd_reference_is_generated_from_the_crd():
    crd = yaml.safe_load((REPO / "crds" / "inferenceservices.yaml").read_text())

    assert (DOCS / "crd-reference.md").read_text() == generator("crd_reference").render(crd), (
        "docs/crd-reference.md is out of date: run python docs/crd_reference.py"
    )


def test_the_crd_reference_lists_every_leaf_field_with_its_type():
    crd = yaml.safe_load((REPO / "crds" / "inferenceservices.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    rows = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^\| `([^`]+)` \| ([^|]+) \|", (DOCS / "crd-reference.md").read_text(), re.M)
    }
    paths = leaves(version["schema"]["openAPIV3Schema"])

    assert len(paths) > 80
    missing = [path for path in paths if path not in rows]
    assert not missing, f"docs/crd-reference.md lacks {missing}"
    assert rows["spec.model.uri"] == "string"
    assert rows["spec.batching.preferredBatchSize"] == "array of integer"


def test_the_crd_reference_shows_defaults_and_constraints():
    text = (DOCS / "crd-reference.md").read_text()
    (max_batch,) = [line for line in text.splitlines() if line.startswith("| `spec.batching.maxBatchSize` |")]
    (engine,) = [line for line in text.splitlines() if line.startswith("| `spec.autoscaling.engine` |")]

    assert "| `32` |" in max_batch
    assert "min 0" in max_batch
    assert '`"hpa"`, `"keda"`' in engine


def test_the_metrics_reference_is_generated_from_the_registries():
    assert (DOCS / "metrics.md").read_text() == generator("metrics_reference").render(), (
        "docs/metrics.md is out of date: run python docs/metrics_reference.py"
    )


def test_the_metrics_reference_lists_every_metric_the_runtime_serves():
    from kubeserve.runtime.metrics import ServerMetrics
    from prometheus_client import generate_latest

    # What a scrape actually returns, not what the generator reads: every exposed family must be documented.
    exposed = generate_latest(ServerMetrics("mlp", "1").registry).decode()
    names = set(re.findall(r"^# TYPE (\S+) ", exposed, re.M))
    text = (DOCS / "metrics.md").read_text()

    assert names
    assert not [name for name in names if f"`{name}" not in text]


def test_the_readme_links_the_references():
    readme = (REPO / "README.md").read_text()

    for target in ("docs/crd-reference.md", "docs/metrics.md", "docs/http-limits.md"):
        assert f"]({target})" in readme
        assert (REPO / target).exists()


def test_the_readme_table_of_contents_links_existing_headings():
    readme = (REPO / "README.md").read_text()
    # GitHub's anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{2,4} (.+)$", readme, re.M)
    }
    links = re.findall(r"\]\(#([^)]+)\)", readme)

    assert len(links) > 10
    assert not [link for link in links if link not in anchors]
    # The two commands stay first.
    assert readme.index("make demo") < readme.index("](#")


def test_the_http_limits_page_lists_every_limit_with_its_default():
    """Every setting the HTTP layer reads, every fixed limit it keeps, and every reason it refuses for, on the
    operators' page, with the value the code has."""
    from kubeserve.runtime.config import RuntimeSettings
    from kubeserve.runtime.server import http
    from kubeserve.runtime.server.connections import Deadlines

    page = (REPO / "docs" / "http-limits.md").read_text()
    fields = RuntimeSettings.model_fields

    def shown(value: float) -> str:
        mib, kib = value / 2**20, value / 2**10
        return f"{mib:g} MiB" if mib >= 1 and mib.is_integer() else f"{kib:g} KiB" if kib.is_integer() else f"{value:g}"

    settings = [
        "max_request_bytes",
        "max_buffered_request_bytes",
        "request_head_timeout_seconds",
        "min_request_body_bytes_per_second",
        "request_body_rate_window_seconds",
        "idle_timeout_seconds",
    ]
    # The deadlines are those settings: none the page could miss.
    assert len(Deadlines.__dataclass_fields__) == 4
    for name in settings:
        assert f"`{name}`" in page, name
        default = fields[name].default
        assert shown(default) in page, (name, shown(default))
    for constant in (http.MAX_HEAD_BYTES, http.CHUNK_FRAMING_ALLOWANCE, http.LINGER_BYTES):
        assert shown(constant) in page, constant
    assert f"{http.MAX_PENDING} " in page and f"{http.LINGER_SECONDS:g} s" in page
    for reason in http.Refusal:
        assert f"`{reason}`" in page, reason


MISSING = object()


def crd_default(schema: dict, path: str) -> Any:
    """The CRD's default of a field (``spec.rollout.steps``), or ``MISSING``."""
    node = schema
    for part in path.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return MISSING
    return node.get("default", MISSING)


def test_every_default_the_readme_states_is_the_crds():
    """The README's API table restates defaults for readers; the CRD (the API's one source) decides them."""
    crd = yaml.safe_load((REPO / "crds" / "inferenceservices.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    readme = (REPO / "README.md").read_text()
    checked = 0
    for paths, defaults in re.findall(r"^\| (`spec\.[^|]+) \| ([^|]+) \|", readme, re.M):
        names = [name.strip().strip("`") for name in paths.split(",")]
        full = [names[0], *(names[0].rsplit(".", 1)[0] + name for name in names[1:])]  # `.other` shorthand
        values = [value.strip() for value in defaults.split(",")] if len(full) > 1 else [defaults.strip()]
        for path, value in zip(full, values, strict=False):
            default = crd_default(schema, path)
            if default is MISSING or not re.fullmatch(r"`[^`]+`", value):
                continue
            assert yaml.safe_load(value.strip("`")) == default, f"README says {path} defaults to {value}"
            checked += 1
    assert checked >= 20
