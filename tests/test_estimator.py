"""The bundled models answer through the one answer format, and bad input fails loudly."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from leti import Estimator
from leti.cli import main as cli_main
from leti.core.errors import GraphError, UnknownRuntimeError, UnknownSocError
from leti.core.records import Prediction
from leti.predict.estimator import OVERHEAD_LAYER
from leti.predict.registry import available
from tests.helpers import assert_no_pickle as _assert_no_pickle

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
MEASURED = [
    "snapdragon855",
    "snapdragon710",
    "exynos9820",
    "helio-p35",
    "apple-a10",
    "apple-a12",
]
ANSWER_KEYS = {
    "soc",
    "runtime",
    "total_ms",
    "interval_ms",
    "layers",
    "unsupported",
    "model_version",
    "provenance",
    "kernel_sum_ms",
    "notes",
}


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator.load("snapdragon855", models_dir=MODELS)


def test_bundled_models_exist_for_the_six_measured_socs():
    for soc in MEASURED:
        folder = MODELS / soc / "tflite-gpu"
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["data"]["sources"], soc
        assert manifest["cv"]["leti"]["n"] >= 60
        _assert_no_pickle(folder)
    listed = {(a["soc"], a["runtime"]) for a in available(MODELS)}
    assert {(s, "tflite-gpu") for s in MEASURED} <= listed


def test_predict_accepts_path_bytes_and_proto(est, light_dir):
    path = light_dir / "light_resnet50.onnx"
    a = est.predict(path)
    b = est.predict(path.read_bytes())
    c = est.predict(onnx.load(path, load_external_data=False))
    assert a.total_ms == pytest.approx(b.total_ms) == pytest.approx(c.total_ms)
    assert 1.0 < a.total_ms < 1000.0
    assert a.interval_ms[0] < a.total_ms < a.interval_ms[1]
    assert a.provenance == "measured" and a.model_version.startswith("snapdragon855-tflite-gpu")


LAYER_KEYS = {"name", "op", "kernel", "ms", "priced"} | {
    "layers", "input_shapes", "output_shapes", "flops", "share"  # the breakdown's nodes
}  # fmt: skip


def test_answer_format_and_layers_add_up(est, light_models):
    for path in light_models:
        doc = est.predict(path).to_dict()
        assert set(doc) == ANSWER_KEYS
        total = sum(layer["ms"] for layer in doc["layers"])
        assert total == pytest.approx(doc["total_ms"], rel=1e-3, abs=1e-3)
        assert all(set(layer) == LAYER_KEYS for layer in doc["layers"])
        assert {layer["priced"] for layer in doc["layers"]} <= {"measured", "analytic", "graph"}
        assert all(layer["ms"] > 0 for layer in doc["layers"] if layer["name"] != OVERHEAD_LAYER)


def test_bigger_graph_is_slower(est, light_dir):
    small = est.predict(light_dir / "light_squeezenet.onnx").total_ms
    big = est.predict(light_dir / "light_vgg19.onnx").total_ms
    assert big > 5 * small


def test_unsupported_ops_are_reported_not_priced(est):
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], [0.0] * 216)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Hardmax", ["c"], ["h1"], name="hm1"),
        helper.make_node("Hardmax", ["h1"], ["y"], name="hm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pred = est.predict(model)
    assert [(u.op, u.count) for u in pred.unsupported] == [("Hardmax", 2)]
    assert set(pred.unsupported[0].names) == {"hm1", "hm2"}
    assert any("unsupported" in n for n in pred.notes)
    assert [lt.name for lt in pred.layers if lt.name != OVERHEAD_LAYER] == ["conv"]


def test_bad_input_errors(est):
    with pytest.raises(UnknownSocError, match="snapdragon888"):
        Estimator.load("exynos-1", models_dir=MODELS)
    with pytest.raises(UnknownRuntimeError, match="tflite-gpu"):
        Estimator.load("snapdragon855", runtime="coreml", models_dir=MODELS)
    with pytest.raises(GraphError):
        est.predict(b"\x08\x01garbage" * 10)
    results = est.predict_many(
        [b"not onnx", onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))]
    )
    assert all(isinstance(r, GraphError) for r in results)


def test_predict_many_keeps_order(est, light_models):
    results = est.predict_many([*light_models[:2], b"junk", light_models[2]])
    assert [type(r).__name__ for r in results] == [
        "Prediction",
        "Prediction",
        "GraphError",
        "Prediction",
    ]
    assert isinstance(results[0], Prediction)


def test_cli_predict_json_is_the_answer_document(est, light_dir, capsys):
    path = light_dir / "light_squeezenet.onnx"
    rc = cli_main(["predict", str(path), "--soc", "SD855", "--json", "--models-dir", str(MODELS)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(json.dumps(est.predict(path).to_dict()))


def test_cli_reports_unknown_soc_clearly(light_dir, capsys):
    rc = cli_main(["predict", str(light_dir / "light_squeezenet.onnx"), "--soc", "nope"])
    assert rc == 2
    assert "known SoCs" in capsys.readouterr().err
