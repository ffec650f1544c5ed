"""Scores shared by the evaluation protocols: the accuracy metrics of predicted against measured
end-to-end latency, their mean over repeated draws, and the FLOPs log-log baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau

METRIC_KEYS = ("acc10", "acc20", "mape", "kendall_tau")


def metrics(pred: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    pred = np.asarray(pred, float)
    measured = np.asarray(measured, float)
    rel = pred / measured - 1.0
    err = np.abs(rel)
    tau = kendalltau(pred, measured).statistic if len(pred) > 2 else float("nan")
    return {
        "n": int(len(pred)),
        "acc5": float((err <= 0.05).mean()),
        "acc10": float((err <= 0.10).mean()),
        "acc20": float((err <= 0.20).mean()),
        "mape": float(err.mean()),
        "rmspe": float(np.sqrt((rel**2).mean())),
        "kendall_tau": float(tau),
    }


def mean_metrics(draws: Sequence[dict]) -> dict[str, float]:
    """The mean over draws (NaN-skipping) of `METRIC_KEYS` and `n`."""
    return {key: float(np.nanmean([d[key] for d in draws])) for key in (*METRIC_KEYS, "n")}


def plan_flops(plan: Any) -> float:
    """Total FLOPs of a kernel plan."""
    return float(sum(k.flops for k in plan.kernels))


def fit_flops_baseline(flops: np.ndarray, latency: np.ndarray) -> tuple[float, float]:
    """log(latency) = a + b log(flops), least squares: (a, b)."""
    b, a = np.polyfit(np.log(flops), np.log(latency), 1)
    return float(a), float(b)


def flops_baseline_predict(coef: tuple[float, float], flops: np.ndarray) -> np.ndarray:
    """The latency a `fit_flops_baseline` fit answers for `flops`."""
    a, b = coef
    return np.exp(a + b * np.log(flops))
