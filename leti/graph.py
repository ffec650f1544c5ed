"""ONNX front end: model bytes or a path in, a shape-inferred `Graph` of `Layer`s out.

Two rules shape this module. First, a model is untrusted input: it is parsed from bytes
(`onnx.load_model_from_string`, which never loads external data), and nothing a model
names (an external-data `location`, say) is ever opened; shape inference runs on an
in-memory copy whose initializers carry no bulk data and no external-data entries. Bad
input only ever raises a `LetiError` subclass. Second, a NAS loop parses thousands of
graphs, so the work per node is a few dict look-ups: ONNX's own (C++) shape inference does
the heavy lifting, on a copy without the weights, and a small built-in propagation fills
in what it leaves unknown (old opsets, odd exporters).
"""

from __future__ import annotations

import hashlib
import heapq
import math
import operator
import os
import stat
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto

from leti.errors import (
    GraphError,
    GraphTooLargeError,
    LetiError,
    SymbolicShapeError,
    TooManyLayersError,
)
from leti.records import Graph, Layer, Shape

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LAYERS = 20_000
ENV_MAX_GRAPH_MB = "LETI_MAX_GRAPH_MB"
ENV_MAX_LAYERS = "LETI_MAX_LAYERS"

Source = str | os.PathLike[str] | bytes | bytearray | memoryview | onnx.ModelProto

# Small tensors keep their values when weights are stripped: shape inference needs Reshape
# targets, axes, pads, Resize scales and the like, and they reveal nothing about the weights.
_KEEP_INT_ELEMENTS = 64
_KEEP_FLOAT_ELEMENTS = 8
_INT_TYPES = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8})
_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16})
# Ops whose outputs are not a function of their inputs: never constant-folded.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)

_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_SPATIAL_KEYS = frozenset({"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
_SAME_AS_INPUT = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
        "Selu", "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt",
        "Reciprocal", "Neg", "Abs", "Ceil", "Floor", "Round", "Sign", "Sin", "Cos", "Not",
        "ThresholdedRelu", "Softmax", "LogSoftmax", "Hardmax", "LRN", "Identity", "Cast",
        "BatchNormalization", "InstanceNormalization", "LayerNormalization",
        "GroupNormalization", "Dropout", "CastLike", "Shrink", "IsNaN", "IsInf",
        "MeanVarianceNormalization", "LpNormalization", "CumSum",
    }
)  # fmt: skip
_BROADCAST = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "PRelu", "Where",
        "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
        "Mod", "BitShift",
    }
)  # fmt: skip
_ELEMENTWISE = (_SAME_AS_INPUT | _BROADCAST | {"Resize", "Upsample"}) - {
    "Identity", "Cast", "CastLike", "Dropout", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "LRN",
}  # fmt: skip
_NORMS = frozenset(
    {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
)
_REDUCE_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip


# ---------------------------------------------------------------------------- limits


def _env_int(key: str, default: int, scale: float = 1) -> int:
    """An env override, or the default when unset or unparsable (a config typo must not 500)."""
    raw = os.environ.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw) * scale)
    except ValueError:
        return default
    return value if value > 0 else default


def _max_bytes(max_bytes: int | None) -> int:
    if max_bytes is not None:
        return int(max_bytes)
    return _env_int(ENV_MAX_GRAPH_MB, DEFAULT_MAX_BYTES, scale=1024 * 1024)


def _max_layers(max_layers: int | None) -> int:
    if max_layers is not None:
        return int(max_layers)
    return _env_int(ENV_MAX_LAYERS, DEFAULT_MAX_LAYERS)


def _too_large(size: int, limit: int) -> GraphTooLargeError:
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
    return _load(source, _max_bytes(max_bytes))[0]


