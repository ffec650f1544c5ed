"""`leti evaluate --transfer`: how well leti answers for GPUs it has no per-layer data for.

Two protocols, both written to benchmarks/transfer.md (+ .json) by `leti.evaluate.reports`:

1. Leave-one-SoC-out over the measured tflite-gpu SoCs. The held-out SoC is never seen, and
   its test models are never seen on any SoC (grouped model folds): `transfer.loso_zero_shot`.
   Zero-shot = the transfer pipeline with the SoC's descriptors. Calibrated = the shipped
   `leti.train.calibrate.select_and_fit` (base, then log-affine or offset form) fitted on k
   timings of the same SoC drawn from the fold's *other* models (calibration and test models
   are disjoint), repeated over `DRAWS` random draws; metrics are the mean over draws of
   metrics over all held-out models.
2. ncnn-vulkan on the mobile GPUs of the ncnn benchmark (`leti.measurements.ncnn_benchmark`).
   The base is the transfer pipeline trained on all measured SoCs, given the GPU's approximate
   descriptors (`data/ncnn_gpus.json`) and the ncnn-vulkan fusion rules. Each GPU's models are
   split into `NCNN_FOLDS` grouped folds: a fold's models are tested, k calibration timings are
   drawn from the GPU's other models (`DRAWS` draws), and the class-scale prior is relearned on
   the other GPUs without the fold's models, so a test model is never seen on any GPU.

Baselines: zero-shot, the FLOPs log-log regression of the nearest measured SoC (same family
first, then nearest FP16 peak) scaled by the ratio of FP16 peaks; calibrated, a log-log FLOPs
regression fitted on the same k timings.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from leti.core import settings, socs
from leti.core.errors import LetiError
from leti.core.store import sha256_file
from leti.evaluate.scores import (
    fit_flops_baseline,
    flops_baseline_predict,
    mean_metrics,
    metrics,
    plan_flops,
)
from leti.frontend.fusion import plan as plan_kernels
from leti.frontend.graph import parse_graph
from leti.measurements import ncnn_benchmark as ncnn_data
from leti.models import class_scales
from leti.predict.registry import KERNEL_SUM_TOTAL, base_total
from leti.train import calibrate as calibration
from leti.train import transfer
from leti.train.fit import load_plan

log = logging.getLogger(__name__)

KS = (3, 5, 10)
DRAWS = 20
SEED = 0
NCNN_FOLDS = 5
#: Leave-one-model-out runs on every ncnn GPU with at least this many timed models.
MIN_LOO_MODELS = 15
#: The GPUs of the named SoCs (Snapdragon 888, RK3568 via RK3566) in the ncnn table.
NAMED_NCNN_GPUS = ("adreno660", "mali-g52-mc2")
#: The nearest-GPU ceiling compares two GPUs on at least this many shared models: on fewer,
#: choosing the best of 18 GPUs in hindsight fits noise (16 shared models gave 94%).
CEILING_MIN_SHARED = 25
#: Two timings of one model on one board agree when the slower is within this ratio of the
#: faster (the ±20% of every accuracy figure).
REPEAT_AGREE = 1.2
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "transfer.md"


def shared_dir() -> Path:
    """$LETI_SHARED_DIR, else the `shared/` folder beside the repository."""
    return settings.shared_dir(REPO.parent / "shared")


def nearest_measured(hw: Any, candidates: Sequence[str]) -> str:
    """Same family first, then the closest FP16 peak (log)."""

    def dist(s: str) -> tuple[float, float]:
        c = socs.resolve(s)
        return (float(c.family != hw.family), abs(np.log(c.fp16_gflops / hw.fp16_gflops)))

    return min(sorted(candidates), key=dist)


@dataclass
class CalibratedRun:
    leti: dict[str, float]
    flops: dict[str, float]
    coverage: float  # share of test timings inside the calibrated 90% interval
    log_residuals: np.ndarray  # log(measured / calibrated) over every draw
    picks: dict[str, float]  # which base the calibrations kept, share of fits
    log_affine: dict[str, float] | None = None  # cross-runtime: the map half alone
    forms: dict[str, float] | None = None  # which map form the calibrations kept, share of fits
    # ncnn: the GPU-priced test models only (not the int8 graphs ncnn runs on the CPU)
    gpu_priced: dict[str, float] | None = None
    # ncnn: the protocol of the approximate ONNX figures on the exact graphs (its models only,
    # calibrated on k of them), so the two stand side by side
    same_models: dict[str, float] | None = None


def _pick_share(picks: Sequence[str]) -> dict[str, float]:
    s = pd.Series(list(picks)).value_counts(normalize=True)
    return {str(k): float(v) for k, v in s.items()}


def _calibrate_predict(cal: pd.DataFrame, test: pd.DataFrame, prior_sd: float):
    """The shipped calibration (`select_and_fit`) on the calibration rows, applied to the test
    rows: candidates are the own transfer prediction, then every `profile:<soc>` column."""
    cols = ["transfer", *(c for c in cal.columns if c.startswith("profile:"))]
    cands = {c: cal[c].to_numpy(float) for c in cols if np.isfinite(cal[c].to_numpy(float)).all()}
    name, fit = calibration.select_and_fit(cands, cal["measured"].to_numpy(float), prior_sd)
    base = test[name].to_numpy(float)
    return fit.apply(base), calibration.interval_at(fit, base), name, fit.form


# --------------------------------------------------------------------------------------------
# 1. leave-one-SoC-out on tflite-gpu


def loso_calibrated(
    loso: pd.DataFrame, flops: Mapping[str, float], k: int, prior_sd: float
) -> dict[str, CalibratedRun]:
    out = {}
    for s, g in loso.groupby("soc"):
        runs, fl_runs, inside, resid, picks, forms = [], [], [], [], [], []
        for r in range(DRAWS):
            rng = np.random.default_rng([SEED, r, k, *map(ord, s)])
            pred, meas, fpred = [], [], []
            for _, gf in g.groupby("fold"):
                pool = gf[~gf["test"]]
                cal = pool.iloc[rng.choice(len(pool), size=k, replace=False)]
                test = gf[gf["test"]]
                p, (lo, hi), pick, form = _calibrate_predict(cal, test, prior_sd)
                picks.append(pick)
                forms.append(form)
                pred.extend(p)
                meas.extend(test["measured"])
                coef = fit_flops_baseline(
                    cal["model"].map(flops).to_numpy(), cal["measured"].to_numpy()
                )
                fpred.extend(flops_baseline_predict(coef, test["model"].map(flops).to_numpy()))
                lr = np.log(test["measured"].to_numpy() / p)
                inside.extend((lr >= lo) & (lr <= hi))
                resid.extend(lr)
            runs.append(metrics(np.array(pred), np.array(meas)))
            fl_runs.append(metrics(np.array(fpred), np.array(meas)))
        out[s] = CalibratedRun(
            mean_metrics(runs),
            mean_metrics(fl_runs),
            float(np.mean(inside)),
            np.array(resid),
            _pick_share(picks),
            forms=_pick_share(forms),
        )
    return out


def loso_zero_shot_scores(
    loso: pd.DataFrame, sets: Mapping[str, Any], flops: Mapping[str, float]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per SoC: zero-shot transfer metrics and the nearest-SoC FLOPs baseline."""
    out = {}
    test = loso[loso["test"]]
    names = sorted(sets)
    for s, g in test.groupby("soc"):
        hw = socs.resolve(s)
        ref = nearest_measured(hw, [o for o in names if o != s])
        ref_hw = socs.resolve(ref)
        base = []
        for _, gf in g.groupby("fold"):
            train = [m for m in sets[ref].models if m not in set(gf["model"])]
            coef = fit_flops_baseline(
                np.array([flops[m] for m in train]),
                sets[ref].e2e.loc[train, "latency_ms"].to_numpy(float),
            )
            scale = ref_hw.fp16_gflops / hw.fp16_gflops
            base.extend(flops_baseline_predict(coef, gf["model"].map(flops).to_numpy()) * scale)
        out[s] = {
            "leti": metrics(g["transfer"].to_numpy(), g["measured"].to_numpy()),
            "baseline": metrics(np.array(base), g["measured"].to_numpy()),
            "nearest": ref,
            "interval_coverage": None,
        }
    return out


