"""Write docs/crd-reference.md from crds/inferenceservices.yaml, the API's one source of truth.

    python docs/crd_reference.py            # rewrite docs/crd-reference.md
    python docs/crd_reference.py --check    # exit 1 if it is out of date

Every field of the schema gets one row: its path, type, default, constraints (the bounds, enums, patterns and CEL
rules the API server enforces) and description. Nothing is written by hand, so the reference cannot drift from
what the API server accepts; tests/deploy/test_docs.py fails when the checked-in file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "inferenceservices.yaml"
OUTPUT = REPO / "docs" / "crd-reference.md"

# Schema keys that are rendered as constraints, in this order, with how each reads.
BOUNDS = {
    "minimum": "min",
    "maximum": "max",
    "minLength": "min length",
    "maxLength": "max length",
    "minItems": "min items",
    "maxItems": "max items",
    "minProperties": "min keys",
    "maxProperties": "max keys",
}


HEADER = "| Field | Type | Default | Constraints | Description |"


@dataclass(frozen=True)
class Field:
    path: str
    schema: dict[str, Any]
    required: bool


def children(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """(path suffix, schema, required) of what a schema node contains: properties, list items, map values."""
    required = set(schema.get("required", []))
    found = [(f".{name}", child, name in required) for name, child in schema.get("properties", {}).items()]
    items = schema.get("items")
    # A list of scalars is a leaf (`[string]`); a list of objects has fields of its own.
    if isinstance(items, dict) and children(items):
        found.append(("[]", items, False))
    values = schema.get("additionalProperties")
    if isinstance(values, dict) and children(values):
        found.append((".*", values, False))
    return found


def fields(schema: dict[str, Any], path: str = "") -> Iterator[Field]:
    for suffix, child, required in children(schema):
        field = Field((path + suffix).lstrip("."), child, required)
        yield field
        yield from fields(child, field.path)


def type_of(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = schema.get("type", "any")
    if "format" in schema:
        kind = f"{kind} ({schema['format']})"
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {type_of(schema['items'])}"
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict):
            return f"map of {type_of(values)}"
        if schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties"):
            return "object (free-form)"
    return kind


def code(value: str) -> str:
    # A backtick span inside a table cell: pipes must still be escaped for GitHub's table parser.
    return f"`{value}`".replace("|", "\\|")


def text(value: str) -> str:
    return " ".join(value.split()).replace("|", "\\|")


def constraints(field: Field) -> list[str]:
    schema = field.schema
    found = ["required"] if field.required else []
    for key, label in BOUNDS.items():
        if key in schema:
            exclusive = key == "minimum" and schema.get("exclusiveMinimum")
            exclusive = exclusive or (key == "maximum" and schema.get("exclusiveMaximum"))
            found.append(f"{'>' if key == 'minimum' else '<'} {schema[key]}" if exclusive else f"{label} {schema[key]}")
    if "enum" in schema:
        found.append("one of " + ", ".join(code(json.dumps(value)) for value in schema["enum"]))
    if "pattern" in schema:
        found.append("pattern " + code(schema["pattern"]))
    values = schema.get("additionalProperties")
    if isinstance(values, dict) and not children(values):
        found.extend(f"values: {constraint}" for constraint in constraints(Field("", values, required=False)))
    items = schema.get("items")
    if isinstance(items, dict) and not children(items):
        found.extend(f"items: {constraint}" for constraint in constraints(Field("", items, required=False)))
    if "x-kubernetes-list-type" in schema:
        keys = schema.get("x-kubernetes-list-map-keys")
        found.append(f"list type {schema['x-kubernetes-list-type']}" + (f" by {', '.join(keys)}" if keys else ""))
    found.extend(f"rule: {text(rule['message'])}" for rule in schema.get("x-kubernetes-validations", []))
    return found


def row(field: Field) -> str:
    schema = field.schema
    default = code(json.dumps(schema["default"], separators=(", ", ": "))) if "default" in schema else ""
    cells = [
        code(field.path),
        type_of(schema),
        default,
        "; ".join(constraints(field)),
        text(schema.get("description", "")),
    ]
    return "| " + " | ".join(cells) + " |"


def render(crd: dict[str, Any]) -> str:
    spec = crd["spec"]
    names = spec["names"]
    lines = [
        f"# {names['kind']} reference",
        "",
        "<!-- Generated by docs/crd_reference.py from crds/inferenceservices.yaml: do not edit by hand. -->",
        "",
        f"`{names['kind']}` (`{spec['group']}`, {spec['scope'].lower()}; plural `{names['plural']}`, "
        f"short names {', '.join(code(short) for short in names.get('shortNames', []))}"
        + "".join(f", category {code(category)}" for category in names.get("categories", []))
        + "). Paths use `[]` for the "
        "items of a list and `*` for the values of a map. Constraints are enforced by the API server; "
        "[the InferenceService guide](guide/inferenceservice.md) explains what the operator does with each field.",
    ]
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        lines += ["", f"## `{spec['group']}/{version['name']}`", ""]
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            lines += [
                "### `kubectl get` columns",
                "",
                "| Column | Type | From | Shown | Description |",
                "| --- | --- | --- | --- | --- |",
            ]
            for column in columns:
                shown = "with `-o wide`" if column.get("priority", 0) else "always"
                cells = [column["name"], column["type"], code(column["jsonPath"]), shown]
                lines.append("| " + " | ".join([*cells, text(column.get("description", ""))]) + " |")
            lines.append("")
        everything = list(fields(schema))
        # apiVersion and kind (top-level leaves) share one table; metadata, spec and status get one each.
        sections: dict[str, list[Field]] = {}
        for field in everything:
            top = field.path.split(".")[0].split("[")[0]
            title = "Top level" if not children(schema["properties"][top]) else code(top)
            sections.setdefault(title, []).append(field)
        for title, members in sections.items():
            lines += [f"### {title}", "", HEADER, "| --- | --- | --- | --- | --- |"]
            lines += [row(field) for field in members]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in file is out of date")
    args = parser.parse_args()
    generated = render(yaml.safe_load(CRD.read_text()))
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != generated:
            sys.exit(f"{OUTPUT.relative_to(REPO)} is out of date: run python docs/crd_reference.py")
        return
    OUTPUT.write_text(generated)
    print(OUTPUT.relative_to(REPO))


if __name__ == "__main__":
    main()
