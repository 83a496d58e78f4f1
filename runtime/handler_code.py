"""The user's handler class (the ``handler`` setting, ``module:Class``) as code: imported with ``handler_path`` first
on ``sys.path``, what it declares read, made and loaded, and one of its stages called with what it returns checked.
The same in the server process (a handler run in the stage threads) and in each of a pool's processes
(``handler_stages``: ``serve`` is such a process's life).

What a stage returns is checked against what it must make, by name, datatype and shape: preprocess the model's
inputs, postprocess the outputs served. A BYTES tensor may come back as NumPy strings; it goes on as objects.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from kubeserve.runtime.datatypes import DATATYPES
from kubeserve.runtime.handler import HandlerContext, InvalidInput
from kubeserve.runtime.logs import configure_logging
from kubeserve.runtime.metrics import POSTPROCESS, PREPROCESS
from kubeserve.runtime.signature import TensorSpec

log = logging.getLogger("kubeserve.runtime.handler")

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class StageOutput:
    """What a stage must return: its tensors, and what they are called in errors."""

    specs: tuple[TensorSpec, ...]
    what: str
    # Made once from the specs, for the check on every request's path (``checked_stage_output``): their names, and
    # each as (name, dtype, number of dimensions, every dimension after the first), where every spec is numeric
    # with a dynamic first dimension and fixed others (a model that batches, mostly); None: the full check alone.
    names: frozenset[str] = field(init=False)
    quick: tuple[tuple[str, np.dtype, int, tuple[int, ...]], ...] | None = field(init=False)

    def __post_init__(self) -> None:
        # NumPy's own dtype for each (by its string: one unpickled in a pool's process is an equal copy, not it).
        quick = tuple(
            (spec.name, np.dtype(spec.datatype.numpy.str), len(spec.shape), spec.shape[1:]) for spec in self.specs
        )
        if not all(
            spec.shape[:1] == (-1,) and -1 not in spec.shape[1:] and not spec.datatype.is_bytes for spec in self.specs
        ):
            quick = None
        object.__setattr__(self, "names", frozenset(spec.name for spec in self.specs))  # the dataclass is frozen
        object.__setattr__(self, "quick", quick)

    def __reduce__(self) -> tuple[type[StageOutput], tuple[tuple[TensorSpec, ...], str]]:
        """Pickled (to a pool's processes) as what it is made from: made again there, NumPy's dtypes its own."""
        return StageOutput, (self.specs, self.what)


# What each stage must return, by stage (the method's name).
Expected = Mapping[str, StageOutput]
# A pool's process and the server: what the process says of a call (or, first, of its load).
READY, ANSWER, INVALID, FAILED = "ready", "answer", "invalid", "failed"
# How often a pool's process looks whether the server process that started it is still there.
PARENT_POLL_SECONDS = 1.0


class HandlerError(Exception):
    """The handler cannot be loaded (a failed model load); the message says why."""


def handler_failed(name: str, stage: str, error: str) -> None:
    """The log line of a handler that raised (``error``: the traceback) or could not answer."""
    log.error("handler failed", extra={"event": "handler_failed", "handler": name, "stage": stage, "error": error})


def import_handler(name: str, path: Path | None) -> type:
    """The class ``name`` (``module:Class``) names, imported with ``path`` first on ``sys.path``."""
    if path is not None:
        if not path.is_dir():
            raise HandlerError(f"handler_path {path} is not a directory")
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # whatever importing the user's module raises
        handler_failed(name, "import", traceback.format_exc())
        raise HandlerError(f"handler {name}: cannot import {module_name}: {type(error).__name__}: {error}") from None
    handler_class = getattr(module, class_name, None)
    if not isinstance(handler_class, type):
        raise HandlerError(f"handler {name}: module {module_name} ({module.__file__}) has no class {class_name}")
    if not any(callable(getattr(handler_class, stage, None)) for stage in (PREPROCESS, POSTPROCESS)):
        raise HandlerError(f"handler {name} defines neither preprocess nor postprocess")
    return handler_class


def declared(handler_class: type, name: str, attribute: str, batching: bool) -> tuple[TensorSpec, ...] | None:
    """The tensors the class's ``inputs`` or ``outputs`` (``attribute``) declare: name -> (datatype, shape); None
    where it declares none. ``batching``: requests share batches, so each tensor leads with -1, its rows."""
    value = getattr(handler_class, attribute, None)
    if value is None:
        return None
    where = f"handler {name}: {attribute}"
    if not isinstance(value, Mapping) or not value:
        raise HandlerError(f"{where} must map tensor names to (datatype, shape), e.g. {{'text': ('BYTES', [-1])}}")
    specs = []
    for tensor, spec in value.items():
        try:
            datatype, shape = spec
            dims = tuple(shape)
            if not isinstance(tensor, str) or not all(type(dim) is int and dim >= -1 for dim in dims):
                raise ValueError(tensor, dims)  # refused as a spec that does not unpack is
            specs.append(TensorSpec(tensor, DATATYPES[datatype], dims))
        except (TypeError, ValueError, KeyError):
            raise HandlerError(
                f"{where}[{tensor!r}] is {spec!r}: it must be (datatype, shape), e.g. ('FP32', [-1, 3]), with a "
                f"datatype of {', '.join(DATATYPES)} and -1 where a dimension is dynamic"
            ) from None
        if batching and dims[:1] != (-1,):
            raise HandlerError(
                f"{where}[{tensor!r}] has shape {list(dims)}: the model batches requests, so it must lead with -1 (a "
                "request's rows), as the model's tensors do"
            )
    return tuple(specs)


def instantiate(handler_class: type, name: str, context: HandlerContext) -> object:
    """An instance of the class, its ``load(context)`` called if it has one."""
    try:
        handler = handler_class()
        load = getattr(handler, "load", None)
        if load is not None:
            load(context)
    except Exception as error:  # whatever the user's code raises
        handler_failed(name, "load", traceback.format_exc())
        raise HandlerError(f"handler {name} failed to load: {type(error).__name__}: {error}") from None
    return handler


def run_stage(handler: object, stage: str, tensors: Tensors, expected: Expected) -> Tensors:
    """The handler's ``stage`` (``preprocess`` or ``postprocess``) on one request's tensors, what it made checked
    (a TypeError or ValueError says how it is wrong)."""
    return checked_stage_output(stage, getattr(handler, stage)(tensors), expected)


def checked_stage_output(stage: str, made: object, expected: Expected) -> Tensors:
    """What the handler's ``stage`` made, checked against what it must make (a TypeError or ValueError says how it is
    wrong); BYTES as NumPy strings made object arrays. On every request's path: what passes as it came is returned as
    it is."""
    output = expected[stage]
    quick = output.quick
    if quick is not None and type(made) is dict and made.keys() == output.names:
        # What most stages return, in a few comparisons: each tensor a NumPy array of the datatype (NumPy's dtypes
        # are singletons, mostly) and shape. Anything else has the full check, which says what is wrong.
        for name, dtype, dimensions, after_first in quick:
            array = made[name]
            if (
                type(array) is not np.ndarray
                or array.dtype is not dtype
                or array.ndim != dimensions
                or array.shape[1:] != after_first
            ):
                break
        else:
            return made
    specs, what = output.specs, output.what
    if not isinstance(made, dict):
        if inspect.iscoroutine(made):
            made.close()  # never to be awaited: no "never awaited" warning besides this error
        if inspect.isawaitable(made):
            raise TypeError(
                f"the handler's {stage} returned an awaitable: an async stage must be an async def of the class "
                "itself (a wrapper that returns a coroutine is not recognised as one)"
            )
        raise TypeError(f"the handler's {stage} returned {type(made).__name__}, not a dict of NumPy arrays")
    if made.keys() != output.names:
        raise ValueError(
            f"the handler's {stage} returned {sorted(map(str, made))}; {what} are {[spec.name for spec in specs]}"
        )
    converted: dict[str, np.ndarray] | None = None  # a copy of ``made``, once an array in it is converted
    for spec in specs:
        array = made[spec.name]
        if not isinstance(array, np.ndarray):
            raise TypeError(f"the handler's {stage} made '{spec.name}' a {type(array).__name__}, not a NumPy array")
        datatype = spec.datatype
        dtype = array.dtype
        if dtype is datatype.numpy or dtype == datatype.numpy:  # the same object, mostly: NumPy's are singletons
            if dtype.kind == "O":  # BYTES
                for item in array.flat:  # each element: what ONNX Runtime, or the answer, takes for a string
                    if not isinstance(item, bytes | str):
                        raise TypeError(
                            f"the handler's {stage} made '{spec.name}' (BYTES in {what}) with an element of type "
                            f"{type(item).__name__}; each must be bytes or str"
                        )
        elif datatype.is_bytes and dtype.kind in "SU":
            array = array.astype(object)
            if converted is None:
                converted = dict(made)
            converted[spec.name] = array
        else:
            raise TypeError(
                f"the handler's {stage} made '{spec.name}' of dtype {dtype}; it is {datatype.name} "
                f"({datatype.numpy}) in {what}"
            )
        if not spec.matches(array.shape):
            raise ValueError(
                f"the handler's {stage} made '{spec.name}' of shape {list(array.shape)}, which does not fit "
                f"{list(spec.shape)} in {what}"
            )
    return made if converted is None else converted


def run_batched_stage(handler: object, stage: str, tensors: Tensors, expected: Expected) -> Tensors:
    """``run_stage`` on a batch's tensors (its requests' rows, in order), which must come back with as many rows, each
    request's in its place (a ValueError says which tensor does not). Every tensor leads with its rows: the model
    batches, and so ``declared`` requires."""
    rows = len(next(iter(tensors.values())))
    made = run_stage(handler, stage, tensors, expected)
    for name, array in made.items():
        if len(array) != rows:
            raise ValueError(
                f"the handler's {stage} made '{name}' of {len(array)} rows from {rows}: a batched handler returns "
                "one row for each row it gets, in order (each request's rows are its own)"
            )
    return made


def serve(
    connection: Connection,
    parent: int,
    name: str,
    path: Path | None,
    context: HandlerContext,
    expected: Expected,
    log_level: str,
) -> None:
    """A pool's process: load the handler, say so, then answer each ``(stage, tensors)`` until the server closes
    the connection (or goes). A terminal's Ctrl-C (SIGINT to the process group) is the server's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level, {"handler_process": os.getpid()})
    threading.Thread(target=_exit_without, args=(parent,), name="parent", daemon=True).start()
    try:
        handler = instantiate(import_handler(name, path), name, context)
    except HandlerError as error:
        connection.send((FAILED, str(error)))
        return
    connection.send((READY, None))
    while True:
        try:
            stage, tensors = connection.recv()
        except EOFError:  # the server closed the pool
            return
        try:
            answer = (ANSWER, run_stage(handler, stage, tensors, expected))
        except InvalidInput as error:
            answer = (INVALID, str(error))
        except Exception:  # whatever the user's code raises, a broken contract included: its traceback
            answer = (FAILED, traceback.format_exc())
        connection.send(answer)


def _exit_without(parent: int) -> None:
    """End this process once the server process that started it has gone (killed, say), whatever it is doing."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)
