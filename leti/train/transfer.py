"""Transfer to SoCs without per-layer measurements (issue 4).

A kernel's latency on an unmeasured SoC is predicted from the kernel's own features plus the
SoC's hardware descriptors, by one model trained across every measured SoC of the runtime:

    log(latency) = log(roofline) + f(kernel features, roofline terms, SoC descriptors)

where roofline = max(FLOPs / peak FP16 throughput, bytes / DRAM bandwidth) (FP16 because the
measurements are FP16). `f` is one xgboost model per kernel kind on the roofline-normalised
log time, so what the trees learn is *efficiency* relative to the SoC's peak, which transfers
across SoCs better than raw time does. The graph-level corrector (log of end-to-end over the
kernel sum) is pooled across SoCs: that ratio is largely a property of the model (its
correlation across the six measured SoCs is 0.91-0.99), and it is fitted on kernel sums
predicted *without* the SoC they belong to (inner leave-one-SoC-out), as a new SoC will see.

Answers carry provenance "transfer" and an interval from the leave-one-SoC-out errors of the
whole pipeline on held-out SoCs and held-out models (`leti evaluate --transfer`), stored in the
model's manifest. Everything is JSON (xgboost JSON + ridge JSON + manifest), never pickle.

Layout: `<models_dir>/transfer/<runtime>/transfer.json` (the manifest; deliberately not named
`manifest.json`, which marks a measured model) plus `kernel_<kind>.json` and `corrector.json`.
A models dir without a transfer model falls back to the one bundled with leti.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from leti.core import socs
from leti.core.store import atomic_write_json
from leti.frontend.features import (
    GRAPH_FEATURES,
    KERNEL_FEATURES,
    graph_features,
    kernel_features,
)
from leti.models.regressors import KindBoosters

log = logging.getLogger(__name__)

TRANSFER_DIR = "transfer"
MANIFEST = "transfer.json"
#: Runtimes a transfer model is trained for (the ones with per-kernel data on >= 4 SoCs).
TRANSFER_RUNTIMES = ("tflite-gpu",)
FAMILIES = ("adreno", "mali", "powervr", "apple")
SOC_FEATURES = (
    "log_fp16_gflops",
    "log_dram_gbps",
    "log_balance",
    *(f"family_{f}" for f in FAMILIES),
)
TRANSFER_FEATURES = (*KERNEL_FEATURES, "log_compute_ms", "log_memory_ms", *SOC_FEATURES)
BYTES_PER_ELEMENT = 2  # FP16 activations and weights
_BUNDLED = Path(__file__).resolve().parents[2] / "models"

# Set while a calibration loads its *base* estimator, so no saved calibration is stacked on it.
_UNCALIBRATED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "leti_uncalibrated", default=False
)


class Hardware(Protocol):
    """What the transfer model needs to know about a GPU (a `leti.socs.Soc` has it all)."""

    id: str
    family: str
    arch_gen: float
    fp16_gflops: float
    dram_gbps: float


@dataclass(frozen=True)
class GpuSpec:
    """Hardware descriptors of a GPU outside the SoC registry (e.g. an ncnn benchmark target)."""

    id: str
    name: str
    family: str
    arch_gen: float
    fp32_gflops: float
    fp16_gflops: float
    dram_gbps: float


def soc_vector(hw: Hardware) -> np.ndarray:
    fp16 = float(hw.fp16_gflops)
    bw = float(hw.dram_gbps)
    fam = [float(hw.family == f) for f in FAMILIES]
    return np.array([np.log(fp16), np.log(bw), np.log(fp16 / bw), *fam])


def transfer_matrix(geometry: pd.DataFrame, hw: Hardware) -> tuple[np.ndarray, np.ndarray]:
    """(features in TRANSFER_FEATURES order, log roofline ms) for every kernel row on `hw`."""
    x = kernel_features(geometry)
    flops = np.expm1(x[:, 0])
    moved = np.expm1(x[:, 1]) + np.expm1(x[:, 2]) + np.expm1(x[:, 3])
    compute_ms = flops / (float(hw.fp16_gflops) * 1e6)
    memory_ms = moved * BYTES_PER_ELEMENT / (float(hw.dram_gbps) * 1e6)
    log_roof = np.log(np.maximum(compute_ms, memory_ms) + 1e-6)
    sv = np.broadcast_to(soc_vector(hw), (len(x), len(SOC_FEATURES)))
    feats = np.column_stack([x, np.log(compute_ms + 1e-9), np.log(memory_ms + 1e-9), sv])
    return feats, log_roof


@dataclass
class TransferKernels(KindBoosters):
    """Per-kind xgboost on roofline-normalised log latency, trained across SoCs."""

    n_estimators: int = 250
    min_rows: int = 30
    min_child_weight: float = 2.0
    full_rounds_rows: int = 200

    raw_format = "json"

    def fit(self, parts: Iterable[tuple[Hardware, pd.DataFrame]]) -> TransferKernels:
        """`parts`: (hardware, kernel rows with geometry + latency_ms) per measured SoC."""
        xs, ys, kinds = [], [], []
        for hw, rows in parts:
            rows = rows.reset_index(drop=True)
            x, log_roof = transfer_matrix(rows, hw)
            xs.append(x)
            ys.append(np.log(rows["latency_ms"].to_numpy(float)) - log_roof)
            kinds.append(rows["kind"].to_numpy())
        self._fit_matrix(np.vstack(xs), np.concatenate(ys), np.concatenate(kinds))
        return self

    def predict(self, geometry: pd.DataFrame, hw: Hardware) -> np.ndarray:
        if len(geometry) == 0:
            return np.zeros(0)
        geometry = geometry.reset_index(drop=True)
        x, log_roof = transfer_matrix(geometry, hw)
        return np.exp(self._predict_matrix(x, geometry["kind"].to_numpy()) + log_roof)

    def bind(self, hw: Hardware) -> BoundKernels:
        return BoundKernels(self, hw)


@dataclass(frozen=True)
class BoundKernels:
    """The transfer kernels for one SoC: `.predict(geometry) -> ms`, as `Estimator` expects."""

    model: TransferKernels
    hw: Any

    def predict(self, geometry: pd.DataFrame) -> np.ndarray:
        return self.model.predict(geometry, self.hw)


@dataclass
class TransferCorrector:
    """Ridge on standardised graph features -> log(end-to-end / kernel sum), pooled across SoCs.

    Linear on purpose: pooled over SoCs whose kernel sums differ by 30x, trees would split on
    the SoC's scale (log_kernel_sum) and carry one SoC's ratios to another; a ridge keeps the
    model-dependent part (launch counts, standalone ops), which is what transfers."""

    alpha: float = 3.0
    mean_: np.ndarray | None = None
    scale_: np.ndarray | None = None
    coef_: np.ndarray | None = None
    intercept_: float = 0.0

    def fit(self, x: np.ndarray, log_ratio: np.ndarray) -> TransferCorrector:
        x = np.asarray(x, float)
        y = np.asarray(log_ratio, float)
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        z = (x - self.mean_) / self.scale_
        self.intercept_ = float(y.mean())
        a = z.T @ z + self.alpha * np.eye(z.shape[1])
        self.coef_ = np.linalg.solve(a, z.T @ (y - self.intercept_))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(np.asarray(x, float)) - self.mean_) / self.scale_
        return z @ self.coef_ + self.intercept_

    def to_json(self) -> dict:
        return {
            "type": "ridge",
            "features": list(GRAPH_FEATURES),
            "alpha": self.alpha,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> TransferCorrector:
        if doc.get("type") != "ridge" or list(doc["features"]) != list(GRAPH_FEATURES):
            raise ValueError("transfer corrector was trained with other graph features: retrain")
        return cls(
            alpha=float(doc["alpha"]),
            mean_=np.array(doc["mean"], float),
            scale_=np.array(doc["scale"], float),
            coef_=np.array(doc["coef"], float),
            intercept_=float(doc["intercept"]),
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> TransferCorrector:
        return cls.from_json(json.loads(Path(path).read_text("utf-8")))


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
    from leti.train.fit import predict_kernel_ms

    return predict_kernel_ms(kernels.bind(hw), ts.plans, models)


def fit_corrector(
    cache: FitCache, train_socs: Sequence[str], train_models: Sequence[str]
) -> TransferCorrector:
    """Pooled corrector on (SoC, model) rows; each SoC's kernel sums come from a transfer fit
    that never saw that SoC (inner leave-one-SoC-out)."""
    xs, ys = [], []
    for s in train_socs:
        ts = cache.sets[s]
        inner = cache.kernels([o for o in train_socs if o != s])
        models = [m for m in train_models if m in ts.plans and m in ts.e2e.index]
        ms = kernel_sums(inner, ts, socs.resolve(s), models)
        for m in models:
            total = max(float(ms[m].sum()), 1e-6)
            xs.append(graph_features(ts.plans[m], ms[m]))
            ys.append(np.log(float(ts.e2e.loc[m, "latency_ms"])) - np.log(total))
    return TransferCorrector().fit(np.array(xs), np.array(ys))


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


COMPUTE_KINDS = ("conv", "gconv", "fc")


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
    sums = np.array([max(float(ms[m].sum()), 1e-6) for m in models])
    share = np.array(
        [
            float(ms[m][np.isin([k.kind for k in ts.plans[m].kernels], COMPUTE_KINDS)].sum()) / s
            if len(ms[m])
            else 1.0
            for m, s in zip(models, sums, strict=True)
        ]
    )
    x = np.array([graph_features(ts.plans[m], ms[m]) for m in models])
    return sums * np.exp(pipe.corrector.predict(x)), sums, share


def measured_socs(runtime: str, sets: Mapping[str, Any]) -> list[str]:
    return sorted(s for s in sets if runtime in socs.resolve(s).phones)


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
    from leti.train.fit import group_folds

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
    from leti.measurements import schema as measurements
    from leti.train.fit import load_training_set

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
    from leti.measurements import schema as measurements
    from leti.train.fit import _fusion_hash, _versions, save_model_folder

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

    def manifest_for(kernel_files: dict[str, str]) -> dict:
        digest = hashlib.sha256(
            json.dumps(
                [data.get("data_sha256", ""), _fusion_hash(), sorted(kernel_files), [lo, hi]]
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
            "fusion_rules_sha256": _fusion_hash(),
            "libraries": _versions(),
            "format": "xgboost JSON per kernel kind + ridge corrector JSON; no pickle",
            **dict(extra or {}),
        }

    folder = Path(models_dir) / TRANSFER_DIR / runtime
    return save_model_folder(folder, pipe, manifest_for, manifest_name=MANIFEST)


# --------------------------------------------------------------------------------------------
# Loading


def transfer_folder(models_dir: Path | None, runtime: str) -> Path | None:
    """The transfer model for `runtime`: in `models_dir`, else the one bundled with leti."""
    candidates = [Path(models_dir) / TRANSFER_DIR / runtime] if models_dir else []
    candidates.append(_BUNDLED / TRANSFER_DIR / runtime)
    for folder in candidates:
        if (folder / MANIFEST).is_file():
            return folder
    return None


def transfer_manifest(models_dir: Path | None, runtime: str = "tflite-gpu") -> dict | None:
    folder = transfer_folder(models_dir, runtime)
    if folder is None:
        return None
    return json.loads((folder / MANIFEST).read_text("utf-8"))


_LOADED: dict[tuple[str, int], tuple[TransferKernels, TransferCorrector, dict]] = {}


def _load_parts(folder: Path) -> tuple[TransferKernels, TransferCorrector, dict]:
    path = folder / MANIFEST
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _LOADED:
        manifest = json.loads(path.read_text("utf-8"))
        if list(manifest.get("features", [])) != list(TRANSFER_FEATURES):
            raise ValueError(f"{path}: trained with other features; retrain the transfer model")
        kernels = TransferKernels.load(folder, manifest["kernel_files"])
        corrector = TransferCorrector.load(folder / manifest["corrector_file"])
        _LOADED[key] = (kernels, corrector, manifest)
    return _LOADED[key]


def is_transfer_target(soc: socs.Soc, runtime: str) -> bool:
    """Transfer serves (SoC, runtime) pairs with per-kernel data elsewhere but none here."""
    return runtime in TRANSFER_RUNTIMES and runtime not in soc.phones


def transfer_estimator(soc: socs.Soc, runtime: str, models_dir: Path | None):
    """The uncalibrated transfer estimator, or None (SoC measured, or no transfer model)."""
    from leti.predict.estimator import Estimator

    if not is_transfer_target(soc, runtime):
        return None
    folder = transfer_folder(models_dir, runtime)
    if folder is None:
        return None
    kernels, corrector, manifest = _load_parts(folder)
    return Estimator(
        soc=soc.id,
        runtime=runtime,
        model_version=manifest["model_version"],
        provenance="transfer",
        kernels=kernels.bind(soc),
        corrector=corrector,
        manifest=manifest,
        log_interval=tuple(manifest["interval_log_quantiles"]),
    )


def profile_estimator(soc: socs.Soc, profile: str, runtime: str, models_dir: Path | None):
    """The transfer pipeline priced with measured SoC `profile`'s descriptors, answering for
    `soc`: a base a calibration may pick when the timings fit it better (leti.calibration)."""
    from leti.predict.estimator import Estimator
    from leti.train.calibrate import base_runtime

    brt = base_runtime(runtime)
    folder = transfer_folder(models_dir, brt) if brt in TRANSFER_RUNTIMES else None
    if folder is None or profile not in socs.all_socs():
        return None
    kernels, corrector, manifest = _load_parts(folder)
    return Estimator(
        soc=soc.id,
        runtime=runtime,
        model_version=f"{manifest['model_version']}@{profile}",
        provenance="transfer",
        kernels=kernels.bind(socs.resolve(profile)),
        corrector=corrector,
        manifest={**manifest, "profile": profile},
        log_interval=tuple(manifest["interval_log_quantiles"]),
    )


def load_transfer_estimator(soc, runtime: str, models_dir: Path):
    """What `Estimator.load` falls back to when no measured model exists for (soc, runtime):

    - a transfer estimator (plus its saved calibration, if any) for unmeasured SoCs;
    - for runtimes without per-kernel data (ncnn-vulkan), only a saved calibration, applied to
      the base estimator it was fitted on (see leti.calibration);
    - otherwise None (the caller raises ModelNotFoundError)."""
    from leti.train import calibrate as calibration

    if socs.runtimes().get(runtime, {}).get("per_kernel_data", True):
        est = transfer_estimator(soc, runtime, models_dir)
        return None if est is None else calibration.apply_saved_calibration(est, models_dir)
    if _UNCALIBRATED.get():
        return None
    return calibration.load_calibrated_only(soc, runtime, models_dir)


def available_transfer(models_dir: Path, exclude: set[tuple[str, str]]) -> list[dict]:
    """Transfer pairs (unmeasured SoCs x transfer runtimes) and calibration-only pairs."""
    from leti.train import calibrate as calibration

    out = []
    for rt in TRANSFER_RUNTIMES:
        manifest = transfer_manifest(models_dir, rt)
        if manifest is None:
            continue
        for sid, soc in sorted(socs.all_socs().items()):
            if (sid, rt) in exclude or not is_transfer_target(soc, rt):
                continue
            cal = calibration.read_calibration(models_dir, sid, rt)
            out.append(
                {
                    "soc": sid,
                    "name": soc.name,
                    "gpu": soc.gpu,
                    "runtime": rt,
                    "model_version": cal["model_version"] if cal else manifest["model_version"],
                    "provenance": "calibrated" if cal else "transfer",
                }
            )
    listed = exclude | {(a["soc"], a["runtime"]) for a in out}
    for sid, rt, cal in calibration.saved_calibrations(models_dir):
        if (sid, rt) in listed or socs.runtimes().get(rt, {}).get("per_kernel_data", True):
            continue
        soc = socs.all_socs()[sid]
        out.append(
            {
                "soc": sid,
                "name": soc.name,
                "gpu": soc.gpu,
                "runtime": rt,
                "model_version": cal["model_version"],
                "provenance": "calibrated",
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m leti.transfer [--models-dir D] [--measurements-dir M] [--report OUT.md]`:
    run the transfer evaluation (which sizes the intervals and calibration priors), then train
    on every measured SoC and write `<models_dir>/transfer/tflite-gpu/`."""
    import argparse

    from leti.core.store import models_dir as resolve_models_dir
    from leti.evaluate import transfer as transfer_eval

    ap = argparse.ArgumentParser(prog="python -m leti.transfer")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--measurements-dir", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="also write this report")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report, sets, cache = transfer_eval.run(args.measurements_dir)
    if args.report:
        transfer_eval.write_report(report, args.report)
    manifest = fit_and_save(
        resolve_models_dir(args.models_dir),
        "tflite-gpu",
        args.measurements_dir,
        sets=sets,
        loso=report.loso,
        cache=cache,
        extra={
            "calibration_prior_sd": report.prior_sd,
            "evaluation": report.headline(),
            **({"class_priors": {"ncnn-vulkan": report.class_prior}} if report.class_prior else {}),
        },
    )
    print(f"{manifest['model_version']}: interval {manifest['interval_log_quantiles']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
