"""Per-kernel-class scales: the second half of a cross-runtime calibration (ncnn-vulkan).

A runtime we have no per-layer data for (ncnn-vulkan) runs the same kernels as tflite-gpu, but
at different relative costs: on the ncnn benchmark, the high-end GPUs (Adreno 740,
Immortalis-G720) run 3x3 convolutions several times cheaper relative to 1x1 convolutions than
the tflite-gpu kernel model says, and every GPU pays a per-dispatch and a per-inference cost of
its own. A single log-affine map of the total cannot express that, so the calibration also fits

    t = w_dense * T_dense + w_pointwise * T_pointwise + w_other * T_other
        + w_kernel * n_kernels * PER_KERNEL_MS + w_constant * CONSTANT_MS
        + w_standalone * standalone_bytes / STANDALONE_GBPS + w_cpu * T_int8

where the T are the base estimator's kernel times summed by class. Seven weights from k = 5
timings would be noise, so each weight's log *relative to the dense one* has a Gaussian prior
(`ClassPrior`) learned across the ncnn benchmark's other GPUs (median and spread of the
per-GPU fits); the timings mostly set the overall scale and move a weight only where they
disagree with the prior. `leti.train.calibrate` answers the geometric mean of this and the
log-affine map: on held-out models of held-out GPUs the two err on different models, and the
mean beats either (benchmarks/transfer.md).

Two more terms (format 2 of the terms, `TERMS`), both things the tflite-gpu base does not
price for ncnn:

- `standalone_bytes`: the bytes moved by the graph's standalone ops (`KernelPlan.overhead`:
  ncnn runs every BinaryOp/Eltwise, Swish, GELU, LayerNorm, Concat, Permute, ... as a layer of
  its own, one pass over memory each), in ms at a nominal `STANDALONE_GBPS`; the kernel sum
  leaves them out entirely.
- `cpu_fallback`: the base time of int8 kernels (`CPU_FALLBACK_OPS`). ncnn's Vulkan backend
  has no int8 convolution: those layers run on the CPU, at a speed set by the SoC's CPU, not
  by its GPU (on the benchmark, resnet50_int8 takes 0.6x the float graph's time on a
  Snapdragon 888 and 1.1x on an RK3566). The map of the GPU time cannot know it; a weight of
  its own, fitted on the GPU's int8 timings, can. A graph's answer leans towards the class
  model by the share of its base time in this class (`class_share`, `combine`).

Documents written with the first five terms (`LEGACY_TERMS`) keep answering as they were
fitted: `class_terms(..., n_terms=5)` classifies kernels the old way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leti.core.records import Kernel, Layer

TERMS = (
    "dense_conv",
    "pointwise_conv_fc",
    "other_kernels",
    "per_kernel",
    "constant",
    "standalone_bytes",
    "cpu_fallback",
)
#: The terms of calibrations written before `standalone_bytes` and `cpu_fallback`.
LEGACY_TERMS = TERMS[:5]
#: Columns of `class_terms` that are kernel times (the base's kernel sum split by class).
KERNEL_TIME_TERMS = (0, 1, 2, 6)
CPU_FALLBACK = TERMS.index("cpu_fallback")
#: int8 kernels: ncnn-vulkan runs them on the CPU (no Vulkan int8 convolution or matmul).
CPU_FALLBACK_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
    }
)
#: Standalone ops' bytes enter as ms at this nominal bandwidth (GB/s), so that their weight
#: starts on the scale of the others; the fitted weight carries the GPU's real speed.
STANDALONE_GBPS = 25.0
#: The per-kernel and constant terms enter in these units, so that all five weights start on
#: a comparable scale (a weight of 1 = 10 us a kernel, 1 ms an inference).
PER_KERNEL_MS = 0.01
CONSTANT_MS = 1.0
#: Floor on a prior's spread (log units): 16 GPUs cannot pin a weight tighter than this.
MIN_PRIOR_SD = 0.3
#: Prior spread of a term no GPU's timings exercise (log units): the prior then says little.
UNIDENTIFIED_PRIOR_SD = 3.0
#: Weight of the prior against the timings' squared log residuals.
PRIOR_WEIGHT = 1.0
#: A calibration's timings enter the fit through a Huber loss on their log residuals:
#: quadratic within this scale (log units: about -26%..+35%), linear beyond (`huber`).
HUBER_SCALE = 0.3


def kernel_class(kernel: Kernel, legacy: bool = False) -> int:
    """0: a dense k x k convolution, 1: a 1x1 convolution or fully-connected layer, 2: other,
    3: an int8 kernel ncnn runs on the CPU (`legacy`: never 3, as the first five terms had)."""
    if not legacy and kernel.op_type in CPU_FALLBACK_OPS:
        return 3
    if kernel.kind == "conv":
        return 0 if kernel.kernel > 1 else 1
    return 1 if kernel.kind == "fc" else 2


def class_terms(
    kernels: Sequence[Kernel],
    ms: np.ndarray,
    overhead: Sequence[Layer] = (),
    n_terms: int = len(TERMS),
) -> np.ndarray:
    """The terms of one graph from its kernels, their predicted times (ms) and its standalone
    ops (`KernelPlan.overhead`). `n_terms` = len(LEGACY_TERMS): the first five, computed as
    calibrations of that format were fitted."""
    if n_terms not in (len(LEGACY_TERMS), len(TERMS)):
        raise ValueError(f"class scales have {len(LEGACY_TERMS)} or {len(TERMS)} terms")
    legacy = n_terms == len(LEGACY_TERMS)
    ms = np.asarray(ms, float)
    cls = np.array([kernel_class(k, legacy) for k in kernels], int)
    out = [
        float(ms[cls == 0].sum()),
        float(ms[cls == 1].sum()),
        float(ms[cls == 2].sum()),
        len(kernels) * PER_KERNEL_MS,
        CONSTANT_MS,
    ]
    if legacy:
        return np.array(out)
    moved = sum(int(layer.bytes_moved) for layer in overhead)
    return np.array([*out, moved / (STANDALONE_GBPS * 1e6), float(ms[cls == 3].sum())])


def class_share(terms: np.ndarray) -> np.ndarray | float:
    """Share of a graph's base kernel time in the `cpu_fallback` class (0 for legacy terms)."""
    t = np.asarray(terms, float)
    if t.shape[-1] < len(TERMS):
        return np.zeros(t.shape[:-1]) if t.ndim > 1 else 0.0
    kernel_ms = t[..., list(KERNEL_TIME_TERMS)].sum(-1)
    return t[..., CPU_FALLBACK] / np.maximum(kernel_ms, 1e-12)


