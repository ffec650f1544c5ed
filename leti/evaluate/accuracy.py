"""Honest accuracy: protocols that always split by model, with several methods side by side.

A test model's kernels and its end-to-end time are held out together: no row of a test model
is ever seen in training (neither by the kernel models nor by the graph-level stage).

Protocols (each a list of (train models, test models) splits of one (SoC, runtime)):
- `grouped-cv`: 5 folds grouped by model;
- `train-small`: train on the 80% smallest models by FLOPs, test on the 20% largest;
- `train-large`: train on the 80% largest, test on the 20% smallest.

Methods: what `leti.train.fit.fit_pipeline` fits (`method="leti"`: analytic cost x learned
efficiency + structural graph stage; `method="previous"`: per-kernel trees + free-form
corrector), each with its raw kernel sum, and a log-log FLOPs regression fitted on the same
training models. Each held-out model also gets the method's nominal 90% interval, as an
`Estimator` built from the fitted pipeline answers it (widened per graph), and the pipeline's
base interval; the coverage of both is scored.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leti.core import child_process, errors
from leti.evaluate.scores import (
    fit_flops_baseline,
    flops_baseline_predict,
    metrics,
    plan_flops,
)
from leti.measurements import schema as measurements
from leti.predict.estimator import Estimator
from leti.train import fit as fit_mod
from leti.train.fit import N_SPLITS, TrainingSet, fit_pipeline, group_folds, load_training_set
from leti.train.fit import predict_totals as predict_pipeline_totals

PROTOCOLS = {
    "grouped-cv": "grouped 5-fold cross-validation",
    "train-small": "train on the 80% smallest models by FLOPs, test on the 20% largest",
    "train-large": "train on the 80% largest models by FLOPs, test on the 20% smallest",
}
#: The runtimes whose SoCs also run the size-extrapolation protocols.
EXTRAPOLATION_RUNTIMES = ("tflite-gpu", "pytorch-vulkan")
TEST_SHARE = 0.2

# --------------------------------------------------------------------------------------------
# Methods


def _fit_takes_method() -> bool:
    return "method" in inspect.signature(fit_pipeline).parameters


def available_methods() -> tuple[str, ...]:
    """The methods `fit_pipeline` can fit, the shipped one first. A `fit_pipeline` without a
    `method` argument fits one method, reported as "leti"."""
    if not _fit_takes_method():
        return ("leti",)
    known = tuple(getattr(fit_mod, "METHODS", ("leti",)))
    default = getattr(fit_mod, "DEFAULT_METHOD", known[0])
    return (default, *(m for m in known if m != default))


def _fit(ts: TrainingSet, train: Sequence[str], seed: int, method: str):
    if _fit_takes_method():
        return fit_pipeline(ts, train, seed=seed, method=method)
    return fit_pipeline(ts, train, seed=seed)


def kernel_sum_key(method: str) -> str:
    """The score/column name of a method's raw kernel sum ("kernel_sum" for leti)."""
    return "kernel_sum" if method == "leti" else f"{method}_kernel_sum"


#: (pipeline, training set, held-out models) -> (lo, hi) arrays of the nominal 90% interval.
IntervalFn = Callable[[object, TrainingSet, Sequence[str]], tuple[np.ndarray, np.ndarray]]


def pipeline_intervals(
    pipe, ts: TrainingSet, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's base interval: its total x exp(5% and 95% quantiles of the out-of-fold
    log residuals), the same multiplier for every graph."""
    totals, _ = predict_pipeline_totals(pipe, ts, models)
    lo, hi = pipe.log_interval
    return totals * float(np.exp(lo)), totals * float(np.exp(hi))


def estimator_intervals(
    pipe, ts: TrainingSet, models: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The interval an `Estimator` built from the pipeline answers for each graph
    (`Prediction.interval_ms`): the base interval widened where the graph lies outside the
    training data. Any other `IntervalFn` plugs in the same way (a module-level function, so
    that worker processes can receive it)."""
    est = Estimator(
        soc=ts.soc,
        runtime=ts.runtime,
        model_version="evaluate",
        provenance="measured",
        kernels=pipe.kernels,
        corrector=pipe.corrector,
        manifest={},
        log_interval=tuple(pipe.log_interval),
    )
    bounds = np.array([est.predict_plan(ts.plans[m]).interval_ms for m in models], float)
    return bounds[:, 0], bounds[:, 1]