def _load(source: Source, limit: int) -> tuple[onnx.ModelProto, bytes, str | None]:
    """(model, its serialized bytes, a name hint from the file name)."""
    if isinstance(source, onnx.ModelProto):
        # upb's ByteSize() encodes the message anyway: serialize once, for the size and the hash
        data = source.SerializeToString()
        if len(data) > limit:
            raise _too_large(len(data), limit)
        return source, data, None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > limit:
            raise _too_large(len(data), limit)
        return _parse_bytes(data), data, None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        data = _read_file(path, limit)
        return _parse_bytes(data, where=str(path)), data, path.stem
    raise LetiError(
        f"cannot read a model from a {type(source).__name__}: give a path, bytes or a ModelProto"
    )


def _read_file(path: Path, limit: int) -> bytes:
    """Stat first, then read at most limit + 1 bytes (the file may grow between the two)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        raise GraphError(f"cannot read model file {str(path)!r}: {reason}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise GraphError(f"model path {str(path)!r} is not a regular file")
    if st.st_size > limit:
        raise _too_large(st.st_size, limit)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise GraphError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _parse_bytes(data: bytes, where: str = "model bytes") -> onnx.ModelProto:
    if not data:
        raise GraphError(f"{where}: empty input, not an ONNX model")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError, RuntimeError from upb, ...
        raise GraphError(
            f"{where}: not a valid ONNX protobuf ({len(data):,} bytes; truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


# ---------------------------------------------------------------------------- weights


def _numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _keeps_values(t: TensorProto) -> bool:
    """Whether a stripped copy keeps this tensor's values (small shape-like constants only)."""
    if t.data_location == TensorProto.EXTERNAL:
        return False
    n = _numel(t.dims)
    if len(t.raw_data) > 8 * max(n, 1):  # dims that lie about the payload
        return False
    if t.data_type in _INT_TYPES:
        return n <= _KEEP_INT_ELEMENTS
    if t.data_type in _FLOAT_TYPES:
        return n <= _KEEP_FLOAT_ELEMENTS
    return False


def _strip_tensor_into(src: TensorProto, dst: TensorProto) -> None:
    """Copy name, dims and type; values only for small shape-like constants; never a location."""
    if _keeps_values(src):
        dst.CopyFrom(src)
        dst.ClearField("external_data")
        dst.ClearField("data_location")
        return
    dst.name = src.name
    dst.data_type = src.data_type
    dst.dims.extend(src.dims)


def _strip_initializers_into(src: onnx.GraphProto, dst: onnx.GraphProto) -> None:
    """Stripped copies of all initializers; a sparse one becomes a dense stub of its shape."""
    for t in src.initializer:
        _strip_tensor_into(t, dst.initializer.add())
    for sp in src.sparse_initializer:
        stub = dst.initializer.add()
        stub.name = sp.values.name
        stub.data_type = sp.values.data_type
        stub.dims.extend(sp.dims)


def _strip_constant_nodes(nodes: Iterable[onnx.NodeProto]) -> None:
    """Drop the payload of big `Constant` tensors (some exporters store weights that way)."""
    for node in nodes:
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.type == AttributeProto.TENSOR and not _keeps_values(a.t):
                stripped = TensorProto()
                _strip_tensor_into(a.t, stripped)
                a.t.CopyFrom(stripped)


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == 3


def _copy_fields(src: Any, dst: Any, skip: frozenset[str]) -> None:
    """Copy every set field of a message except those in `skip` (the weights, say)."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if _is_repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A graph-only copy for uploads: every initializer keeps name, dims and data type.

    Weight values are dropped and no external-data entries survive, so the copy is small and
    names no file; sparse initializers become dense stubs of their shape. Small integer
    tensors (<= 64 values: Reshape targets, axes, pads) and tiny float ones (<= 8 values:
    Resize scales, Clip bounds) keep their values, because the server needs them to infer
    shapes. Large `Constant` node tensors are stripped the same way.
    """
    out = onnx.ModelProto()
    _copy_fields(model, out, skip=frozenset({"graph"}))
    if model.HasField("graph"):
        _copy_fields(model.graph, out.graph, skip=frozenset({"initializer", "sparse_initializer"}))
        _strip_initializers_into(model.graph, out.graph)
        _strip_constant_nodes(out.graph.node)
    return out


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


