"""Honest accuracy: 5-fold cross-validation grouped by model, against two baselines.

A model's kernels and its end-to-end time are held out together: no row of a test model is
ever seen in training (neither by the kernel regressors nor by the corrector).
Baselines: a log-log FLOPs regression fitted on the training models, and the raw sum of the
per-kernel predictions without the corrector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from leti.evaluate.scores import (
    fit_flops_baseline,
    flops_baseline_predict,
    metrics,
    plan_flops,
)
from leti.measurements import schema as measurements
from leti.train.fit import N_SPLITS, TrainingSet, fit_pipeline, group_folds, load_training_set
from leti.train.fit import predict_totals as predict_pipeline_totals

METHODS = {
    "leti": "leti (kernels + corrector)",
    "kernel_sum": "kernel sum",
    "flops": "FLOPs regression",
}


def flops_of(ts: TrainingSet, models: Sequence[str]) -> np.ndarray:
    return np.array([plan_flops(ts.plans[m]) for m in models], float)


@dataclass
class SocEvaluation:
    soc: str
    runtime: str
    predictions: pd.DataFrame  # model, fold, measured, leti, kernel_sum, flops
    scores: dict[str, dict[str, float]]  # method -> metrics


def evaluate_soc(
    soc: str,
    runtime: str,
    measurements_root: Path | None = None,
    n_splits: int = N_SPLITS,
    seed: int = 0,
) -> SocEvaluation:
    ts = load_training_set(soc, runtime, measurements_root)
    rows = []
    folds = group_folds(ts.models, n_splits, seed)
    for i, test in enumerate(folds):
        train = [m for m in ts.models if m not in set(test)]
        pipe = fit_pipeline(ts, train, seed=seed)
        totals, sums = predict_pipeline_totals(pipe, ts, test)
        coef = fit_flops_baseline(
            flops_of(ts, train), ts.e2e.loc[train, "latency_ms"].to_numpy(float)
        )
        flops_pred = flops_baseline_predict(coef, flops_of(ts, test))
        for m, t, s, f in zip(test, totals, sums, flops_pred, strict=True):
            rows.append(
                {
                    "model": m,
                    "fold": i,
                    "measured": float(ts.e2e.loc[m, "latency_ms"]),
                    "leti": float(t),
                    "kernel_sum": float(s),
                    "flops": float(f),
                }
            )
    pred = pd.DataFrame(rows).sort_values("model").reset_index(drop=True)
    scores = {meth: metrics(pred[meth], pred["measured"]) for meth in METHODS}
    return SocEvaluation(soc, runtime, pred, scores)


def measured_pairs(measurements_root: Path | None = None) -> list[tuple[str, str]]:
    e2e = measurements.load_e2e(measurements_root)
    pairs = e2e[["soc", "runtime"]].drop_duplicates()
    order = {"tflite-gpu": 0, "pytorch-vulkan": 1, "pytorch-metal": 2}
    return sorted(
        ((r.soc, r.runtime) for r in pairs.itertuples()), key=lambda p: (order.get(p[1], 9), p[0])
    )
