"""Write charts/kubeserve/README.md (what `helm show readme` prints) from the chart's own files.

    python charts/chart_readme.py            # rewrite charts/kubeserve/README.md
    python charts/chart_readme.py --check    # exit 1 if it is out of date

Every leaf of values.yaml gets one row: its path, its type (from values.schema.json: the types, enums, bounds and
patterns helm enforces), its default (values.yaml) and its description (the comment lines right above it in
values.yaml). The intro comes from Chart.yaml. Nothing is written by hand, so the README cannot drift from the chart;
tests/deploy/test_chart.py fails when the checked-in file differs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "kubeserve"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
OUTPUT = CHART / "README.md"

# A mapping key on its own line ("  name: value"), with its indentation; list items ("- ...") never match.
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?:\s|$)")
COMMENT_LINE = re.compile(r"^ *# ?(?P<text>.*)$")
INDENT = 2  # values.yaml's indentation step
NO_IMAGE = (
    "**No image is published; build it: `make kind`** (from a clone of the repository, with Docker) builds both "
    "images,\ncreates a kind cluster, loads them into it, installs this chart with them and applies the CPU sample. "
    "For another\ncluster, build `docker/operator.Dockerfile` and `docker/runtime-cpu.Dockerfile`, push them to your "
    "registry and set\n`operator.image.repository`, `operator.image.tag` and `runtime.cpuImage`: with the defaults, "
    "the pods cannot pull their images."
)


@dataclass(frozen=True)
class Value:
    path: tuple[str, ...]
    default: Any
    schema: dict[str, Any]
    description: str

    @property
    def is_leaf(self) -> bool:
        # Lists are values as a whole (a list of tolerations, of namespaces): their items are not settings. So is a
        # mapping the schema leaves free-form (resources, nodeSelector): its keys are Kubernetes', not the chart's.
        free_form = self.schema.get("type") == "object" and "properties" not in self.schema
        return not isinstance(self.default, dict) or not self.default or free_form


def comments(text: str) -> dict[tuple[str, ...], str]:
    """The comment block right above each key of values.yaml, by the key's path.

    Lines inside lists get paths that name no mapping key (they are dropped by the caller), which keeps this a
    line scan rather than a YAML parser of its own: values.yaml is plain, block-style YAML.
    """
    found: dict[tuple[str, ...], str] = {}
    stack: list[str] = []
    pending: list[str] = []
    for line in text.splitlines():
        if comment := COMMENT_LINE.match(line):
            pending.append(comment["text"])
            continue
        key = KEY_LINE.match(line)
        if key:
            depth = len(key["indent"]) // INDENT
            stack = [*stack[:depth], key["key"]]
            if pending:
                found[tuple(stack)] = " ".join(pending)
        # A blank line, a list item or a key: the comment block above ends here.
        pending = []
    return found


def schema_at(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for key in path:
        schema = schema.get("properties", {}).get(key, {})
    return schema


def walk(
    values: dict[str, Any], schema: dict[str, Any], described: dict[tuple[str, ...], str], prefix: tuple[str, ...] = ()
) -> Iterator[Value]:
    for key, default in values.items():
        path = (*prefix, key)
        value = Value(path, default, schema_at(schema, path), described.get(path, ""))
        yield value
        if not value.is_leaf:
            yield from walk(default, schema, described, path)


def type_of(value: Value) -> str:
    """The type as the schema has it, with what else it constrains (helm rejects values outside these)."""
    schema = value.schema
    if "enum" in schema:
        return "one of " + ", ".join(f"`{choice}`" for choice in schema["enum"])
    kinds = schema.get("type", type(value.default).__name__)
    text = " or ".join(kinds) if isinstance(kinds, list) else kinds
    items = schema.get("items", {})
    if text == "array" and "type" in items:
        text = f"array of {items['type']}"
    bounds = [f"{label} {schema[key]}" for key, label in (("minimum", "≥"), ("maximum", "≤")) if key in schema]
    pattern = schema.get("pattern") or items.get("pattern")
    if pattern:
        bounds.append(f"matching `{pattern}`")
    return ", ".join([text, *bounds])


def default_of(value: Value) -> str:
    if value.default in ("", None):
        return '`""`' if value.default == "" else "`null`"
    # One line, as one would pass it to --set-json.
    return "`" + json.dumps(value.default, separators=(", ", ": ")) + "`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values: Iterable[Value]) -> list[str]:
    """Every leaf, and every mapping with a comment of its own (which says what its values are for)."""
    lines = ["| Value | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for value in values:
        if value.is_leaf or value.description:
            kind = type_of(value) if value.is_leaf else "object"
            default = default_of(value) if value.is_leaf else ""
            lines.append(f"| `{'.'.join(value.path)}` | {cell(kind)} | {cell(default)} | {cell(value.description)} |")
    return lines


def render() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    text = VALUES.read_text()
    values = yaml.safe_load(text)
    schema = json.loads(SCHEMA.read_text())
    described = comments(text)
    home = chart["home"]
    lines = [
        f"# {chart['name']}",
        "",
        "<!-- Generated by charts/chart_readme.py from values.yaml and values.schema.json: edit those. -->",
        "",
        f"{chart['description']}.",
        "",
        "The chart installs the InferenceService CRD (and kopf's peering CRDs), the operator's Deployment with its",
        "ServiceAccount, RBAC and PodDisruptionBudget, and the kopf peering object; optionally a PodMonitor for the",
        "runtime and operator pods, the prometheus-adapter rule for autoscaling, a Grafana dashboard and a",
        "NetworkPolicy for the runtime pods. `helm install` prints what to apply next (NOTES.txt).",
        "",
        "```sh",
        f"helm install {chart['name']} charts/{chart['name']} --namespace kubeserve-system --create-namespace",
        "```",
        "",
        NO_IMAGE,
        "",
        f"Chart {chart['version']}, app {chart['appVersion']}, Kubernetes {chart['kubeVersion']}. "
        f"Serving, autoscaling and rollouts are described in the repository's README: {home}#readme.",
        "",
        "## Values",
        "",
        "Set with `--set path=value` or `-f my-values.yaml`; helm checks them against values.schema.json.",
    ]
    # One table per section (a top-level mapping), then one for the top-level values that are not sections.
    sections = {key: default for key, default in values.items() if isinstance(default, dict) and default}
    loose = [
        Value((key,), default, schema_at(schema, (key,)), described.get((key,), ""))
        for key, default in values.items()
        if key not in sections
    ]
    for section, defaults in sections.items():
        lines += ["", f"### `{section}`", ""]
        if (section,) in described:
            lines += [described[section,], ""]
        lines += table(walk(defaults, schema, described, (section,)))
    if loose:
        lines += ["", "### Other values", "", *table(loose)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date, write nothing")
    arguments = parser.parse_args(argv)
    text = render()
    if arguments.check:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is out of date: run python charts/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