@dataclass(frozen=True)
class ClassPrior:
    """Gaussian prior on log(w_i / w_dense) for the non-dense terms (TERMS[1:])."""

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    n_groups: int  # how many GPUs it was learned from
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "terms": list(TERMS),
            "relative_to": TERMS[0],
            "mean_log": list(self.mean),
            "sd_log": list(self.sd),
            "n_groups": self.n_groups,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ClassPrior:
        if list(doc.get("terms", [])) != list(TERMS):
            raise ValueError("class prior was learned with other terms")
        mean, sd = tuple(map(float, doc["mean_log"])), tuple(map(float, doc["sd_log"]))
        if len(mean) != len(TERMS) - 1 or len(sd) != len(mean) or min(sd) <= 0:
            raise ValueError("malformed class prior")
        return cls(mean, sd, int(doc["n_groups"]), str(doc.get("source", "")))


def huber(r: np.ndarray, scale: float = HUBER_SCALE) -> np.ndarray:
    """Residuals whose squares are twice the Huber loss of `r`: `r` itself within `scale`,
    growing as the square root of |r| beyond it (so least squares on them is a Huber fit)."""
    r = np.asarray(r, float)
    a = np.abs(r)
    return np.where(a <= scale, r, np.sign(r) * np.sqrt(np.maximum(2 * scale * a - scale**2, 0)))


