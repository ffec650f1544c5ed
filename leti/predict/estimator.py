"""`Estimator`: load the trained models of one (SoC, runtime) and predict end-to-end latency.

Prediction runs the pipeline in one direction: graph -> kernels -> features -> per-kernel
regressors -> sum -> graph-level correction. An Estimator is immutable after `load`, so one
instance can serve many threads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd

from leti.core import socs
from leti.core.errors import LetiError, ModelNotFoundError
from leti.core.records import Graph, KernelPlan, LayerTime, Prediction, Unsupported
from leti.core.store import models_dir as resolve_models_dir
from leti.frontend.features import graph_features, kernels_frame
from leti.frontend.fusion import plan as plan_kernels
from leti.frontend.graph import parse_graph
from leti.models import class_scales
from leti.models.regressors import GraphCorrector, KernelRegressors

GraphSource = str | os.PathLike[str] | bytes | onnx.ModelProto
OVERHEAD_LAYER = "(graph overhead)"

__all__ = ["Estimator", "available", "model_folder", "GraphSource", "OVERHEAD_LAYER"]


def model_folder(models_dir: Path, soc: str, runtime: str) -> Path:
    return Path(models_dir) / soc / runtime


@dataclass(frozen=True)
class Estimator:
    soc: str
    runtime: str
    model_version: str
    provenance: str
    kernels: KernelRegressors
    corrector: GraphCorrector
    manifest: Mapping
    log_interval: tuple[float, float] = (-0.2, 0.2)
    calibration: Mapping | None = None

    @classmethod
    def load(
        cls,
        soc: str,
        runtime: str | None = None,
        models_dir: str | os.PathLike[str] | None = None,
    ) -> Estimator:
        """Load the models for `soc` (an id or alias); runtime defaults to tflite-gpu."""
        s = socs.resolve(soc)
        rt = socs.resolve_runtime(runtime)
        root = resolve_models_dir(models_dir)
        folder = model_folder(root, s.id, rt)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            from leti.train.transfer import load_transfer_estimator

            est = load_transfer_estimator(s, rt, root)
            if est is not None:
                return est
            have = ", ".join(f"{a['soc']}/{a['runtime']}" for a in available(root)) or "none"
            raise ModelNotFoundError(
                f"no trained model for {s.id} on {rt} in {root}; available: {have}",
                detail=have,
            )
        manifest = json.loads(manifest_path.read_text("utf-8"))
        est = cls(
            soc=s.id,
            runtime=rt,
            model_version=manifest["model_version"],
            provenance="measured",
            kernels=KernelRegressors.load(folder, manifest["kernel_files"]),
            corrector=GraphCorrector.load(folder / manifest["corrector_file"]),
            manifest=manifest,
            log_interval=tuple(manifest.get("interval_log_quantiles", (-0.2, 0.2))),
        )
        from leti.train.calibrate import apply_saved_calibration

        return apply_saved_calibration(est, root)

    # -- the pipeline ------------------------------------------------------------------------
    def plan(
        self, source: GraphSource | Graph, input_shapes=None, *, max_layers: int | None = None
    ) -> KernelPlan:
        """The graph's kernels under this runtime's fusion rules. `max_layers` overrides the
        front end's node limit (`LETI_MAX_LAYERS`), e.g. a server's own configuration."""
        if isinstance(source, Graph):
            graph = source
        else:
            graph = parse_graph(source, input_shapes, max_layers=max_layers)
        return plan_kernels(graph, self.runtime)

    def predict(
        self, source: GraphSource | Graph, input_shapes=None, *, max_layers: int | None = None
    ) -> Prediction:
        """End-to-end latency of one graph; raises a LetiError subclass on bad input."""
        plan = self.plan(source, input_shapes, max_layers=max_layers)
        return self.predict_plan(plan)

    def predict_plan(self, plan: KernelPlan) -> Prediction:
        return self._predict_plans([plan])[0]

    def kernel_ms(self, plan: KernelPlan) -> np.ndarray:
        """Predicted time of each kernel of `plan`, before any graph-level correction."""
        return self._kernel_ms([plan])[0]

    def _kernel_ms(self, plans: Sequence[KernelPlan]) -> list[np.ndarray]:
        """Per-kernel times of every plan, with one regressor call per kernel kind."""
        frames = [kernels_frame(p.kernels) for p in plans]
        sizes = [len(f) for f in frames]
        all_ms = self.kernels.predict(pd.concat(frames, ignore_index=True)) if sum(sizes) else []
        return np.split(np.asarray(all_ms, float), np.cumsum(sizes)[:-1])

    def _predict_plans(self, plans: Sequence[KernelPlan]) -> list[Prediction]:
        """Batched: one regressor call per kernel kind and one corrector call for all graphs."""
        split = self._kernel_ms(plans)
        feats = np.array([graph_features(p, ms) for p, ms in zip(plans, split, strict=True)])
        log_ratio = self.corrector.predict(feats)
        return [
            self._assemble(p, ms, float(r) if len(ms) else 0.0)
            for p, ms, r in zip(plans, split, log_ratio, strict=True)
        ]

    def _assemble(self, plan: KernelPlan, ms: np.ndarray, log_ratio: float) -> Prediction:
        kernel_sum = float(ms.sum())
        total = kernel_sum * float(np.exp(log_ratio))
        lo, hi = self.log_interval
        if self.calibration:
            total, (lo, hi) = _calibrate(total, self.calibration, plan, ms)
        layers = [
            LayerTime(k.name, k.op_type, "+".join((k.kind, *k.fused)), float(t))
            for k, t in zip(plan.kernels, ms, strict=True)
        ]
        if plan.overhead or total != kernel_sum:
            layers.append(LayerTime(OVERHEAD_LAYER, "overhead", "graph", total - kernel_sum))
        unsupported = _group_unsupported(plan)
        notes = []
        if unsupported:
            n = sum(u.count for u in unsupported)
            ops = ", ".join(u.op for u in unsupported)
            notes.append(f"total_ms excludes {n} unsupported layer(s) ({ops}): no latency model")
        if plan.overhead:
            notes.append(
                f"{len(plan.overhead)} standalone layer(s) without per-kernel data are not priced "
                "one by one: the graph-level correction (corrector or calibration) covers them in "
                "the overhead entry"
            )
        return Prediction(
            soc=self.soc,
            runtime=self.runtime,
            total_ms=total,
            interval_ms=(total * float(np.exp(lo)), total * float(np.exp(hi))),
            layers=tuple(layers),
            unsupported=unsupported,
            model_version=self.model_version,
            provenance=self.provenance,
            kernel_sum_ms=kernel_sum,
            notes=tuple(notes),
        )

    def predict_many(
        self,
        sources: Sequence[GraphSource],
        input_shapes=None,
        *,
        max_layers: int | None = None,
    ) -> list[Prediction | LetiError]:
        """One result per graph, in order; a bad graph yields its error, not an exception.

        The regressors run once for the whole batch, which is what makes NAS-sized batches fast.
        """
        out: list[Prediction | LetiError | None] = [None] * len(sources)
        plans: list[tuple[int, KernelPlan]] = []
        for i, src in enumerate(sources):
            try:
                plans.append((i, self.plan(src, input_shapes, max_layers=max_layers)))
            except LetiError as exc:
                out[i] = exc
        if plans:
            for (i, _), pred in zip(plans, self._predict_plans([p for _, p in plans]), strict=True):
                out[i] = pred
        return out  # type: ignore[return-value]


def _calibrate(
    total: float, cal: Mapping, plan: KernelPlan, ms: np.ndarray
) -> tuple[float, tuple[float, float]]:
    """Log-affine map of the uncalibrated total, log t' = a + b log t, and for a cross-runtime
    calibration its geometric mean with the class-scale model (see leti.calibration)."""
    a, b = float(cal["a"]), float(cal["b"])
    new = float(np.exp(a + b * np.log(max(total, 1e-9))))
    if "class_log_weights" in cal:
        terms = class_scales.class_terms(plan.kernels, ms)
        new = float(
            class_scales.combine(new, class_scales.predict(terms, cal["class_log_weights"]))
        )
    lo, hi = cal.get("interval_log_quantiles", (-0.2, 0.2))
    return new, (float(lo), float(hi))


def _group_unsupported(plan: KernelPlan) -> tuple[Unsupported, ...]:
    counts = Counter(layer.op_type for layer in plan.unsupported)
    return tuple(
        Unsupported(
            op=op,
            count=n,
            names=tuple(la.name for la in plan.unsupported if la.op_type == op)[:20],
        )
        for op, n in sorted(counts.items())
    )


def available(models_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    """Every loadable (soc, runtime): measured models, then transfer and calibrated ones."""
    from leti.train.calibrate import read_calibration

    root = resolve_models_dir(models_dir)
    registry = socs.all_socs()
    out = []
    for manifest_path in sorted(root.glob("*/*/manifest.json")):
        m = json.loads(manifest_path.read_text("utf-8"))
        soc = registry.get(m.get("soc", ""))
        if soc is None:
            continue
        cal = read_calibration(root, soc.id, m["runtime"])
        out.append(
            {
                "soc": soc.id,
                "name": soc.name,
                "gpu": soc.gpu,
                "runtime": m["runtime"],
                "model_version": cal["model_version"] if cal else m["model_version"],
                "provenance": "calibrated" if cal else "measured",
            }
        )
    from leti.train.transfer import available_transfer

    out.extend(available_transfer(root, {(a["soc"], a["runtime"]) for a in out}))
    return out
