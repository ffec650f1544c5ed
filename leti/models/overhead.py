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

    coef: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0, 0.0, 0.0]))

    def fit(self, x: np.ndarray, log_ratio: np.ndarray) -> GraphOverhead:
        terms = structural_terms(x)
        e2e = terms[:, 0] * np.exp(np.asarray(log_ratio, float))
        weight = 1.0 / e2e  # relative error: a 2 ms cell counts as much as a 200 ms ResNet
        self.coef, _ = nnls(terms * weight[:, None], e2e * weight)
        return self

    def total_ms(self, x: np.ndarray) -> np.ndarray:
        return structural_terms(x) @ self.coef

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
        }

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, doc: dict) -> GraphOverhead:
        if doc.get("type") != FORMAT or list(doc["terms"]) != list(TERMS):
            raise ValueError("graph-level stage with other terms: re-fit")
        return cls(coef=np.array(doc["coef"], float))


def load_graph_stage(path: Path) -> GraphOverhead | GraphCorrector:
    """The graph-level stage saved at `path`: structural, or a free-form corrector of a model
    fitted before the structural stage existed."""
    doc = json.loads(Path(path).read_text("utf-8"))
    if doc.get("type") == FORMAT:
        return GraphOverhead.from_json(doc)
    return GraphCorrector.load(path)
