"""Training: per-kernel regressors plus a graph-level corrector fitted on out-of-fold sums.

The corrector learns log(end-to-end / predicted kernel sum). If it were fitted on kernel sums
predicted by regressors that had seen the same models, it would learn the in-sample error, which
is smaller than what a new graph sees. So each training graph's kernel sum comes from regressors
fitted without that graph (grouped K-fold by model), exactly as at prediction time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from leti.core import socs
from leti.core.errors import LetiError, MeasurementError
from leti.core.records import KernelPlan
from leti.core.store import atomic_write_json, sha256_file
from leti.frontend.features import graph_features
from leti.frontend.fusion import plan as plan_kernels
from leti.frontend.graph import parse_graph
from leti.frontend.nb201 import build_graphs, sample_archs
from leti.measurements import schema as measurements
from leti.models.kernel_cost import KernelCosts
from leti.models.overhead import FAMILY_TAU_MIN, GraphOverhead, family_tau
from leti.models.regressors import (
    GraphCorrection,
    GraphCorrector,
    KernelRegressors,
    KernelTimeModel,
    corrected_totals,
    graph_rows,
    predict_kernel_ms,
)

log = logging.getLogger(__name__)

N_SPLITS = 5


@dataclass
class TrainingSet:
    soc: str
    runtime: str
    kernel_rows: pd.DataFrame  # measurement rows: geometry + latency_ms + model
    e2e: pd.DataFrame  # one row per model with a parsed graph: model, latency_ms
    plans: dict[str, KernelPlan]  # model -> kernels derived from its ONNX graph

    @property
    def models(self) -> list[str]:
        return sorted(self.plans)


@cache
def load_plan(graph_path: str, runtime: str) -> KernelPlan:
    """Parse a training graph once per process (evaluate re-uses them across SoCs)."""
    return plan_kernels(parse_graph(graph_path), runtime)


def load_training_set(soc: str, runtime: str, measurements_root: Path | None = None) -> TrainingSet:
    rows = measurements.load_kernels(measurements_root, soc=soc, runtime=runtime)
    e2e = measurements.load_e2e(measurements_root, soc=soc, runtime=runtime)
    if rows.empty:
        raise MeasurementError(f"no kernel measurements for {soc}/{runtime}: run `leti import`")
    plans: dict[str, KernelPlan] = {}
    keep = []
    for rec in e2e.itertuples():
        path = str(rec.graph) if isinstance(rec.graph, str) else ""
        if not path or not Path(path).is_file():
            log.warning("%s: no ONNX graph at %r, end-to-end row not used", rec.model, path)
            continue
        try:
            plans[rec.model] = load_plan(path, runtime)
            keep.append(rec.Index)
        except LetiError as exc:
            log.warning("%s: graph %s unusable: %s", rec.model, path, exc)
    e2e = e2e.loc[keep].drop_duplicates("model").set_index("model", drop=False)
    return TrainingSet(soc, runtime, rows.reset_index(drop=True), e2e, plans)


def group_folds(models: Sequence[str], n_splits: int, seed: int = 0) -> list[list[str]]:
    """Split model names into `n_splits` disjoint groups (deterministic shuffle)."""
    order = sorted(models)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    return [sorted(order[i::n_splits]) for i in range(n_splits)]


#: "leti": analytic cost x learned efficiency per kernel, structural graph stage (what ships).
#: "previous": per-kernel trees on raw time and a free-form tree corrector (the model before
#: issue 9), kept so that every evaluation reports it beside the current one.
METHODS = ("leti", "previous")
DEFAULT_METHOD = "leti"


def fit_kernels(
    ts: TrainingSet, exclude: Sequence[str] = (), method: str = DEFAULT_METHOD
) -> KernelTimeModel:
    rows = ts.kernel_rows[~ts.kernel_rows["model"].isin(list(exclude))]
    if method == "previous":
        return KernelRegressors().fit(rows, rows["latency_ms"].to_numpy())
    return KernelCosts.for_hardware(socs.resolve(ts.soc)).fit(rows, rows["latency_ms"].to_numpy())


def kernel_ms_by_name(
    model: KernelTimeModel, plans: Mapping[str, KernelPlan], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Kernel latencies of several graphs, by name, in one batched regressor call."""
    return dict(zip(names, predict_kernel_ms(model, [plans[n] for n in names]), strict=True))


