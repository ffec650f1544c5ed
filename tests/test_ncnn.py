"""The ncnn `.param` front end: the format, its errors, shapes, FLOPs, the ncnn-vulkan fusion
rules, and .param input through the CLI, the HTTP service and the client.

The benchmark's 35 exact graphs live in ../shared/data/ncnn-benchmark/models; tests that need
them skip with a reason when the shared folder is absent.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from leti.cli import main as cli_main
from leti.client import graph_bytes
from leti.core.errors import GraphError, GraphTooLargeError, LetiError
from leti.frontend import ncnn
from leti.frontend.fusion import plan
from leti.frontend.graph import parse_graph
from tests.conftest import SHARED

BENCH = SHARED / "data" / "ncnn-benchmark" / "models"
MODELS = sorted(p.stem for p in BENCH.glob("*.param")) if BENCH.is_dir() else []


@pytest.fixture(scope="module")
def bench() -> Path:
    if not (BENCH / "inputs.json").is_file():
        pytest.skip(f"ncnn benchmark graphs not found at {BENCH} (set LETI_SHARED_DIR)")
    return BENCH


def input_shapes(bench: Path, model: str) -> dict[str, list[int]]:
    size = json.loads((bench / "inputs.json").read_text())[model]
    text = (bench / f"{model}.param").read_text()
    name = next(ln.split()[4] for ln in text.splitlines() if ln.startswith("Input"))
    return {name: [1, size["c"], size["h"], size["w"]]}


def bench_graph(bench: Path, model: str, **kw):
    return parse_graph(bench / f"{model}.param", input_shapes(bench, model), **kw)


# ------------------------------------------------------------------------ the 35 graphs


def test_every_benchmark_layer_type_is_covered(bench):
    types = Counter()
    for path in bench.glob("*.param"):
        types.update(ln.split()[0] for ln in path.read_text().splitlines()[2:] if ln.strip())
    assert len(MODELS) == 35
    assert set(types) <= ncnn.LAYER_TYPES, set(types) - ncnn.LAYER_TYPES


@pytest.mark.parametrize("model", MODELS or ["(no shared data)"])
def test_benchmark_graph_parses_and_plans(bench, model):
    graph = bench_graph(bench, model)
    assert graph.layers and graph.outputs and graph.inputs
    assert all(la.output_shapes and None not in la.output_shapes for la in graph.layers)
    p = plan(graph, "ncnn-vulkan")
    assert not p.unsupported, Counter(la.op_type for la in p.unsupported)
    assert p.kernels
    # tflite-gpu has no detection layers: those (and only those) are reported unsupported
    other = plan(graph, "tflite-gpu")
    assert {la.op_type for la in other.unsupported} <= ncnn.DETECTION_TYPES
    # what runs as int8 says so: the quantized op names the estimator notes
    if model.endswith("_int8"):
        assert any(la.op_type == "QLinearConv" for la in graph.layers)


@pytest.mark.parametrize("model", MODELS or ["(no shared data)"])
def test_hinted_shapes_equal_propagated_shapes(bench, model):
    data = (bench / f"{model}.param").read_bytes()
    shapes = input_shapes(bench, model)
    hinted = ncnn.parse_param(data, shapes)
    propagated = ncnn.parse_param(data, shapes, use_hints=False)
    assert [la.name for la in hinted.layers] == [la.name for la in propagated.layers]
    for a, b in zip(hinted.layers, propagated.layers, strict=True):
        if a.attr("ncnn_type") in ncnn.DATA_DEPENDENT:
            continue  # boxes after NMS: the hint is one run's count, the propagation a bound
        assert a.output_shapes == b.output_shapes, a.name
        assert a.flops == b.flops


def test_known_flops(bench):
    def gflops(model: str) -> float:
        return sum(la.flops for la in bench_graph(bench, model).layers) / 1e9

    assert gflops("resnet18") == pytest.approx(3.64, rel=0.03)  # 1.82 GMACs at 224
    assert gflops("mobilenet_v2") == pytest.approx(0.61, rel=0.06)  # 0.30 GMACs
    assert gflops("vgg16") == pytest.approx(30.9, rel=0.02)
    assert gflops("resnet18_int8") == gflops("resnet18")


def test_input_size_changes_the_shapes(bench):
    small = bench_graph(bench, "resnet18")
    big = parse_graph(bench / "resnet18.param", {"data": [1, 3, 448, 448]})
    conv1 = next(la for la in big.layers if la.name == "conv1")
    assert conv1.output_shapes == ((1, 64, 224, 224),)
    assert sum(la.flops for la in big.layers) > 3.5 * sum(la.flops for la in small.layers)


def test_input_without_size_asks_for_one(bench):
    with pytest.raises(GraphError, match=r"line 3 .*--input-shape in0=1,3,224,224"):
        parse_graph(bench / "FastestDet.param")


def test_ncnn_vulkan_rules_match_what_the_graphs_show(bench):
    """ncnn fuses activations into conv / inner product (the 9= key) and folds BN; residual
    adds, Swish and HardSigmoid stay standalone (the graphs keep them as layers)."""
    resnet = plan(bench_graph(bench, "resnet18"), "ncnn-vulkan")
    tags = Counter(t for k in resnet.kernels for t in k.fused)
    assert tags["relu"] > 0 and "add" not in tags
    assert {la.op_type for la in resnet.overhead} == {"Add", "Relu", "Softmax"}  # Eltwise, ReLU
    effnet = plan(bench_graph(bench, "efficientnet_b0"), "ncnn-vulkan")
    assert "Swish" in {la.op_type for la in effnet.overhead}
    # the same graph under tflite-gpu links the residual add into a conv
    tfl = plan(bench_graph(bench, "resnet18"), "tflite-gpu")
    assert any("add" in k.fused for k in tfl.kernels)


def test_ncnn_vulkan_rules_against_all_35_graphs(bench):
    """What ncnn fuses is what the graphs show: the 9= activations ride on convolutions and
    inner products; BinaryOp/Eltwise/Concat/Swish/HardSigmoid/GELU layers never merge into a
    kernel. The rules (ncnnoptimize's) would also fuse 16 standalone activations that two old
    graphs keep apart (15 HardSwish in mobilenet_v3, one ReLU in blazeface): pinned here."""
    merged: Counter[str] = Counter()
    for model in MODELS:
        p = plan(bench_graph(bench, model), "ncnn-vulkan")
        graph = {la.name: la for la in bench_graph(bench, model).layers}
        for k in p.kernels:
            for name in k.layers[1:]:
                ncnn_type = graph[name].attr("ncnn_type")
                assert ncnn_type not in ("BinaryOp", "Eltwise", "Concat", "Swish", "GELU"), name
                assert ncnn_type != "HardSigmoid", name
                if ncnn_type in ("ReLU", "Clip", "Sigmoid", "Mish", "HardSwish"):
                    merged[f"{model}:{ncnn_type}"] += 1
    assert merged == {"mobilenet_v3:HardSwish": 15, "blazeface:ReLU": 1}


# ------------------------------------------------------------------------ the format

TINY = """7767517
9 10
Input            data     0 1 data 0=32 1=32 2=3
Convolution      conv1    1 1 data c1 0=16 1=3 4=1 5=1 6=432 9=1
Split            split0   1 2 c1 c1_0 c1_1
ConvolutionDepthWise dw   1 1 c1_0 d1 0=16 1=3 3=2 4=1 5=1 6=144 7=16 9=3 -23310=2,0.0,6.0
Pooling          pool1    1 1 c1_1 p1 0=0 1=3 2=2
Eltwise          add      2 1 d1 p1 s1 0=1
BatchNorm        bn       1 1 s1 b1 0=16
Pooling          gap      1 1 b1 g1 0=1 4=1
InnerProduct     fc       1 1 g1 out 0=10 1=1 2=160
"""


def test_tiny_graph_records():
    g = parse_graph(TINY.encode())
    by = {la.name: la for la in g.layers}
    assert g.inputs == (("data", (1, 3, 32, 32)),) and g.outputs == ("out",)
    conv = by["conv1"]
    assert conv.op_type == "FusedConv" and conv.attr("activation") == "Relu"
    assert conv.inputs == ("data", "conv1.weight", "conv1.bias")
    assert conv.kernel_shape == (3, 3) and conv.pads == (1, 1, 1, 1) and conv.group == 1
    assert conv.output_shapes == ((1, 16, 32, 32),)
    assert conv.flops == 2 * 16 * 32 * 32 * 3 * 9 and conv.params == 432 + 16
    dw = by["dw"]
    assert dw.group == 16 and dw.strides == (2, 2) and dw.output_shapes == ((1, 16, 16, 16),)
    assert dw.attr("activation") == "Clip" and dw.attr("activation_params") == (0.0, 6.0)
    # Split is the same tensor for both readers, as in ONNX
    assert dw.inputs[0] == "c1" and by["pool1"].inputs[0] == "c1"
    # full padding: ncnn pads the tail so the last window fits (32 -> 16, not 15)
    assert by["pool1"].output_shapes == ((1, 16, 16, 16),)
    assert by["pool1"].op_type == "MaxPool" and by["pool1"].pads == (0, 0, 1, 1)
    assert by["add"].op_type == "Add" and by["bn"].op_type == "BatchNormalization"
    assert by["gap"].op_type == "GlobalAveragePool"
    fc = by["fc"]
    assert fc.op_type == "Gemm" and fc.input_shapes[0] == (1, 16) and fc.output_shapes == ((1, 10),)
    assert fc.flops == 2 * 16 * 10 and fc.params == 170
    assert "conv1.weight" in g.initializers and "c1" not in g.initializers


def test_tiny_graph_matches_the_onnx_front_end():
    """The same conv as ONNX: same FLOPs, params and bytes."""
    x = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("c1", TensorProto.FLOAT, None)
    w = helper.make_tensor("W", TensorProto.FLOAT, [16, 3, 3, 3], [0.0] * 432)
    b = helper.make_tensor("B", TensorProto.FLOAT, [16], [0.0] * 16)
    node = helper.make_node("Conv", ["data", "W", "B"], ["c1"], name="conv1", pads=[1, 1, 1, 1])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [w, b]))
    onnx_conv = parse_graph(model).layers[0]
    ncnn_conv = next(la for la in parse_graph(TINY.encode()).layers if la.name == "conv1")
    for field in ("flops", "params", "bytes_moved", "kernel_shape", "pads", "output_shapes"):
        assert getattr(onnx_conv, field) == getattr(ncnn_conv, field), field


def test_tiny_graph_plans_with_ncnn_rules():
    p = plan(parse_graph(TINY.encode()), "ncnn-vulkan")
    kinds = {k.name: (k.kind, k.fused) for k in p.kernels}
    assert kinds["conv1"] == ("conv", ("relu",)) and kinds["dw"] == ("dwconv", ("relu6",))
    assert [la.name for la in p.overhead] == ["add", "bn"]  # BN after an add: not foldable
    assert not p.unsupported


def test_params_arrays_hints_and_extra_lines():
    text = TINY.replace("0=32 1=32 2=3", "-23330=4,3,32,32,3 0=32 1=32 2=3")
    text += "Noop   trailing 1 1 out out2\n"  # past the announced count: ncnn ignores it
    g = parse_graph(text.encode())
    assert [la.name for la in g.layers][-1] == "fc"
    hinted = TINY.replace("6=432 9=1", "6=432 9=1 -23330=4,3,32,32,17")
    with pytest.raises(GraphError, match="line 4 .*hint"):
        parse_graph(hinted.encode())
    g = parse_graph(TINY.replace("6=432 9=1", "6=432 9=1 -23330=4,3,32,32,16").encode())
    assert g.layers[0].output_shapes == ((1, 16, 32, 32),)


def test_input_shape_overrides_the_declared_size():
    g = parse_graph(TINY.encode(), {"data": [1, 3, 64, 64]})
    assert g.inputs == (("data", (1, 3, 64, 64)),)
    assert next(la for la in g.layers if la.name == "fc").input_shapes[0] == (1, 16)
    g = parse_graph(TINY.encode(), {"data": [3, 48, 48]})  # ncnn's (c, h, w) works too
    assert g.inputs == (("data", (1, 3, 48, 48)),)
    with pytest.raises(LetiError, match="Input blobs are"):
        parse_graph(TINY.encode(), {"image": [1, 3, 32, 32]})
    with pytest.raises(LetiError, match="batch 1"):
        parse_graph(TINY.encode(), {"data": [2, 3, 32, 32]})


def _bad(text: str, match: str, **kw) -> None:
    with pytest.raises(GraphError, match=match):
        parse_graph(text.encode(), **kw)


def test_malformed_inputs_name_the_line():
    lines = TINY.splitlines()
    _bad("7767518\n" + "\n".join(lines[1:]), "nor an ncnn .param")
    with pytest.raises(GraphError, match="line 1: not an ncnn .param"):
        ncnn.parse_param("7767518\n" + "\n".join(lines[1:]))
    _bad(TINY.replace("Pooling          pool1    1 1 c1_1 p1", "Pooling pool1 1 1"), "line 7")
    _bad(
        TINY.replace("Eltwise          add", "Frobnicate       add"), "line 8 .*unknown ncnn layer"
    )
    _bad(TINY.replace("2 1 d1 p1 s1", "2 1 d1 p9 s1"), "line 8 .*'p9'.*no earlier layer")
    _bad(TINY.replace("9 10", "10 10"), "line 2: .*announces 10 layers, the file has 9")
    _bad(TINY.replace("9 10", "nine 10"), "line 2: expected")
    _bad(TINY.replace("0=16 1=3 4=1", "0=16 1=x 4=1"), "line 4 .*parameter 1")
    _bad(TINY.replace("6=432", "6"), "line 4: parameter .6. has no value")
    _bad(TINY.replace("-23310=2,0.0,6.0", "-23310=3,0.0,6.0"), "line 6: .*announces 3 values")
    _bad(TINY.replace("0=32 1=32 2=3", "0=1 1=1 2=3"), r"line \d+ .*does not fit")
    _bad("7767517\n", "line 2: missing")
    _bad("", "empty input")
    with pytest.raises(GraphError, match="not UTF-8"):
        parse_graph(b"7767517\n1 1\nInput \xff 0 1 data\n")


def test_param_suffix_without_magic_says_so(tmp_path):
    path = tmp_path / "x.param"
    path.write_text("hello\n")
    with pytest.raises(GraphError, match="x.param: line 1: not an ncnn .param"):
        parse_graph(path)


def test_oversized_param_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.param"
    path.write_text(TINY)
    with pytest.raises(GraphTooLargeError):
        parse_graph(path, max_bytes=100)
    with pytest.raises(GraphTooLargeError):
        parse_graph(TINY.encode(), max_bytes=100)


def test_dispatch_by_suffix_and_by_content(tmp_path):
    (tmp_path / "tiny.param").write_text(TINY)
    (tmp_path / "noext").write_text(TINY)
    a = parse_graph(tmp_path / "tiny.param")
    b = parse_graph(str(tmp_path / "noext"))
    c = parse_graph(TINY.encode())
    assert a.name == "tiny" and b.name == "noext"
    assert (
        [la.flops for la in a.layers]
        == [la.flops for la in b.layers]
        == [la.flops for la in c.layers]
    )
    assert a.sha256 == c.sha256
    assert ncnn.is_param(TINY.encode()) and not ncnn.is_param(b"77675170\n")
    with pytest.raises(GraphError, match="nor an ncnn .param"):
        parse_graph(b"\x00garbage")


# ------------------------------------------------------------------------ CLI, HTTP, client


def test_cli_predict_param(bench, capsys):
    path = str(bench / "resnet18.param")
    rc = cli_main(["predict", path, "--soc", "snapdragon855", "--runtime", "tflite-gpu", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total_ms"] > 0 and not doc["unsupported"]
    rc = cli_main(["predict", path, "--soc", "snapdragon855", "--runtime", "ncnn-vulkan"])
    err = capsys.readouterr().err
    if rc != 0:  # no calibration for this pair: a clean error, no traceback
        assert "ncnn-vulkan" in err and "Traceback" not in err
    rc = cli_main(
        ["predict", str(bench / "FastestDet.param"), "--soc", "snapdragon855", "--json"]
        + ["--runtime", "tflite-gpu", "--input-shape", "in0=1,3,352,352"]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["total_ms"] > 0


def test_http_accepts_a_param_upload(bench):
    from leti.service.app import create_app

    client = create_app({"TESTING": True}).test_client()
    data = (bench / "resnet18.param").read_bytes()
    q = "?soc=snapdragon855&runtime=tflite-gpu&layers=false"
    raw = client.post(
        "/predict" + q, data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert raw.status_code == 200, raw.get_json()
    form = client.post(
        "/predict" + q,
        data={"model": (io.BytesIO(data), "resnet18.param")},
        content_type="multipart/form-data",
    )
    assert form.status_code == 200 and form.get_json()["total_ms"] == raw.get_json()["total_ms"]
    batch = client.post(
        "/predict/batch" + q,
        data={
            "model": [
                (io.BytesIO(data), "a.param"),
                (io.BytesIO(TINY.encode()), "b.param"),
                (io.BytesIO(b"7767517\n1 1\nBogus x 0 1 y\n"), "c.param"),
            ]
        },
        content_type="multipart/form-data",
    )
    res = batch.get_json()["results"]
    assert res[0]["total_ms"] == raw.get_json()["total_ms"] and res[1]["total_ms"] > 0
    assert res[2]["error"] == "invalid_graph" and "line 3" in res[2]["detail"]
    shaped = client.post(
        "/predict" + q + "&input_shape=" + json.dumps({"data": [1, 3, 448, 448]}),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert shaped.status_code == 200 and shaped.get_json()["total_ms"] > raw.get_json()["total_ms"]
    # resnet18's last pool is a fixed 7x7 window: too small an input is a clear 400
    small = client.post(
        "/predict" + q + "&input_shape=" + json.dumps({"data": [1, 3, 112, 112]}),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert small.status_code == 400 and "line 50 (Pooling 'pool5')" in small.get_json()["detail"]


def test_client_uploads_param_as_is(tmp_path):
    path = tmp_path / "tiny.param"
    path.write_text(TINY)
    assert graph_bytes(path) == TINY.encode()
    assert graph_bytes(str(path)) == TINY.encode()
    assert graph_bytes(TINY.encode()) == TINY.encode()
    (tmp_path / "noext").write_text(TINY)
    assert graph_bytes(tmp_path / "noext") == TINY.encode()
