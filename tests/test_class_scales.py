"""Per-kernel-class scales (the second half of a cross-runtime calibration) and their
round trip through `leti calibrate` and `Estimator.load` when the transfer manifest carries a
class prior."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leti.core.records import Kernel
from leti.models import class_scales
from leti.models.class_scales import ClassPrior, class_terms, fit_log_weights, learn_prior
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.train import calibrate as calibration
from tests.helpers import light, write_timings_csv
from tests.test_calibration import GRAPHS, models, synth_root  # noqa: F401

TRUE = np.log([2.0, 3.0, 1.5, 4.0, 0.5])  # absolute log weights used to fake timings


def kernel(kind: str, k: int = 3) -> Kernel:
    return Kernel(
        name=f"{kind}{k}", kind=kind, op_type="Conv", layers=(), h_in=8, w_in=8, c_in=4,
        h_out=8, w_out=8, c_out=4, kernel=k, stride=1, groups=1, pad=0, flops=1, params=1,
        bytes_moved=1, n_inputs=1,
    )  # fmt: skip


def random_terms(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.column_stack([rng.uniform(0.1, 50, n), rng.uniform(0.1, 30, n), rng.uniform(0.1, 10, n)])
    nk = rng.integers(10, 200, n) * class_scales.PER_KERNEL_MS
    return np.column_stack([t, nk, np.full(n, class_scales.CONSTANT_MS)])


def prior_at(log_weights: np.ndarray, sd: float = 0.3) -> ClassPrior:
    rel = tuple(float(v) for v in log_weights[1:] - log_weights[0])
    return ClassPrior(rel, (sd,) * 4, 5, "test")


def test_terms_sum_kernel_times_by_class():
    ks = [
        kernel("conv", 3),
        kernel("conv", 1),
        kernel("fc", 1),
        kernel("dwconv", 3),
        kernel("pool_max"),
    ]
    t = class_terms(ks, np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
    assert t.tolist() == [1.0, 6.0, 24.0, 5 * class_scales.PER_KERNEL_MS, class_scales.CONSTANT_MS]


def test_free_fit_recovers_the_weights():
    terms = random_terms(30)
    y = class_scales.predict(terms, TRUE)
    assert fit_log_weights(terms, y) == pytest.approx(TRUE, abs=1e-4)


def test_prior_holds_the_relative_weights_with_few_timings():
    """Three timings cannot pin five weights: the prior keeps the ratios, the timings the scale."""
    terms = random_terms(3, seed=1)
    y = class_scales.predict(terms, TRUE) * 1.8  # the GPU is 1.8x slower than the prior says
    w = fit_log_weights(terms, y, prior_at(TRUE))
    assert w[1:] - w[0] == pytest.approx(TRUE[1:] - TRUE[0], abs=0.05)
    assert class_scales.predict(terms, w) == pytest.approx(y, rel=0.02)
    # a prior far from the truth is pulled towards the data, not followed blindly
    wrong = prior_at(TRUE + np.array([0, 1.5, -1.5, 1.5, -1.5]), sd=1.0)
    many = random_terms(40, seed=2)
    truth = class_scales.predict(many, TRUE)
    w = fit_log_weights(many, truth, wrong)
    prior_only = TRUE[0] + np.concatenate([[0.0], wrong.mean])
    scaled = class_scales.predict(many, prior_only)
    prior_err = np.log(scaled / truth) - np.mean(np.log(scaled / truth))
    fit_err = np.log(class_scales.predict(many, w) / truth)
    assert np.sqrt(np.mean(fit_err**2)) < 0.6 * np.sqrt(np.mean(prior_err**2))


def test_learned_prior_is_the_median_across_groups_with_a_floor():
    groups = []
    for i, shift in enumerate([0.0, 0.1, -0.1, 3.0]):  # the last GPU is an outlier
        terms = random_terms(25, seed=10 + i)
        w = TRUE + np.array([0, shift, 0, 0, 0])
        groups.append((terms, class_scales.predict(terms, w)))
    p = learn_prior(groups, "test")
    rel = TRUE[1:] - TRUE[0]
    assert p.n_groups == 4
    assert p.mean[0] == pytest.approx(rel[0] + 0.05, abs=0.02)  # median of 0, .1, -.1, 3
    assert p.mean[1:] == pytest.approx(tuple(rel[1:]), abs=1e-3)
    assert min(p.sd) >= class_scales.MIN_PRIOR_SD and p.sd[0] > 1.0
    assert ClassPrior.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(ValueError):
        learn_prior(groups[:1], "one GPU")


@pytest.mark.parametrize(
    "edit",
    [
        {"terms": ["a", "b"]},
        {"mean_log": [0.0, 0.0]},
        {"sd_log": [0.3, 0.3, 0.0, 0.3]},
    ],
)
def test_malformed_prior_is_refused(edit):
    doc = {**prior_at(TRUE).to_dict(), **edit}
    with pytest.raises(ValueError):
        ClassPrior.from_dict(doc)


def set_class_prior(models_root, prior_doc) -> None:
    path = models_root / "transfer" / "tflite-gpu" / "transfer.json"
    manifest = json.loads(path.read_text())
    manifest["class_priors"] = {"ncnn-vulkan": prior_doc}
    path.write_text(json.dumps(manifest))


def test_ncnn_calibration_combines_both_halves(tmp_path, light_dir, models):  # noqa: F811
    from leti.core import socs

    set_class_prior(models, prior_at(TRUE).to_dict())
    base = uncalibrated_base(socs.resolve("kirin9000"), "ncnn-vulkan", models)
    graphs = [light(light_dir, g) for g in GRAPHS]
    plans = [base.plan(g) for g in graphs]
    terms = np.array([class_terms(p.kernels, base.kernel_ms(p)) for p in plans])
    measured = class_scales.predict(terms, TRUE)
    csv = write_timings_csv(
        tmp_path / "t.csv",
        [(str(g), repr(float(t))) for g, t in zip(graphs[:4], measured[:4], strict=True)],
    )
    doc, _ = calibration.calibrate("kirin9000", "ncnn-vulkan", csv, models)
    assert doc["class_scales"]["prior"]["mean_log"] == pytest.approx(list(TRUE[1:] - TRUE[0]))
    w = np.array(doc["class_scales"]["log_weights"])

    est = Estimator.load("kirin9000", "ncnn-vulkan", models)
    assert est.provenance == "calibrated" and est.manifest["calibration"]["class_scales"]
    for g, row in zip(graphs[:4], doc["residuals"], strict=True):
        assert est.predict(g).total_ms == pytest.approx(row["calibrated_ms"], rel=1e-6)
    pred = est.predict(graphs[4])
    # the map half in the form the calibration chose (the class model has a constant term,
    # which the offset form can pick up)
    if doc["form"] == "offset":
        off = doc["offset_map"]
        mapped = off["scale"] * pred.kernel_sum_ms + off["offset_ms"]
    else:
        mapped = np.exp(doc["a"] + doc["b"] * np.log(pred.kernel_sum_ms))
    expected = np.sqrt(mapped * class_scales.predict(terms[4], w))
    assert pred.total_ms == pytest.approx(expected, rel=1e-6)
    # timings made by the class model itself: the held-out graph lands within 25%
    assert pred.total_ms == pytest.approx(measured[4], rel=0.25)

    # a tflite-gpu calibration never uses class scales, a malformed prior is ignored
    assert calibration.class_prior_for("tflite-gpu", models) is None
    set_class_prior(models, {"terms": ["dense"]})
    assert calibration.class_prior_for("ncnn-vulkan", models) is None
