"""Training on SYNTHETIC measurements built from the onnx wheel's real graphs.

Latencies here are made up by a formula (labelled synthetic throughout); the point is the
mechanics: grouped folds, out-of-fold corrector inputs, atomic model folders, manifests.
"""

from __future__ import annotations

import numpy as np
import pytest

from leti.evaluate.accuracy import evaluate_soc, metrics
from leti.predict.estimator import Estimator
from leti.train import fit as fit_mod
from tests.helpers import assert_no_pickle as _assert_no_pickle
from tests.helpers import write_synthetic_measurements


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory, light_models):
    return write_synthetic_measurements(tmp_path_factory.mktemp("meas"), light_models)


def test_group_folds_are_disjoint_and_cover_every_model():
    models = [f"m{i}" for i in range(23)]
    folds = fit_mod.group_folds(models, 5, seed=3)
    flat = [m for f in folds for m in f]
    assert sorted(flat) == sorted(models) and len(flat) == len(set(flat))
    assert fit_mod.group_folds(models, 5, seed=3) == folds


def test_corrector_inputs_come_from_regressors_that_never_saw_the_model(
    synthetic_root, monkeypatch
):
    ts = fit_mod.load_training_set("snapdragon855", "tflite-gpu", synthetic_root)
    seen: list[set[str]] = []
    real_fit = fit_mod.fit_kernels

    def spy(ts_, exclude=(), **kw):
        seen.append(set(ts_.kernel_rows["model"]) - set(exclude))
        return real_fit(ts_, exclude, **kw)

    real_predict = fit_mod.kernel_ms_by_name
    predicted_by: dict[str, set[str]] = {}

    def spy_predict(model, plans, names):
        for n in names:
            predicted_by[n] = seen[-1]
        return real_predict(model, plans, names)

    monkeypatch.setattr(fit_mod, "fit_kernels", spy)
    monkeypatch.setattr(fit_mod, "kernel_ms_by_name", spy_predict)
    held_out = ts.models[:2]
    train = ts.models[2:]
    fit_mod.oof_kernel_ms(ts, train, exclude=held_out)
    assert set(predicted_by) == set(train)
    for model, trained_on in predicted_by.items():
        assert model not in trained_on
        assert not trained_on & set(held_out)


def test_fit_and_save_writes_a_loadable_pickle_free_model(synthetic_root, tmp_path, light_models):
    models_dir = tmp_path / "models"
    manifest = fit_mod.fit_and_save("snapdragon855", "tflite-gpu", models_dir, synthetic_root)
    folder = models_dir / "snapdragon855" / "tflite-gpu"
    assert not list(models_dir.glob("snapdragon855/.*")), "staging folder left behind"
    _assert_no_pickle(folder)
    for key in ("model_version", "created", "data", "libraries", "cv", "interval_log_quantiles"):
        assert key in manifest
    assert manifest["training"]["graphs"] == len(light_models)
    est = Estimator.load("Snapdragon 855", models_dir=models_dir)
    pred = est.predict(light_models[0])
    assert pred.total_ms > 0 and pred.provenance == "measured"
    assert pred.interval_ms[0] <= pred.total_ms <= pred.interval_ms[1]
    assert abs(sum(lt.ms for lt in pred.layers) - pred.total_ms) < 1e-6 * pred.total_ms
    # a re-fit swaps the folder in whole
    again = fit_mod.fit_and_save("snapdragon855", "tflite-gpu", models_dir, synthetic_root)
    assert again["model_version"].startswith("snapdragon855-tflite-gpu-")


def test_evaluate_holds_out_whole_models(synthetic_root):
    r = evaluate_soc("snapdragon855", "tflite-gpu", synthetic_root)
    assert set(r.scores) == {"leti", "kernel_sum", "flops"}
    assert sorted(r.predictions["model"]) == sorted(r.predictions["model"].unique())
    assert r.predictions.groupby("model")["fold"].nunique().max() == 1


def test_metrics_on_known_values():
    m = metrics(np.array([1.0, 1.08, 1.3, 2.0]), np.array([1.0, 1.0, 1.0, 2.5]))
    assert m["acc5"] == 0.25 and m["acc10"] == 0.5 and m["acc20"] == 0.75
    assert m["mape"] == pytest.approx((0 + 0.08 + 0.3 + 0.2) / 4)
    assert m["kendall_tau"] == pytest.approx(2 / 3, abs=0.2)


def test_free_form_trees_are_a_candidate_only_where_kernel_rows_leave_kernels_out():
    """Trees cannot extrapolate to graphs smaller than the training ones; they compete only
    for runtimes whose kernel rows miss kernels (PyTorch Metal), and every candidate of the
    structural family is there for all runtimes."""
    tflite = fit_mod._graph_stage_candidates("leti", "snapdragon855", "tflite-gpu")
    metal = fit_mod._graph_stage_candidates("leti", "apple-a12", "pytorch-metal")
    assert set(tflite) == {"structural", "structural+launches"}
    assert set(metal) == {"structural", "structural+launches", "trees"}
    assert list(metal)[0] == "structural"  # simplest first
    # and the NAS-family ranking binds where the kernel sum covers every kernel
    assert fit_mod._keeps_family_rank("leti", "tflite-gpu")
    assert not fit_mod._keeps_family_rank("leti", "pytorch-metal")
    assert not fit_mod._keeps_family_rank("previous", "tflite-gpu")


def test_fit_and_evaluate_say_which_pairs_are_measured_when_none_is_selected(
    synthetic_root, tmp_path, capsys
):
    """--soc / --runtime that select no measured pair: a clear error naming the measured ones,
    and nothing written (not the 'import the public data first' of an empty folder)."""
    from leti.cli import main

    out = tmp_path / "models"
    for cmd in (["fit", "--models-dir", str(out)], ["evaluate", "--out", str(tmp_path / "a.md")]):
        code = main([*cmd, "--soc", "kirin9000", "--measurements-dir", str(synthetic_root)])
        err = capsys.readouterr().err
        assert code != 0 and "no end-to-end measurements of kirin9000" in err, err
        assert "snapdragon855/tflite-gpu" in err and "import the public" not in err
    assert not out.exists() and not (tmp_path / "a.md").exists()
    main(["fit", "--measurements-dir", str(tmp_path / "empty"), "--models-dir", str(out)])
    assert "import the public data first" in capsys.readouterr().err
