"""Fusion rules: what a runtime launches for small hand-built graphs and for real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from leti.core.records import CONV_KINDS, KERNEL_KINDS
from leti.frontend.fusion import QUANTIZED_OPS, plan, rules
from leti.frontend.graph import parse_graph

SHAPE = [1, 8, 16, 16]


def _w(name: str, dims: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, dims, np.zeros(int(np.prod(dims))).tolist())


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def _model(nodes, inits, out="y", out_shape=None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(name: str, x: str, y: str, group: int = 1, k: int = 3) -> onnx.NodeProto:
    return helper.make_node(
        "Conv",
        [x, f"{name}.w"],
        [y],
        name=name,
        kernel_shape=[k, k],
        pads=[k // 2] * 4,
        group=group,
    )


def _conv_w(name: str, group: int = 1, k: int = 3) -> onnx.TensorProto:
    return _w(f"{name}.w", [8, 8 // group, k, k])


def _bn(x: str, y: str) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    names = [f"{y}.{p}" for p in ("s", "b", "m", "v")]
    return helper.make_node("BatchNormalization", [x, *names], [y], name=y), [
        _w(n, [8]) for n in names
    ]


def test_conv_bn_relu_is_one_kernel_on_tflite_and_vulkan():
    bn, bn_w = _bn("c", "b")
    m = _model(
        [_conv("conv", "x", "c"), bn, helper.make_node("Relu", ["b"], ["y"], name="r")],
        [_conv_w("conv"), *bn_w],
    )
    for runtime in ("tflite-gpu", "pytorch-vulkan"):
        p = plan(parse_graph(m), runtime)
        assert len(p.kernels) == 1, runtime
        k = p.kernels[0]
        assert (k.kind, k.fused, k.layers) == ("conv", ("relu",), ("conv", "b", "r"))
        assert (k.h_in, k.c_in, k.c_out, k.kernel, k.stride, k.pad) == (16, 8, 8, 3, 1, 2)
        assert not p.overhead and not p.unsupported


def test_residual_add_links_on_tflite_but_is_its_own_kernel_on_vulkan():
    m = _model(
        [
            _conv("c1", "x", "a"),
            helper.make_node("Relu", ["a"], ["ar"], name="r1"),
            _conv("c2", "ar", "b"),
            helper.make_node("Add", ["b", "x"], ["s"], name="add"),
            helper.make_node("Relu", ["s"], ["y"], name="r2"),
        ],
        [_conv_w("c1"), _conv_w("c2")],
    )
    tfl = plan(parse_graph(m), "tflite-gpu")
    assert [k.fused for k in tfl.kernels] == [("relu",), ("add", "relu")]
    vk = plan(parse_graph(m), "pytorch-vulkan")
    assert [k.kind for k in vk.kernels] == ["conv", "conv", "add", "act"]


def test_exported_hard_swish_is_recognised_as_one_linked_op():
    inits = [_conv_w("c"), _scalar("three", 3.0), _scalar("zero", 0.0), _scalar("six", 6.0)]
    nodes = [
        _conv("c", "x", "h"),
        helper.make_node("Add", ["h", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["cl"], name="clip"),
        helper.make_node("Mul", ["h", "cl"], ["m"], name="mul"),
        helper.make_node("Div", ["m", "six"], ["y"], name="div"),
    ]
    p = plan(parse_graph(_model(nodes, inits)), "tflite-gpu")
    assert len(p.kernels) == 1 and p.kernels[0].fused == ("hard_swish",)
    assert set(p.kernels[0].layers) == {"c", "add", "clip", "mul", "div"}
    assert not p.overhead


def test_unknown_op_is_unsupported_and_resize_is_overhead():
    inits = [_conv_w("c"), helper.make_tensor("sc", TensorProto.FLOAT, [4], [1, 1, 2, 2])]
    nodes = [
        _conv("c", "x", "h"),
        helper.make_node("Resize", ["h", "", "sc"], ["r"], name="resize"),
        helper.make_node("Relu", ["r"], ["q"], name="relu_after_resize"),
        helper.make_node("Erf", ["q"], ["e"], name="erf"),
        helper.make_node("HardMax", ["e"], ["y"], name="odd"),
    ]
    p = plan(parse_graph(_model(nodes, inits)), "tflite-gpu")
    assert [k.kind for k in p.kernels] == ["conv"]
    assert {la.name for la in p.overhead} == {"resize", "relu_after_resize", "erf"}
    assert [la.op_type for la in p.unsupported] == ["HardMax"]


def test_depthwise_and_grouped_convs_are_told_apart():
    m = _model(
        [_conv("dw", "x", "a", group=8), _conv("g", "a", "y", group=2)],
        [_conv_w("dw", group=8), _conv_w("g", group=2)],
    )
    p = plan(parse_graph(m), "tflite-gpu")
    assert [k.kind for k in p.kernels] == ["dwconv", "gconv"]


def test_every_layer_of_real_graphs_lands_in_exactly_one_place(light_models):
    for path in light_models:
        g = parse_graph(path)
        for runtime in ("tflite-gpu", "pytorch-vulkan"):
            p = plan(g, runtime)
            covered = [n for k in p.kernels for n in k.layers]
            covered += [la.name for la in (*p.overhead, *p.free, *p.unsupported)]
            folded_consts = {la.name for la in g.layers} - set(covered)
            # what is not covered must be computed from constants only (folded at conversion)
            for la in g.layers:
                if la.name in folded_consts:
                    assert all((not t) or t in g.initializers for t in la.inputs), la.name
            assert len(covered) == len(set(covered)), f"{path.name}: a layer counted twice"
            assert p.kernels, path.name


@pytest.mark.shared
def test_kernel_matching_on_the_measured_models(shared_dir, tmp_path):
    """The ONNX-derived kernels must match >= 95% of the delegate's measured conv-like ops."""
    import sys

    from leti.measurements.importers import import_mobile_ml_benchmark

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    bench = pytest.importorskip("kernel_matching")
    import_mobile_ml_benchmark(
        shared_dir / "data" / "mobile-ml-benchmark", out_dir=tmp_path / "mobile-ml-benchmark"
    )
    from leti.measurements.schema import load_e2e, load_kernels
    from leti.train.fit import load_plan

    rows = load_kernels(tmp_path, soc="snapdragon855", runtime="tflite-gpu")
    graphs = load_e2e(tmp_path, soc="snapdragon855", runtime="tflite-gpu").set_index("model")
    rows = rows[rows["kind"].isin(bench.CONV_LIKE)]
    hit = total = 0
    for model, mrows in rows.groupby("model"):
        m, n, *_ = bench.match_model(mrows, load_plan(graphs.loc[model, "graph"], "tflite-gpu"))
        hit, total = hit + m, total + n
    assert total > 3000
    assert hit / total >= 0.95


