"""``kubeserve-runtime optimize MODEL OUTPUT``: compose, quantize and/or precompile a model once, where it is fetched
(the operator's init container runs this after ``fetch``), so that every pod of a revision serves the same file.

- ``--preprocessing FILE``, ``--postprocessing FILE``: ONNX graphs (fitted transformers, e.g. exported with skl2onnx)
  composed with the model into one graph, connected by name (``kubeserve.runtime.compose``); the rest starts from
  the composed graph, and the report compares it with OUTPUT.
- ``--quantization dynamicInt8``: ONNX Runtime's dynamic quantization (``quantize_dynamic``): the weights of MatMul,
  Gemm and Conv become INT8, activations are quantized per run. Smaller file, less memory bandwidth.
- ``--precompile``: ONNX Runtime's graph optimizations run once and the optimized graph is saved; the server then
  loads it with optimization off (a shorter start-up). Level ``all`` lays the graph out for this machine's CPU
  (NCHWc): run it on the kind of node that serves it (the init container does), and use ``--precompile-level basic``
  for a GPU provider.

MODEL is only read. OUTPUT is written through a temporary file beside it that replaces it only once complete and
loadable, and carries in its metadata what was done (the keys of ``kubeserve.runtime.model_metadata``), which the
server reads before it loads the model, and reports. With ``--compare`` (the default)
a report follows on stdout: size, session creation time and single-request p50 latency of both models, and the
largest absolute difference of every output between them, on ``--sample-inputs`` or on random inputs.

Exit codes: 0 optimized; 1 the model cannot be read or optimized; 2 invalid options.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubeserve.runtime.arguments import positive_int
from kubeserve.runtime.model_metadata import (
    OPTIMIZATION_LEVELS,
    QUANTIZATIONS,
    ModelOptimization,
    read_metadata_props,
)
from kubeserve.runtime.termination import add_termination_message_argument, write_termination_message

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from kubeserve.runtime.config import RuntimeSettings
    from kubeserve.runtime.model import OnnxModel

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

PRECOMPILE_LEVELS = OPTIMIZATION_LEVELS[1:]  # "disable" would save the graph unchanged
DEFAULT_RUNS = 50


class OptimizeError(Exception):
    """The model could not be optimized; the message says why."""

    exit_code = EXIT_FAILED


class InvalidOptions(OptimizeError):
    """The command line cannot work, whatever the model."""

    exit_code = EXIT_INVALID


@dataclass(frozen=True)
class OptimizeOptions:
    quantization: str = "none"
    precompile: bool = False
    precompile_level: str = "all"


@dataclass(frozen=True)
class Measured:
    """One model file as the server would load it."""

    bytes: int
    load_ms: float  # session creation
    p50_ms: float  # one request's inputs, median of the runs
    graph_optimization_level: str


@dataclass(frozen=True)
class Report:
    model: str
    output: str
    optimization: ModelOptimization
    inputs: str  # the sample file, or "random"
    runs: int
    original: Measured
    optimized: Measured
    max_abs_diff: dict[str, float | None]  # by output; None for string outputs that differ

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "output": self.output,
            **self.optimization.as_parameters(),
            "source_sha256": self.optimization.source_sha256,
            "inputs": self.inputs,
            "runs": self.runs,
            "original": asdict(self.original),
            "optimized": asdict(self.optimized),
            "max_abs_diff": self.max_abs_diff,
        }

    def lines(self) -> list[str]:
        """One fact per line."""
        original, optimized = self.original, self.optimized
        ratio = optimized.bytes / original.bytes if original.bytes else float("nan")
        lines = [
            f"model: {self.model}",
            f"output: {self.output}",
            f"source sha256: {self.optimization.source_sha256}",
            f"quantization: {self.optimization.quantization}",
            f"precision: {self.optimization.precision}",
            f"precompiled: {str(self.optimization.precompiled).lower()}",
            f"inputs: {self.inputs}",
            f"original size: {original.bytes:,} bytes",
            f"optimized size: {optimized.bytes:,} bytes ({ratio:.2f}x)",
            f"original load: {original.load_ms:.1f} ms (graph optimization {original.graph_optimization_level})",
            f"optimized load: {optimized.load_ms:.1f} ms (graph optimization {optimized.graph_optimization_level})",
            f"original latency p50: {original.p50_ms:.3f} ms ({self.runs} runs)",
            f"optimized latency p50: {optimized.p50_ms:.3f} ms ({self.runs} runs)",
        ]
        for name, diff in self.max_abs_diff.items():
            lines.append(f"max abs difference {name}: {'differs (strings)' if diff is None else f'{diff:.6g}'}")
        return lines


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _served_settings(path: Path) -> RuntimeSettings:
    """The server's default settings: the comparison loads both models as a pod would."""
    from kubeserve.runtime.config import RuntimeSettings

    return RuntimeSettings(model_path=path, model_name="optimize")


