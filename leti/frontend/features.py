"""Feature vectors for kernels and for whole graphs.

A kernel's features are *recomputed from its geometry* (H, C, kernel, stride, groups) rather
than taken from whatever FLOPs a data source reports, so that a measured row and a kernel derived
from ONNX produce the same numbers. The input size is estimated as `h_out * stride` because the
public data sometimes reports the padded input and sometimes not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from leti.core.records import CONV_KINDS, Kernel, KernelPlan

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


def kernels_frame(kernels: Sequence[Kernel]) -> pd.DataFrame:
    """The geometry of ONNX-derived kernels, in the same columns as measurement rows.

    `work_flops` / `work_bytes` (0 unless the kernel is priced analytically) carry the whole
    kernel's work where its geometry cannot express it (a transposed or 3-D conv, an attention
    MatMul, an LSTM): a value > 0 overrides the work the cost model derives from the geometry.
    """
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


def kernel_features(geometry: pd.DataFrame) -> np.ndarray:
    """Feature matrix (rows x KERNEL_FEATURES) from a geometry frame. Vectorised: hot path."""
    kind = geometry["kind"].to_numpy()
    h_out = geometry["h_out"].to_numpy(float).clip(min=1)
    w_out = geometry["w_out"].to_numpy(float).clip(min=1) if "w_out" in geometry else h_out
    c_in = geometry["c_in"].to_numpy(float).clip(min=1)
    c_out = geometry["c_out"].to_numpy(float).clip(min=1)
    k = geometry["kernel"].to_numpy(float).clip(min=1)
    s = geometry["stride"].to_numpy(float).clip(min=1)
    g = geometry["groups"].to_numpy(float).clip(min=1)
    h_in = geometry["h_in"].to_numpy(float).clip(min=1)

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
            over_elems += float(np.prod(shape))
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
