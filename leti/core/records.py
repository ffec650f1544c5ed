"""The records that flow between stages: graph -> kernels -> features -> regressors -> prediction.

They live in one module so that the whole pipeline's vocabulary can be read in one place.
All are immutable: a stage never edits what an earlier stage produced. The records made once per
node, kernel or breakdown line (`Layer`, `Kernel`, `LayerTime`) are named tuples: a NAS loop makes
hundreds of thousands of them, and a tuple is built in a fifth of the time of a frozen dataclass
(which sets each field through `object.__setattr__`). The others are frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

Shape = tuple[int, ...]

# The kernel kinds a regressor prices: the one vocabulary of `Kernel.kind`.
# Order matters: the pooled model encodes a kind as its index here; append, never reorder.
KERNEL_KINDS: tuple[str, ...] = (
    "conv", "dwconv", "gconv", "fc", "pool_max", "pool_avg", "pool_global", "concat",
    "add", "mul", "act", "bn",
)  # fmt: skip
# The convolution kinds (plain, depthwise, grouped): a folded op (BatchNorm) joins only these.
CONV_KINDS: tuple[str, ...] = ("conv", "dwconv", "gconv")
# The kinds whose time is mostly arithmetic rather than memory traffic (dense convs, FC).
COMPUTE_KINDS: tuple[str, ...] = ("conv", "gconv", "fc")


class Layer(NamedTuple):
    """One ONNX node after shape inference.

    Shapes are concrete (no symbolic dims survive the front end). Spatial attributes are
    normalised to 2-D tuples for conv/pool nodes and left empty for others. `flops` counts
    multiply and add separately (2 x MACs), matching the FLOPS column of the public data.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_shapes: tuple[Shape | None, ...]
    output_shapes: tuple[Shape | None, ...]
    kernel_shape: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # ONNX order: begin_h, begin_w, end_h, end_w
    dilations: tuple[int, ...] = ()
    group: int = 1
    flops: int = 0
    params: int = 0
    bytes_moved: int = 0  # activations read + written + weights, at 4 bytes an element
    attrs: tuple[tuple[str, Any], ...] = ()  # other scalar attributes, e.g. ("axis", 1)

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


@dataclass(frozen=True)
class Graph:
    """A parsed model: its layers in topological order and where tensors come from.

    A node computed from constants only (a `Constant`, the `ConstantOfShape` that builds a
    light model's weight, a `Transpose` of a weight) is no layer: a runtime folds it when it
    converts the model, so its outputs are listed with the initializers instead."""

    name: str
    layers: tuple[Layer, ...]
    inputs: tuple[tuple[str, Shape], ...]
    outputs: tuple[str, ...]
    # names of weight tensors (not activations): initializers and constant-only nodes' outputs
    initializers: frozenset[str]
    sha256: str = ""


class Kernel(NamedTuple):
    """What the runtime launches: one main layer plus the layers folded or linked into it.

    `kind` selects the regressor: one of `KERNEL_KINDS` (conv, dwconv, gconv, fc, pool_max,
    pool_avg, pool_global, concat, and for runtimes that measure them add, mul, act, bn). The
    geometric fields are the ones the public measurements also carry, so that a measured row
    and an ONNX-derived kernel produce the same features.
    """

    name: str
    kind: str
    op_type: str  # ONNX op type of the main layer
    layers: tuple[str, ...]  # names of every ONNX layer this kernel covers
    h_in: int = 1
    w_in: int = 1
    c_in: int = 0
    h_out: int = 1
    w_out: int = 1
    c_out: int = 0
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    pad: int = 0  # total padding along H (begin + end)
    flops: int = 0
    params: int = 0
    bytes_moved: int = 0
    n_inputs: int = 1
    fused: tuple[str, ...] = ()  # e.g. ("add", "relu")
    # Independent copies of the geometry this kernel computes: the batch of a conv or pool,
    # the rows of a fully-connected layer (a MatMul over 197 tokens has 197). The geometry
    # above is one copy's; the cost model multiplies the work by it.
    batch: int = 1
    # The whole kernel's work (batch included) where the geometry above cannot express it: a
    # transposed or 3-D conv, a MatMul of two activations, an LSTM, an Einsum, an attention op.
    # FLOPs count 2 x MACs; bytes are elements x 4, as in `Layer.bytes_moved`. 0 means "derive
    # the work from the geometry" (every measured kernel family: the efficiency was learned so).
    work_flops: int = 0
    work_bytes: int = 0
    # "measured": a family with per-kernel measurements, priced with its own learned efficiency.
    # "analytic": no measurements of this op family; priced by the analytic part with the
    # efficiency of `kind`, the measured family it is mapped to (the answer must say so).
    priced: str = "measured"


