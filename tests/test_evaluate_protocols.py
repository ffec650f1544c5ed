"""The evaluation protocols on SYNTHETIC measurements (latencies made up by a formula): splits
by model and disjoint, size splits by FLOPs, interval coverage computed as defined, the report.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leti.core.errors import LetiError
from leti.evaluate import accuracy, accuracy_report
from leti.evaluate.nb201 import family_consistency
from leti.frontend import nb201
from leti.train.fit import load_training_set
from tests.helpers import write_synthetic_measurements

SOC, RUNTIME = "snapdragon855", "tflite-gpu"
NB201_ARCHS = [
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    nb201.arch_string(["nor_conv_3x3"] * 6),
    nb201.arch_string(["nor_conv_1x1", "skip_connect", "avg_pool_3x3"] * 2),
    nb201.arch_string(["avg_pool_3x3", "nor_conv_3x3", "none"] * 2),
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory, light_models):
    """The onnx wheel's light CNNs plus a few NB201 nets: 13 graphs over a wide FLOPs range."""
    graphs_dir = tmp_path_factory.mktemp("graphs")
    graphs = list(light_models)
    for i, arch in enumerate(NB201_ARCHS):
        path = graphs_dir / f"nb201_{i}.onnx"
        path.write_bytes(nb201.build(arch).SerializeToString())
        graphs.append(path)
    return write_synthetic_measurements(tmp_path_factory.mktemp("meas"), graphs, SOC, RUNTIME)


@pytest.fixture(scope="module")
def ts(synthetic_root):
    return load_training_set(SOC, RUNTIME, synthetic_root)


@pytest.fixture(scope="module")
def evaluation(synthetic_root):
    """Every protocol, every method (2 grouped folds keep the test quick: 8 fits)."""
    return accuracy.evaluate_soc(
        SOC,
        RUNTIME,
        synthetic_root,
        n_splits=2,
        methods=accuracy.available_methods(),
        protocols=tuple(accuracy.PROTOCOLS),
    )


def _flops(ts, models):
    return accuracy.flops_of(ts, models)


def test_methods_put_the_shipped_one_first():
    methods = accuracy.available_methods()
    assert methods[0] == "leti"
    assert len(methods) == len(set(methods))


@pytest.mark.parametrize("protocol", list(accuracy.PROTOCOLS))
def test_splits_are_by_model_and_disjoint(ts, protocol):
    splits = accuracy.protocol_splits(ts, protocol)
    tested = []
    for train, test in splits:
        assert train and test
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(ts.models)
        tested += test
    assert len(tested) == len(set(tested))
    if protocol == "grouped-cv":
        assert len(splits) == 5 and sorted(tested) == ts.models
        assert len(accuracy.protocol_splits(ts, protocol, n_splits=3)) == 3
    else:
        assert len(splits) == 1 and len(tested) == round(0.2 * len(ts.models))


def test_size_splits_are_by_flops(ts):
    train, test = accuracy.size_split(ts, "largest")
    assert _flops(ts, test).min() >= _flops(ts, train).max()
    train, test = accuracy.size_split(ts, "smallest")
    assert _flops(ts, test).max() <= _flops(ts, train).min()
    n = len(ts.models)
    assert len(test) == round(0.2 * n) == 3 and n == 13
    # the protocols use exactly these splits
    assert accuracy.protocol_splits(ts, "train-small") == [accuracy.size_split(ts, "largest")]
    assert accuracy.protocol_splits(ts, "train-large") == [accuracy.size_split(ts, "smallest")]
    with pytest.raises(ValueError):
        accuracy.size_split(ts, "middle")


def test_coverage_on_a_constructed_case():
    measured = [1.0, 2.0, 3.0, 4.0, 10.0]
    lo = [0.5, 2.5, 3.0, 5.0, 1.0]
    hi = [1.5, 3.0, 3.0, 6.0, 9.99]
    # 1 in [0.5, 1.5]; 2 below [2.5, 3]; 3 on both bounds; 4 below [5, 6]; 10 above 9.99
    assert accuracy.coverage(measured, lo, hi) == pytest.approx(2 / 5)
    assert np.isnan(accuracy.coverage([], [], []))


def _check_predictions(ts, r, n_splits=5):
    tested = sorted(
        m for _, test in accuracy.protocol_splits(ts, r.protocol, n_splits) for m in test
    )
    assert sorted(r.predictions["model"]) == tested
    for m in r.methods:
        assert (r.predictions[m] > 0).all()
        assert (r.predictions[accuracy.kernel_sum_key(m)] > 0).all()
        lo, hi = r.predictions[f"{m}_lo"], r.predictions[f"{m}_hi"]
        assert (lo <= r.predictions[m]).all() and (r.predictions[m] <= hi).all()
        inside = (r.predictions["measured"] >= lo) & (r.predictions["measured"] <= hi)
        assert r.coverage[m] == pytest.approx(inside.mean())
    expected = {*r.methods, *(accuracy.kernel_sum_key(m) for m in r.methods), "flops"}
    assert set(r.scores) == expected
    assert r.scores["flops"]["n"] == len(tested)


def test_every_protocol_predicts_its_test_models_with_every_method(ts, evaluation):
    assert list(evaluation.results) == list(accuracy.PROTOCOLS)
    for r in evaluation.results.values():
        assert r.methods == accuracy.available_methods()
        _check_predictions(ts, r, n_splits=2)
    # the grouped-CV view stays what `leti fit` records
    assert evaluation.scores is evaluation.results["grouped-cv"].scores
    assert evaluation.predictions.groupby("model")["fold"].nunique().max() == 1
    small = evaluation.results["train-small"]
    assert sorted(small.predictions["model"]) == accuracy.size_split(ts, "largest")[1]
    assert small.train_sizes == [len(ts.models) - 3]
    assert evaluation.results["grouped-cv"].train_sizes in ([6, 7], [7, 6])


