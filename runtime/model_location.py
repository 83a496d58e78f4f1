"""Where the model file is when ``model_path`` names a directory, and the name and version a model gets by default.

A directory holds ``model.onnx`` itself (KServe's storage layout), or Triton's model repository layout for one
model: ``DIR/<version>/model.onnx`` with numeric versions, the highest that holds the file served unless
``model_version`` names one (then it is also the version in URLs).
Unset, ``model_name`` is the file's stem (``mlp.onnx``: ``mlp``), or the directory's name when a directory was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"  # the file name both layouts use
# Settings whose default comes from model_path (model_version only in Triton's layout: otherwise its own default).
DERIVED_SETTINGS = ("model_name",)


class ModelNotFound(ValueError):
    """A directory without a model in either layout; the message lists what was looked for."""


def model_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that follow from ``model_path`` (the file a directory holds, the name, the version), for those
    not given. A path that does not exist is left as it is: loading the model says so."""
    if settings.get("model_path") in (None, ""):
        return {}
    given = Path(settings["model_path"])
    found: dict[str, Any] = {}
    if given.is_dir():
        version = settings.get("model_version")
        found["model_path"], chosen = model_in_directory(given, None if version is None else str(version))
        if chosen is not None and version is None:
            found["model_version"] = chosen
    if settings.get("model_name") in (None, ""):
        found["model_name"] = given.resolve().name if given.is_dir() else given.stem
    return found


def model_in_directory(directory: Path, version: str | None) -> tuple[Path, str | None]:
    """The model file in ``directory`` and, for Triton's layout, the version folder it is in."""
    if version is not None:
        candidates = [directory / version / MODEL_FILE, directory / MODEL_FILE]
    else:
        versions = sorted((int(child.name), child) for child in directory.iterdir() if _numeric_folder(child))
        candidates = [directory / MODEL_FILE, *(child / MODEL_FILE for _, child in reversed(versions))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate, candidate.parent.name if candidate.parent != directory else None
    looked_for = [str(directory / MODEL_FILE)]
    if version is not None:
        looked_for.insert(0, str(directory / version / MODEL_FILE))
    else:
        looked_for.append(f"{directory}/<version>/{MODEL_FILE} (Triton's layout, numeric versions)")
    raise ModelNotFound(f"directory {directory} holds no model: looked for {' and '.join(looked_for)}")


def _numeric_folder(path: Path) -> bool:
    return path.name.isdigit() and path.is_dir()
