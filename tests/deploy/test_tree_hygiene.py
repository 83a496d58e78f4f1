"""What the make targets leave on a user's machine: the demos write nothing git tracks unless asked, `make demo`
installs only what bench/demo.py imports (the demo extra), the quickstart's venv/ is ignored, and `make test` stops
with a clear message where its helm and kubectl wheels cannot run."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from demo_autoscale import DOCS, ROOT, parse_arguments  # bench/, put on sys.path above

REPO = ROOT
BENCH = REPO / "bench"


def ignored(path: Path) -> bool:
    result = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", path], check=False, timeout=30)
    return result.returncode == 0


def test_the_quickstarts_venv_is_ignored():
    assert ignored(REPO / "venv" / "bin" / "python")


def test_demo_autoscale_writes_into_an_ignored_folder_unless_asked_for_the_docs():
    default = parse_arguments([]).out
    assert ignored(default / "autoscale.csv") and ignored(default / "autoscale.png")
    assert parse_arguments(["--docs"]).out == DOCS == REPO / "docs"


def make() -> str:
    found = shutil.which("make")
    if found is None:
        pytest.skip("no make here")
    return found


def test_make_demo_installs_the_demo_extra_only():
    dry = subprocess.run([make(), "-C", REPO, "-n", "-B", "demo"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    installs = [line for line in dry.stdout.splitlines() if " -e " in line]
    assert installs and all(line.endswith("-e '.[demo]'") for line in installs), installs


def imported_modules(path: Path, seen: set[Path]) -> set[str]:
    """Top-level modules a bench script imports, following the bench/ modules it imports (they are its code)."""
    seen.add(path)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            local = BENCH / f"{top}.py"
            if local.exists():
                if local not in seen:
                    found |= imported_modules(local, seen)
            else:
                found.add(top)
    return found


def requirement_closure(distribution: str, extras: frozenset[str]) -> set[str]:
    """Every distribution `pip install distribution[extras]` brings here, by normalized name."""
    visited: set[tuple[str, frozenset[str]]] = set()
    pending = [(distribution, extras)]
    while pending:
        name, wanted = pending.pop()
        key = (name.lower().replace("_", "-"), wanted)
        if key in visited:
            continue
        visited.add(key)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in wanted or {""}):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return {name for name, _ in visited}


def test_the_demo_extra_holds_every_package_the_demo_imports():
    stdlib = set(sys.stdlib_module_names)
    modules = imported_modules(BENCH / "demo.py", set()) - stdlib - {"kubeserve", "__future__"}
    # The sample models bench/demo.py builds import these lazily (kubeserve.runtime.samples): the samples extra.
    modules |= {"onnx", "sklearn", "skl2onnx", "onnxruntime"}
    providers = importlib.metadata.packages_distributions()
    closure = requirement_closure("kubeserve", frozenset({"demo"}))
    missing = {
        module: providers.get(module)
        for module in modules
        if not {dist.lower().replace("_", "-") for dist in providers.get(module, [])} & closure
    }
    assert not missing, f"bench/demo.py imports modules the demo extra does not install: {missing}"
    assert "pytest" not in closure and "kopf" not in closure  # the test and operator extras stay out


@pytest.mark.parametrize(
    ("system", "machine", "refused"),
    [("Linux", "x86_64", False), ("Darwin", "x86_64", True), ("Darwin", "arm64", True), ("Linux", "aarch64", True)],
)
def test_make_test_stops_early_where_the_tool_wheels_cannot_run(tmp_path, system, machine, refused):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text(f'#!/bin/sh\ncase "$1" in -s) echo {system};; -m) echo {machine};; esac\n')
    (fake / "uname").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    command = [make(), "-C", REPO, "tools-platform", f"TOOLS={tmp_path / 'no-tools'}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert (result.returncode != 0) == refused, result.stderr
    if refused:
        assert f"this is {system} {machine}" in result.stderr
        assert "x86-64 Linux" in result.stderr


def test_make_test_checks_the_platform_before_installing():
    dry = subprocess.run([make(), "-C", REPO, "-n", "-p", "test"], capture_output=True, text=True, timeout=60)
    (rule,) = [line for line in dry.stdout.splitlines() if line.startswith("test: ")]
    assert rule.split()[1] == "tools-platform"


def test_the_demo_leaves_no_temporary_files(tmp_path):
    """bench/demo.py end to end (about 10 s), its temporary folder pointed here: empty afterwards."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = subprocess.run(
        [sys.executable, BENCH / "demo.py"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # (A library the demo loads keeps a small `.ses` file in the temporary folder: not the demo's.)
    assert list(scratch.glob("kubeserve-*")) == []
