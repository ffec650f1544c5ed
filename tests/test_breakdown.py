"""The readable breakdown: each line names the model's own nodes, their shapes, FLOPs and share;
the service's JSON and its OpenAPI description carry them; `--group-by kernel` and the Chrome
trace (`leti predict --format trace`) read them."""

from __future__ import annotations

import json

import pytest

from leti.cli import main as cli_main
from leti.core.records import LayerTime
from leti.predict.estimator import OVERHEAD_LAYER, Estimator
from tests.helpers import light
from tests.test_ncnn import TINY

# an ncnn graph (the names are ncnn's layer names): conv+relu, depthwise+clip, a residual add
TINY_PARAM = TINY


def _graph(path):
    from leti.frontend.graph import parse_graph

    return parse_graph(path)


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator.load("snapdragon855")


def test_layer_time_keeps_its_old_constructor():
    lt = LayerTime("n0", "Conv", "conv", 1.0)
    assert lt.priced == "measured" and lt.layers == () and lt.input_shapes == ()
    assert lt.flops == 0 and lt.share == 0.0


def test_each_line_names_its_nodes_with_shapes_flops_and_share(est, light_dir):
    path = light(light_dir, "resnet50")
    pred = est.predict(path)
    plan = est.plan(path)
    kernels = pred.layers[: len(plan.kernels)]
    # every kernel lists the ONNX nodes it fused, main node first
    assert [lt.layers for lt in kernels] == [k.layers for k in plan.kernels]
    first = kernels[0]
    assert first.op == "Conv" and first.kernel == "conv+relu" and len(first.layers) == 3
    assert first.input_shapes == ((1, 3, 224, 224),)  # the weights are not inputs
    assert first.output_shapes == ((1, 64, 112, 112),)
    assert first.flops >= plan.kernels[0].flops > 0
    assert first.share == pytest.approx(first.ms / pred.total_ms)
    # standalone ops carry their own node, shapes and FLOPs; the graph-level rest has none
    standalone = [lt for lt in pred.layers if lt.kernel == "standalone"]
    assert standalone and all(lt.layers == (lt.name,) and lt.output_shapes for lt in standalone)
    rest = pred.layers[-1]
    assert rest.name == OVERHEAD_LAYER and rest.priced == "graph" and rest.layers == ()
    assert rest.input_shapes == () and rest.flops == 0
    # the lines still add up to the total, so the shares add up to one
    assert sum(lt.ms for lt in pred.layers) == pytest.approx(pred.total_ms)
    assert sum(lt.share for lt in pred.layers) == pytest.approx(1.0)


def test_batch_and_plan_paths_agree(est, light_dir):
    path = light(light_dir, "squeezenet")
    one = est.predict(path)
    [many] = est.predict_many([path])
    assert many.layers == one.layers
    plan = est.plan(path)
    bare = est.predict_plan(plan)  # no graph: the kernels' names kept, their shapes unknown
    assert bare.total_ms == one.total_ms
    assert [lt.layers for lt in bare.layers] == [lt.layers for lt in one.layers]
    assert all(lt.input_shapes == () for lt in bare.layers[: len(plan.kernels)])
    assert est.predict_plan(plan, _graph(path)).layers == one.layers


def test_ncnn_lines_carry_ncnn_layer_names(est):
    pred = est.predict(TINY_PARAM.encode())
    names = {n for lt in pred.layers for n in lt.layers}
    assert {"conv1", "dw", "fc"} <= names
    conv = next(lt for lt in pred.layers if lt.name == "conv1")
    assert conv.input_shapes == ((1, 3, 32, 32),) and conv.output_shapes == ((1, 16, 32, 32),)


def test_json_document_is_additive_and_plain(est, light_dir):
    doc = est.predict(light(light_dir, "squeezenet")).to_dict()
    line = doc["layers"][0]
    assert {"name", "op", "kernel", "ms", "priced"} <= set(line)
    assert isinstance(line["layers"], list) and isinstance(line["input_shapes"][0], list)
    assert isinstance(line["flops"], int) and 0 < line["share"] < 1
    assert json.loads(json.dumps(doc)) == doc


def test_service_answer_matches_the_openapi_layer_schema(light_dir):
    from leti.service.app import create_app

    client = create_app({"TESTING": True}).test_client()
    data = light(light_dir, "squeezenet").read_bytes()
    r = client.post(
        "/predict?soc=snapdragon855",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["LayerTime"]
    for line in r.get_json()["layers"]:
        assert set(schema["required"]) <= set(line) <= set(schema["properties"])
        for shape in line["input_shapes"] + line["output_shapes"]:
            assert shape is None or all(isinstance(d, int) for d in shape)


def test_group_by_kernel(light_dir, capsys):
    path = str(light(light_dir, "resnet50"))
    assert cli_main(["predict", path, "--soc", "snapdragon855", "--group-by", "kernel"]) == 0
    out = capsys.readouterr().out
    assert "kernel kinds:" in out and " conv " in out and "standalone" in out
    rc = cli_main(["predict", path, "--soc", "sd855", "--group-by", "kernel", "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    groups = {g["kernel"]: g for g in doc["groups"]}
    assert {"conv", "fc", "graph"} <= set(groups)
    assert sum(g["ms"] for g in groups.values()) == pytest.approx(doc["total_ms"], rel=1e-3)
    assert groups["conv"]["count"] == sum(
        1 for lt in doc["layers"] if lt["kernel"].split("+")[0] == "conv"
    )


def test_table_shows_nodes_shapes_and_shares(light_dir, capsys):
    path = str(light(light_dir, "resnet50"))
    assert cli_main(["predict", path, "--soc", "snapdragon855", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "end-to-end:" in out and "top 3 of" in out
    assert "share" in out and "priced" in out and "->" in out and "%" in out


def test_chrome_trace(light_dir, capsys):
    paths = [str(light(light_dir, g)) for g in ("squeezenet", "resnet50")]
    rc = cli_main(["predict", *paths, "--soc", "snapdragon855,kirin9000", "--format", "trace"])
    assert rc == 0
    trace = json.loads(capsys.readouterr().out)
    events = trace["traceEvents"]
    meta = [e for e in events if e["ph"] == "M"]
    spans = [e for e in events if e["ph"] == "X"]
    processes = {e["pid"] for e in meta if e["name"] == "process_name"}
    assert len(processes) == 4  # one per (graph, SoC)
    assert {e["pid"] for e in spans} == processes
    for pid in processes:
        mine = [e for e in spans if e["pid"] == pid]
        assert mine[0]["ts"] == 0
        for a, b in zip(mine, mine[1:], strict=False):  # laid end to end, in order
            assert b["ts"] == pytest.approx(a["ts"] + a["dur"], abs=0.01)
        for e in mine:
            assert e["dur"] >= 0 and isinstance(e["tid"], int) and e["name"]
            assert {"op", "input_shapes", "output_shapes", "flops", "ms", "priced"} <= set(
                e["args"]
            )
        label = next(e for e in meta if e["pid"] == pid and e["name"] == "process_name")
        total_ms = float(label["args"]["name"].rsplit(": ", 1)[1].split()[0])
        assert sum(e["dur"] for e in mine) / 1000 == pytest.approx(total_ms, rel=1e-3)
    # graph order: the first kernel of the model comes first, the graph-level rest last
    first = [e for e in spans if e["pid"] == min(processes)]
    assert first[0]["args"]["op"] == "Conv" and first[-1]["name"] == OVERHEAD_LAYER
