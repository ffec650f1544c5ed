"""Kernel cost = analytic cost on the SoC x learned efficiency (DESIGN.md, "How a kernel is
priced").

Trees interpolate: a tree on raw sizes returns its largest training leaf for anything bigger,
so a 4096-row MatMul would cost what a 1-row one does and a 4K image what 224 px does. The
cost therefore has two parts:

- an **analytic part** that scales with the work: `FLOPs / peak + bytes / bandwidth` on the
  SoC's descriptors (FP16, as the measurements are), with batch (or fully-connected rows)
  multiplying the geometry's work, and the front end's own FLOPs and bytes for ops whose work
  the geometry cannot express (`work_flops`, `work_bytes`). A sum rather than the roofline's
  max: mobile kernels overlap compute and memory traffic poorly, and a kernel that moves from
  memory-bound (a 1-row fully-connected layer, all the data has) to compute-bound (197 rows)
  must keep paying for both; the efficiency absorbs the overlap where it was measured;
- a **learned efficiency**: per kernel kind, xgboost on log(measured / analytic) from the
  kernel's geometry features, **clamped to the range each kind was trained on**, so that
  outside it the efficiency stays at its edge value while the analytic part keeps scaling.

On grouped CV this alone lifts the kernel model: the efficiency is a smoother target than raw
time (it varies over ~1.5 decades where time varies over ~4).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from leti.core.store import atomic_write_json
from leti.frontend.features import KERNEL_FEATURES, KernelTable, kernel_features, kinds
from leti.models.regressors import KindBoosters

if TYPE_CHECKING:  # frames come from training and evaluation; the request path sends tables
    import pandas as pd

#: Activations and weights move as FP16 on the GPU delegates we model.
BYTES_PER_ELEMENT = 2
#: The front end counts bytes at 4 per element (float32 graphs); the cost model moves FP16.
FRONTEND_BYTES_PER_ELEMENT = 4
#: Floor of an analytic cost (ms): a kernel never costs less than a dispatch.
MIN_ANALYTIC_MS = 1e-4
META_FILE = "kernel_cost.json"
#: The features that describe a kernel's size. The fused-op counts are left out of the
#: extrapolation measure: sources tag fusions differently (the PyTorch rows time an activation
#: on its own where the plan links it), and an unseen tag is not an unseen size.
_SIZE_COLUMNS = [i for i, name in enumerate(KERNEL_FEATURES) if not name.startswith("fused_")]
FORMAT = "leti-kernel-cost/1"
_GLOBAL = "_all"


def kernel_work(
    geometry: pd.DataFrame | KernelTable, x: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, FLOPs, bytes) of each kernel row, batch included.

    The work comes from the geometry (the same formulas as the features, so a measured row and
    an ONNX-derived kernel agree), times `batch`; `work_flops` / `work_bytes` (> 0) replace it
    where the front end knows better (3-D convs, attention MatMuls, recurrent layers). `x`: the
    rows' `kernel_features` when the caller has them already."""
    x = kernel_features(geometry) if x is None else x
    n = len(geometry)
    batch = _column(geometry, "batch", 1.0, n).clip(min=1)
    flops = np.expm1(x[:, 0]) * batch
    elems = (np.expm1(x[:, 1]) + np.expm1(x[:, 2])) * batch + np.expm1(x[:, 3])
    moved = elems * BYTES_PER_ELEMENT
    own_flops = _column(geometry, "work_flops", 0.0, n)
    own_bytes = _column(geometry, "work_bytes", 0.0, n)
    flops = np.where(own_flops > 0, own_flops, flops)
    moved = np.where(
        own_bytes > 0, own_bytes * BYTES_PER_ELEMENT / FRONTEND_BYTES_PER_ELEMENT, moved
    )
    return x, flops, moved


def _column(frame: pd.DataFrame | KernelTable, name: str, default: float, n: int) -> np.ndarray:
    if name not in frame:
        return np.full(n, default)
    column: Any = frame[name]
    if isinstance(column, np.ndarray):  # a KernelTable's column: numbers already
        return np.where(np.isnan(column), default, column)
    import pandas as pd  # a frame of measurement rows: coerce what is not a number

    return pd.to_numeric(column, errors="coerce").fillna(default).to_numpy(float)


