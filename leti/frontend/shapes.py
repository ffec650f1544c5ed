"""Built-in shape propagation: per-op rules for outputs ONNX's own inference left unknown.

`leti.frontend.graph` runs ONNX's (C++) shape inference first; these rules fill in what it could not
(old opsets, odd exporters). They read a node through `Node` and small constant inputs
(Reshape targets, axes, pads, Resize scales) through `Consts`, and a rule fed nonsense yields
None rather than raising. Nothing here imports `leti.frontend.graph`: the dependency runs one way.
"""

from __future__ import annotations

import math
import operator
import struct
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple

import onnx
from onnx import TensorProto

from leti.core.errors import GraphError, LetiError
from leti.core.records import Layer, Shape

# Convolutions and the input index of their weight: the quantized forms (QLinearConv takes
# x, x_scale, x_zero_point, w, ...) and onnxruntime's FusedConv (Conv + activation) compute
# the same geometry as Conv.
CONV_WEIGHT_INDEX: Mapping[str, int] = {
    "Conv": 1, "ConvTranspose": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1,
}  # fmt: skip
CONV_OPS = frozenset(CONV_WEIGHT_INDEX)
POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"})
GLOBAL_POOL_OPS = frozenset(
    {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "QLinearGlobalAveragePool"}
)
#: Ops never constant-folded, whatever their inputs: their outputs are not a function of their
#: inputs (random ops), or they run subgraphs that read the outer graph's tensors without
#: naming them as inputs (an `If` on a constant condition still computes on activations).
NEVER_FOLDED = frozenset(
    {
        "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
        "If", "Loop", "Scan",
    }
)  # fmt: skip

# Recurrent layers and their gate count: an LSTM computes 4 gates, a GRU 3, a plain RNN 1.
RNN_GATES: Mapping[str, int] = {"LSTM": 4, "GRU": 3, "RNN": 1}
# Matrix products and the input index of their B operand (A is input 0): the quantized forms
# (QLinearMatMul takes a, a_scale, a_zero_point, b, ...) and onnxruntime's fused ones.
MATMUL_B_INDEX: Mapping[str, int] = {
    "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3, "FusedMatMul": 1,
    "MatMulIntegerToFloat": 1, "DynamicQuantizeMatMul": 1,
}  # fmt: skip
SAME_SHAPE_OPS = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu",
        "Selu", "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt",
        "Reciprocal", "Neg", "Abs", "Ceil", "Floor", "Round", "Sign", "Sin", "Cos", "Not",
        "ThresholdedRelu", "Softmax", "LogSoftmax", "Hardmax", "LRN", "Identity", "Cast",
        "BatchNormalization", "InstanceNormalization", "LayerNormalization",
        "GroupNormalization", "Dropout", "CastLike", "Shrink", "IsNaN", "IsInf",
        "MeanVarianceNormalization", "LpNormalization", "CumSum", "QuantizeLinear",
        "DequantizeLinear", "DynamicQuantizeLinear",
        # com.microsoft contrib ops that exporters and onnxruntime's optimizer emit
        "FastGelu", "BiasGelu", "QuickGelu", "BiasAdd", "BiasSoftmax", "SkipLayerNormalization",
        "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "QLinearSigmoid",
        "QLinearLeakyRelu", "QLinearSoftmax",
    }
)  # fmt: skip
BROADCAST_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min", "Mean", "PRelu", "Where",
        "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
        "Mod", "BitShift",
    }
)  # fmt: skip
REDUCE_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip


def numel(dims: Iterable[int]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


# ---------------------------------------------------------------------------- nodes and constants


_FORMATS = {
    TensorProto.INT64: ("q", 8, "int64_data"),
    TensorProto.INT32: ("i", 4, "int32_data"),
    TensorProto.FLOAT: ("f", 4, "float_data"),
    TensorProto.DOUBLE: ("d", 8, "double_data"),
}
_EXTERNAL = TensorProto.EXTERNAL


def _tensor_values(t: TensorProto, limit: int = 1024) -> tuple[float | int, ...] | None:
    """Values of a small int/float tensor (shape targets, axes, scales), else None."""
    n = numel(t.dims)
    if n > limit or t.data_location == _EXTERNAL:
        return None
    fmt = _FORMATS.get(t.data_type)
    if fmt is None:
        return None
    code, size, field = fmt
    raw = t.raw_data
    if raw:
        if len(raw) != n * size:
            return None
        return struct.unpack(f"<{n}{code}", raw)
    values = getattr(t, field)
    return tuple(values) if len(values) == n else None


class Consts:
    """Look-up of small constant values by tensor name, decoded lazily and only when asked."""

    def __init__(self) -> None:
        self.tensors: dict[str, TensorProto] = {}
        self.literal: dict[str, tuple[float | int, ...]] = {}

    @classmethod
    def copy_of(cls, other: Consts) -> Consts:
        new = cls()
        new.tensors = dict(other.tensors)
        new.literal = dict(other.literal)
        return new

    def ints(self, name: str) -> tuple[int, ...] | None:
        values = self.values(name)
        if values is None:
            return None
        try:
            return tuple(map(int, values))
        except (ValueError, OverflowError):
            return None

    def values(self, name: str) -> tuple[float | int, ...] | None:
        if not name:
            return None
        if name in self.literal:
            return self.literal[name]
        t = self.tensors.get(name)
        return None if t is None else _tensor_values(t)


class Node(NamedTuple):
    """A NodeProto's fields read once: protobuf accessors build new objects on every access.
    Built by `nodes_of`, which checks that every name is text."""

    op: str
    name: str
    inputs: Sequence[str]  # lists: slicing a repeated field is twice as fast as tuple() of it
    outputs: Sequence[str]
    proto: Any  # the onnx.NodeProto


def nodes_of(protos: Iterable[onnx.NodeProto]) -> list[Node]:
    """The nodes of a graph, each field read once; a name that is not valid UTF-8 (protobuf
    hands it back as bytes) raises GraphError."""
    new = tuple.__new__
    nodes = [new(Node, (p.op_type, p.name, p.input[:], p.output[:], p)) for p in protos]
    try:  # str.join refuses anything but text, in C: one pass over every name
        "".join([n.op + n.name for n in nodes])
        "".join(chain.from_iterable([n.inputs for n in nodes]))
        "".join(chain.from_iterable([n.outputs for n in nodes]))
    except TypeError:
        for n in nodes:
            check_text((n.op, n.name, *n.inputs, *n.outputs), "node")
    return nodes


def check_text(names: Iterable[Any], where: str) -> None:
    """protobuf hands back invalid UTF-8 as bytes; a name must be text to be looked up."""
    for n in names:
        if type(n) is not str:
            raise GraphError(f"{where} name {n!r} is not valid UTF-8")


# ---------------------------------------------------------------------------- geometry


def conv_geometry(
    op: str, attrs: Mapping[str, Any], x: Shape | None, w: Shape | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """(kernel, strides, pads, dilations) in ONNX rank, with `auto_pad` turned into pads."""
    kernel = tuple(attrs.get("kernel_shape", ()))
    if not kernel and op in CONV_OPS and w is not None and len(w) > 2:
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
        elif op in POOL_OPS and attrs.get("ceil_mode", 0):
            o = -(-(padded - extent) // strides[i]) + 1
            if (o - 1) * strides[i] >= x[2 + i] + pads[i]:
                o -= 1  # the last window must start inside the input or left padding
            out.append(o)
        else:
            out.append((padded - extent) // strides[i] + 1)
    return out


def conv_weight(op: str, ins: Sequence[Shape | None]) -> Shape | None:
    """The weight shape of a convolution (None for a pool or when unknown)."""
    index = CONV_WEIGHT_INDEX.get(op)
    return ins[index] if index is not None and len(ins) > index else None


# ---------------------------------------------------------------------------- sizes of big ops
# The ops below do work that no single input or output shape shows: the front end sizes it once
# here, for the shape fallback and for the FLOP count alike.


class RnnSizes(NamedTuple):
    """An LSTM/GRU/RNN layer: `seq` steps over `batch` sequences, in `dirs` directions."""

    seq: int
    batch: int
    input: int
    hidden: int
    dirs: int
    gates: int


def rnn_sizes(op: str, attrs: Mapping[str, Any], ins: Sequence[Shape | None]) -> RnnSizes | None:
    """Sizes of a recurrent layer from X [seq, batch, input] (or [batch, seq, input] when
    layout = 1), W [dirs, gates x hidden, input] and R [dirs, gates x hidden, hidden]."""
    gates = RNN_GATES[op]
    x = ins[0] if ins else None
    w = ins[1] if len(ins) > 1 else None
    r = ins[2] if len(ins) > 2 else None
    if x is None or len(x) != 3:
        return None
    seq, batch = (x[1], x[0]) if attrs.get("layout", 0) else (x[0], x[1])
    hidden = int(attrs.get("hidden_size", 0))
    if not hidden and r is not None and len(r) == 3:
        hidden = r[2]
    if not hidden and w is not None and len(w) == 3:
        hidden = w[1] // gates
    if w is not None and len(w) == 3:
        dirs = w[0]
    else:
        dirs = 2 if attrs.get("direction", "forward") == "bidirectional" else 1
    if hidden <= 0 or dirs <= 0:
        return None
    return RnnSizes(seq, batch, x[2], hidden, dirs, gates)


def _rnn_shapes(
    node: Node, attrs: Mapping[str, Any], ins: Sequence[Shape | None]
) -> list[Shape | None] | None:
    """Y, Y_h (and an LSTM's Y_c), as ONNX defines them for either layout."""
    sz = rnn_sizes(node.op, attrs, ins)
    if sz is None:
        return None
    if attrs.get("layout", 0):
        y, state = (sz.batch, sz.seq, sz.dirs, sz.hidden), (sz.batch, sz.dirs, sz.hidden)
    else:
        y, state = (sz.seq, sz.dirs, sz.batch, sz.hidden), (sz.dirs, sz.batch, sz.hidden)
    return [y, state, state]


def einsum_sizes(equation: str, ins: Sequence[Shape | None]) -> tuple[int, Shape] | None:
    """(FLOPs, output shape) of an Einsum, or None when the equation or a shape is unknown.

    One operand (a transpose, trace or reduction) moves data: one op per input element. Two
    or more are contracted pairwise from the left, each pair costing 2 x the product of the
    sizes of every index either side carries (exact for two operands, the usual case).
    """
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if not eq or len(terms) != len(ins) or any(s is None for s in ins):
        return None
    sizes: dict[str | int, int] = {}
    keyed: list[list[str | int]] = []
    ell_rank = 0
    for term, shape in zip(terms, ins, strict=True):
        assert shape is not None
        letters = term.replace("...", "")
        if not letters.isalpha() and letters:
            return None
        n_ell = len(shape) - len(letters) if "..." in term else 0
        if n_ell < 0 or ("..." not in term and len(letters) != len(shape)):
            return None
        ell_rank = max(ell_rank, n_ell)
        keys: list[str | int] = []
        before, _, after = term.partition("...")
        keys.extend(before)
        keys.extend(-(n_ell - i) for i in range(n_ell))  # ellipsis dims, aligned to the right
        keys.extend(after)
        for key, d in zip(keys, shape, strict=True):
            old = sizes.get(key, 1)
            if d != old and 1 not in (d, old):
                return None
            sizes[key] = max(d, old) if 1 in (d, old) else d
        keyed.append(keys)
    ellipsis: list[str | int] = [-(ell_rank - i) for i in range(ell_rank)]
    if arrow:
        if not rhs.replace("...", "").isalpha() and rhs.replace("...", ""):
            return None
        before, dots, after = rhs.partition("...")
        out: list[str | int] = [*before, *(ellipsis if dots else []), *after]
    else:  # implicit output: the ellipsis, then the letters seen once, in alphabetical order
        seen = [k for keys in keyed for k in keys if isinstance(k, str)]
        out = [*ellipsis, *sorted(k for k in set(seen) if seen.count(k) == 1)]
    if any(k not in sizes for k in out):
        return None
    if len(keyed) == 1:
        return numel(ins[0] or ()), tuple(sizes[k] for k in out)
    macs = 0
    current = set(keyed[0])
    for i in range(1, len(keyed)):
        both = current | set(keyed[i])
        macs += numel(sizes[k] for k in both)
        later = set(out).union(*map(set, keyed[i + 1 :]))
        current = both & later
    return 2 * macs, tuple(sizes[k] for k in out)


class AttentionSizes(NamedTuple):
    """An attention op: `batch` x `q_len` queries over `kv_len` keys in `heads` heads, after an
    optional input projection of `proj_in` -> `proj_out` features (com.microsoft Attention)."""

    batch: int
    q_len: int
    kv_len: int
    qk_dim: int
    v_dim: int
    heads: int
    proj_in: int = 0
    proj_out: int = 0

    @property
    def flops(self) -> int:
        """Projection, Q K^T, softmax (about 5 ops a score) and scores x V."""
        b, s, n = self.batch, self.q_len, self.kv_len
        return (
            2 * b * s * self.proj_in * self.proj_out
            + 2 * b * s * n * (self.qk_dim + self.v_dim)
            + 5 * b * self.heads * s * n
        )


def attention_sizes(
    op: str, attrs: Mapping[str, Any], ins: Sequence[Shape | None]
) -> AttentionSizes | None:
    """Sizes of onnxruntime's Attention (input [B, S, D] and packed QKV weights [D, 3 x D'])
    and MultiHeadAttention (query [B, S, D] with key/value [B, L, D], [B, N, L, H] or packed
    [B, L, N, 2, H], or packed QKV in a query [B, S, N, 3, H])."""
    heads = max(int(attrs.get("num_heads", 1)), 1)
    q = ins[0] if ins else None
    k = ins[1] if len(ins) > 1 else None
    v = ins[2] if len(ins) > 2 else None
    if q is None:
        return None
    if op == "Attention":
        if len(q) != 3 or k is None or len(k) != 2:
            return None
        hidden = tuple(attrs.get("qkv_hidden_sizes", ())) or (k[1] // 3,) * 3
        if len(hidden) != 3:
            return None
        past = ins[4] if len(ins) > 4 else None
        kv_len = q[1] + (past[3] if past is not None and len(past) == 5 else 0)
        return AttentionSizes(q[0], q[1], kv_len, hidden[0], hidden[2], heads, q[2], k[1])
    if len(q) == 5:  # packed QKV
        return AttentionSizes(q[0], q[1], q[1], q[2] * q[4], q[2] * q[4], heads)
    if len(q) != 3 or k is None:
        return None
    if len(k) == 3:
        v_dim = v[2] if v is not None and len(v) == 3 else q[2]
        return AttentionSizes(q[0], q[1], k[1], q[2], v_dim, heads)
    if len(k) == 5:  # packed KV
        return AttentionSizes(q[0], q[1], k[1], q[2], k[2] * k[4], heads)
    if len(k) == 4:  # [B, N, L, H]
        v_dim = v[1] * v[3] if v is not None and len(v) == 4 else q[2]
        return AttentionSizes(q[0], q[1], k[2], q[2], v_dim, heads)
    return None


# ---------------------------------------------------------------------------- fallback


def _broadcast(shapes: Sequence[Shape | None]) -> Shape | None:
    if not shapes or any(s is None for s in shapes):
        return None
    first = shapes[0]
    if all(s == first for s in shapes):  # the usual case: nothing to broadcast
        return tuple(first)  # type: ignore[arg-type]
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


def _axes(node: Node, attrs: Mapping[str, Any], consts: Consts, index: int) -> Any:
    """Axes from the attribute (old opsets) or the constant input (new ones)."""
    if "axes" in attrs:
        return tuple(attrs["axes"])
    if len(node.inputs) > index and node.inputs[index]:
        return consts.ints(node.inputs[index])
    return ()


def _infer_node(
    node: Node,
    attrs: Mapping[str, Any],
    ins: Sequence[Shape | None],
    consts: Consts,
) -> list[Shape | None] | None:
    """Built-in shape rules for the common ops, for when ONNX inference left outputs unknown."""
    op = node.op
    x = ins[0] if ins else None
    if op in SAME_SHAPE_OPS:
        if op == "Dropout":
            return [x, x]  # output and mask
        return [x]  # extra outputs (BN running stats, LN mean) differ: leave them unknown
    if op in BROADCAST_OPS:
        return [_broadcast(ins)]
    if op == "ConstantOfShape" and node.inputs:
        return [consts.ints(node.inputs[0])]
    if x is None:
        return None
    rank = len(x)
    if op in CONV_OPS or op in POOL_OPS:
        w = conv_weight(op, ins)
        geometry = conv_geometry(op, attrs, x, w)
        if geometry is None or rank != len(geometry[0]) + 2:
            return None
        if op in CONV_OPS:
            if w is None:
                return None
            spatial = attrs.get("output_shape") if op == "ConvTranspose" else None
            c = w[1] * int(attrs.get("group", 1)) if op == "ConvTranspose" else w[0]
        else:
            spatial, c = None, x[1]
        spatial = list(spatial) if spatial else _spatial_out(op, attrs, x, geometry)
        out = (x[0], c, *spatial)
        return [out] * len(node.outputs)  # MaxPool's Indices match its output
    if op in GLOBAL_POOL_OPS:
        return [(*x[:2], *([1] * (rank - 2)))]
    if op in REDUCE_OPS:
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
    if op in ("Gemm", "FusedGemm") and len(ins) > 1 and ins[1] is not None:
        a, b = x, ins[1]
        m = a[1] if attrs.get("transA", 0) else a[0]
        n = b[0] if attrs.get("transB", 0) else b[1]
        return [(m, n)]
    if op in MATMUL_B_INDEX:
        b = ins[MATMUL_B_INDEX[op]] if len(ins) > MATMUL_B_INDEX[op] else None
        if b is None:
            return None
        if op == "FusedMatMul":
            x, b = _transposed(x, attrs.get("transA", 0)), _transposed(b, attrs.get("transB", 0))
        return [_matmul_shape(x, b)]
    if op in RNN_GATES:
        return _rnn_shapes(node, attrs, ins)
    if op == "Einsum":
        sized = einsum_sizes(str(attrs.get("equation", "")), ins)
        return None if sized is None else [sized[1]]
    if op in ("Attention", "MultiHeadAttention"):
        sized = attention_sizes(op, attrs, ins)
        return None if sized is None else [(sized.batch, sized.q_len, sized.v_dim)]
    if op in ("QLinearAdd", "QLinearMul") and len(ins) > 3:
        return [_broadcast([x, ins[3]])]
    if op == "QLinearConcat":  # y_scale, y_zero_point, then (x, scale, zero_point) per input
        return _concat_shape(ins[2::3], attrs)
    if op == "Flatten":
        axis = int(attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis  # -1 is the last axis, as in ONNX
        if not 0 <= axis <= rank:
            return None
        return [(numel(x[:axis]), numel(x[axis:]))]
    if op == "Reshape":
        target = consts.ints(node.inputs[1]) if len(node.inputs) > 1 else None
        if target is None and "shape" in attrs:  # opset < 5
            target = tuple(attrs["shape"])
        return None if target is None else [_reshape(x, target, attrs.get("allowzero", 0))]
    if op == "Concat":
        return _concat_shape(ins, attrs)
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
    if op == "Shape":  # opset 15: the dims from `start` to `end`, clamped as a Python slice is
        return [(len(range(rank)[attrs.get("start", 0) : attrs.get("end", rank)]),)]
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


def _concat_shape(
    ins: Sequence[Shape | None], attrs: Mapping[str, Any]
) -> list[Shape | None] | None:
    """Concat's output: every input of the same rank, summed along `axis`."""
    x = ins[0] if ins else None
    if x is None or any(s is None or len(s) != len(x) for s in ins):
        return None
    axis = attrs.get("axis", 1) % len(x)
    total = sum(s[axis] for s in ins)  # type: ignore[index]
    return [(*x[:axis], total, *x[axis + 1 :])]


def _transposed(s: Shape, flag: Any) -> Shape:
    """The last two dims swapped when `flag` is set (FusedMatMul's transA / transB)."""
    return (*s[:-2], s[-1], s[-2]) if flag and len(s) >= 2 else s


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
        known = numel(d for d in out if d != -1)
        if known == 0 or numel(x) % known:
            return None
        out[out.index(-1)] = numel(x) // known
    return tuple(out) if numel(out) == numel(x) else None


def _resize_shape(
    node: Node, attrs: Mapping[str, Any], x: Shape, consts: Consts
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
    node: Node, attrs: Mapping[str, Any], x: Shape, consts: Consts
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
    node: Node, attrs: Mapping[str, Any], x: Shape, consts: Consts
) -> list[Shape | None] | None:
    axis = attrs.get("axis", 0) % len(x)
    n = len(node.outputs)
    parts: Any = attrs.get("split")
    if parts is None and len(node.inputs) > 1 and node.inputs[1]:
        parts = consts.ints(node.inputs[1])
        if parts is None:
            return None  # sizes given by a tensor whose values are unknown: no guess
    if parts is None:
        if n == 0:
            return None
        size = -(-x[axis] // n)
        parts = [size] * (n - 1) + [x[axis] - size * (n - 1)]
    if len(parts) != n or sum(parts) != x[axis]:
        return None
    return [(*x[:axis], p, *x[axis + 1 :]) for p in parts]


def valid_shape(shape: Shape | None) -> Shape | None:
    """Drop shapes a broken model (or a rule fed nonsense) could produce: negative dims."""
    if shape is None:
        return None
    for d in shape:
        if not isinstance(d, int) or d < 0:
            return None
    return tuple(shape)


def fill_unknown_shapes(
    node: Node,
    attrs: Mapping[str, Any],
    ins: tuple[Shape | None, ...],
    consts: Consts,
    shapes: dict[str, Shape],
) -> None:
    """Built-in rules for outputs ONNX inference left unknown; nonsense input yields None."""
    try:
        guessed = _infer_node(node, attrs, ins, consts)
    except (ArithmeticError, ValueError, IndexError, TypeError, KeyError, StopIteration):
        return
    for o, s in zip(node.outputs, guessed or (), strict=False):
        s = valid_shape(s)
        if o and s is not None and o not in shapes:
            shapes[o] = s


# ---------------------------------------------------------------------------- layer records
# Shared by every front end (ONNX, ncnn .param): one way to count FLOPs, params and bytes.

_SPATIAL_KEYS = frozenset({"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
_ELEMENTWISE = (SAME_SHAPE_OPS | BROADCAST_OPS | {"Resize", "Upsample"}) - {
    "Identity", "Cast", "CastLike", "Dropout", "LRN",
}  # fmt: skip
# FLOPs per output element where one is far off. Approximate operation counts, not timings:
# a normalization computes statistics (mean 1, variance 3, normalize 2, scale and shift 2),
# a softmax takes the max, subtracts, exponentiates, sums and divides; inference BatchNorm is
# a scale and a shift; GELU evaluates erf or tanh with a few multiplies around it.
_PER_ELEMENT: Mapping[str, int] = {
    "BatchNormalization": 2, "InstanceNormalization": 8, "LayerNormalization": 8,
    "GroupNormalization": 8, "MeanVarianceNormalization": 8, "SkipLayerNormalization": 10,
    "SimplifiedLayerNormalization": 5, "SkipSimplifiedLayerNormalization": 7,
    "Softmax": 5, "LogSoftmax": 5, "QLinearSoftmax": 7, "BiasSoftmax": 6,
    "Gelu": 8, "FastGelu": 8, "Swish": 2, "BiasGelu": 9, "QuickGelu": 4, "Mish": 5, "Softplus": 3,
    "BiasAdd": 2, "QuantizeLinear": 3, "DequantizeLinear": 2, "DynamicQuantizeLinear": 5,
    "QLinearAdd": 5, "QLinearMul": 5, "QLinearSigmoid": 5, "QLinearLeakyRelu": 5,
}  # fmt: skip


def _as_2d(
    geometry: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """1-D conv/pool as 2-D with H = 1, so later stages see one layout."""
    kernel, strides, pads, dilations = geometry
    if len(kernel) != 1:
        return geometry
    return (1, *kernel), (1, *strides), (0, pads[0], 0, pads[1]), (1, *dilations)


_SIZED_OPS = (
    {"ConvTranspose", "Gemm", "FusedGemm", "Einsum", "Attention", "MultiHeadAttention"}
    | CONV_OPS | POOL_OPS | GLOBAL_POOL_OPS | REDUCE_OPS | set(MATMUL_B_INDEX) | set(RNN_GATES)
)  # fmt: skip
_VARIADIC = {"LRN", "Sum", "Max", "Min", "Mean"}
#: Ops `layer_flops` counts at one per output element by its last rule, and those it may count.
_ONE_PER_ELEMENT = frozenset(_ELEMENTWISE - _SIZED_OPS - set(_PER_ELEMENT) - _VARIADIC)
_COUNTED = frozenset(_SIZED_OPS | set(_PER_ELEMENT) | _VARIADIC | _ELEMENTWISE)


def layer_flops(
    op: str,
    ins: Sequence[Shape | None],
    outs: Sequence[Shape | None],
    attrs: Mapping[str, Any],
    kernel: Sequence[int],
    group: int,
) -> int:
    """2 x MACs for conv/matmul/recurrent/attention ops; window size x outputs for pools; one op
    per element for elementwise ops (more for softmax, normalizations, GELU: `_PER_ELEMENT`).

    Every op that computes something gets a nonzero count when its shapes are known: the cost
    model prices ops it has no measurements of from these counts.
    """
    if op in _ONE_PER_ELEMENT:  # the usual op: the last rule below, reached at once
        y = outs[0] if outs else None
        return numel(y) if y is not None else 0
    if op not in _COUNTED:  # a shape op, a constant: no rule below counts anything
        return 0
    x = ins[0] if ins else None
    y = outs[0] if outs else None
    if op == "ConvTranspose":  # every input pixel scatters a C_out/group x kernel window
        w = conv_weight(op, ins)
        if x is None or w is None or len(w) < 3:
            return 0
        return 2 * numel(x) * numel(w[1:])
    if op in CONV_OPS:  # Conv and its quantized / fused forms, any rank
        w = conv_weight(op, ins)
        if y is None:
            return 0
        if w is not None and len(w) > 2:
            return 2 * numel(y) * numel(w[1:])
        if x is not None and len(x) > 1 and kernel:
            return 2 * numel(y) * (x[1] // max(group, 1)) * numel(kernel)
        return 0
    if op in POOL_OPS:
        return numel(y) * numel(kernel) if y is not None else 0
    if op in GLOBAL_POOL_OPS or op in REDUCE_OPS:
        return numel(x) if x is not None else 0
    if op in ("Gemm", "FusedGemm"):
        if x is None or y is None or len(x) != 2:
            return 0
        k = x[0] if attrs.get("transA", 0) else x[1]
        return 2 * numel(y) * k
    if op in MATMUL_B_INDEX:
        if x is None or y is None or not x:
            return 0
        k = x[-2] if op == "FusedMatMul" and attrs.get("transA", 0) and len(x) > 1 else x[-1]
        return 2 * numel(y) * k
    if op in RNN_GATES:  # per step and sequence: the gate matmuls over [x, h], bias, nonlinearity
        rnn = rnn_sizes(op, attrs, ins)
        if rnn is None:
            return 0
        per_step = rnn.gates * rnn.hidden * (2 * (rnn.input + rnn.hidden) + 3)
        return rnn.seq * rnn.batch * rnn.dirs * per_step
    if op == "Einsum":
        sized = einsum_sizes(str(attrs.get("equation", "")), ins)
        return sized[0] if sized is not None else 0
    if op in ("Attention", "MultiHeadAttention"):
        att = attention_sizes(op, attrs, ins)
        return att.flops if att is not None else 0
    if y is None:
        return 0
    if op in _PER_ELEMENT:
        return _PER_ELEMENT[op] * numel(y)
    if op == "LRN":
        return numel(y) * int(attrs.get("size", 1))
    if op in ("Sum", "Max", "Min", "Mean") and len(ins) > 2:
        return numel(y) * (len(ins) - 1)
    if op in _ELEMENTWISE:
        return numel(y)
    return 0


def build_layer(
    op: str,
    name: str,
    inputs: Sequence[str],
    outputs: Sequence[str],
    attrs: dict[str, Any],
    ins: tuple[Shape | None, ...],
    outs: tuple[Shape | None, ...],
    consts: set[str] | frozenset[str],
) -> Layer:
    """A `Layer` from an ONNX-style op: its ONNX attributes (`kernel_shape`, `strides`, `pads`,
    `dilations`, `group` become the spatial fields), input and output shapes, and which inputs
    are weights (`consts`). Every front end builds its records here, so FLOPs, params and bytes
    are counted one way."""
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    group = 1
    x = ins[0] if ins else None
    if op in CONV_OPS or op in POOL_OPS:
        w = conv_weight(op, ins)
        geometry = conv_geometry(op, attrs, x, w)
        if geometry is not None:
            kernel, strides, pads, dilations = _as_2d(geometry)
        if op in CONV_OPS:
            group = int(attrs.get("group", 1))
        attrs = {k: v for k, v in attrs.items() if k not in _SPATIAL_KEYS}
    elif op in GLOBAL_POOL_OPS and x is not None and len(x) > 2:
        r = len(x) - 2
        kernel, strides, pads, dilations = _as_2d((x[2:], (1,) * r, (0,) * (2 * r), (1,) * r))
    params = 0
    moved = 0
    for i, s in zip(inputs, ins, strict=True):
        if s is None:
            continue
        n = 1
        for d in s:
            n *= d
        if i in consts:
            params += n
        else:
            moved += n
    for s in outs:
        if s is not None:
            n = 1
            for d in s:
                n *= d
            moved += n
    # positional, in `Layer`'s field order: this runs once per node of every graph
    return Layer(
        name,
        op,
        tuple(inputs),
        tuple(outputs),
        ins,
        outs,
        kernel,
        strides,
        pads,
        dilations,
        group,
        layer_flops(op, ins, outs, attrs, kernel, group),
        params,
        4 * (moved + params),
        tuple(sorted(attrs.items())) if attrs else (),
    )


def check_shape_arg(name: str, shape: Sequence[int], max_dim: int | None = None) -> Shape:
    """A caller's shape for input `name` (`input_shapes`, `--input-shape`, HTTP `input_shape`)
    as a tuple of positive ints, or a clear error naming the input."""
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError as exc:
        raise LetiError(
            f"input_shapes[{name!r}] must be a sequence of ints, got {shape!r}"
        ) from exc
    if any(d < 1 for d in dims):
        raise LetiError(f"input_shapes[{name!r}] has a dim < 1: {dims}")
    if max_dim is not None and any(d > max_dim for d in dims):
        raise LetiError(f"input_shapes[{name!r}] has a dim out of range: {dims}")
    return dims
