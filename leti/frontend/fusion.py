"""Group ONNX layers into the kernels a mobile GPU runtime actually launches.

Latency is a property of launched kernels, not of ONNX nodes: the TFLite GPU delegate folds
BatchNorm into the conv and *links* activations and residual adds into the kernel that produces
their input (`convolution_2d_5_linked_:_add_6_linked_:_relu_7` in the public data). The rules are
data (`data/fusion.json`, one table per runtime); this module only applies them.

Two passes:
1. `_canonical_ops` collapses exporter idioms into the op the runtime sees (PyTorch exports
   hard-swish as Add/Clip/Mul/Div and swish as Mul(x, Sigmoid(x)); converters fuse them back).
   Nodes computed only from constants are folded away here too.
2. `plan` walks the ops in order and applies fold / link / kernel / analytic / free / overhead
   roles.

Every op that computes something gets a price. Ops of a measured family (a 2-D conv, an FC
layer, a pool...) become kernels priced with that family's learned efficiency; ops with no
measurements (ConvTranspose, 3-D conv, a MatMul of two activations, LSTM, Einsum, quantized
convs...) become kernels of the nearest measured kind marked `priced="analytic"`, carrying
their whole work in `work_flops` / `work_bytes` where the kind's geometry cannot express it;
memory-bound standalone ops are overhead; only ops that move no data are free. `unsupported` is
left for what cannot be sized: unknown ops, data-dependent ones, and ops whose shapes are unknown.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib import resources

from leti.core.records import CONV_KINDS, Graph, Kernel, KernelPlan, Layer, Shape
from leti.core.socs import default_runtime
from leti.frontend.shapes import NEVER_FOLDED, RNN_GATES, attention_sizes, numel, rnn_sizes

# Quantized op types. A mobile GPU runtime (TFLite GPU delegate, ncnn Vulkan) runs a quantized
# graph in float: these keep their ONNX name in `Kernel.op_type` / `Layer.op_type` so that an
# answer can say its price is that of the float graph.
QUANTIZED_OPS = frozenset(
    {
        "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul", "QLinearAveragePool", "QLinearGlobalAveragePool",
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearAdd",
        "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearConcat",
    }
)  # fmt: skip
_POOL_KINDS = ("pool_max", "pool_avg", "pool_global")


@dataclass(frozen=True)
class FusionRules:
    runtime: str
    kernel: dict[str, str]  # op type -> measured kind
    analytic: dict[str, str]  # op type without measurements -> the measured kind it borrows
    fold: frozenset[str]
    link: dict[str, str]
    link_into: frozenset[str]
    overhead: frozenset[str]
    free: frozenset[str]
    link_unary_shared: bool


@cache
def rules(runtime: str) -> FusionRules:
    """The fusion rules of `runtime`. A runtime of the user's own (`leti calibrate --runtime
    armnn-opencl`, validated by the registry before it gets here) has none: it is planned with
    the default runtime's rules, and its calibration absorbs the difference."""
    raw = json.loads(resources.files("leti").joinpath("data/fusion.json").read_text("utf-8"))
    name = raw["aliases"].get(runtime, runtime)
    if name not in raw["runtimes"]:
        name = raw["aliases"].get(default_runtime(), default_runtime())
    table = raw["runtimes"][name]
    common = raw["common"]
    return FusionRules(
        runtime=runtime,
        kernel=dict(table["kernel"]),
        analytic={**common.get("analytic", {}), **table.get("analytic", {})},
        fold=frozenset(table["fold"]),
        link=dict(table["link"]),
        link_into=frozenset(table["link_into"]),
        overhead=frozenset(table["overhead"]) | frozenset(common.get("overhead", ())),
        free=frozenset(common["free"]),
        link_unary_shared=bool(table.get("link_unary_shared", False)),
    )


class _Op:
    """A canonical op: one runtime-visible operation covering one or more ONNX layers."""

    __slots__ = ("op_type", "main", "layers", "inputs", "output")

    def __init__(
        self, op_type: str, main: Layer, layers: list[Layer], inputs: list[str], output: str
    ) -> None:
        self.op_type = op_type
        self.main = main
        self.layers = layers
        self.inputs = inputs  # runtime (non-constant) inputs
        self.output = output


class _Building:
    """A kernel under construction: mutable while later layers are folded or linked into it."""

    __slots__ = ("kind", "op", "layers", "fused", "depth", "order", "priced")

    def __init__(
        self,
        kind: str,
        op: _Op,
        layers: list[str],
        fused: list[str],
        depth: int = 0,
        order: int = 0,
        priced: str = "measured",
    ) -> None:
        self.kind = kind
        self.op = op
        self.layers = layers
        self.fused = fused
        self.depth = depth
        self.order = order
        self.priced = priced


_FOLDED_AT_CONVERSION = frozenset({"Constant", "Shape", "ConstantOfShape", "Size"})


def _index(graph: Graph) -> tuple[dict[str, int], dict[str, list[Layer]], set[str]]:
    """The tensors computed from constants only, and for every other tensor its reader count
    (absent: none) and its readers (the patterns below only ever ask about activations)."""
    const = set(graph.initializers)
    for layer in graph.layers:
        if layer.op_type in _FOLDED_AT_CONVERSION:
            const.update(layer.outputs)
            continue
        if layer.op_type in NEVER_FOLDED:
            continue
        for t in layer.inputs:
            if t and t not in const:
                break
        else:  # no runtime input
            const.update(layer.outputs)
    consumers: dict[str, int] = {}
    users: dict[str, list[Layer]] = {}
    get = consumers.get
    for layer in graph.layers:
        for t in layer.inputs:
            if t and t not in const:
                consumers[t] = get(t, 0) + 1
                readers = users.get(t)
                if readers is None:
                    users[t] = [layer]
                else:
                    readers.append(layer)
    for out in graph.outputs:
        consumers[out] = get(out, 0) + 1
    return consumers, users, const


def _canonical_ops(graph: Graph) -> list[_Op]:
    consumers, users, const = _index(graph)
    absorbed: set[str] = set()
    ops: list[_Op] = []

    def sole_consumer(tensor: str) -> Layer | None:
        readers = users.get(tensor, [])
        return readers[0] if consumers.get(tensor, 0) == 1 and readers else None

    def runtime_inputs(layer: Layer) -> list[str]:
        return [t for t in layer.inputs if t and t not in const]

    def hard_sigmoid_from(add: Layer) -> tuple[list[Layer], str, str] | None:
        """Add(x, c) -> Clip -> Div(., c) | Mul(., c): returns (layers, x, output)."""
        rin = runtime_inputs(add)
        if add.op_type != "Add" or len(rin) != 1:
            return None
        clip = sole_consumer(add.outputs[0])
        if clip is None or clip.op_type != "Clip":
            return None
        scale = sole_consumer(clip.outputs[0])
        if scale is None or scale.op_type not in ("Div", "Mul") or len(runtime_inputs(scale)) != 1:
            return None
        return [add, clip, scale], rin[0], scale.outputs[0]

    def hard_swish_from(add: Layer) -> tuple[list[Layer], str, str] | None:
        """Add(x, 3) -> Clip -> Mul(x, .) -> Div(., 6): PyTorch's hardswish export."""
        rin = runtime_inputs(add)
        if add.op_type != "Add" or len(rin) != 1:
            return None
        x = rin[0]
        clip = sole_consumer(add.outputs[0])
        if clip is None or clip.op_type != "Clip":
            return None
        mul = sole_consumer(clip.outputs[0])
        if mul is None or mul.op_type != "Mul" or x not in mul.inputs:
            return None
        div = sole_consumer(mul.outputs[0])
        if div is None or div.op_type not in ("Div", "Mul") or len(runtime_inputs(div)) != 1:
            return None
        return [add, clip, mul, div], x, div.outputs[0]

    for layer in graph.layers:
        if absorbed and layer.name in absorbed:
            continue
        if layer.op_type in _FOLDED_AT_CONVERSION:
            continue  # folded at conversion time: never launched
        rin = [t for t in layer.inputs if t and t not in const]
        if not rin and layer.op_type not in NEVER_FOLDED:
            continue  # computed from constants only: folded at conversion time too
        if layer.op_type == "Add":
            hs = hard_swish_from(layer)
            if hs is not None:
                covered, x, out = hs
                absorbed.update(c.name for c in covered)
                ops.append(_Op("HardSwish", covered[0], covered, [x], out))
                continue
            hsig = hard_sigmoid_from(layer)
            if hsig is not None:
                covered, x, out = hsig
                # x * hsigmoid(x) is a hard swish too
                mul = sole_consumer(out)
                if (
                    mul is not None
                    and mul.op_type == "Mul"
                    and x in mul.inputs
                    and out in mul.inputs
                ):
                    covered = [*covered, mul]
                    absorbed.update(c.name for c in covered)
                    ops.append(_Op("HardSwish", covered[0], covered, [x], mul.outputs[0]))
                else:
                    absorbed.update(c.name for c in covered)
                    ops.append(_Op("HardSigmoid", covered[0], covered, [x], out))
                continue
        if layer.op_type == "Sigmoid" and len(rin) == 1:
            mul = sole_consumer(layer.outputs[0])
            if mul is not None and mul.op_type == "Mul" and rin[0] in mul.inputs:
                covered = [layer, mul]
                absorbed.update(c.name for c in covered)
                ops.append(_Op("Swish", layer, covered, rin, mul.outputs[0]))
                continue
        ops.append(
            _Op(layer.op_type, layer, [layer], rin, layer.outputs[0] if layer.outputs else "")
        )
    return ops


def _dims(shape) -> tuple[int, int, int]:
    """(C, H, W) of an NCHW (or NC / NCW) activation; 1 for missing dims."""
    if not shape:
        return 0, 1, 1
    n = len(shape)
    if n >= 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    if n == 3:
        return int(shape[1]), int(shape[2]), 1
    return int(shape[1] if n > 1 else shape[0]), 1, 1


def _spatial(shape: Shape | None) -> tuple[int, int, int, int]:
    """(C, H, W, D) of a conv or pool activation: NCHW, NCL as in `_dims`, or NCDHW as D frames
    of H x W (the kernel record describes one frame; the frames multiply its batch)."""
    if shape:
        n = len(shape)
        if n == 4:  # NCHW: most kernels
            return int(shape[1]), int(shape[2]), int(shape[3]), 1
        if n == 5:
            return int(shape[1]), int(shape[3]), int(shape[4]), int(shape[2])
    return (*_dims(shape), 1)


def _is_global_reduce(layer: Layer) -> bool:
    """A ReduceMean over exactly the two spatial axes of an NCHW tensor: a global average pool.
    A reduction over the features of a token sequence (LayerNorm's mean) is an ordinary one."""
    x = layer.input_shapes[0] if layer.input_shapes else None
    y = layer.output_shapes[0] if layer.output_shapes else None
    if x is None or y is None or len(x) != 4:
        return False
    return tuple(y[:2]) == tuple(x[:2]) and len(y) in (2, 4) and all(d == 1 for d in y[2:])


def _kind_for(op: _Op, base: str) -> str:
    """The kind refined from the rule's base kind; "" when this op is not such a kernel after
    all (a ReduceMean that is no global pool, an Einsum over one operand)."""
    layer = op.main
    if base == "conv":
        c_in, _, _ = _dims(layer.input_shapes[0] if layer.input_shapes else None)
        if layer.group <= 1:
            return "conv"
        return "dwconv" if layer.group == c_in else "gconv"
    if base in ("pool_avg", "pool_global"):
        if layer.op_type in ("GlobalAveragePool", "QLinearGlobalAveragePool"):
            return "pool_global"
        if layer.op_type == "ReduceMean" and not _is_global_reduce(layer):
            return ""
        _, h_out, w_out, _ = _spatial(layer.output_shapes[0] if layer.output_shapes else None)
        return (
            "pool_global"
            if (h_out, w_out) == (1, 1)
            else ("pool_avg" if base == "pool_avg" else "")
        )
    if layer.op_type == "Einsum" and len(layer.inputs) < 2:
        return ""  # a transpose or reduction of one tensor: memory-bound, overhead
    return base


def _priced(op: _Op, kind: str, borrowed: bool) -> str:
    """'measured' when the op has the geometry its kind was measured in, else 'analytic'.

    The measurements are of NCHW convs and pools and of FC layers (an activation times a weight).
    A 1-D or 3-D conv or pool, a MatMul of two activations (attention's Q K^T), a MatMul with the
    weight first or a weight vector, or a Gemm with transA share a kind's efficiency but not its
    geometry.
    """
    if borrowed:
        return "analytic"
    layer = op.main
    x = layer.input_shapes[0] if layer.input_shapes else None
    if kind in CONV_KINDS or kind in _POOL_KINDS:
        return "analytic" if x is not None and len(x) != 4 else "measured"
    if kind == "fc":
        a_runtime = bool(layer.inputs) and layer.inputs[0] in op.inputs
        b = layer.input_shapes[1] if len(layer.input_shapes) > 1 else None
        b_const = len(layer.inputs) > 1 and layer.inputs[1] not in op.inputs
        b_const = b_const and (b is None or len(b) == 2)  # a weight matrix, not a vector
        transposed = layer.attr("transA", 0) if layer.op_type in ("Gemm", "FusedGemm") else 0
        if layer.op_type == "FusedMatMul":
            transposed = layer.attr("transA", 0) or layer.attr("transB", 0)
        return "measured" if a_runtime and b_const and not transposed else "analytic"
    return "measured"


def _fc_geometry(layer: Layer, priced: str) -> tuple[int, int, int]:
    """(c_in, c_out, rows) of an fc-kind kernel: each row is a c_in vector times a c_in x c_out
    matrix.

    A recurrent layer is seq x batch rows of [x, h] (input + hidden wide) times the gates'
    weights (gates x hidden x directions wide); an attention op is one row per query of its
    input width; any other analytic product has the contraction size its FLOPs imply.
    """
    x = layer.input_shapes[0] if layer.input_shapes else None
    y = layer.output_shapes[0] if layer.output_shapes else None
    attrs = dict(layer.attrs)
    if layer.op_type in RNN_GATES:
        rnn = rnn_sizes(layer.op_type, attrs, layer.input_shapes)
        if rnn is not None:
            c_out = rnn.gates * rnn.hidden * rnn.dirs
            return rnn.input + rnn.hidden, c_out, rnn.seq * rnn.batch
    c_out = int(y[-1]) if y else 0
    rows = _rows(y)
    if layer.op_type in ("Attention", "MultiHeadAttention"):
        att = attention_sizes(layer.op_type, attrs, layer.input_shapes)
        if att is not None:
            return att.proj_in or att.qk_dim, c_out, att.batch * att.q_len
    if priced == "measured" or not y:
        return (int(x[-1]) if x else 0), c_out, rows
    return max(layer.flops // (2 * max(numel(y), 1)), 1), c_out, rows


def _extra_bytes(layer: Layer) -> int:
    """Traffic beyond each tensor read or written once (`Layer.bytes_moved`), x 4 bytes: an RNN
    reads its recurrent weights again at every step, attention writes and reads its scores."""
    attrs = dict(layer.attrs)
    if layer.op_type in RNN_GATES:
        rnn = rnn_sizes(layer.op_type, attrs, layer.input_shapes)
        if rnn is not None:
            return 4 * (rnn.seq - 1) * rnn.dirs * rnn.gates * rnn.hidden * rnn.hidden
    if layer.op_type in ("Attention", "MultiHeadAttention"):
        att = attention_sizes(layer.op_type, attrs, layer.input_shapes)
        if att is not None:
            return 4 * 2 * att.batch * att.heads * att.q_len * att.kv_len
    return 0


def _window(layer: Layer, rank: int) -> tuple[int, int, int]:
    """(kernel, stride, pad) along the axis a kernel record calls H: H of a 2-D or 3-D op, the
    length of a 1-D one (which the front end normalised to a 1 x L window)."""
    ks, st, pd = layer.kernel_shape, layer.strides, layer.pads
    r = len(ks)
    axis = (r - 1 if rank == 3 else r - 2) if r >= 2 else 0
    kernel = ks[axis] if ks else 1
    stride = st[axis] if len(st) > axis else 1
    pad = pd[axis] + pd[r + axis] if r >= 2 and len(pd) == 2 * r else 0
    return int(kernel), int(stride), int(pad)


def _make_kernel(b: _Building) -> Kernel:
    layer = b.op.main
    in_shape = layer.input_shapes[0] if layer.input_shapes else None
    out_shape = layer.output_shapes[0] if layer.output_shapes else None
    c_in, h_in, w_in, _ = _spatial(in_shape)
    c_out, h_out, w_out, frames = _spatial(out_shape)
    batch = int(out_shape[0]) * frames if out_shape and len(out_shape) > 1 else 1
    if b.kind == "fc":
        c_in, c_out, batch = _fc_geometry(layer, b.priced)
        h_in = w_in = h_out = w_out = 1
    if b.kind == "concat":  # the public data reports the first input's channels
        c_in = _dims(layer.input_shapes[0] if layer.input_shapes else None)[0]
    kernel, stride, pad = _window(layer, len(in_shape) if in_shape else 4)
    if b.kind == "pool_global":
        kernel = h_in
    work_flops = work_bytes = 0
    if b.priced == "analytic":
        work_flops = int(layer.flops)
        work_bytes = int(layer.bytes_moved) + _extra_bytes(layer)
    # positional, in `Kernel`'s field order (name, kind, op_type, layers, h_in, w_in, c_in,
    # h_out, w_out, c_out, kernel, stride, groups, pad, flops, params, bytes_moved, n_inputs,
    # fused, batch, work_flops, work_bytes, priced): once per kernel of every graph
    return Kernel(
        layer.name,
        b.kind,
        b.op.op_type,
        tuple(b.layers),
        h_in,
        w_in,
        c_in,
        h_out,
        w_out,
        c_out,
        kernel,
        stride,
        int(layer.group or 1),
        pad,
        int(layer.flops),
        int(layer.params),
        int(layer.bytes_moved),
        len(b.op.inputs),
        tuple(b.fused),
        max(int(batch), 1),
        work_flops,
        work_bytes,
        b.priced,
    )


def _rows(shape: Shape | None) -> int:
    """Rows of a fully-connected output [..., N]: the product of every dim but the last."""
    rows = 1
    for d in list(shape or ())[:-1]:
        rows *= int(d)
    return rows


def _activation_tag(layer: Layer, r: FusionRules) -> list[str]:
    """onnxruntime's FusedConv / FusedGemm / FusedMatMul carry their activation as an attribute:
    the same tag the runtime would record had it linked that activation."""
    act = layer.attr("activation")
    if not isinstance(act, str) or not act:
        return []
    return [r.link.get(act, act.lower())]


def plan(graph: Graph, runtime: str) -> KernelPlan:
    """Split `graph` into the kernels `runtime` launches (see module docstring)."""
    r = rules(runtime)
    ops = _canonical_ops(graph)
    producer: dict[str, _Building] = {}
    depth: dict[str, int] = {}
    built: list[_Building] = []
    overhead: list[Layer] = []
    free: list[Layer] = []
    unsupported: list[Layer] = []

    # Consumers are counted between canonical ops: a hard-swish reads its input twice as ONNX
    # nodes but once as the op the runtime sees.
    consumers = Counter(t for op in ops for t in dict.fromkeys(op.inputs))
    consumers.update(graph.outputs)
    get_depth = depth.get
    for order, op in enumerate(ops):
        d = 0
        for t in op.inputs:
            e = get_depth(t, 0)
            if e > d:
                d = e
        d += 1
        for layer in op.layers:
            for out in layer.outputs:
                depth[out] = d
        names = [layer.name for layer in op.layers]
        t = op.op_type

        if t in r.fold and len(op.inputs) == 1:
            target = producer.get(op.inputs[0])
            if target and target.kind in CONV_KINDS and consumers[op.inputs[0]] == 1:
                target.layers.extend(names)
                producer[op.output] = target
                continue
        if t in r.link:
            # A unary op links even when its input has other readers (the data shows
            # pre-activation BN+ReLU linked behind a residual add); a binary op only links
            # into a producer nobody else reads.
            unary = len(op.inputs) == 1 and r.link_unary_shared
            candidates = [
                producer[i]
                for i in op.inputs
                if i in producer
                and producer[i].kind in r.link_into
                and (consumers[i] == 1 or unary)
            ]
            if candidates:
                # Two linkable producers (a residual add of two convs): the delegate links into
                # the one scheduled last, which is the shallower shortcut branch.
                target = min(candidates, key=lambda b: (b.depth, -b.order))
                target.layers.extend(names)
                target.fused.append(r.link[t])
                producer[op.output] = target
                continue
        base = r.kernel.get(t) or r.analytic.get(t)
        if base:
            kind = _kind_for(op, base)
            if kind:
                priced = _priced(op, kind, t not in r.kernel)
                if priced == "analytic" and op.main.flops <= 0:
                    unsupported.extend(op.layers)  # no shapes, no work: cannot be priced
                    continue
                b = _Building(
                    kind=kind,
                    op=op,
                    layers=names,
                    fused=_activation_tag(op.main, r),
                    depth=d,
                    order=order,
                    priced=priced,
                )
                built.append(b)
                producer[op.output] = b
                continue
        if t in r.free:
            free.extend(op.layers)
        elif t in r.overhead:
            overhead.extend(op.layers)
        else:
            unsupported.extend(op.layers)

    return KernelPlan(
        graph=graph.name,
        runtime=runtime,
        kernels=tuple(_make_kernel(b) for b in built),
        overhead=tuple(overhead),
        free=tuple(free),
        unsupported=tuple(unsupported),
    )
