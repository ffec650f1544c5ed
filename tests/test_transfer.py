"""Transfer to SoCs without measurements: features, persistence, loading, CLI, /socs, ncnn data.

Most tests use a small synthetic transfer model built in a temporary models dir (fast and
independent of what is trained); `test_bundled_*` check the committed models/transfer files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leti.cli import main as cli_main
from leti.core import socs
from leti.core.errors import ModelNotFoundError
from leti.frontend.features import GRAPH_FEATURES
from leti.models import transfer as transfer_model
from leti.predict.estimator import Estimator
from leti.predict.registry import available
from leti.train import transfer
from tests.helpers import assert_no_pickle

TRANSFER_SOCS = ("kirin9000", "snapdragon888", "rk3568")
SYNTH_TRAINED = ("snapdragon855", "exynos9820", "helio-p35")
KINDS = ("conv", "dwconv", "gconv", "fc", "pool_max", "pool_avg", "pool_global", "concat")


def synthetic_rows(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    kind = rng.choice(KINDS, n)
    c = rng.choice([16, 32, 64, 128, 256], n)
    h = rng.choice([7, 14, 28, 56], n)
    k = np.where(np.isin(kind, ("conv", "dwconv", "gconv")), rng.choice([1, 3], n), 1)
    groups = np.where(kind == "dwconv", c, np.where(kind == "gconv", 4, 1))
    return pd.DataFrame(
        {
            "kind": kind,
            "h_in": h,
            "c_in": c,
            "h_out": h,
            "w_out": h,
            "c_out": c,
            "kernel": k,
            "stride": 1,
            "groups": groups,
            "fused": "",
        }
    )


def build_synthetic_transfer(root: Path) -> Path:
    """A tiny transfer model (latency = 3 x roofline) under `root/transfer/tflite-gpu`."""
    rows = synthetic_rows()
    parts = []
    for i, sid in enumerate(SYNTH_TRAINED):
        hw = socs.resolve(sid)
        _, log_roof = transfer_model.transfer_matrix(rows, hw)
        noise = np.random.default_rng(i).normal(0, 0.02, len(rows))
        parts.append((hw, rows.assign(latency_ms=np.exp(log_roof + np.log(3.0) + noise))))
    kernels = transfer_model.TransferKernels(n_estimators=20, min_rows=20).fit(parts)
    folder = root / transfer_model.TRANSFER_DIR / "tflite-gpu"
    files = kernels.save(folder)
    n = len(GRAPH_FEATURES)
    transfer_model.TransferCorrector(
        mean_=np.zeros(n), scale_=np.ones(n), coef_=np.zeros(n), intercept_=0.2
    ).save(folder / "corrector.json")
    manifest = {
        "kind": "transfer",
        "runtime": "tflite-gpu",
        "model_version": "transfer-tflite-gpu-synthetic",
        "trained_socs": list(SYNTH_TRAINED),
        "features": list(transfer_model.TRANSFER_FEATURES),
        "kernel_files": files,
        "corrector_file": "corrector.json",
        "interval_log_quantiles": [-0.5, 0.6],
        "calibration_prior_sd": {"transfer": 0.15, "cross_runtime": 0.2},
    }
    (folder / transfer_model.MANIFEST).write_text(json.dumps(manifest), "utf-8")
    return root


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return build_synthetic_transfer(tmp_path_factory.mktemp("models"))


# --------------------------------------------------------------------------------------------
# features and persistence


def test_roofline_terms_follow_the_descriptors():
    rows = synthetic_rows(50)
    fast, slow = socs.resolve("snapdragon888"), socs.resolve("rk3568")
    x_fast, roof_fast = transfer_model.transfer_matrix(rows, fast)
    x_slow, roof_slow = transfer_model.transfer_matrix(rows, slow)
    assert x_fast.shape == (50, len(transfer_model.TRANSFER_FEATURES))
    assert (roof_slow > roof_fast).all()
    i = transfer_model.TRANSFER_FEATURES.index("log_compute_ms")
    np.testing.assert_allclose(
        x_slow[:, i] - x_fast[:, i], np.log(fast.fp16_gflops / slow.fp16_gflops), atol=1e-2
    )


def test_kernels_json_round_trip(tmp_path):
    rows = synthetic_rows(200)
    hw = socs.resolve("snapdragon855")
    _, log_roof = transfer_model.transfer_matrix(rows, hw)
    model = transfer_model.TransferKernels(n_estimators=10, min_rows=20).fit(
        [(hw, rows.assign(latency_ms=np.exp(log_roof + 1.0)))]
    )
    files = model.save(tmp_path)
    assert_no_pickle(tmp_path)
    again = transfer_model.TransferKernels.load(tmp_path, files)
    other = socs.resolve("kirin9000")
    np.testing.assert_allclose(model.predict(rows, other), again.predict(rows, other))


def test_corrector_json_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, len(GRAPH_FEATURES)))
    c = transfer_model.TransferCorrector().fit(x, rng.normal(size=40))
    c.save(tmp_path / "c.json")
    np.testing.assert_allclose(
        c.predict(x), transfer_model.TransferCorrector.load(tmp_path / "c.json").predict(x)
    )


def test_corrector_floor_and_size_range():
    """No answer under kernel sum + the per-inference floor, however the ridge extrapolates,
    and a kernel sum outside the training rows' is measured in log units."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, len(GRAPH_FEATURES)))
    i = GRAPH_FEATURES.index("log_kernel_sum")
    x[:, i] = rng.uniform(0.0, 5.0, size=40)  # 1 to 150 ms of kernels
    c = transfer_model.TransferCorrector().fit(x, rng.normal(size=40) - 3.0, floor_ms=0.5)
    assert c.size_range == (x[:, i].min(), x[:, i].max())
    tiny = x[:3].copy()
    tiny[:, i] = np.log(0.05)  # 0.05 ms of kernels
    totals = 0.05 * np.exp(c.predict(tiny))
    assert np.all(totals >= 0.05 + 0.5 - 1e-9)
    np.testing.assert_allclose(c.size_extrapolation(tiny), x[:, i].min() - np.log(0.05))
    assert np.all(c.size_extrapolation(x) == 0)
    again = transfer_model.TransferCorrector.from_json(json.loads(json.dumps(c.to_json())))
    assert again.floor_ms == 0.5 and again.size_range == c.size_range