def coverage(measured, lo, hi) -> float:
    """Share of `measured` inside [lo, hi] (bounds included)."""
    measured, lo, hi = (np.asarray(a, float) for a in (measured, lo, hi))
    if len(measured) == 0:
        return float("nan")
    return float(((measured >= lo) & (measured <= hi)).mean())


# --------------------------------------------------------------------------------------------
# Splits


def flops_of(ts: TrainingSet, models: Sequence[str]) -> np.ndarray:
    return np.array([plan_flops(ts.plans[m]) for m in models], float)


def size_split(
    ts: TrainingSet, test: str = "largest", share: float = TEST_SHARE
) -> tuple[list[str], list[str]]:
    """(train, test): the `share` largest (or smallest) models by FLOPs (ties by name) are the
    test models, the others train; neither is empty."""
    if test not in ("largest", "smallest"):
        raise ValueError("test must be 'largest' or 'smallest'")
    order = sorted(ts.models, key=lambda m: (plan_flops(ts.plans[m]), m))
    n_test = min(max(1, round(share * len(order))), len(order) - 1)
    if test == "largest":
        return sorted(order[:-n_test]), sorted(order[-n_test:])
    return sorted(order[n_test:]), sorted(order[:n_test])


def protocol_splits(
    ts: TrainingSet, protocol: str, n_splits: int = N_SPLITS, seed: int = 0
) -> list[tuple[list[str], list[str]]]:
    """The (train, test) model lists of `protocol`; train and test are always disjoint."""
    if protocol == "grouped-cv":
        folds = group_folds(ts.models, n_splits, seed)
        return [([m for m in ts.models if m not in set(test)], test) for test in folds]
    if protocol == "train-small":
        return [size_split(ts, "largest")]
    if protocol == "train-large":
        return [size_split(ts, "smallest")]
    raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class ProtocolResult:
    soc: str
    runtime: str
    protocol: str
    methods: tuple[str, ...]
    #: model, fold, gflops, measured, flops, and per method m: m, kernel_sum_key(m),
    #: m_lo, m_hi (the nominal 90% interval of the `IntervalFn`), m_base_lo, m_base_hi (the
    #: pipeline's base interval: one multiplier for every graph)
    predictions: pd.DataFrame
    scores: dict[str, dict[str, float]]  # method / kernel sum / "flops" -> metrics
    coverage: dict[str, float]  # method -> share of held-out models inside the interval
    train_sizes: list[int] = field(default_factory=list)
    base_coverage: dict[str, float] = field(default_factory=dict)  # same, base interval

    def errors(self, column: str) -> pd.Series:
        """Relative error of a prediction column, by model."""
        p = self.predictions.set_index("model")
        return p[column] / p["measured"] - 1.0


