"""Training the transfer model across the measured SoCs (the model itself and its persistence
are in `leti.models.transfer`).

The kernel model learns efficiency relative to each SoC's roofline from every measured SoC at
once. The graph-level corrector (log of end-to-end over the kernel sum) is pooled across SoCs:
that ratio is largely a property of the model (its correlation across the six measured SoCs is
0.91-0.99), and it is fitted on kernel sums predicted *without* the SoC they belong to (inner
leave-one-SoC-out), as a new SoC will see.

Answers carry provenance "transfer" and an interval from the leave-one-SoC-out errors of the
whole pipeline on held-out SoCs and held-out models (`loso_zero_shot`, reported by `leti
evaluate --transfer`), stored in the model's manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leti.core import socs
from leti.core.records import COMPUTE_KINDS
from leti.frontend.features import graph_features
from leti.measurements import schema as measurements
from leti.models.regressors import corrected_totals
from leti.models.transfer import (
    MANIFEST,
    TRANSFER_DIR,
    TRANSFER_FEATURES,
    Hardware,
    TransferCorrector,
    TransferKernels,
)
from leti.train.fit import (
    fusion_rules_sha256,
    group_folds,
    kernel_ms_by_name,
    library_versions,
    load_training_set,
    save_model_folder,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Training across SoCs


@dataclass
class TransferPipeline:
    kernels: TransferKernels
    corrector: TransferCorrector
    train_socs: tuple[str, ...]


class FitCache:
    """Transfer kernel fits keyed by (SoCs trained on, models excluded); shared in one run."""

    def __init__(self, sets: Mapping[str, Any], **params: Any):
        self.sets = sets
        self.params = params
        self._fits: dict[tuple[frozenset, frozenset], TransferKernels] = {}

    def kernels(self, train_socs: Iterable[str], exclude: Iterable[str] = ()) -> TransferKernels:
        key = (frozenset(train_socs), frozenset(exclude))
        if key not in self._fits:
            parts = []
            for s in sorted(key[0]):
                rows = self.sets[s].kernel_rows
                if key[1]:
                    rows = rows[~rows["model"].isin(key[1])]
                parts.append((socs.resolve(s), rows))
            self._fits[key] = TransferKernels(**self.params).fit(parts)
        return self._fits[key]


def kernel_sums(
    kernels: TransferKernels, ts: Any, hw: Hardware, models: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-kernel ms of each graph in one batched call."""
    return kernel_ms_by_name(kernels.bind(hw), ts.plans, models)


def fit_corrector(
    cache: FitCache, train_socs: Sequence[str], train_models: Sequence[str]
) -> TransferCorrector:
    """Pooled corrector on (SoC, model) rows; each SoC's kernel sums come from a transfer fit
    that never saw that SoC (inner leave-one-SoC-out)."""
    xs, ys = [], []
    per_inference = []
    for s in train_socs:
        ts = cache.sets[s]
        inner = cache.kernels([o for o in train_socs if o != s])
        models = [m for m in train_models if m in ts.plans and m in ts.e2e.index]
        ms = kernel_sums(inner, ts, socs.resolve(s), models)
        e2e = np.array([float(ts.e2e.loc[m, "latency_ms"]) for m in models])
        sums = np.array([max(float(ms[m].sum()), 1e-6) for m in models])
        xs += [graph_features(ts.plans[m], ms[m]) for m in models]
        ys += list(np.log(e2e) - np.log(sums))
        per_inference.append(per_inference_ms(sums, e2e))
    floor = min((p for p in per_inference if p > 0), default=0.0)
    return TransferCorrector().fit(np.array(xs), np.array(ys), floor_ms=floor)


def per_inference_ms(kernel_sums: np.ndarray, e2e: np.ndarray) -> float:
    """One SoC's per-inference cost (ms): the intercept of end-to-end = a x kernel sum + b,
    non-negative, fitted in relative error. 0 when its timings put the whole cost on the
    kernel sum (a SoC whose kernel sums are off by a constant factor): such a SoC says
    nothing about the floor, and `fit_corrector` takes the least of the others'."""
    from scipy.optimize import nnls  # fitting only

    if len(e2e) < 3:
        return 0.0
    a = np.column_stack([kernel_sums, np.ones(len(e2e))]) / e2e[:, None]
    coef, _ = nnls(a, np.ones(len(e2e)))
    return float(coef[1])


