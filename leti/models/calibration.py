"""The calibration map: how a calibrated answer is computed from its base estimator's.

    log t = a + b * log t_base

and, for a cross-runtime calibration (ncnn-vulkan), the geometric mean of that map with the
per-kernel-class scale model (`leti.models.class_scales`). `leti.train.calibrate` fits it from
a user's timings and `leti.predict` applies it: both go through `log_affine` and
`CalibrationMap.apply`, so the map exists once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leti.models import class_scales

#: Interval (log quantiles) of a calibration document that predates the stored one.
DEFAULT_INTERVAL = (-0.2, 0.2)


def log_affine(base_ms: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """exp(a + b log base), with the base floored at 1e-9 ms."""
    return np.exp(a + b * np.log(np.maximum(base_ms, 1e-9)))


def with_class_scales(
    mapped_ms: np.ndarray | float, terms: np.ndarray, log_weights: Sequence[float]
) -> np.ndarray:
    """Geometric mean of the log-affine answer and the class-scale model on the same base."""
    return class_scales.combine(mapped_ms, class_scales.predict(terms, log_weights))


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted calibration as the estimator applies it (read from `calibration.json`)."""

    a: float
    b: float
    interval: tuple[float, float]  # log quantiles around the calibrated total
    class_log_weights: tuple[float, ...] | None = None  # cross-runtime calibrations only

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> CalibrationMap:
        lo, hi = doc.get("interval_log_quantiles", DEFAULT_INTERVAL)
        scales = doc.get("class_scales")
        return cls(
            a=float(doc["a"]),
            b=float(doc["b"]),
            interval=(float(lo), float(hi)),
            class_log_weights=tuple(scales["log_weights"]) if scales else None,
        )

    def apply(self, base_ms: np.ndarray | float, terms: np.ndarray | None = None) -> np.ndarray:
        """The calibrated total from the base's total (and, cross-runtime, its class terms)."""
        mapped = log_affine(base_ms, self.a, self.b)
        if self.class_log_weights is None:
            return mapped
        return with_class_scales(mapped, terms, self.class_log_weights)
