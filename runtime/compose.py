"""Fitted transformers composed into the model: ``kubeserve-runtime optimize --preprocessing/--postprocessing``.

A preprocessing graph (a scikit-learn ColumnTransformer exported with skl2onnx, say) runs before the model and a
postprocessing graph after it, composed into one ONNX graph (``onnx.compose.merge_models``): ONNX Runtime runs all
of it in one session, on one batch, with no Python between the parts and no second implementation of the
transformation to drift from the fitted one (no training/serving skew).

The graphs connect by name:

- every output of the preprocessing graph feeds the model input of the same name;
- every input of the postprocessing graph is fed by the model output of the same name.

Names that connect leave the composed graph's interface; every other input and output keeps its name (the
preprocessing graph's inputs and the model's inputs it does not feed; the model's outputs the postprocessing graph
does not read and the postprocessing graph's outputs). Two of those with one name, from different graphs, are a
clash (an error). Names inside the graphs that two graphs share are prefixed (``preprocessing/``, ``model/``,
``postprocessing/``). The composed graph keeps the model's metadata props.

Operator sets: a graph importing an older default opset than the other is converted up to it
(``onnx.version_converter``); other domains (``ai.onnx.ml``) are imported at the newer of the two versions, which
ONNX's checker then verifies against each node.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kubeserve.runtime.datatypes import DATATYPES

if TYPE_CHECKING:
    import onnx

PREPROCESSING = "preprocessing"
MODEL = "model"
POSTPROCESSING = "postprocessing"


class ComposeError(Exception):
    """The graphs cannot be composed; the message says what does not connect, or what clashes."""


def load_graph(path: Path, role: str) -> onnx.ModelProto:
    """The ONNX model at ``path`` (the ``role`` it plays, for the message), or a ComposeError saying why not."""
    import onnx

    if not path.exists():
        raise ComposeError(f"the {role} graph {path} does not exist")
    if path.is_dir():
        raise ComposeError(f"the {role} graph {path} is a directory, not an ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError, OSError: the file is not an ONNX model
        raise ComposeError(f"the {role} graph {path} is not an ONNX model: {error}") from error


def compose(
    model: onnx.ModelProto,
    preprocessing: onnx.ModelProto | None = None,
    postprocessing: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """``preprocessing``, then ``model``, then ``postprocessing``, as one graph connected by name. The graphs given
    are edited in place (a model's weights are not copied more than merging needs)."""
    composed = model
    if preprocessing is not None:
        composed = _merge(preprocessing, composed, PREPROCESSING, MODEL)
    if postprocessing is not None:
        composed = _merge(composed, postprocessing, MODEL, POSTPROCESSING)
    return composed


def compose_files(model: Path, preprocessing: Path | None, postprocessing: Path | None, output: Path) -> None:
    """``compose`` of the files, saved to ``output``."""
    import onnx

    composed = compose(
        load_graph(model, MODEL),
        None if preprocessing is None else load_graph(preprocessing, PREPROCESSING),
        None if postprocessing is None else load_graph(postprocessing, POSTPROCESSING),
    )
    try:
        onnx.save(composed, str(output))
    except (OSError, ValueError) as error:
        raise ComposeError(f"cannot write the composed graph: {error}") from error


def _merge(first: onnx.ModelProto, second: onnx.ModelProto, first_role: str, second_role: str) -> onnx.ModelProto:
    import onnx

    io_map = _connections(first, second, first_role, second_role)
    _check_interface(first, second, {name for name, _ in io_map}, first_role, second_role)
    # The model's metadata props alone describe the composed graph (merge_models refuses two values of one key).
    del (second if first_role == MODEL else first).metadata_props[:]
    wanted = _opsets(first)
    for domain, version in _opsets(second).items():
        wanted[domain] = max(version, wanted.get(domain, 0))
    raised = [
        f"the {role} graph's {domain} {version} imported as {wanted[domain]}"
        for role, graph in ((first_role, first), (second_role, second))
        for domain, version in _opsets(graph).items()
        if domain and version < wanted[domain]
    ]
    first, second = _aligned(first, second, first_role, second_role, wanted)
    if onnx.compose.check_overlapping_names(first.graph, second.graph, io_map):
        # Only inner names can overlap now (the interface was checked): prefixed, the graphs' own names stay.
        for graph, role in ((first, first_role), (second, second_role)):
            # Weights listed as inputs too (older exports) are renamed as weights: no longer listed as inputs.
            inputs = list(_inputs(graph).values())
            del graph.graph.input[:]
            graph.graph.input.extend(inputs)
            onnx.compose.add_prefix(graph, f"{role}/", rename_inputs=False, rename_outputs=False, inplace=True)
    try:
        merged = onnx.compose.merge_models(first, second, io_map=io_map)
    except (ValueError, onnx.checker.ValidationError) as error:
        hint = f" ({'; '.join(raised)}: export both with the same opsets)" if raised else ""
        reason = " ".join(str(error).split())
        raise ComposeError(f"cannot compose the {first_role} and {second_role} graphs: {reason}{hint}") from error
    _import(merged, _opsets(merged))  # merge_models lists each shared domain twice
    return merged


def _inputs(graph: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """The graph's inputs, less initializers listed as inputs (older exports list them): those are weights."""
    weights = {tensor.name for tensor in graph.graph.initializer}
    return {value.name: value for value in graph.graph.input if value.name not in weights}


def _outputs(graph: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    return {value.name: value for value in graph.graph.output}


def _connections(
    first: onnx.ModelProto, second: onnx.ModelProto, first_role: str, second_role: str
) -> list[tuple[str, str]]:
    """The (output, input) pairs of one name: every output of a preprocessing graph, every input of a
    postprocessing graph."""
    outputs, inputs = _outputs(first), _inputs(second)
    if first_role == PREPROCESSING:
        for name in outputs:
            if name not in inputs:
                raise ComposeError(
                    f"preprocessing output {name!r} matches no model input (model inputs: {', '.join(inputs)})"
                )
        names = list(outputs)
    else:
        for name in inputs:
            if name not in outputs:
                raise ComposeError(
                    f"{second_role} input {name!r} matches no {first_role} output "
                    f"({first_role} outputs: {', '.join(outputs)})"
                )
        names = list(inputs)
    for name in names:
        if not _fits(outputs[name], inputs[name]):
            raise ComposeError(
                f"{first_role} output {name!r} is {_describe(outputs[name])} but {second_role} input {name!r} is "
                f"{_describe(inputs[name])}"
            )
    return [(name, name) for name in names]


def _check_interface(
    first: onnx.ModelProto, second: onnx.ModelProto, connected: set[str], first_role: str, second_role: str
) -> None:
    """Two inputs or outputs of the composed graph, from different graphs, with one name: a clash."""
    interface = [
        *((name, first_role, "input") for name in _inputs(first)),
        *((name, second_role, "input") for name in _inputs(second) if name not in connected),
        *((name, first_role, "output") for name in _outputs(first) if name not in connected),
        *((name, second_role, "output") for name in _outputs(second)),
    ]
    seen: dict[str, tuple[str, str]] = {}
    for name, role, kind in interface:
        earlier = seen.setdefault(name, (role, kind))
        if earlier[0] != role:
            raise ComposeError(
                f"{earlier[0]} {earlier[1]} {name!r} and {role} {kind} {name!r} clash: the composed graph cannot "
                "have both under one name; rename one of them where the graph is exported"
            )


def _fits(given: onnx.ValueInfoProto, taken: onnx.ValueInfoProto) -> bool:
    """Whether a value of type ``given`` can feed an input of type ``taken``: the same tensor element type and rank,
    and the same size wherever both fix one; other types (sequences, maps) must be equal."""
    if not (given.type.HasField("tensor_type") and taken.type.HasField("tensor_type")):
        return given.type == taken.type
    given_tensor, taken_tensor = given.type.tensor_type, taken.type.tensor_type
    if given_tensor.elem_type != taken_tensor.elem_type:
        return False
    if not (given_tensor.HasField("shape") and taken_tensor.HasField("shape")):
        return True
    given_dims, taken_dims = _dims(given), _dims(taken)
    return len(given_dims) == len(taken_dims) and all(
        -1 in (one, other) or one == other for one, other in zip(given_dims, taken_dims, strict=True)
    )


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [dim.dim_value if dim.HasField("dim_value") else -1 for dim in value.type.tensor_type.shape.dim]


def _describe(value: onnx.ValueInfoProto) -> str:
    """``FP32 [-1, 8]`` (the protocol's datatype names; -1 where a dimension is free), or ONNX's own words for
    types that are not tensors."""
    import onnx

    if not value.type.HasField("tensor_type"):
        return onnx.helper.printable_type(value.type)
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    name = next((datatype.name for datatype in DATATYPES.values() if datatype.numpy == dtype), str(dtype))
    return f"{name} {_dims(value)}" if tensor.HasField("shape") else name


def _opsets(graph: onnx.ModelProto) -> dict[str, int]:
    """Each imported domain's version (the newest, where an exporter imported one twice)."""
    versions: dict[str, int] = {}
    for opset in graph.opset_import:
        versions[opset.domain] = max(opset.version, versions.get(opset.domain, 0))
    return versions


def _aligned(
    first: onnx.ModelProto, second: onnx.ModelProto, first_role: str, second_role: str, wanted: dict[str, int]
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The two graphs importing the ``wanted`` version of each domain, at one IR version (``merge_models`` needs
    both); an older default opset is converted up."""
    from onnx import version_converter

    graphs = {first_role: first, second_role: second}
    for role, graph in graphs.items():
        older = _opsets(graph).get("")
        _import(graph, _opsets(graph))  # one entry per domain: the converter reads the first
        if older is not None and older < wanted[""]:
            try:
                graphs[role] = version_converter.convert_version(graph, wanted[""])
            except Exception as error:  # the converter raises whatever its adapters raise
                raise ComposeError(
                    f"the {role} graph imports opset {older} and the other {wanted['']}, and cannot be converted: "
                    f"{' '.join(str(error).split())}; export both with the same opset"
                ) from error
    ir_version = max(graph.ir_version for graph in graphs.values())
    for graph in graphs.values():
        _import(graph, {domain: wanted[domain] for domain in _opsets(graph)})
        graph.ir_version = ir_version
    return graphs[first_role], graphs[second_role]


def _import(graph: onnx.ModelProto, versions: dict[str, int]) -> None:
    """Make ``graph`` import ``versions``, one entry per domain, in the domains' order (the same graphs compose
    into the same bytes)."""
    import onnx

    del graph.opset_import[:]
    graph.opset_import.extend(onnx.helper.make_opsetid(domain, versions[domain]) for domain in sorted(versions))
