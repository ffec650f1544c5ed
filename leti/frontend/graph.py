"""ONNX front end: model bytes or a path in, a shape-inferred `Graph` of `Layer`s out.

Two rules shape this module. First, a model is untrusted input: it is parsed from bytes
(`onnx.load_model_from_string`, which never loads external data), and nothing a model
names (an external-data `location`, say) is ever opened; shape inference runs on an
in-memory copy whose initializers carry no bulk data and no external-data entries. Bad
input only ever raises a `LetiError` subclass. Second, a NAS loop parses thousands of
graphs, so the work per node is a few dict look-ups: ONNX's own (C++) shape inference does
the heavy lifting, on a copy without the weights (`leti.frontend.weights`), and a small built-in
propagation (`leti.frontend.shapes`) fills in what it leaves unknown (old opsets, odd exporters).
"""

from __future__ import annotations

import hashlib
import heapq
import os
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto

from leti.core import settings
from leti.core.errors import (
    GraphError,
    GraphTooLargeError,
    LetiError,
    SymbolicShapeError,
    TooManyLayersError,
)
from leti.core.records import Graph, Layer, Shape
from leti.frontend.shapes import (
    NEVER_FOLDED,
    SAME_SHAPE_OPS,
    Consts,
    Node,
    build_layer,
    check_shape_arg,
    check_text,
    fill_unknown_shapes,
    nodes_of,
    valid_shape,
)
from leti.frontend.weights import strip_constant_nodes, strip_initializers_into
from leti.frontend.weights import strip_weights as strip_weights  # re-exported: the public API

DEFAULT_MAX_BYTES = settings.DEFAULT_MAX_GRAPH_BYTES
DEFAULT_MAX_LAYERS = settings.DEFAULT_MAX_LAYERS
ENV_MAX_GRAPH_MB = settings.MAX_GRAPH_MB
ENV_MAX_LAYERS = settings.MAX_LAYERS

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | onnx.ModelProto

# Ops whose output shapes leti's own rules (`leti.frontend.shapes`) compute exactly as ONNX's
# inference does, checked on every ONNX node test case (`onnx.backend.test.case`), the light
# models and the model zoo (tests/test_speed_paths.py). A graph of these ops only is shaped by
# those rules alone; ONNX's inference runs when a graph has another op, or when a rule leaves a
# tensor unknown (a Reshape whose target is computed, say), and then gives every shape it knows,
# as it always did. One difference: a model's own shape annotations (value_info) are not read on
# the first route, so where they contradict the ops, the ops win (ONNX's non-strict inference
# kept the stale annotation).
OWN_SHAPE_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
        "GlobalMaxPool", "GlobalLpPool", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN",
        "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
        "Elu", "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Shrink", "Gelu",
        "Mish", "Softmax", "LogSoftmax", "Hardmax", "Exp", "Log", "Sqrt", "Reciprocal", "Neg",
        "Abs", "Ceil", "Floor", "Round", "Sign", "Sin", "Cos", "Erf", "Not", "IsNaN", "IsInf",
        "Identity", "Cast", "CastLike", "Dropout", "LRN", "CumSum", "BatchNormalization",
        "InstanceNormalization", "LayerNormalization", "GroupNormalization",
        "MeanVarianceNormalization", "LpNormalization", "Add", "Sub", "Mul", "Div", "Pow",
        "Mod", "BitShift", "Sum", "Max", "Min", "Mean", "Where", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor", "Concat", "Flatten", "Reshape",
        "Transpose", "Squeeze", "Unsqueeze", "Pad", "Slice", "Split", "Resize", "Upsample",
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "QuantizeLinear",
        "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "ConvInteger",
        "QLinearMatMul", "MatMulInteger", "Constant", "ConstantOfShape", "Shape",
    }
)  # fmt: skip


# ---------------------------------------------------------------------------- limits


def max_graph_bytes(max_bytes: int | None) -> int:
    """The caller's limit, else $LETI_MAX_GRAPH_MB, else the default (a bad value raises
    `ConfigError`)."""
    if max_bytes is not None:
        return int(max_bytes)
    return settings.max_graph_bytes(DEFAULT_MAX_BYTES)


def max_graph_layers(max_layers: int | None) -> int:
    """The caller's limit, else $LETI_MAX_LAYERS, else the default."""
    if max_layers is not None:
        return int(max_layers)
    return settings.max_layers(DEFAULT_MAX_LAYERS)