def test_per_inference_cost_is_the_intercept_of_the_timings():
    from leti.train.transfer import per_inference_ms

    sums = np.array([0.5, 1.0, 3.0, 10.0, 40.0])
    assert per_inference_ms(sums, 1.2 * sums + 0.8) == pytest.approx(0.8)
    assert per_inference_ms(sums, 1.5 * sums) == pytest.approx(0.0, abs=1e-9)
    assert per_inference_ms(sums[:2], sums[:2] + 1) == 0.0  # too few timings to say


def test_zero_shot_interval_uses_held_out_rows_only():
    loso = pd.DataFrame(
        {
            "test": [True] * 100 + [False] * 100,
            "measured": np.r_[np.exp(np.linspace(-1, 1, 100)), np.full(100, 100.0)],
            "transfer": np.ones(200),
        }
    )
    lo, hi = transfer.zero_shot_interval(loso)
    assert -1 < lo < -0.8 and 0.8 < hi < 1


# --------------------------------------------------------------------------------------------
# loading


@pytest.mark.parametrize("soc", TRANSFER_SOCS)
def test_transfer_estimator_for_unmeasured_socs(synth_root, light_dir, soc):
    est = Estimator.load(soc, None, synth_root)
    assert est.provenance == "transfer" and est.runtime == "tflite-gpu"
    p = est.predict(light_dir / "light_squeezenet.onnx")
    assert p.provenance == "transfer" and p.total_ms > 0
    lo, hi = p.interval_ms
    assert lo < p.total_ms < hi
    np.testing.assert_allclose([lo, hi], p.total_ms * np.exp([-0.5, 0.6]))


def test_transfer_follows_hardware(synth_root, light_dir):
    graph = light_dir / "light_squeezenet.onnx"
    fast = Estimator.load("snapdragon888", None, synth_root).predict(graph).total_ms
    slow = Estimator.load("rk3568", None, synth_root).predict(graph).total_ms
    assert slow > 5 * fast


def test_measured_socs_are_not_served_by_transfer(synth_root):
    with pytest.raises(ModelNotFoundError):
        Estimator.load("snapdragon855", "tflite-gpu", synth_root)
    with pytest.raises(ModelNotFoundError):
        Estimator.load("kirin9000", "ncnn-vulkan", synth_root)  # no calibration yet


def test_available_lists_transfer_pairs(synth_root):
    pairs = {(a["soc"], a["runtime"]): a for a in available(synth_root)}
    for soc in TRANSFER_SOCS:
        assert pairs[(soc, "tflite-gpu")]["provenance"] == "transfer"
    assert ("kirin9000", "ncnn-vulkan") not in pairs