def _load(path: Path, optimization: ModelOptimization) -> ort.InferenceSession:
    """A session as the server creates one with its default settings, on the CPU."""
    import onnxruntime as ort
    from kubeserve.runtime.model import CPU, session_options

    options = session_options(_served_settings(path), optimization)
    return ort.InferenceSession(str(path), sess_options=options, providers=[CPU])


def open_model(path: Path) -> OnnxModel:
    """MODEL as ONNX Runtime loads it, or an OptimizeError saying why it cannot."""
    from kubeserve.runtime.model import OnnxModel

    if not path.exists():
        raise OptimizeError(f"{path} does not exist")
    if path.is_dir():
        raise OptimizeError(f"{path} is a directory, not a model file")
    try:
        return OnnxModel(_load(path, ModelOptimization()))
    except Exception as error:  # ORT raises its own exception types for every kind of bad model
        raise OptimizeError(f"onnxruntime cannot load {path}: {_one_line(error)}") from error


@contextlib.contextmanager
def _quiet_quantizer_advice() -> Iterator[None]:
    """quantize_dynamic advises pre-processing on the root logger; advice, not a failure, and it would read as one
    in an init container's log."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _quantized_weights(model: onnx.ModelProto) -> int:
    import onnx

    return sum(
        1 for tensor in model.graph.initializer if tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    )


def _quantize(source: Path, dest: Path) -> None:
    """INT8 weights for Conv, then for MatMul and Gemm, in two passes because each wants its own weight type: ORT's CPU
    ConvInteger runs about 4x faster with unsigned weights than with signed ones (measured on the bundled CNN),
    and MatMulInteger is as fast and more accurate with signed ones."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    convolutions = source.with_name("conv-quantized.onnx")
    try:
        with _quiet_quantizer_advice():
            quantize_dynamic(source, convolutions, op_types_to_quantize=["Conv"], weight_type=QuantType.QUInt8)
            quantize_dynamic(convolutions, dest, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    except Exception as error:  # the quantizer raises whatever its passes raise
        raise OptimizeError(f"dynamicInt8 quantization failed: {_one_line(error)}") from error
    if _quantized_weights(onnx.load(str(dest))) <= _quantized_weights(onnx.load(str(source))):
        raise OptimizeError(
            "dynamicInt8 quantized nothing: the model has no MatMul, Gemm or Conv with constant weights"
        )


def _precompile(source: Path, dest: Path, level: str) -> None:
    import onnxruntime as ort
    from kubeserve.runtime.model import CPU, ORT_OPTIMIZATION_LEVELS

    options = ort.SessionOptions()
    options.graph_optimization_level = ORT_OPTIMIZATION_LEVELS[level]
    options.optimized_model_filepath = str(dest)
    options.log_severity_level = 3  # level all warns that its layout is this machine's: the module says so
    try:
        ort.InferenceSession(str(source), sess_options=options, providers=[CPU])
    except Exception as error:  # ORT raises its own exception types
        raise OptimizeError(f"onnxruntime cannot precompile the model: {_one_line(error)}") from error


def _check_paths(output: Path, **originals: Path | None) -> None:
    """OUTPUT must be a file and none of the originals (``model=MODEL``, ...); its folder is made."""
    if output.is_dir():
        raise InvalidOptions(f"OUTPUT {output} is a directory: give the model file's path, e.g. /models/model.onnx")
    for name, original in originals.items():
        with contextlib.suppress(OSError):
            if original is not None and output.exists() and output.samefile(original):
                raise InvalidOptions(
                    f"OUTPUT {output} is {name.upper()}: the original is never modified; name another file"
                )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OptimizeError(f"cannot create {output.parent}: {error.strerror}") from error


def _work_dir(output: Path, suffix: str) -> tempfile.TemporaryDirectory:
    """A hidden work directory beside OUTPUT (``.NAME.*SUFFIX``), after removing those an earlier, killed attempt
    left (the pod's volume outlives the container). Beside OUTPUT: the final rename stays on one filesystem, and our
    own files land here rather than beside MODEL (which may be read-only)."""
    for stale in output.parent.glob(f".{output.name}.*{suffix}"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        return tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.", suffix=suffix)
    except OSError as error:
        raise OptimizeError(f"cannot write to {output.parent}: {error.strerror}") from error


@contextlib.contextmanager
def _composed(model: Path, output: Path, preprocessing: Path | None, postprocessing: Path | None) -> Iterator[Path]:
    """MODEL itself; or, with a preprocessing or postprocessing graph, the three composed into one
    (``kubeserve.runtime.compose``) in a work directory beside OUTPUT, for the optimization to start from."""
    if preprocessing is None and postprocessing is None:
        yield model
        return
    from kubeserve.runtime.compose import ComposeError, compose_files

    _check_paths(output, model=model, preprocessing=preprocessing, postprocessing=postprocessing)
    with _work_dir(output, ".compose") as work_name:
        source = Path(work_name) / "composed.onnx"
        try:
            compose_files(model, preprocessing, postprocessing, source)
        except ComposeError as error:
            raise OptimizeError(str(error)) from error
        yield source


def _copy(source: Path, dest: Path) -> str:
    """Copy MODEL into the work directory, a chunk at a time (a model may be gigabytes); its sha256."""
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader, dest.open("wb") as writer:
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
                writer.write(chunk)
    except OSError as error:
        raise OptimizeError(f"cannot copy {source}: {error.strerror}") from error
    return digest.hexdigest()


def _what_is_done(model: Path, options: OptimizeOptions, digest: str) -> ModelOptimization:
    """The optimization OUTPUT will carry: a model quantized by an earlier run, only precompiled now, is still INT8."""
    level = options.precompile_level if options.precompile else None
    if options.quantization == "none":
        earlier = ModelOptimization.from_metadata(read_metadata_props(model))
        return ModelOptimization(earlier.quantization, earlier.precision, level is not None, digest, level)
    return ModelOptimization.of(options.quantization, level, digest)


def optimize(model: Path, output: Path, options: OptimizeOptions) -> ModelOptimization:
    """Write ``model``, optimized, to ``output`` atomically, and return what was done (also in its metadata)."""
    import onnx

    _check_paths(output, model=model)
    open_model(model)
    # ORT's quantizer also writes a model copy under $TMPDIR (a pod's /tmp).
    with _work_dir(output, ".optimize") as work_name:
        work = Path(work_name)
        current = work / "source.onnx"
        digest = _copy(model, current)
        done = _what_is_done(model, options, digest)
        if options.quantization == "dynamicInt8":
            _quantize(current, work / "quantized.onnx")
            current = work / "quantized.onnx"
        if options.precompile:
            _precompile(current, work / "precompiled.onnx", options.precompile_level)
            current = work / "precompiled.onnx"
        proto = onnx.load(str(current))
        # The model's own props stay (the quantizer's too); ours replace any from an earlier optimization.
        onnx.helper.set_model_props(proto, {prop.key: prop.value for prop in proto.metadata_props} | done.as_metadata())
        final = work / "output.onnx"
        try:
            onnx.save(proto, str(final))
            del proto  # a large model's weights, no longer needed
            with final.open("rb") as written:
                os.fsync(written.fileno())
            final.chmod(0o644)
        except OSError as error:
            raise OptimizeError(f"cannot write {output}: {error.strerror}") from error
        try:
            _load(final, done)
        except Exception as error:  # a model that does not load must never replace OUTPUT
            raise OptimizeError(f"the optimized model does not load: {_one_line(error)}") from error
        try:
            final.replace(output)
        except OSError as error:
            raise OptimizeError(f"cannot write {output}: {error.strerror}") from error
    return done


# --- The comparison ------------------------------------------------------------------------------------------


def random_feeds(model: OnnxModel, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the model's shapes, dynamic dimensions 1: floats in [0, 1), integers 0 to 9, booleans, and
    the digit strings "0" to "9"."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in model.signature.inputs:
        shape = tuple(1 if dim == -1 else dim for dim in spec.shape)
        dtype = spec.datatype.numpy
        if spec.datatype.is_bytes:
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(str).astype(bytes).astype(object)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[spec.name] = rng.random(shape).astype(dtype)
    return feeds


def _measure(
    path: Path, optimization: ModelOptimization, feeds: dict[str, np.ndarray], runs: int
) -> tuple[Measured, dict]:
    """Create the session as the server would (timed), run ``feeds`` once to warm it up, then ``runs`` times."""
    from kubeserve.runtime.model import OnnxModel

    started = time.perf_counter()
    session = _load(path, optimization)
    load_ms = (time.perf_counter() - started) * 1000
    model = OnnxModel(session)
    outputs = model.run(feeds, None)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(feeds, None)
        timings.append((time.perf_counter() - started) * 1000)
    level = optimization.load_level(_served_settings(path).graph_optimization_level)
    return Measured(path.stat().st_size, load_ms, statistics.median(timings), level), outputs


def _max_abs_diff(original: np.ndarray, optimized: np.ndarray) -> float | None:
    import numpy as np

    if original.dtype == object or optimized.dtype == object:
        return 0.0 if np.array_equal(original, optimized) else None
    if original.size == 0:
        return 0.0
    return float(np.max(np.abs(original.astype(np.float64) - optimized.astype(np.float64))))


def comparison_feeds(model: OnnxModel, sample_inputs: Path | None) -> dict[str, np.ndarray]:
    """The sample request's inputs, checked against the model (an InvalidOptions if they do not fit), or random."""
    from kubeserve.runtime.model import ModelLoadError

    if sample_inputs is None:
        return random_feeds(model)
    try:
        return model.request_feeds(sample_inputs, what="--sample-inputs")
    except ModelLoadError as error:
        raise InvalidOptions(str(error)) from error


def compare(
    model: Path, output: Path, done: ModelOptimization, feeds: dict[str, np.ndarray], inputs: str, runs: int
) -> Report:
    """The original and the optimized model on the same inputs: size, load time, latency, output differences."""
    try:
        original, expected = _measure(model, ModelOptimization(), feeds, runs)
        optimized, got = _measure(output, done, feeds, runs)
    except Exception as error:  # ORT raises its own exception types
        raise OptimizeError(f"the comparison failed: {_one_line(error)}") from error
    return Report(
        model=str(model),
        output=str(output),
        optimization=done,
        inputs=inputs,
        runs=runs,
        original=original,
        optimized=optimized,
        max_abs_diff={name: _max_abs_diff(expected[name], got[name]) for name in expected},
    )


# --- The command ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Compose, quantize and/or precompile an ONNX model into OUTPUT, atomically (MODEL is only read), then compare "
        "the two: at least one of --quantization dynamicInt8, --precompile, --preprocessing and --postprocessing. "
        "Exit codes: 0 optimized, 1 the model cannot be read or optimized, 2 invalid options."
    )
    parser.add_argument("model", metavar="MODEL", type=Path, help="the ONNX model to optimize (never modified)")
    parser.add_argument("output", metavar="OUTPUT", type=Path, help="the optimized model file to write")
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="none",
        help="dynamicInt8: ONNX Runtime's dynamic quantization, INT8 weights (default %(default)s)",
    )
    parser.add_argument(
        "--precompile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run ONNX Runtime's graph optimizations once and save the result; the server then loads it with "
        "optimization off (default: no)",
    )
    parser.add_argument(
        "--precompile-level",
        choices=PRECOMPILE_LEVELS,
        default="all",
        help="the optimizations saved; all includes this CPU's layout, basic is provider-independent (for a GPU) "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--preprocessing",
        type=Path,
        metavar="FILE",
        help="an ONNX graph run before the model, composed with it into OUTPUT: each of its outputs feeds the model "
        "input of the same name (e.g. a scikit-learn ColumnTransformer exported with skl2onnx)",
    )
    parser.add_argument(
        "--postprocessing",
        type=Path,
        metavar="FILE",
        help="an ONNX graph run after the model, composed with it into OUTPUT: each of its inputs is the model "
        "output of the same name",
    )
    parser.add_argument(
        "--sample-inputs",
        type=Path,
        metavar="FILE",
        help="a V2 inference request (JSON) whose inputs the comparison runs, as warmup_inputs_path; "
        "default: random inputs of the model's shapes, dynamic dimensions 1",
    )
    parser.add_argument(
        "--runs",
        type=positive_int,
        default=DEFAULT_RUNS,
        metavar="N",
        help="timed runs per model (default %(default)s)",
    )
    parser.add_argument(
        "--compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare the original and the optimized model and print the report (default: yes)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    add_termination_message_argument(parser)


# Refused: without any of these OUTPUT would be MODEL rewritten, unoptimized (and often larger: ONNX's own encoding).
MSG_NOTHING_ASKED = (
    "nothing to do: give --quantization dynamicInt8, --precompile, --preprocessing FILE or --postprocessing FILE "
    "(without them OUTPUT would be an unoptimized copy of MODEL)"
)


def run(args: argparse.Namespace) -> int:
    options = OptimizeOptions(args.quantization, args.precompile, args.precompile_level)
    try:
        if options == OptimizeOptions(precompile_level=args.precompile_level) and not (
            args.preprocessing or args.postprocessing
        ):
            raise InvalidOptions(MSG_NOTHING_ASKED)
        with _composed(args.model, args.output, args.preprocessing, args.postprocessing) as source:
            return _optimize_and_report(args, source, options)
    except OptimizeError as error:
        message = f"cannot optimize {args.model}: {_one_line(error)}"
        print(f"kubeserve-runtime optimize: {message}", file=sys.stderr)
        write_termination_message(args.termination_message_path, message)
        return error.exit_code


def _optimize_and_report(args: argparse.Namespace, source: Path, options: OptimizeOptions) -> int:
    """Optimize ``source`` (MODEL, or the composed graph) into OUTPUT and report, as the options say."""
    # The report names the original as given: MODEL, with the graphs composed around it.
    shown = " + ".join(str(path) for path in (args.preprocessing, args.model, args.postprocessing) if path is not None)
    # The inputs first: a sample file that does not fit the model fails before OUTPUT is touched.
    feeds = comparison_feeds(open_model(source), args.sample_inputs) if args.compare else {}
    done = optimize(source, args.output, options)
    if args.compare:
        inputs = str(args.sample_inputs) if args.sample_inputs else "random, dynamic dimensions 1"
        try:
            report = replace(compare(source, args.output, done, feeds, inputs, args.runs), model=shown)
        except OptimizeError as error:
            if args.sample_inputs is not None:
                raise  # the user's own inputs fail on the optimized model: that is a failed optimization
            # Random inputs are only a guess at shapes (a model may need H and W of at least its kernel's):
            # OUTPUT is written and loads, so this is a warning, not a pod that never starts.
            print(f"kubeserve-runtime optimize: no comparison ({_one_line(error)})", file=sys.stderr, flush=True)
            return EXIT_OK
        print(json.dumps(report.as_json()) if args.json else "\n".join(report.lines()), flush=True)
    elif args.json:
        print(json.dumps({"model": shown, "output": str(args.output), **done.as_parameters()}))
    return EXIT_OK
