"""Per-kernel latency regressors and the graph-level corrector, with pickle-free persistence.

Kernel regressors: one xgboost model per kernel kind on log latency (latency spans four orders
of magnitude; relative error is what matters). Kinds with too few rows fall back to a pooled
model that sees the kind as a feature, so no kernel is ever silently priced at 0 ms.

Corrector: shallow boosted trees on graph-level features predicting log(end-to-end / kernel
sum). Both are stored as xgboost JSON inside our own JSON documents.

Fitting imports the xgboost package; loading and predicting go through libxgboost directly
(`leti.models.boosters`), so that serving imports neither xgboost's Python layer nor what it
imports (scipy, and scikit-learn where installed). The request path takes kernels as a
`KernelTable` (numpy columns); training and evaluation may pass pandas frames of the same
columns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from leti.core.records import KERNEL_KINDS, KernelPlan
from leti.core.store import atomic_write_bytes, atomic_write_json
from leti.frontend.features import (
    GRAPH_FEATURES,
    KernelTable,
    graph_features,
    kernel_features,
    kinds,
)
from leti.models.boosters import SMALL_ROWS, load_booster

if TYPE_CHECKING:
    import pandas as pd


KINDS = KERNEL_KINDS  # the pooled model's kind codes are indices into it: order is persisted
_POOLED = "_pooled"


def kind_codes(kinds) -> np.ndarray:
    """The kind as a number, for the pooled fallback model."""
    return np.array([KINDS.index(k) if k in KINDS else -1 for k in kinds], float)


def predict_rows(booster: Any, x: np.ndarray) -> np.ndarray:
    """`booster.inplace_predict(x)`, equal rows predicted once: a network repeats its blocks'
    kernels (the 82 zoo graphs have 4209 kernels and 1556 distinct feature rows; ResNet-50's
    53 convolutions, 23). The same numbers: rows with the same bytes follow the same paths.
    Few distinct rows then take the booster's numpy path (`leti.models.boosters`)."""
    if len(x) <= SMALL_ROWS:
        return booster.inplace_predict(x)
    x = np.ascontiguousarray(x)
    keys = x.view(np.dtype((np.void, x.shape[1] * x.dtype.itemsize))).ravel().tolist()
    first: dict[bytes, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    if len(first) == len(keys):
        return booster.inplace_predict(x)
    slot = {key: j for j, key in enumerate(first)}
    back = np.fromiter((slot[key] for key in keys), np.intp, len(keys))
    return booster.inplace_predict(x[list(first.values())])[back]


@dataclass
class KindBoosters:
    """One xgboost model per kernel kind on a log target, plus a pooled fallback.

    Kinds with too few rows fall back to the pooled model, which sees the kind as a feature,
    so no kernel is ever silently priced at 0 ms. Subclasses choose the features and target.
    """

    n_estimators: int = 300
    max_depth: int = 6
    learning_rate: float = 0.08
    min_rows: int = 12
    seed: int = 0
    # One thread: on a shared 2-core machine, OpenMP threads contending with another process
    # made a fit 100x slower; fits here are small and many.
    n_jobs: int = 1
    min_child_weight: float = 1.0
    full_rounds_rows: int = 50  # fewer rows than this: a third of the rounds
    # kind -> a booster with `inplace_predict` (an xgboost.Booster after a fit, a
    # leti.models.boosters.Booster after a load)
    boosters: dict[str, Any] = field(default_factory=dict, repr=False)

    raw_format = "ubj"  # xgboost's own binary JSON: a third of the text JSON's size

    def _params(self) -> dict:
        return {
            "objective": "reg:squarederror",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.9,
            "colsample_bytree": 0.9,
            "min_child_weight": self.min_child_weight,
            "lambda": 1.0,
            "tree_method": "hist",
            "nthread": self.n_jobs,
            "seed": self.seed,
            "verbosity": 0,
        }

    def _train(self, x: np.ndarray, y: np.ndarray) -> Any:
        import xgboost as xgb

        rounds = (
            self.n_estimators
            if len(y) >= self.full_rounds_rows
            else max(60, self.n_estimators // 3)
        )
        return xgb.train(self._params(), xgb.DMatrix(x, label=y), num_boost_round=rounds)

    def _fit_matrix(self, x: np.ndarray, y: np.ndarray, kinds: np.ndarray) -> None:
        self.boosters = {}
        for kind in sorted(set(kinds)):
            mask = kinds == kind
            if mask.sum() >= self.min_rows:
                self.boosters[kind] = self._train(x[mask], y[mask])
        self.boosters[_POOLED] = self._train(np.column_stack([x, kind_codes(kinds)]), y)

    def _predict_matrix(self, x: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        out = np.empty(len(x))
        done = np.zeros(len(x), bool)
        for kind in set(kinds):
            if kind in self.boosters:
                mask = kinds == kind
                out[mask] = predict_rows(self.boosters[kind], x[mask])
                done |= mask
        if not done.all():
            rest = ~done
            pooled = np.column_stack([x[rest], kind_codes(kinds[rest])])
            out[rest] = predict_rows(self.boosters[_POOLED], pooled)
        return out

    def prepare(self) -> None:
        """Everything a first prediction would build (`Booster.prepare`), built now."""
        for booster in self.boosters.values():
            getattr(booster, "prepare", lambda: None)()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.boosters if k != _POOLED)

    def save(self, folder: Path) -> dict[str, str]:
        """Write one xgboost model per kind; returns {kind: file name} for the manifest."""
        files = {}
        for kind, booster in self.boosters.items():
            # save_raw, not save_model: save_model picks the format from the temp file's suffix
            name = f"kernel{kind if kind.startswith('_') else '_' + kind}.{self.raw_format}"
            atomic_write_bytes(folder / name, bytes(booster.save_raw(raw_format=self.raw_format)))
            files[kind] = name
        return files

    @classmethod
    def load(cls, folder: Path, files: Mapping[str, str]):
        """Load what `save` wrote (JSON or UBJ: xgboost tells them apart from the bytes)."""
        model = cls()
        for kind, name in files.items():
            model.boosters[kind] = load_booster((Path(folder) / name).read_bytes())
        return model


@dataclass
class KernelRegressors(KindBoosters):
    """Per-(soc, runtime) kernel latency: scikit-learn style, `fit` returns self."""

    def fit(self, geometry: pd.DataFrame, latency_ms: np.ndarray) -> KernelRegressors:
        geometry = geometry.reset_index(drop=True)
        y = np.log(np.asarray(latency_ms, float))
        self._fit_matrix(kernel_features(geometry), y, geometry["kind"].to_numpy())
        return self

    def predict(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray:
        """Latency in ms for each row. Pure: no state changes."""
        if len(geometry) == 0:
            return np.zeros(0)
        x = kernel_features(geometry)
        return np.exp(self._predict_matrix(x, kinds(geometry)))


@dataclass
class GraphCorrector:
    """Shallow boosted trees on graph features -> log(end-to-end / kernel sum).

    Depth-2 trees with column subsampling: ~65 training graphs per fold leave room for little
    more. Chosen over a ridge model on grouped CV (median ±10% accuracy 86% vs 81% across the
    six tflite-gpu SoCs); trees also saturate instead of extrapolating wildly on odd graphs.
    """

    n_estimators: int = 300
    max_depth: int = 2
    learning_rate: float = 0.05
    colsample: float = 0.7
    seed: int = 0
    constant: bool = False  # a fixed log ratio: chosen where the trees do not help (see fit)
    offset: float = 0.0
    booster: Any = field(default=None, repr=False)  # an xgboost.Booster or a boosters.Booster

    def fit(self, x: np.ndarray, log_ratio: np.ndarray) -> GraphCorrector:
        import xgboost as xgb

        if self.constant:
            self.offset = float(np.mean(log_ratio))
            return self
        params = {
            "objective": "reg:squarederror",
            "max_depth": self.max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": self.colsample,
            "lambda": 5.0,
            "min_child_weight": 3.0,
            "nthread": 1,
            "seed": self.seed,
            "verbosity": 0,
        }
        data = xgb.DMatrix(np.asarray(x, float), label=np.asarray(log_ratio, float))
        self.booster = xgb.train(params, data, num_boost_round=self.n_estimators)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, float))
        if self.constant:
            return np.full(len(x), self.offset)
        return self.booster.inplace_predict(x)

    def save(self, path: Path) -> None:
        doc: dict = {"type": "constant", "features": list(GRAPH_FEATURES), "offset": self.offset}
        if not self.constant:
            raw = json.loads(bytes(self.booster.save_raw(raw_format="json")))
            doc = {"type": "xgboost", "features": list(GRAPH_FEATURES), "booster": raw}
        atomic_write_json(path, doc)

    @classmethod
    def load(cls, path: Path) -> GraphCorrector:
        doc = json.loads(Path(path).read_text("utf-8"))
        if doc.get("type") == "constant":
            return cls(constant=True, offset=float(doc["offset"]))
        if doc.get("type") != "xgboost" or list(doc["features"]) != list(GRAPH_FEATURES):
            raise ValueError(f"{path}: corrector was trained with other graph features; re-fit")
        return cls(booster=load_booster(json.dumps(doc["booster"]).encode()))


class NoGraphCorrection:
    """Stands in for the graph-level corrector of a kernel-sum base: log ratio 0.

    A cross-runtime calibration (ncnn-vulkan) sits on another runtime's *kernel sum*: that
    runtime's corrector learned its own overheads, not the target runtime's."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.zeros(len(x))


class KernelTimeModel(Protocol):
    """Anything that prices kernel rows: `.predict(kernels table or frame) -> ms` (measured
    boosters, or the transfer model bound to one GPU)."""

    def predict(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray: ...


class GraphCorrection(Protocol):
    """Anything that maps graph features to log(end-to-end / kernel sum)."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def kernel_batch(plans: Sequence[KernelPlan]) -> tuple[KernelTable | None, list[int]]:
    """One kernel table for the kernels of every plan (None when there are none), and how
    many rows each plan has: built once, priced and measured from the same table."""
    sizes = [len(p.kernels) for p in plans]
    if sum(sizes) == 0:
        return None, sizes
    return KernelTable.of([k for p in plans for k in p.kernels]), sizes


def split_by_plan(values: np.ndarray | Sequence[float], sizes: Sequence[int]) -> list[np.ndarray]:
    """Per-row values of a `kernel_batch` frame, back into one array per plan."""
    if sum(sizes) == 0:
        return [np.zeros(0) for _ in sizes]
    return np.split(np.asarray(values, float), np.cumsum(sizes)[:-1])


def predict_kernel_ms(model: KernelTimeModel, plans: Sequence[KernelPlan]) -> list[np.ndarray]:
    """Per-kernel times (ms) of every plan, with one regressor call per kernel kind for the
    whole batch: that is what makes NAS-sized batches fast."""
    frame, sizes = kernel_batch(plans)
    return split_by_plan(model.predict(frame) if frame is not None else (), sizes)


def graph_rows(plans: Sequence[KernelPlan], kernel_ms: Sequence[np.ndarray]) -> np.ndarray:
    """The graph-feature row of each plan (`GRAPH_FEATURES`), from its kernel times."""
    return np.array([graph_features(p, ms) for p, ms in zip(plans, kernel_ms, strict=True)])


def stage_totals(x: np.ndarray, sums: np.ndarray, corrector: GraphCorrection) -> np.ndarray:
    """End-to-end totals from graph-feature rows and kernel sums: a structural stage prices
    the total directly, a free-form corrector scales the kernel sum."""
    if hasattr(corrector, "total_ms"):
        return np.asarray(corrector.total_ms(x), float)
    # xgboost answers float32: take the exponential in float64, as a single prediction does
    log_ratio = np.asarray(corrector.predict(x), float)
    return sums * np.exp(log_ratio)


def corrected_totals(
    plans: Sequence[KernelPlan],
    kernel_ms: Sequence[np.ndarray],
    corrector: GraphCorrection,
    floor_ms: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """(end-to-end, kernel sum) of each plan: total = kernel sum x exp(graph-level correction),
    with one corrector call for the batch. The kernel sum is floored at `floor_ms` (a graph
    with no priced kernel must not take a log of 0)."""
    sums = np.array([max(float(ms.sum()), floor_ms) for ms in kernel_ms])
    if not len(sums):
        return sums, sums
    return stage_totals(graph_rows(plans, kernel_ms), sums, corrector), sums
