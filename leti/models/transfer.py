"""The transfer model: kernel latency on a GPU without per-layer measurements.

A kernel's latency on an unmeasured SoC is predicted from the kernel's own features plus the
SoC's hardware descriptors, by one model trained across every measured SoC of the runtime:

    log(latency) = log(roofline) + f(kernel features, roofline terms, SoC descriptors)

where roofline = max(FLOPs / peak FP16 throughput, bytes / DRAM bandwidth) (FP16 because the
measurements are FP16). `f` is one xgboost model per kernel kind on the roofline-normalised
log time, so what the trees learn is *efficiency* relative to the SoC's peak, which transfers
across SoCs better than raw time does. The graph-level corrector (log of end-to-end over the
kernel sum) is a ridge pooled across SoCs (see `TransferCorrector`).

This module holds the fitted things and their persistence (xgboost JSON + ridge JSON + a
manifest, never pickle); `leti.train.transfer` trains them and `leti.predict` loads them.

Layout: `<models_dir>/transfer/<runtime>/transfer.json` (the manifest; deliberately not named
`manifest.json`, which marks a measured model) plus `kernel_<kind>.json` and `corrector.json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from leti.core.store import atomic_write_json
from leti.frontend.features import GRAPH_FEATURES, KERNEL_FEATURES, kernel_features, kinds
from leti.models.kernel_cost import BYTES_PER_ELEMENT, kernel_work
from leti.models.regressors import KindBoosters

_LOG_SUM = GRAPH_FEATURES.index("log_kernel_sum")

if TYPE_CHECKING:  # training passes frames; the request path a KernelTable (numpy columns)
    import pandas as pd

    from leti.frontend.features import KernelTable

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


class Hardware(Protocol):
    """What the transfer model needs to know about a GPU (a `leti.socs.Soc` has it all)."""

    id: str
    family: str
    arch_gen: float
    fp16_gflops: float
    dram_gbps: float


def soc_vector(hw: Hardware) -> np.ndarray:
    fp16 = float(hw.fp16_gflops)
    bw = float(hw.dram_gbps)
    fam = [float(hw.family == f) for f in FAMILIES]
    return np.array([np.log(fp16), np.log(bw), np.log(fp16 / bw), *fam])


def transfer_matrix(
    geometry: pd.DataFrame | KernelTable, hw: Hardware
) -> tuple[np.ndarray, np.ndarray]:
    """(features in TRANSFER_FEATURES order, log roofline ms) for every kernel row on `hw`.

    The features describe one copy of the kernel's geometry (what the trees were trained on);
    the roofline carries the whole work, batch and fully-connected rows included
    (`kernel_cost.kernel_work`), so a batch of 8 costs its roofline's multiple instead of what
    one image does. Training rows are single copies: for them the two are the same."""
    x = kernel_features(geometry)
    flops = np.expm1(x[:, 0])
    moved = np.expm1(x[:, 1]) + np.expm1(x[:, 2]) + np.expm1(x[:, 3])
    compute_ms = flops / (float(hw.fp16_gflops) * 1e6)
    memory_ms = moved * BYTES_PER_ELEMENT / (float(hw.dram_gbps) * 1e6)
    _, all_flops, all_bytes = kernel_work(geometry)
    whole_compute = all_flops / (float(hw.fp16_gflops) * 1e6)
    whole_memory = all_bytes / (float(hw.dram_gbps) * 1e6)
    log_roof = np.log(np.maximum(whole_compute, whole_memory) + 1e-6)
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

    def predict(self, geometry: pd.DataFrame | KernelTable, hw: Hardware) -> np.ndarray:
        if len(geometry) == 0:
            return np.zeros(0)
        x, log_roof = transfer_matrix(geometry, hw)
        return np.exp(self._predict_matrix(x, kinds(geometry)) + log_roof)

    def bind(self, hw: Hardware) -> BoundKernels:
        return BoundKernels(self, hw)


@dataclass(frozen=True)
class BoundKernels:
    """The transfer kernels for one SoC: `.predict(geometry) -> ms`, as `Estimator` expects."""

    model: TransferKernels
    hw: Any

    def predict(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray:
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
    #: log kernel sum (ms) of the smallest and the largest training row, pooled over SoCs:
    #: outside, the ridge extrapolates and the interval says so.
    size_range: tuple[float, float] = (-np.inf, np.inf)
    #: The least an inference costs besides its kernels (ms): the smallest per-inference cost
    #: of the training SoCs (`leti.train.transfer.per_inference_ms`). Linear in
    #: log(end-to-end / kernel sum), the ridge alone would answer a graph of 0.05 ms of kernels
    #: with about 0.05 ms, when every measured SoC spends more per inference on queueing,
    #: synchronisation and read-back.
    floor_ms: float = 0.0

    def fit(self, x: np.ndarray, log_ratio: np.ndarray, floor_ms: float = 0.0) -> TransferCorrector:
        x = np.asarray(x, float)
        y = np.asarray(log_ratio, float)
        log_sum = x[:, _LOG_SUM]
        self.size_range = (float(log_sum.min()), float(log_sum.max()))
        self.floor_ms = float(floor_ms)
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        z = (x - self.mean_) / self.scale_
        self.intercept_ = float(y.mean())
        a = z.T @ z + self.alpha * np.eye(z.shape[1])
        self.coef_ = np.linalg.solve(a, z.T @ (y - self.intercept_))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, float))
        z = (x - self.mean_) / self.scale_
        log_ratio = z @ self.coef_ + self.intercept_
        if self.floor_ms > 0:  # end-to-end >= kernel sum + the per-inference floor
            floor = np.log1p(self.floor_ms / np.maximum(np.exp(x[:, _LOG_SUM]), 1e-12))
            log_ratio = np.maximum(log_ratio, floor)
        return log_ratio

    def size_extrapolation(self, x: np.ndarray) -> np.ndarray:
        """How far (log units) each graph's kernel sum lies outside the training rows'."""
        log_sum = np.atleast_2d(np.asarray(x, float))[:, _LOG_SUM]
        lo, hi = self.size_range
        return np.maximum(lo - log_sum, 0) + np.maximum(log_sum - hi, 0)

    def to_json(self) -> dict:
        return {
            "type": "ridge",
            "features": list(GRAPH_FEATURES),
            "alpha": self.alpha,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
            "log_kernel_sum_range": list(self.size_range),
            "per_inference_floor_ms": self.floor_ms,
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
            size_range=tuple(float(v) for v in doc.get("log_kernel_sum_range", (-np.inf, np.inf))),
            floor_ms=float(doc.get("per_inference_floor_ms", 0.0)),
        )

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> TransferCorrector:
        return cls.from_json(json.loads(Path(path).read_text("utf-8")))


@dataclass(frozen=True)
class TransferModel:
    """A saved transfer model: kernels, pooled corrector and manifest, as loaded together."""

    kernels: TransferKernels
    corrector: TransferCorrector
    manifest: Mapping[str, Any]

    @classmethod
    def load(cls, folder: Path) -> TransferModel:
        path = Path(folder) / MANIFEST
        manifest = json.loads(path.read_text("utf-8"))
        if list(manifest.get("features", [])) != list(TRANSFER_FEATURES):
            raise ValueError(f"{path}: trained with other features; retrain the transfer model")
        kernels = TransferKernels.load(folder, manifest["kernel_files"])
        corrector = TransferCorrector.load(Path(folder) / manifest["corrector_file"])
        return cls(kernels, corrector, manifest)
