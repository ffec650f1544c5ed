"""`leti evaluate --transfer`: how well leti answers for GPUs it has no per-layer data for.

Two protocols, both written to benchmarks/transfer.md (+ .json), generated, never typed:

1. Leave-one-SoC-out over the measured tflite-gpu SoCs. The held-out SoC is never seen, and
   its test models are never seen on any SoC (grouped model folds): `transfer.loso_zero_shot`.
   Zero-shot = the transfer pipeline with the SoC's descriptors. Calibrated = the shipped
   `leti.calibration.fit_log_affine` fitted on k timings of the same SoC drawn from the
   fold's *other* models (calibration and test models are disjoint), repeated over
   `DRAWS` random draws; metrics are the mean over draws of metrics over all held-out models.
2. ncnn-vulkan on the mobile GPUs of the ncnn benchmark (`leti.measurements.ncnn_benchmark`).
   The base is the transfer pipeline trained on all measured SoCs, given the GPU's approximate descriptors
   (`data/ncnn_gpus.json`) and the ncnn-vulkan fusion rules. Each GPU's models are split into
   `NCNN_FOLDS` grouped folds: a fold's models are tested, k calibration timings are drawn
   from the GPU's other models (`DRAWS` draws), and the class-scale prior is relearned on the
   other GPUs without the fold's models, so a test model is never seen on any GPU.

Baselines: zero-shot, the FLOPs log-log regression of the nearest measured SoC (same family
first, then nearest FP16 peak) scaled by the ratio of FP16 peaks; calibrated, a log-log FLOPs
regression fitted on the same k timings.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from leti.core import socs
from leti.core.store import sha256_file
from leti.evaluate.accuracy import metrics
from leti.models import class_scales
from leti.train import calibrate as calibration
from leti.train import transfer
from leti.train.fit import load_plan

log = logging.getLogger(__name__)

KS = (3, 5, 10)
DRAWS = 20
SEED = 0
NCNN_FOLDS = 5
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "benchmarks" / "transfer.md"
METRIC_KEYS = ("acc10", "acc20", "mape", "kendall_tau")


def shared_dir() -> Path:
    return Path(os.environ.get("LETI_SHARED_DIR", REPO.parent / "shared"))


def _flops(plan) -> float:
    return float(sum(k.flops for k in plan.kernels))


def _mean_metrics(draws: Sequence[dict]) -> dict[str, float]:
    return {key: float(np.nanmean([d[key] for d in draws])) for key in (*METRIC_KEYS, "n")}


def nearest_measured(hw: Any, candidates: Sequence[str]) -> str:
    """Same family first, then the closest FP16 peak (log)."""

    def dist(s: str) -> tuple[float, float]:
        c = socs.resolve(s)
        return (float(c.family != hw.family), abs(np.log(c.fp16_gflops / hw.fp16_gflops)))

    return min(sorted(candidates), key=dist)


def _flops_fit(flops: np.ndarray, latency: np.ndarray) -> tuple[float, float]:
    b, a = np.polyfit(np.log(flops), np.log(latency), 1)
    return float(a), float(b)


@dataclass
class CalibratedRun:
    leti: dict[str, float]
    flops: dict[str, float]
    coverage: float  # share of test timings inside the calibrated 90% interval
    log_residuals: np.ndarray  # log(measured / calibrated) over every draw
    picks: dict[str, float]  # which base the calibrations kept, share of fits
    log_affine: dict[str, float] | None = None  # cross-runtime: the log-affine half alone


def _pick_share(picks: Sequence[str]) -> dict[str, float]:
    s = pd.Series(list(picks)).value_counts(normalize=True)
    return {str(k): float(v) for k, v in s.items()}


def _calibrate_predict(cal: pd.DataFrame, test: pd.DataFrame, prior_sd: float):
    """The shipped calibration (`select_and_fit`) on the calibration rows, applied to the test
    rows: candidates are the own transfer prediction, then every `profile:<soc>` column."""
    cols = ["transfer", *(c for c in cal.columns if c.startswith("profile:"))]
    cands = {c: cal[c].to_numpy(float) for c in cols if np.isfinite(cal[c].to_numpy(float)).all()}
    name, fit = calibration.select_and_fit(cands, cal["measured"].to_numpy(float), prior_sd)
    return fit.apply(test[name].to_numpy(float)), fit.interval, name


# --------------------------------------------------------------------------------------------
# 1. leave-one-SoC-out on tflite-gpu


def loso_calibrated(
    loso: pd.DataFrame, flops: Mapping[str, float], k: int, prior_sd: float
) -> dict[str, CalibratedRun]:
    out = {}
    for s, g in loso.groupby("soc"):
        runs, fl_runs, inside, resid, picks = [], [], [], [], []
        for r in range(DRAWS):
            rng = np.random.default_rng([SEED, r, k, *map(ord, s)])
            pred, meas, fpred = [], [], []
            for _, gf in g.groupby("fold"):
                pool = gf[~gf["test"]]
                cal = pool.iloc[rng.choice(len(pool), size=k, replace=False)]
                test = gf[gf["test"]]
                p, (lo, hi), pick = _calibrate_predict(cal, test, prior_sd)
                picks.append(pick)
                pred.extend(p)
                meas.extend(test["measured"])
                a, b = _flops_fit(cal["model"].map(flops).to_numpy(), cal["measured"].to_numpy())
                fpred.extend(np.exp(a + b * np.log(test["model"].map(flops).to_numpy())))
                lr = np.log(test["measured"].to_numpy() / p)
                inside.extend((lr >= lo) & (lr <= hi))
                resid.extend(lr)
            runs.append(metrics(np.array(pred), np.array(meas)))
            fl_runs.append(metrics(np.array(fpred), np.array(meas)))
        out[s] = CalibratedRun(
            _mean_metrics(runs),
            _mean_metrics(fl_runs),
            float(np.mean(inside)),
            np.array(resid),
            _pick_share(picks),
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
            a, b = _flops_fit(
                np.array([flops[m] for m in train]),
                sets[ref].e2e.loc[train, "latency_ms"].to_numpy(float),
            )
            scale = ref_hw.fp16_gflops / hw.fp16_gflops
            base.extend(np.exp(a + b * np.log(gf["model"].map(flops).to_numpy())) * scale)
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
    target: Any  # leti.ncnn_data.NcnnTarget
    zero_shot: dict[str, float]
    zero_shot_baseline: dict[str, float]
    nearest: str
    calibrated: dict[int, CalibratedRun]
    predictions: pd.DataFrame


@dataclass
class NcnnTable:
    """One target's base predictions: `frame` has the measured and predicted totals per model
    (columns `transfer` and `profile:<soc>`), `terms` the class-scale terms of each base."""

    target: Any
    frame: pd.DataFrame
    terms: dict[str, np.ndarray]


def ncnn_predictions(pipe: transfer.TransferPipeline, target: Any) -> NcnnTable:
    t = target.timings
    plans = {m: load_plan(g, "ncnn-vulkan") for m, g in zip(t["model"], t["graph"], strict=True)}
    models = list(t["model"])
    # What `leti calibrate --runtime ncnn-vulkan` fits on (`calibration.load_base`): the
    # kernel sum for a cross-runtime base, else the corrected total.
    which = 1 if calibration.base_total("ncnn-vulkan") == calibration.KERNEL_SUM_TOTAL else 0
    ns = SimpleNamespace(plans=plans)

    def priced(hw: Any) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(predict_detail, class-scale terms) on `hw`, from one kernel-time prediction."""
        ms = transfer.kernel_sums(pipe.kernels, ns, hw, models)
        terms = np.array([class_scales.class_terms(plans[m].kernels, ms[m]) for m in models])
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
            "flops": [_flops(plans[m]) for m in models],
        }
    )
    terms = {"transfer": own_terms}
    for s in pipe.train_socs:
        profile, terms[f"profile:{s}"] = priced(socs.resolve(s))
        frame[f"profile:{s}"] = profile[which]
    return NcnnTable(target, frame, terms)


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
    """The class-scale prior learned on the other GPUs' timings of the other models."""
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
    (calibrated, interval, base kept, log-affine half alone)."""
    f = tb.frame
    y = f["measured"].to_numpy(float)[cal]
    cols = ["transfer", *(c for c in f.columns if c.startswith("profile:"))]
    cands = {c: f[c].to_numpy(float)[cal] for c in cols}
    cands = {c: v for c, v in cands.items() if np.isfinite(v).all()}
    name, la = calibration.select_and_fit(cands, y, prior_sd)
    base = f[name].to_numpy(float)
    fit = calibration.fit_cross_runtime(
        base[cal], tb.terms[name][cal], y, prior, prior_sd, log_affine=la
    )
    return fit.apply(base[test], tb.terms[name][test]), fit.interval, name, la.apply(base[test])


def ncnn_calibrated(
    tb: NcnnTable, priors: Sequence[class_scales.ClassPrior], k: int, prior_sd: float
) -> CalibratedRun | None:
    """Grouped folds: a fold's models are test models, calibration draws k of the others, and
    the class prior (`priors[fold]`) never saw the fold's models nor this GPU."""
    f = tb.frame
    n = len(f)
    fold = _ncnn_folds(n, tb.target.gpu.id)
    if min(int((fold != i).sum()) for i in range(NCNN_FOLDS)) < k:
        return None
    y = f["measured"].to_numpy(float)
    flops = f["flops"].to_numpy(float)
    runs, la_runs, fl_runs, inside, resid, picks = [], [], [], [], [], []
    for r in range(DRAWS):
        pred, la_pred, fpred = np.empty(n), np.empty(n), np.empty(n)
        for i in range(NCNN_FOLDS):
            test = np.flatnonzero(fold == i)
            pool = np.flatnonzero(fold != i)
            rng = np.random.default_rng([SEED, r, k, i, *map(ord, tb.target.gpu.id)])
            cal = rng.choice(pool, size=k, replace=False)
            p, (lo, hi), pick, lp = _calibrate_cross(tb, cal, test, priors[i], prior_sd)
            pred[test], la_pred[test] = p, lp
            picks.append(pick)
            a, b = _flops_fit(flops[cal], y[cal])
            fpred[test] = np.exp(a + b * np.log(flops[test]))
            lr = np.log(y[test] / p)
            inside.extend((lr >= lo) & (lr <= hi))
            resid.extend(lr)
        runs.append(metrics(pred, y))
        la_runs.append(metrics(la_pred, y))
        fl_runs.append(metrics(fpred, y))
    return CalibratedRun(
        _mean_metrics(runs),
        _mean_metrics(fl_runs),
        float(np.mean(inside)),
        np.array(resid),
        _pick_share(picks),
        log_affine=_mean_metrics(la_runs),
    )


