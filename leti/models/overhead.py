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

A NAS family keeps its ranking: fitted with the graph rows of NAS-Bench-201 cells (no timings,
only their structure), the count terms (per kernel, per standalone op) are capped where they
would make the family's totals rank below `FAMILY_TAU_MIN` against their kernel sums. On 82
CNNs the number of kernels grows with their size, so those terms are poorly separated from the
kernel sum there; on a family whose members differ by a few 1x1 convs they would decide the
ranking on their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leti.core.store import atomic_write_json
from leti.frontend.features import GRAPH_FEATURES
from leti.models.regressors import GraphCorrection, GraphCorrector, stage_totals

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
#: The least Kendall tau between the totals and the kernel sums that a family of graphs which
#: differ in a few ops (NAS-Bench-201 cells) must keep (issue 9): a NAS loop needs the ranking
#: inside its search space first, and the per-kernel term, estimated on 82 CNNs whose kernel
#: counts grow with their size, can otherwise reorder such a family by kernel count.
FAMILY_TAU_MIN = 0.95
#: Bisection steps on the per-kernel cap: the cap ends within 2**-12 of the fitted value.
_CAP_STEPS = 12


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
    #: The share of the per-kernel and per-standalone-op terms (above their floors) kept so
    #: that a NAS family keeps ranking like its kernel sums (`fit(..., family=)`); 1 where the
    #: fitted terms already do.
    count_scale: float = 1.0
    #: Kendall tau(total, kernel sum) on the family at fit time (None: fitted without one).
    family_tau: float | None = None

    @classmethod
    def for_hardware(cls, hw: Any, per_kernel: bool = True) -> GraphOverhead:
        return cls(dram_gbps=float(hw.dram_gbps), per_kernel=per_kernel)

    def floors(self) -> np.ndarray:
        """Lower bounds of the coefficients (see the module docstring)."""
        per_melement = STANDALONE_BYTES_PER_ELEMENT * 1e6 / (self.dram_gbps * 1e6)
        return np.array([0.0, 0.0, MIN_DISPATCH_MS, per_melement, 0.0])

    def fit(
        self, x: np.ndarray, log_ratio: np.ndarray, family: np.ndarray | None = None
    ) -> GraphOverhead:
        """Fit the terms on the graphs `x` (graph-feature rows) and their log(end-to-end /
        kernel sum). `family`: graph-feature rows of a NAS family (no timings needed). If the
        fitted count terms (per kernel, per standalone op) make its totals rank below
        `FAMILY_TAU_MIN` against its kernel sums, they are capped at the largest share of their
        fitted values that keeps the ranking, and the other terms are refitted under the cap."""
        self.count_scale = 1.0
        fitted = self._fit_terms(x, log_ratio, None)
        if family is None or len(family) < 3:
            return self
        self.family_tau = self.family_rank(family)
        if self.family_tau >= FAMILY_TAU_MIN:
            return self
        counts = np.zeros(len(TERMS), bool)
        counts[[1, 2]] = True

        def capped(scale: float) -> float:
            self._fit_terms(x, log_ratio, np.where(counts, scale * fitted, np.inf))
            return self.family_rank(family)

        lo, hi = 0.0, 1.0
        for _ in range(_CAP_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if capped(mid) >= FAMILY_TAU_MIN else (lo, mid)
        self.count_scale = lo
        self.family_tau = capped(lo)
        return self

    def _fit_terms(
        self, x: np.ndarray, log_ratio: np.ndarray, upper: np.ndarray | None
    ) -> np.ndarray:
        """Fit the coefficients above their floors (each at most `upper`, if given); returns
        those excesses."""
        from scipy.optimize import lsq_linear, nnls  # fitting only: serving never loads scipy

        terms = structural_terms(x)
        e2e = terms[:, 0] * np.exp(np.asarray(log_ratio, float))
        floor = self.floors()
        weight = 1.0 / e2e  # relative error: a 2 ms cell counts as much as a 200 ms ResNet
        free = np.ones(len(TERMS), bool)
        free[1] = self.per_kernel
        a = terms[:, free] * weight[:, None]
        b = (e2e - terms @ floor) * weight
        above = np.zeros(len(TERMS))
        if upper is None:
            above[free], _ = nnls(a, b)
        else:
            bound = np.maximum(upper[free], 1e-12)
            above[free] = lsq_linear(a, b, bounds=(0.0, bound)).x
        self.coef = above + floor
        log_sum = np.log(terms[:, 0])
        self.size_range = (float(log_sum.min()), float(log_sum.max()))
        return above

    def family_rank(self, family: np.ndarray) -> float:
        return family_tau(self, family)

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
            "count_terms_scale": self.count_scale,
            "nas_family_tau": self.family_tau,
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
            count_scale=float(doc.get("count_terms_scale", 1.0)),
            family_tau=doc.get("nas_family_tau"),
        )


def family_tau(stage: GraphCorrection, family: np.ndarray) -> float:
    """Kendall tau between the totals `stage` gives a family of graphs (graph-feature rows)
    and their kernel sums: 1 when the graph stage keeps the family's order."""
    from scipy.stats import kendalltau  # fitting and evaluation only

    sums = structural_terms(family)[:, 0]
    return float(kendalltau(stage_totals(family, sums, stage), sums).statistic)


def load_graph_stage(path: Path) -> GraphOverhead | GraphCorrector:
    """The graph-level stage saved at `path`: structural, or a free-form corrector of a model
    fitted before the structural stage existed."""
    doc = json.loads(Path(path).read_text("utf-8"))
    if doc.get("type") == FORMAT:
        return GraphOverhead.from_json(doc)
    return GraphCorrector.load(path)