def evaluate_protocol(
    ts: TrainingSet,
    protocol: str,
    methods: Sequence[str] | None = None,
    n_splits: int = N_SPLITS,
    seed: int = 0,
    interval_fn: IntervalFn = estimator_intervals,
) -> ProtocolResult:
    methods = tuple(methods or available_methods()[:1])
    rows = []
    sizes = []
    for i, (train, test) in enumerate(protocol_splits(ts, protocol, n_splits, seed)):
        if set(train) & set(test):
            raise ValueError(f"{protocol}: split {i} trains on test models")
        sizes.append(len(train))
        coef = fit_flops_baseline(
            flops_of(ts, train), ts.e2e.loc[train, "latency_ms"].to_numpy(float)
        )
        frame = pd.DataFrame(
            {
                "model": test,
                "fold": i,
                "gflops": flops_of(ts, test) / 1e9,
                "measured": ts.e2e.loc[test, "latency_ms"].to_numpy(float),
                "flops": flops_baseline_predict(coef, flops_of(ts, test)),
            }
        )
        for method in methods:
            pipe = _fit(ts, train, seed, method)
            totals, sums = predict_pipeline_totals(pipe, ts, test)
            lo, hi = interval_fn(pipe, ts, test)
            frame[method] = np.asarray(totals, float)
            frame[kernel_sum_key(method)] = np.asarray(sums, float)
            frame[f"{method}_lo"] = np.asarray(lo, float)
            frame[f"{method}_hi"] = np.asarray(hi, float)
            base_lo, base_hi = pipe.log_interval
            frame[f"{method}_base_lo"] = frame[method] * float(np.exp(base_lo))
            frame[f"{method}_base_hi"] = frame[method] * float(np.exp(base_hi))
        rows.append(frame)
    pred = pd.concat(rows, ignore_index=True).sort_values("model").reset_index(drop=True)
    columns = [*methods, *(kernel_sum_key(m) for m in methods), "flops"]
    scores = {c: metrics(pred[c], pred["measured"]) for c in columns}
    cov = {m: coverage(pred["measured"], pred[f"{m}_lo"], pred[f"{m}_hi"]) for m in methods}
    base = {
        m: coverage(pred["measured"], pred[f"{m}_base_lo"], pred[f"{m}_base_hi"]) for m in methods
    }
    return ProtocolResult(ts.soc, ts.runtime, protocol, methods, pred, scores, cov, sizes, base)


@dataclass
class SocEvaluation:
    soc: str
    runtime: str
    results: dict[str, ProtocolResult]  # protocol -> result
    elapsed_s: float = 0.0

    @property
    def methods(self) -> tuple[str, ...]:
        return next(iter(self.results.values())).methods

    @property
    def cv(self) -> ProtocolResult:
        """The grouped-CV result (KeyError if that protocol was not run)."""
        return self.results["grouped-cv"]

    @property
    def predictions(self) -> pd.DataFrame:
        """Grouped-CV predictions."""
        return self.cv.predictions

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """Grouped-CV scores: method / kernel sum / "flops" -> metrics."""
        return self.cv.scores


def evaluate_soc(
    soc: str,
    runtime: str,
    measurements_root: Path | None = None,
    n_splits: int = N_SPLITS,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    protocols: Sequence[str] = ("grouped-cv",),
    interval_fn: IntervalFn = estimator_intervals,
) -> SocEvaluation:
    """The `protocols` on one (SoC, runtime). `methods` defaults to the shipped one only
    (what `leti fit` records in a manifest)."""
    t0 = time.perf_counter()
    ts = load_training_set(soc, runtime, measurements_root)
    results = {p: evaluate_protocol(ts, p, methods, n_splits, seed, interval_fn) for p in protocols}
    return SocEvaluation(soc, runtime, results, time.perf_counter() - t0)


@dataclass(frozen=True)
class EvalTask:
    """One (SoC, runtime) evaluation; `to_doc` is what a worker process is told (JSON)."""

    soc: str
    runtime: str
    measurements_root: Path | None
    methods: tuple[str, ...]
    protocols: tuple[str, ...]
    seed: int = 0
    n_splits: int = N_SPLITS

    def run(self) -> SocEvaluation:
        return evaluate_soc(
            self.soc,
            self.runtime,
            self.measurements_root,
            n_splits=self.n_splits,
            seed=self.seed,
            methods=self.methods,
            protocols=self.protocols,
        )

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        root = self.measurements_root
        doc["measurements_root"] = None if root is None else str(root)
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> EvalTask:
        root = doc["measurements_root"]
        return cls(
            **{
                **doc,
                "measurements_root": None if root is None else Path(root),
                "methods": tuple(doc["methods"]),
                "protocols": tuple(doc["protocols"]),
            }
        )


