"""ncnn front end: a `.param` text in, the same `Graph` of `Layer`s as the ONNX front end out.

The text is untrusted input and is only ever read as text: a size limit first, then one line
per layer (`type name n_in n_out inputs... outputs... k=v...`), checked line by line, and a
`GraphError` naming the line for anything malformed, an unknown layer type or a blob nobody
produced. Nothing is executed and no file the text names is opened (`.param` holds no weights).

Every ncnn layer becomes the ONNX op(s) it computes, so that the fusion rules, the features and
the cost model see one vocabulary: `Convolution` -> `Conv` (weights as named initializers of
the shapes ncnn stores), a convolution with a fused activation (`9=`) -> onnxruntime's
`FusedConv` with that `activation` (likewise `FusedGemm` / `FusedMatMul`), `InnerProduct` ->
`Gemm` (or `MatMul` over rows), int8 layers (`8=`) -> `QLinearConv` / `QLinearMatMul`
(priced as float, with the estimator's note), `Split` (ncnn's copy of a blob to several
readers) -> nothing: its outputs are the input blob, as in ONNX. Shapes come from the `-23330`
hints where the file has them and every input has the size the file declares; otherwise they
are propagated from the input size. ncnn's detection heads (`PriorBox`, `DetectionOutput`,
`YoloDetectionOutput`, `Yolov3DetectionOutput`) have no ONNX op: they keep their ncnn name,
and a detection output's shape is the upper bound of boxes before NMS.

ncnn blob shapes are kept here without the batch, in ncnn's axis order (1-D (w,), 2-D (h, w),
3-D (c, h, w), 4-D (c, d, h, w): the axis numbers in ncnn's params index this tuple); a
layer's record gets them with a leading batch of 1, as the ONNX front end would.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from leti.core import settings
from leti.core.errors import GraphError, LetiError, TooManyLayersError
from leti.core.records import Graph, Layer, Shape
from leti.frontend.shapes import build_layer, check_shape_arg, numel

MAGIC = b"7767517"
_MAX_BLOBS_PER_LAYER = 4096
_MAX_NAME = 1024
_MAX_DIM = 1 << 24

# ncnn's activation_type (key 9 of Convolution, InnerProduct, Deconvolution, ...)
_ACTIVATIONS = {1: "Relu", 2: "LeakyRelu", 3: "Clip", 4: "Sigmoid", 5: "Mish", 6: "HardSwish"}
_BINARY = {
    0: "Add", 1: "Sub", 2: "Mul", 3: "Div", 4: "Max", 5: "Min", 6: "Pow", 7: "Sub", 8: "Div",
    9: "Pow", 10: "Atan", 11: "Atan",
}  # fmt: skip
_UNARY = {
    0: "Abs", 1: "Neg", 2: "Floor", 3: "Ceil", 4: "Mul", 5: "Sqrt", 6: "Sqrt", 7: "Exp",
    8: "Log", 9: "Sin", 10: "Cos", 11: "Tan", 12: "Asin", 13: "Acos", 14: "Atan",
    15: "Reciprocal", 16: "Tanh", 17: "Log", 18: "Round", 19: "Floor",
}  # fmt: skip
_REDUCE = {
    0: "ReduceSum", 1: "ReduceL1", 2: "ReduceSumSquare", 3: "ReduceMean", 4: "ReduceMax",
    5: "ReduceMin", 6: "ReduceProd", 7: "ReduceL1", 8: "ReduceL2", 9: "ReduceLogSum",
    10: "ReduceLogSumExp",
}  # fmt: skip
_SIMPLE = {  # one input, same shape out, no weights: ncnn type -> ONNX op
    "Sigmoid": "Sigmoid", "TanH": "Tanh", "Mish": "Mish", "Swish": "Swish", "GELU": "Gelu",
    "AbsVal": "Abs", "Exp": "Exp", "Log": "Log", "Softplus": "Softplus", "SELU": "Selu",
    "Erf": "Erf", "Dequantize": "DequantizeLinear", "Quantize": "QuantizeLinear",
    "Requantize": "QuantizeLinear", "Dropout": "Dropout", "Threshold": "ThresholdedRelu",
}  # fmt: skip
# Layers ncnn runs that no ONNX op describes: kept under their own name (the runtime's rules
# price them as standalone ops).
DETECTION_TYPES = frozenset(
    {"PriorBox", "DetectionOutput", "YoloDetectionOutput", "Yolov3DetectionOutput"}
)


def is_param(data: bytes) -> bool:
    """Whether `data` is an ncnn `.param` text (it starts with the magic number 7767517)."""
    head = bytes(data[:64]).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(MAGIC) and head[len(MAGIC) : len(MAGIC) + 1] in (b"", b"\n", b"\r")


# ---------------------------------------------------------------------------- the text


@dataclass
class _Line:
    number: int
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any]
    hints: list[Shape] | None = None


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text  # a string param (newer ncnn's *_expr): kept, never evaluated
    return value if math.isfinite(value) else text


def _read_line(number: int, text: str, where: str) -> _Line:
    tokens = text.split()

    def bad(why: str) -> GraphError:
        return GraphError(f"{where}: line {number}: {why}: {text.strip()[:200]!r}")

    if len(tokens) < 4:
        raise bad("a layer line needs 'type name n_inputs n_outputs ...'")
    kind, name = tokens[0], tokens[1]
    try:
        n_in, n_out = int(tokens[2]), int(tokens[3])
    except ValueError:
        raise bad("the input and output counts must be integers") from None
    if not (0 <= n_in <= _MAX_BLOBS_PER_LAYER and 0 <= n_out <= _MAX_BLOBS_PER_LAYER):
        raise bad("input or output count out of range")
    if len(tokens) < 4 + n_in + n_out:
        raise bad(f"truncated: {n_in} input and {n_out} output blob names announced")
    blobs = tokens[4 : 4 + n_in + n_out]
    if any("=" in b for b in blobs):
        raise bad("fewer blob names than the counts announce")
    if any(len(t) > _MAX_NAME for t in (kind, name, *blobs)):
        raise bad(f"a name longer than {_MAX_NAME} characters")
    params: dict[int, Any] = {}
    for token in tokens[4 + n_in + n_out :]:
        key, eq, value = token.partition("=")
        try:
            k = int(key)
        except ValueError:
            raise bad(f"parameter {token[:40]!r} is not 'id=value'") from None
        if not eq or not value:
            raise bad(f"parameter {token[:40]!r} has no value")
        if k <= -23300:  # an array: -23300-id=n,v1,...,vn
            parts = value.split(",")
            try:
                count = int(parts[0])
            except ValueError:
                raise bad(f"array parameter {key} does not start with its length") from None
            if count != len(parts) - 1:
                raise bad(f"array parameter {key} announces {count} values, has {len(parts) - 1}")
            params[-23300 - k] = tuple(_number(p) for p in parts[1:])
        else:
            params[k] = _number(value)
    line = _Line(number, kind, name, blobs[:n_in], blobs[n_in:], params)
    hints = params.pop(30, None)  # -23330: shape hints, dims,w,h,c per output blob
    if isinstance(hints, tuple):
        line.hints = _hint_shapes(hints, n_out)
    return line


def _hint_shapes(values: tuple[Any, ...], n_out: int) -> list[Shape] | None:
    if len(values) != 4 * n_out or not all(isinstance(v, int) for v in values):
        return None
    out: list[Shape] = []
    for i in range(n_out):
        dims, w, h, c = values[4 * i : 4 * i + 4]
        shape = {1: (w,), 2: (h, w), 3: (c, h, w)}.get(dims)
        if shape is None or any(d < 1 for d in shape):
            return None
        out.append(shape)
    return out


def _read_text(data: bytes, where: str) -> list[_Line]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GraphError(
            f"{where}: an ncnn .param is text, but byte {exc.start} is not UTF-8"
        ) from exc
    rows = [(i + 1, t) for i, t in enumerate(text.lstrip("\ufeff").splitlines())]
    rows = [(i, t) for i, t in rows if t.strip()]
    if not rows or rows[0][1].strip() != MAGIC.decode():
        raise GraphError(f"{where}: line 1: not an ncnn .param (it must start with 7767517)")
    if len(rows) < 2:
        raise GraphError(f"{where}: line 2: missing 'layer_count blob_count'")
    number, counts = rows[1]
    parts = counts.split()
    try:
        layer_count, _blob_count = (int(p) for p in parts)  # ncnn sizes its blob table by it
    except ValueError:
        raise GraphError(
            f"{where}: line {number}: expected 'layer_count blob_count', got {counts[:80]!r}"
        ) from None
    if layer_count < 0 or len(rows) - 2 < layer_count:
        raise GraphError(
            f"{where}: line {number}: the header announces {layer_count} layers, the file has "
            f"{len(rows) - 2} (truncated?)"
        )
    # ncnn reads exactly layer_count lines and ignores what follows (the benchmark's
    # nanodet_m.param has a trailing Noop it never runs): so does this reader
    lines = [_read_line(i, t, where) for i, t in rows[2 : 2 + layer_count]]
    return lines


# ---------------------------------------------------------------------------- conversion


@dataclass
class _Out:
    """One ONNX-style layer to build: op, inputs (blob or weight names), outputs and attrs."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    in_shapes: list[Shape | None] | None = None  # None: the blobs' own shapes
    out_shapes: list[Shape] | None = None  # the blob shapes (batch-less) the outputs get
    record_out: list[Shape] | None = None  # the record's output shapes when they differ


