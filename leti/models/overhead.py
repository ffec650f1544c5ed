"""The structural graph-level stage: what a mobile GPU spends beyond the sum of its kernels.

On a phone the end-to-end time is not the sum of the per-kernel times: every launched kernel
pays a dispatch and synchronisation cost, every standalone memory-bound op (an Add, a Resize,
a Softmax the runtime does not fuse) is a kernel of its own that the per-kernel data never
timed, and every inference pays a fixed cost (input upload, output read-back, the command
queue). A free-form regressor on whole-graph features learns the 82 training CNNs instead: on
NAS-Bench-201 cells it added a near-constant 0.7-2.2 ms that tracked the number of 1x1 convs
and ranked worse than FLOPs. So the stage is a few interpretable, non-negative terms per SoC:

    end-to-end = a * kernel sum + b * kernels + c * standalone ops
                 + d * standalone Melements + e

fitted by non-negative least squares on *relative* error over the training models' end-to-end
timings, with kernel sums predicted out of fold. It behaves the same for a 32x32 NAS cell and
a 224 px ResNet, and a graph that computes anything never totals 0 ms.

Physics first: a standalone op is a kernel of its own, so its terms have floors that no fit
can remove: a dispatch (`MIN_DISPATCH_MS`) and its memory traffic at the SoC's full bandwidth
(reading and writing each element in FP16). The training CNNs have few standalone ops (the
delegates link most of them), too few for the fit to see them; the floors keep an
elementwise-only graph, or a transformer's LayerNorms and Softmaxes, from costing nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from leti.core.store import atomic_write_json
from leti.frontend.features import GRAPH_FEATURES
from leti.models.regressors import GraphCorrector

TERMS = (
    "kernel_sum",
    "per_kernel_ms",
    "per_standalone_op_ms",
    "per_standalone_melement_ms",
    "per_inference_ms",
)
_IDX = {name: i for i, name in enumerate(GRAPH_FEATURES)}
FORMAT = "structural"
#: The least a launched kernel costs (ms): a dispatch on a mobile GPU queue (judgement).
MIN_DISPATCH_MS = 0.005
#: Bytes a standalone elementwise op moves per output element: read and write, FP16.
STANDALONE_BYTES_PER_ELEMENT = 4


def structural_terms(x: np.ndarray) -> np.ndarray:
    """The five terms of each graph, from its `graph_features` row."""
    x = np.atleast_2d(np.asarray(x, float))
    return np.column_stack(
        [
            np.exp(x[:, _IDX["log_kernel_sum"]]),
            x[:, _IDX["n_kernels"]],
            x[:, _IDX["n_overhead"]],
            np.expm1(x[:, _IDX["log_overhead_elems"]]) / 1e6,
            np.ones(len(x)),
        ]
    )


@dataclass
class GraphOverhead:
    """Non-negative structural terms per SoC; `predict` answers log(end-to-end / kernel sum),
    the same interface as the free-form corrector it replaces."""

    dram_gbps: float = 1.0  # the SoC's bandwidth: the floor of a standalone op's traffic
    coef: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0, 0.0]))
    #: Whether the per-kernel term is fitted. Off, a family of graphs that differ in how many
    #: kernels they launch (NAS cells with `none` edges) ranks exactly like its kernel sums;
    #: `leti.train.fit` keeps it only where it earns its place out of fold.
    per_kernel: bool = True
    #: log kernel sum (ms) of the smallest and the largest training graph: outside, the terms
    #: are extrapolated and the interval says so.
    size_range: tuple[float, float] = (-np.inf, np.inf)
    #: Standalone op types the training graphs contained: their terms were fitted on them.
    seen_ops: tuple[str, ...] = ()

    @classmethod
    def for_hardware(cls, hw: Any, per_kernel: bool = True) -> GraphOverhead:
        return cls(dram_gbps=float(hw.dram_gbps), per_kernel=per_kernel)

    def floors(self) -> np.ndarray:
        """Lower bounds of the coefficients (see the module docstring)."""
        per_melement = STANDALONE_BYTES_PER_ELEMENT * 1e6 / (self.dram_gbps * 1e6)
        return np.array([0.0, 0.0, MIN_DISPATCH_MS, per_melement, 0.0])

    def fit(self, x: np.ndarray, log_ratio: np.ndarray) -> GraphOverhead:
        terms = structural_terms(x)
        e2e = terms[:, 0] * np.exp(np.asarray(log_ratio, float))
        floor = self.floors()
        weight = 1.0 / e2e  # relative error: a 2 ms cell counts as much as a 200 ms ResNet
        free = np.ones(len(TERMS), bool)
        free[1] = self.per_kernel
        above = np.zeros(len(TERMS))
        above[free], _ = nnls(terms[:, free] * weight[:, None], (e2e - terms @ floor) * weight)
        self.coef = above + floor
        log_sum = np.log(terms[:, 0])
        self.size_range = (float(log_sum.min()), float(log_sum.max()))
        return self

    def size_extrapolation(self, x: np.ndarray) -> np.ndarray:
        """How far (log units) each graph's kernel sum lies outside the training graphs'."""
        log_sum = np.log(structural_terms(x)[:, 0])
        lo, hi = self.size_range
        return np.maximum(lo - log_sum, 0) + np.maximum(log_sum - hi, 0)

    def total_ms(self, x: np.ndarray) -> np.ndarray:
        return structural_terms(x) @ self.coef

    def standalone_ms(self, output_elements: list[float]) -> np.ndarray:
        """Each standalone op's own terms: its per-op cost and its elements' cost."""
        elems = np.asarray(output_elements, float)
        return self.coef[2] + self.coef[3] * elems / 1e6

    def predict(self, x: np.ndarray) -> np.ndarray:
        terms = structural_terms(x)
        return np.log(np.maximum(terms @ self.coef, 1e-9) / np.maximum(terms[:, 0], 1e-12))

    def to_json(self) -> dict[str, Any]:
        return {
            "type": FORMAT,
            "model": "end-to-end = " + " + ".join(f"{t} * coef" for t in TERMS),
            "features": list(GRAPH_FEATURES),
            "terms": list(TERMS),
            "coef": [float(c) for c in self.coef],
            "floors": [float(c) for c in self.floors()],
            "dram_gbps": self.dram_gbps,
            "per_kernel_fitted": self.per_kernel,
            "log_kernel_sum_range": list(self.size_range),
            "seen_standalone_ops": list(self.seen_ops),
        }

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, doc: dict) -> GraphOverhead:
        if doc.get("type") != FORMAT or list(doc["terms"]) != list(TERMS):
            raise ValueError("graph-level stage with other terms: re-fit")
        lo, hi = doc.get("log_kernel_sum_range", (-np.inf, np.inf))
        return cls(
            dram_gbps=float(doc["dram_gbps"]),
            coef=np.array(doc["coef"], float),
            per_kernel=bool(doc.get("per_kernel_fitted", True)),
            size_range=(float(lo), float(hi)),
            seen_ops=tuple(doc.get("seen_standalone_ops", ())),
        )


def load_graph_stage(path: Path) -> GraphOverhead | GraphCorrector:
    """The graph-level stage saved at `path`: structural, or a free-form corrector of a model
    fitted before the structural stage existed."""
    doc = json.loads(Path(path).read_text("utf-8"))
    if doc.get("type") == FORMAT:
        return GraphOverhead.from_json(doc)
    return GraphCorrector.load(path)