def _check_shape_arg(name: str, shape: Sequence[int]) -> Shape:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError as exc:
        raise LetiError(
            f"input_shapes[{name!r}] must be a sequence of ints, got {shape!r}"
        ) from exc
    if any(d < 1 for d in dims):
        raise LetiError(f"input_shapes[{name!r}] has a dim < 1: {dims}")
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
            shape = _check_shape_arg(vi.name, given[vi.name])
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
    _strip_constant_nodes(g.node)
    _strip_initializers_into(src, g)
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


def _attr_value(a: AttributeProto) -> Any:
    """Scalars and lists as plain Python values; tensors and graphs are skipped (`_SKIP`)."""
    t = a.type
    if t == AttributeProto.INT:
        return a.i
    if t == AttributeProto.FLOAT:
        return _f32(a.f)
    if t == AttributeProto.INTS:
        return tuple(a.ints)
    if t == AttributeProto.STRING:
        return _text(a.s)
    if t == AttributeProto.FLOATS:
        return tuple(_f32(f) for f in a.floats)
    if t == AttributeProto.STRINGS:
        return tuple(_text(s) for s in a.strings)
    if t == AttributeProto.UNDEFINED:  # very old files leave `type` unset
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
        value = _attr_value(a)
        if value is not _SKIP:
            if type(a.name) is not str:
                raise GraphError(f"attribute name {a.name!r} is not valid UTF-8")
            out[a.name] = value
    return out


# ---------------------------------------------------------------------------- constants


def _tensor_values(t: TensorProto, limit: int = 1024) -> tuple[float | int, ...] | None:
    """Values of a small int/float tensor (shape targets, axes, scales), else None."""
    n = _numel(t.dims)
    if n > limit or t.data_location == TensorProto.EXTERNAL:
        return None
    dt = t.data_type
    fmt = {
        TensorProto.INT64: "q",
        TensorProto.INT32: "i",
        TensorProto.FLOAT: "f",
        TensorProto.DOUBLE: "d",
    }.get(dt)
    if fmt is None:
        return None
    if t.raw_data:
        size = struct.calcsize(fmt)
        if len(t.raw_data) != n * size:
            return None
        return struct.unpack(f"<{n}{fmt}", t.raw_data)
    field = {
        TensorProto.INT64: t.int64_data,
        TensorProto.INT32: t.int32_data,
        TensorProto.FLOAT: t.float_data,
        TensorProto.DOUBLE: t.double_data,
    }[dt]
    return tuple(field) if len(field) == n else None


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


class _Consts:
    """Look-up of small constant values by tensor name, decoded lazily and only when asked."""

    def __init__(self) -> None:
        self.tensors: dict[str, TensorProto] = {}
        self.literal: dict[str, tuple[float | int, ...]] = {}

    def ints(self, name: str) -> tuple[int, ...] | None:
        values = self.values(name)
        if values is None:
            return None
        try:
            return tuple(int(v) for v in values)
        except (ValueError, OverflowError):
            return None

    def values(self, name: str) -> tuple[float | int, ...] | None:
        if not name:
            return None
        if name in self.literal:
            return self.literal[name]
        t = self.tensors.get(name)
        return None if t is None else _tensor_values(t)


class _Node:
    """A NodeProto's fields read once: protobuf accessors build new objects on every access."""

    __slots__ = ("op", "name", "inputs", "outputs", "proto")

    def __init__(self, proto: onnx.NodeProto) -> None:
        self.proto = proto
        self.op: str = proto.op_type
        self.name: str = proto.name
        self.inputs: tuple[str, ...] = tuple(proto.input)
        self.outputs: tuple[str, ...] = tuple(proto.output)
        _check_text((self.op, self.name, *self.inputs, *self.outputs), "node")


def _check_text(names: Iterable[Any], where: str) -> None:
    """protobuf hands back invalid UTF-8 as bytes; a name must be text to be looked up."""
    for n in names:
        if type(n) is not str:
            raise GraphError(f"{where} name {n!r} is not valid UTF-8")