class _Context:
    def __init__(self, where: str) -> None:
        self.where = where
        self.shapes: dict[str, Shape] = {}  # blob -> batch-less ncnn shape
        self.weights: dict[str, Shape] = {}  # weight name -> ONNX shape
        self.alias: dict[str, str] = {}

    def weight(self, name: str, shape: Shape) -> str:
        self.weights[name] = shape
        return name


def _int(params: Mapping[int, Any], key: int, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"parameter {key} must be an integer, got {value!r}")
    return value


def _float(params: Mapping[int, Any], key: int, default: float) -> float:
    value = params.get(key, default)
    if not isinstance(value, int | float):
        raise ValueError(f"parameter {key} must be a number, got {value!r}")
    return float(value)


def _chw(shape: Shape) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 1:
        return shape[0], 1, 1
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    raise ValueError(f"expected a 1-D to 3-D blob, got {len(shape)}-D {shape}")


_FUSED = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}


def _activation(line: _Line, ctx: _Context, layer: _Out, out_shape: Shape) -> list[_Out]:
    """A fused activation (`9=`) stays on its layer, as onnxruntime's FusedConv / FusedGemm /
    FusedMatMul carry theirs (`activation`, `activation_params`): the fusion step tags the
    kernel with it, and a standalone activation layer stays what ncnn runs, a layer of its own."""
    act = _int(line.params, 9, 0)
    if act == 0:
        return [layer]
    op = _ACTIVATIONS.get(act)
    if op is None:
        raise ValueError(f"unknown activation_type 9={act}")
    values = line.params.get(10, ())
    values = values if isinstance(values, tuple) else (values,)
    layer.op = _FUSED.get(layer.op, layer.op)
    layer.attrs["activation"] = op
    if values:
        layer.attrs["activation_params"] = tuple(float(v) for v in values)
    return [layer]


def _same_pads(
    size: int, kernel: int, stride: int, dilation: int, lower: bool
) -> tuple[int, int, int]:
    extent = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    small, large = total // 2, total - total // 2
    return (large, small, out) if lower else (small, large, out)


def _window(
    p: Mapping[int, Any], kernel: int, stride: int, pad: int
) -> tuple[int, int, int, int, int, int, int, int]:
    """(kernel w, h, stride w, h, pad left, top, right, bottom) of a sliding window. ncnn
    gives each one's width at its id and the height at id + 10 (defaulting to the width);
    the top, right and bottom pads follow the left one at pad + 10, + 11, + 12."""
    kw = _int(p, kernel, 0)
    sw = _int(p, stride, 1)
    pl = _int(p, pad, 0)
    pt = _int(p, pad + 10, pl)
    return (
        kw,
        _int(p, kernel + 10, kw),
        sw,
        _int(p, stride + 10, sw),
        pl,
        pt,
        _int(p, pad + 11, pl),
        _int(p, pad + 12, pt),
    )