def fit_transfer(
    cache: FitCache,
    train_socs: Sequence[str],
    exclude_models: Sequence[str] = (),
) -> TransferPipeline:
    """Kernels on `train_socs` without `exclude_models`; the corrector on the other models."""
    kernels = cache.kernels(train_socs, exclude_models)
    all_models = sorted(set().union(*(cache.sets[s].plans for s in train_socs)))
    keep = [m for m in all_models if m not in set(exclude_models)]
    corrector = fit_corrector(cache, train_socs, keep)
    return TransferPipeline(kernels, corrector, tuple(sorted(train_socs)))


def predict_totals(
    pipe: TransferPipeline, ts: Any, hw: Hardware, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(end-to-end, kernel sum) predictions of graphs in `ts.plans` on `hw`."""
    totals, sums, _ = predict_detail(pipe, ts, hw, models)
    return totals, sums


def predict_detail(
    pipe: TransferPipeline, ts: Any, hw: Hardware, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(end-to-end, kernel sum, share of the kernel sum in compute-bound kinds)."""
    return detail_from_kernel_ms(pipe, ts, models, kernel_sums(pipe.kernels, ts, hw, models))


def detail_from_kernel_ms(
    pipe: TransferPipeline, ts: Any, models: Sequence[str], ms: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`predict_detail` from per-kernel times already predicted (`kernel_sums`)."""
    totals, sums = corrected_totals(
        [ts.plans[m] for m in models], [ms[m] for m in models], pipe.corrector
    )
    share = np.array(
        [
            float(ms[m][np.isin([k.kind for k in ts.plans[m].kernels], COMPUTE_KINDS)].sum()) / s
            if len(ms[m])
            else 1.0
            for m, s in zip(models, sums, strict=True)
        ]
    )
    return totals, sums, share


def loso_zero_shot(
    sets: Mapping[str, Any],
    n_folds: int = 5,
    seed: int = 0,
    cache: FitCache | None = None,
) -> pd.DataFrame:
    """Leave-one-SoC-out, and within it grouped folds of models: a test (SoC, model) pair is
    predicted by a pipeline that never saw that SoC at all nor that model on any SoC.

    One row per (soc, fold, model) for *every* model of the held-out SoC, so that calibration
    can be simulated on the fold's non-test models with the same pipeline: `test` marks the
    fold's held-out models; measured, transfer (end-to-end), kernel_sum, compute_share."""
    cache = cache or FitCache(sets)
    names = sorted(sets)
    frames = []
    for s in names:
        ts = sets[s]
        others = [o for o in names if o != s]
        models = ts.models
        for i, fold in enumerate(group_folds(models, n_folds, seed)):
            pipe = fit_transfer(cache, others, exclude_models=fold)
            totals, sums, share = predict_detail(pipe, ts, socs.resolve(s), models)
            frame = pd.DataFrame(
                {
                    "soc": s,
                    "fold": i,
                    "model": models,
                    "test": np.isin(models, fold),
                    "measured": ts.e2e.loc[models, "latency_ms"].to_numpy(float),
                    "transfer": totals,
                    "kernel_sum": sums,
                    "compute_share": share,
                }
            )
            # The same pipeline priced with each training SoC's descriptors: the hardware
            # profiles a calibration may pick from (see leti.calibration).
            for o in names:
                frame[f"profile:{o}"] = (
                    predict_detail(pipe, ts, socs.resolve(o), models)[0] if o != s else np.nan
                )
            frames.append(frame)
            log.info("leave-one-SoC-out: %s fold %d/%d", s, i + 1, n_folds)
    return pd.concat(frames, ignore_index=True)


def zero_shot_interval(loso: pd.DataFrame, coverage: float = 0.9) -> tuple[float, float]:
    """Quantiles of log(measured / predicted) over every held-out (SoC, model)."""
    test = loso[loso["test"]] if "test" in loso else loso
    r = np.log(test["measured"] / test["transfer"])
    a = (1 - coverage) / 2
    lo, hi = np.quantile(r, [a, 1 - a])
    return float(lo), float(hi)


def load_sets(runtime: str = "tflite-gpu", measurements_root: Path | None = None) -> dict[str, Any]:
    e2e = measurements.load_e2e(measurements_root, runtime=runtime)
    return {s: load_training_set(s, runtime, measurements_root) for s in sorted(set(e2e["soc"]))}


def fit_and_save(
    models_dir: Path,
    runtime: str = "tflite-gpu",
    measurements_root: Path | None = None,
    sets: Mapping[str, Any] | None = None,
    loso: pd.DataFrame | None = None,
    extra: Mapping[str, Any] | None = None,
    cache: FitCache | None = None,
) -> dict:
    """Train on every measured SoC of `runtime` and write `<models_dir>/transfer/<runtime>/`.

    `loso` (from `loso_zero_shot`) sizes the interval; it is computed here when not given.
    `extra` is merged into the manifest (e.g. calibration residual scales from the evaluation).
    """
    sets = sets if sets is not None else load_sets(runtime, measurements_root)
    if len(sets) < 3:
        raise ValueError(f"transfer needs >= 3 measured SoCs for {runtime}, have {len(sets)}")
    cache = cache or FitCache(sets)
    if loso is None:
        loso = loso_zero_shot(sets, cache=cache)
    pipe = fit_transfer(cache, sorted(sets))
    data = measurements.data_manifest(measurements_root)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    lo, hi = zero_shot_interval(loso)
    loso = loso[loso["test"]]
    log_err = np.log(loso["transfer"] / loso["measured"])
    per_soc = {
        s: {
            "graphs": int(len(g)),
            "median_log_ratio": float(np.median(np.log(g["transfer"] / g["measured"]))),
            "median_abs_log_error": float(np.median(np.abs(np.log(g["transfer"] / g["measured"])))),
        }
        for s, g in loso.groupby("soc")
    }

    def manifest_for(kernel_files: dict[str, str], content_sha256: str) -> dict:
        digest = hashlib.sha256(
            json.dumps(
                [data.get("data_sha256", ""), fusion_rules_sha256(), content_sha256, [lo, hi]]
            ).encode()
        ).hexdigest()[:10]
        return {
            "kind": "transfer",
            "runtime": runtime,
            "model_version": f"transfer-{runtime}-{created[:10]}-{digest}",
            "created": created,
            "trained_socs": sorted(sets),
            "soc_descriptors": {
                s: {
                    "fp16_gflops": socs.resolve(s).fp16_gflops,
                    "dram_gbps": socs.resolve(s).dram_gbps,
                    "family": socs.resolve(s).family,
                }
                for s in sorted(sets)
            },
            "features": list(TRANSFER_FEATURES),
            "target": "log(latency_ms) - log(max(flops/fp16 peak, bytes/bandwidth))",
            "kernel_files": kernel_files,
            "corrector_file": "corrector.json",
            "interval_log_quantiles": [lo, hi],
            "interval": {
                "coverage": 0.9,
                "source": "leave-one-SoC-out x grouped model folds (leti evaluate --transfer): "
                "5%/95% quantiles of log(measured / predicted) over every held-out (SoC, model)",
                "held_out_pairs": int(len(loso)),
                "median_abs_log_error": float(np.median(np.abs(log_err))),
            },
            "loso": per_soc,
            "training": {
                "kernel_rows": int(sum(len(sets[s].kernel_rows) for s in sets)),
                "graphs": int(sum(len(sets[s].models) for s in sets)),
                "kinds": sorted(pipe.kernels.kinds),
            },
            "data": data,
            "fusion_rules_sha256": fusion_rules_sha256(),
            "libraries": library_versions(),
            "format": "xgboost JSON per kernel kind + ridge corrector JSON; no pickle",
            **dict(extra or {}),
        }

    folder = Path(models_dir) / TRANSFER_DIR / runtime
    return save_model_folder(folder, pipe, manifest_for, manifest_name=MANIFEST)