# --------------------------------------------------------------------------------------------
# 2. ncnn-vulkan targets


@dataclass
class NcnnResult:
    target: Any  # leti.measurements.ncnn_benchmark.NcnnTarget
    zero_shot: dict[str, float]
    zero_shot_baseline: dict[str, float]
    nearest: str
    calibrated: dict[int, CalibratedRun]
    predictions: pd.DataFrame
    loo: dict[str, Any] | None = None  # leave-one-model-out (`ncnn_leave_one_out`)
    logo: dict[str, Any] | None = None  # zero-shot borrowed map (`ncnn_leave_one_gpu_out`)
    ceiling: dict[str, Any] | None = None  # what these timings allow (`ncnn_ceilings`)


@dataclass
class NcnnTable:
    """One target's base predictions: `frame` has the measured and predicted totals per model
    (columns `transfer` and `profile:<soc>`), `terms` the class-scale terms of each base."""

    target: Any
    frame: pd.DataFrame
    terms: dict[str, np.ndarray]


def _ncnn_plan(graph: str, input_shape: Any) -> Any:
    if input_shape is None:
        return load_plan(graph, "ncnn-vulkan")
    shapes = {ncnn_data.input_blob(Path(graph)): list(input_shape)}
    return plan_kernels(parse_graph(graph, shapes), "ncnn-vulkan")


