"""`leti predict` over many graphs and SoCs, and the command line's robustness: failures that
do not stop the others, validated flags, hints in the command line's own syntax, a quiet exit
on a closed pipe, progress bars on stderr, and `leti evaluate` / `fit` without measurements."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leti.cli import CSV_COLUMNS
from leti.cli import main as cli_main
from tests.conftest import REPO
from tests.helpers import light

SOCS = "snapdragon855,kirin9000"


@pytest.fixture()
def zoo(tmp_path, light_dir) -> Path:
    """A folder of three graphs (and a file that is no graph)."""
    folder = tmp_path / "zoo"
    folder.mkdir()
    for name in ("squeezenet", "shufflenet", "inception_v1"):
        shutil.copy(light(light_dir, name), folder / f"{name}.onnx")
    (folder / "README.txt").write_text("not a graph")
    return folder


def symbolic_model(path: Path) -> Path:
    """A Relu whose input has symbolic H and W: no shape without the caller's."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y])
    onnx.save(helper.make_model(graph), path)
    return path


def csv_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


# ------------------------------------------------------------------------ sweeps


def test_folder_glob_and_files_on_several_socs_as_csv(zoo, light_dir, capsys):
    pattern = str(light_dir / "light_res*.onnx")  # quoted: the command expands it
    rc = cli_main(["predict", str(zoo), pattern, "--soc", SOCS, "--format", "csv"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ",".join(CSV_COLUMNS)
    rows = csv_rows(out)
    graphs = {Path(r["graph"]).name for r in rows}
    assert graphs == {
        "squeezenet.onnx",
        "shufflenet.onnx",
        "inception_v1.onnx",
        "light_resnet50.onnx",
    }
    assert len(rows) == 4 * 2 and {r["soc"] for r in rows} == {"snapdragon855", "kirin9000"}
    for r in rows:
        lo, total, hi = (float(r[k]) for k in ("interval_low_ms", "total_ms", "interval_high_ms"))
        assert 0 < lo < total < hi and not r["error"]


def test_same_numbers_as_one_graph_at_a_time(zoo, capsys):
    from leti.predict.estimator import Estimator

    rc = cli_main(["predict", str(zoo), "--soc", "snapdragon855", "--format", "jsonl"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    est = Estimator.load("snapdragon855")
    for doc in lines:
        one = est.predict(doc["graph"]).to_dict()
        assert doc == {"graph": doc["graph"], **one}


def test_a_failing_graph_does_not_stop_the_others(zoo, tmp_path, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx at all")
    args = ["predict", str(zoo / "squeezenet.onnx"), str(bad), str(zoo / "shufflenet.onnx")]
    rc = cli_main([*args, "--soc", SOCS, "--format", "csv"])
    assert rc == 1
    captured = capsys.readouterr()
    rows = csv_rows(captured.out)
    assert len(rows) == 6
    failed = [r for r in rows if r["error"]]
    assert {Path(r["graph"]).name for r in failed} == {"broken.onnx"} and len(failed) == 2
    assert all(r["error"] == "invalid_graph" and "not a valid ONNX" in r["detail"] for r in failed)
    assert all(float(r["total_ms"]) > 0 for r in rows if not r["error"])
    # said once on stderr, not once per SoC, and no traceback
    assert captured.err.count("broken.onnx") == 1 and "Traceback" not in captured.err

    rc = cli_main([*args, "--soc", "snapdragon855", "--format", "jsonl"])
    assert rc == 1
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [("error" in d) for d in docs] == [False, True, False]
    assert docs[1]["error"] == "invalid_graph" and docs[1]["soc"] == "snapdragon855"

    rc = cli_main(["predict", str(bad), "--soc", "snapdragon855"])  # all failed
    assert rc == 2 and "not a valid ONNX" in capsys.readouterr().err


def test_soc_all_is_every_soc_that_answers_on_the_runtime(zoo, capsys):
    from leti.predict.registry import available

    expected = {a["soc"] for a in available() if a["runtime"] == "tflite-gpu"}
    path = str(zoo / "squeezenet.onnx")
    assert cli_main(["predict", path, "--soc", "all", "--format", "csv"]) == 0
    rows = csv_rows(capsys.readouterr().out)
    assert {r["soc"] for r in rows} == expected and len(rows) == len(expected)
    assert {r["runtime"] for r in rows} == {"tflite-gpu"}


def test_json_one_answer_is_the_service_document_many_are_a_list(zoo, capsys):
    path = str(zoo / "squeezenet.onnx")
    assert cli_main(["predict", path, "--soc", "snapdragon855", "--json"]) == 0
    legacy = json.loads(capsys.readouterr().out)
    assert cli_main(["predict", path, "--soc", "snapdragon855", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == legacy and "graph" not in legacy
    assert cli_main(["predict", str(zoo), "--soc", SOCS, "--format", "json", "--no-layers"]) == 0
    docs = json.loads(capsys.readouterr().out)
    assert isinstance(docs, list) and len(docs) == 6
    assert all("graph" in d and "layers" not in d for d in docs)


def test_table_of_a_sweep_is_a_graph_by_soc_grid(zoo, capsys):
    assert cli_main(["predict", str(zoo), "--soc", SOCS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["graph", "snapdragon855", "kirin9000"]
    assert {line.split()[0] for line in out[1:4]} == {
        "squeezenet.onnx",
        "shufflenet.onnx",
        "inception_v1.onnx",
    }


def test_unknown_soc_in_a_list_stops_before_any_work(zoo, capsys):
    rc = cli_main(["predict", str(zoo), "--soc", "snapdragon855,nope"])
    assert rc == 2 and "known SoCs" in capsys.readouterr().err


def test_empty_folder_and_unmatched_pattern_are_clear_errors(tmp_path, capsys):
    assert cli_main(["predict", str(tmp_path), "--soc", "snapdragon855"]) == 2
    assert "no .onnx or .param file" in capsys.readouterr().err
    assert cli_main(["predict", str(tmp_path / "*.onnx"), "--soc", "snapdragon855"]) == 2
    assert "no file matches" in capsys.readouterr().err


# ------------------------------------------------------------------------ progress


def test_progress_only_when_asked_or_on_a_terminal(zoo, capsys):
    path = str(zoo / "squeezenet.onnx")
    assert cli_main(["predict", path, "--soc", SOCS, "--format", "csv"]) == 0
    assert "pricing" not in capsys.readouterr().err  # stderr is no terminal here
    assert cli_main(["predict", path, "--soc", SOCS, "--format", "csv", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "pricing" in captured.err and "graph/s" in captured.err
    assert "pricing" not in captured.out and len(csv_rows(captured.out)) == 2


def test_fit_shows_progress_per_soc(monkeypatch, tmp_path, capsys):
    from leti.evaluate import accuracy
    from leti.train import fit

    pairs = [("snapdragon855", "tflite-gpu"), ("exynos9820", "tflite-gpu")]
    monkeypatch.setattr(accuracy, "measured_pairs", lambda root=None: pairs)
    fitted = []

    def fake_fit(soc, runtime, root, measurements, cv_metrics):
        fitted.append(soc)
        return {"model_version": f"{soc}-v", "training": {"graphs": 3}}

    monkeypatch.setattr(fit, "fit_and_save", fake_fit)
    args = ["fit", "--no-cv", "--no-transfer", "--models-dir", str(tmp_path), "--progress"]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert fitted == ["snapdragon855", "exynos9820"]
    assert "fitting" in captured.err and "2/2" in captured.err
    assert "snapdragon855/tflite-gpu: snapdragon855-v (3 graphs)" in captured.out


def test_evaluate_shows_progress_per_soc(monkeypatch, tmp_path, capsys):
    from leti.evaluate import accuracy, accuracy_report

    pairs = [("snapdragon855", "tflite-gpu"), ("exynos9820", "tflite-gpu")]
    monkeypatch.setattr(accuracy, "measured_pairs", lambda root=None: pairs)
    monkeypatch.setattr(accuracy, "available_methods", lambda: ["leti"])
    score = {"acc10": 0.5}

    def fake_many(tasks, jobs):
        for t in tasks:
            yield SimpleNamespace(
                soc=t.soc,
                runtime=t.runtime,
                methods=["leti"],
                scores={"leti": score, "flops": score},
                cv=SimpleNamespace(coverage={"leti": 0.9}),
                results={},
                elapsed_s=1.0,
            )

    monkeypatch.setattr(accuracy, "evaluate_many", fake_many)
    monkeypatch.setattr(accuracy_report, "write_accuracy_report", lambda *a: False)
    out = tmp_path / "accuracy.md"
    args = ["evaluate", "--skip", "nb201", "--skip", "extrapolation", "--out", str(out)]
    assert cli_main([*args, "--progress"]) == 0
    captured = capsys.readouterr()
    assert "evaluating" in captured.err and "2/2" in captured.err
    assert "snapdragon855" in captured.err and "exynos9820" in captured.err


def test_evaluate_transfer_shows_its_steps(monkeypatch, tmp_path, capsys):
    from leti.evaluate import accuracy, reports, transfer

    monkeypatch.setattr(accuracy, "measured_pairs", lambda root=None: [("a", "tflite-gpu")])
    report = SimpleNamespace(headline=lambda: {"loso_acc10": 0.25})
    monkeypatch.setattr(transfer, "run", lambda root=None: (report, None, None))
    monkeypatch.setattr(reports, "write_transfer_report", lambda rep, out: None)
    args = ["evaluate", "--transfer", "--out", str(tmp_path / "t.md"), "--progress"]
    assert cli_main(args) == 0
    captured = capsys.readouterr()
    assert "leave-one-SoC-out" in captured.err and "2/2" in captured.err
    assert "loso_acc10: 0.250" in captured.out


# ------------------------------------------------------------------------ robustness


@pytest.mark.parametrize("top", ["0", "-3", "many"])
def test_top_is_validated(zoo, top, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["predict", str(zoo / "squeezenet.onnx"), "--soc", "sd855", "--top", top])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--top" in err and ("at least 1" in err or "whole number" in err)


def test_symbolic_input_hint_in_each_surface_syntax(tmp_path, capsys):
    from leti.core.errors import SymbolicShapeError
    from leti.frontend.graph import parse_graph
    from leti.service.parsing import http_message

    path = symbolic_model(tmp_path / "sym.onnx")
    # the command line
    assert cli_main(["predict", str(path), "--soc", "snapdragon855"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape x=1,3,224,224" in err and "input_shapes" not in err
    # with the flag, it prices
    rc = cli_main(["predict", str(path), "--soc", "sd855", "--input-shape", "x=1,3,64,64"])
    assert rc == 0
    # a wrong rank is said in the flag's terms too
    assert cli_main(["predict", str(path), "--soc", "sd855", "--input-shape", "x=1,3"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape x has rank 2" in err and "input_shapes" not in err
    # Python keeps the keyword argument's name
    with pytest.raises(SymbolicShapeError) as info:
        parse_graph(path)
    assert "input_shapes={'x': [...]}" in info.value.message
    # HTTP names the request field
    detail = http_message(info.value)
    assert 'input_shape={"x": [1, 3, 224, 224]}' in detail and "input_shapes" not in detail


def test_ncnn_hint_over_http_names_only_the_field():
    from leti.core.errors import LetiError
    from leti.service.parsing import http_message

    exc = LetiError(
        "the Input layer declares no size (0=w 1=h 2=c): give it, e.g. `leti predict "
        '--input-shape in0=1,3,224,224`, or input_shape={"in0": [1, 3, 224, 224]} over HTTP '
        "(the size the model was built for)"
    )
    detail = http_message(exc)
    assert 'give it, e.g. input_shape={"in0": [1, 3, 224, 224]} (the size' in detail
    assert "leti predict" not in detail


def test_closed_pipe_exits_quietly(zoo):
    """`leti predict ... | head -1`: the reader goes away; no traceback, no noise."""
    cmd = ["predict", str(zoo / "squeezenet.onnx"), "--soc", "snapdragon855", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "leti", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.close()  # before the first line is written
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert "Traceback" not in text and "BrokenPipe" not in text and "Exception" not in text
    assert proc.returncode == 141


def test_evaluate_without_measurements_says_what_to_import(tmp_path, capsys):
    empty = tmp_path / "measurements"
    out = tmp_path / "report" / "accuracy.md"
    base = ["--measurements-dir", str(empty), "--out", str(out)]
    for args in (["evaluate", *base], ["evaluate", "--transfer", *base]):
        assert cli_main(args) == 2
        err = capsys.readouterr().err
        assert "leti import mobile-ml-benchmark" in err and str(empty) in err
        assert "Traceback" not in err
    assert not out.parent.exists()  # nothing written
    assert cli_main(["fit", "--measurements-dir", str(empty), "--models-dir", str(tmp_path)]) == 2
    assert "leti import mobile-ml-benchmark" in capsys.readouterr().err


def test_client_strips_weights_before_any_size_check(tmp_path, monkeypatch):
    """A model over LETI_MAX_GRAPH_MB because of its weights uploads as its small graph."""
    from leti.client import graph_bytes

    w = numpy_helper.from_array(np.zeros((256, 256, 3, 3), np.float32), "w")  # 2.4 MB
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 14, 14])
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [w]))
    path = tmp_path / "big.onnx"
    onnx.save(model, path)
    assert os.path.getsize(path) > 2_000_000
    monkeypatch.setenv("LETI_MAX_GRAPH_MB", "1")
    for source in (path, path.read_bytes()):
        blob = graph_bytes(source)
        assert len(blob) < 10_000
        stripped = onnx.load_model_from_string(blob)
        assert list(stripped.graph.initializer[0].dims) == [256, 256, 3, 3]