def too_large(size: int, limit: int) -> GraphTooLargeError:
    return GraphTooLargeError(
        f"model is {size:,} bytes, over the limit of {limit:,} bytes "
        f"({limit / 2**20:.1f} MiB; set {ENV_MAX_GRAPH_MB} to change it)"
    )


# ---------------------------------------------------------------------------- loading


def load_model(source: Source, max_bytes: int | None = None) -> onnx.ModelProto:
    """Read an ONNX model without touching any file it names (external data stays unloaded).

    Checks the size before reading, so an oversized upload costs one `stat`, not the memory.
    A `ModelProto` passed in is returned as is (not copied).
    """
    return _load(source, max_graph_bytes(max_bytes))[0]


def _load(source: Source, limit: int) -> tuple[onnx.ModelProto, bytes, str | None]:
    """(model, its serialized bytes, a name hint from the file name)."""
    if isinstance(source, onnx.ModelProto):
        # upb's ByteSize() encodes the message anyway: serialize once, for the size and the hash
        data = source.SerializeToString()
        if len(data) > limit:
            raise too_large(len(data), limit)
        return source, data, None
    data, stem, where = _source_bytes(source, limit)
    return _parse_bytes(data, where=where), data, stem


class GraphBytes:
    """A model read once: its bytes (size-checked), their SHA-256, a name hint from the file
    name and where they came from. `parse_graph` takes one as its source (nothing is read
    twice), and an answer cache keys on `sha256` before anything is parsed."""

    __slots__ = ("data", "stem", "where", "model", "_sha256")

    def __init__(
        self, data: bytes, stem: str | None, where: str, model: onnx.ModelProto | None = None
    ) -> None:
        self.data = data
        self.stem = stem
        self.where = where
        self.model = model  # the ModelProto it was serialized from, if it was one
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """The bytes' SHA-256 (hex), computed once, when first asked for."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(self.data).hexdigest()
        return self._sha256


def read_graph(source: Source | GraphBytes, max_bytes: int | None = None) -> GraphBytes:
    """The bytes of a model path, buffer or `ModelProto`, checked against the size limit
    (`max_bytes`, else $LETI_MAX_GRAPH_MB) before they are read."""
    limit = max_graph_bytes(max_bytes)
    if isinstance(source, GraphBytes):
        if len(source.data) > limit:
            raise too_large(len(source.data), limit)
        return source
    if isinstance(source, onnx.ModelProto):
        model, data, _ = _load(source, limit)
        return GraphBytes(data, None, "model bytes", model)
    return GraphBytes(*_source_bytes(source, limit))


def _source_bytes(source: Source, limit: int) -> tuple[bytes, str | None, str]:
    """(the bytes of a path or a buffer, a name hint from the file name, where they came from)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limit:
            raise too_large(len(data), limit)
        return data, None, "model bytes"
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return read_model_file(path, limit), path.stem, str(path)
    raise LetiError(
        f"cannot read a model from a {type(source).__name__}: give a path, bytes or a ModelProto"
    )


def read_model_file(path: Path, limit: int) -> bytes:
    """Stat first, then read at most limit + 1 bytes (the file may grow between the two)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        raise GraphError(f"cannot read model file {str(path)!r}: {reason}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise GraphError(f"model path {str(path)!r} is not a regular file")
    if st.st_size > limit:
        raise too_large(st.st_size, limit)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise GraphError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise too_large(len(data), limit)
    return data


def _parse_bytes(data: bytes, where: str = "model bytes") -> onnx.ModelProto:
    if not data:
        raise GraphError(f"{where}: empty input, not an ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError, RuntimeError from upb, ...
        raise GraphError(
            f"{where}: not a valid ONNX protobuf ({len(data):,} bytes; truncated or corrupt?), "
            "nor an ncnn .param text (which starts with 7767517): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------- shapes


def _type_shape(tp: onnx.TypeProto) -> Shape | None:
    """Concrete dims of a tensor type, or None if any dim is unknown or symbolic."""
    if tp.WhichOneof("value") != "tensor_type":
        return None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.WhichOneof("value") != "dim_value" or d.dim_value < 0:
            return None
        out.append(d.dim_value)
    return tuple(out)


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    """An input's dims as written: ints, symbol names, or '?' for unknown; None if no shape."""
    tp = vi.type
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for d in tp.tensor_type.shape.dim:
        if d.WhichOneof("value") == "dim_value" and d.dim_value > 0:
            dims.append(d.dim_value)
        elif d.WhichOneof("value") == "dim_param" and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dims