def _conv(line: _Line, ctx: _Context, x: Shape, depthwise: bool, transposed: bool) -> list[_Out]:
    p = line.params
    c, h, w = _chw(x)
    c_out = _int(p, 0, 0)
    kw, kh, sw, sh, pl, pt, pr, pb = _window(p, kernel=1, stride=3, pad=4)
    dw = _int(p, 2, 1)
    dh = _int(p, 12, dw)
    group = _int(p, 7, 1) if depthwise else 1
    if c_out < 1 or kw < 1 or kh < 1 or sw < 1 or sh < 1 or dw < 1 or dh < 1 or group < 1:
        raise ValueError("num_output, kernel, stride and dilation must be positive")
    if c % group or c_out % group:
        raise ValueError(f"group {group} does not divide {c} input and {c_out} output channels")
    if transposed:
        out_h = (h - 1) * sh + dh * (kh - 1) + 1
        out_w = (w - 1) * sw + dw * (kw - 1) + 1
        if pl in (-233, -234) or pt in (-233, -234):
            want_w, want_h = _int(p, 20, 0), _int(p, 21, _int(p, 20, 0))
            want_w, want_h = want_w or w * sw, want_h or h * sh
            pads = (0, 0, out_h - want_h, out_w - want_w)
            out_h, out_w = want_h, want_w
        else:
            opr = _int(p, 18, 0)
            opb = _int(p, 19, opr)
            out_h += opb - pt - pb
            out_w += opr - pl - pr
            pads = (pt, pl, pb, pr)
        weight: Shape = (c, c_out // group, kh, kw)
        op = "ConvTranspose"
    else:
        if pl in (-233, -234):
            bh, eh, out_h = _same_pads(h, kh, sh, dh, pl == -234)
            bw, ew, out_w = _same_pads(w, kw, sw, dw, pl == -234)
            pads = (bh, bw, eh, ew)
        else:
            out_h = (h + pt + pb - (dh * (kh - 1) + 1)) // sh + 1
            out_w = (w + pl + pr - (dw * (kw - 1) + 1)) // sw + 1
            pads = (pt, pl, pb, pr)
        weight = (c_out, c // group, kh, kw)
        op = "Conv"
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the kernel does not fit the {h}x{w} input")
    int8 = _int(p, 8, 0) != 0 and not transposed
    name = line.name
    x_blob = line.inputs[0]
    w_name = ctx.weight(f"{name}.weight", weight)
    bias = [ctx.weight(f"{name}.bias", (c_out,))] if _int(p, 5, 0) else []
    if int8:  # QLinearConv: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zp, B
        op = "QLinearConv"
        inputs = [
            x_blob, ctx.weight(f"{name}.x_scale", ()), ctx.weight(f"{name}.x_zero_point", ()),
            w_name, ctx.weight(f"{name}.w_scale", (c_out,)),
            ctx.weight(f"{name}.w_zero_point", (c_out,)), ctx.weight(f"{name}.y_scale", ()),
            ctx.weight(f"{name}.y_zero_point", ()), *bias,
        ]  # fmt: skip
    else:
        inputs = [x_blob, w_name, *bias]
    attrs = {
        "kernel_shape": (kh, kw), "strides": (sh, sw), "pads": pads, "dilations": (dh, dw),
        "group": group,
    }  # fmt: skip
    out_shape = (c_out, out_h, out_w)
    in_shapes: list[Shape | None] = [(1, c, h, w)] + [None] * (len(inputs) - 1)
    conv = _Out(op, name, inputs, [line.outputs[0]], attrs, in_shapes, [out_shape])
    return _activation(line, ctx, conv, out_shape)


def _pooling(line: _Line, ctx: _Context, x: Shape) -> list[_Out]:
    p = line.params
    c, h, w = _chw(x)
    kind = _int(p, 0, 0)
    if kind not in (0, 1):
        raise ValueError(f"unknown pooling_type 0={kind}")
    if _int(p, 4, 0):
        op = "GlobalMaxPool" if kind == 0 else "GlobalAveragePool"
        return [
            _Out(
                op,
                line.name,
                [line.inputs[0]],
                [line.outputs[0]],
                {},
                [(1, c, h, w)],
                [(c,)],
                [(1, c, 1, 1)],
            )
        ]
    op = "MaxPool" if kind == 0 else "AveragePool"
    if _int(p, 7, 0):  # adaptive: the windows ncnn computes, averaged to one size
        ow = _int(p, 8, 0) or w
        oh = _int(p, 18, ow) or h
        kh_, kw_ = -(-h // oh), -(-w // ow)
        attrs = {"kernel_shape": (kh_, kw_), "strides": (max(h // oh, 1), max(w // ow, 1))}
        return [
            _Out(
                op,
                line.name,
                [line.inputs[0]],
                [line.outputs[0]],
                attrs,
                [(1, c, h, w)],
                [(c, oh, ow)],
            )
        ]
    kw, kh, sw, sh, pl, pt, pr, pb = _window(p, kernel=1, stride=2, pad=3)
    if kw < 1 or kh < 1 or sw < 1 or sh < 1:
        raise ValueError("kernel and stride must be positive")
    mode = _int(p, 5, 0)
    if mode in (2, 3):
        bh, eh, oh = _same_pads(h, kh, sh, 1, mode == 3)
        bw, ew, ow = _same_pads(w, kw, sw, 1, mode == 3)
        pads = (bh, bw, eh, ew)
    else:
        tail_h = tail_w = 0
        if mode == 0:  # full padding: ncnn pads the tail so that the last window fits (ceil)
            rh = (h + pt + pb - kh) % sh
            rw = (w + pl + pr - kw) % sw
            tail_h = sh - rh if rh else 0
            tail_w = sw - rw if rw else 0
        oh = (h + pt + pb + tail_h - kh) // sh + 1
        ow = (w + pl + pr + tail_w - kw) // sw + 1
        pads = (pt, pl, pb + tail_h, pr + tail_w)
    if oh < 1 or ow < 1:
        raise ValueError(f"the window does not fit the {h}x{w} input")
    attrs = {"kernel_shape": (kh, kw), "strides": (sh, sw), "pads": pads}
    return [
        _Out(
            op, line.name, [line.inputs[0]], [line.outputs[0]], attrs, [(1, c, h, w)], [(c, oh, ow)]
        )
    ]


def _fc(line: _Line, ctx: _Context, x: Shape) -> list[_Out]:
    """InnerProduct: a flattened input times a [N, K] weight (Gemm), or, on a 2-D blob whose
    rows are as wide as the weight, each row (MatMul over rows, as ncnn runs it)."""
    p = line.params
    n = _int(p, 0, 0)
    size = _int(p, 2, 0)
    if n < 1:
        raise ValueError("num_output must be positive")
    name = line.name
    bias = [ctx.weight(f"{name}.bias", (n,))] if _int(p, 1, 0) else []
    int8 = _int(p, 8, 0) != 0
    if len(x) == 2 and x[1] * n == size:
        rows, k = x
        shape_in: Shape = (1, rows, k)
        out: Shape = (rows, n)
    else:
        rows, k = 1, numel(x)
        shape_in = (1, k)
        out = (n,)
    if int8:
        inputs = [
            line.inputs[0], ctx.weight(f"{name}.a_scale", ()),
            ctx.weight(f"{name}.a_zero_point", ()), ctx.weight(f"{name}.weight", (k, n)),
            ctx.weight(f"{name}.b_scale", (n,)), ctx.weight(f"{name}.b_zero_point", (n,)),
            ctx.weight(f"{name}.y_scale", ()), ctx.weight(f"{name}.y_zero_point", ()),
        ]  # fmt: skip
        fc = _Out(
            "QLinearMatMul",
            name,
            inputs,
            [line.outputs[0]],
            {},
            [shape_in] + [None] * 7,
            [out],
            [(1, *out)],
        )
    elif len(shape_in) == 2:
        inputs = [line.inputs[0], ctx.weight(f"{name}.weight", (n, k)), *bias]
        fc = _Out(
            "Gemm",
            name,
            inputs,
            [line.outputs[0]],
            {"transB": 1},
            [shape_in] + [None] * (len(inputs) - 1),
            [out],
            [(1, n)],
        )
    else:
        inputs = [line.inputs[0], ctx.weight(f"{name}.weight", (k, n))]
        fc = _Out(
            "MatMul", name, inputs, [line.outputs[0]], {"bias": len(bias)}, [shape_in, None], [out]
        )
    return _activation(line, ctx, fc, out)


def _gemm(line: _Line, ctx: _Context, shapes: list[Shape]) -> list[_Out]:
    """ncnn's Gemm: y = A B (+ C), here with a runtime A and, when `5=1`, a constant B."""
    p = line.params
    a = shapes[0]
    if len(a) not in (2, 3):
        raise ValueError(f"A must be 2-D or 3-D, got {a}")
    trans_a = _int(p, 2, 0)
    m, k = (a[-1], a[-2]) if trans_a else (a[-2], a[-1])
    name = line.name
    if _int(p, 5, 0):
        n = _int(p, 8, 0)
        k_const = _int(p, 9, k)
        if n < 1 or k_const != k:
            raise ValueError(f"constant B is {k_const} x {n}, A has K = {k}")
        b_name = ctx.weight(f"{name}.B", (k, n))
        b_shape: Shape = (k, n)
    else:
        if len(shapes) < 2:
            raise ValueError("Gemm without a constant B needs two inputs")
        b = shapes[1]
        trans_b = _int(p, 3, 0)
        n = b[-2] if trans_b else b[-1]
        b_name, b_shape = line.inputs[1], (1, *b)
    out = (*a[:-2], m, n)
    inputs = [line.inputs[0], b_name]
    attrs = {"transA": trans_a, "bias": _int(p, 6, 0)}
    return [_Out("MatMul", name, inputs, [line.outputs[0]], attrs, [(1, *a), b_shape], [out])]


def _attention(line: _Line, ctx: _Context, shapes: list[Shape]) -> list[_Out]:
    """ncnn's MultiHeadAttention holds its q/k/v/out projections: three MatMuls, the attention
    itself (com.microsoft MultiHeadAttention, as ONNX graphs carry it) and the out MatMul."""
    p = line.params
    e = _int(p, 0, 0)
    heads = _int(p, 1, 1)
    kdim = _int(p, 3, e)
    vdim = _int(p, 4, e)
    if e < 1 or heads < 1 or e % heads:
        raise ValueError(f"embed_dim {e} is not a positive multiple of num_heads {heads}")
    q_blob = line.inputs[0]
    k_blob = line.inputs[1] if len(line.inputs) > 1 else q_blob
    v_blob = line.inputs[2] if len(line.inputs) > 2 else k_blob
    q, kk = shapes[0], shapes[1] if len(shapes) > 1 else shapes[0]
    v = shapes[2] if len(shapes) > 2 else kk
    if len(q) != 2 or len(kk) != 2 or len(v) != 2:
        raise ValueError("query, key and value must be 2-D (tokens x features)")
    name = line.name
    outs: list[_Out] = []
    projected = []
    for tag, blob, shape, width in (
        ("q", q_blob, q, e),
        ("k", k_blob, kk, kdim),
        ("v", v_blob, v, vdim),
    ):
        if shape[1] != width:
            raise ValueError(f"{tag} has {shape[1]} features, the layer expects {width}")
        out_blob = f"{name}/{tag}"
        w = ctx.weight(f"{name}.{tag}_weight", (width, e))
        outs.append(
            _Out(
                "MatMul",
                f"{name}/{tag}_proj",
                [blob, w],
                [out_blob],
                {"bias": 1},
                [(1, *shape), None],
                [(shape[0], e)],
            )
        )
        projected.append((out_blob, (1, shape[0], e)))
    inputs = [b for b, _ in projected]
    mask = [line.inputs[3]] if _int(p, 5, 0) and len(line.inputs) > 3 else []
    outs.append(
        _Out(
            "MultiHeadAttention",
            f"{name}/attention",
            inputs + mask,
            [f"{name}/attn"],
            {"num_heads": heads},
            [s for _, s in projected] + [None] * len(mask),
            [(q[0], e)],
        )
    )
    w = ctx.weight(f"{name}.out_weight", (e, e))
    outs.append(
        _Out(
            "MatMul",
            name,
            [f"{name}/attn", w],
            [line.outputs[0]],
            {"bias": 1},
            [(1, q[0], e), None],
            [(q[0], e)],
        )
    )
    return outs


def _broadcast(a: Shape, b: Shape) -> Shape:
    """ncnn's BinaryOp broadcast: the higher-rank operand's shape (a 1-D b against a 3-D a is
    per channel); equal ranks broadcast dim by dim."""
    if len(a) != len(b):
        return a if len(a) > len(b) else b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"cannot broadcast {a} with {b}")
        out.append(max(x, y))
    return tuple(out)


def _axis(axis: int, rank: int) -> int:
    a = axis + rank if axis < 0 else axis
    if not 0 <= a < rank:
        raise ValueError(f"axis {axis} out of range for a {rank}-D blob")
    return a


def _permute(order: int, x: Shape) -> tuple[Shape, tuple[int, ...]]:
    """(output shape, ONNX perm over the batch-less axes) for ncnn's order_type."""
    if len(x) == 2:
        perm = ((0, 1), (1, 0))[order]
    elif len(x) == 3:  # ncnn names orders by w-first: 0 WHC .. 5 CHW; here axes are (c, h, w)
        perm = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))[order]
    elif len(x) == 1:
        perm = (0,)
    else:
        raise ValueError(f"Permute of a {len(x)}-D blob is not supported")
    return tuple(x[i] for i in perm), perm


def _reshape(p: Mapping[int, Any], x: Shape) -> Shape:
    w, h, d, c = _int(p, 0, -233), _int(p, 1, -233), _int(p, 11, -233), _int(p, 2, -233)
    ncnn_dims = [("c", c), ("d", d), ("h", h), ("w", w)]
    keys = ("c", "d", "h", "w") if len(x) == 4 else ("c", "h", "w")[3 - len(x) :]
    src = dict(zip(keys, x, strict=True))
    dims = [(k, v) for k, v in ncnn_dims if v != -233]
    if not dims:
        raise ValueError("Reshape keeps no dim")
    out = [src.get(k, 1) if v == 0 else v for k, v in dims]
    total = numel(x)
    if out.count(-1) > 1 or any(v < -1 or v == 0 for v in out):
        raise ValueError(f"bad Reshape target {out}")
    if -1 in out:
        known = numel(v for v in out if v != -1)
        out[out.index(-1)] = total // known if known and total % known == 0 else -1
    if numel(out) != total:
        raise ValueError(f"Reshape of {x} to {out} changes the element count")
    return tuple(out)


def _slice(line: _Line, x: Shape) -> list[Shape]:
    p = line.params
    axis = _axis(_int(p, 1, 0), len(x))
    size = x[axis]
    count = len(line.outputs)
    indices = p.get(2)
    if isinstance(indices, tuple) and indices:
        bounds = [0, *(int(i) if int(i) >= 0 else size + int(i) for i in indices), size]
        sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    else:
        slices = p.get(0, ())
        slices = slices if isinstance(slices, tuple) else (slices,)
        if len(slices) != count:
            raise ValueError(f"{len(slices)} slices for {count} outputs")
        sizes, used = [], 0
        for i, s in enumerate(slices):
            s = int(s)
            if s == -233:
                s = (size - used) // (count - i)
            elif s < 0:
                s = size - used  # -1: the rest
            sizes.append(s)
            used += s
    if len(sizes) != count or any(s < 1 for s in sizes) or sum(sizes) > size:
        raise ValueError(f"cannot slice {size} along axis {axis} into {sizes}")
    return [tuple(s if i == axis else d for i, d in enumerate(x)) for s in sizes]


def _crop(line: _Line, shapes: list[Shape]) -> Shape:
    p = line.params
    x = shapes[0]
    if len(shapes) > 1:  # crop to the reference blob's size (its trailing dims)
        ref = shapes[1]
        keep = len(x) - min(len(ref), len(x))
        return (*x[:keep], *ref[len(ref) - (len(x) - keep) :])
    starts, ends, axes = p.get(9), p.get(10), p.get(11)
    out = list(x)
    if isinstance(starts, tuple) and isinstance(ends, tuple):
        axes = axes if isinstance(axes, tuple) else tuple(range(len(starts)))
        if not len(starts) == len(ends) == len(axes):
            raise ValueError("starts, ends and axes differ in length")
        for s, e, a in zip(starts, ends, axes, strict=True):
            a = _axis(int(a), len(x))
            size = x[a]
            s, e = int(s), int(e)
            s = min(max(s + size if s < 0 else s, 0), size)
            e = min(max(e + size if e < 0 else e, 0), size)
            out[a] = e - s
    else:
        names = {"w": (0, 3, 6), "h": (1, 4, 7), "d": (13, 14, 15), "c": (2, 5, 8)}
        order = {1: "w", 2: "hw", 3: "chw", 4: "cdhw"}[len(x)]
        for i, axis in enumerate(order):
            off, size, off2 = names[axis]
            want = _int(p, size, 0)
            out[i] = want if want > 0 else x[i] - _int(p, off, 0) - _int(p, off2, 0)
    if any(d < 1 for d in out):
        raise ValueError(f"cropping {x} leaves {tuple(out)}")
    return tuple(out)


def _prior_count(p: Mapping[int, Any]) -> int:
    def arr(key: int) -> tuple[Any, ...]:
        v = p.get(key, ())
        return v if isinstance(v, tuple) else (v,)

    mins, maxs, ratios = arr(0), arr(1), arr(2)
    count = len(mins) * len(ratios) + len(mins) + len(maxs)
    if _int(p, 7, 1):  # flip
        count += len(mins) * len(ratios)
    return max(count, 1)


def _convert(line: _Line, ctx: _Context, shapes: list[Shape]) -> list[_Out]:
    """The ONNX-style layers for one ncnn line, with their output blob shapes."""
    t, p, name = line.type, line.params, line.name
    ins, outs = line.inputs, line.outputs
    x = shapes[0] if shapes else ()

    def same(
        op: str, attrs: dict[str, Any] | None = None, extra: list[str] | None = None
    ) -> list[_Out]:
        return [_Out(op, name, [ins[0], *(extra or [])], [outs[0]], attrs or {}, out_shapes=[x])]

    if t in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise"):
        return _conv(line, ctx, x, "DepthWise" in t, t.startswith("Deconvolution"))
    if t == "Pooling":
        return _pooling(line, ctx, x)
    if t == "InnerProduct":
        return _fc(line, ctx, x)
    if t == "Gemm":
        return _gemm(line, ctx, shapes)
    if t == "MultiHeadAttention":
        return _attention(line, ctx, shapes)
    if t == "ReLU":
        slope = _float(p, 0, 0.0)
        return same("LeakyRelu", {"alpha": slope}) if slope else same("Relu")
    if t == "Clip":
        return same("Clip", {"min": _float(p, 0, -math.inf), "max": _float(p, 1, math.inf)})
    if t == "HardSigmoid":
        return same("HardSigmoid", {"alpha": _float(p, 0, 0.2), "beta": _float(p, 1, 0.5)})
    if t == "HardSwish":
        return same("HardSwish", {"alpha": _float(p, 0, 0.2), "beta": _float(p, 1, 0.5)})
    if t == "ELU":
        return same("Elu", {"alpha": _float(p, 0, 0.1)})
    if t == "PReLU":
        n = max(_int(p, 0, 1), 1)
        return same("PRelu", extra=[ctx.weight(f"{name}.slope", (n,) if n == 1 else (n, 1, 1))])
    if t in _SIMPLE:
        return same(_SIMPLE[t])
    if t == "UnaryOp":
        return same(_UNARY.get(_int(p, 0, 0), "Abs"), {"ncnn_op": _int(p, 0, 0)})
    if t == "BatchNorm":
        c = x[0]
        w = [ctx.weight(f"{name}.{k}", (c,)) for k in ("scale", "bias", "mean", "var")]
        return same("BatchNormalization", {"epsilon": _float(p, 1, 0.0)}, w)
    if t == "Scale":  # per-channel scale (and bias): a weight, or a second blob (0=-233)
        n = _int(p, 0, 1)
        if n == -233 and len(ins) > 1:
            scale = ins[1]
        else:
            scale = ctx.weight(f"{name}.scale", (n, 1, 1) if len(x) == 3 else (n,))
        return same("Mul", {"bias": _int(p, 1, 0)}, [scale])
    if t == "Bias":
        return same(
            "Add", extra=[ctx.weight(f"{name}.bias", (x[0], 1, 1) if len(x) == 3 else (x[0],))]
        )
    if t in ("LayerNorm", "InstanceNorm", "GroupNorm"):
        op = {
            "LayerNorm": "LayerNormalization",
            "InstanceNorm": "InstanceNormalization",
            "GroupNorm": "GroupNormalization",
        }[t]
        affine = _int(p, 2, 1)
        size = _int(p, 0, x[-1]) if t == "LayerNorm" else x[0]
        w = [ctx.weight(f"{name}.{k}", (size,)) for k in ("scale", "bias")] if affine else []
        return same(op, {"epsilon": _float(p, 1, 1e-5)}, w)
    if t == "LRN":
        return same(
            "LRN",
            {
                "size": _int(p, 1, 5),
                "alpha": _float(p, 2, 1.0),
                "beta": _float(p, 3, 0.75),
                "bias": _float(p, 4, 1.0),
            },
        )
    if t == "Softmax":
        return same("Softmax", {"axis": _axis(_int(p, 0, 0), len(x)) + 1})
    if t == "BinaryOp":
        code = _int(p, 0, 0)
        if code not in _BINARY:
            raise ValueError(f"unknown BinaryOp op_type 0={code}")
        if _int(p, 1, 0) or len(ins) == 1:
            b = ctx.weight(f"{name}.b", ())
            return same(_BINARY[code], {"ncnn_op": code}, [b])
        if len(shapes) < 2:
            raise ValueError("BinaryOp needs two inputs or with_scalar=1")
        a, b = (ins[1], ins[0]) if code in (7, 8, 9, 11) else (ins[0], ins[1])
        sa, sb = (shapes[1], shapes[0]) if code in (7, 8, 9, 11) else (shapes[0], shapes[1])
        out = _broadcast(shapes[0], shapes[1])
        return [
            _Out(
                _BINARY[code],
                name,
                [a, b],
                [outs[0]],
                {"ncnn_op": code},
                [(1, *sa), (1, *sb)],
                [out],
            )
        ]
    if t == "Eltwise":
        code = _int(p, 0, 1)
        op = {0: "Mul", 1: "Add" if len(ins) <= 2 else "Sum", 2: "Max"}.get(code)
        if op is None:
            raise ValueError(f"unknown Eltwise op_type 0={code}")
        if len({s for s in shapes}) > 1:
            raise ValueError(f"Eltwise inputs differ in shape: {shapes}")
        return [_Out(op, name, list(ins), [outs[0]], {}, out_shapes=[x])]
    if t == "Concat":
        axis = _axis(_int(p, 0, 0), len(x))
        if any(len(s) != len(x) for s in shapes):
            raise ValueError(f"Concat inputs differ in rank: {shapes}")
        out = list(x)
        out[axis] = sum(s[axis] for s in shapes)
        return [
            _Out("Concat", name, list(ins), [outs[0]], {"axis": axis + 1}, out_shapes=[tuple(out)])
        ]
    if t == "Slice":
        axis = _axis(_int(p, 1, 0), len(x)) + 1
        return [
            _Out("Split", name, [ins[0]], list(outs), {"axis": axis}, out_shapes=_slice(line, x))
        ]
    if t == "Crop":
        return [_Out("Slice", name, list(ins[:1]), [outs[0]], {}, out_shapes=[_crop(line, shapes)])]
    if t == "Padding":
        top, bottom, left, right = (_int(p, k, 0) for k in range(4))
        front, behind = _int(p, 7, 0), _int(p, 8, 0)
        if len(x) == 3:
            out = (x[0] + front + behind, x[1] + top + bottom, x[2] + left + right)
        elif len(x) == 2:
            out = (x[0] + top + bottom, x[1] + left + right)
        else:
            out = (x[0] + left + right,)
        return [_Out("Pad", name, [ins[0]], [outs[0]], {"mode": _int(p, 4, 0)}, out_shapes=[out])]
    if t == "Interp":
        c, h, w = _chw(x)
        if _int(p, 5, 0) and len(shapes) > 1:
            _, oh, ow = _chw(shapes[1])
        else:
            oh = _int(p, 3, 0) or int(h * _float(p, 1, 1.0))
            ow = _int(p, 4, 0) or int(w * _float(p, 2, 1.0))
        if oh < 1 or ow < 1:
            raise ValueError(f"resizing {h}x{w} gives {oh}x{ow}")
        mode = {1: "nearest", 2: "linear", 3: "cubic"}.get(_int(p, 0, 1), "nearest")
        return [
            _Out("Resize", name, [ins[0]], [outs[0]], {"mode": mode}, [(1, c, h, w)], [(c, oh, ow)])
        ]
    if t == "Permute":
        out, perm = _permute(_int(p, 0, 0), x)
        if perm == tuple(range(len(x))):
            return [_Out("Identity", name, [ins[0]], [outs[0]], {}, out_shapes=[x])]
        return [
            _Out(
                "Transpose",
                name,
                [ins[0]],
                [outs[0]],
                {"perm": (0, *(i + 1 for i in perm))},
                out_shapes=[out],
            )
        ]
    if t == "ShuffleChannel":  # a channel shuffle is a transpose of (groups, C / groups)
        return same("Transpose", {"group": _int(p, 0, 1)})
    if t == "Reshape":
        return [_Out("Reshape", name, [ins[0]], [outs[0]], {}, out_shapes=[_reshape(p, x)])]
    if t == "Flatten":
        return [_Out("Flatten", name, [ins[0]], [outs[0]], {}, out_shapes=[(numel(x),)])]
    if t == "Reduction":
        code = _int(p, 0, 0)
        if code not in _REDUCE:
            raise ValueError(f"unknown Reduction operation 0={code}")
        keep = _int(p, 4, 0)
        axes_raw = p.get(3, ())
        axes_raw = axes_raw if isinstance(axes_raw, tuple) else (axes_raw,)
        shift = 0 if _int(p, 5, 0) else 1  # without fixbug0 the axes count the batch
        axes = set(range(len(x))) if _int(p, 1, 1) or not axes_raw else {
            _axis(int(a) - shift, len(x)) for a in axes_raw
        }  # fmt: skip
        out = (
            tuple(1 if i in axes else d for i, d in enumerate(x))
            if keep
            else tuple(d for i, d in enumerate(x) if i not in axes) or (1,)
        )
        record = (1, *out) if keep or len(out) < len(x) else (1, *out)
        return [
            _Out(
                _REDUCE[code],
                name,
                [ins[0]],
                [outs[0]],
                {"axes": tuple(sorted(a + 1 for a in axes)), "keepdims": keep},
                out_shapes=[out],
                record_out=[record],
            )
        ]
    if t in ("Noop", "Dropout"):
        return [
            _Out(
                "Identity" if t == "Noop" else "Dropout",
                name,
                list(ins),
                [outs[0]],
                {},
                out_shapes=[x],
            )
        ]
    if t == "PriorBox":
        c, h, w = _chw(x)
        return [
            _Out(t, name, list(ins), [outs[0]], {}, out_shapes=[(2, 4 * h * w * _prior_count(p))])
        ]
    if t == "DetectionOutput":
        return [_Out(t, name, list(ins), [outs[0]], {}, out_shapes=[(max(_int(p, 3, 100), 1), 6)])]
    if t in ("YoloDetectionOutput", "Yolov3DetectionOutput"):
        boxes = max(_int(p, 1, 5 if t == "YoloDetectionOutput" else 3), 1)
        total = sum(_chw(s)[1] * _chw(s)[2] for s in shapes) * boxes
        return [_Out(t, name, list(ins), [outs[0]], {}, out_shapes=[(total, 6)])]
    raise KeyError(t)


# Every ncnn layer type `_convert` understands, plus the ones the graph itself resolves.
LAYER_TYPES = frozenset(
    {
        "Convolution",
        "ConvolutionDepthWise",
        "Deconvolution",
        "DeconvolutionDepthWise",
        "Pooling",
        "InnerProduct",
        "Gemm",
        "MultiHeadAttention",
        "ReLU",
        "Clip",
        "HardSigmoid",
        "HardSwish",
        "ELU",
        "PReLU",
        "UnaryOp",
        "BatchNorm",
        "Scale",
        "Bias",
        "LayerNorm",
        "InstanceNorm",
        "GroupNorm",
        "LRN",
        "Softmax",
        "BinaryOp",
        "Eltwise",
        "Concat",
        "Slice",
        "Crop",
        "Padding",
        "Interp",
        "Permute",
        "ShuffleChannel",
        "Reshape",
        "Flatten",
        "Reduction",
        "Noop",
        "Input",
        "MemoryData",
        "Split",
        *_SIMPLE,
        *DETECTION_TYPES,
    }
)
# The types whose output shape is data-dependent: `_convert` gives an upper bound.
DATA_DEPENDENT = frozenset({"DetectionOutput", "YoloDetectionOutput", "Yolov3DetectionOutput"})


# ---------------------------------------------------------------------------- parse


def _input_shape(line: _Line) -> Shape:
    w, h, d, c = (_int(line.params, k, 0) for k in (0, 1, 11, 2))
    dims = [v for v in (c, d, h, w) if v > 0]
    return tuple(dims)


def _given(name: str, shape: Sequence[int], declared: Shape) -> Shape:
    dims = check_shape_arg(name, shape, _MAX_DIM)
    if len(dims) == len(declared) + 1 or (not declared and len(dims) == 4):
        if dims[0] != 1:
            raise LetiError(
                f"input_shapes[{name!r}] = {list(dims)}: ncnn runs batch 1; give [1, c, h, w] "
                "or [c, h, w]"
            )
        dims = dims[1:]
    return dims


def parse_param(
    data: bytes | str,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    max_layers: int | None = None,
    name: str | None = None,
    where: str = "ncnn .param",
    use_hints: bool = True,
) -> Graph:
    """Parse the text of an ncnn `.param` into a `Graph` (see the module docstring).

    `input_shapes` maps an `Input` blob to [1, c, h, w] (or [c, h, w]); by default each input
    has the size its `Input` line declares (`0=w 1=h 2=c`). The `-23330` shape hints are used
    when every input has its declared size and `use_hints` is true; otherwise every shape is
    propagated from the inputs. The caller checks the size limit (`parse_graph` does).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    limit = settings.max_layers(settings.DEFAULT_MAX_LAYERS) if max_layers is None else max_layers
    lines = _read_text(raw, where)
    if len(lines) > limit:
        raise TooManyLayersError(
            f"{where}: {len(lines):,} layers, over the limit of {limit:,} "
            f"(set {settings.MAX_LAYERS} to change it)"
        )
    given = dict(input_shapes or {})
    declared_inputs = [ln.outputs[0] for ln in lines if ln.type == "Input" and ln.outputs]
    unknown = sorted(set(given) - set(declared_inputs))
    if unknown:
        raise LetiError(
            f"input shape given for {unknown}, but the .param's Input blobs are {declared_inputs}"
        )
    ctx = _Context(where)
    hints_ok = use_hints
    graph_inputs: list[tuple[str, Shape]] = []
    produced: set[str] = set()
    layers: list[Layer] = []
    used_names: set[str] = set()
    readers: set[str] = set()

    for line in lines:

        def bad(why: str, line: _Line = line) -> GraphError:
            return GraphError(f"{where}: line {line.number} ({line.type} {line.name!r}): {why}")

        if line.type not in LAYER_TYPES:
            raise bad(
                f"unknown ncnn layer type {line.type!r} (leti reads {len(LAYER_TYPES)} types: "
                "convolutions, pooling, inner product, activations, binary/eltwise ops, concat, "
                "slice, crop, padding, interp, reshape, permute, softmax, norms, attention, "
                "detection outputs...)"
            )
        for blob in line.outputs:
            if blob in produced:
                raise bad(f"blob {blob!r} is produced twice")
        inputs = []
        for blob in line.inputs:
            real = ctx.alias.get(blob, blob)
            if real not in ctx.shapes:
                raise bad(f"reads blob {blob!r}, which no earlier layer produces")
            inputs.append(real)
            readers.add(real)
        shapes = [ctx.shapes[b] for b in inputs]
        line.inputs = inputs
        if line.type == "Input":
            if len(line.outputs) != 1:
                raise bad("an Input layer has one output")
            declared = _input_shape(line)
            blob = line.outputs[0]
            shape = _given(blob, given[blob], declared) if blob in given else declared
            if not shape:
                raise bad(
                    "the Input layer declares no size (0=w 1=h 2=c): give it, e.g. "
                    f"`leti predict --input-shape {blob}=1,3,224,224`, or input_shape="
                    f'{{"{blob}": [1, 3, 224, 224]}} over HTTP (the size the model was built for)'
                )
            if shape != declared:
                hints_ok = False
            ctx.shapes[blob] = shape
            produced.add(blob)
            graph_inputs.append((blob, (1, *shape)))
            continue
        if line.type == "MemoryData":
            if len(line.outputs) != 1:
                raise bad("a MemoryData layer has one output")
            shape = _input_shape(line)
            if not shape:
                raise bad("MemoryData declares no size (0=w 1=h 2=c)")
            ctx.shapes[line.outputs[0]] = shape
            ctx.weights[line.outputs[0]] = (1, *shape) if len(shape) == 3 else shape
            produced.add(line.outputs[0])
            continue
        if not line.inputs:
            raise bad("a layer without inputs")
        if line.type == "Split":  # a copy of one blob for several readers: the same tensor
            for blob in line.outputs:
                ctx.alias[blob] = inputs[0]
                produced.add(blob)
            continue
        try:
            outs = _convert(line, ctx, shapes)
        except (
            ValueError,
            IndexError,
            KeyError,
            TypeError,
            ZeroDivisionError,
            OverflowError,
        ) as exc:
            raise bad(f"cannot read its parameters: {exc}") from exc
        final = outs[-1]
        if len(final.outputs) != len(line.outputs) and line.type != "Slice":
            raise bad(f"{len(line.outputs)} outputs where the layer makes {len(final.outputs)}")
        hinted = line.hints if hints_ok and line.type not in DATA_DEPENDENT else None
        for out in outs:
            out_shapes = list(out.out_shapes or [])
            if hinted is not None and out is final and len(hinted) == len(out_shapes):
                if any(numel(a) != numel(b) for a, b in zip(hinted, out_shapes, strict=True)):
                    raise bad(f"its shape hint {hinted} disagrees with the computed {out_shapes}")
                out_shapes = list(hinted)
            for blob, shape in zip(out.outputs, out_shapes, strict=True):
                if any(d < 1 or d > _MAX_DIM for d in shape):
                    raise bad(f"output shape {shape} out of range")
                ctx.shapes[blob] = shape
                produced.add(blob)
            in_shapes = tuple(
                s if s is not None else _record_shape(ctx, i)
                for i, s in zip(out.inputs, out.in_shapes or [None] * len(out.inputs), strict=True)
            )
            record_out = out.record_out if out.record_out and out_shapes == out.out_shapes else None
            out_records = tuple(record_out or ((1, *s) for s in out_shapes))
            layer_name = out.name
            while layer_name in used_names:
                layer_name += "_"
            used_names.add(layer_name)
            attrs = dict(out.attrs)
            attrs["ncnn_type"] = line.type
            if line.type in DATA_DEPENDENT:
                attrs["output_upper_bound"] = 1
            readers.update(out.inputs)
            layers.append(
                build_layer(
                    out.op,
                    layer_name,
                    out.inputs,
                    out.outputs,
                    attrs,
                    in_shapes,
                    out_records,
                    frozenset(ctx.weights),
                )
            )
    outputs = tuple(
        b
        for b in ctx.shapes
        if b not in readers and b not in ctx.weights and b not in dict(graph_inputs)
    )
    return Graph(
        name=name or "graph",
        layers=tuple(layers),
        inputs=tuple(graph_inputs),
        outputs=outputs,
        initializers=frozenset(ctx.weights),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def _record_shape(ctx: _Context, name: str) -> Shape | None:
    if name in ctx.weights:
        return ctx.weights[name]
    shape = ctx.shapes.get(name)
    return None if shape is None else (1, *shape)