def ncnn_tables(pipe: transfer.TransferPipeline, data_dir: Path, zoo_dir: Path) -> list[NcnnTable]:
    from leti.measurements import ncnn_benchmark as ncnn_data

    return [ncnn_predictions(pipe, t) for t in ncnn_data.load_targets(data_dir, zoo_dir)]


def evaluate_ncnn(
    tables: Sequence[NcnnTable], sets: Mapping[str, Any], prior_sd: float
) -> list[NcnnResult]:
    flops82 = {m: _flops(p) for s in sets for m, p in sets[s].plans.items()}
    out = []
    for tb in tables:
        target, pred = tb.target, tb.frame
        ref = nearest_measured(target.gpu, sorted(sets))
        ref_models = sets[ref].models
        a, b = _flops_fit(
            np.array([flops82[m] for m in ref_models]),
            sets[ref].e2e.loc[ref_models, "latency_ms"].to_numpy(float),
        )
        scale = socs.resolve(ref).fp16_gflops / target.gpu.fp16_gflops
        base = np.exp(a + b * np.log(pred["flops"].to_numpy())) * scale
        fold = _ncnn_folds(len(pred), target.gpu.id)
        models = pred["model"].to_numpy()
        priors = [
            ncnn_class_prior(tables, target.gpu.id, set(models[fold == i]))
            for i in range(NCNN_FOLDS)
        ]
        cal = {}
        for k in KS:
            run = ncnn_calibrated(tb, priors, k, prior_sd)
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
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Report