def _resolve_inputs(
    real_inputs: Sequence[onnx.ValueInfoProto], given: Mapping[str, Sequence[int]]
) -> tuple[dict[str, Shape], bool]:
    """Concrete dims per real input, and whether any differs from what the model declares."""
    names = [vi.name for vi in real_inputs]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise LetiError(f"input_shapes names {unknown}, but the model's inputs are {names}")
    resolved: dict[str, Shape] = {}
    changed = False
    for vi in real_inputs:
        declared = _declared_dims(vi)
        if vi.name in given:
            shape = check_shape_arg(vi.name, given[vi.name])
            if declared is not None and len(declared) != len(shape):
                raise LetiError(
                    f"input_shapes[{vi.name!r}] has rank {len(shape)}, but the model declares "
                    f"{vi.name!r} with rank {len(declared)}: {declared}"
                )
            changed = changed or declared != list(shape)
            resolved[vi.name] = shape
            continue
        if declared is None:
            raise SymbolicShapeError(
                f"input {vi.name!r} has no static shape; pass input_shapes={{{vi.name!r}: [...]}}",
                input_name=vi.name,
            )
        dims = list(declared)
        if dims and not isinstance(dims[0], int):
            dims[0] = 1  # batch
            changed = True
        if any(not isinstance(d, int) for d in dims):
            raise SymbolicShapeError(
                f"input {vi.name!r} has symbolic or unknown dims {declared} (only a leading "
                f"batch dim defaults to 1); pass input_shapes={{{vi.name!r}: [...]}}",
                input_name=vi.name,
            )
        resolved[vi.name] = tuple(int(d) for d in dims)
    return resolved, changed


def _inference_model(
    model: onnx.ModelProto, concrete: Mapping[str, Shape], keep_value_info: bool
) -> onnx.ModelProto:
    """A weight-free copy with concrete input dims: cheap to serialize, and names no file."""
    src = model.graph
    lite = onnx.ModelProto()
    lite.ir_version = model.ir_version
    lite.opset_import.extend(model.opset_import)
    lite.functions.extend(model.functions)
    g = lite.graph
    g.name = src.name
    g.node.extend(src.node)
    strip_constant_nodes(g.node)
    strip_initializers_into(src, g)
    g.input.extend(src.input)
    for new in g.input:
        dims = concrete.get(new.name)
        if dims is not None:
            tt = new.type.tensor_type
            if not tt.elem_type:
                tt.elem_type = TensorProto.FLOAT
            tt.shape.ClearField("dim")
            for d in dims:
                tt.shape.dim.add().dim_value = d
    g.output.extend(src.output)
    if keep_value_info:
        g.value_info.extend(src.value_info)
    else:  # the declared shapes were for other input dims: let inference redo them
        for new in g.output:
            if new.type.WhichOneof("value") == "tensor_type":
                new.type.tensor_type.ClearField("shape")
    return lite