def test_kernel_kinds_are_one_pinned_vocabulary() -> None:
    """The pooled model stores a kind as its index in KERNEL_KINDS: the order is persisted."""
    from leti.measurements import schema
    from leti.models import regressors

    assert KERNEL_KINDS[:12] == (
        "conv", "dwconv", "gconv", "fc", "pool_max", "pool_avg", "pool_global", "concat",
        "add", "mul", "act", "bn",
    )  # fmt: skip
    assert len(set(KERNEL_KINDS)) == len(KERNEL_KINDS)
    assert regressors.KINDS == KERNEL_KINDS and sorted(schema.KINDS) == sorted(KERNEL_KINDS)
    assert set(CONV_KINDS) <= set(KERNEL_KINDS)
    for runtime in ("tflite-gpu", "pytorch-vulkan"):  # every kind a rule can name is priced
        assert set(rules(runtime).kernel.values()) <= set(KERNEL_KINDS), runtime
        assert set(rules(runtime).analytic.values()) <= set(KERNEL_KINDS), runtime


# -- every computing op gets a price (issue 9): analytic kernels, overhead, nothing unsupported

RUNTIMES = ("tflite-gpu", "pytorch-vulkan", "pytorch-metal", "ncnn-vulkan")
MS_DOMAIN = "com.microsoft"


