"""The family-consistency check of a shipped model on NAS-Bench-201 networks
(`leti.frontend.nb201` builds them): does the total rank like the kernel sum?"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

from leti.core.errors import LetiError
from leti.core.records import Graph
from leti.frontend.nb201 import build_graphs, sample_archs
from leti.predict.estimator import Estimator


def spread(values: np.ndarray) -> dict[str, float]:
    """min, median and max."""
    v = np.asarray(values, float)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


@dataclass
class FamilyConsistency:
    """How one estimator prices a family of graphs: does its total rank like its kernel sum,
    and how much does the graph-level term (total - kernel sum) move across the family?"""

    soc: str
    runtime: str
    model_version: str
    graph_stage: str  # the manifest's training.corrector ("structural", "structural+launches", ...)
    archs: list[str]
    totals: np.ndarray
    kernel_sums: np.ndarray
    flops: np.ndarray

    @property
    def tau(self) -> float:
        """Kendall tau between the total and the kernel sum."""
        return float(kendalltau(self.totals, self.kernel_sums).statistic)

    @property
    def tau_flops(self) -> float:
        """Kendall tau between the total and the FLOPs (for context)."""
        return float(kendalltau(self.totals, self.flops).statistic)

    def scores(self) -> dict:
        return {
            "model_version": self.model_version,
            "graph_stage": self.graph_stage,
            "archs": len(self.archs),
            "tau_total_kernel_sum": self.tau,
            "tau_total_flops": self.tau_flops,
            "tau_kernel_sum_flops": float(kendalltau(self.kernel_sums, self.flops).statistic),
            "total_ms": spread(self.totals),
            "kernel_sum_ms": spread(self.kernel_sums),
            "graph_term_ms": spread(self.totals - self.kernel_sums),
            "total_over_kernel_sum": spread(self.totals / self.kernel_sums),
        }


def family_consistency(
    estimator: Estimator, archs: Sequence[str], graphs: Sequence[Graph]
) -> FamilyConsistency:
    """Price `graphs` (the networks of `archs`) with `estimator` in one batch."""
    preds = estimator.predict_many(list(graphs))
    for arch, p in zip(archs, preds, strict=True):
        if isinstance(p, LetiError):
            raise LetiError(f"NB201 arch {arch}: {p}")
    totals = np.array([p.total_ms for p in preds], float)
    sums = np.array([p.kernel_sum_ms for p in preds], float)
    flops = np.array([sum(lay.flops for lay in g.layers) for g in graphs], float)
    stage = str(estimator.manifest.get("training", {}).get("corrector", "unknown"))
    return FamilyConsistency(
        estimator.soc,
        estimator.runtime,
        estimator.model_version,
        stage,
        list(archs),
        totals,
        sums,
        flops,
    )


def shipped_consistency(
    socs: Sequence[str],
    models_dir: str | Path | None = None,
    n_archs: int = 1000,
    seed: int = 0,
    runtime: str = "tflite-gpu",
) -> Iterator[FamilyConsistency]:
    """`family_consistency` of the shipped estimator of each SoC in `socs` whose model for
    `runtime` is measured (others are skipped), on `n_archs` archs drawn with `seed`; the
    graphs are built once for all SoCs."""
    archs = sample_archs(n_archs, seed)
    graphs: list[Graph] | None = None
    for soc in socs:
        est = Estimator.load(soc, runtime, models_dir)
        if est.provenance != "measured":
            continue
        if graphs is None:
            graphs = build_graphs(archs)
        yield family_consistency(est, archs, graphs)