def oof_kernel_ms(
    ts: TrainingSet,
    models: Sequence[str],
    exclude: Sequence[str] = (),
    seed: int = 0,
    method: str = DEFAULT_METHOD,
) -> dict[str, np.ndarray]:
    """Kernel latencies for each graph in `models` from regressors that never saw that model."""
    out: dict[str, np.ndarray] = {}
    for fold in group_folds(models, min(N_SPLITS, len(models)), seed):
        regs = fit_kernels(ts, exclude=[*exclude, *fold], method=method)
        out.update(kernel_ms_by_name(regs, ts.plans, fold))
    return out


def corrector_data(
    ts: TrainingSet, kernel_ms: dict[str, np.ndarray], models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([graph_features(ts.plans[m], kernel_ms[m]) for m in models])
    y = np.array(
        [
            np.log(ts.e2e.loc[m, "latency_ms"]) - np.log(max(kernel_ms[m].sum(), 1e-6))
            for m in models
        ]
    )
    return x, y


@dataclass
class FittedPipeline:
    kernels: KernelTimeModel
    corrector: GraphCorrection
    log_interval: tuple[float, float]
    oof_log_residuals: np.ndarray
    method: str = DEFAULT_METHOD

    @property
    def graph_stage(self) -> str:
        if isinstance(self.corrector, GraphOverhead):
            return "structural+launches" if self.corrector.per_kernel else "structural"
        return "constant" if self.corrector.constant else "trees"


def _graph_stage_candidates(
    method: str, soc: str = "", runtime: str = ""
) -> dict[str, Callable[[], GraphCorrection]]:
    if method == "previous":
        # Out-of-fold residuals choose between trees and a constant ratio (where the kernel
        # sum already tracks end-to-end time, e.g. PyTorch Vulkan which times every op).
        return {
            "trees": lambda: GraphCorrector(constant=False),
            "constant": lambda: GraphCorrector(constant=True),
        }
    hw = socs.resolve(soc)
    # Simplest first: a term is kept only where it earns its place out of fold (see
    # `SIMPLER_WITHIN`). The count terms are capped where they would make a NAS family rank by
    # kernel count rather than by kernel time (`GraphOverhead.fit`). Free-form trees do not
    # extrapolate (a graph smaller than the training ones gets the smallest one's ratio, not its
    # per-inference cost), so they are a candidate only where the runtime's kernel rows leave
    # kernels out (`kernel_rows: partial`: PyTorch Metal lacks the elementwise kernels' times),
    # which the structural stage cannot explain.
    out: dict[str, Callable[[], GraphCorrection]] = {
        "structural": lambda: GraphOverhead.for_hardware(hw, per_kernel=False),
        "structural+launches": lambda: GraphOverhead.for_hardware(hw, per_kernel=True),
    }
    if _partial_kernel_rows(runtime):
        out["trees"] = lambda: GraphCorrector(constant=False)
    return out


#: A graph stage is chosen over a simpler one only when its out-of-fold mean absolute log
#: error is below (1 - SIMPLER_WITHIN) x the simpler one's: a few percent on 60-odd graphs is
#: within the noise of the folds, and the simpler stage extrapolates more predictably.
SIMPLER_WITHIN = 0.05


def _choose_stage(errors: Mapping[str, float]) -> str:
    """The first (simplest) candidate whose error no later one beats by `SIMPLER_WITHIN`."""
    names = list(errors)
    best = names[0]
    for name in names[1:]:
        if errors[name] < (1 - SIMPLER_WITHIN) * errors[best]:
            best = name
    return best


#: NAS-Bench-201 archs (seed 1; the evaluation draws its own with seed 0) whose structure the
#: structural stage must keep in rank (`leti.models.overhead.FAMILY_TAU_MIN`).
FAMILY_ARCHS = 200
FAMILY_SEED = 1


@cache
def family_plans(runtime: str) -> tuple[KernelPlan, ...]:
    """The kernel plans of the NAS family under `runtime`'s fusion rules (built once)."""
    return tuple(
        plan_kernels(g, runtime) for g in build_graphs(sample_archs(FAMILY_ARCHS, FAMILY_SEED))
    )


def family_rows(kernels: KernelTimeModel, runtime: str) -> np.ndarray:
    """Graph-feature rows of the NAS family priced by `kernels` (the structure the graph stage
    must not reorder)."""
    plans = family_plans(runtime)
    return graph_rows(plans, predict_kernel_ms(kernels, plans))


def _partial_kernel_rows(runtime: str) -> bool:
    """Whether the runtime's kernel rows leave kernels out (`kernel_rows: partial` in
    data/socs.json: PyTorch Metal's lack the elementwise kernels' times)."""
    return socs.runtimes().get(runtime, {}).get("kernel_rows") == "partial"


def _keeps_family_rank(method: str, runtime: str) -> bool:
    """Whether the graph stage must keep a NAS family ranked like its kernel sums. Not for the
    previous method (kept as it was), and not where the kernel rows leave kernels out: there
    the kernel sum misses work the graph stage has to add, which may reorder the family."""
    return method != "previous" and not _partial_kernel_rows(runtime)


def _fit_stage(stage: GraphCorrection, x: np.ndarray, y: np.ndarray, family: np.ndarray):
    if isinstance(stage, GraphOverhead):
        return stage.fit(x, y, family=family)
    return stage.fit(x, y)


def fit_pipeline(
    ts: TrainingSet, train_models: Sequence[str], seed: int = 0, method: str = DEFAULT_METHOD
) -> FittedPipeline:
    """Fit on `train_models` only (every other model with a graph is held out entirely).

    The graph-level stage learns from kernel sums predicted out of fold; its own out-of-fold
    residuals (a second grouped split) size the prediction interval."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    held_out = [m for m in ts.models if m not in set(train_models)]
    oof = oof_kernel_ms(ts, train_models, exclude=held_out, seed=seed, method=method)
    x, y = corrector_data(ts, oof, train_models)
    kernels = fit_kernels(ts, exclude=held_out, method=method)
    family = family_rows(kernels, ts.runtime) if _keeps_family_rank(method, ts.runtime) else None
    makers = _graph_stage_candidates(method, ts.soc, ts.runtime)
    candidates = {name: np.empty(len(train_models)) for name in makers}
    index = {m: i for i, m in enumerate(train_models)}
    for fold in group_folds(train_models, min(N_SPLITS, len(train_models)), seed + 1):
        idx = [index[m] for m in fold]
        rest = [i for i in range(len(train_models)) if i not in set(idx)]
        for name, resid in candidates.items():
            c = _fit_stage(makers[name](), x[rest], y[rest], family)
            resid[idx] = y[idx] - c.predict(x[idx])
    fitted = {name: _fit_stage(make(), x, y, family) for name, make in makers.items()}
    errors = {name: float(np.abs(r).mean()) for name, r in candidates.items()}
    if family is not None:
        # A stage that reorders the NAS family is not a candidate (the simplest always is).
        first = next(iter(errors))
        errors = {
            n: e
            for n, e in errors.items()
            if n == first or family_tau(fitted[n], family) >= FAMILY_TAU_MIN
        }
    best = _choose_stage(errors)
    resid = candidates[best]
    corrector = fitted[best]
    if isinstance(corrector, GraphOverhead):
        corrector.seen_ops = tuple(
            sorted({la.op_type for m in train_models for la in ts.plans[m].overhead})
        )
    lo, hi = np.quantile(resid, [0.05, 0.95]) if len(resid) >= 5 else (-0.3, 0.3)
    return FittedPipeline(kernels, corrector, (float(lo), float(hi)), resid, method)


def predict_totals(
    pipe: FittedPipeline, ts: TrainingSet, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(corrected end-to-end, raw kernel sum) for held-out graphs."""
    plans = [ts.plans[m] for m in models]
    return corrected_totals(plans, predict_kernel_ms(pipe.kernels, plans), pipe.corrector)


def library_versions() -> dict[str, str]:
    out = {}
    for pkg in ("leti", "xgboost-cpu", "xgboost", "numpy", "pandas", "scikit-learn", "onnx"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def fusion_rules_sha256() -> str:
    from importlib import resources

    raw = resources.files("leti").joinpath("data/fusion.json").read_bytes()
    return hashlib.sha256(raw).hexdigest()


def fit_and_save(
    soc: str,
    runtime: str,
    models_dir: Path,
    measurements_root: Path | None = None,
    cv_metrics: dict | None = None,
) -> dict:
    """Train on every model for (soc, runtime) and write models + manifest atomically."""
    ts = load_training_set(soc, runtime, measurements_root)
    if len(ts.models) < 5:
        raise MeasurementError(f"{soc}/{runtime}: {len(ts.models)} graphs with timings; need >= 5")
    pipe = fit_pipeline(ts, ts.models)
    data = measurements.data_manifest(measurements_root)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()

    def manifest_for(kernel_files: dict[str, str], content_sha256: str) -> dict:
        digest = hashlib.sha256(
            json.dumps(
                [data.get("data_sha256", ""), fusion_rules_sha256(), content_sha256]
            ).encode()
        ).hexdigest()[:10]
        return {
            "soc": soc,
            "runtime": runtime,
            "model_version": f"{soc}-{runtime}-{created[:10]}-{digest}",
            "created": created,
            "kernel_files": kernel_files,
            "corrector_file": "corrector.json",
            "interval_log_quantiles": list(pipe.log_interval),
            "training": {
                "kernel_rows": len(ts.kernel_rows),
                "graphs": len(ts.models),
                "kinds": sorted(pipe.kernels.kinds),
                "kernel_model": "analytic x efficiency"
                if isinstance(pipe.kernels, KernelCosts)
                else "trees on log time",
                "corrector": pipe.graph_stage,
            },
            "data": data,
            "fusion_rules_sha256": fusion_rules_sha256(),
            "libraries": library_versions(),
            "cv": cv_metrics or {},
            "format": "xgboost UBJ per kernel kind + kernel_cost.json (hardware, feature "
            "ranges) + graph stage JSON; no pickle",
        }

    return save_model_folder(Path(models_dir) / soc / runtime, pipe, manifest_for)


def save_model_folder(
    folder: Path,
    pipe,
    manifest_for: Callable[[dict[str, str], str], dict],
    manifest_name: str = "manifest.json",
) -> dict:
    """Write `pipe`'s kernels and corrector and the manifest into a staging folder, then swap
    it in whole, so a reader never sees a mix of old and new files. `manifest_for` gets the
    kernel files and a hash of every file written, so that the model version changes whenever
    the fitted model does (a refit graph stage included)."""
    stage = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    kernel_files = pipe.kernels.save(stage)
    pipe.corrector.save(stage / "corrector.json")
    content = hashlib.sha256()
    for path in sorted(p for p in stage.rglob("*") if p.is_file()):
        content.update(f"{path.relative_to(stage).as_posix()}\t{sha256_file(path)}\n".encode())
    manifest = manifest_for(kernel_files, content.hexdigest())
    atomic_write_json(stage / manifest_name, manifest)
    _swap_in(stage, folder)
    return manifest


def _swap_in(stage: Path, folder: Path) -> None:
    """Replace `folder` by the fully written `stage` so a reader never sees a mixed set."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    stage.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
