"""Fusion rules: what a runtime launches for small hand-built graphs and for real ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from leti.core.records import CONV_KINDS, KERNEL_KINDS
from leti.frontend.fusion import plan, rules
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