def test_intervals_are_the_estimators_around_the_pipelines_base(evaluation):
    p = evaluation.predictions
    for m in evaluation.methods:
        ratio_lo = p[f"{m}_base_lo"] / p[m]
        ratio_hi = p[f"{m}_base_hi"] / p[m]
        # the base interval: one multiplier per fold (a pipeline's log_interval)
        for _, fold in ratio_lo.groupby(p["fold"]):
            assert np.allclose(fold, fold.iloc[0], rtol=1e-9)
        for _, fold in ratio_hi.groupby(p["fold"]):
            assert np.allclose(fold, fold.iloc[0], rtol=1e-9)
        assert (ratio_lo <= 1).all() and (ratio_hi >= 1).all()
        # the answered interval only ever widens it
        assert (p[f"{m}_lo"] <= p[f"{m}_base_lo"] * (1 + 1e-9)).all()
        assert (p[f"{m}_hi"] >= p[f"{m}_base_hi"] * (1 - 1e-9)).all()
        cv = evaluation.cv
        inside = (p["measured"] >= p[f"{m}_base_lo"]) & (p["measured"] <= p[f"{m}_base_hi"])
        assert cv.base_coverage[m] == pytest.approx(inside.mean())
        assert cv.coverage[m] >= cv.base_coverage[m]


def _half_exact_interval(pipe, ts, models):
    """The measured time itself for the first half of the models, a band above it for the
    rest: coverage must be the first half's share."""
    t = ts.e2e.loc[list(models), "latency_ms"].to_numpy(float)
    half = len(t) // 2
    lo = np.concatenate([t[:half], t[half:] * 1.01])
    hi = np.concatenate([t[:half], t[half:] * 2])
    return lo, hi


def test_a_per_graph_interval_plugs_in(ts):
    r = accuracy.evaluate_protocol(ts, "train-small", interval_fn=_half_exact_interval)
    assert r.coverage == {"leti": pytest.approx(1 / 3)}  # 3 test models: 1 exact, 2 above


def _same_evaluation(a, b) -> None:
    assert (a.soc, a.runtime, a.elapsed_s) == (b.soc, b.runtime, b.elapsed_s)
    assert list(a.results) == list(b.results)
    for name, r in a.results.items():
        o = b.results[name]
        pd.testing.assert_frame_equal(r.predictions, o.predictions, check_exact=True)
        assert (r.protocol, r.methods, r.scores, r.coverage) == (
            o.protocol,
            o.methods,
            o.scores,
            o.coverage,
        )
        assert (r.train_sizes, r.base_coverage) == (o.train_sizes, o.base_coverage)


def test_an_evaluation_crosses_as_json_exactly(evaluation):
    doc = json.loads(json.dumps(accuracy.evaluation_doc(evaluation), default=accuracy.json_value))
    _same_evaluation(evaluation, accuracy.evaluation_from_doc(doc))


def test_evaluate_jobs_run_in_processes_of_their_own(synthetic_root):
    """jobs=2: two `python -m leti.evaluate.eval_worker` processes (nothing pickled) give the
    evaluations one process gives; a leti error in one comes back as its class and message."""
    tasks = [
        accuracy.EvalTask(SOC, RUNTIME, synthetic_root, ("leti",), (protocol,))
        for protocol in ("train-small", "train-large")
    ]
    task = accuracy.EvalTask.from_doc(json.loads(json.dumps(tasks[0].to_doc())))
    assert task == tasks[0]
    here = [t.run() for t in tasks]
    there = list(accuracy.evaluate_many(tasks, jobs=2))
    assert len(there) == 2
    for a in here:
        b = next(e for e in there if list(e.results) == list(a.results))
        a.elapsed_s = b.elapsed_s = 0.0
        _same_evaluation(a, b)
    bad = accuracy.EvalTask("exynos9820", RUNTIME, synthetic_root, ("leti",), ("grouped-cv",))
    with pytest.raises(LetiError) as caught:
        list(accuracy.evaluate_many([bad, tasks[0]], jobs=2))
    with pytest.raises(LetiError) as here_caught:
        bad.run()
    assert type(caught.value) is type(here_caught.value)
    assert str(caught.value) == str(here_caught.value)
    assert caught.value.__dict__ == here_caught.value.__dict__


def test_report_has_one_section_per_protocol_and_the_bars(tmp_path, evaluation):
    archs = NB201_ARCHS[:3]
    from leti.predict.estimator import Estimator

    fc = family_consistency(Estimator.load(SOC), archs, nb201.build_graphs(archs))
    out = tmp_path / "accuracy.md"
    accuracy_report.write_accuracy_report([evaluation], out, 1.0, [fc], ["nothing"])
    assert out.with_suffix(".png").is_file() or not accuracy_report.plot_png([evaluation], out)
    md = out.read_text()
    for heading in (
        "## Bars",
        "## 1. Grouped 5-fold cross-validation",
        "## 2. Train-small/test-large",
        "## 3. Train-large/test-small",
        "## 4. Interval coverage",
        "## 5. NAS-Bench-201 family consistency",
    ):
        assert heading in md
    assert "≥ 86%" in md and "≥ 0.95" in md and "85–95%" in md
    assert "committed 2026-11-21" in md and "84.1%" in md  # snapdragon855's old ±10%
    doc = json.loads(out.with_suffix(".json").read_text())
    assert set(accuracy.PROTOCOLS) <= set(doc) and "nb201" in doc and doc["bars"]
    key = f"{SOC}/{RUNTIME}"
    assert doc["grouped-cv"][key]["coverage"].keys() == set(evaluation.methods)
    assert len(doc["train-small"][key]["test_models"]) == 3
