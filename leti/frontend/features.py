"""Feature vectors for kernels and for whole graphs.

A kernel's features are *recomputed from its geometry* (H, C, kernel, stride, groups) rather
than taken from whatever FLOPs a data source reports, so that a measured row and a kernel derived
from ONNX produce the same numbers. The input size is estimated as `h_out * stride` because the
public data sometimes reports the padded input and sometimes not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from leti.core.records import CONV_KINDS, Kernel, KernelPlan

if TYPE_CHECKING:  # pandas is for training and evaluation: the request path never imports it
    import pandas as pd

KERNEL_FEATURES = (
    "log_flops",
    "log_in",
    "log_out",
    "log_weights",
    "log_intensity",
    "h_out",
    "c_in",
    "c_out",
    "kernel",
    "stride",
    "groups",
    "cin_per_group",
    "fused_add",
    "fused_mul",
    "fused_act",
)

_ADD_TAGS = ("add", "sub")
_MUL_TAGS = ("mul", "div")


#: The numeric geometry columns of a kernel, in `KernelTable` / `kernels_frame` order.
GEOMETRY_COLUMNS = (
    "h_in", "c_in", "h_out", "w_out", "c_out", "kernel", "stride", "groups", "batch",
    "work_flops", "work_bytes",
)  # fmt: skip
_GEOMETRY = itemgetter(*(Kernel._fields.index(c) for c in GEOMETRY_COLUMNS))


class KernelTable:
    """The kernels of one or more plans as numpy columns: the numbers of `kernels_frame`, built
    straight from the records without a pandas frame (the request path prices these).

    `table[name]` is a column (float64, or the kinds as strings), `len(table)` the number of
    kernels. `kernel_features`, `KernelCosts` and the transfer model take a table or a frame
    alike; a table carries the fused-op counts (`fused_add`, `fused_mul`, `fused_act`) instead
    of the joined `fused` strings.
    """

    __slots__ = ("columns", "rows")

    def __init__(self, columns: dict[str, np.ndarray], rows: int) -> None:
        self.columns = columns
        self.rows = rows

    @classmethod
    def of(cls, kernels: Sequence[Kernel]) -> KernelTable:
        n = len(kernels)
        numbers = np.array([_GEOMETRY(k) for k in kernels], float).reshape(n, len(GEOMETRY_COLUMNS))
        fused = np.array([_fused_tags(k.fused) for k in kernels], float).reshape(n, 3)
        columns = {"kind": np.array([k.kind for k in kernels], object)}
        for i, name in enumerate(GEOMETRY_COLUMNS):
            columns[name] = numbers[:, i]
        columns["fused_add"] = fused[:, 0]
        columns["fused_mul"] = fused[:, 1]
        columns["fused_act"] = fused[:, 2]
        return cls(columns, n)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns


_FUSED: dict[tuple[str, ...], tuple[int, int, int]] = {}


def _fused_tags(fused: tuple[str, ...]) -> tuple[int, int, int]:
    """(adds, muls, other ops) linked into a kernel, counted as `_fused_counts` counts the
    joined tags of a frame (memoised: a runtime links a handful of distinct tag lists)."""
    known = _FUSED.get(fused)
    if known is None:
        a, m, act = _fused_counts(["+".join(fused)])
        known = (int(a[0]), int(m[0]), int(act[0]))
        if len(_FUSED) < 1024:
            _FUSED[fused] = known
    return known


def kernels_frame(kernels: Sequence[Kernel]) -> pd.DataFrame:
    """The geometry of ONNX-derived kernels, in the same columns as measurement rows (a pandas
    frame, for training and evaluation; `KernelTable.of` gives the same numbers without pandas).

    `work_flops` / `work_bytes` (0 unless the kernel is priced analytically) carry the whole
    kernel's work where its geometry cannot express it (a transposed or 3-D conv, an attention
    MatMul, an LSTM): a value > 0 overrides the work the cost model derives from the geometry.
    """
    import pandas as pd

    return pd.DataFrame(
        {
            "kind": [k.kind for k in kernels],
            "h_in": [k.h_in for k in kernels],
            "c_in": [k.c_in for k in kernels],
            "h_out": [k.h_out for k in kernels],
            "w_out": [k.w_out for k in kernels],
            "c_out": [k.c_out for k in kernels],
            "kernel": [k.kernel for k in kernels],
            "stride": [k.stride for k in kernels],
            "groups": [k.groups for k in kernels],
            "fused": ["+".join(k.fused) for k in kernels],
            "batch": [k.batch for k in kernels],
            "work_flops": [k.work_flops for k in kernels],
            "work_bytes": [k.work_bytes for k in kernels],
        }
    )


def _fused_counts(fused: Iterable[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    add, mul, act = [], [], []
    for f in fused:
        tags = [t for t in str(f or "").split("+") if t and t != "nan"]
        a = sum(t in _ADD_TAGS for t in tags)
        m = sum(t in _MUL_TAGS for t in tags)
        add.append(a)
        mul.append(m)
        act.append(len(tags) - a - m)
    return np.array(add, float), np.array(mul, float), np.array(act, float)


def floats(geometry: pd.DataFrame | KernelTable, name: str) -> np.ndarray:
    """A numeric column of a frame or a table as float64."""
    column: Any = geometry[name]
    return column if isinstance(column, np.ndarray) else column.to_numpy(float)


def kinds(geometry: pd.DataFrame | KernelTable) -> np.ndarray:
    """The `kind` column of a frame or a table as a numpy array."""
    column: Any = geometry["kind"]
    return column if isinstance(column, np.ndarray) else column.to_numpy()


def kernel_features(geometry: pd.DataFrame | KernelTable) -> np.ndarray:
    """Feature matrix (rows x KERNEL_FEATURES) from a geometry frame or a `KernelTable`.
    Vectorised: hot path."""
    kind = kinds(geometry)
    h_out = floats(geometry, "h_out").clip(min=1)
    w_out = floats(geometry, "w_out").clip(min=1) if "w_out" in geometry else h_out
    c_in = floats(geometry, "c_in").clip(min=1)
    c_out = floats(geometry, "c_out").clip(min=1)
    k = floats(geometry, "kernel").clip(min=1)
    s = floats(geometry, "stride").clip(min=1)
    g = floats(geometry, "groups").clip(min=1)
    h_in = floats(geometry, "h_in").clip(min=1)

    conv = np.isin(kind, CONV_KINDS)
    fc = kind == "fc"
    glob = kind == "pool_global"
    pool = np.isin(kind, ("pool_max", "pool_avg"))

    out = h_out * w_out * c_out
    cin_g = c_in / g
    in_est = (h_out * s) * (w_out * s) * c_in
    weights = np.where(conv, c_out * cin_g * k * k, np.where(fc, c_in * c_out, 0.0))
    flops = np.select(
        [conv, fc, pool, glob],
        [2 * out * cin_g * k * k, 2 * c_in * c_out, out * k * k, h_in * h_in * c_in],
        default=out,
    )
    inputs = np.select([conv | pool, fc, glob], [in_est, c_in, h_in * h_in * c_in], default=out)
    outputs = np.where(glob, c_in, np.where(fc, c_out, out))
    moved = inputs + outputs + weights
    if "fused_add" in geometry:  # a KernelTable: counted from the records
        add, mul, act = geometry["fused_add"], geometry["fused_mul"], geometry["fused_act"]
    else:
        add, mul, act = _fused_counts(geometry["fused"])
    return np.column_stack(
        [
            np.log1p(flops),
            np.log1p(inputs),
            np.log1p(outputs),
            np.log1p(weights),
            np.log1p(flops) - np.log1p(moved),
            h_out,
            c_in,
            c_out,
            k,
            s,
            g,
            cin_g,
            add,
            mul,
            act,
        ]
    )


def elements(shape: Sequence[int]) -> float:
    """`float(np.prod(shape))` without numpy's per-call cost: the same int64 product (numpy's
    wraps around past 2**63; so does this, through numpy, where it would)."""
    n = 1
    for d in shape:
        n *= d
    if not -(2**63) <= n < 2**63:
        return float(np.prod(shape))
    return float(n)


GRAPH_FEATURES = (
    "log_kernel_sum",
    "log_flops",
    "n_kernels",
    "n_overhead",
    "log_overhead_elems",
    "n_fused",
    "share_dwconv",
    "share_small",
    "n_concat",
    "n_pool",
    "log_act_elems",
)


def graph_features(plan: KernelPlan, kernel_ms: np.ndarray) -> np.ndarray:
    """One row describing a whole graph for the graph-level corrector.

    The corrector learns what the per-kernel sum misses: launch and synchronisation costs
    (`n_kernels`), standalone ops with no per-kernel data (`n_overhead`, their tensor sizes),
    and how much of the time sits in many tiny kernels (`share_small`).
    """
    kernel_ms = np.asarray(kernel_ms, float)
    total = float(kernel_ms.sum()) or 1e-6
    kinds = np.array([k.kind for k in plan.kernels])
    over_elems = 0.0
    for layer in plan.overhead:
        shape = layer.output_shapes[0] if layer.output_shapes else None
        if shape:
            over_elems += elements(shape)
    act_elems = float(sum(k.h_out * k.w_out * max(k.c_out, 1) for k in plan.kernels))
    flops = float(sum(k.flops for k in plan.kernels))
    return np.array(
        [
            np.log(total),
            np.log1p(flops),
            len(plan.kernels),
            len(plan.overhead),
            np.log1p(over_elems),
            sum(len(k.fused) for k in plan.kernels),
            float(kernel_ms[kinds == "dwconv"].sum()) / total if len(kinds) else 0.0,
            float(kernel_ms[kernel_ms < 0.05].sum()) / total if len(kinds) else 0.0,
            int((kinds == "concat").sum()),
            int(np.isin(kinds, ("pool_max", "pool_avg", "pool_global")).sum()),
            np.log1p(act_elems),
        ]
    )
