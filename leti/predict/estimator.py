"""`Estimator`: the trained models of one (SoC, runtime), predicting end-to-end latency.

Prediction runs the pipeline in one direction: graph -> kernels -> per-kernel times -> sum ->
graph-level correction -> calibration. Which models answer is `leti.predict.registry`'s choice;
`Estimator.load` asks it and builds itself from the answer. An Estimator is immutable after
`load` (its answer cache is the one thing that changes, behind a lock), so one instance can
serve many threads.

The request path imports neither pandas nor scikit-learn nor xgboost's Python package: kernels
are priced from numpy columns (`KernelTable`) by boosters loaded through libxgboost
(`leti.models.boosters`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from leti.core import socs
from leti.core.errors import LetiError
from leti.core.records import Graph, KernelPlan, Layer, LayerTime, Prediction, Unsupported
from leti.frontend.features import KernelTable, elements
from leti.frontend.fusion import QUANTIZED_OPS
from leti.frontend.fusion import plan as plan_kernels
from leti.frontend.graph import GraphBytes, max_graph_layers, parse_graph, read_graph
from leti.models import class_scales
from leti.models.calibration import CalibrationMap
from leti.models.kernel_cost import KernelCosts
from leti.models.overhead import load_graph_stage
from leti.models.regressors import (
    GraphCorrection,
    GraphCorrector,
    KernelRegressors,
    KernelTimeModel,
    NoGraphCorrection,
    graph_rows,
    kernel_batch,
    predict_kernel_ms,
    split_by_plan,
    stage_totals,
)
from leti.models.transfer import TransferModel
from leti.models.uncertainty import widening
from leti.predict import collector, registry
from leti.predict.cache import AnswerCache, shapes_key
from leti.predict.registry import KERNEL_SUM_TOTAL, BaseChoice, ModelChoice, Total

log = logging.getLogger(__name__)

GraphSource = str | os.PathLike[str] | bytes | onnx.ModelProto
OVERHEAD_LAYER = "(graph overhead)"
DEFAULT_LOG_INTERVAL = (-0.2, 0.2)

__all__ = ["Estimator", "GraphSource", "OVERHEAD_LAYER", "uncalibrated_base"]


@dataclass(frozen=True)
class Estimator:
    soc: str
    runtime: str
    model_version: str
    provenance: str
    kernels: KernelTimeModel
    corrector: GraphCorrection
    manifest: Mapping
    log_interval: tuple[float, float] = DEFAULT_LOG_INTERVAL
    calibration: CalibrationMap | None = None
    #: What every answer must say about where its calibration's timings come from (a public
    #: benchmark's section, a GPU that stands in for this SoC's, borrowed timings).
    source_notes: tuple[str, ...] = ()
    #: Answers already given, by graph bytes and options (`leti.predict.cache`): each
    #: estimator, a `replace`d one included, starts with an empty cache of its own.
    answers: AnswerCache = field(init=False, repr=False, compare=False)

    #: How `Estimator.load` built it (its arguments), so that a worker process can load the same
    #: models (`leti.predict.workers`); None for an estimator built any other way, a `replace`d
    #: one included (init=False: `replace` does not carry it over).
    origin: dict[str, Any] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", AnswerCache())
        object.__setattr__(self, "origin", None)

    @classmethod
    def load(
        cls,
        soc: str,
        runtime: str | None = None,
        models_dir: str | os.PathLike[str] | None = None,
    ) -> Estimator:
        """The estimator for `soc` (an id or alias); runtime defaults to tflite-gpu. Raises
        `ModelNotFoundError` when no model can answer (see `leti.predict.registry`)."""
        est = cls.from_choice(registry.choose(soc, runtime, models_dir))
        folder = None if models_dir is None else str(Path(models_dir).resolve())
        object.__setattr__(est, "origin", {"soc": soc, "runtime": runtime, "models_dir": folder})
        return est

    @classmethod
    def from_choice(cls, choice: ModelChoice) -> Estimator:
        """Build what the registry chose: the base, then its saved calibration."""
        soc = socs.registry(choice.models_dir).resolve(choice.soc)
        est = _build_base(soc, choice.runtime, choice.base)
        return est if choice.calibration is None else _with_calibration(est, choice.calibration)

    # -- the pipeline ------------------------------------------------------------------------
    def plan(
        self, source: GraphSource | Graph, input_shapes=None, *, max_layers: int | None = None
    ) -> KernelPlan:
        """The graph's kernels under this runtime's fusion rules. `max_layers` overrides the
        front end's node limit (`LETI_MAX_LAYERS`), e.g. a server's own configuration."""
        return plan_kernels(_graph(source, input_shapes, max_layers), self.runtime)

    def predict(
        self, source: GraphSource | Graph, input_shapes=None, *, max_layers: int | None = None
    ) -> Prediction:
        """End-to-end latency of one graph; raises a LetiError subclass on bad input.

        An answer given before for the same bytes and options comes from the answer cache."""
        if isinstance(source, Graph):
            return self.predict_plan(plan_kernels(source, self.runtime), source)
        read = read_graph(source)
        key = self._cache_key(read, input_shapes, max_layers)
        answer = self.answers.get(key)
        if answer is None:
            with collector.paused():
                graph = parse_graph(read, input_shapes, max_layers=max_layers)
                answer = self.predict_plan(plan_kernels(graph, self.runtime), graph)
            self.answers.put(key, answer)
        return answer

    def warm_up(self) -> Estimator:
        """Build now what the first predictions would (the boosters' numpy trees): a server
        does it before it forks its workers, which then share them. Returns self."""
        for part in (self.kernels, getattr(self.kernels, "model", None), self.corrector):
            for thing in (part, getattr(part, "booster", None)):
                prepare = getattr(thing, "prepare", None)
                if callable(prepare):
                    prepare()
        return self

    def _cache_key(
        self, read: GraphBytes, input_shapes: Any, max_layers: int | None
    ) -> Hashable | None:
        """What an answer depends on besides this estimator's models (None: do not cache)."""
        shapes = shapes_key(input_shapes)
        if shapes is None or not self.answers.max_bytes:
            return None
        limit = max_graph_layers(max_layers)
        return (read.sha256, self.soc, self.runtime, self.model_version, shapes, limit)

    def predict_plan(self, plan: KernelPlan, graph: Graph | None = None) -> Prediction:
        """The prediction of a plan; `graph`, the one the plan was made from, gives each line
        of the breakdown its node names' shapes and FLOPs (without it they are left empty)."""
        return self._predict_plans([plan], [graph])[0]

    def kernel_ms(self, plan: KernelPlan) -> np.ndarray:
        """Predicted time of each kernel of `plan`, before any graph-level correction."""
        return predict_kernel_ms(self.kernels, [plan])[0]

    def _predict_plans(
        self, plans: Sequence[KernelPlan], graphs: Sequence[Graph | None] | None = None
    ) -> list[Prediction]:
        """Batched: one regressor call per kernel kind for all graphs. `graphs` (one per plan,
        or None) are what the breakdown reads shapes from.

        Every number is the one a batch of one gives: the kernel rows are priced row by row
        (trees and elementwise numpy), and a linear graph stage, whose matrix product may sum
        in another order for several rows, takes one graph at a time."""
        table, rows = kernel_batch(plans)
        ms, distance = _price(self.kernels, table, sum(rows))
        split = split_by_plan(ms, rows)
        distances = split_by_plan(distance, rows)
        x = graph_rows(plans, split)
        sums = np.array([float(ms.sum()) for ms in split])
        if isinstance(self.corrector, GraphCorrector) or len(plans) == 1:
            totals = stage_totals(x, sums, self.corrector)
        else:
            totals = np.concatenate(
                [stage_totals(x[i : i + 1], sums[i : i + 1], self.corrector) for i in range(len(x))]
            )
        sizes = np.zeros(len(plans))
        extrapolation = getattr(self.corrector, "size_extrapolation", None)
        if extrapolation is not None:  # a graph stage that knows its training sizes
            sizes = extrapolation(x)
        graphs = [None] * len(plans) if graphs is None else graphs
        return [
            self._assemble(p, ms, float(t), d, float(s), g)
            for p, ms, t, d, s, g in zip(
                plans, split, totals, distances, sizes, graphs, strict=True
            )
        ]

    def _unmeasured_ms(self, plan: KernelPlan, layers: Sequence[LayerTime]) -> float:
        """The time priced without measurements of its op family: kernels with a borrowed
        efficiency, and standalone ops of types no training graph had (the others' terms were
        fitted on end-to-end timings of graphs that contained them)."""
        seen = set(getattr(self.corrector, "seen_ops", ()))
        unseen = {la.name for la in plan.overhead if la.op_type not in seen}
        return sum(
            lt.ms
            for lt in layers
            if lt.ms > 0
            and lt.priced == "analytic"
            and (lt.kernel != "standalone" or lt.name in unseen)
        )

    def _assemble(
        self,
        plan: KernelPlan,
        ms: np.ndarray,
        total: float,
        distance: np.ndarray,
        size: float,
        graph: Graph | None = None,
    ) -> Prediction:
        kernel_sum = float(ms.sum())
        lo, hi = self.log_interval
        beyond: tuple[str, ...] = ()
        above = 0.0
        if self.calibration is not None:
            above = self.calibration.distance_above(total)
            if above > 0:
                top = self.calibration.base_max_ms
                beyond = (
                    f"this graph's base ({total:.3g} ms) is {total / top:.1f}x the largest "
                    f"base the calibration timed ({top:.3g} ms): above it the calibrated "
                    "answer grows in proportion to the base (an extrapolation), and its "
                    "interval widens with the distance",
                )
            terms = None
            if self.calibration.class_log_weights is not None:
                terms = class_scales.class_terms(
                    plan.kernels, ms, plan.overhead, len(self.calibration.class_log_weights)
                )
            total = float(self.calibration.apply(total, terms))
            lo, hi = self.calibration.interval
        layers = self._breakdown(plan, ms, total, graph)
        wide = widening(ms, distance, self._unmeasured_ms(plan, layers), total, size, above)
        lo, hi = lo - wide.log_units, hi + wide.log_units
        unsupported = _group_unsupported(plan)
        return Prediction(
            soc=self.soc,
            runtime=self.runtime,
            total_ms=total,
            interval_ms=(total * float(np.exp(lo)), total * float(np.exp(hi))),
            layers=layers,
            unsupported=unsupported,
            model_version=self.model_version,
            provenance=self.provenance,
            kernel_sum_ms=kernel_sum,
            notes=self._notes(plan, unsupported, wide.reasons) + beyond,
        )

    def _breakdown(
        self, plan: KernelPlan, ms: np.ndarray, total: float, graph: Graph | None = None
    ) -> tuple[LayerTime, ...]:
        """Kernels with their own times; under a structural stage each standalone op with its
        own terms; then the graph-level rest (launches, per inference, a calibration's share),
        so that the lines add up to the total. Each line names the model's nodes it covers,
        with their activation shapes and FLOPs (read from `graph` when given) and its share."""
        nodes = _Nodes(graph)
        lines = nodes.lines
        layers = []
        for k, t in zip(plan.kernels, ms.tolist(), strict=True):  # tolist: Python floats
            names, ins, outs, flops = lines(k.layers, k.flops)
            label = "+".join((k.kind, *k.fused)) if k.fused else k.kind
            share = t / total if total else 0.0
            layers.append(
                LayerTime(k.name, k.op_type, label, t, k.priced, names, ins, outs, flops, share)
            )
        standalone = np.zeros(0)
        if plan.overhead and self._prices_standalone_ops:
            standalone = self.corrector.standalone_ms(
                [_output_elements(la) for la in plan.overhead]
            )
            layers += [
                LayerTime(
                    la.name,
                    la.op_type,
                    "standalone",
                    float(t),
                    "analytic",
                    *nodes.lines((la.name,), la.flops, la),
                    share=_share(float(t), total),
                )
                for la, t in zip(plan.overhead, standalone, strict=True)
            ]
        rest = total - float(ms.sum()) - float(standalone.sum())
        if plan.overhead or abs(rest) > 1e-12:
            layers.append(
                LayerTime(
                    OVERHEAD_LAYER, "overhead", "graph", rest, "graph", share=_share(rest, total)
                )
            )
        return tuple(layers)

    @property
    def _prices_standalone_ops(self) -> bool:
        """Whether the graph stage prices each standalone op on its own (a structural stage
        does; a free-form corrector covers them in the graph-level rest)."""
        return callable(getattr(self.corrector, "standalone_ms", None))

    def _notes(
        self, plan: KernelPlan, unsupported: Sequence[Unsupported], widened: Sequence[str]
    ) -> tuple[str, ...]:
        """What a reader must know about where the numbers come from."""
        notes = []
        if unsupported:
            n = sum(u.count for u in unsupported)
            ops = ", ".join(u.op for u in unsupported)
            notes.append(f"total_ms excludes {n} unsupported layer(s) ({ops}): no latency model")
        if plan.overhead and self._prices_standalone_ops:
            notes.append(
                f"{len(plan.overhead)} standalone layer(s) have no per-kernel measurements: "
                "each is priced analytically by the graph stage (a cost per op and per element)"
            )
        elif plan.overhead:
            notes.append(
                f"{len(plan.overhead)} standalone layer(s) without per-kernel data are not priced "
                "one by one: the graph-level correction (corrector or calibration) covers them in "
                "the overhead entry"
            )
        borrowed = sorted({k.op_type for k in plan.kernels if k.priced == "analytic"})
        if borrowed:
            notes.append(
                f"{', '.join(borrowed)}: no per-kernel measurements of these op families; "
                "priced by their FLOPs and bytes with the efficiency of the nearest measured family"
            )
        ops = {k.op_type for k in plan.kernels} | {la.op_type for la in plan.overhead}
        quantized = sorted(ops & QUANTIZED_OPS)
        if quantized and self.runtime == "ncnn-vulkan":
            notes.append(
                f"quantized ops ({', '.join(quantized)}): ncnn's Vulkan backend has no int8 "
                "path and runs these layers on the CPU; leti prices them as the float GPU "
                "kernels (analytically), so this total is indicative only: the public ncnn "
                "timings put int8 graphs at 0.06-26x their float twins, depending on the CPU"
            )
        elif quantized:
            notes.append(
                f"quantized ops ({', '.join(quantized)}) are priced as the float graph a mobile "
                "GPU delegate runs: TFLite's GPU delegate dequantizes them"
            )
        if widened:
            notes.append("interval widened: " + "; ".join(widened))
        notes.extend(self.source_notes)
        return tuple(notes)

    def predict_many(
        self,
        sources: Sequence[GraphSource | Graph],
        input_shapes=None,
        *,
        max_layers: int | None = None,
        workers: int = 1,
    ) -> list[Prediction | LetiError]:
        """One result per graph, in order; a bad graph yields its error, not an exception.

        The regressors run once for the whole batch, which is what makes NAS-sized batches fast.
        `workers` > 1 splits the batch across that many processes, this one and `workers` - 1
        worker processes (`leti.predict.workers`: fresh interpreters that load the same saved
        models, kept for later calls); 0 means one per core. A batch of parsed `Graph`s, or an
        estimator not built by `load`, is priced in this process. Answers in the cache are not
        priced again, and the others join it.
        """
        out: list[Any] = [None] * len(sources)
        todo: list[tuple[int, Any, Hashable | None]] = []  # (index, source, cache key)
        again: list[tuple[int, Hashable]] = []  # a graph met earlier in this batch
        pending: set[Hashable] = set()
        for i, src in enumerate(sources):
            if isinstance(src, Graph):
                todo.append((i, src, None))
                continue
            try:
                read = read_graph(src)
            except LetiError as exc:
                out[i] = exc
                continue
            key = self._cache_key(read, input_shapes, max_layers)
            if key is not None and key in pending:
                again.append((i, key))
                continue
            hit = self.answers.get(key)
            if hit is not None:
                out[i] = hit
            else:
                todo.append((i, read, key))
                if key is not None:
                    pending.add(key)
        if not todo:
            return out
        if workers == 0:
            from leti.predict.workers import default_workers

            workers = default_workers()
        answers = None
        if workers > 1 and len(todo) > 1 and not any(isinstance(s, Graph) for _, s, _ in todo):
            from leti.predict.workers import predict_in_workers

            sent = [s for _, s, _ in todo]
            answers = predict_in_workers(self, sent, input_shapes, max_layers, workers)
        if answers is None:  # one process, or workers cannot load this estimator
            answers = self._predict_sources([s for _, s, _ in todo], input_shapes, max_layers)
        first = {}
        for (i, _, key), answer in zip(todo, answers, strict=True):
            out[i] = answer
            first[key] = answer
            if not isinstance(answer, BaseException):
                self.answers.put(key, answer)
        for i, key in again:
            out[i] = first[key]
        return out

    def _predict_sources(
        self, sources: Sequence[GraphBytes | Graph], input_shapes, max_layers: int | None
    ) -> list[Prediction | LetiError]:
        """Parse and plan each graph, then price all of them together (the collector paused:
        `leti.predict.collector`)."""
        with collector.paused():
            return self._price_sources(sources, input_shapes, max_layers)

    def _price_sources(
        self, sources: Sequence[GraphBytes | Graph], input_shapes, max_layers: int | None
    ) -> list[Prediction | LetiError]:
        out: list[Any] = [None] * len(sources)
        todo: list[tuple[int, KernelPlan, Graph]] = []
        for i, src in enumerate(sources):
            try:
                graph = (
                    src
                    if isinstance(src, Graph)
                    else parse_graph(src, input_shapes, max_layers=max_layers)
                )
                todo.append((i, plan_kernels(graph, self.runtime), graph))
            except LetiError as exc:
                out[i] = exc
        if todo:
            preds = self._predict_plans([p for _, p, _ in todo], [g for _, _, g in todo])
            for (i, _, _), pred in zip(todo, preds, strict=True):
                out[i] = pred
        return out


def _graph(source: GraphSource | Graph, input_shapes, max_layers: int | None) -> Graph:
    if isinstance(source, Graph):
        return source
    return parse_graph(source, input_shapes, max_layers=max_layers)


def _share(ms: float, total: float) -> float:
    return ms / total if total else 0.0


_CONSTANT_OPS = frozenset({"Constant", "Shape", "ConstantOfShape", "Size"})


class _Nodes:
    """A graph's nodes by name, and which tensors are constants (weights, shapes, tensors
    computed from constants only), for the breakdown: a line's inputs are the activations its
    nodes read from outside the line."""

    def __init__(self, graph: Graph | None) -> None:
        self.by_name: dict[str, Layer] = {}
        self.const: set[str] = set()
        if graph is None:
            return
        self.by_name = {la.name: la for la in graph.layers}
        const = set(graph.initializers)
        for la in graph.layers:
            if la.op_type in _CONSTANT_OPS:
                const.update(la.outputs)
                continue
            for t in la.inputs:
                if t and t not in const:
                    break
            else:  # no activation input
                const.update(la.outputs)
        self.const = const

    def lines(
        self, names: Sequence[str], flops: int, layer: Layer | None = None
    ) -> tuple[tuple[str, ...], tuple, tuple, int]:
        """(node names, input shapes, output shapes, FLOPs) of the nodes `names`; `flops` and
        empty shapes where the graph is unknown."""
        if len(names) == 1 and names[0] in self.by_name:  # most lines: one node
            la = self.by_name[names[0]]
            const = self.const
            pairs = zip(la.inputs, la.input_shapes, strict=False)
            ins = tuple({t: shape for t, shape in pairs if t and t not in const}.values())
            return (la.name,), ins, la.output_shapes, la.flops
        covered = [self.by_name[n] for n in names if n in self.by_name]
        if not covered and layer is not None:
            covered = [layer]
        if not covered:
            return tuple(names), (), (), int(flops)
        if len(covered) == 1:  # most lines: no tensor produced inside the line
            la = covered[0]
            pairs = zip(la.inputs, la.input_shapes, strict=False)
            ins = tuple({t: shape for t, shape in pairs if t and t not in self.const}.values())
            return (la.name,), ins, la.output_shapes, la.flops
        produced: set[str] = set()
        flops_sum = 0
        for la in covered:
            produced.update(la.outputs)
            flops_sum += la.flops
        const = self.const
        inputs = []
        for la in covered:
            for t, shape in zip(la.inputs, la.input_shapes, strict=False):
                if t and t not in produced and t not in const:
                    produced.add(t)  # listed once
                    inputs.append(shape)
        return (
            tuple(la.name for la in covered),
            tuple(inputs),
            tuple(covered[-1].output_shapes),
            int(flops_sum),
        )


def _output_elements(layer: Layer) -> float:
    shape = layer.output_shapes[0] if layer.output_shapes else None
    return elements(shape) if shape else 0.0


def _price(
    kernels: KernelTimeModel, table: KernelTable | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ms, distance past the training range) per kernel row: one feature matrix for both where
    the model can (`KernelCosts.price`); distance 0 for kernel models that do not know their
    range (the transfer model, whose interval is wide anyway; trees on time)."""
    if table is None:
        return np.zeros(0), np.zeros(n)
    price = getattr(kernels, "price", None)
    if price is not None:
        return price(table)
    measure = getattr(kernels, "extrapolation", None)
    return kernels.predict(table), (np.zeros(n) if measure is None else measure(table))


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


# --------------------------------------------------------------------------------------------
# Building what the registry chose


@cache
def _transfer_model(manifest_path: str, mtime_ns: int) -> TransferModel:
    """A transfer model is shared by every SoC it answers for: load it once per file version."""
    return TransferModel.load(Path(manifest_path).parent)


def _load_transfer(folder: Path) -> TransferModel:
    path = (folder / registry.TRANSFER_MANIFEST).resolve()
    return _transfer_model(str(path), path.stat().st_mtime_ns)


def _build_base(soc: socs.Soc, runtime: str, base: BaseChoice) -> Estimator:
    """The uncalibrated estimator `base` describes, answering for `soc` on `runtime`."""
    if base.source == "measured":
        manifest = json.loads((base.folder / registry.MEASURED_MANIFEST).read_text("utf-8"))
        est = Estimator(
            soc=soc.id,
            runtime=runtime,
            model_version=manifest["model_version"],
            provenance="measured",
            kernels=_load_kernel_model(base.folder, manifest["kernel_files"]),
            corrector=load_graph_stage(base.folder / manifest["corrector_file"]),
            manifest=manifest,
            log_interval=tuple(manifest.get("interval_log_quantiles", DEFAULT_LOG_INTERVAL)),
        )
    else:
        model = _load_transfer(base.folder)
        manifest = model.manifest
        version = manifest["model_version"]
        if base.profile:
            manifest = {**manifest, "profile": base.profile}
            version = f"{version}@{base.profile}"
        est = Estimator(
            soc=soc.id,
            runtime=runtime,
            model_version=version,
            provenance="transfer",
            kernels=model.kernels.bind(
                soc if base.hardware == soc.id else socs.resolve(base.hardware)
            ),
            corrector=model.corrector,
            manifest=manifest,
            log_interval=tuple(manifest["interval_log_quantiles"]),
        )
    if base.total == KERNEL_SUM_TOTAL:
        est = replace(est, corrector=NoGraphCorrection())
    return est


def _load_kernel_model(folder: Path, files: Mapping[str, str]) -> KernelTimeModel:
    """Analytic cost x efficiency (models fitted since issue 9), else per-kind trees on time."""
    if "_cost" in files:
        return KernelCosts.load(folder, files)
    return KernelRegressors.load(folder, files)


def uncalibrated_base(
    soc: socs.Soc,
    runtime: str,
    models_dir: Path | None,
    profile: str | None = None,
    total: Total | None = None,
) -> Estimator | None:
    """The estimator a calibration of (soc, runtime) sits on, without any saved calibration,
    or None when none can answer (`registry.base_choice` says which model and how)."""
    base = registry.base_choice(soc, runtime, models_dir, profile=profile, total=total)
    return None if base is None else _build_base(soc, runtime, base)


def _with_calibration(est: Estimator, doc: Mapping) -> Estimator:
    """`est` (the uncalibrated base) answering as calibrated by `doc`."""
    if doc["base"]["model_version"] != est.model_version:
        log.warning(
            "calibration for %s/%s was fitted on %s but the base is now %s: re-run "
            "`leti calibrate` to refit it",
            doc["soc"],
            doc["runtime"],
            doc["base"]["model_version"],
            est.model_version,
        )
    summary = {
        "k": doc["k"],
        "a": doc["a"],
        "b": doc["b"],
        "base_range_ms": doc.get("base_range_ms"),
        "timings_sha256": doc["timings_sha256"],
        "base": doc["base"],
        "class_scales": bool(doc.get("class_scales")),
        "form": doc.get("form", "log_affine"),
        "offset_map": doc.get("offset_map"),
        "created": doc.get("created"),
        "source": doc.get("source"),
    }
    source = doc.get("source") or {}
    notes = [str(n) for n in source.get("notes", ()) if n]
    why = (doc.get("base_selection") or {}).get("why")
    if why:
        notes.append(f"calibrated on {doc['k']} timings; base: {why}")
    return replace(
        est,
        runtime=doc["runtime"],
        # a map borrowed from other GPUs' timings is not a calibration on this SoC
        provenance=str(doc.get("provenance") or "calibrated"),
        model_version=doc["model_version"],
        calibration=CalibrationMap.from_document(doc),
        manifest={**dict(est.manifest), "calibration": summary},
        source_notes=tuple(notes),
    )