@dataclass(frozen=True)
class KernelPlan:
    """A graph split into kernels, plus what the runtime does not launch as a modelled kernel."""

    graph: str
    runtime: str
    kernels: tuple[Kernel, ...]
    overhead: tuple[
        Layer, ...
    ]  # standalone ops without a per-kernel model: the corrector covers them
    free: tuple[Layer, ...]  # shape-only ops the runtime does not launch (Reshape, Flatten, ...)
    unsupported: tuple[Layer, ...]  # op types no rule knows: reported, never counted as 0 ms


class LayerTime(NamedTuple):
    """One line of the per-layer breakdown. `priced` says where its number comes from:
    "measured" (a kernel family with per-kernel measurements: analytic cost x the efficiency
    learned from them), "analytic" (no measurements of this op family: its FLOPs and bytes with
    a borrowed efficiency, or a standalone op's structural terms) or "graph" (the graph-level
    terms fitted on end-to-end timings: launches, per inference, a calibration's share).

    `layers` are the model's own node names the line covers (the ONNX nodes or ncnn layers a
    kernel fused, in graph order); `input_shapes` are the shapes of its activation inputs and
    `output_shapes` those of what it writes; `flops` counts 2 x MACs over every covered node;
    `share` is `ms` over the prediction's total. Shapes are empty when unknown (a line priced
    from a bare `KernelPlan`, or the graph-level rest)."""

    name: str
    op: str
    kernel: str
    ms: float
    priced: str = "measured"
    layers: tuple[str, ...] = ()
    input_shapes: tuple[Shape | None, ...] = ()
    output_shapes: tuple[Shape | None, ...] = ()
    flops: int = 0
    share: float = 0.0


@dataclass(frozen=True)
class Unsupported:
    op: str
    count: int
    names: tuple[str, ...]


@dataclass(frozen=True)
class Prediction:
    """The one answer format: `leti predict --json` and the service print `to_dict()`."""

    soc: str
    runtime: str
    total_ms: float
    interval_ms: tuple[float, float]
    layers: tuple[LayerTime, ...]
    unsupported: tuple[Unsupported, ...]
    model_version: str
    provenance: str  # measured | transfer | calibrated
    kernel_sum_ms: float = 0.0
    notes: tuple[str, ...] = field(default=())

    def to_dict(self, layers: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "soc": self.soc,
            "runtime": self.runtime,
            "total_ms": round(self.total_ms, 4),
            "interval_ms": [round(self.interval_ms[0], 4), round(self.interval_ms[1], 4)],
            "kernel_sum_ms": round(self.kernel_sum_ms, 4),
            "unsupported": [
                {"op": u.op, "count": u.count, "names": list(u.names)} for u in self.unsupported
            ],
            "model_version": self.model_version,
            "provenance": self.provenance,
            "notes": list(self.notes),
        }
        if layers:
            doc["layers"] = [_layer_dict(lt) for lt in self.layers]
        return doc


def _layer_dict(lt: LayerTime) -> dict[str, Any]:
    """A breakdown line as JSON: tuples become lists, unknown shapes null."""
    return {
        **lt._asdict(),
        "ms": round(lt.ms, 4),
        "share": round(lt.share, 6),
        "layers": list(lt.layers),
        "input_shapes": [None if s is None else list(s) for s in lt.input_shapes],
        "output_shapes": [None if s is None else list(s) for s in lt.output_shapes],
    }
