"""JSON merge patch (RFC 7386), the patch type the operator writes status with: applying one, and computing the
one that turns a value into another."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target``: mappings merge, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def patch_to(current: Any, new: Any) -> Any:
    """The merge patch that turns ``current`` into ``new``: keys gone from a mapping are sent as null."""
    if not isinstance(current, Mapping) or not isinstance(new, Mapping):
        return new
    patch = {name: None for name in current if name not in new}
    patch.update({name: patch_to(current.get(name), value) for name, value in new.items()})
    return patch