def _pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def _tau(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.2f}"


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
                            "log_affine_alone": c.log_affine,
                        }
                        for k, c in r.calibrated.items()
                    },
                }
                for r in self.ncnn
            },
        }

    def markdown(self) -> str:
        h = self.headline()
        lines = [
            "# Transfer: SoCs without per-layer measurements",
            "",
            f"Generated by `leti evaluate --transfer` on {datetime.now(UTC).date().isoformat()} "
            f"in {self.elapsed_s:.0f} s; do not edit by hand.",
            "",
            "How well leti answers for a GPU it has no per-layer data for: zero-shot from the "
            "GPU's hardware descriptors (provenance `transfer`), and after `leti calibrate` with k "
            "end-to-end timings (provenance `calibrated`). Metrics compare predicted with "
            "measured end-to-end latency: ±10% / ±20% = share of models within that error, "
            "MAPE, Kendall τ (ranking). Calibrated figures are means over "
            f"{DRAWS} random draws of the k calibration models; calibration and test models are "
            "always disjoint.",
            "",
            "## Headline",
            "",
            f"- tflite-gpu, leave-one-SoC-out, k = 5: median ±20% accuracy "
            f"**{_pct(h['tflite_loso_k5_median_acc20'])}** (target ≥ 80%), median Kendall τ "
            f"**{_tau(h['tflite_loso_k5_median_tau'])}** (target ≥ 0.85).",
            f"- tflite-gpu zero-shot: median ±20% accuracy "
            f"{_pct(h['tflite_loso_zero_shot_median_acc20'])}.",
        ]
        if "ncnn_k5_median_acc20" in h:
            lines.append(
                f"- ncnn-vulkan, {h['ncnn_targets']} mobile GPUs, k = 5: median ±20% accuracy "
                f"**{_pct(h['ncnn_k5_median_acc20'])}** (target ≥ 75%); lower MAPE than the "
                f"FLOPs fit on the same 5 timings on **{h['ncnn_k5_beats_flops_mape']}/"
                f"{h['ncnn_targets']}** targets, higher ±20% accuracy on "
                f"{h['ncnn_k5_beats_flops_acc20']}/{h['ncnn_targets']}. Mean over the targets "
                f"{_pct(h['ncnn_k5_mean_acc20'])}; the log-affine half alone: median "
                f"{_pct(h['ncnn_k5_log_affine_median_acc20'])}."
            )
        elif self.ncnn_note:
            lines.append(f"- ncnn-vulkan: {self.ncnn_note}")
        lines += [
            "",
            "## 1. tflite-gpu: leave-one-SoC-out",
            "",
            "Each SoC in turn is held out of training entirely, and within it the models are "
            "split into 5 grouped folds: a test model is seen neither on the held-out SoC nor on "
            "any other SoC (kernel rows and end-to-end times alike). The transfer model is "
            "retrained for every (SoC, fold): 30 pipelines. Calibration draws k timings of the "
            "held-out SoC from the fold's other models.",
            "",
            "Zero-shot (transfer, no timings) vs the nearest measured SoC's FLOPs regression "
            "scaled by the FP16 peak ratio:",
            "",
            "| held-out SoC | ±10% | ±20% | MAPE | τ | baseline (nearest) ±20% | baseline MAPE "
            "| baseline τ |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s, z in self.zero.items():
            m, b = z["leti"], z["baseline"]
            lines.append(
                f"| {s} | {_pct(m['acc10'])} | {_pct(m['acc20'])} | {_pct(m['mape'])} | "
                f"{_tau(m['kendall_tau'])} | {_pct(b['acc20'])} ({z['nearest']}) | "
                f"{_pct(b['mape'])} | {_tau(b['kendall_tau'])} |"
            )
        lines += [
            "",
            "Calibrated on k timings. leti: exactly what `leti calibrate` does "
            "(`leti.calibration.select_and_fit`): a log-affine map, slope shrunk to 1, fitted "
            "on the SoC's own transfer prediction, or on the transfer model priced with one of "
            "the measured training SoCs' descriptors (a *profile*) when that profile's "
            "leave-one-out error on the k timings is below "
            f"{calibration.PROFILE_GAIN} x the own base's. FLOPs: log-log FLOPs fit on the "
            "same k timings. 'own base kept' = share of calibrations that kept the SoC's own "
            "transfer prediction.",
            "",
            "| held-out SoC | k | ±10% | ±20% | MAPE | τ | 90% interval coverage "
            "| own base kept | FLOPs ±20% | FLOPs MAPE | FLOPs τ |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in self.zero:
            for k in KS:
                r = self.calibrated[k][s]
                m, f = r.leti, r.flops
                lines.append(
                    f"| {s} | {k} | {_pct(m['acc10'])} | {_pct(m['acc20'])} | "
                    f"{_pct(m['mape'])} | {_tau(m['kendall_tau'])} | {_pct(r.coverage)} | "
                    f"{_pct(r.picks.get('transfer', 0.0))} | "
                    f"{_pct(f['acc20'])} | {_pct(f['mape'])} | {_tau(f['kendall_tau'])} |"
                )
        lines += ["", "Medians over the held-out SoCs:", ""]
        lines += [
            "| k | ±10% | ±20% | MAPE | τ | FLOPs ±20% | FLOPs MAPE |",
            "|---|---|---|---|---|---|---|",
        ]
        for k in KS:
            runs = list(self.calibrated[k].values())

            def med(key: str, which: str = "leti", runs=runs) -> float:
                return float(np.median([getattr(r, which)[key] for r in runs]))

            lines.append(
                f"| {k} | {_pct(med('acc10'))} | {_pct(med('acc20'))} | {_pct(med('mape'))} | "
                f"{_tau(med('kendall_tau'))} | {_pct(med('acc20', 'flops'))} | "
                f"{_pct(med('mape', 'flops'))} |"
            )
        lines += ["", "## 2. ncnn-vulkan on the ncnn benchmark's mobile GPUs", ""]
        if not self.ncnn:
            lines += [self.ncnn_note or "ncnn data not found.", ""]
        else:
            lines += [
                "Base: the transfer model trained on all six measured SoCs (tflite-gpu), given "
                "the GPU's approximate descriptors (`leti/data/ncnn_gpus.json`) and the "
                "ncnn-vulkan fusion rules, exactly as `leti calibrate --runtime ncnn-vulkan` "
                "does for a SoC in the registry (including the choice among profiles); as a "
                "cross-runtime base it answers its kernel sum, without the tflite-gpu "
                "graph-level corrector (zero-shot columns). "
                "Calibration (`leti.calibration.fit_cross_runtime`): the geometric mean of the "
                "log-affine map of the base and of per-kernel-class scales "
                "(`leti.models.class_scales`) whose prior is learned on the *other* GPUs' "
                "timings of the *other* models. Protocol: each GPU's models are split into 5 grouped "
                "folds; a fold's models are test models, the k calibration timings are drawn "
                "from the GPU's other models, and the class prior is relearned without this "
                "GPU and without the fold's models, so no test model is seen on any GPU "
                f"({DRAWS} draws; k = 10 only where every fold leaves 10 models). "
                "'log-affine alone' is the first half on its own (the calibration before the "
                "class scales). FLOPs: log-log fit on the same k timings. Zero-shot baseline: the "
                "nearest measured SoC's FLOPs regression scaled by the FP16 peak ratio.",
                "",
                "| GPU | models | zero-shot ±20% | zero-shot MAPE | zero-shot τ | baseline MAPE "
                "| k=5 ±20% | k=5 MAPE | k=5 τ | log-affine alone k=5 ±20% | FLOPs k=5 ±20% "
                "| FLOPs k=5 MAPE | FLOPs k=5 τ | beats FLOPs (MAPE) |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in self.ncnn:
                c = r.calibrated.get(5)
                z, zb = r.zero_shot, r.zero_shot_baseline
                row = (
                    f"| {r.target.gpu.name} | {len(r.predictions)} | {_pct(z['acc20'])} | "
                    f"{_pct(z['mape'])} | {_tau(z['kendall_tau'])} | {_pct(zb['mape'])} | "
                )
                if c is None:
                    row += "– | – | – | – | – | – | – | – |"
                else:
                    la = c.log_affine or {}
                    row += (
                        f"{_pct(c.leti['acc20'])} | {_pct(c.leti['mape'])} | "
                        f"{_tau(c.leti['kendall_tau'])} | {_pct(la.get('acc20'))} | "
                        f"{_pct(c.flops['acc20'])} | "
                        f"{_pct(c.flops['mape'])} | {_tau(c.flops['kendall_tau'])} | "
                        f"{'yes' if c.leti['mape'] < c.flops['mape'] else 'no'} |"
                    )
                lines.append(row)
            lines += [
                "",
                "All k (leti ±20% / MAPE vs FLOPs ±20% / MAPE; 90% interval coverage):",
                "",
                "| GPU | k=3 | k=5 | k=10 |",
                "|---|---|---|---|",
            ]
            for r in self.ncnn:
                cells = []
                for k in KS:
                    c = r.calibrated.get(k)
                    cells.append(
                        "–"
                        if c is None
                        else f"{_pct(c.leti['acc20'])} / {_pct(c.leti['mape'])} vs "
                        f"{_pct(c.flops['acc20'])} / {_pct(c.flops['mape'])}; "
                        f"cov {_pct(c.coverage)}"
                    )
                lines.append(f"| {r.target.gpu.id} | " + " | ".join(cells) + " |")
            lines += [
                "",
                "Data selection (`leti/ncnn_data.py`): rows with backend = vulkan and "
                "gpu_banner = 1 (AXERA AX620A and Ingenic T40XP print gpu_device = 0 but ran on "
                "the CPU, so are excluded); the Station-M3 RK3588S GPU rows are excluded as broken "
                "(vgg16 in 0.56 ms); per GPU, the runs with the most rows are kept and per model "
                "the minimum avg_ms over them; detectors and int8 models have no graph and are "
                "skipped; the overclocked Raspberry Pi 5 duplicates the stock one. Laptop, "
                "desktop and Jetson GPUs are not mobile targets. The graphs in "
                "`../shared/zoo/ncnn/` approximate ncnn's own .param networks (see its "
                "mapping.json).",
                "",
                "| GPU | benchmark section | runs kept |",
                "|---|---|---|",
            ]
            for r in self.ncnn:
                lines.append(
                    f"| {r.target.gpu.id} | {r.target.section[:70]} | "
                    f"{', '.join(map(str, r.target.runs))} |"
                )
        lines += [
            "",
            "## Intervals",
            "",
            "- `transfer` answers: the 5%/95% quantiles of log(measured / predicted) over every "
            "held-out (SoC, model) pair of section 1, stored in "
            "`models/transfer/tflite-gpu/transfer.json`.",
            "- `calibrated` answers: leave-one-out residuals of the k timings pooled with a prior "
            "residual scale (the RMS log residual left after k = 5 calibration here: "
            + ", ".join(f"{key} {v:.3f}" for key, v in self.prior_sd.items())
            + "), Student t; the coverage columns above check them on held-out models.",
            "",
        ]
        return "\n".join(lines) + "\n"


def run(
    measurements_root: Path | None = None,
    shared: Path | None = None,
    n_jobs: int = 1,
) -> tuple[TransferReport, dict[str, Any], transfer.FitCache]:
    """Everything `leti evaluate --transfer` computes; also returns the sets and fit cache."""
    t0 = time.perf_counter()
    sets = transfer.load_sets("tflite-gpu", measurements_root)
    cache = transfer.FitCache(sets, n_jobs=n_jobs)
    loso = transfer.loso_zero_shot(sets, cache=cache)
    flops = {m: _flops(p) for s in sets for m, p in sets[s].plans.items()}
    zero = loso_zero_shot_scores(loso, sets, flops)
    # Point predictions do not depend on the prior residual scale: one pass to measure the
    # residual scale left at k = 5, a second to size (and check) intervals with it.
    probe = loso_calibrated(loso, flops, 5, calibration.DEFAULT_PRIOR_SD)
    prior = {"transfer": _rms(np.concatenate([r.log_residuals for r in probe.values()]))}
    calibrated = {k: loso_calibrated(loso, flops, k, prior["transfer"]) for k in KS}
    shared = shared or shared_dir()
    data_dir, zoo_dir = shared / "data" / "ncnn-benchmark", shared / "zoo" / "ncnn"
    ncnn: list[NcnnResult] = []
    note = ""
    class_prior = None
    if (data_dir / "ncnn_benchmark.csv").is_file() and (zoo_dir / "mapping.json").is_file():
        pipe = transfer.fit_transfer(cache, sorted(sets))
        tables = ncnn_tables(pipe, data_dir, zoo_dir)
        probe_n = evaluate_ncnn(tables, sets, calibration.DEFAULT_PRIOR_SD)
        resid = [r.calibrated[5].log_residuals for r in probe_n if 5 in r.calibrated]
        if resid:
            prior["cross_runtime"] = _rms(np.concatenate(resid))
        ncnn = evaluate_ncnn(tables, sets, prior.get("cross_runtime", calibration.DEFAULT_PRIOR_SD))
        class_prior = {
            **ncnn_class_prior(tables).to_dict(),
            "data": {
                "path": str(data_dir / "ncnn_benchmark.csv"),
                "licence": "BSD-3-Clause (the ncnn project's benchmark/README.md)",
                "sha256": sha256_file(data_dir / "ncnn_benchmark.csv"),
                "gpus": [tb.target.gpu.id for tb in tables],
                "graphs": str(zoo_dir),
            },
        }
    else:
        note = f"skipped: ncnn benchmark or graphs not found under {shared}"
    report = TransferReport(
        loso,
        zero,
        calibrated,
        ncnn,
        prior,
        time.perf_counter() - t0,
        ncnn_note=note,
        class_prior=class_prior,
    )
    return report, sets, cache


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def write_report(report: TransferReport, out: Path) -> None:
    from leti.core.store import atomic_write_json, atomic_write_text

    atomic_write_text(out, report.markdown())
    atomic_write_json(out.with_suffix(".json"), report.to_json())


def main(args) -> int:
    out = Path(args.out) if args.out and Path(args.out).name != "accuracy.md" else DEFAULT_OUT
    report, _, _ = run(args.measurements_dir)
    write_report(report, out)
    h = report.headline()
    for key, value in h.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
