"""Few-shot calibration: timings validation, the fit and its prior, the choice between the
log-affine and the offset form, persistence, and the calibrate -> predict round trip through
the CLI, `Estimator.load` and the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from leti.cli import main as cli_main
from leti.core.errors import CalibrationError, LetiError
from leti.models import uncertainty
from leti.models.calibration import OFFSET_FLOOR, CalibrationMap
from leti.predict import registry
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.predict.registry import available
from leti.train import calibrate as calibration
from leti.train.calibrate import choose_form, fit_log_affine, fit_offset, select_and_fit
from leti.train.timings import read_timings
from tests.helpers import light, write_timings_csv
from tests.test_transfer import build_synthetic_transfer

GRAPHS = ("squeezenet", "shufflenet", "bvlc_alexnet", "inception_v1", "resnet50")
#: More small graphs of the same onnx test set, held out of the offset-form calibrations.
MORE_GRAPHS = ("inception_v2", "densenet121", "zfnet512")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return build_synthetic_transfer(tmp_path_factory.mktemp("models"))


@pytest.fixture()
def models(synth_root, tmp_path) -> Path:
    """A fresh copy of the synthetic models dir per test (calibrations are written into it)."""
    root = tmp_path / "models"
    shutil.copytree(synth_root, root)
    return root


def base_totals(root: Path, soc: str, runtime: str, graphs: list[Path]) -> np.ndarray:
    from leti.core import socs

    base = uncalibrated_base(socs.resolve(soc), runtime, root)
    return np.array([base.predict(g).total_ms for g in graphs])


def timings_with_a_mostly_analytic_graph(
    tmp_path: Path, light_dir: Path, models: Path
) -> tuple[Path, list[tuple[str, str]], np.ndarray]:
    """(the odd graph, timing rows, base totals) on snapdragon888/ncnn-vulkan: four light
    graphs timed at 2.5x their base, and a 3-D conv (priced mostly analytically, like the int8
    graphs ncnn runs on the CPU) at 40x, last."""
    import onnx

    from tests.test_kernels import _conv3d

    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    odd = tmp_path / "conv3d.onnx"
    onnx.save(_conv3d(frames=16, kd=3), odd)
    base = base_totals(models, "snapdragon888", "ncnn-vulkan", [*graphs, odd])
    rows = [(str(g), repr(float(2.5 * t))) for g, t in zip(graphs, base[:-1], strict=True)]
    rows.append((str(odd), repr(float(40.0 * base[-1]))))
    return odd, rows, base


# --------------------------------------------------------------------------------------------
# timings CSV


def test_bad_rows_are_reported_not_dropped(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.onnx").write_bytes(name.encode() * 10)
    (tmp_path / "copy_of_a.onnx").write_bytes(b"a" * 10)
    csv = write_timings_csv(
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
    csv = write_timings_csv(
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


def test_one_timing_far_off_the_trend_does_not_tilt_a_map_fitted_on_many():
    """From ROBUST_MIN_TIMINGS timings on, the map is a Huber fit: a graph the runtime runs on
    a slow path (30x its base) barely moves the others' answers; least squares would tilt the
    map towards it. With fewer timings the fit stays least squares (no outlier to tell)."""
    k = calibration.ROBUST_MIN_TIMINGS + 4
    base = np.geomspace(2.0, 200.0, k)
    y = 1.7 * base
    y[k // 2] *= 30.0
    fit = fit_log_affine(base, y)
    clean = np.arange(k) != k // 2
    np.testing.assert_allclose(fit.apply(base[clean]), y[clean], rtol=0.1)
    plain = calibration._ab_weighted(np.log(base), np.log(y), calibration.SLOPE_PRIOR, np.ones(k))
    off = np.exp(plain[0] + plain[1] * np.log(base[clean])) / y[clean] - 1
    assert np.abs(off).max() > 0.3  # what least squares would have answered
    few = calibration.ROBUST_MIN_TIMINGS - 1
    x, t = np.log(base[:few]), np.log(y[:few])
    assert calibration._ab(x, t, 0.3) == calibration._ab_weighted(x, t, 0.3, np.ones(few))


def test_above_the_timed_range_the_map_grows_with_the_base():
    """A slope b < 1 is what the timings showed over their range (a fixed cost); beyond the
    largest timed base the answer is proportional to the base, never a plateau. A document
    written before the range was stored answers with the plain map."""
    base = np.array([1.0, 2.0, 4.0, 6.0, 10.0])
    fit = fit_log_affine(base, 5.0 * base**0.5)
    assert fit.b < 0.9 and fit.base_range_ms == (1.0, 10.0)
    at_top = float(fit.apply(10.0))
    assert float(fit.apply(100.0)) == pytest.approx(10 * at_top)
    assert float(fit.apply(2.0)) == pytest.approx(np.exp(fit.a + fit.b * np.log(2.0)))
    doc = {"a": fit.a, "b": fit.b, "base_range_ms": list(fit.base_range_ms)}
    assert float(CalibrationMap.from_document(doc).apply(100.0)) == pytest.approx(10 * at_top)
    del doc["base_range_ms"]
    old = float(CalibrationMap.from_document(doc).apply(100.0))
    assert old == pytest.approx(np.exp(fit.a + fit.b * np.log(100.0))) and old < 5 * at_top
    # the leave-one-out residual of the largest timing is scored as the map answers it
    keep = base < 10.0
    ai, bi = calibration._ab(np.log(base[keep]), np.log(5.0 * base[keep] ** 0.5), 0.3)
    lifted = ai + bi * np.log(6.0) + np.log(10.0 / 6.0)
    assert fit.loo_residuals[-1] == pytest.approx(np.log(5.0 * 10.0**0.5) - lifted)


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
# the offset form


def overhead(base: np.ndarray) -> np.ndarray:
    """A setup that pays a fixed 1.8 ms an inference on top of 0.99x the base (the gap between
    two published NB201 datasets on the same Adreno 640)."""
    return 1.8 + 0.99 * np.asarray(base, float)


def test_offset_form_recovers_a_fixed_overhead():
    base = np.array([1.5, 2.2, 6.0, 7.8, 11.8, 13.8])
    la = fit_log_affine(base, overhead(base))
    kept, off = choose_form(base, overhead(base), la)
    assert kept is off and kept.form == "offset"
    assert off.scale == pytest.approx(0.99, rel=0.02)
    assert off.offset_ms == pytest.approx(1.8, rel=0.05)
    assert off.loo_mse < 0.01 * la.loo_mse
    # the interval is still the pooled leave-one-out one: never narrower than the prior's
    lo, hi = off.interval
    assert lo < 0 < hi and hi - lo < la.interval[1] - la.interval[0]
    # select_and_fit picks the base first, then the form on it
    name, fit = select_and_fit({"own": base}, overhead(base))
    assert name == "own" and fit.form == "offset"
    assert select_and_fit({"own": base}, overhead(base), offset_gain=None)[1].form == "log_affine"


def test_negative_offset_is_bounded_and_every_answer_is_positive():
    """A setup faster than the base by a fixed amount: c < 0, but never below
    -(1 - OFFSET_FLOOR) * s * the smallest timed base, and no answer reaches 0."""
    base = np.array([3.0, 4.0, 6.0, 9.0, 12.0])
    off = fit_offset(base, 0.9 * base - 2.0)  # the truth would make the 3 ms graph 0.7 ms
    assert off.offset_ms < 0
    assert off.offset_ms >= -(1 - OFFSET_FLOOR) * off.scale * base.min() - 1e-9
    tiny = np.array([1e-9, 1e-3, 0.5, 2.9, base.min()])
    answers = off.apply(tiny)
    assert (answers > 0).all()
    np.testing.assert_allclose(answers[:3], OFFSET_FLOOR * off.scale * tiny[:3])
    # the estimator's map is the same function
    cmap = CalibrationMap(0.0, 1.0, (-0.1, 0.1), form="offset", scale=off.scale,
                          offset_ms=off.offset_ms)  # fmt: skip
    np.testing.assert_allclose(cmap.apply(tiny), answers)


def test_pure_scale_keeps_the_log_affine_map():
    base = np.array([3.0, 10.0, 40.0, 7.0, 120.0])
    assert choose_form(base, 2.5 * base, fit_log_affine(base, 2.5 * base))[0].form == "log_affine"
    rng = np.random.default_rng(3)
    switched = 0
    for _ in range(200):  # noisy timings that are a scale: the margin rarely lets them switch
        b = np.exp(rng.uniform(np.log(2), np.log(200), 5))
        y = 2.5 * b * np.exp(rng.normal(0, 0.08, 5))
        switched += select_and_fit({"own": b}, y)[1].form == "offset"
    assert switched < 0.1 * 200


def test_scale_shrinks_towards_the_log_affine_scale_with_few_timings():
    """Graphs of one size cannot tell a scale from an offset: s stays near the log-affine
    scale and the offset takes up the rest; a spread of sizes frees s."""
    narrow = np.array([10.0, 10.5, 11.0])
    la = fit_log_affine(narrow, overhead(narrow))
    s0 = float(np.exp(la.a + (la.b - 1) * np.log(narrow).mean()))
    off = fit_offset(narrow, overhead(narrow))
    assert abs(off.scale - s0) < abs(0.99 - s0) / 2
    np.testing.assert_allclose(off.apply(narrow), overhead(narrow), rtol=0.01)
    wide = np.exp(np.linspace(np.log(1.5), np.log(14), 12))
    assert fit_offset(wide, overhead(wide)).scale == pytest.approx(0.99, rel=0.02)


# --------------------------------------------------------------------------------------------
# round trips


def test_cli_calibrate_then_predict_ncnn(tmp_path, light_dir, models, capsys):
    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = base_totals(models, "snapdragon888", "ncnn-vulkan", graphs)
    csv = write_timings_csv(
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
    assert doc["form"] == "log_affine" and doc["offset_map"] is None
    assert doc["form_selection"]["chosen"] == "log_affine" and "form log_affine" in out
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
    csv = write_timings_csv(
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


def test_a_graph_above_the_timed_range_is_extended_in_proportion_and_says_so(
    tmp_path, light_dir, models, monkeypatch
):
    """Timings that grow as base^0.5 (a fixed cost) calibrate a slope below 1; a graph whose
    base is above every timed one gets the answer at the largest timed base scaled by the
    ratio of the bases, and a note that it is an extrapolation. (The offset form, linear
    anyway, would fit these timings better: it is held off to test the log-affine map.)"""
    form = calibration.choose_form
    monkeypatch.setattr(calibration, "choose_form", lambda *a, **k: form(*a, **k, gain=0.0))
    graphs = [light(light_dir, g) for g in GRAPHS]
    base = base_totals(models, "kirin9000", "tflite-gpu", graphs)
    order = np.argsort(base)
    timed, top = order[:-1], order[-1]
    csv = write_timings_csv(
        tmp_path / "t.csv",
        [(str(graphs[i]), repr(float(4 * base[i] ** 0.5))) for i in timed],
    )
    doc, _ = calibration.calibrate("kirin9000", "tflite-gpu", csv, models)
    assert doc["form"] == "log_affine" and doc["b"] < 0.9
    assert doc["base_range_ms"] == pytest.approx([base[timed].min(), base[timed].max()])
    est = Estimator.load("kirin9000", "tflite-gpu", models)
    edge = float(base[timed].max())
    at_edge = np.exp(doc["a"] + doc["b"] * np.log(edge))
    pred = est.predict(graphs[top])
    assert pred.total_ms == pytest.approx(at_edge * base[top] / edge, rel=1e-6)
    assert any("largest base the calibration timed" in n for n in pred.notes)
    inside = est.predict(graphs[timed[0]])
    assert not any("largest base the calibration timed" in n for n in inside.notes)
    # its interval widens with the distance above the range, in quadrature with the rest
    extra = uncertainty.Z90 * uncertainty.CALIBRATION_RANGE_SD * np.log(base[top] / edge)
    assert extra > 0.05
    monkeypatch.setattr(uncertainty, "CALIBRATION_RANGE_SD", 0.0)
    narrow = Estimator.load("kirin9000", "tflite-gpu", models).predict(graphs[top])
    assert narrow.total_ms == pred.total_ms
    hi = doc["interval_log_quantiles"][1]
    widened = [np.log(p.interval_ms[1] / p.total_ms) - hi for p in (pred, narrow)]
    assert widened[0] ** 2 - widened[1] ** 2 == pytest.approx(extra**2, rel=1e-6)


def test_an_evaluation_scores_the_widened_interval():
    """`interval_at` widens a log-affine fit's interval as the estimator does above the timed
    range, and leaves it alone inside it and for the offset form (linear anyway)."""
    base = np.array([1.0, 2.0, 4.0, 6.0, 10.0])
    fit = fit_log_affine(base, 5.0 * base**0.5)
    lo, hi = calibration.interval_at(fit, np.array([5.0, 10.0, 10 * np.e]))
    step = uncertainty.Z90 * uncertainty.CALIBRATION_RANGE_SD
    assert lo == pytest.approx(fit.interval[0] - np.array([0, 0, step]))
    assert hi == pytest.approx(fit.interval[1] + np.array([0, 0, step]))
    off = fit_offset(base, 2.0 * base + 1.0)
    lo, hi = calibration.interval_at(off, np.array([100.0]))
    assert (lo[0], hi[0]) == pytest.approx(off.interval)


def test_transfer_calibration_and_no_stacking(tmp_path, light_dir, models):
    """tflite-gpu calibration on a transfer SoC; the ncnn calibration sits on the uncalibrated
    base, not on the tflite-gpu calibration."""
    graphs = [light(light_dir, g) for g in GRAPHS[:3]]
    base = base_totals(models, "kirin9000", "tflite-gpu", graphs)
    csv3 = write_timings_csv(
        tmp_path / "t3.csv",
        [(str(g), repr(float(3 * t))) for g, t in zip(graphs, base, strict=True)],
    )
    calibration.calibrate("kirin9000", "tflite-gpu", csv3, models)
    ncnn_base = base_totals(models, "kirin9000", "ncnn-vulkan", graphs)
    csv2 = write_timings_csv(
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
    csv = write_timings_csv(
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
    csv = write_timings_csv(
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


def test_offset_calibration_round_trip(tmp_path, light_dir, models, capsys):
    """Timings 1.8 ms + 0.99x the base on small graphs: the offset form is chosen, stored and
    applied by `leti predict` and the service; held-out graphs land within a few % where the
    log-affine map is off by far more; a document without the new keys loads as log-affine."""
    from leti.service.app import create_app

    soc, runtime = "kirin9000", "tflite-gpu"
    cal = [light(light_dir, g) for g in ("squeezenet", "inception_v1", "bvlc_alexnet", "resnet50")]
    held = [light(light_dir, g) for g in ("shufflenet", *MORE_GRAPHS)]
    csv = write_timings_csv(
        tmp_path / "t.csv",
        [
            (str(g), repr(float(t)))
            for g, t in zip(cal, overhead(base_totals(models, soc, runtime, cal)), strict=True)
        ],
    )
    rc = cli_main(
        ["calibrate", "--soc", soc, "--runtime", runtime, "--measurements", str(csv)]
        + ["--models-dir", str(models)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "form offset" in out and "ms;" in out
    path = models / soc / runtime / "calibration.json"
    doc = json.loads(path.read_text())
    assert doc["form"] == "offset" and doc["form_selection"]["chosen"] == "offset"
    sel = doc["form_selection"]["loo_mse"]
    assert sel["offset"] < calibration.OFFSET_GAIN * sel["log_affine"]
    assert doc["offset_map"]["scale"] == pytest.approx(0.99, rel=0.03)
    assert doc["offset_map"]["offset_ms"] == pytest.approx(1.8, rel=0.08)
    assert doc["map"].startswith("total_ms = scale * base_total_ms + offset_ms")
    for r in doc["residuals"]:
        assert r["calibrated_ms"] == pytest.approx(r["measured_ms"], rel=0.02)

    base = base_totals(models, soc, runtime, held)
    truth = overhead(base)
    log_affine = np.exp(doc["a"] + doc["b"] * np.log(base))
    preds = []
    for g in held:
        rc = cli_main(
            ["predict", str(g), "--soc", soc, "--runtime", runtime, "--json"]
            + ["--models-dir", str(models)]
        )
        assert rc == 0
        pred = json.loads(capsys.readouterr().out)
        assert pred["provenance"] == "calibrated"
        assert pred["interval_ms"][0] < pred["total_ms"] < pred["interval_ms"][1]
        preds.append(pred["total_ms"])
    err = np.abs(np.array(preds) / truth - 1)
    la_err = np.abs(log_affine / truth - 1)
    assert err.max() < 0.03
    assert la_err.max() > 0.1 and la_err.max() > 4 * err.max()

    client = create_app({"MODELS_DIR": str(models), "TESTING": True}).test_client()
    r = client.post(
        f"/predict?soc={soc}&runtime={runtime}",
        data=held[0].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["provenance"] == "calibrated"
    assert r.get_json()["total_ms"] == pytest.approx(preds[0], rel=1e-6)

    # documents written before the offset form (no `form`, `offset_map`, `form_selection`)
    # answer with the log-affine map, as they always did; so does an unknown form
    for edit in ({}, {"form": "spline"}):
        old = {k: v for k, v in doc.items() if k not in ("form", "offset_map", "form_selection")}
        path.write_text(json.dumps({**old, **edit}))
        est = Estimator.load(soc, runtime, models)
        assert est.provenance == "calibrated"
        assert est.predict(held[0]).total_ms == pytest.approx(log_affine[0], rel=1e-6)


def test_a_timing_mostly_priced_analytically_is_kept_out_of_the_fit(tmp_path, light_dir, models):
    """A graph whose base time is mostly analytic (a 3-D conv here; the int8 graphs ncnn runs
    on the CPU in the public benchmark) says more about that op family than about the map:
    it is reported with its reason, and the map fits the others."""
    odd, rows, _ = timings_with_a_mostly_analytic_graph(tmp_path, light_dir, models)
    csv = write_timings_csv(tmp_path / "timings.csv", rows)
    doc, timings = calibration.calibrate("snapdragon888", "ncnn-vulkan", csv, models)
    assert doc["k"] == 4 and doc["a"] == pytest.approx(np.log(2.5), abs=1e-6)
    (rejected,) = doc["rejected"]
    assert rejected["reason"] == calibration.MOSTLY_ANALYTIC_REASON
    assert rejected["graph"] == str(odd) and "kept out of the fit" in rejected["detail"]
    # with too few other timings left, every timing is used
    few = write_timings_csv(tmp_path / "few.csv", [rows[0], rows[1], rows[-1]])
    doc, _ = calibration.calibrate("snapdragon888", "ncnn-vulkan", few, models)
    assert doc["k"] == 3 and not doc["rejected"]


def test_any_runtime_name_calibrates_as_a_cross_runtime_calibration(tmp_path, light_dir, models):
    """`leti calibrate --runtime armnn-opencl`: a runtime leti has no data or rules for is
    calibrated on the default runtime's kernel sum, recorded in socs.json, and answers."""
    from leti.core import socs
    from leti.core.errors import SocRegistryError, UnknownRuntimeError

    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    base = base_totals(models, "snapdragon888", "ncnn-vulkan", graphs)  # same base: kernel sum
    rows = [(str(g), repr(float(3.0 * t))) for g, t in zip(graphs, base, strict=True)]
    csv = write_timings_csv(tmp_path / "timings.csv", rows)
    with pytest.raises(UnknownRuntimeError):
        Estimator.load("snapdragon888", "armnn-opencl", models)
    before = sorted(p.name for p in models.rglob("*"))
    with pytest.raises(SocRegistryError, match="lowercase"):
        calibration.calibrate("snapdragon888", "Arm NN!", csv, models)
    assert sorted(p.name for p in models.rglob("*")) == before  # nothing written
    doc, _ = calibration.calibrate("snapdragon888", "armnn-opencl", csv, models)
    assert doc["runtime"] == "armnn-opencl" and doc["base"]["runtime"] == "tflite-gpu"
    assert doc["base"]["total"] == registry.KERNEL_SUM_TOTAL
    assert doc["a"] == pytest.approx(np.log(3.0), abs=1e-6)
    assert "armnn-opencl" in socs.read_user_runtimes(models)
    est = Estimator.load("snapdragon888", "armnn-opencl", models)
    pred = est.predict(light(light_dir, GRAPHS[4]))
    assert pred.provenance == "calibrated" and pred.runtime == "armnn-opencl"
    expected = 3.0 * base_totals(
        models, "snapdragon888", "ncnn-vulkan", [light(light_dir, GRAPHS[4])]
    )
    assert pred.total_ms == pytest.approx(expected[0], rel=1e-3)
    listed = {(a["soc"], a["runtime"]) for a in available(models)}
    assert ("snapdragon888", "armnn-opencl") in listed
    # another SoC has no calibration for it: a clear not-found, not a crash
    with pytest.raises(LetiError, match="armnn-opencl"):
        Estimator.load("snapdragon855", "armnn-opencl", models)
    # the service answers for it too, and lists it
    from leti.service.app import create_app

    client = create_app({"MODELS_DIR": str(models), "TESTING": True}).test_client()
    r = client.post(
        "/predict?soc=snapdragon888&runtime=armnn-opencl",
        data=light(light_dir, GRAPHS[4]).read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["total_ms"] == pytest.approx(pred.total_ms, rel=1e-6)
    assert "armnn-opencl" in client.get("/socs").get_json()["runtimes"]


def test_a_profile_that_wins_by_one_timing_does_not_replace_the_own_base():
    """The base choice must hold without any single timing: a profile that fits better only
    because of one timing leaves the own base in place, and the calibration says why."""
    rng = np.random.default_rng(7)
    y = np.exp(rng.uniform(0, 4, 8))
    own = y * np.exp(rng.normal(0, 0.03, 8))
    own[0] *= 3.0  # the own base misses one timing badly
    profile = y * np.exp(rng.normal(0, 0.08, 8))
    profile[0] = y[0]
    sel = calibration.choose_base({"own": own, "profile:x": profile}, y)
    assert sel.loo_mse["profile:x"] < calibration.PROFILE_GAIN * sel.loo_mse["own"]
    assert sel.chosen == "own" and sel.contender == "profile:x"
    assert sel.subsets == 8 and sel.subsets_won < 8 and "not on every subset" in sel.why
    # a profile better on every timing replaces it, on every subset
    better = y * np.exp(rng.normal(0, 0.01, 8))
    sel = calibration.choose_base({"own": own, "profile:x": better}, y)
    assert sel.chosen == "profile:x" and sel.subsets_won == sel.subsets == 8
