"""The ONNX front end: shapes, FLOPs and params on real graphs, and refusal of bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leti.core.errors import (
    GraphError,
    GraphTooLargeError,
    LetiError,
    SymbolicShapeError,
    TooManyLayersError,
)
from leti.core.records import Graph
from leti.frontend import graph as G
from leti.frontend import shapes, weights
from leti.frontend.graph import DEFAULT_MAX_LAYERS, load_model, parse_graph, strip_weights

MAIN_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Relu", "Clip", "Sigmoid", "BatchNormalization", "Add", "Mul", "Sum", "Concat", "LRN",
    "Softmax", "Reshape", "Flatten", "Transpose", "Dropout", "ReduceMean",
}  # fmt: skip

# -- every file opened while `_OPENED` is a list is recorded there (Python-level opens).
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], str | bytes):
        _OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def _opened_during(fn: Any) -> tuple[Any, list[str]]:
    global _OPENED
    _OPENED = []
    try:
        result = fn()
    finally:
        opened, _OPENED = _OPENED, None
    return result, opened


# -- tiny models


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[TensorProto] = (),  # type: ignore[assignment]
    opset: int = 17,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _f32(name: str, dims: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _weight(name: str, *dims: int) -> TensorProto:
    return numpy_helper.from_array(np.full(dims, 0.5, dtype=np.float32), name)


def _conv_net(batch: Any = "N", hw: Any = 32) -> onnx.ModelProto:
    """Conv(SAME_UPPER, /2) -> LeakyRelu -> GlobalAveragePool -> Flatten -> Gemm."""
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2]
        ),
        helper.make_node("LeakyRelu", ["c"], ["r"], alpha=0.1),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    inits = [_weight("w", 8, 3, 3, 3), _weight("b", 8), _weight("fc_w", 10, 8), _weight("fc_b", 10)]
    return _model(nodes, [_f32("x", [batch, 3, hw, hw])], [_f32("y", [batch, 10])], inits)


def _by_op(g: Graph, op: str) -> list[Any]:
    return [layer for layer in g.layers if layer.op_type == op]


# -- real graphs


def test_light_models_parse_with_shapes(light_models: list[Path]) -> None:
    assert light_models, "no light models in the onnx wheel"
    for path in light_models:
        g = parse_graph(path)
        assert g.name == path.stem
        assert g.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert len({layer.name for layer in g.layers}) == len(g.layers)
        for layer in g.layers:
            if layer.op_type in MAIN_OPS:
                assert all(s is not None for s in layer.output_shapes), (path.name, layer)
                assert all(s is not None for s in layer.input_shapes if s != ()), (path, layer)
        convs = _by_op(g, "Conv")
        assert convs and all(c.flops > 0 and c.params > 0 for c in convs)


def test_light_resnet50_flops_and_params(light_dir: Path) -> None:
    g = parse_graph(light_dir / "light_resnet50.onnx")
    conv1 = _by_op(g, "Conv")[0]
    assert conv1.input_shapes[0] == (1, 3, 224, 224)
    assert conv1.output_shapes[0] == (1, 64, 112, 112)
    assert conv1.kernel_shape == (7, 7) and conv1.strides == (2, 2)
    assert conv1.pads == (3, 3, 3, 3) and conv1.dilations == (1, 1) and conv1.group == 1
    assert conv1.flops == 2 * 64 * 112 * 112 * 3 * 49
    assert conv1.params == 64 * 3 * 7 * 7
    # the light models build weights with ConstantOfShape: those count as weights
    assert conv1.inputs[1] in g.initializers
    assert conv1.bytes_moved == 4 * (3 * 224 * 224 + 64 * 112 * 112 + 64 * 3 * 49)
    weights = sum(layer.params for layer in g.layers if layer.op_type in ("Conv", "Gemm"))
    assert 25.4e6 < weights < 25.6e6
    total = sum(layer.flops for layer in g.layers)
    assert 7.5e9 < total < 8.5e9
    (fc,) = _by_op(g, "Gemm")
    assert fc.input_shapes[0] == (1, 2048) and fc.output_shapes[0] == (1, 1000)
    assert fc.flops == 2 * 2048 * 1000
    (pool,) = _by_op(g, "AveragePool")
    assert pool.output_shapes[0] == (1, 2048, 1, 1)
    assert pool.flops == 2048 * 49


def test_fallback_matches_onnx_inference(light_models: list[Path], monkeypatch: Any) -> None:
    """With ONNX inference refused, the built-in rules give the same shapes on every light model."""
    expected = {p: parse_graph(p) for p in light_models}
    monkeypatch.setattr(G, "_onnx_shapes", lambda lite: None)
    for path, want in expected.items():
        got = parse_graph(path)
        assert got.layers == want.layers, path.name


def test_fallback_on_zoo_graphs_without_value_info(shared_dir: Path, monkeypatch: Any) -> None:
    paths = sorted((shared_dir / "zoo").glob("*/*.onnx"))
    expected = {p: parse_graph(p) for p in paths}
    monkeypatch.setattr(G, "_onnx_shapes", lambda lite: None)
    for path, want in expected.items():
        model = load_model(path)
        del model.graph.value_info[:]
        got = parse_graph(model, name=path.stem)
        assert got.layers == want.layers, path.name


def test_zoo_graphs_parse_with_conv_shapes(shared_dir: Path) -> None:
    bench = shared_dir / "zoo" / "mobile-ml-benchmark"
    resolutions = json.loads((bench / "resolutions.json").read_text())
    bench_paths = sorted(bench.glob("*.onnx"))
    ncnn_paths = sorted((shared_dir / "zoo" / "ncnn").glob("*.onnx"))
    assert len(bench_paths) == 82 and ncnn_paths
    for path in bench_paths + ncnn_paths:
        g = parse_graph(path)
        convs = _by_op(g, "Conv")
        assert convs, path.name
        for c in convs:
            assert c.input_shapes[0] is not None and c.output_shapes[0] is not None, (path, c)
            assert len(c.kernel_shape) == 2 and len(c.pads) == 4 and c.flops > 0, (path, c)
        if path.parent == bench and path.stem in resolutions:
            assert g.inputs == (("input", tuple(resolutions[path.stem]["input"])),), path.name
    alexnet = parse_graph(shared_dir / "zoo" / "ncnn" / "alexnet.onnx")
    assert alexnet.inputs[0][1] == (1, 3, 227, 227)


def test_zoo_resnet50_matches_light_resnet50(shared_dir: Path, light_dir: Path) -> None:
    zoo = parse_graph(shared_dir / "zoo" / "ncnn" / "resnet50.onnx")
    light = parse_graph(light_dir / "light_resnet50.onnx")
    zoo_convs, light_convs = _by_op(zoo, "Conv"), _by_op(light, "Conv")
    assert len(zoo_convs) == len(light_convs) == 53

    # exporters order the convs differently, and the two put the stage stride on different
    # convs (ResNet v1 vs v1.5), but kernels and widths agree
    def geometry(convs: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((c.kernel_shape, c.output_shapes[0][1]) for c in convs)

    assert geometry(zoo_convs) == geometry(light_convs)
    weights = sum(layer.params for layer in zoo.layers if layer.op_type in ("Conv", "Gemm"))
    assert 25.4e6 < weights < 25.7e6  # the zoo's convs also carry folded-BN biases


def test_input_shapes_override_on_zoo_graph(shared_dir: Path) -> None:
    path = shared_dir / "zoo" / "mobile-ml-benchmark" / "resnet18.onnx"
    g = parse_graph(path, input_shapes={"input": [1, 3, 160, 160]})
    assert g.inputs == (("input", (1, 3, 160, 160)),)
    convs = _by_op(g, "Conv")
    assert convs[0].output_shapes[0] == (1, 64, 80, 80)
    assert convs[-1].output_shapes[0] == (1, 512, 5, 5)
    # its final AvgPool is a fixed 7x7: at 160 px the model cannot run, and the pool's
    # output is unknown rather than a crash or a negative size
    (pool,) = _by_op(g, "AveragePool")
    assert pool.input_shapes == ((1, 512, 5, 5),) and pool.output_shapes == (None,)


# -- layer details on tiny graphs


def test_tiny_conv_net_geometry_flops_and_attrs() -> None:
    g = parse_graph(_conv_net().SerializeToString())
    conv, act, gap, flat, fc = g.layers
    assert g.inputs == (("x", (1, 3, 32, 32)),) and g.outputs == ("y",)
    assert conv.name == "conv" and act.name == "LeakyRelu_1"
    assert conv.output_shapes == ((1, 8, 16, 16),)
    assert conv.pads == (0, 0, 1, 1)  # SAME_UPPER puts the odd pixel at the end
    assert conv.strides == (2, 2) and conv.kernel_shape == (3, 3)
    assert conv.flops == 2 * 8 * 16 * 16 * 3 * 9
    assert conv.params == 8 * 3 * 9 + 8
    assert conv.bytes_moved == 4 * (3 * 32 * 32 + 8 * 16 * 16 + conv.params)
    assert conv.attrs == ()  # the spatial ones live in their own fields
    assert act.attrs == (("alpha", 0.1),) and act.attr("alpha") == 0.1
    assert act.flops == 8 * 16 * 16
    assert gap.kernel_shape == (16, 16) and gap.output_shapes == ((1, 8, 1, 1),)
    assert gap.flops == 8 * 16 * 16  # global pool: input elements
    assert flat.output_shapes == ((1, 8),) and flat.flops == 0
    assert fc.output_shapes == ((1, 10),) and fc.flops == 2 * 8 * 10
    assert fc.params == 10 * 8 + 10
    assert g.initializers == frozenset({"w", "b", "fc_w", "fc_b"})


def test_auto_pad_same_lower_and_valid() -> None:
    for auto_pad, pads, out in (("SAME_LOWER", (1, 1, 0, 0), 16), ("VALID", (0, 0, 0, 0), 15)):
        node = helper.make_node(
            "MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad=auto_pad
        )
        g = parse_graph(_model([node], [_f32("x", [1, 4, 32, 32])], [_f32("y", None)]))
        (pool,) = g.layers
        assert pool.pads == pads and pool.output_shapes == ((1, 4, out, out),)
        assert pool.flops == 4 * out * out * 9


def test_conv1d_is_normalised_to_2d() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 2], strides=[2])
    model = _model([node], [_f32("x", [1, 4, 20])], [_f32("y", None)], [_weight("w", 6, 4, 3)])
    (conv,) = parse_graph(model).layers
    assert conv.kernel_shape == (1, 3) and conv.strides == (1, 2)
    assert conv.pads == (0, 1, 0, 2) and conv.dilations == (1, 1)
    assert conv.output_shapes == ((1, 6, 11),)  # (20 + 1 + 2 - 3) // 2 + 1


def test_transpose_constant_and_matmul() -> None:
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 4, 6])
    nodes = [
        helper.make_node("Constant", [], ["s"], value=shape),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "m"], ["y"]),
    ]
    model = _model(nodes, [_f32("x", [1, 24])], [_f32("y", None)], [_weight("m", 4, 5)])
    g = parse_graph(model)
    reshape, transpose, matmul = g.layers  # a Constant is a weight, not a layer
    assert "s" in g.initializers
    assert reshape.output_shapes == ((1, 4, 6),) and reshape.params == 3
    assert transpose.attrs == (("perm", (0, 2, 1)),)
    assert matmul.output_shapes == ((1, 6, 5),) and matmul.flops == 2 * 6 * 5 * 4


def test_layer_names_are_unique() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="same"),
        helper.make_node("Relu", ["a"], ["b"], name="same"),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Relu", ["c"], ["d"], name="Relu_2"),
    ]
    g = parse_graph(_model(nodes, [_f32("x", [1, 4])], [_f32("d", None)]))
    names = [layer.name for layer in g.layers]
    assert names[0] == "same" and len(set(names)) == 4


def test_nodes_out_of_order_are_sorted() -> None:
    nodes = [
        helper.make_node("Sigmoid", ["a"], ["b"], name="second"),
        helper.make_node("Relu", ["x"], ["a"], name="first"),
    ]
    g = parse_graph(_model(nodes, [_f32("x", [2, 3])], [_f32("b", None)]))
    assert [layer.name for layer in g.layers] == ["first", "second"]
    assert g.layers[1].output_shapes == ((2, 3),)


def test_cycle_and_dangling_input_are_graph_errors() -> None:
    cycle = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
    ]
    with pytest.raises(GraphError, match="cycle"):
        parse_graph(_model(cycle, [_f32("x", [2])], [_f32("b", None)]))
    dangling = [helper.make_node("Add", ["x", "ghost"], ["y"])]
    with pytest.raises(GraphError, match="ghost"):
        parse_graph(_model(dangling, [_f32("x", [2])], [_f32("y", None)]))


def test_nodes_computed_from_constants_are_weights_not_layers() -> None:
    """A Constant, a ConstantOfShape of one (light models' weights) and a Transpose of a
    weight are no layers: their outputs join the initializers, their shapes still reach the
    layers that read them, and the other layers keep the names they had."""
    dims = helper.make_tensor("dims", TensorProto.INT64, [2], [5, 4])
    nodes = [
        helper.make_node("Constant", [], ["d"], value=dims, name="mm"),
        helper.make_node("ConstantOfShape", ["d"], ["w"]),
        helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
        helper.make_node("RandomNormalLike", ["x"], ["n"]),
        helper.make_node("Add", ["y", "n"], ["z"]),
    ]
    g = parse_graph(_model(nodes, [_f32("x", [1, 4])], [_f32("z", None)]))
    assert [la.op_type for la in g.layers] == ["MatMul", "RandomNormalLike", "Add"]
    assert {"d", "w", "wt"} <= g.initializers
    matmul = g.layers[0]
    assert matmul.name == "mm_3" and matmul.input_shapes == ((1, 4), (4, 5))
    assert matmul.params == 20 and matmul.output_shapes == ((1, 5),)


def _if_on_a_constant() -> onnx.ModelProto:
    """An If whose only input is a constant condition; its branches read the activation x."""
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])], "then", [], [_f32("t", [1, 4])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [], [_f32("e", [1, 4])]
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node(
        "If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph, name="branch"
    )
    return _model([node], [_f32("x", [1, 4])], [_f32("y", [1, 4])], [cond])


def test_an_if_on_a_constant_condition_is_never_folded() -> None:
    """Its branches compute on the outer graph's activations: it stays a layer, and the plan
    reports it unsupported rather than counting it as 0 ms."""
    from leti.frontend.fusion import plan

    g = parse_graph(_if_on_a_constant())
    assert [la.name for la in g.layers] == ["branch"]
    assert [la.name for la in plan(g, "tflite-gpu").unsupported] == ["branch"]


def test_subgraph_op_is_one_layer() -> None:
    (layer,) = parse_graph(_if_on_a_constant()).layers
    assert layer.op_type == "If" and layer.attrs == ()  # graph attributes are skipped


# -- input shapes


def test_symbolic_batch_defaults_to_one() -> None:
    g = parse_graph(_conv_net(batch="N"))
    assert g.inputs == (("x", (1, 3, 32, 32)),)
    assert g.layers[-1].output_shapes == ((1, 10),)
    unknown = _conv_net(batch=None)  # an unnamed unknown dim is a batch dim too
    assert parse_graph(unknown).inputs == (("x", (1, 3, 32, 32)),)


def test_symbolic_spatial_dims_need_input_shapes() -> None:
    model = _conv_net(hw="H")
    with pytest.raises(SymbolicShapeError) as err:
        parse_graph(model)
    assert err.value.input_name == "x"
    assert "'x'" in err.value.message and "H" in err.value.message
    assert err.value.status == 422
    g = parse_graph(model, input_shapes={"x": [2, 3, 64, 64]})
    assert g.inputs == (("x", (2, 3, 64, 64)),)
    assert g.layers[0].output_shapes == ((2, 8, 32, 32),)
    assert g.layers[-1].output_shapes == ((2, 10),)


def test_input_shapes_override_declared_dims() -> None:
    g = parse_graph(_conv_net(batch=1, hw=32), input_shapes={"x": (1, 3, 20, 20)})
    assert g.layers[0].output_shapes == ((1, 8, 10, 10),)
    assert g.layers[2].flops == 8 * 10 * 10


def test_bad_input_shapes_are_refused() -> None:
    model = _conv_net()
    with pytest.raises(LetiError, match="nope"):
        parse_graph(model, input_shapes={"nope": [1, 3, 8, 8]})
    with pytest.raises(LetiError, match="rank"):
        parse_graph(model, input_shapes={"x": [1, 3, 8]})
    with pytest.raises(LetiError):
        parse_graph(model, input_shapes={"x": [1, 3, 0, 8]})
    with pytest.raises(LetiError):
        parse_graph(model, input_shapes={"x": "abc"})  # type: ignore[dict-item]


# -- refusing bad input


def test_truncated_file_is_a_graph_error(tmp_path: Path, light_dir: Path) -> None:
    data = (light_dir / "light_squeezenet.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError) as err:
        parse_graph(path)
    assert "cut.onnx" in err.value.message and "protobuf" in err.value.message


def test_random_and_empty_bytes_are_graph_errors() -> None:
    with pytest.raises(GraphError, match="empty"):
        parse_graph(b"")
    rng = random.Random(7)
    with pytest.raises(GraphError):
        parse_graph(rng.randbytes(3000))
    with pytest.raises(GraphError, match="no nodes"):
        parse_graph(onnx.ModelProto(ir_version=8).SerializeToString())
    with pytest.raises(GraphError, match="cannot read model file"):
        parse_graph("/nonexistent/model.onnx")


def test_size_limit_is_checked_before_reading(tmp_path: Path, monkeypatch: Any) -> None:
    data = _conv_net().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(GraphTooLargeError) as err:
        _opened_during(lambda: parse_graph(path, max_bytes=100))
    assert f"{len(data):,}" in err.value.message and "100" in err.value.message
    assert err.value.status == 413
    _, opened = _opened_during(lambda: pytest.raises(GraphTooLargeError, load_model, path, 100))
    assert opened == []
    with pytest.raises(GraphTooLargeError):
        parse_graph(data, max_bytes=100)
    with pytest.raises(GraphTooLargeError):
        parse_graph(_conv_net(), max_bytes=100)
    monkeypatch.setenv("LETI_MAX_GRAPH_MB", "0.0001")  # ~104 bytes
    with pytest.raises(GraphTooLargeError):
        parse_graph(data)


def test_too_many_layers(light_dir: Path, monkeypatch: Any) -> None:
    path = light_dir / "light_resnet50.onnx"
    with pytest.raises(TooManyLayersError, match="415"):
        parse_graph(path, max_layers=100)
    monkeypatch.setenv("LETI_MAX_LAYERS", "100")
    with pytest.raises(TooManyLayersError):
        parse_graph(path)
    assert DEFAULT_MAX_LAYERS == 20_000


def _external_model(location: str) -> onnx.ModelProto:
    """Conv whose weight claims to live in an external file at `location`."""
    model = _conv_net(batch=1)
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "864")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model


def test_external_data_is_never_opened(tmp_path: Path, monkeypatch: Any) -> None:
    seen: list[onnx.ModelProto] = []
    real_infer = onnx.shape_inference.infer_shapes

    def spy(model: onnx.ModelProto, **kwargs: Any) -> onnx.ModelProto:
        seen.append(model)
        return real_infer(model, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    own_rules = G.OWN_SHAPE_OPS
    for location, route in itertools.product(
        ("../../etc/passwd", "does-not-exist.bin", str(tmp_path / "w.bin")), ("own", "onnx")
    ):
        # leti's own shape rules, and ONNX's inference (what a graph of other ops gets)
        monkeypatch.setattr(G, "OWN_SHAPE_OPS", own_rules if route == "own" else frozenset())
        path = tmp_path / "ext.onnx"
        path.write_bytes(_external_model(location).SerializeToString())
        g, opened = _opened_during(lambda p=path: parse_graph(p))
        assert opened == [str(path)], opened
        assert g.layers[0].output_shapes == ((1, 8, 16, 16),)
        assert g.layers[0].params == 8 * 3 * 9 + 8
        g2, opened = _opened_during(lambda p=path: parse_graph(p.read_bytes()))
        assert opened == [str(path)] and g2.layers == g.layers  # only our own read_bytes
    assert seen
    for model in seen:  # what reaches the C++ side names no file
        for t in model.graph.initializer:
            assert len(t.external_data) == 0 and t.data_location != TensorProto.EXTERNAL
    for module in (G, shapes, weights):  # the front end and the modules it was split into
        source = Path(module.__file__).read_text()
        assert "load_external_data_for_model" not in source and "check_model" not in source


def test_fuzzed_models_raise_only_leti_errors(light_dir: Path) -> None:
    """Truncations, bit flips, overwritten runs and random bytes: a LetiError or a Graph."""
    bodies = [
        (light_dir / "light_squeezenet.onnx").read_bytes(),
        _conv_net().SerializeToString(),
    ]
    rng = random.Random(20240611)
    outcomes = {"ok": 0, "error": 0}
    for i in range(200):
        body = bytearray(bodies[i % 2])
        kind = i % 4
        if kind == 0:
            body = body[: rng.randrange(len(body))]
        elif kind == 1:
            for _ in range(rng.randint(1, 12)):
                pos = rng.randrange(len(body))
                body[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:
            pos, n = rng.randrange(len(body)), rng.randrange(1, 48)
            body[pos : pos + n] = rng.randbytes(n)
        else:
            body = bytearray(rng.randbytes(rng.randrange(1, 4000)))
        try:
            g = parse_graph(bytes(body))
        except LetiError as exc:
            assert exc.message
            outcomes["error"] += 1
        else:
            assert all(isinstance(layer.name, str) for layer in g.layers)
            outcomes["ok"] += 1
    assert outcomes["error"] > 100


# -- strip_weights and load_model


def test_strip_weights_keeps_shapes_and_drops_data() -> None:
    model = _conv_net(batch=1)
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "flat_shape")
    model.graph.initializer.append(shape)
    stripped = strip_weights(model)
    assert stripped.ByteSize() < model.ByteSize()
    by_name = {t.name: t for t in stripped.graph.initializer}
    assert list(by_name["w"].dims) == [8, 3, 3, 3] and by_name["w"].data_type == TensorProto.FLOAT
    assert not by_name["w"].raw_data and not by_name["w"].float_data
    assert numpy_helper.to_array(by_name["flat_shape"]).tolist() == [1, -1]  # shape-like: kept
    assert model.graph.initializer[0].raw_data  # the original is untouched
    assert parse_graph(stripped).layers == parse_graph(model).layers
    assert stripped.opset_import == model.opset_import


def test_strip_weights_drops_external_locations() -> None:
    stripped = strip_weights(_external_model("../../etc/passwd"))
    for t in stripped.graph.initializer:
        assert len(t.external_data) == 0 and t.data_location != TensorProto.EXTERNAL
    assert b"passwd" not in stripped.SerializeToString()
    assert parse_graph(stripped).layers[0].output_shapes == ((1, 8, 16, 16),)


def test_load_model_and_sha256(tmp_path: Path) -> None:
    model = _conv_net()
    assert load_model(model) is model
    data = model.SerializeToString()
    path = tmp_path / "net.onnx"
    path.write_bytes(data)
    assert load_model(path) == model and load_model(data) == model
    assert load_model(bytearray(data)) == model
    digest = hashlib.sha256(data).hexdigest()
    assert parse_graph(path).sha256 == digest == parse_graph(data).sha256
    assert parse_graph(path).name == "net" and parse_graph(data, name="x").name == "x"
    assert len(parse_graph(model).sha256) == 64
    with pytest.raises(LetiError):
        load_model(12345)  # type: ignore[arg-type]


def test_strip_weights_on_zoo_graph(shared_dir: Path) -> None:
    model = load_model(shared_dir / "zoo" / "ncnn" / "mobilenet.onnx")
    stripped = strip_weights(model)
    assert all(len(t.external_data) == 0 for t in stripped.graph.initializer)
    assert parse_graph(stripped).layers == parse_graph(model).layers


def test_sparse_initializer_counts_as_weight() -> None:
    values = numpy_helper.from_array(np.ones(3, dtype=np.float32), "fc_w")
    indices = numpy_helper.from_array(np.array([0, 5, 9], dtype=np.int64), "fc_w_idx")
    sparse = helper.make_sparse_tensor(values, indices, [8, 10])
    node = helper.make_node("MatMul", ["x", "fc_w"], ["y"])
    model = _model([node], [_f32("x", [1, 8])], [_f32("y", None)])
    model.graph.sparse_initializer.append(sparse)
    g = parse_graph(model)
    assert "fc_w" in g.initializers and g.inputs == (("x", (1, 8)),)
    (mm,) = g.layers
    assert mm.params == 80 and mm.output_shapes == ((1, 10),) and mm.flops == 2 * 8 * 10
    stripped = strip_weights(model)
    assert len(stripped.graph.sparse_initializer) == 0
    assert parse_graph(stripped).layers == g.layers


# -- ops beyond CNNs: FLOPs and shapes (issue 9, every computing op gets a cost)


def _one(
    node: onnx.NodeProto,
    inputs: dict[str, list[int]],
    inits: list[TensorProto] = (),  # type: ignore[assignment]
    opset: int = 17,
) -> Any:
    """The layers of a one-node model whose output shape is left to inference."""
    model = _model(
        [node],
        [_f32(n, s) for n, s in inputs.items()],
        [_f32(node.output[0], None)],
        inits,
        opset=opset,
    )
    if node.domain:
        model.opset_import.append(helper.make_opsetid(node.domain, 1))
    return parse_graph(model).layers


def test_conv_transpose_flops_with_groups_and_dilation() -> None:
    node = helper.make_node(
        "ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], dilations=[2, 2], group=4,
        pads=[1, 1, 1, 1],
    )  # fmt: skip
    (layer,) = _one(node, {"x": [2, 8, 10, 10]}, [_weight("w", 8, 3, 3, 3)])
    # (10 - 1) x 2 + (3 - 1) x 2 + 1 - 2 = 21; 4 groups of 3 outputs
    assert layer.output_shapes == ((2, 12, 21, 21),) and layer.group == 4
    assert layer.dilations == (2, 2)
    assert layer.flops == 2 * (2 * 8 * 10 * 10) * (3 * 3 * 3)  # each input scatters C_out/g x k x k


def test_normalization_softmax_and_gelu_flops() -> None:
    x = {"x": [2, 197, 64]}
    ln = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1)
    (layer,) = _one(ln, x, [_weight("g", 64), _weight("b", 64)])
    assert layer.output_shapes[0] == (2, 197, 64) and layer.flops == 8 * 2 * 197 * 64
    (sm,) = _one(helper.make_node("Softmax", ["x"], ["y"], axis=-1), x)
    assert sm.flops == 5 * 2 * 197 * 64
    (gelu,) = _one(helper.make_node("Gelu", ["x"], ["y"]), x, opset=20)
    assert gelu.output_shapes[0] == (2, 197, 64) and gelu.flops == 8 * 2 * 197 * 64
    (erf,) = _one(helper.make_node("Erf", ["x"], ["y"]), x)
    assert erf.flops == 2 * 197 * 64


def test_lstm_flops_and_shapes() -> None:
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "B"], ["y", "y_h", "y_c"], hidden_size=64,
        direction="bidirectional",
    )  # fmt: skip
    inits = [_weight("W", 2, 256, 32), _weight("R", 2, 256, 64), _weight("B", 2, 512)]
    (layer,) = _one(node, {"x": [10, 3, 32]}, inits)
    assert layer.output_shapes == ((10, 2, 3, 64), (2, 3, 64), (2, 3, 64))
    per_step = 4 * 64 * (2 * (32 + 64) + 3)  # gate matmuls over [x, h], bias, nonlinearity
    assert layer.flops == 10 * 3 * 2 * per_step
    assert layer.params == 2 * 256 * 32 + 2 * 256 * 64 + 2 * 512


def test_einsum_flops() -> None:
    qk = helper.make_node("Einsum", ["q", "k"], ["y"], equation="bhid,bhjd->bhij")
    (layer,) = _one(qk, {"q": [1, 4, 50, 16], "k": [1, 4, 60, 16]})
    assert layer.output_shapes[0] == (1, 4, 50, 60)
    assert layer.flops == 2 * 4 * 50 * 60 * 16
    chain = helper.make_node("Einsum", ["a", "b", "c"], ["y"], equation="ij,jk,kl")
    (layer,) = _one(chain, {"a": [8, 16], "b": [16, 32], "c": [32, 4]})
    assert layer.output_shapes[0] == (8, 4)
    assert layer.flops == 2 * (8 * 16 * 32 + 8 * 32 * 4)  # (a b) first, then c
    bcast = helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik")
    (layer,) = _one(bcast, {"a": [3, 1, 8, 16], "b": [5, 16, 4]})
    assert layer.output_shapes[0] == (3, 5, 8, 4) and layer.flops == 2 * 15 * 8 * 16 * 4
    (one,) = _one(helper.make_node("Einsum", ["a"], ["y"], equation="ij->ji"), {"a": [8, 16]})
    assert one.output_shapes[0] == (16, 8) and one.flops == 8 * 16


def test_quantized_ops_flops_use_the_right_weight_input() -> None:
    wq = helper.make_tensor("wq", TensorProto.INT8, [8, 4, 3, 3], [1] * 288)
    scales = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("z", TensorProto.UINT8, [], [0]),
        helper.make_tensor("wz", TensorProto.INT8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node(
            "QLinearConv", ["xq", "s", "z", "wq", "s", "wz", "s", "z"], ["c"], pads=[1, 1, 1, 1]
        ),
        helper.make_node("DequantizeLinear", ["c", "s", "z"], ["y"]),
    ]
    model = _model(nodes, [_f32("x", [1, 4, 16, 16])], [_f32("y", None)], [wq, *scales])
    q, conv, dq = parse_graph(model).layers
    assert conv.output_shapes == ((1, 8, 16, 16),) and conv.kernel_shape == (3, 3)
    assert conv.flops == 2 * 8 * 16 * 16 * 4 * 9
    assert q.flops == 3 * 4 * 16 * 16 and dq.flops == 2 * 8 * 16 * 16


def _beyond_cnn_model() -> onnx.ModelProto:
    """Standard ops with shapes ONNX infers: the fallback rules must agree with it."""
    n = helper.make_node
    wq = helper.make_tensor("wq", TensorProto.INT8, [8, 4, 3, 3], [1] * 288)
    inits = [
        wq,
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("z", TensorProto.UINT8, [], [0]),
        helper.make_tensor("wz", TensorProto.INT8, [], [0]),
        _weight("wt", 8, 2, 3, 3), _weight("w3", 6, 4, 3, 3, 3), _weight("W", 1, 48, 16),
        _weight("R", 1, 48, 16), _weight("mm", 16, 7),
    ]  # fmt: skip
    nodes = [
        n("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        n("QLinearConv", ["xq", "s", "z", "wq", "s", "wz", "s", "z"], ["qc"], pads=[1] * 4),
        n("DequantizeLinear", ["qc", "s", "z"], ["dq"]),
        n("ConvTranspose", ["dq", "wt"], ["up"], strides=[2, 2], group=4, dilations=[2, 2]),
        n("Conv", ["v", "w3"], ["c3"], pads=[1] * 6, strides=[1, 2, 2]),
        n("AveragePool", ["c3"], ["p3"], kernel_shape=[2, 2, 2], strides=[2, 2, 2]),
        n("GRU", ["seq", "W", "R"], ["gy", "gh"], hidden_size=16, layout=1),
        n("Einsum", ["gh", "mm"], ["e"], equation="bdh,hk->dbk"),
        n("LayerNormalization", ["e", "ln"], ["ln_out"], axis=-1),
    ]
    inputs = [_f32("x", [1, 4, 16, 16]), _f32("v", [1, 4, 8, 16, 16]), _f32("seq", [2, 5, 16])]
    ln_w = _weight("ln", 7)
    outputs = [_f32(o, None) for o in ("up", "p3", "gy", "ln_out")]
    return _model(nodes, inputs, outputs, [*inits, ln_w])


def test_fallback_matches_onnx_inference_beyond_cnns(monkeypatch: Any) -> None:
    want = parse_graph(_beyond_cnn_model())
    by_op = {la.op_type: la for la in want.layers}
    assert by_op["ConvTranspose"].output_shapes == ((1, 8, 35, 35),)
    assert by_op["AveragePool"].output_shapes == ((1, 6, 4, 4, 4),)
    assert by_op["GRU"].output_shapes == ((2, 5, 1, 16), (2, 1, 16))
    assert by_op["Einsum"].output_shapes == ((1, 2, 7),)  # Y_h is [batch, dirs, hidden]
    assert all(la.flops > 0 for la in want.layers)
    monkeypatch.setattr(G, "_onnx_shapes", lambda lite: None)
    got = parse_graph(_beyond_cnn_model())
    assert got.layers == want.layers


def test_contrib_op_shapes_come_from_the_fallback_rules() -> None:
    """ONNX's inference does not know com.microsoft ops: the built-in rules size them."""
    ms = {"domain": "com.microsoft"}
    n = helper.make_node
    nodes = [
        n("FusedConv", ["img", "cw"], ["c"], activation="Relu", pads=[1] * 4, **ms),
        n("Attention", ["x", "aw", "ab"], ["a"], num_heads=4, **ms),
        n("MultiHeadAttention", ["a", "kv", "kv"], ["m"], num_heads=4, **ms),
        n("SkipLayerNormalization", ["m", "x", "g", "b"], ["s"], **ms),
        n("FusedMatMul", ["s", "fw"], ["f"], transB=1, **ms),
        n("FusedGemm", ["f2d", "gw"], ["fg"], transB=1, activation="Relu", **ms),
        n("FastGelu", ["f"], ["y"], **ms),
    ]
    inits = [
        _weight("cw", 8, 4, 3, 3), _weight("aw", 64, 192), _weight("ab", 192),
        _weight("g", 64), _weight("b", 64), _weight("fw", 96, 64), _weight("gw", 10, 64),
    ]  # fmt: skip
    inputs = [
        _f32("img", [1, 4, 16, 16]), _f32("x", [2, 50, 64]), _f32("kv", [2, 30, 64]),
        _f32("f2d", [3, 64]),
    ]  # fmt: skip
    model = _model(nodes, inputs, [_f32("y", None), _f32("fg", None), _f32("c", None)], inits)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    layers = {la.op_type: la for la in parse_graph(model).layers}
    assert layers["FusedConv"].output_shapes[0] == (1, 8, 16, 16)
    assert layers["FusedConv"].flops == 2 * 8 * 16 * 16 * 4 * 9
    att = layers["Attention"]
    assert att.output_shapes[0] == (2, 50, 64)
    assert att.flops == 2 * 100 * 64 * 192 + 2 * 2 * 50 * 50 * 128 + 5 * 2 * 4 * 50 * 50
    mha = layers["MultiHeadAttention"]
    assert mha.output_shapes[0] == (2, 50, 64)
    assert mha.flops == 2 * 2 * 50 * 30 * 128 + 5 * 2 * 4 * 50 * 30
    assert layers["SkipLayerNormalization"].output_shapes[0] == (2, 50, 64)
    assert layers["FusedMatMul"].output_shapes[0] == (2, 50, 96)
    assert layers["FusedMatMul"].flops == 2 * 100 * 96 * 64
    assert layers["FusedGemm"].output_shapes[0] == (3, 10)
    assert layers["FastGelu"].output_shapes[0] == (2, 50, 96)
    assert all(la.flops > 0 for la in layers.values())