def fit_log_weights(
    terms: np.ndarray, measured_ms: Sequence[float], prior: ClassPrior | None = None
) -> np.ndarray:
    """Log weights minimising squared log residuals (+ the prior's penalty, if given).

    With a prior (a calibration), the timings' residuals enter through a Huber loss
    (`HUBER_SCALE`): a graph the terms cannot express (one the runtime runs on a slow path:
    the vision transformer takes 25-55x its base's share on the recent Adreno and Mali GPUs
    of the ncnn benchmark) would otherwise pull every weight towards itself, and with them
    the other graphs' answers. On the benchmark's held-out models this lifts the share within
    20% on most GPUs (benchmarks/transfer.md). The free per-GPU fits a prior is learned from
    (`learn_prior`) stay least squares."""
    from scipy.optimize import least_squares

    x = np.asarray(terms, float)
    y = np.log(np.asarray(measured_ms, float))
    n = x.shape[1]
    mean = None if prior is None else np.asarray(prior.mean)
    scale = None if prior is None else np.sqrt(PRIOR_WEIGHT) / np.asarray(prior.sd)

    def residuals(p: np.ndarray) -> np.ndarray:
        r = np.log(np.maximum(x @ np.exp(p), 1e-12)) - y
        if mean is None:
            return r
        return np.concatenate([huber(r), scale * (p[1:] - p[0] - mean)])

    p0 = np.full(n, float(np.median(y) - np.log(max(float(np.median(x.sum(1))), 1e-12))))
    if mean is not None:
        p0[1:] = p0[0] + mean
    return least_squares(residuals, p0).x


def predict(terms: np.ndarray, log_weights: Sequence[float]) -> np.ndarray:
    """The class model's time; terms beyond the weights (a legacy calibration) are ignored."""
    w = np.exp(np.asarray(log_weights, float))
    return np.asarray(terms, float)[..., : len(w)] @ w


def combine(
    log_affine_ms: np.ndarray | float,
    class_ms: np.ndarray | float,
    cpu_share: np.ndarray | float = 0.0,
) -> np.ndarray:
    """The calibrated answer: the geometric mean of the two fits, leaning towards the class
    model by the share of the base time that runs on the CPU (`class_share`): the map of the
    GPU time knows nothing of it, the class model's `cpu_fallback` weight does. With no int8
    kernels this is the plain geometric mean; an all-int8 graph gets the class model."""
    la, cm = np.maximum(log_affine_ms, 1e-12), np.maximum(class_ms, 1e-12)
    w = 0.5 + 0.5 * np.clip(np.asarray(cpu_share, float), 0.0, 1.0)
    # the plain geometric mean exactly as before where nothing runs on the CPU (bit for bit)
    leaned = np.exp((1 - w) * np.log(la) + w * np.log(cm))
    return np.where(w == 0.5, np.sqrt(la * cm), leaned)


def learn_prior(groups: Sequence[tuple[np.ndarray, np.ndarray]], source: str) -> ClassPrior:
    """Fit every group (one GPU's terms and timings) freely; the prior is the median and the
    spread (floored at MIN_PRIOR_SD) of the relative log weights across the groups whose
    timings exercise the term (a GPU without int8 timings says nothing of `cpu_fallback`);
    a term no group exercises gets mean 0 and `UNIDENTIFIED_PRIOR_SD`."""
    rel = []
    for terms, measured in groups:
        t = np.asarray(terms, float)
        p = fit_log_weights(t, measured)
        r = p[1:] - p[0]
        r[~(t[:, 1:] > 0).any(0)] = np.nan
        rel.append(r)
    if len(rel) < 2:
        raise ValueError("a class prior needs at least two groups")
    r = np.array(rel)
    seen = np.isfinite(r).sum(0)
    mean = np.where(seen > 0, np.nanmedian(np.where(seen > 0, r, 0.0), 0), 0.0)
    spread = np.where(seen > 1, np.nanstd(np.where(seen > 0, r, 0.0), 0), 0.0)
    sd = np.where(seen > 1, np.maximum(spread, MIN_PRIOR_SD), UNIDENTIFIED_PRIOR_SD)
    return ClassPrior(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in sd),
        len(rel),
        source,
    )