# ---------------------------------------------------------------------------- geometry


def _conv_geometry(
    op: str, attrs: Mapping[str, Any], x: Shape | None, w: Shape | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(kernel, strides, pads, dilations) in ONNX rank, with `auto_pad` turned into pads."""
    kernel = tuple(attrs.get("kernel_shape", ()))
    if not kernel and op in _CONV_OPS and w is not None and len(w) > 2:
        kernel = tuple(w[2:])
    if not kernel:
        return None
    r = len(kernel)
    strides = tuple(attrs.get("strides", ())) or (1,) * r
    dilations = tuple(attrs.get("dilations", ())) or (1,) * r
    pads = tuple(attrs.get("pads", ())) or (0,) * (2 * r)
    if len(strides) != r or len(dilations) != r or len(pads) != 2 * r:
        return None
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = (0,) * (2 * r)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER") and x is not None and len(x) == r + 2:
        begin, end = [], []
        for i in range(r):
            extent = (kernel[i] - 1) * dilations[i] + 1
            if op == "ConvTranspose":
                out_pad = tuple(attrs.get("output_padding", ())) or (0,) * r
                total = strides[i] * (x[2 + i] - 1) + out_pad[i] + extent - x[2 + i] * strides[i]
            else:
                out = -(-x[2 + i] // strides[i])
                total = (out - 1) * strides[i] + extent - x[2 + i]
            total = max(total, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
        pads = tuple(begin) + tuple(end)
    return kernel, strides, pads, dilations


def _spatial_out(
    op: str,
    attrs: Mapping[str, Any],
    x: Shape,
    geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]],
) -> list[int]:
    kernel, strides, pads, dilations = geometry
    r = len(kernel)
    out = []
    for i in range(r):
        extent = (kernel[i] - 1) * dilations[i] + 1
        padded = x[2 + i] + pads[i] + pads[r + i]
        if op == "ConvTranspose":
            out_pad = tuple(attrs.get("output_padding", ())) or (0,) * r
            out.append(strides[i] * (x[2 + i] - 1) + out_pad[i] + extent - pads[i] - pads[r + i])
        elif op in _POOL_OPS and attrs.get("ceil_mode", 0):
            o = -(-(padded - extent) // strides[i]) + 1
            if (o - 1) * strides[i] >= x[2 + i] + pads[i]:
                o -= 1  # the last window must start inside the input or left padding
            out.append(o)
        else:
            out.append((padded - extent) // strides[i] + 1)
    return out


def _as_2d(
    geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """1-D conv/pool as 2-D with H = 1, so later stages see one layout."""
    kernel, strides, pads, dilations = geometry
    if len(kernel) != 1:
        return geometry
    return (1, *kernel), (1, *strides), (0, pads[0], 0, pads[1]), (1, *dilations)


# ---------------------------------------------------------------------------- fallback


def _broadcast(shapes: Sequence[Shape | None]) -> Shape | None:
    if not shapes or any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)  # type: ignore[arg-type]
    out = [1] * rank
    for s in shapes:
        assert s is not None
        for i, d in enumerate(s, start=rank - len(s)):
            if d == out[i] or d == 1:
                continue
            if out[i] == 1:
                out[i] = d
            else:
                return None
    return tuple(out)


def _axes(node: _Node, attrs: Mapping[str, Any], consts: _Consts, index: int) -> Any:
    """Axes from the attribute (old opsets) or the constant input (new ones)."""
    if "axes" in attrs:
        return tuple(attrs["axes"])
    if len(node.inputs) > index and node.inputs[index]:
        return consts.ints(node.inputs[index])
    return ()


def _infer_node(
    node: _Node,
    attrs: Mapping[str, Any],
    ins: Sequence[Shape | None],
    consts: _Consts,
) -> list[Shape | None] | None:
    """Built-in shape rules for the common ops, for when ONNX inference left outputs unknown."""
    op = node.op
    x = ins[0] if ins else None
    if op in _SAME_AS_INPUT:
        if op == "Dropout":
            return [x, x]  # output and mask
        return [x]  # extra outputs (BN running stats, LN mean) differ: leave them unknown
    if op in _BROADCAST:
        return [_broadcast(ins)]
    if op == "ConstantOfShape" and node.inputs:
        return [consts.ints(node.inputs[0])]
    if x is None:
        return None
    rank = len(x)
    if op in _CONV_OPS or op in _POOL_OPS:
        w = ins[1] if op in _CONV_OPS and len(ins) > 1 else None
        geometry = _conv_geometry(op, attrs, x, w)
        if geometry is None or rank != len(geometry[0]) + 2:
            return None
        if op in _CONV_OPS:
            if w is None:
                return None
            spatial = attrs.get("output_shape") if op == "ConvTranspose" else None
            c = w[0] if op == "Conv" else w[1] * int(attrs.get("group", 1))
        else:
            spatial, c = None, x[1]
        spatial = list(spatial) if spatial else _spatial_out(op, attrs, x, geometry)
        out = (x[0], c, *spatial)
        return [out] * len(node.outputs)  # MaxPool's Indices match its output
    if op in _GLOBAL_POOLS:
        return [(*x[:2], *([1] * (rank - 2)))]
    if op in _REDUCE_OPS:
        axes = _axes(node, attrs, consts, 1)
        if axes is None:
            return None
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = tuple(range(rank))
        axes = {a % rank for a in axes}
        keep = attrs.get("keepdims", 1)
        return [tuple(1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes)]
    if op == "Gemm" and len(ins) > 1 and ins[1] is not None:
        a, b = x, ins[1]
        m = a[1] if attrs.get("transA", 0) else a[0]
        n = b[0] if attrs.get("transB", 0) else b[1]
        return [(m, n)]
    if op == "MatMul" and len(ins) > 1 and ins[1] is not None:
        return [_matmul_shape(x, ins[1])]
    if op == "Flatten":
        axis = attrs.get("axis", 1) % (rank + 1) if rank else 0
        return [(_numel(x[:axis]), _numel(x[axis:]))]
    if op == "Reshape":
        target = consts.ints(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None and "shape" in attrs:  # opset < 5
            target = tuple(attrs["shape"])
        return None if target is None else [_reshape(x, target, attrs.get("allowzero", 0))]
    if op == "Concat":
        if any(s is None or len(s) != rank for s in ins):
            return None
        axis = attrs.get("axis", 1) % rank
        total = sum(s[axis] for s in ins)  # type: ignore[index]
        return [(*x[:axis], total, *x[axis + 1 :])]
    if op == "Transpose":
        perm = attrs.get("perm") or tuple(reversed(range(rank)))
        return [tuple(x[p] for p in perm)]
    if op == "Squeeze":
        axes = _axes(node, attrs, consts, 1)
        if axes is None:
            return None
        drop = {a % rank for a in axes} if axes else {i for i, d in enumerate(x) if d == 1}
        return [tuple(d for i, d in enumerate(x) if i not in drop)]
    if op == "Unsqueeze":
        axes = _axes(node, attrs, consts, 1)
        if not axes:
            return None
        out_rank = rank + len(axes)
        new = {a % out_rank for a in axes}
        it = iter(x)
        return [tuple(1 if i in new else next(it) for i in range(out_rank))]
    if op == "Shape":
        return [(rank,)]
    if op == "Pad":
        pads = attrs.get("pads") or attrs.get("paddings")
        if pads is None and len(node.inputs) > 1:
            pads = consts.ints(node.inputs[1])
        if pads is None or len(pads) != 2 * rank:
            return None
        return [tuple(d + pads[i] + pads[rank + i] for i, d in enumerate(x))]
    if op == "Slice":
        return _slice_shape(node, attrs, x, consts)
    if op in ("Resize", "Upsample"):
        return _resize_shape(node, attrs, x, consts)
    if op == "Split":
        return _split_shapes(node, attrs, x, consts)
    return None


def _matmul_shape(a: Shape, b: Shape) -> Shape | None:
    if not a or not b:
        return None
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        return None
    batch = _broadcast([a2[:-2], b2[:-2]])
    if batch is None:
        return None
    out = [*batch, a2[-2], b2[-1]]
    if len(b) == 1:
        out.pop()
    if len(a) == 1:
        out.pop(-2 if len(b) > 1 else -1)
    return tuple(out)


def _reshape(x: Shape, target: Sequence[int], allowzero: int) -> Shape | None:
    out = [x[i] if d == 0 and not allowzero and i < len(x) else d for i, d in enumerate(target)]
    if out.count(-1) > 1 or any(d < -1 for d in out):
        return None
    if -1 in out:
        known = _numel(d for d in out if d != -1)
        if known == 0 or _numel(x) % known:
            return None
        out[out.index(-1)] = _numel(x) // known
    return tuple(out) if _numel(out) == _numel(x) else None


def _resize_shape(
    node: _Node, attrs: Mapping[str, Any], x: Shape, consts: _Consts
) -> list[Shape | None] | None:
    names = list(node.inputs)
    if node.op == "Resize" and len(names) >= 4 and names[3]:
        sizes = consts.ints(names[3])
        return None if sizes is None or len(sizes) != len(x) else [tuple(sizes)]
    scales: Any = attrs.get("scales")
    if scales is None:
        index = 2 if node.op == "Resize" and len(names) >= 3 else 1
        scales = consts.values(names[index]) if len(names) > index else None
    if not scales or len(scales) != len(x):
        return None
    return [tuple(int(math.floor(d * s)) for d, s in zip(x, scales, strict=True))]


def _slice_shape(
    node: _Node, attrs: Mapping[str, Any], x: Shape, consts: _Consts
) -> list[Shape | None] | None:
    names = node.inputs
    if "starts" in attrs:  # opset < 10
        starts, ends = attrs["starts"], attrs.get("ends")
        axes: Any = attrs.get("axes")
        steps: Any = None
    else:
        starts = consts.ints(names[1]) if len(names) > 1 else None
        ends = consts.ints(names[2]) if len(names) > 2 else None
        axes = consts.ints(names[3]) if len(names) > 3 and names[3] else None
        steps = consts.ints(names[4]) if len(names) > 4 and names[4] else None
    if starts is None or ends is None or len(starts) != len(ends):
        return None
    axes = axes or range(len(starts))
    steps = steps or (1,) * len(starts)
    out = list(x)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        a = axis % len(x)
        out[a] = len(range(*slice(start, end, step).indices(x[a])))
    return [tuple(out)]


def _split_shapes(
    node: _Node, attrs: Mapping[str, Any], x: Shape, consts: _Consts
) -> list[Shape | None] | None:
    axis = attrs.get("axis", 0) % len(x)
    n = len(node.outputs)
    parts: Any = attrs.get("split")
    if parts is None and len(node.inputs) > 1 and node.inputs[1]:
        parts = consts.ints(node.inputs[1])
    if parts is None:
        if n == 0:
            return None
        size = -(-x[axis] // n)
        parts = [size] * (n - 1) + [x[axis] - size * (n - 1)]
    if len(parts) != n or sum(parts) != x[axis]:
        return None
    return [(*x[:axis], p, *x[axis + 1 :]) for p in parts]


# ---------------------------------------------------------------------------- order


def _topological(nodes: Sequence[_Node], available: set[str]) -> list[int]:
    """Node indices in a valid order: the file's own order when it already is one (the norm)."""
    seen = set(available)
    in_order = True
    for node in nodes:
        if any(i and i not in seen for i in node.inputs):
            in_order = False
            break
        seen.update(o for o in node.outputs if o)
    if in_order:
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


def _flops(
    op: str,
    ins: Sequence[Shape | None],
    outs: Sequence[Shape | None],
    attrs: Mapping[str, Any],
    kernel: Sequence[int],
    group: int,
) -> int:
    """2 x MACs for conv/matmul; window size x outputs for pools; one op per element otherwise."""
    x = ins[0] if ins else None
    y = outs[0] if outs else None
    w = ins[1] if len(ins) > 1 else None
    if op == "Conv":
        if y is None:
            return 0
        if w is not None and len(w) > 2:
            return 2 * _numel(y) * _numel(w[1:])
        if x is not None and len(x) > 1 and kernel:
            return 2 * _numel(y) * (x[1] // max(group, 1)) * _numel(kernel)
        return 0
    if op == "ConvTranspose":
        if x is None or w is None or len(w) < 3:
            return 0
        return 2 * _numel(x) * _numel(w[1:])
    if op in _POOL_OPS:
        return _numel(y) * _numel(kernel) if y is not None else 0
    if op in _GLOBAL_POOLS or op in _REDUCE_OPS:
        return _numel(x) if x is not None else 0
    if op == "Gemm":
        if x is None or y is None or len(x) != 2:
            return 0
        k = x[0] if attrs.get("transA", 0) else x[1]
        return 2 * _numel(y) * k
    if op == "MatMul":
        if x is None or y is None or not x:
            return 0
        return 2 * _numel(y) * x[-1]
    if y is None:
        return 0
    if op in _NORMS:
        return 2 * _numel(y)
    if op == "LRN":
        return _numel(y) * int(attrs.get("size", 1))
    if op in ("Sum", "Max", "Min", "Mean") and len(ins) > 2:
        return _numel(y) * (len(ins) - 1)
    if op in _ELEMENTWISE:
        return _numel(y)
    return 0


def _layer(
    node: _Node,
    name: str,
    attrs: dict[str, Any],
    ins: tuple[Shape | None, ...],
    outs: tuple[Shape | None, ...],
    consts: set[str],
) -> Layer:
    op = node.op
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group = 1
    x = ins[0] if ins else None
    if op in _CONV_OPS or op in _POOL_OPS:
        w = ins[1] if op in _CONV_OPS and len(ins) > 1 else None
        geometry = _conv_geometry(op, attrs, x, w)
        if geometry is not None:
            kernel, strides, pads, dilations = _as_2d(geometry)
        if op in _CONV_OPS:
            group = int(attrs.get("group", 1))
        attrs = {k: v for k, v in attrs.items() if k not in _SPATIAL_KEYS}
    elif op in _GLOBAL_POOLS and x is not None and len(x) > 2:
        r = len(x) - 2
        kernel, strides, pads, dilations = _as_2d((x[2:], (1,) * r, (0,) * (2 * r), (1,) * r))
    params = 0
    moved = 0
    for i, s in zip(node.inputs, ins, strict=True):
        if s is None:
            continue
        if i in consts:
            params += _numel(s)
        else:
            moved += _numel(s)
    moved += sum(_numel(s) for s in outs if s is not None)
    return Layer(
        name=name,
        op_type=op,
        inputs=tuple(node.inputs),
        outputs=tuple(node.outputs),
        input_shapes=ins,
        output_shapes=outs,
        kernel_shape=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        group=group,
        flops=_flops(op, ins, outs, attrs, kernel, group),
        params=params,
        bytes_moved=4 * (moved + params),
        attrs=tuple(sorted(attrs.items())),
    )


def _valid(shape: Shape | None) -> Shape | None:
    """Drop shapes a broken model (or a rule fed nonsense) could produce: negative dims."""
    if shape is None or any(not isinstance(d, int) or d < 0 for d in shape):
        return None
    return tuple(shape)


# ---------------------------------------------------------------------------- parse


def parse_graph(
    source: Source,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    max_bytes: int | None = None,
    max_layers: int | None = None,
    name: str | None = None,
) -> Graph:
    """Load an ONNX model and return its layers with concrete shapes, FLOPs and bytes moved.

    `input_shapes` fixes (or overrides) the dims of named inputs; otherwise a symbolic leading
    batch dim becomes 1 and any other symbolic dim raises `SymbolicShapeError`. Raises only
    `LetiError` subclasses for bad input.
    """
    limit = _max_bytes(max_bytes)
    model, data, stem = _load(source, limit)
    try:
        return _parse(model, data, stem, input_shapes or {}, _max_layers(max_layers), name)
    except LetiError:
        raise
    except RecursionError as exc:
        raise GraphError(f"graph is nested too deeply to read: {exc}") from exc
    except Exception as exc:  # a corrupt model must never surface as a 500
        raise GraphError(f"cannot interpret the graph: {type(exc).__name__}: {exc}") from exc


def _parse(
    model: onnx.ModelProto,
    data: bytes,
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

    init_names = {t.name for t in g.initializer}
    init_names.update(s.values.name for s in g.sparse_initializer)
    _check_text(init_names, "initializer")
    _check_text((vi.name for vi in g.input), "graph input")
    _check_text((vi.name for vi in g.output), "graph output")
    real_inputs = [vi for vi in g.input if vi.name not in init_names]
    concrete, changed = _resolve_inputs(real_inputs, input_shapes)
    nodes = [_Node(n) for n in g.node]
    order = _topological(nodes, init_names | {vi.name for vi in g.input})

    inferred = _onnx_shapes(_inference_model(model, concrete, keep_value_info=not changed))
    shapes: dict[str, Shape] = {}
    if inferred is not None:
        shapes.update(inferred)
    elif not changed:
        shapes.update(_value_info_shapes(g))  # the model's own annotations are still valid
    shapes.update(concrete)

    consts = _Consts()
    const_names = set(init_names)
    for t in g.initializer:
        dims = _valid(tuple(t.dims))
        if dims is not None:
            shapes[t.name] = dims
        consts.tensors[t.name] = t
    for sp in g.sparse_initializer:
        dims = _valid(tuple(sp.dims))
        if dims is not None:
            shapes[sp.values.name] = dims

    layers: list[Layer] = []
    used: set[str] = set()
    for idx in order:
        node = nodes[idx]
        attrs = _attrs(node.proto)
        _track_constants(node, attrs, shapes, consts, const_names)
        ins = tuple(shapes.get(i) if i else None for i in node.inputs)
        if any(o and o not in shapes for o in node.outputs):
            _fill_unknown(node, attrs, ins, consts, shapes)
        outs = tuple(shapes.get(o) if o else None for o in node.outputs)

        layer_name = node.name or f"{node.op}_{idx}"
        if layer_name in used:
            layer_name = f"{layer_name}_{idx}"
            while layer_name in used:
                layer_name += "_"
        used.add(layer_name)
        layers.append(_layer(node, layer_name, attrs, ins, outs, const_names))

    return Graph(
        name=name or stem or (g.name if type(g.name) is str else "") or "graph",
        layers=tuple(layers),
        inputs=tuple((vi.name, concrete[vi.name]) for vi in real_inputs),
        outputs=tuple(vi.name for vi in g.output),
        initializers=frozenset(const_names),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _track_constants(
    node: _Node,
    attrs: Mapping[str, Any],
    shapes: dict[str, Shape],
    consts: _Consts,
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
        shape = _valid(shape)
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
        and node.op not in _NONDETERMINISTIC
        and all(not i or i in const_names for i in node.inputs)
    ):
        const_names.update(o for o in node.outputs if o)


def _fill_unknown(
    node: _Node,
    attrs: Mapping[str, Any],
    ins: tuple[Shape | None, ...],
    consts: _Consts,
    shapes: dict[str, Shape],
) -> None:
    """Built-in rules for outputs ONNX inference left unknown; nonsense input yields None."""
    try:
        guessed = _infer_node(node, attrs, ins, consts)
    except (ArithmeticError, ValueError, IndexError, TypeError, KeyError, StopIteration):
        return
    for o, s in zip(node.outputs, guessed or (), strict=False):
        s = _valid(s)
        if o and s is not None and o not in shapes:
            shapes[o] = s