def _onnx_shapes(lite: onnx.ModelProto) -> dict[str, Shape] | None:
    """ONNX's own inference; None when it refuses the model (then the fallback takes over)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(lite, strict_mode=False, data_prop=True)
    except Exception:
        return None
    return _value_info_shapes(inferred.graph)


def _value_info_shapes(g: onnx.GraphProto) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for seq in (g.value_info, g.output):
        for vi in seq:
            shape = _type_shape(vi.type)
            if shape is not None:
                out[vi.name] = shape
    return out


# ---------------------------------------------------------------------------- attributes


def _f32(x: float) -> float:
    """The shortest decimal that is the same float32, so alpha=0.1 reads 0.1, not 0.100000001."""
    known = _F32.get(x)
    if known is not None:
        return known
    short = _shortest_f32(x)
    if len(_F32) < 4096 and x == x:  # a graph's epsilons and alphas repeat; NaN never matches
        _F32[x] = short
    return short


_F32: dict[float, float] = {}


def _shortest_f32(x: float) -> float:
    try:
        packed = struct.pack("<f", x)
        for digits in (6, 7, 8):
            y = float(f"{x:.{digits}g}")
            if struct.pack("<f", y) == packed:
                return y
    except (OverflowError, struct.error, ValueError):
        pass
    return x


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


_SKIP = object()
_INT = AttributeProto.INT
_INTS = AttributeProto.INTS
_TENSOR = AttributeProto.TENSOR


_FLOAT = AttributeProto.FLOAT
_STRING = AttributeProto.STRING
_FLOATS = AttributeProto.FLOATS
_STRINGS = AttributeProto.STRINGS
_UNDEFINED = AttributeProto.UNDEFINED


def _attr_value(a: AttributeProto) -> Any:
    """Scalars and lists as plain Python values; tensors and graphs are skipped (`_SKIP`)."""
    t = a.type
    if t == _INT:
        return a.i
    if t == _FLOAT:
        return _f32(a.f)
    if t == _INTS:
        return tuple(a.ints)
    if t == _STRING:
        return _text(a.s)
    if t == _FLOATS:
        return tuple(_f32(f) for f in a.floats)
    if t == _STRINGS:
        return tuple(_text(s) for s in a.strings)
    if t == _UNDEFINED:  # very old files leave `type` unset
        if len(a.ints):
            return tuple(a.ints)
        if len(a.floats):
            return tuple(_f32(f) for f in a.floats)
        if len(a.strings):
            return tuple(_text(s) for s in a.strings)
        if a.HasField("i"):
            return a.i
        if a.HasField("f"):
            return _f32(a.f)
        if a.HasField("s"):
            return _text(a.s)
    return _SKIP


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        t = a.type
        if t == _INTS:  # kernel_shape, strides, pads, ...: most attributes, read first
            value: Any = tuple(a.ints)
        elif t == _INT:
            value = a.i
        elif t == _TENSOR:  # a Constant's or ConstantOfShape's value: never an attribute here
            continue
        else:
            value = _attr_value(a)
            if value is _SKIP:
                continue
        name = a.name
        if type(name) is not str:
            raise GraphError(f"attribute name {name!r} is not valid UTF-8")
        out[name] = value
    return out


# ---------------------------------------------------------------------------- constants


def _constant_node_tensor(node: onnx.NodeProto) -> tuple[Shape | None, TensorProto | None]:
    """Output shape of a `Constant` node, and its tensor when it has one."""
    for a in node.attribute:
        if a.name == "value" and a.type == AttributeProto.TENSOR:
            return tuple(a.t.dims), a.t
        if a.name == "sparse_value":
            return tuple(a.sparse_tensor.dims), None
        if a.name in ("value_float", "value_int", "value_string"):
            return (), None
        if a.name == "value_floats":
            return (len(a.floats),), None
        if a.name == "value_ints":
            return (len(a.ints),), None
        if a.name == "value_strings":
            return (len(a.strings),), None
    return None, None


# ---------------------------------------------------------------------------- order


def _topological(nodes: Sequence[Node], available: set[str]) -> list[int]:
    """Node indices in a valid order: the file's own order when it already is one (the norm)."""
    seen = set(available)
    add = seen.add
    for node in nodes:
        for i in node.inputs:
            if i and i not in seen:
                break
        else:
            for o in node.outputs:
                add(o)  # "" too: no input is "", so it changes nothing
            continue
        break
    else:
        return list(range(len(nodes)))
    producer: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for o in node.outputs:
            if o and o not in available:
                producer.setdefault(o, idx)
    users: list[list[int]] = [[] for _ in nodes]
    pending = [0] * len(nodes)
    for idx, node in enumerate(nodes):
        deps = set()
        for i in node.inputs:
            if not i or i in available:
                continue
            if i not in producer:
                raise GraphError(
                    f"node {node.name or node.op!r} (#{idx}) reads tensor {i!r}, which no "
                    f"node, graph input or initializer produces"
                )
            deps.add(producer[i])
        deps.discard(idx)
        pending[idx] = len(deps)
        for d in deps:
            users[d].append(idx)
    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        idx = heapq.heappop(ready)
        order.append(idx)
        for u in users[idx]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i].name or nodes[i].op for i, p in enumerate(pending) if p][:5]
        raise GraphError(f"graph has a cycle (nodes involved include {stuck})")
    return order


# ---------------------------------------------------------------------------- layers


# ---------------------------------------------------------------------------- parse


