"""Per-kernel-class scales (the second half of a cross-runtime calibration) and their
round trip through `leti calibrate` and `Estimator.load` when the transfer manifest carries a
class prior."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leti.core.records import Kernel, Layer
from leti.models import class_scales
from leti.models.class_scales import ClassPrior, class_terms, fit_log_weights, learn_prior
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.train import calibrate as calibration
from tests.helpers import light, write_timings_csv
from tests.test_calibration import GRAPHS, models, synth_root  # noqa: F401

TRUE = np.log([2.0, 3.0, 1.5, 4.0, 0.5, 0.8, 0.6])  # absolute log weights used to fake timings
N_REL = len(class_scales.TERMS) - 1


def kernel(kind: str, k: int = 3, op_type: str = "Conv") -> Kernel:
    return Kernel(
        name=f"{kind}{k}", kind=kind, op_type=op_type, layers=(), h_in=8, w_in=8, c_in=4,
        h_out=8, w_out=8, c_out=4, kernel=k, stride=1, groups=1, pad=0, flops=1, params=1,
        bytes_moved=1, n_inputs=1,
    )  # fmt: skip


def random_terms(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.column_stack([rng.uniform(0.1, 50, n), rng.uniform(0.1, 30, n), rng.uniform(0.1, 10, n)])
    nk = rng.integers(10, 200, n) * class_scales.PER_KERNEL_MS
    standalone = rng.uniform(0.1, 20, n)
    cpu = np.where(np.arange(n) % 3 == 0, rng.uniform(5, 50, n), 0.0)  # every third is int8
    return np.column_stack([t, nk, np.full(n, class_scales.CONSTANT_MS), standalone, cpu])


def prior_at(log_weights: np.ndarray, sd: float = 0.3) -> ClassPrior:
    rel = tuple(float(v) for v in log_weights[1:] - log_weights[0])
    return ClassPrior(rel, (sd,) * N_REL, 5, "test")


def standalone(name: str, bytes_moved: int) -> Layer:
    return Layer(
        name, "Swish", ("x",), ("y",), ((1, 8, 8, 8),), ((1, 8, 8, 8),), bytes_moved=bytes_moved
    )


def test_terms_sum_kernel_times_by_class():
    ks = [
        kernel("conv", 3),
        kernel("conv", 1),
        kernel("fc", 1),
        kernel("dwconv", 3),
        kernel("pool_max"),
        kernel("conv", 3, op_type="QLinearConv"),  # int8: ncnn runs it on the CPU
    ]
    ms = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    ov = [standalone("a", 10_000_000), standalone("b", 15_000_000)]
    t = class_terms(ks, ms, ov)
    per_kernel, const = 6 * class_scales.PER_KERNEL_MS, class_scales.CONSTANT_MS
    # 25 MB of standalone traffic at the nominal 25 GB/s: 1 ms
    assert t.tolist() == pytest.approx([1.0, 6.0, 24.0, per_kernel, const, 1.0, 32.0])
    assert class_scales.class_share(t) == pytest.approx(32.0 / 63.0)
    # the legacy five terms, as calibrations of that format were fitted: int8 is a conv there
    legacy = class_terms(ks, ms, ov, n_terms=len(class_scales.LEGACY_TERMS))
    assert legacy.tolist() == pytest.approx([33.0, 6.0, 24.0, per_kernel, const])
    assert class_scales.class_share(legacy) == 0.0
    with pytest.raises(ValueError):
        class_terms(ks, ms, ov, n_terms=6)


def test_combine_leans_towards_the_class_model_by_the_cpu_share():
    """The map of the GPU time knows nothing of int8 layers run on the CPU: an all-int8 graph
    gets the class model, a float graph the geometric mean, a mixed one in between."""
    assert class_scales.combine(4.0, 16.0) == pytest.approx(8.0)
    assert class_scales.combine(4.0, 16.0, 1.0) == pytest.approx(16.0)
    assert class_scales.combine(4.0, 16.0, 0.5) == pytest.approx(4.0**0.25 * 16.0**0.75)
    both = class_scales.combine(np.array([4.0, 4.0]), np.array([16.0, 16.0]), np.array([0, 1.0]))
    assert both == pytest.approx([8.0, 16.0])


def test_free_fit_recovers_the_weights():
    terms = random_terms(30)
    y = class_scales.predict(terms, TRUE)
    assert fit_log_weights(terms, y) == pytest.approx(TRUE, abs=1e-4)


def test_prior_holds_the_relative_weights_with_few_timings():
    """Three timings cannot pin seven weights: the prior keeps the ratios, the timings the scale."""
    terms = random_terms(3, seed=1)
    y = class_scales.predict(terms, TRUE) * 1.8  # the GPU is 1.8x slower than the prior says
    w = fit_log_weights(terms, y, prior_at(TRUE))
    assert w[1:] - w[0] == pytest.approx(TRUE[1:] - TRUE[0], abs=0.05)
    assert class_scales.predict(terms, w) == pytest.approx(y, rel=0.02)
    # a prior far from the truth is pulled towards the data, not followed blindly
    wrong = prior_at(TRUE + np.array([0, 1.5, -1.5, 1.5, -1.5, 1.5, -1.5]), sd=1.0)
    many = random_terms(80, seed=2)
    truth = class_scales.predict(many, TRUE)
    w = fit_log_weights(many, truth, wrong)
    prior_only = TRUE[0] + np.concatenate([[0.0], wrong.mean])
    scaled = class_scales.predict(many, prior_only)
    prior_err = np.log(scaled / truth) - np.mean(np.log(scaled / truth))
    fit_err = np.log(class_scales.predict(many, w) / truth)
    assert np.sqrt(np.mean(fit_err**2)) < 0.6 * np.sqrt(np.mean(prior_err**2))


def test_a_calibration_is_robust_to_one_timing_the_terms_cannot_express():
    """With a prior, the timings enter through a Huber loss: one graph at 20x its terms'
    time (a runtime's slow path) leaves the others' answers near the truth."""
    terms = random_terms(30, seed=4)
    y = class_scales.predict(terms, TRUE)
    y[7] *= 20.0
    w = fit_log_weights(terms, y, prior_at(TRUE, sd=1.0))
    rel = class_scales.predict(terms, w) / y - 1
    assert np.abs(np.delete(rel, 7)).max() < 0.1
    assert class_scales.huber(np.array([0.1, -2.0]))[0] == 0.1
    assert class_scales.huber(np.array([-2.0]))[0] ** 2 == pytest.approx(
        2 * class_scales.HUBER_SCALE * 2.0 - class_scales.HUBER_SCALE**2
    )


def test_learned_prior_is_the_median_across_groups_with_a_floor():
    groups = []
    for i, shift in enumerate([0.0, 0.1, -0.1, 3.0]):  # the last GPU is an outlier
        terms = random_terms(25, seed=10 + i)
        w = TRUE + np.array([0, shift, 0, 0, 0, 0, 0])
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


def test_a_term_a_gpu_never_exercises_does_not_move_the_prior():
    """GPUs timed without int8 graphs say nothing of the cpu_fallback weight: the prior's
    median comes from the GPUs that have them; a term no GPU exercises gets a vague prior."""
    cpu = len(class_scales.TERMS) - 2  # index among the relative weights
    groups = []
    for i, cpu_rel in enumerate([0.5, 0.7, None, None, None]):
        terms = random_terms(25, seed=20 + i)
        w = TRUE.copy()
        if cpu_rel is None:
            terms[:, -1] = 0.0
        else:
            w[-1] = TRUE[0] + cpu_rel
        groups.append((terms, class_scales.predict(terms, w)))
    p = learn_prior(groups, "test")
    assert p.mean[cpu] == pytest.approx(0.6, abs=0.02)
    assert p.sd[cpu] == pytest.approx(class_scales.MIN_PRIOR_SD)
    for _, (t, _) in enumerate(groups):
        t[:, -1] = 0.0
    none = learn_prior([(t, class_scales.predict(t, TRUE)) for t, _ in groups], "no int8")
    assert none.mean[cpu] == 0.0 and none.sd[cpu] == class_scales.UNIDENTIFIED_PRIOR_SD


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
    terms = np.array([class_terms(p.kernels, base.kernel_ms(p), p.overhead) for p in plans])
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
        # in proportion to the base above the largest timed one
        edge = min(pred.kernel_sum_ms, doc["base_range_ms"][1])
        mapped = np.exp(doc["a"] + doc["b"] * np.log(edge)) * pred.kernel_sum_ms / edge
    expected = np.sqrt(mapped * class_scales.predict(terms[4], w))
    assert pred.total_ms == pytest.approx(expected, rel=1e-6)
    # timings made by the class model itself: the held-out graph lands within 25%
    assert pred.total_ms == pytest.approx(measured[4], rel=0.25)

    # a tflite-gpu calibration never uses class scales, a malformed prior is ignored
    assert calibration.class_prior_for("tflite-gpu", models) is None
    set_class_prior(models, {"terms": ["dense"]})
    assert calibration.class_prior_for("ncnn-vulkan", models) is None


def test_a_legacy_five_term_calibration_answers_as_it_was_fitted(tmp_path, light_dir, models):  # noqa: F811
    """Calibrations written before standalone_bytes and cpu_fallback keep loading and answer
    with the five terms they were fitted on (the plain geometric mean)."""
    from leti.core import socs

    set_class_prior(models, prior_at(TRUE).to_dict())
    base = uncalibrated_base(socs.resolve("kirin9000"), "ncnn-vulkan", models)
    graphs = [light(light_dir, g) for g in GRAPHS]
    rows = [(str(g), repr(float(3.0 * base.predict(g).total_ms))) for g in graphs[:4]]
    doc, _ = calibration.calibrate(
        "kirin9000", "ncnn-vulkan", write_timings_csv(tmp_path / "t.csv", rows), models
    )
    legacy_w = [0.1, 0.2, -0.3, 0.4, -0.5]
    doc["class_scales"] = {
        **doc["class_scales"],
        "terms": list(class_scales.LEGACY_TERMS),
        "log_weights": legacy_w,
    }
    path = models / "kirin9000" / "ncnn-vulkan" / "calibration.json"
    path.write_text(json.dumps(doc))
    est = Estimator.load("kirin9000", "ncnn-vulkan", models)
    assert est.provenance == "calibrated"
    pred = est.predict(graphs[4])
    plan = base.plan(graphs[4])
    t5 = class_terms(plan.kernels, base.kernel_ms(plan), plan.overhead, n_terms=5)
    mapped = est.calibration.map(pred.kernel_sum_ms)
    expected = np.sqrt(mapped * class_scales.predict(t5, legacy_w))
    assert pred.total_ms == pytest.approx(float(expected), rel=1e-6)
    # a document with another number of weights is still refused (and ncnn-vulkan has no
    # other model for this SoC)
    from leti.core.errors import ModelNotFoundError

    doc["class_scales"]["log_weights"] = [0.0] * 6
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelNotFoundError):
        Estimator.load("kirin9000", "ncnn-vulkan", models)


def test_mostly_analytic_timings_set_the_class_half_only(tmp_path, light_dir, models, capsys):  # noqa: F811
    """With class scales, a timing mostly priced analytically (an int8 graph ncnn runs on the
    CPU; a 3-D conv here) is not rejected: the map half is fitted on the others, the class
    half on all, and the document says which timings the map did not see."""
    from tests.test_calibration import timings_with_a_mostly_analytic_graph

    set_class_prior(models, prior_at(TRUE).to_dict())
    odd, rows, base = timings_with_a_mostly_analytic_graph(tmp_path, light_dir, models)
    csv = write_timings_csv(tmp_path / "timings.csv", rows)
    doc, _ = calibration.calibrate("snapdragon888", "ncnn-vulkan", csv, models)
    assert doc["k"] == 5 and not doc["rejected"] and len(doc["residuals"]) == 5
    assert doc["a"] == pytest.approx(np.log(2.5), abs=1e-6)  # the map never saw the odd one
    (only,) = doc["class_scales"]["class_only"]
    assert only["graph"] == str(odd) and "kept out of the map fit" in only["why"]
    # the class half saw it: its answer for the odd graph moved towards the timing
    est = Estimator.load("snapdragon888", "ncnn-vulkan", models)
    got = est.predict(odd).total_ms
    assert got == pytest.approx(doc["residuals"][-1]["calibrated_ms"], rel=1e-6)
    assert got > 2.5 * base[-1] * 1.5
    # `leti calibrate` says which timing only the class half saw
    from leti.cli import main as cli_main

    rc = cli_main(
        ["calibrate", "--soc", "sd888", "--runtime", "ncnn-vulkan", "--measurements", str(csv)]
        + ["--models-dir", str(models)]
    )
    out = capsys.readouterr().out
    assert rc == 0 and f"{odd}: " in out and "(class scales only)" in out
