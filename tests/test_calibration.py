"""Few-shot calibration: timings validation, the fit and its prior, persistence, and the
calibrate -> predict round trip through the CLI, `Estimator.load` and the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leti.cli import main as cli_main
from leti.core.errors import CalibrationError
from leti.predict import registry
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.predict.registry import available
from leti.train import calibrate as calibration
from leti.train.calibrate import fit_log_affine, select_and_fit
from leti.train.timings import read_timings
from tests.test_transfer import build_synthetic_transfer

GRAPHS = ("squeezenet", "shufflenet", "bvlc_alexnet", "inception_v1", "resnet50")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return build_synthetic_transfer(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def models(synth_root, tmp_path) -> Path:
    """A fresh copy of the synthetic models dir per test (calibrations are written into it)."""
    root = tmp_path / "models"
    shutil.copytree(synth_root, root)
    return root


def light(light_dir: Path, name: str) -> Path:
    return light_dir / f"light_{name}.onnx"


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("graph,latency_ms\n" + "".join(f"{g},{t}\n" for g, t in rows), "utf-8")
    return path


def base_totals(root: Path, soc: str, runtime: str, graphs: list[Path]) -> np.ndarray:
    from leti.core import socs

    base = uncalibrated_base(socs.resolve(soc), runtime, root)
    return np.array([base.predict(g).total_ms for g in graphs])


# --------------------------------------------------------------------------------------------
# timings CSV


def test_bad_rows_are_reported_not_dropped(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.onnx").write_bytes(name.encode() * 10)
    (tmp_path / "copy_of_a.onnx").write_bytes(b"a" * 10)
    csv = write_csv(
        tmp_path / "timings.csv",
        [
            ("a.onnx", "10"),
            ("b.onnx", "12.5"),
            ("missing.onnx", "3"),
            ("c.onnx", "abc"),
            ("c.onnx", "0"),
            ("c.onnx", "-4"),
            ("c.onnx", "nan"),
            ("a.onnx", "11"),
            ("copy_of_a.onnx", "9"),
            ("", "5"),
            ("c.onnx", "20"),
        ],
    )
    t = read_timings(csv)
    assert [r.graph for r in t.rows] == ["a.onnx", "b.onnx", "c.onnx"]
    assert [r.latency_ms for r in t.rows] == [10.0, 12.5, 20.0]
    reasons = [(r.line, r.reason) for r in t.rejected]
    assert reasons == [
        (4, "missing_file"),
        (5, "non_numeric_latency"),
        (6, "non_positive_latency"),
        (7, "non_positive_latency"),
        (8, "non_numeric_latency"),
        (9, "duplicate"),
        (10, "duplicate"),
        (11, "missing_graph"),
    ]
    report = t.report()
    assert "3 usable" in report and "8 rejected" in report and "line 4" in report


def test_missing_columns_and_missing_file(tmp_path):
    (tmp_path / "t.csv").write_text("model,ms\nx,1\n", "utf-8")
    with pytest.raises(CalibrationError, match="graph,latency_ms"):
        read_timings(tmp_path / "t.csv")
    with pytest.raises(CalibrationError, match="not found"):
        read_timings(tmp_path / "nope.csv")


def test_fewer_than_three_timings_is_refused(tmp_path, light_dir, models, capsys):
    csv = write_csv(
        tmp_path / "t.csv",
        [(str(light(light_dir, "squeezenet")), "10"), (str(light(light_dir, "shufflenet")), "x")],
    )
    with pytest.raises(CalibrationError, match="at least 3 usable timings, got 1"):
        calibration.calibrate("snapdragon888", "ncnn-vulkan", csv, models)
    rc = cli_main(
        ["calibrate", "--soc", "sd888", "--runtime", "ncnn-vulkan", "--measurements", str(csv)]
        + ["--models-dir", str(models)]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "at least 3" in err and "non_numeric_latency" in err
    assert not (models / "snapdragon888" / "ncnn-vulkan" / "calibration.json").exists()


# --------------------------------------------------------------------------------------------
# the fit


def test_scale_is_recovered_exactly():
    base = np.array([3.0, 10.0, 40.0, 7.0])
    fit = fit_log_affine(base, 2.5 * base)
    assert fit.a == pytest.approx(np.log(2.5)) and fit.b == pytest.approx(1.0)
    np.testing.assert_allclose(fit.apply(base), 2.5 * base)
    np.testing.assert_allclose(fit.loo_residuals, 0, atol=1e-9)


def test_slope_shrinks_to_one_with_few_timings():
    rng = np.random.default_rng(0)
    true_b = 1.5

    def fitted_b(k: int, spread: float) -> float:
        x = np.linspace(0, spread, k)
        y = 0.3 + true_b * x + rng.normal(0, 0.05, k)
        return fit_log_affine(np.exp(x), np.exp(y)).b

    few, many = fitted_b(3, 0.5), fitted_b(40, 4.0)
    assert abs(few - 1) < abs(true_b - 1) / 2  # k = 3 over a narrow range: mostly the prior
    assert many == pytest.approx(true_b, abs=0.05)  # enough spread: the data wins
    # no shrinkage at all when the prior is off
    x = np.linspace(0, 0.5, 3)
    assert fit_log_affine(np.exp(x), np.exp(true_b * x), slope_prior=0).b == pytest.approx(true_b)


def test_interval_is_wider_for_small_k():
    rng = np.random.default_rng(1)

    def width(k: int) -> float:
        base = np.exp(rng.uniform(0, 3, k))
        lo, hi = fit_log_affine(base, base * np.exp(rng.normal(0, 0.1, k))).interval
        return hi - lo

    assert width(3) > width(30)
    lo, hi = fit_log_affine([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).interval
    assert lo < 0 < hi  # a perfect fit on 3 timings still leaves the prior's width


def test_profile_replaces_own_base_only_when_clearly_better():
    measured = np.array([10.0, 20.0, 5.0, 40.0, 8.0])
    good = measured * np.exp([0.01, -0.01, 0.0, 0.02, -0.02])
    bad = measured * np.exp([0.3, -0.2, 0.25, -0.3, 0.1])
    assert select_and_fit({"own": bad, "profile:x": good}, measured)[0] == "profile:x"
    assert select_and_fit({"own": good, "profile:x": bad}, measured)[0] == "own"
    slightly = good * np.exp([0.0, 0.005, 0.0, -0.005, 0.0])
    assert select_and_fit({"own": slightly, "profile:x": good}, measured)[0] == "own"


# --------------------------------------------------------------------------------------------
# round trips


def test_cli_calibrate_then_predict_ncnn(tmp_path, light_dir, models, capsys):
    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = base_totals(models, "snapdragon888", "ncnn-vulkan", graphs)
    csv = write_csv(
        tmp_path / "timings.csv",
        [(str(g), repr(float(2.5 * t))) for g, t in zip(graphs, base, strict=True)]
        + [(str(tmp_path / "gone.onnx"), "3.0")],
    )
    rc = cli_main(
        ["calibrate", "--soc", "snapdragon888", "--runtime", "ncnn-vulkan"]
        + ["--measurements", str(csv), "--models-dir", str(models)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "missing_file" in out and "wrote" in out

    doc = json.loads((models / "snapdragon888" / "ncnn-vulkan" / "calibration.json").read_text())
    assert doc["k"] == 4 and doc["base"]["runtime"] == "tflite-gpu"
    assert doc["base"]["provenance"] == "transfer" and doc["base"]["profile"] is None
    assert doc["a"] == pytest.approx(np.log(2.5), abs=1e-6) and doc["b"] == pytest.approx(1.0)
    assert len(doc["timings_sha256"]) == 64 and len(doc["residuals"]) == 4
    assert [r["reason"] for r in doc["rejected"]] == ["missing_file"]

    target = light(light_dir, GRAPHS[4])
    rc = cli_main(
        ["predict", str(target), "--soc", "snapdragon888", "--runtime", "ncnn-vulkan"]
        + ["--json", "--models-dir", str(models)]
    )
    assert rc == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred["provenance"] == "calibrated" and pred["runtime"] == "ncnn-vulkan"
    expected = 2.5 * base_totals(models, "snapdragon888", "ncnn-vulkan", [target])[0]
    assert pred["total_ms"] == pytest.approx(expected, rel=1e-3)
    assert pred["interval_ms"][0] < pred["total_ms"] < pred["interval_ms"][1]


def test_cross_runtime_base_is_the_kernel_sum(tmp_path, light_dir, models):
    """An ncnn-vulkan calibration sits on the tflite-gpu estimator's kernel sum (ncnn fusion),
    without its graph-level corrector; a document written before `base.total` existed keeps
    the corrected total it was fitted on."""
    from leti.core import socs

    soc = socs.resolve("snapdragon888")
    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = uncalibrated_base(soc, "ncnn-vulkan", models)
    corrected = uncalibrated_base(soc, "ncnn-vulkan", models, total=registry.CORRECTED_TOTAL)
    for g in graphs:
        p = base.predict(g)
        assert p.total_ms == pytest.approx(p.kernel_sum_ms)
        assert corrected.predict(g).kernel_sum_ms == pytest.approx(p.kernel_sum_ms)
    assert uncalibrated_base(soc, "tflite-gpu", models).corrector is not None
    assert registry.base_total("tflite-gpu") == registry.CORRECTED_TOTAL

    sums = base_totals(models, "snapdragon888", "ncnn-vulkan", graphs)
    csv = write_csv(
        tmp_path / "t.csv",
        [(str(g), repr(float(2 * t))) for g, t in zip(graphs, sums, strict=True)],
    )
    doc, _ = calibration.calibrate("snapdragon888", "ncnn-vulkan", csv, models)
    assert doc["base"]["total"] == registry.KERNEL_SUM_TOTAL
    target = light(light_dir, GRAPHS[4])
    pred = Estimator.load("snapdragon888", "ncnn-vulkan", models).predict(target)
    assert pred.total_ms == pytest.approx(2 * base.predict(target).kernel_sum_ms, rel=1e-3)

    path = models / "snapdragon888" / "ncnn-vulkan" / "calibration.json"
    old = json.loads(path.read_text())
    del old["base"]["total"]
    path.write_text(json.dumps(old))
    pred = Estimator.load("snapdragon888", "ncnn-vulkan", models).predict(target)
    assert pred.total_ms == pytest.approx(2 * corrected.predict(target).total_ms, rel=1e-3)


def test_transfer_calibration_and_no_stacking(tmp_path, light_dir, models):
    """tflite-gpu calibration on a transfer SoC; the ncnn calibration sits on the uncalibrated
    base, not on the tflite-gpu calibration."""
    graphs = [light(light_dir, g) for g in GRAPHS[:3]]
    base = base_totals(models, "kirin9000", "tflite-gpu", graphs)
    csv3 = write_csv(
        tmp_path / "t3.csv",
        [(str(g), repr(float(3 * t))) for g, t in zip(graphs, base, strict=True)],
    )
    calibration.calibrate("kirin9000", "tflite-gpu", csv3, models)
    ncnn_base = base_totals(models, "kirin9000", "ncnn-vulkan", graphs)
    csv2 = write_csv(
        tmp_path / "t2.csv",
        [(str(g), repr(float(2 * t))) for g, t in zip(graphs, ncnn_base, strict=True)],
    )
    calibration.calibrate("kirin9000", "ncnn-vulkan", csv2, models)

    target = light(light_dir, GRAPHS[3])
    raw = base_totals(models, "kirin9000", "tflite-gpu", [target])[0]
    raw_ncnn = base_totals(models, "kirin9000", "ncnn-vulkan", [target])[0]
    tfl = Estimator.load("kirin9000", "tflite-gpu", models).predict(target)
    ncnn = Estimator.load("kirin9000", "ncnn-vulkan", models).predict(target)
    assert tfl.provenance == ncnn.provenance == "calibrated"
    assert tfl.total_ms == pytest.approx(3 * raw, rel=1e-3)
    assert ncnn.total_ms == pytest.approx(2 * raw_ncnn, rel=1e-3)
    pairs = {(a["soc"], a["runtime"]): a["provenance"] for a in available(models)}
    assert pairs[("kirin9000", "tflite-gpu")] == "calibrated"
    assert pairs[("kirin9000", "ncnn-vulkan")] == "calibrated"
    assert pairs[("rk3568", "tflite-gpu")] == "transfer"


def test_service_round_trip(tmp_path, light_dir, models):
    from leti.service.app import create_app

    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = base_totals(models, "snapdragon888", "ncnn-vulkan", graphs)
    csv = write_csv(
        tmp_path / "t.csv",
        [(str(g), repr(float(1.7 * t))) for g, t in zip(graphs, base, strict=True)],
    )
    calibration.calibrate("snapdragon888", "ncnn-vulkan", csv, models)

    client = create_app({"MODELS_DIR": str(models), "TESTING": True}).test_client()
    target = light(light_dir, GRAPHS[4])
    r = client.post(
        "/predict?soc=snapdragon888&runtime=ncnn-vulkan",
        data=target.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    doc = r.get_json()
    assert doc["provenance"] == "calibrated" and doc["runtime"] == "ncnn-vulkan"
    expected = 1.7 * base_totals(models, "snapdragon888", "ncnn-vulkan", [target])[0]
    assert doc["total_ms"] == pytest.approx(expected, rel=1e-3)
    socs_doc = client.get("/socs").get_json()
    by_id = {s["id"]: s for s in socs_doc["socs"]}
    assert by_id["snapdragon888"]["runtimes"]["ncnn-vulkan"]["provenance"] == "calibrated"
    assert by_id["snapdragon888"]["runtimes"]["tflite-gpu"]["provenance"] == "transfer"


MEASURED = Path(__file__).resolve().parent.parent / "models" / "snapdragon855" / "tflite-gpu"


def test_measured_base_calibration(tmp_path, light_dir, models):
    if not (MEASURED / "manifest.json").is_file():
        pytest.skip("no trained snapdragon855/tflite-gpu model")
    shutil.copytree(MEASURED, models / "snapdragon855" / "tflite-gpu")
    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = base_totals(models, "snapdragon855", "tflite-gpu", graphs)
    csv = write_csv(
        tmp_path / "t.csv",
        [(str(g), repr(float(1.3 * t))) for g, t in zip(graphs, base, strict=True)],
    )
    calibration.calibrate("snapdragon855", "tflite-gpu", csv, models)
    calibration.calibrate("snapdragon855", "ncnn-vulkan", csv, models)
    for runtime in ("tflite-gpu", "ncnn-vulkan"):
        est = Estimator.load("snapdragon855", runtime, models)
        assert est.provenance == "calibrated" and est.runtime == runtime
        doc = json.loads(
            (models / "snapdragon855" / runtime / "calibration.json").read_text("utf-8")
        )
        assert doc["base"]["provenance"] == "measured" and doc["base"]["profile"] is None
    listed = {(a["soc"], a["runtime"]): a["provenance"] for a in available(models)}
    assert listed[("snapdragon855", "tflite-gpu")] == "calibrated"
    assert listed[("snapdragon855", "ncnn-vulkan")] == "calibrated"