def evaluation_doc(ev: SocEvaluation) -> dict[str, Any]:
    """An evaluation as JSON, exactly (floats as their shortest round-tripping repr; each
    predictions frame by columns, in order)."""
    return {
        "soc": ev.soc,
        "runtime": ev.runtime,
        "elapsed_s": ev.elapsed_s,
        "results": {
            name: {
                "protocol": r.protocol,
                "methods": list(r.methods),
                "predictions": {c: r.predictions[c].tolist() for c in r.predictions.columns},
                "scores": r.scores,
                "coverage": r.coverage,
                "train_sizes": r.train_sizes,
                "base_coverage": r.base_coverage,
            }
            for name, r in ev.results.items()
        },
    }


def evaluation_from_doc(doc: dict[str, Any]) -> SocEvaluation:
    """The inverse of `evaluation_doc`."""
    results = {
        name: ProtocolResult(
            soc=doc["soc"],
            runtime=doc["runtime"],
            protocol=r["protocol"],
            methods=tuple(r["methods"]),
            predictions=pd.DataFrame(r["predictions"]),
            scores=r["scores"],
            coverage=r["coverage"],
            train_sizes=r["train_sizes"],
            base_coverage=r["base_coverage"],
        )
        for name, r in doc["results"].items()
    }
    return SocEvaluation(doc["soc"], doc["runtime"], results, doc["elapsed_s"])


def json_value(value: Any) -> Any:
    """numpy scalars in scores (json writes float64 itself, not int64 or bool_)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


#: What `leti.evaluate.eval_worker` writes into the folder it is given.
RESULT_FILE, ERROR_FILE = "evaluation.json", "error.json"


def _run_in_process(task: EvalTask) -> SocEvaluation:
    """`task` run by `python -m leti.evaluate.eval_worker` (a fresh interpreter: xgboost's
    thread pool does not survive a fork), which writes its evaluation as JSON into a temporary
    folder; a leti error it met comes back as the same class and message."""
    with tempfile.TemporaryDirectory(prefix="leti-evaluate-") as tmp:
        out = Path(tmp)
        proc = subprocess.run(
            child_process.command("leti.evaluate.eval_worker", json.dumps(task.to_doc()), str(out)),
            env=child_process.environment(),
            capture_output=True,
            text=True,
        )
        if (out / ERROR_FILE).is_file():
            err = json.loads((out / ERROR_FILE).read_text("utf-8"))
            raise errors.rebuild_error(err["error"], err["message"], err["state"])
        if proc.returncode != 0 or not (out / RESULT_FILE).is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
            raise RuntimeError(
                f"evaluating {task.soc}/{task.runtime} failed in its process "
                f"(exit {proc.returncode}):\n{tail}"
            )
        return evaluation_from_doc(json.loads((out / RESULT_FILE).read_text("utf-8")))


def evaluate_many(tasks: Sequence[EvalTask], jobs: int = 1) -> Iterator[SocEvaluation]:
    """Run `tasks`, yielding each result as it finishes (in task order when jobs == 1). Each
    fit is single-threaded, so `jobs` processes of their own (`_run_in_process`; nothing is
    pickled) run that many evaluations at once, a thread here waiting on each."""
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield task.run()
        return
    with ThreadPoolExecutor(max_workers=min(jobs, len(tasks))) as pool:
        futures = [pool.submit(_run_in_process, t) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()


def measured_pairs(measurements_root: Path | None = None) -> list[tuple[str, str]]:
    e2e = measurements.load_e2e(measurements_root)
    pairs = e2e[["soc", "runtime"]].drop_duplicates()
    order = {"tflite-gpu": 0, "pytorch-vulkan": 1, "pytorch-metal": 2}
    return sorted(
        ((r.soc, r.runtime) for r in pairs.itertuples()), key=lambda p: (order.get(p[1], 9), p[0])
    )