def test_cli_predict_transfer_json(synth_root, light_dir, capsys):
    rc = cli_main(
        [
            "predict",
            str(light_dir / "light_shufflenet.onnx"),
            "--soc",
            "Kirin 9000",
            "--json",
            "--models-dir",
            str(synth_root),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["soc"] == "kirin9000" and doc["provenance"] == "transfer"
    assert doc["interval_ms"][0] < doc["total_ms"] < doc["interval_ms"][1]


def test_socs_endpoint_shows_transfer(synth_root):
    from leti.service.app import create_app

    client = create_app({"MODELS_DIR": str(synth_root), "TESTING": True}).test_client()
    doc = client.get("/socs").get_json()
    by_id = {s["id"]: s for s in doc["socs"]}
    for soc in TRANSFER_SOCS:
        assert by_id[soc]["runtimes"]["tflite-gpu"]["provenance"] == "transfer"


# --------------------------------------------------------------------------------------------
# the committed model

BUNDLED = Path(__file__).resolve().parent.parent / "models" / "transfer" / "tflite-gpu"


@pytest.fixture(scope="module")
def bundled() -> Path:
    if not (BUNDLED / transfer_model.MANIFEST).is_file():
        pytest.skip("no committed transfer model (python -m leti.transfer)")
    return BUNDLED


def test_bundled_transfer_model_is_json_with_loso_interval(bundled):
    assert_no_pickle(bundled)
    manifest = json.loads((bundled / transfer_model.MANIFEST).read_text("utf-8"))
    lo, hi = manifest["interval_log_quantiles"]
    assert lo < 0 < hi
    assert len(manifest["trained_socs"]) >= 4
    assert manifest["features"] == list(transfer_model.TRANSFER_FEATURES)


@pytest.mark.parametrize("soc", TRANSFER_SOCS)
def test_bundled_transfer_predicts_out_of_the_box(bundled, light_dir, tmp_path, soc):
    # An empty models dir still answers for unmeasured SoCs with the bundled transfer model.
    est = Estimator.load(soc, "tflite-gpu", tmp_path)
    p = est.predict(light_dir / "light_squeezenet.onnx")
    assert p.provenance == "transfer" and 0.1 < p.total_ms < 10_000


def test_bundled_transfer_answers_a_tiny_graph_with_its_per_inference_floor(bundled, tmp_path):
    """One small convolution on an unmeasured SoC: at least the per-inference cost every
    measured SoC pays (not its ~0.05 ms of kernels), and an interval widened and explained
    because its kernel time is outside the training graphs'."""
    from tests.plausibility_graphs import separable_net

    est = Estimator.load("snapdragon888", "tflite-gpu", tmp_path)
    floor = est.corrector.floor_ms
    assert floor > 0.1, "the bundled transfer corrector has no per-inference floor: refit it"
    p = est.predict(separable_net(size=16, width=8, blocks=1))
    assert p.total_ms >= p.kernel_sum_ms + floor - 1e-9
    assert any("outside the range of the graphs" in n for n in p.notes), p.notes
    big = est.predict(separable_net())
    assert p.interval_ms[1] / p.interval_ms[0] > big.interval_ms[1] / big.interval_ms[0]


# --------------------------------------------------------------------------------------------
# ncnn benchmark loader


@pytest.mark.shared
def test_ncnn_targets(shared_dir):
    from leti.measurements import ncnn_benchmark as ncnn_data

    data, zoo = shared_dir / "data" / "ncnn-benchmark", shared_dir / "zoo" / "ncnn"
    if not (data / ncnn_data.CSV_NAME).is_file():
        pytest.skip("no ncnn benchmark in shared data")
    rows = ncnn_data.load_vulkan_rows(data)
    assert (rows["backend"] == "vulkan").all() and (rows["gpu_banner"] == 1).all()
    assert not rows["section"].str.startswith("Station-M3").any()
    targets = ncnn_data.load_targets(data, zoo)
    assert len(targets) >= 15
    for t in targets:
        assert len(t.timings) >= 12
        assert (t.timings["latency_ms"] > 0).all()
        assert (t.timings["repeats"] >= 1).all() and (t.timings["spread"] >= 1).all()
        assert t.timings["model"].is_unique
        assert all(Path(g).is_file() for g in t.timings["graph"])
    again = ncnn_data.load_targets(data, zoo)
    assert [t.timings.equals(u.timings) for t, u in zip(targets, again, strict=True)]
