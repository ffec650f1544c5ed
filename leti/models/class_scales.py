"""Per-kernel-class scales: the second half of a cross-runtime calibration (ncnn-vulkan).

A runtime we have no per-layer data for (ncnn-vulkan) runs the same kernels as tflite-gpu, but
at different relative costs: on the ncnn benchmark, the high-end GPUs (Adreno 740,
Immortalis-G720) run 3x3 convolutions several times cheaper relative to 1x1 convolutions than
the tflite-gpu kernel model says, and every GPU pays a per-dispatch and a per-inference cost of
its own. A single log-affine map of the total cannot express that, so the calibration also fits

    t = w_dense * T_dense + w_pointwise * T_pointwise + w_other * T_other
        + w_kernel * n_kernels * PER_KERNEL_MS + w_constant * CONSTANT_MS

where the T are the base estimator's kernel times summed by class. Five weights from k = 5
timings would be noise, so each weight's log *relative to the dense one* has a Gaussian prior
(`ClassPrior`) learned across the ncnn benchmark's other GPUs (median and spread of the
per-GPU fits); the timings mostly set the overall scale and move a weight only where they
disagree with the prior. `leti.train.calibrate` answers the geometric mean of this and the
log-affine map: on held-out models of held-out GPUs the two err on different models, and the
mean beats either (benchmarks/transfer.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leti.core.records import Kernel

TERMS = ("dense_conv", "pointwise_conv_fc", "other_kernels", "per_kernel", "constant")
#: The per-kernel and constant terms enter in these units, so that all five weights start on
#: a comparable scale (a weight of 1 = 10 us a kernel, 1 ms an inference).
PER_KERNEL_MS = 0.01
CONSTANT_MS = 1.0
#: Floor on a prior's spread (log units): 16 GPUs cannot pin a weight tighter than this.
MIN_PRIOR_SD = 0.3
#: Weight of the prior against the timings' squared log residuals.
PRIOR_WEIGHT = 1.0


def kernel_class(kernel: Kernel) -> int:
    """0: a dense k x k convolution, 1: a 1x1 convolution or fully-connected layer, 2: other."""
    if kernel.kind == "conv":
        return 0 if kernel.kernel > 1 else 1
    return 1 if kernel.kind == "fc" else 2


def class_terms(kernels: Sequence[Kernel], ms: np.ndarray) -> np.ndarray:
    """The five terms of one graph from its kernels and their predicted times (ms)."""
    ms = np.asarray(ms, float)
    cls = np.array([kernel_class(k) for k in kernels], int)
    return np.array(
        [
            float(ms[cls == 0].sum()),
            float(ms[cls == 1].sum()),
            float(ms[cls == 2].sum()),
            len(kernels) * PER_KERNEL_MS,
            CONSTANT_MS,
        ]
    )


@dataclass(frozen=True)
class ClassPrior:
    """Gaussian prior on log(w_i / w_dense) for the four non-dense terms."""

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


def fit_log_weights(
    terms: np.ndarray, measured_ms: Sequence[float], prior: ClassPrior | None = None
) -> np.ndarray:
    """Log weights minimising squared log residuals (+ the prior's penalty, if given)."""
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
        return np.concatenate([r, scale * (p[1:] - p[0] - mean)])

    p0 = np.full(n, float(np.median(y) - np.log(max(float(np.median(x.sum(1))), 1e-12))))
    if mean is not None:
        p0[1:] = p0[0] + mean
    return least_squares(residuals, p0).x


def predict(terms: np.ndarray, log_weights: Sequence[float]) -> np.ndarray:
    return np.asarray(terms, float) @ np.exp(np.asarray(log_weights, float))


def combine(log_affine_ms: np.ndarray | float, class_ms: np.ndarray | float) -> np.ndarray:
    """The calibrated answer: the geometric mean of the two fits."""
    return np.sqrt(np.maximum(log_affine_ms, 1e-12) * np.maximum(class_ms, 1e-12))


def learn_prior(groups: Sequence[tuple[np.ndarray, np.ndarray]], source: str) -> ClassPrior:
    """Fit every group (one GPU's terms and timings) freely; the prior is the median and the
    spread (floored at MIN_PRIOR_SD) of the relative log weights across groups."""
    rel = []
    for terms, measured in groups:
        p = fit_log_weights(terms, measured)
        rel.append(p[1:] - p[0])
    if len(rel) < 2:
        raise ValueError("a class prior needs at least two groups")
    r = np.array(rel)
    return ClassPrior(
        tuple(float(v) for v in np.median(r, 0)),
        tuple(float(v) for v in np.maximum(r.std(0), MIN_PRIOR_SD)),
        len(rel),
        source,
    )
