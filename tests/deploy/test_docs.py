"""The documentation: the generated references (docs/crd-reference.md, docs/metrics.md) match their sources, the
site builds with warnings as errors (so every link in it is alive), the pages state what the code does, and the
README stays short and links into the site."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"


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


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path):
    """`mkdocs build --strict`: a dead link or anchor, or a page missing from the nav, fails it."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install 'kubeserve[docs]'")
    # Not --quiet: mkdocs counts the warnings --strict fails on only at the levels it logs.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,  # mkdocs.yml's snippets read README.md from here
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()

    assert len(lines) <= 250
    first = "\n".join(lines[:40])
    assert "make demo" in first and "make test" in first


def test_the_readme_links_existing_pages_and_headings():
    readme = README.read_text()
    # GitHub's anchors: lower case, punctuation but `-` and `_` dropped, spaces to `-`.
    anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{2,4} (.+)$", readme, re.M)
    }
    in_page = re.findall(r"\]\(#([^)]+)\)", readme)
    pages = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme)

    assert in_page and not [link for link in in_page if link not in anchors]
    for target in ("docs/crd-reference.md", "docs/metrics.md", "docs/http-limits.md", "docs/reference/settings.md"):
        assert target in pages
    assert not [page for page in pages if not (REPO / page).exists()]


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


def test_every_default_the_inferenceservice_guide_states_is_the_crds():
    """The guide's API table restates defaults for readers; the CRD (the API's one source) decides them."""
    crd = yaml.safe_load((REPO / "crds" / "inferenceservices.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    page = (DOCS / "guide" / "inferenceservice.md").read_text()
    checked = 0
    for paths, defaults in re.findall(r"^\| (`spec\.[^|]+) \| ([^|]+) \|", page, re.M):
        names = [name.strip().strip("`") for name in paths.split(",")]
        full = [names[0], *(names[0].rsplit(".", 1)[0] + name for name in names[1:])]  # `.other` shorthand
        values = [value.strip() for value in defaults.split(",")] if len(full) > 1 else [defaults.strip()]
        for path, value in zip(full, values, strict=False):
            default = crd_default(schema, path)
            if default is MISSING or not re.fullmatch(r"`[^`]+`", value):
                continue
            assert yaml.safe_load(value.strip("`")) == default, f"the guide says {path} defaults to {value}"
            checked += 1
    assert checked >= 20


def test_make_bench_writes_the_benchmarks_page_only_when_asked():
    """`make bench` prints its tables and keeps them in bench/out/ (ignored by git); `make bench-docs` also rewrites
    the page's tables, between the markers bench/run.py writes between (checked here, not at the end of a long run)."""
    makefile = (REPO / "Makefile").read_text()
    recipe = {target: makefile.split(f"\n{target}: ", 1)[1].split("\n\n", 1)[0] for target in ("bench", "bench-docs")}
    page = (DOCS / "benchmarks.md").read_text()
    ignored = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", "bench/out/results.md"], check=False)

    assert "bench/run.py" in recipe["bench"] and "--docs" not in recipe["bench"]
    assert "bench/run.py --docs" in recipe["bench-docs"]
    for target in ("bench", "bench-docs"):  # perf_analyzer first, and the bench goes on where it cannot be fetched
        assert "\t-@$(MAKE) --no-print-directory perf-analyzer" in recipe[target]
    assert ignored.returncode == 0
    for section in ("bench", "bench-optimization"):
        assert page.count(f"<!-- {section}:begin -->") == page.count(f"<!-- {section}:end -->") == 1