def parse_graph(
    source: Source | GraphBytes,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    max_bytes: int | None = None,
    max_layers: int | None = None,
    name: str | None = None,
) -> Graph:
    """Load a model and return its layers with concrete shapes, FLOPs and bytes moved.

    The source is an ONNX model (path, bytes or `ModelProto`) or an ncnn `.param` text (a path
    or bytes starting with its magic number 7767517: `leti.frontend.ncnn`); both give the same
    records, with ONNX op types. `input_shapes` fixes (or overrides) the dims of named inputs;
    otherwise a symbolic leading batch dim becomes 1 and any other symbolic dim raises
    `SymbolicShapeError`. Raises only `LetiError` subclasses for bad input.
    """
    read = read_graph(source, max_bytes)
    if read.model is not None:
        model = read.model
    else:
        from leti.frontend import ncnn  # ncnn builds on this module's helpers: import when used

        if ncnn.is_param(read.data) or read.where.lower().endswith(".param"):
            return ncnn.parse_param(
                read.data,
                input_shapes,
                max_layers=max_layers,
                name=name or read.stem,
                where=read.where,
            )
        model = _parse_bytes(read.data, where=read.where)
    try:
        return _parse(
            model, read.sha256, read.stem, input_shapes or {}, max_graph_layers(max_layers), name
        )
    except LetiError:
        raise
    except RecursionError as exc:
        raise GraphError(f"graph is nested too deeply to read: {exc}") from exc
    except Exception as exc:  # a corrupt model must never surface as a 500
        raise GraphError(f"cannot interpret the graph: {type(exc).__name__}: {exc}") from exc


def _parse(
    model: onnx.ModelProto,
    sha256: str,
    stem: str | None,
    input_shapes: Mapping[str, Sequence[int]],
    max_layers: int,
    name: str | None,
) -> Graph:
    g = model.graph
    count = len(g.node)
    if not model.HasField("graph") or count == 0:
        raise GraphError("model has an empty graph (no nodes)")
    if count > max_layers:
        raise TooManyLayersError(
            f"graph has {count:,} nodes, over the limit of {max_layers:,} "
            f"(set {ENV_MAX_LAYERS} to change it)"
        )

    known: dict[str, Shape] = {}  # what every route starts from: weights' dims
    consts = Consts()
    tensors = consts.tensors
    for t in g.initializer:  # one pass: a light model has hundreds
        tensor_name = t.name
        tensors[tensor_name] = t
        dims = valid_shape(tuple(t.dims))
        if dims is not None:
            known[tensor_name] = dims
    init_names = set(tensors)
    init_names.update(s.values.name for s in g.sparse_initializer)
    check_text(init_names, "initializer")
    check_text((vi.name for vi in g.input), "graph input")
    check_text((vi.name for vi in g.output), "graph output")
    real_inputs = [vi for vi in g.input if vi.name not in init_names]
    concrete, changed = _resolve_inputs(real_inputs, input_shapes)
    nodes = nodes_of(g.node)
    order = _topological(nodes, init_names | {vi.name for vi in g.input})

    for sp in g.sparse_initializer:
        dims = valid_shape(tuple(sp.dims))
        if dims is not None:
            known[sp.values.name] = dims

    # a ConstantOfShape's one attribute is its value, a tensor `_attrs` skips: not read at all
    # (a light model has hundreds, one per weight)
    attrs = [{} if node.op == "ConstantOfShape" else _attrs(node.proto) for node in nodes]
    walked = None
    if OWN_SHAPE_OPS.issuperset(node.op for node in nodes):
        # leti's own rules first: ONNX's inference (a serialized copy, C++ inference, its
        # value_info read back) only runs where they leave a tensor unknown
        walked = _walk(nodes, order, attrs, {**concrete, **known}, consts, init_names, True)
    if walked is None:
        shapes: dict[str, Shape] = {}
        inferred = _onnx_shapes(_inference_model(model, concrete, keep_value_info=not changed))
        if inferred is not None:
            shapes.update(inferred)
        elif not changed:
            shapes.update(_value_info_shapes(g))  # the model's own annotations are still valid
        shapes.update(concrete)
        shapes.update(known)
        walked = _walk(nodes, order, attrs, shapes, consts, init_names, False)
    assert walked is not None
    layers, const_names = walked
    return Graph(
        name=name or stem or (g.name if type(g.name) is str else "") or "graph",
        layers=tuple(layers),
        inputs=tuple((vi.name, concrete[vi.name]) for vi in real_inputs),
        outputs=tuple(vi.name for vi in g.output),
        initializers=frozenset(const_names),
        sha256=sha256,
    )


