"""The ncnn-vulkan calibrations shipped from the public ncnn benchmark: the named SoCs answer for
all 35 exact `.param` graphs out of the box, and say where their numbers come from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from leti.measurements import ncnn_benchmark as bench
from leti.predict.estimator import Estimator
from leti.predict.registry import available
from leti.train.benchmark import MIN_MODELS, linked_targets, ship_calibrations
from leti.train.calibrate import MOSTLY_ANALYTIC_REASON
from tests.conftest import SHARED

DATA = SHARED / "data" / "ncnn-benchmark"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    if not (DATA / bench.MODELS_DIR / bench.INPUTS_FILE).is_file():
        pytest.skip(f"ncnn benchmark not found at {DATA} (set LETI_SHARED_DIR)")
    root = tmp_path_factory.mktemp("models") / "models"
    shutil.copytree(REPO / "models", root)
    for cal in root.glob("*/ncnn-vulkan/calibration.json"):
        cal.unlink()  # rebuilt below from the table, not read from the commit
    ship_calibrations(DATA, root)
    return root


def _graphs() -> list[tuple[Path, dict[str, list[int]]]]:
    return [
        (p, {bench.input_blob(p): shape}) for p, shape in bench.load_param_graphs(DATA).values()
    ]


@pytest.mark.parametrize("soc", ["snapdragon888", "rk3568"])
def test_every_benchmark_graph_predicts_calibrated_with_nothing_unsupported(shipped, soc):
    est = Estimator.load(soc, "ncnn-vulkan", shipped)
    assert est.provenance == "calibrated"
    graphs = _graphs()
    assert len(graphs) == 35
    for path, shapes in graphs:
        pred = est.predict(path, shapes)
        assert pred.provenance == "calibrated" and not pred.unsupported, path.name
        assert pred.interval_ms[0] < pred.total_ms < pred.interval_ms[1], path.name
        assert any("public end-to-end timings of the ncnn benchmark" in n for n in pred.notes)
    if soc == "rk3568":
        assert any("RK3566" in n and "same Mali-G52" in n for n in pred.notes)


def test_the_calibration_names_its_source(shipped):
    doc = json.loads((shipped / "snapdragon888/ncnn-vulkan/calibration.json").read_text())
    src = doc["source"]
    assert src["section"].startswith("Qualcomm Snapdragon 888") and src["models"] == 35
    assert src["gpu_name"] == "Adreno (TM) 660" and "BSD-3" in src["licence"]
    assert len(src["data_sha256"]) == 64 and src["data_sha256"] == bench.data_sha256(DATA)
    # the int8 graphs (layers on the CPU, priced analytically) are kept out of the fit, named:
    # out of the map half only when the transfer manifest has a class prior (they set the
    # class half's cpu_fallback weight), else rejected
    if doc["class_scales"]:
        kept_out = {r["graph"] for r in doc["class_scales"]["class_only"]}
        assert doc["k"] == 35 and not doc["rejected"]
    else:
        kept_out = {r["graph"] for r in doc["rejected"] if r["reason"] == MOSTLY_ANALYTIC_REASON}
        assert doc["k"] + len(kept_out) == 35
    assert len(kept_out) == 8 and all("int8" in g for g in kept_out)


def test_kirin9000_borrows_the_valhall_gpus_and_stays_transfer(shipped):
    est = Estimator.load("kirin9000", "ncnn-vulkan", shipped)
    assert est.provenance == "transfer"
    path, shapes = _graphs()[0]
    pred = est.predict(path, shapes)
    assert pred.provenance == "transfer"
    assert any("no public Kirin 9000" in n for n in pred.notes)
    doc = json.loads((shipped / "kirin9000/ncnn-vulkan/calibration.json").read_text())
    assert set(doc["source"]["borrowed_from"]) <= {
        "mali-g610-mc4",
        "mali-g720-mc12",
        "mali-g720-mc10",
    }
    assert set(doc["leave_one_gpu_out"]) == set(doc["source"]["borrowed_from"])
    lo, hi = doc["interval_log_quantiles"]
    assert lo < 0 < hi
    listed = {(a["soc"], a["runtime"]): a for a in available(shipped)}
    assert listed[("kirin9000", "ncnn-vulkan")]["provenance"] == "transfer"
    assert listed[("snapdragon888", "ncnn-vulkan")]["provenance"] == "calibrated"
    cal = listed[("snapdragon888", "ncnn-vulkan")]["calibration"]
    sd888 = json.loads((shipped / "snapdragon888/ncnn-vulkan/calibration.json").read_text())
    assert cal["k"] == (35 if sd888["class_scales"] else 27)
    assert cal["base"]["runtime"] == "tflite-gpu" and cal["why"]
    assert cal["source"]["section"].startswith("Qualcomm Snapdragon 888")
    assert "mali-g720-mc12" in listed[("kirin9000", "ncnn-vulkan")]["calibration"]["why"]


def test_linked_sections_have_enough_models():
    if not (DATA / bench.CSV_NAME).is_file():
        pytest.skip(f"ncnn benchmark not found at {DATA} (set LETI_SHARED_DIR)")
    linked = {soc.id: t for soc, t in linked_targets(DATA)}
    assert set(linked) == {"snapdragon888", "rk3568"}
    assert all(len(t.timings) >= MIN_MODELS for t in linked.values())
    assert linked["rk3568"].gpu_name == "Mali-G52"