def ncnn_predictions(pipe: transfer.TransferPipeline, target: Any) -> NcnnTable:
    t = target.timings
    shapes = t["input_shape"] if "input_shape" in t else [None] * len(t)
    plans = {m: _ncnn_plan(g, sh) for m, g, sh in zip(t["model"], t["graph"], shapes, strict=True)}
    models = list(t["model"])
    # What `leti calibrate --runtime ncnn-vulkan` fits on (`base_total`): the kernel sum for a
    # cross-runtime base, else the corrected total.
    which = 1 if base_total("ncnn-vulkan") == KERNEL_SUM_TOTAL else 0
    ns = SimpleNamespace(plans=plans)

    shares: list[float] = []

    def priced(hw: Any) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(predict_detail, class-scale terms) on `hw`, from one kernel-time prediction."""
        ms = transfer.kernel_sums(pipe.kernels, ns, hw, models)
        terms = np.array(
            [class_scales.class_terms(plans[m].kernels, ms[m], plans[m].overhead) for m in models]
        )
        if not shares:
            shares.extend(calibration.analytic_share(plans[m], ms[m]) for m in models)
        return transfer.detail_from_kernel_ms(pipe, ns, models, ms), terms

    detail, own_terms = priced(target.gpu)
    totals, sums, share = detail
    frame = pd.DataFrame(
        {
            "model": models,
            "measured": t["latency_ms"].to_numpy(float),
            "transfer": detail[which],
            "corrected_total": totals,
            "kernel_sum": sums,
            "compute_share": share,
            "flops": [plan_flops(plans[m]) for m in models],
            # priced without measurements of its op family (int8 layers ncnn runs on the CPU):
            # kept out of calibration fits, as `leti calibrate` does (MOSTLY_ANALYTIC)
            "analytic_share": shares,
        }
    )
    terms = {"transfer": own_terms}
    for s in pipe.train_socs:
        profile, terms[f"profile:{s}"] = priced(socs.resolve(s))
        frame[f"profile:{s}"] = profile[which]
    return NcnnTable(target, frame, terms)


def _fit_rows(tb: NcnnTable) -> np.ndarray:
    """Rows a calibration may fit on: not mostly priced analytically (`leti calibrate`'s rule:
    `leti.train.calibrate.MOSTLY_ANALYTIC`)."""
    return tb.frame["analytic_share"].to_numpy(float) < calibration.MOSTLY_ANALYTIC


def _ncnn_folds(n: int, tag: str) -> np.ndarray:
    """Grouped model folds of one target (each model in exactly one test fold)."""
    perm = np.random.default_rng([SEED, *map(ord, tag)]).permutation(n)
    fold = np.empty(n, int)
    fold[perm] = np.arange(n) % NCNN_FOLDS
    return fold


def ncnn_class_prior(
    tables: Sequence[NcnnTable],
    exclude_gpu: str | None = None,
    exclude_models: set[str] = frozenset(),
) -> class_scales.ClassPrior:
    """The class-scale prior learned on the other GPUs' timings of the other models (every
    timing: the int8 graphs set the cpu_fallback weight, as they do in `leti calibrate`)."""
    groups = []
    for tb in tables:
        if tb.target.gpu.id == exclude_gpu:
            continue
        keep = ~tb.frame["model"].isin(exclude_models).to_numpy()
        groups.append((tb.terms["transfer"][keep], tb.frame["measured"].to_numpy(float)[keep]))
    return class_scales.learn_prior(
        groups, "ncnn benchmark (BSD-3): per-GPU fits of the mobile GPUs' Vulkan timings"
    )


def _calibrate_cross(
    tb: NcnnTable,
    cal: np.ndarray,
    test: np.ndarray,
    prior: class_scales.ClassPrior,
    prior_sd: float,
):
    """The shipped cross-runtime calibration on rows `cal`, applied to rows `test`:
    (calibrated, log interval per test row, base kept, map half alone, its form). As
    `leti calibrate`, the base and the map half are fitted on the GPU-priced rows of `cal`
    (`_fit_rows`) and the class half on all of them."""
    f = tb.frame
    y = f["measured"].to_numpy(float)[cal]
    rows = _fit_rows(tb)[cal]
    if rows.sum() < calibration.MIN_TIMINGS:
        rows = np.ones(len(cal), bool)
    cols = ["transfer", *(c for c in f.columns if c.startswith("profile:"))]
    cands = {c: f[c].to_numpy(float)[cal] for c in cols}
    cands = {c: v[rows] for c, v in cands.items() if np.isfinite(v).all()}
    name, la = calibration.select_and_fit(cands, y[rows], prior_sd)
    base = f[name].to_numpy(float)
    fit = calibration.fit_cross_runtime(
        base[cal], tb.terms[name][cal], y, prior, prior_sd, map_fit=la, map_rows=rows
    )
    test_terms = tb.terms[name][test]
    interval = calibration.interval_at(fit, base[test])
    return fit.apply(base[test], test_terms), interval, name, la.apply(base[test]), la.form


def ncnn_calibrated(
    tb: NcnnTable,
    priors: Sequence[class_scales.ClassPrior],
    k: int,
    prior_sd: float,
    same: np.ndarray | None = None,
) -> CalibratedRun | None:
    """Grouped folds: a fold's models are test models, calibration draws k of the others, and
    the class prior (`priors[fold]`) never saw the fold's models nor this GPU. With `same` (a
    mask of models), also the protocol where test and calibration models are drawn from those
    models only (the approximate ONNX figures' 15 classification models)."""
    f = tb.frame
    n = len(f)
    fold = _ncnn_folds(n, tb.target.gpu.id)
    fit_rows = _fit_rows(tb)
    if min(int(((fold != i) & fit_rows).sum()) for i in range(NCNN_FOLDS)) < k:
        return None
    y = f["measured"].to_numpy(float)
    flops = f["flops"].to_numpy(float)
    runs, la_runs, fl_runs, inside, resid, picks, forms = [], [], [], [], [], [], []
    gpu_runs, same_runs = [], []
    for r in range(DRAWS):
        pred, la_pred, fpred = np.empty(n), np.empty(n), np.empty(n)
        same_pred = np.full(n, np.nan)
        for i in range(NCNN_FOLDS):
            test = np.flatnonzero(fold == i)
            pool = np.flatnonzero((fold != i) & fit_rows)
            rng = np.random.default_rng([SEED, r, k, i, *map(ord, tb.target.gpu.id)])
            cal = rng.choice(pool, size=k, replace=False)
            p, (lo, hi), pick, lp, form = _calibrate_cross(tb, cal, test, priors[i], prior_sd)
            pred[test], la_pred[test] = p, lp
            picks.append(pick)
            forms.append(form)
            coef = fit_flops_baseline(flops[cal], y[cal])
            fpred[test] = flops_baseline_predict(coef, flops[test])
            lr = np.log(y[test] / p)
            inside.extend((lr >= lo) & (lr <= hi))
            resid.extend(lr)
            if same is not None:
                own = np.flatnonzero((fold != i) & fit_rows & same)
                if len(own) >= k:
                    cal = rng.choice(own, size=k, replace=False)
                    same_pred[test] = _calibrate_cross(tb, cal, test, priors[i], prior_sd)[0]
        runs.append(metrics(pred, y))
        gpu_runs.append(metrics(pred[fit_rows], y[fit_rows]))
        if same is not None and np.isfinite(same_pred[same]).all():
            same_runs.append(metrics(same_pred[same], y[same]))
        la_runs.append(metrics(la_pred, y))
        fl_runs.append(metrics(fpred, y))
    return CalibratedRun(
        mean_metrics(runs),
        mean_metrics(fl_runs),
        float(np.mean(inside)),
        np.array(resid),
        _pick_share(picks),
        log_affine=mean_metrics(la_runs),
        forms=_pick_share(forms),
        gpu_priced=mean_metrics(gpu_runs),
        same_models=mean_metrics(same_runs) if same_runs else None,
    )


def ncnn_leave_one_out(
    tb: NcnnTable, priors: Sequence[class_scales.ClassPrior], prior_sd: float
) -> dict[str, Any] | None:
    """Each model predicted by the shipped calibration fitted on all of the GPU's other
    timings (what `leti calibrate --from-benchmark` ships, minus the model: the map half on the
    GPU-priced ones, the class half on all), with the class prior of the model's fold (learned
    without this GPU and without the fold's models). Metrics over every model and over the
    GPU-priced ones (not mostly analytic)."""
    f = tb.frame
    n = len(f)
    fit_rows = _fit_rows(tb)
    if int(fit_rows.sum()) - 1 < MIN_LOO_MODELS - 1 or n < MIN_LOO_MODELS:
        return None
    fold = _ncnn_folds(n, tb.target.gpu.id)
    y = f["measured"].to_numpy(float)
    pred, inside = np.empty(n), np.empty(n, bool)
    for i in range(n):
        cal = np.flatnonzero(np.arange(n) != i)
        p, (lo, hi), *_ = _calibrate_cross(tb, cal, np.array([i]), priors[fold[i]], prior_sd)
        pred[i] = p[0]
        lr = np.log(y[i] / p[0])
        inside[i] = lo[0] <= lr <= hi[0]
    return {
        "all": metrics(pred, y),
        "gpu_priced": metrics(pred[fit_rows], y[fit_rows]),
        "coverage90": float(inside.mean()),
        "coverage90_gpu_priced": float(inside[fit_rows].mean()),
        "mostly_analytic": [str(m) for m in f["model"][~fit_rows]],
        "errors": {str(m): float(p / t - 1) for m, p, t in zip(f["model"], pred, y, strict=True)},
    }


def ncnn_leave_one_gpu_out(tables: Sequence[NcnnTable]) -> dict[str, dict[str, Any]]:
    """The zero-shot ncnn answer of a GPU with no public timing (what Kirin 9000 gets): the
    log-affine map from the base's kernel sum to ncnn time, fitted on the pooled timings of
    the *other* GPUs of the same family (all other GPUs where the family has no other), each
    priced with its own descriptors, applied to this GPU's base."""
    out = {}
    for tb in tables:
        fam = tb.target.gpu.family
        others = [o for o in tables if o is not tb and o.target.gpu.family == fam]
        if not others:
            others = [o for o in tables if o is not tb]
        x = np.concatenate([o.frame["transfer"].to_numpy(float)[_fit_rows(o)] for o in others])
        yo = np.concatenate([o.frame["measured"].to_numpy(float)[_fit_rows(o)] for o in others])
        fit = calibration.fit_log_affine(x, yo)
        y = tb.frame["measured"].to_numpy(float)
        pred = fit.apply(tb.frame["transfer"].to_numpy(float))
        keep = _fit_rows(tb)
        out[tb.target.gpu.id] = {
            "borrowed_from": [o.target.gpu.id for o in others],
            "all": metrics(pred, y),
            "gpu_priced": metrics(pred[keep], y[keep]),
        }
    return out


def ncnn_in_sample(
    tb: NcnnTable, prior: class_scales.ClassPrior, prior_sd: float
) -> dict[str, float]:
    """The shipped calibration fitted on *all* of the GPU's timings and scored on the same
    timings. Nothing is held out, so this is not an accuracy figure: it is how much of its own
    training timings the model family explains, which a held-out figure can only reach
    by luck (a fold's fit sees less and is scored on what it did not see)."""
    every = np.arange(len(tb.frame))
    pred = _calibrate_cross(tb, every, every, prior, prior_sd)[0]
    return metrics(pred, tb.frame["measured"].to_numpy(float))


def ncnn_nearest_gpu_ceiling(
    tables: Sequence[NcnnTable], min_shared: int = CEILING_MIN_SHARED
) -> dict[str, dict[str, Any]]:
    """A ceiling set by the timings, not by leti: each of a GPU's models predicted from its own
    *measured* ncnn time on another GPU, through a log-log line fitted on their other shared
    models (leave-one-model-out), the other GPU chosen in hindsight as the one that scores
    best. That is information no predictor reading the graph has (the model's real time on a
    similar GPU); what this cannot reach, a graph-based answer reaches only by luck."""
    measured = {
        tb.target.gpu.id: dict(
            zip(tb.frame["model"], tb.frame["measured"].astype(float), strict=True)
        )
        for tb in tables
    }
    out: dict[str, dict[str, Any]] = {}
    for gid, mine in measured.items():
        best: dict[str, Any] | None = None
        for other, theirs in measured.items():
            common = sorted(set(mine) & set(theirs))
            if other == gid or len(common) < min_shared:
                continue
            x = np.array([theirs[m] for m in common])
            y = np.array([mine[m] for m in common])
            pred = np.empty(len(common))
            for i in range(len(common)):
                keep = np.arange(len(common)) != i
                # the FLOPs baseline's log-log line, on the other GPU's times instead of FLOPs
                coef = fit_flops_baseline(x[keep], y[keep])
                pred[i] = flops_baseline_predict(coef, x[i : i + 1])[0]
            score = metrics(pred, y)
            if best is None or score["acc20"] > best["acc20"]:
                best = {**score, "via": other, "shared_models": len(common)}
        if best is not None:
            out[gid] = best
    return out


def repeat_agreement(target: Any) -> dict[str, Any] | None:
    """How often two timings of one model on one board agree within ±20% (`REPEAT_AGREE`), on
    the models the benchmark timed more than once (runs of equal size, duplicate rows): the
    measurement's own noise, which bounds every figure. None with under `MIN_LOO_MODELS`
    repeated models."""
    t = target.timings
    if "repeats" not in t:
        return None
    rep = t[t["repeats"] >= 2]
    if len(rep) < MIN_LOO_MODELS:
        return None
    spread = rep["spread"].to_numpy(float)
    return {
        "models": len(rep),
        "agree20": float(np.mean(spread <= REPEAT_AGREE)),
        "median_spread": float(np.median(spread)),
    }


def ncnn_ceilings(tables: Sequence[NcnnTable], prior_sd: float) -> dict[str, dict[str, Any]]:
    """Per GPU: `ncnn_in_sample` (prior learned without the GPU), `ncnn_nearest_gpu_ceiling`
    and `repeat_agreement`, each None where it does not apply."""
    nearest = ncnn_nearest_gpu_ceiling(tables)
    return {
        tb.target.gpu.id: {
            "in_sample": ncnn_in_sample(tb, ncnn_class_prior(tables, tb.target.gpu.id), prior_sd),
            "nearest_gpu": nearest.get(tb.target.gpu.id),
            "repeats": repeat_agreement(tb.target),
        }
        for tb in tables
    }


def ncnn_tables(
    pipe: transfer.TransferPipeline, data_dir: Path, zoo_dir: Path | None = None
) -> list[NcnnTable]:
    return [ncnn_predictions(pipe, t) for t in ncnn_data.load_targets(data_dir, zoo_dir)]


def evaluate_ncnn(
    tables: Sequence[NcnnTable],
    sets: Mapping[str, Any],
    prior_sd: float,
    loo: bool = True,
    approx_models: set[str] = frozenset(),
) -> list[NcnnResult]:
    flops82 = {m: plan_flops(p) for s in sets for m, p in sets[s].plans.items()}
    logo = ncnn_leave_one_gpu_out(tables)
    ceilings = ncnn_ceilings(tables, prior_sd) if loo else {}
    out = []
    for tb in tables:
        target, pred = tb.target, tb.frame
        ref = nearest_measured(target.gpu, sorted(sets))
        ref_models = sets[ref].models
        coef = fit_flops_baseline(
            np.array([flops82[m] for m in ref_models]),
            sets[ref].e2e.loc[ref_models, "latency_ms"].to_numpy(float),
        )
        scale = socs.resolve(ref).fp16_gflops / target.gpu.fp16_gflops
        base = flops_baseline_predict(coef, pred["flops"].to_numpy()) * scale
        fold = _ncnn_folds(len(pred), target.gpu.id)
        models = pred["model"].to_numpy()
        priors = [
            ncnn_class_prior(tables, target.gpu.id, set(models[fold == i]))
            for i in range(NCNN_FOLDS)
        ]
        cal = {}
        same = np.isin(models, sorted(approx_models)) if approx_models else None
        for k in KS:
            run = ncnn_calibrated(tb, priors, k, prior_sd, same if k == 5 else None)
            if run is not None:
                cal[k] = run
        out.append(
            NcnnResult(
                target=target,
                zero_shot=metrics(pred["transfer"].to_numpy(), pred["measured"].to_numpy()),
                zero_shot_baseline=metrics(base, pred["measured"].to_numpy()),
                nearest=ref,
                calibrated=cal,
                predictions=pred,
                loo=ncnn_leave_one_out(tb, priors, prior_sd) if loo else None,
                logo=logo.get(target.gpu.id),
                ceiling=ceilings.get(target.gpu.id),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# The report's data (its markdown: `leti.evaluate.reports.transfer_markdown`)


@dataclass
class TransferReport:
    loso: pd.DataFrame
    zero: dict[str, dict]
    calibrated: dict[int, dict[str, CalibratedRun]]
    ncnn: list[NcnnResult]
    prior_sd: dict[str, float]
    elapsed_s: float
    ncnn_note: str = ""
    class_prior: dict[str, Any] | None = None  # for the transfer manifest's `class_priors`
    ncnn_approximate: dict[str, Any] | None = None  # earlier figures on approximate graphs

    def headline(self) -> dict[str, Any]:
        k5 = self.calibrated[5]
        acc = [r.leti["acc20"] for r in k5.values()]
        tau = [r.leti["kendall_tau"] for r in k5.values()]
        doc: dict[str, Any] = {
            "tflite_loso_k5_median_acc20": float(np.median(acc)),
            "tflite_loso_k5_median_tau": float(np.median(tau)),
            "tflite_loso_zero_shot_median_acc20": float(
                np.median([z["leti"]["acc20"] for z in self.zero.values()])
            ),
        }
        runs = [r.calibrated[5] for r in self.ncnn if 5 in r.calibrated]
        if runs:
            doc["ncnn_k5_median_acc20"] = float(np.median([r.leti["acc20"] for r in runs]))
            doc["ncnn_k5_mean_acc20"] = float(np.mean([r.leti["acc20"] for r in runs]))
            doc["ncnn_k5_log_affine_median_acc20"] = float(
                np.median([r.log_affine["acc20"] for r in runs if r.log_affine])
            )
            doc["ncnn_k5_beats_flops_mape"] = sum(r.leti["mape"] < r.flops["mape"] for r in runs)
            doc["ncnn_k5_beats_flops_acc20"] = sum(r.leti["acc20"] > r.flops["acc20"] for r in runs)
            doc["ncnn_targets"] = len(runs)
            doc["ncnn_k5_gpu_priced_median_acc20"] = float(
                np.median([r.gpu_priced["acc20"] for r in runs if r.gpu_priced])
            )
            same = [r.same_models["acc20"] for r in runs if r.same_models]
            if same:
                doc["ncnn_k5_same_models_median_acc20"] = float(np.median(same))
                doc["ncnn_k5_same_models_targets"] = len(same)
        for r in self.ncnn:
            if r.loo is not None and r.target.gpu.id in NAMED_NCNN_GPUS:
                doc[f"ncnn_loo_acc20_{r.target.gpu.id}"] = r.loo["all"]["acc20"]
                doc[f"ncnn_loo_acc20_gpu_priced_{r.target.gpu.id}"] = r.loo["gpu_priced"]["acc20"]
        ceilings = [r.ceiling for r in self.ncnn if r.ceiling]
        if ceilings:
            doc["ncnn_in_sample_median_acc20"] = float(
                np.median([c["in_sample"]["acc20"] for c in ceilings])
            )
            near = [c["nearest_gpu"]["acc20"] for c in ceilings if c["nearest_gpu"]]
            if near:
                doc["ncnn_nearest_gpu_ceiling_median_acc20"] = float(np.median(near))
                doc["ncnn_nearest_gpu_ceiling_targets"] = len(near)
            for r in self.ncnn:
                if r.ceiling and r.target.gpu.id in NAMED_NCNN_GPUS:
                    gid = r.target.gpu.id
                    doc[f"ncnn_in_sample_acc20_{gid}"] = r.ceiling["in_sample"]["acc20"]
                    if r.ceiling["nearest_gpu"]:
                        doc[f"ncnn_nearest_gpu_ceiling_acc20_{gid}"] = r.ceiling["nearest_gpu"][
                            "acc20"
                        ]
        return doc

    def to_json(self) -> dict:
        return {
            "headline": self.headline(),
            "prior_sd": self.prior_sd,
            "tflite_loso": {
                s: {
                    "zero_shot": z["leti"],
                    "zero_shot_baseline": z["baseline"],
                    "nearest": z["nearest"],
                    **{
                        f"k{k}": {
                            "leti": self.calibrated[k][s].leti,
                            "flops": self.calibrated[k][s].flops,
                            "coverage90": self.calibrated[k][s].coverage,
                            "bases_kept": self.calibrated[k][s].picks,
                            "forms_kept": self.calibrated[k][s].forms,
                        }
                        for k in KS
                    },
                }
                for s, z in self.zero.items()
            },
            "ncnn": {
                r.target.gpu.id: {
                    "models": len(r.predictions),
                    "zero_shot": r.zero_shot,
                    "zero_shot_baseline": r.zero_shot_baseline,
                    **{
                        f"k{k}": {
                            "leti": c.leti,
                            "flops": c.flops,
                            "coverage90": c.coverage,
                            "bases_kept": c.picks,
                            "log_affine_alone": c.log_affine,  # the map half, either form
                            "forms_kept": c.forms,
                            "gpu_priced": c.gpu_priced,
                            "approximate_onnx_models_only": c.same_models,
                        }
                        for k, c in r.calibrated.items()
                    },
                    "leave_one_model_out": r.loo,
                    "leave_one_gpu_out": r.logo,
                    "ceilings": r.ceiling,
                }
                for r in self.ncnn
            },
            "ncnn_graphs": "exact .param graphs of the benchmark" if self.ncnn else None,
            "ncnn_approximate_onnx": self.ncnn_approximate,
        }


def run(
    measurements_root: Path | None = None,
    shared: Path | None = None,
    n_jobs: int = 1,
) -> tuple[TransferReport, dict[str, Any], transfer.FitCache]:
    """Everything `leti evaluate --transfer` computes; also returns the sets and fit cache."""
    t0 = time.perf_counter()
    sets = transfer.load_sets("tflite-gpu", measurements_root)
    if not sets:
        raise LetiError("no tflite-gpu end-to-end measurements: run `leti import` first")
    cache = transfer.FitCache(sets, n_jobs=n_jobs)
    loso = transfer.loso_zero_shot(sets, cache=cache)
    flops = {m: plan_flops(p) for s in sets for m, p in sets[s].plans.items()}
    zero = loso_zero_shot_scores(loso, sets, flops)
    # Point predictions do not depend on the prior residual scale: one pass to measure the
    # residual scale left at k = 5, a second to size (and check) intervals with it.
    probe = loso_calibrated(loso, flops, 5, calibration.DEFAULT_PRIOR_SD)
    prior = {"transfer": _rms(np.concatenate([r.log_residuals for r in probe.values()]))}
    calibrated = {k: loso_calibrated(loso, flops, k, prior["transfer"]) for k in KS}
    shared = shared or shared_dir()
    data_dir = shared / "data" / "ncnn-benchmark"
    ncnn: list[NcnnResult] = []
    note = ""
    class_prior = None
    graphs = data_dir / ncnn_data.MODELS_DIR
    if (data_dir / "ncnn_benchmark.csv").is_file() and (graphs / ncnn_data.INPUTS_FILE).is_file():
        pipe = transfer.fit_transfer(cache, sorted(sets))
        tables = ncnn_tables(pipe, data_dir)
        probe_n = evaluate_ncnn(tables, sets, calibration.DEFAULT_PRIOR_SD, loo=False)
        resid = [r.calibrated[5].log_residuals for r in probe_n if 5 in r.calibrated]
        if resid:
            prior["cross_runtime"] = _rms(np.concatenate(resid))
        ncnn = evaluate_ncnn(
            tables,
            sets,
            prior.get("cross_runtime", calibration.DEFAULT_PRIOR_SD),
            approx_models=approximate_models(shared),
        )
        class_prior = {
            **ncnn_class_prior(tables).to_dict(),
            "data": {
                "path": str(data_dir / "ncnn_benchmark.csv"),
                "licence": ncnn_data.LICENCE,
                "sha256": sha256_file(data_dir / "ncnn_benchmark.csv"),
                "data_sha256": ncnn_data.data_sha256(data_dir),
                "gpus": [tb.target.gpu.id for tb in tables],
                "graphs": "exact .param graphs (models/ beside the table)",
            },
        }
    else:
        note = f"skipped: ncnn benchmark or its .param graphs not found under {data_dir}"
    report = TransferReport(
        loso,
        zero,
        calibrated,
        ncnn,
        prior,
        time.perf_counter() - t0,
        ncnn_note=note,
        class_prior=class_prior,
        ncnn_approximate=approximate_onnx_figures(DEFAULT_OUT.with_suffix(".json")),
    )
    return report, sets, cache


def approximate_models(shared: Path) -> set[str]:
    """The benchmark models the approximate ONNX exports stood for (`../shared/zoo/ncnn/
    mapping.json`), or none when they are absent."""
    path = shared / "zoo" / "ncnn" / "mapping.json"
    if not path.is_file():
        return set()
    return {k for k in json.loads(path.read_text("utf-8")) if not k.startswith("_")}


def approximate_onnx_figures(previous_json: Path) -> dict[str, Any] | None:
    """The ncnn figures measured on the approximate ONNX graphs (15 classification models of
    `../shared/zoo/ncnn/`) before the exact `.param` graphs existed, carried from the committed
    report so that the new figures stand beside them."""
    if not previous_json.is_file():
        return None
    doc = json.loads(previous_json.read_text("utf-8"))
    if "ncnn_approximate_onnx" in doc:
        return doc["ncnn_approximate_onnx"]
    if doc.get("ncnn_graphs") or not doc.get("ncnn"):
        return None
    return {
        "graphs": "approximate ONNX exports of 15 classification models (../shared/zoo/ncnn)",
        "headline": {k: v for k, v in doc.get("headline", {}).items() if str(k).startswith("ncnn")},
        "gpus": {
            g: {
                "models": r.get("models"),
                "zero_shot_acc20": r.get("zero_shot", {}).get("acc20"),
                **{f"k{k}_acc20": r[f"k{k}"]["leti"]["acc20"] for k in KS if f"k{k}" in r},
                **{f"k{k}_flops_acc20": r[f"k{k}"]["flops"]["acc20"] for k in KS if f"k{k}" in r},
            }
            for g, r in doc["ncnn"].items()
        },
    }


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))