@dataclass
class KernelCosts(KindBoosters):
    """Per-(SoC, runtime) kernel latency: analytic cost x per-kind efficiency boosters."""

    fp16_gflops: float = 1.0
    dram_gbps: float = 1.0
    ranges: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    @classmethod
    def for_hardware(cls, hw: Any, **params: Any) -> KernelCosts:
        """`hw`: anything with `fp16_gflops` and `dram_gbps` (a `Soc`, a `GpuSpec`)."""
        return cls(fp16_gflops=float(hw.fp16_gflops), dram_gbps=float(hw.dram_gbps), **params)

    def analytic_ms(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray:
        return self._analytic(geometry)[1]

    def _analytic(
        self, geometry: pd.DataFrame | KernelTable, x: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        x, flops, moved = kernel_work(geometry, x)
        compute = flops / (self.fp16_gflops * 1e6)
        memory = moved / (self.dram_gbps * 1e6)
        return x, np.maximum(compute + memory, MIN_ANALYTIC_MS)

    def fit(self, geometry: pd.DataFrame, latency_ms: np.ndarray) -> KernelCosts:
        geometry = geometry.reset_index(drop=True)
        x, analytic = self._analytic(geometry)
        kinds = geometry["kind"].to_numpy()
        self.ranges = {
            str(k): (x[kinds == k].min(axis=0).tolist(), x[kinds == k].max(axis=0).tolist())
            for k in sorted(set(kinds))
        }
        self.ranges[_GLOBAL] = (x.min(axis=0).tolist(), x.max(axis=0).tolist())
        y = np.log(np.asarray(latency_ms, float)) - np.log(analytic)
        self._fit_matrix(x, y, kinds)
        return self

    def clamp(self, x: np.ndarray, kinds: np.ndarray) -> np.ndarray:
        """Features held inside the range their kind was trained on (unknown kinds: the range
        of all training rows): outside it the efficiency stays at its edge value."""
        out = x.copy()
        for kind in set(kinds):
            lo, hi = self.ranges.get(str(kind), self.ranges[_GLOBAL])
            mask = kinds == kind
            out[mask] = np.clip(x[mask], lo, hi)
        return out

    def predict(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray:
        """Latency in ms of each kernel row. Pure: no state changes."""
        return self.price(geometry)[0]

    def price(self, geometry: pd.DataFrame | KernelTable) -> tuple[np.ndarray, np.ndarray]:
        """(latency in ms, `extrapolation`) of each kernel row, from one feature matrix."""
        if len(geometry) == 0:
            return np.zeros(0), np.zeros(0)
        x = kernel_features(geometry)
        kind = kinds(geometry)
        x, analytic = self._analytic(geometry, x)
        ms = analytic * np.exp(self._predict_matrix(self.clamp(x, kind), kind))
        return ms, self._extrapolation(geometry, x, kind)

    def extrapolation(self, geometry: pd.DataFrame | KernelTable) -> np.ndarray:
        """How far each row lies outside its kind's training range: the largest distance of a
        feature past its edge, in units of that feature's training span (0 inside), or of its
        batch past the single copies it was trained on."""
        if len(geometry) == 0:
            return np.zeros(0)
        return self._extrapolation(geometry, kernel_features(geometry), kinds(geometry))

    def _extrapolation(
        self, geometry: pd.DataFrame | KernelTable, x: np.ndarray, row_kinds: np.ndarray
    ) -> np.ndarray:
        out = np.zeros(len(x))
        for kind in set(row_kinds):
            lo, hi = (
                np.asarray(v, float) for v in self.ranges.get(str(kind), self.ranges[_GLOBAL])
            )
            # a feature (nearly) constant in training (every fully-connected row has h_out = 1,
            # c_out = 1000) has no span: measure distance against half its magnitude instead
            span = np.maximum(hi - lo, np.maximum(0.5 * np.maximum(abs(lo), abs(hi)), 1.0))
            mask = row_kinds == kind
            past = np.maximum(lo - x[mask], 0) + np.maximum(x[mask] - hi, 0)
            out[mask] = (past / span)[:, _SIZE_COLUMNS].max(axis=1)
        # Training rows are single copies: a batch (or many fully-connected rows) is outside
        # the data too, though its work is exact; half a unit per doubling.
        batch = _column(geometry, "batch", 1.0, len(geometry)).clip(min=1)
        return np.maximum(out, np.log2(batch) / 2)

    def save(self, folder: Path) -> dict[str, str]:
        files = super().save(folder)
        atomic_write_json(
            Path(folder) / META_FILE,
            {
                "format": FORMAT,
                "model": "ms = (flops / fp16 peak + bytes / bandwidth) x exp(efficiency)",
                "features": list(KERNEL_FEATURES),
                "fp16_gflops": self.fp16_gflops,
                "dram_gbps": self.dram_gbps,
                "bytes_per_element": BYTES_PER_ELEMENT,
                "feature_ranges": {
                    k: {"min": lo, "max": hi} for k, (lo, hi) in self.ranges.items()
                },
            },
        )
        return {**files, "_cost": META_FILE}

    @classmethod
    def load(cls, folder: Path, files: Mapping[str, str]) -> KernelCosts:
        files = dict(files)
        meta = json.loads((Path(folder) / files.pop("_cost")).read_text("utf-8"))
        if meta.get("format") != FORMAT or list(meta["features"]) != list(KERNEL_FEATURES):
            raise ValueError(f"{folder}: kernel cost model of another format or features; re-fit")
        model = super().load(folder, files)
        model.fp16_gflops = float(meta["fp16_gflops"])
        model.dram_gbps = float(meta["dram_gbps"])
        model.ranges = {
            k: (list(v["min"]), list(v["max"])) for k, v in meta["feature_ranges"].items()
        }
        return model
