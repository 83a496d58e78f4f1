"""The README's quickstart, run as written: the sample models it writes, then its requests (between
`<!-- quickstart:begin -->` and `<!-- quickstart:end -->`) sent to the real runtime serving the sample it serves, each
answer compared with the output the README shows under the command."""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
sys.path.insert(0, str(REPO / "bench"))

from server import RunningServer  # noqa: E402  (bench/, above)

# What the quickstart's commands name: the models' folder, the served model and where it listens.
MODELS = "/tmp/models"
SERVE = f"kubeserve-runtime serve --model-path {MODELS}/mlp.onnx --model-name mlp --port 8080"
ADDRESS = "localhost:8080"


def quickstart() -> str:
    text = README.read_text()
    return text.split("<!-- quickstart:begin -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]


def commands(block: str) -> list[tuple[list[str], list[str]]]:
    """Each command of the block's shell code (its lines joined until its quotes close), with the output shown
    under it (its `# ` lines)."""
    found: list[tuple[list[str], list[str]]] = []
    pending = ""
    for line in block.splitlines():
        if line.startswith("```") or not (line.strip() or pending):
            continue
        if line.startswith("#") and not pending:
            assert found, f"output before any command: {line}"
            found[-1][1].append(line[2:] if line.startswith("# ") else line[1:])
            continue
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        found.append((words, []))
        pending = ""
    assert not pending, f"unterminated command: {pending}"
    return found


def request(words: list[str], base: str) -> tuple[urllib.request.Request, str | None]:
    """The HTTP request a `curl -s URL [-H HEADER] [-d BODY] [| grep -E PATTERN]` command sends, and the pattern."""
    pattern = None
    if "|" in words:
        words, piped = words[: words.index("|")], words[words.index("|") + 1 :]
        assert piped[:2] == ["grep", "-E"], piped
        pattern = piped[2]
    assert words[:2] == ["curl", "-s"], words
    url, headers, body = words[2], {}, None
    rest = iter(words[3:])
    for option in rest:
        if option == "-H":
            name, value = next(rest).split(":", 1)
            headers[name] = value.strip()
        elif option == "-d":
            body = next(rest).encode()
        else:
            raise AssertionError(f"the test does not send {option}")
    assert url.startswith(ADDRESS), url
    url = base + url.removeprefix(ADDRESS)
    return urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET"), pattern


def same(shown: Any, got: Any, where: str = "") -> None:
    """Equal, floats to float32's precision: the README shows one machine's digits."""
    if isinstance(shown, float) or isinstance(got, float):
        assert math.isclose(shown, got, rel_tol=1e-5, abs_tol=1e-7), f"{where}: shown {shown}, got {got}"
    elif isinstance(shown, dict) and isinstance(got, dict):
        assert shown.keys() == got.keys(), f"{where}: shown {sorted(shown)}, got {sorted(got)}"
        for key in shown:
            same(shown[key], got[key], f"{where}.{key}")
    elif isinstance(shown, list) and isinstance(got, list):
        assert len(shown) == len(got), f"{where}: shown {len(shown)} items, got {len(got)}"
        for index, (a, b) in enumerate(zip(shown, got, strict=True)):
            same(a, b, f"{where}[{index}]")
    else:
        assert shown == got, f"{where}: shown {shown!r}, got {got!r}"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_the_quickstart_writes_the_sample_models_it_lists(models: Path):
    readme = README.read_text()
    command = f"python -m kubeserve.runtime.samples {MODELS}"
    shown = readme.split(command + "\n", 1)[1].split("\nkubeserve-runtime serve", 1)[0]

    written = subprocess.run(
        [sys.executable, "-m", "kubeserve.runtime.samples", str(models)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    assert [line.removeprefix("# ") for line in shown.splitlines()] == [
        line.replace(str(models), MODELS) for line in written.splitlines()
    ]
    assert SERVE in readme


def test_the_quickstart_requests_get_the_answers_it_shows(models: Path):
    if not (models / "mlp.onnx").exists():
        subprocess.run([sys.executable, "-m", "kubeserve.runtime.samples", str(models)], check=True)
    steps = commands(quickstart())
    assert len(steps) == 4, [words[:3] for words, _ in steps]

    with RunningServer(models / "mlp.onnx", "mlp") as server:
        for words, output in steps:
            sent, pattern = request(words, server.url)
            with urllib.request.urlopen(sent, timeout=30) as response:
                answer = response.read().decode()
            if pattern is None:
                same(json.loads("".join(output)), json.loads(answer), sent.full_url)
            else:
                assert [line for line in answer.splitlines() if re.search(pattern, line)] == output