def _walk(
    nodes: Sequence[Node],
    order: Sequence[int],
    attrs: Sequence[dict[str, Any]],
    shapes: dict[str, Shape],
    consts: Consts,
    init_names: set[str],
    complete: bool,
) -> tuple[list[Layer], set[str]] | None:
    """The layers in `order`, with the shapes in `shapes` and the built-in rules for the rest
    (a copy of `consts` gains the constants met on the way). `complete`: None as soon as a
    node's output stays unknown (the caller then asks ONNX's inference and walks again)."""
    const_names = set(init_names)
    consts = Consts.copy_of(consts)
    layers: list[Layer] = []
    used: set[str] = set()
    get = shapes.get
    never_folded = NEVER_FOLDED
    same_shape = SAME_SHAPE_OPS
    for idx in order:
        node = nodes[idx]
        op = node.op
        node_attrs = attrs[idx]
        inputs = node.inputs
        outputs = node.outputs
        # Constant outputs, and outputs computed only from constants, count as weights
        # (`_track_constants`, inlined: this loop runs once per node of every graph).
        from_consts = False
        if op == "Constant":
            _track_constants(node, node_attrs, shapes, consts, const_names)
            from_consts = True
        elif op not in never_folded:
            for i in inputs:
                if i:
                    if i not in const_names:
                        from_consts = False
                        break
                    from_consts = True
            if from_consts:
                const_names.update([o for o in outputs if o])
        ins = tuple([get(i) if i else None for i in inputs])
        if len(outputs) == 1:  # most nodes
            o = outputs[0]
            if o and o not in shapes:
                if op in same_shape:  # the rule `fill_unknown_shapes` applies, inlined
                    x = ins[0] if ins else None  # every shape in `shapes` is a valid one
                    if x is not None:
                        shapes[o] = x
                elif op == "ConstantOfShape" and inputs:  # likewise (light models' weights)
                    try:
                        x = valid_shape(consts.ints(inputs[0]))
                    except (ArithmeticError, ValueError, IndexError, TypeError, KeyError):
                        x = None
                    if x is not None:
                        shapes[o] = x
                else:
                    fill_unknown_shapes(node, node_attrs, ins, consts, shapes)
                if complete and o not in shapes:
                    return None
            outs = (get(o) if o else None,)
        else:
            for o in outputs:
                if o and o not in shapes:
                    fill_unknown_shapes(node, node_attrs, ins, consts, shapes)
                    if complete:
                        for o2 in outputs:
                            if o2 and o2 not in shapes:
                                return None
                    break
            outs = tuple([get(o) if o else None for o in outputs])

        layer_name = node.name or f"{op}_{idx}"
        if layer_name in used:
            layer_name = f"{layer_name}_{idx}"
            while layer_name in used:
                layer_name += "_"
        used.add(layer_name)  # a constant's name too: the names of the others do not change
        if from_consts:  # a weight, not a layer: its outputs join the graph's initializers
            continue
        layers.append(
            build_layer(op, layer_name, inputs, outputs, node_attrs, ins, outs, const_names)
        )
    return layers, const_names


def _track_constants(
    node: Node,
    attrs: Mapping[str, Any],
    shapes: dict[str, Shape],
    consts: Consts,
    const_names: set[str],
) -> None:
    """Constant outputs, and outputs computed only from constants, count as weights.

    Light models build their weights with ConstantOfShape, and exporters often Unsqueeze or
    Transpose a weight; either way the runtime sees a weight, not an activation.
    """
    if node.op == "Constant":
        if not node.outputs:
            return
        out = node.outputs[0]
        shape, tensor = _constant_node_tensor(node.proto)
        shape = valid_shape(shape)
        if shape is not None:
            shapes[out] = shape
        if tensor is not None:
            consts.tensors[out] = tensor
        elif "value_ints" in attrs or "value_int" in attrs:
            value = attrs.get("value_ints", attrs.get("value_int"))
            consts.literal[out] = value if isinstance(value, tuple) else (value,)
        const_names.add(out)
    elif (
        any(node.inputs)
        and node.op not in NEVER_FOLDED
        and all(not i or i in const_names for i in node.inputs)
    ):
        const_names.update(o for o in node.outputs if o)