def _graph(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int]],
    inits: list[onnx.TensorProto] = (),  # type: ignore[assignment]
    out: str = "y",
    contrib: bool = False,
    opset: int = 17,
) -> onnx.ModelProto:
    """A model over float inputs of the given shapes, whose output `out` has no declared shape
    (so every shape comes from inference or the fallback rules)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=list(inits),
    )
    opsets = [helper.make_opsetid("", opset)]
    if contrib:
        opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
    return helper.make_model(graph, opset_imports=opsets)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _plans(model: onnx.ModelProto, **shapes: list[int]):
    g = parse_graph(model, input_shapes=shapes or None)
    return {rt: plan(g, rt) for rt in RUNTIMES}


def _priced_everything(plans) -> None:
    for rt, p in plans.items():
        assert not p.unsupported, (rt, [la.op_type for la in p.unsupported])
        assert p.kernels or p.overhead, rt


def _vit_block(tokens: int = 197, dim: int = 64, heads: int = 4, mlp: int = 256):
    """A pre-norm ViT encoder block as PyTorch exports it: LayerNorm, a QKV MatMul, the heads
    split by Reshape/Transpose/Gather, Q K^T and A V as batched MatMuls of two activations,
    Softmax, GELU as the Erf chain, residual Adds."""
    hd = dim // heads
    inits = [
        _w("ln1.g", [dim]), _w("ln1.b", [dim]), _w("ln2.g", [dim]), _w("ln2.b", [dim]),
        _w("qkv.w", [dim, 3 * dim]), _w("qkv.b", [3 * dim]), _w("o.w", [dim, dim]),
        _w("o.b", [dim]), _w("fc1.w", [dim, mlp]), _w("fc1.b", [mlp]), _w("fc2.w", [mlp, dim]),
        _w("fc2.b", [dim]), _ints("split_shape", [1, tokens, 3, heads, hd]),
        _ints("merge_shape", [1, tokens, dim]), _scalar("scale", hd**-0.5),
        _scalar("sqrt2", 2**0.5), _scalar("one", 1.0), _scalar("half", 0.5),
        helper.make_tensor("i0", TensorProto.INT64, [], [0]),
        helper.make_tensor("i1", TensorProto.INT64, [], [1]),
        helper.make_tensor("i2", TensorProto.INT64, [], [2]),
    ]  # fmt: skip
    n = helper.make_node
    nodes = [
        n("LayerNormalization", ["x", "ln1.g", "ln1.b"], ["ln1"], name="ln1", axis=-1),
        n("MatMul", ["ln1", "qkv.w"], ["qkv0"], name="qkv"),
        n("Add", ["qkv0", "qkv.b"], ["qkv1"], name="qkv_bias"),
        n("Reshape", ["qkv1", "split_shape"], ["qkv2"], name="split_heads"),
        n("Transpose", ["qkv2"], ["qkv3"], name="heads_first", perm=[2, 0, 3, 1, 4]),
        n("Gather", ["qkv3", "i0"], ["q"], name="q", axis=0),
        n("Gather", ["qkv3", "i1"], ["k"], name="k", axis=0),
        n("Gather", ["qkv3", "i2"], ["v"], name="v", axis=0),
        n("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["s0"], name="qk"),
        n("Mul", ["s0", "scale"], ["s1"], name="scale_scores"),
        n("Softmax", ["s1"], ["p"], name="softmax", axis=-1),
        n("MatMul", ["p", "v"], ["a0"], name="av"),
        n("Transpose", ["a0"], ["a1"], name="heads_last", perm=[0, 2, 1, 3]),
        n("Reshape", ["a1", "merge_shape"], ["a2"], name="merge_heads"),
        n("MatMul", ["a2", "o.w"], ["o0"], name="proj"),
        n("Add", ["o0", "o.b"], ["o1"], name="proj_bias"),
        n("Add", ["x", "o1"], ["h"], name="residual1"),
        n("LayerNormalization", ["h", "ln2.g", "ln2.b"], ["ln2"], name="ln2", axis=-1),
        n("MatMul", ["ln2", "fc1.w"], ["f0"], name="fc1"),
        n("Add", ["f0", "fc1.b"], ["f1"], name="fc1_bias"),
        n("Div", ["f1", "sqrt2"], ["g0"], name="gelu_div"),
        n("Erf", ["g0"], ["g1"], name="gelu_erf"),
        n("Add", ["g1", "one"], ["g2"], name="gelu_add"),
        n("Mul", ["f1", "g2"], ["g3"], name="gelu_mul"),
        n("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        n("MatMul", ["g4", "fc2.w"], ["f2"], name="fc2"),
        n("Add", ["f2", "fc2.b"], ["f3"], name="fc2_bias"),
        n("Add", ["h", "f3"], ["y"], name="residual2"),
    ]
    return _graph(nodes, {"x": [1, tokens, dim]}, inits)


def test_vit_block_prices_every_op():
    plans = _plans(_vit_block())
    _priced_everything(plans)
    for rt, p in plans.items():
        fcs = {k.name: k for k in p.kernels if k.kind == "fc"}
        assert set(fcs) == {"qkv", "qk", "av", "proj", "fc1", "fc2"}, rt
        for name in ("qkv", "proj", "fc1", "fc2"):  # activation x weight: the measured family
            assert fcs[name].priced == "measured" and fcs[name].batch == 197, (rt, name)
            assert fcs[name].work_flops == fcs[name].work_bytes == 0
        qk, av = fcs["qk"], fcs["av"]  # [1, 4, 197, 16] x [1, 4, 16, 197] and back
        assert qk.priced == av.priced == "analytic", rt
        assert (qk.c_in, qk.c_out, qk.batch) == (16, 197, 4 * 197)
        assert (av.c_in, av.c_out, av.batch) == (197, 16, 4 * 197)
        assert qk.work_flops == 2 * 4 * 197 * 197 * 16 == av.work_flops
        # both operands and the output, no weights
        assert qk.work_bytes == 4 * (2 * 4 * 197 * 16 + 4 * 197 * 197)
        assert av.work_bytes == 4 * (4 * 197 * 197 + 2 * 4 * 197 * 16)
        overhead = {la.op_type for la in p.overhead}
        assert {"LayerNormalization", "Softmax", "Erf", "Transpose", "Gather"} <= overhead, rt
        assert {la.op_type for la in p.free} == {"Reshape"}, rt


def test_matmul_rows_scale_the_work():
    """[1, 197, 768] x [768, 3072]: one FC kernel over 197 rows, 197 x the work of one row."""

    def fc(rows: int):
        node = helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")
        m = _graph([node], {"x": [1, rows, 768]}, [_w("w", [768, 3072])])
        (k,) = plan(parse_graph(m), "tflite-gpu").kernels
        return k

    one, many = fc(1), fc(197)
    assert (many.kind, many.priced, many.c_in, many.c_out) == ("fc", "measured", 768, 3072)
    assert (one.batch, many.batch) == (1, 197)
    assert many.flops == 197 * one.flops == 197 * 2 * 768 * 3072


def test_batch_multiplies_the_work():
    """The same conv net at batch 8 launches the same kernels, each over 8 images."""
    bn, bn_w = _bn("c", "b")
    nodes = [_conv("conv", "x", "c"), bn, helper.make_node("Relu", ["b"], ["y"], name="r")]
    inits = [_conv_w("conv"), *bn_w]
    one = plan(parse_graph(_graph(nodes, {"x": [1, 8, 16, 16]}, inits)), "tflite-gpu")
    eight = plan(parse_graph(_graph(nodes, {"x": [8, 8, 16, 16]}, inits)), "tflite-gpu")
    (k1,), (k8,) = one.kernels, eight.kernels
    assert (k1.batch, k8.batch) == (1, 8) and k8.flops == 8 * k1.flops
    assert k8.priced == "measured" and k8.work_flops == 0  # the geometry x batch says it all


def _rnn(op: str, seq: int, batch: int, inp: int, hidden: int, dirs: int) -> onnx.ModelProto:
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    inits = [
        _w("W", [dirs, gates * hidden, inp]),
        _w("R", [dirs, gates * hidden, hidden]),
        _w("B", [dirs, 2 * gates * hidden]),
    ]
    direction = "bidirectional" if dirs == 2 else "forward"
    node = helper.make_node(
        op, ["x", "W", "R", "B"], ["y"], name="rnn", hidden_size=hidden, direction=direction
    )
    return _graph([node], {"x": [seq, batch, inp]}, inits)


@pytest.mark.parametrize(("op", "gates", "dirs"), [("LSTM", 4, 1), ("GRU", 3, 2), ("RNN", 1, 1)])
def test_recurrent_layers_are_fc_kernels_over_every_step(op: str, gates: int, dirs: int):
    plans = _plans(_rnn(op, seq=10, batch=2, inp=32, hidden=64, dirs=dirs))
    _priced_everything(plans)
    for rt, p in plans.items():
        (k,) = p.kernels
        assert (k.kind, k.priced, k.op_type) == ("fc", "analytic", op), rt
        assert (k.c_in, k.c_out, k.batch) == (32 + 64, gates * 64 * dirs, 10 * 2)
        gate_flops = 2 * k.batch * k.c_in * k.c_out  # the gate matmuls over [x, h]
        assert k.work_flops == k.flops and gate_flops < k.work_flops < 1.05 * gate_flops
        recurrent = dirs * gates * 64 * 64
        assert k.work_bytes == k.bytes_moved + 4 * 9 * recurrent  # R re-read at every step
    longer = _plans(_rnn(op, seq=40, batch=2, inp=32, hidden=64, dirs=dirs))["tflite-gpu"]
    assert longer.kernels[0].work_flops == 4 * plans["tflite-gpu"].kernels[0].work_flops


def test_conv_transpose_is_an_analytic_conv():
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 1, 1],
        output_padding=[1, 1], group=2, dilations=[1, 1], kernel_shape=[3, 3],
    )  # fmt: skip
    plans = _plans(_graph([node], {"x": [1, 8, 16, 16]}, [_w("w", [8, 6, 3, 3])]))
    _priced_everything(plans)
    for rt, p in plans.items():
        (k,) = p.kernels
        assert (k.kind, k.priced, k.groups) == ("gconv", "analytic", 2), rt
        assert (k.h_in, k.c_in, k.h_out, k.c_out) == (16, 8, 32, 12)
        # every input pixel scatters its (C_out / group) x 3 x 3 window
        assert k.work_flops == 2 * 8 * 16 * 16 * 6 * 9
        assert k.work_bytes == 4 * (8 * 16 * 16 + 12 * 32 * 32 + 8 * 6 * 9)


def _conv3d(frames: int, kd: int, batch: int = 1) -> onnx.ModelProto:
    node = helper.make_node(
        "Conv", ["x", "w"], ["c"], name="conv3d", pads=[kd // 2, 1, 1, kd // 2, 1, 1]
    )
    pool = helper.make_node(
        "MaxPool", ["c"], ["y"], name="pool3d", kernel_shape=[2, 2, 2], strides=[2, 2, 2]
    )
    return _graph([node, pool], {"x": [batch, 3, frames, 32, 32]}, [_w("w", [8, 3, kd, 3, 3])])


def test_conv3d_and_pool3d_price_every_frame():
    conv2d = helper.make_node("Conv", ["x", "w"], ["y"], name="conv2d", pads=[1, 1, 1, 1])
    m2d = _graph([conv2d], {"x": [1, 3, 32, 32]}, [_w("w", [8, 3, 3, 3])])
    (k2d,) = plan(parse_graph(m2d), "tflite-gpu").kernels
    plans = _plans(_conv3d(frames=16, kd=1))
    _priced_everything(plans)
    for rt, p in plans.items():
        conv, pool = p.kernels
        assert (conv.kind, conv.priced, conv.batch) == ("conv", "analytic", 16), rt
        assert (conv.h_in, conv.w_in, conv.c_in, conv.c_out, conv.kernel) == (32, 32, 3, 8, 3)
        assert conv.work_flops == 16 * k2d.flops  # a 1 x 3 x 3 kernel: 16 frames of the 2-D conv
        assert (pool.kind, pool.priced, pool.batch, pool.h_out) == ("pool_max", "analytic", 8, 16)
        assert pool.work_flops == 8 * 8 * 16 * 16 * 8  # outputs x the 2 x 2 x 2 window
    deep = plan(parse_graph(_conv3d(frames=16, kd=3, batch=2)), "tflite-gpu").kernels[0]
    assert deep.batch == 2 * 16 and deep.work_flops == 2 * 3 * 16 * k2d.flops


def _quant_params(prefix: str, zero_type: int = TensorProto.UINT8) -> list[onnx.TensorProto]:
    return [_scalar(f"{prefix}.s", 0.05), helper.make_tensor(f"{prefix}.z", zero_type, [], [0])]


def test_qdq_graph_prices_the_float_conv_and_its_converts():
    wq = helper.make_tensor("wq", TensorProto.INT8, [8, 8, 3, 3], [1] * (8 * 8 * 9))
    inits = [*_quant_params("x"), *_quant_params("w", TensorProto.INT8), wq]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "x.s", "x.z"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["wq", "w.s", "w.z"], ["wd"], name="dq_w"),
        helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    plans = _plans(_graph(nodes, {"x": SHAPE}, inits))
    _priced_everything(plans)
    for rt, p in plans.items():
        (k,) = p.kernels
        assert (k.kind, k.priced, k.flops) == ("conv", "measured", 2 * 8 * 256 * 8 * 9), rt
        assert [la.name for la in p.overhead] == ["q", "dq"]  # the weight's DQ is folded
        assert all(la.flops > 0 for la in p.overhead)


def test_qoperator_conv_and_matmul_keep_their_quantized_name():
    wq = helper.make_tensor("wq", TensorProto.INT8, [8, 8, 3, 3], [1] * (8 * 8 * 9))
    bq = helper.make_tensor("bq", TensorProto.INT8, [256, 10], [1] * 2560)
    inits = [*_quant_params("x"), *_quant_params("w", TensorProto.INT8), *_quant_params("y")]
    inits += [wq, bq, _ints("rows", [8, 256])]
    conv_in = ["xq", "x.s", "x.z", "wq", "w.s", "w.z", "y.s", "y.z"]
    matmul_in = ["r", "y.s", "y.z", "bq", "w.s", "w.z", "y.s", "y.z"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"], name="q"),
        helper.make_node("QLinearConv", conv_in, ["c"], name="qconv", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "rows"], ["r"], name="rows"),
        helper.make_node("QLinearMatMul", matmul_in, ["m"], name="qmatmul"),
        helper.make_node("DequantizeLinear", ["m", "y.s", "y.z"], ["y"], name="dq"),
    ]
    plans = _plans(_graph(nodes, {"x": SHAPE}, inits))
    _priced_everything(plans)
    for rt, p in plans.items():
        conv, fc = p.kernels
        assert (conv.kind, conv.op_type, conv.priced) == ("conv", "QLinearConv", "analytic"), rt
        assert conv.work_flops == conv.flops == 2 * 8 * 256 * 8 * 9
        assert conv.params == 8 * 8 * 9 + 6  # the weight, and three scales and zero points
        assert (fc.kind, fc.op_type, fc.priced) == ("fc", "QLinearMatMul", "analytic")
        assert (fc.c_in, fc.c_out, fc.batch) == (256, 10, 8)
        assert {conv.op_type, fc.op_type} <= QUANTIZED_OPS
        assert [la.name for la in p.overhead] == ["q", "dq"]


def test_elementwise_only_graph_is_priced():
    nodes = [
        helper.make_node("Add", ["x", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Softmax", ["r"], ["y"], name="softmax", axis=1),
    ]
    plans = _plans(_graph(nodes, {"x": SHAPE}))
    _priced_everything(plans)
    assert [la.name for la in plans["tflite-gpu"].overhead] == ["add", "relu", "softmax"]
    vk = plans["pytorch-vulkan"]
    assert [k.kind for k in vk.kernels] == ["add", "act"] and len(vk.overhead) == 1


def test_reduce_mean_is_a_global_pool_only_over_the_spatial_axes():
    def reduce_plan(shape: list[int], axes: list[int]):
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=1)
        m = _graph([node], {"x": shape}, [_ints("axes", axes)], opset=18)
        return {rt: plan(parse_graph(m), rt) for rt in ("tflite-gpu", "pytorch-vulkan")}

    for p in reduce_plan([1, 8, 7, 7], [2, 3]).values():
        assert [k.kind for k in p.kernels] == ["pool_global"] and p.kernels[0].priced == "measured"
    for shape, axes in (([1, 197, 64], [-1]), ([1, 8, 7, 7], [1])):
        for rt, p in reduce_plan(shape, axes).items():
            assert not p.kernels and [la.op_type for la in p.overhead] == ["ReduceMean"], rt


def test_einsum_contractions_are_fc_kernels():
    n = helper.make_node
    nodes = [
        n("Einsum", ["q", "k"], ["s"], name="qk", equation="bhid,bhjd->bhij"),
        n("Einsum", ["s"], ["st"], name="swap", equation="bhij->bhji"),
        n("Einsum", ["st", "w"], ["y"], name="proj", equation="...j,jf->...f"),
    ]
    m = _graph(nodes, {"q": [2, 4, 50, 16], "k": [2, 4, 50, 16]}, [_w("w", [50, 32])])
    plans = _plans(m)
    _priced_everything(plans)
    for rt, p in plans.items():
        qk, proj = p.kernels
        assert (qk.kind, qk.priced, qk.c_in, qk.c_out, qk.batch) == ("fc", "analytic", 16, 50, 400)
        assert qk.work_flops == 2 * 2 * 4 * 50 * 50 * 16, rt
        assert (proj.c_in, proj.c_out, proj.batch, proj.params) == (50, 32, 400, 50 * 32)
        assert [la.name for la in p.overhead] == ["swap"]  # one operand: a transpose


def test_einsum_that_cannot_be_sized_stays_unsupported():
    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="odd", equation="ij,jk->iz")
    p = plan(parse_graph(_graph([node], {"a": [4, 5], "b": [5, 6]})), "tflite-gpu")
    assert not p.kernels and [la.name for la in p.unsupported] == ["odd"]


def test_contrib_ops_from_onnxruntime_are_priced():
    """What onnxruntime's transformer optimizer writes: FusedConv, FusedMatMul, Attention,
    MultiHeadAttention, SkipLayerNormalization, BiasGelu, FastGelu, QuickGelu, BiasAdd."""
    ms = {"domain": MS_DOMAIN}
    n = helper.make_node
    dim, tokens = 64, 50
    inits = [
        _w("cw", [8, 8, 3, 3]), _w("att.w", [dim, 3 * dim]), _w("att.b", [3 * dim]),
        _w("g", [dim]), _w("b", [dim]), _w("fc.w", [dim, 128]), _w("fc.b", [128]),
        _w("fc2.w", [128, dim]),
    ]  # fmt: skip
    nodes = [
        n("FusedConv", ["img", "cw"], ["c"], name="fconv", activation="Relu", pads=[1] * 4, **ms),
        n("Attention", ["x", "att.w", "att.b"], ["a"], name="attn", num_heads=4, **ms),
        n("MultiHeadAttention", ["a", "a", "a"], ["mha"], name="mha", num_heads=4, **ms),
        n("SkipLayerNormalization", ["mha", "x", "g", "b"], ["s"], name="skipln", **ms),
        n("FusedMatMul", ["s", "fc.w"], ["f"], name="fmm", **ms),
        n("BiasGelu", ["f", "fc.b"], ["gl"], name="biasgelu", **ms),
        n("FastGelu", ["gl"], ["fg"], name="fastgelu", **ms),
        n("QuickGelu", ["fg"], ["qg"], name="quickgelu", **ms),
        n("MatMul", ["qg", "fc2.w"], ["o"], name="fc2"),
        n("BiasAdd", ["o", "b", "s"], ["y"], name="biasadd", **ms),
    ]
    m = _graph(nodes, {"img": SHAPE, "x": [1, tokens, dim]}, inits, contrib=True)
    plans = _plans(m)
    _priced_everything(plans)
    for rt, p in plans.items():
        k = {k.name: k for k in p.kernels}
        assert set(k) == {"fconv", "attn", "mha", "fmm", "fc2"}, rt
        assert (k["fconv"].kind, k["fconv"].priced, k["fconv"].fused) == (
            "conv",
            "measured",
            ("relu",),
        )
        assert (k["fmm"].kind, k["fmm"].priced, k["fmm"].batch) == ("fc", "measured", tokens)
        attn, mha = k["attn"], k["mha"]
        assert (attn.kind, attn.priced, attn.batch, attn.c_in, attn.c_out) == (
            "fc", "analytic", tokens, dim, dim
        )  # fmt: skip
        projection = 2 * tokens * dim * 3 * dim
        scores = 2 * 2 * tokens * tokens * dim + 5 * 4 * tokens * tokens
        assert attn.work_flops == projection + scores and mha.work_flops == scores
        assert attn.work_bytes > attn.bytes_moved  # the 4 x 50 x 50 scores, written and read
        overhead = {la.op_type for la in p.overhead}
        assert overhead == {
            "SkipLayerNormalization",
            "BiasGelu",
            "FastGelu",
            "QuickGelu",
            "BiasAdd",
        }


def test_training_cnns_keep_measured_plans(shared_dir):
    """The 82 training graphs use only measured families: no kernel of theirs borrows another
    family's efficiency or overrides its geometry's work, and nothing is left unpriced."""
    paths = sorted((shared_dir / "zoo" / "mobile-ml-benchmark").glob("*.onnx"))
    assert len(paths) == 82
    for path in paths:
        g = parse_graph(path)
        for rt in ("tflite-gpu", "pytorch-vulkan"):
            p = plan(g, rt)
            assert not p.unsupported, (path.name, rt)
            for k in p.kernels:
                assert (k.priced, k.work_flops, k.work_bytes) == ("measured", 0, 0), (path, k)


def test_kernels_frame_carries_the_work_overrides():
    from leti.frontend.features import kernels_frame

    plans = _plans(_rnn("LSTM", seq=10, batch=2, inp=32, hidden=64, dirs=1))
    frame = kernels_frame(plans["tflite-gpu"].kernels)
    (k,) = plans["tflite-gpu"].kernels
    assert frame.loc[0, "work_flops"] == k.work_flops > 0
    assert frame.loc[0, "work_bytes"] == k.work_bytes > 0
    assert frame.loc[0, "batch"] == 20


def test_ops_outside_their_familys_measured_geometry_are_analytic():
    """A 1-D conv, a MatMul with the weight first and a Gemm with transA keep their kind but
    carry their own work: the kind's geometry (square windows, activation x weight) is not theirs.
    """
    n = helper.make_node
    nodes = [
        n("Conv", ["seq", "cw"], ["c"], name="conv1d", strides=[2], pads=[2, 2]),
        n("MatMul", ["mw", "c"], ["m"], name="weight_first"),  # [6, 4] x [1, 4, 10] -> [1, 6, 10]
        n("Gemm", ["at", "gw"], ["y"], name="gemm_ta", transA=1),  # [12, 3]^T x [12, 5]
    ]
    inits = [_w("cw", [4, 3, 5]), _w("mw", [6, 4]), _w("gw", [12, 5])]
    p = plan(parse_graph(_graph(nodes, {"seq": [1, 3, 20], "at": [12, 3]}, inits)), "tflite-gpu")
    conv, mm, gemm = p.kernels
    assert (conv.kind, conv.priced, conv.kernel, conv.stride, conv.pad) == (
        "conv", "analytic", 5, 2, 4
    )  # fmt: skip
    assert conv.h_out == 10 and conv.work_flops == 2 * 4 * 10 * 3 * 5
    assert (mm.priced, mm.c_in, mm.c_out, mm.batch) == ("analytic", 4, 10, 6)
    assert mm.work_flops == 2 * 6 * 10 * 4
    assert (gemm.priced, gemm.c_in, gemm.c_out, gemm.batch) == ("analytic", 12, 5, 3)
    assert not p.unsupported
