"""The calibration map: how a calibrated answer is computed from its base estimator's.

One of two forms, chosen per calibration by `leti.train.calibrate` (document key `form`):

    log_affine:  log t = a + b * log t_base   (t proportional to t_base above the timed range)
    offset:      t = max(s * t_base + c, OFFSET_FLOOR * s * t_base)

and, for a cross-runtime calibration (ncnn-vulkan), the geometric mean of that map with the
per-kernel-class scale model (`leti.models.class_scales`). The offset form expresses a setup
that differs from the base by a fixed per-inference overhead (c > 0) as well as a speed
(s); c may be negative, down to -(1 - OFFSET_FLOOR) * s * the smallest timed base, and the
floor keeps every answer positive (on the timed graphs and above it is never active).
`leti.train.calibrate` fits it from a user's timings and `leti.predict` applies it: both go
through `log_affine`, `offset_affine` and `CalibrationMap.apply`, so the map exists once.

Documents written before the offset form lack `form` and load as log-affine; `a` and `b` always
hold the log-affine fit on the calibration's base, so a reader that does not know a form
answers with the log-affine map.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leti.models import class_scales, uncertainty

log = logging.getLogger(__name__)

#: Interval (log quantiles) of a calibration document that predates the stored one.
DEFAULT_INTERVAL = (-0.2, 0.2)
LOG_AFFINE = "log_affine"
OFFSET = "offset"
FORMS = (LOG_AFFINE, OFFSET)
#: The offset form answers at least this share of its scaled base, s * t_base. The fit bounds
#: a negative offset to c >= -(1 - OFFSET_FLOOR) * s * (smallest timed base), so the floor
#: only acts on graphs smaller than every timed one: an offset measured on them may take away
#: at most half of a graph's scaled cost, never all of it.
OFFSET_FLOOR = 0.5


def log_affine(
    base_ms: np.ndarray | float, a: float, b: float, base_max_ms: float | None = None
) -> np.ndarray:
    """exp(a + b log base), with the base floored at 1e-9 ms. Above `base_max_ms` (the largest
    base the map was fitted on, if known) the answer grows in proportion to the base from
    there: a slope b < 1 is what the timings showed over their range (a fixed cost that a
    small graph's time is mostly made of), not a licence for a graph ten times the largest
    timed one to cost less than ten times as much."""
    base = np.maximum(base_ms, 1e-9)
    if base_max_ms is None:
        return np.exp(a + b * np.log(base))
    edge = np.minimum(base, base_max_ms)
    return np.exp(a + b * np.log(edge)) * (base / edge)


def offset_affine(
    base_ms: np.ndarray | float, scale: float, offset_ms: float, floor: float = OFFSET_FLOOR
) -> np.ndarray:
    """s * base + c, floored at `floor` * s * base (base floored at 1e-9 ms): always > 0."""
    scaled = scale * np.maximum(np.asarray(base_ms, float), 1e-9)
    return np.maximum(scaled + offset_ms, floor * scaled)


def with_class_scales(
    mapped_ms: np.ndarray | float, terms: np.ndarray, log_weights: Sequence[float]
) -> np.ndarray:
    """Geometric mean of the mapped answer and the class-scale model on the same base, leaning
    towards the class model by the graph's share of CPU-fallback time (`class_scales.combine`;
    none for legacy five-term weights)."""
    share = class_scales.class_share(terms) if len(log_weights) == len(class_scales.TERMS) else 0.0
    return class_scales.combine(mapped_ms, class_scales.predict(terms, log_weights), share)


@dataclass(frozen=True)
class CalibrationMap:
    """A fitted calibration as the estimator applies it (read from `calibration.json`)."""

    a: float
    b: float
    interval: tuple[float, float]  # log quantiles around the calibrated total
    class_log_weights: tuple[float, ...] | None = None  # cross-runtime calibrations only
    form: str = LOG_AFFINE
    scale: float = 1.0  # offset form: s
    offset_ms: float = 0.0  # offset form: c
    floor: float = OFFSET_FLOOR  # offset form: the answer's floor, a share of s * t_base
    base_max_ms: float | None = None  # the largest timed base (None: documents before it)

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> CalibrationMap:
        lo, hi = doc.get("interval_log_quantiles", DEFAULT_INTERVAL)
        scales = doc.get("class_scales")
        form = doc.get("form") or LOG_AFFINE
        extra: dict[str, Any] = {}
        off = doc.get("offset_map")
        if form == OFFSET and isinstance(off, Mapping) and float(off.get("scale", 0)) > 0:
            extra = {
                "form": OFFSET,
                "scale": float(off["scale"]),
                "offset_ms": float(off["offset_ms"]),
                "floor": float(off.get("floor", OFFSET_FLOOR)),
            }
        elif form != LOG_AFFINE:
            log.warning("calibration form %r unknown or malformed: using its log-affine map", form)
        span = doc.get("base_range_ms")
        if isinstance(span, Sequence) and len(span) == 2 and float(span[1]) > 0:
            extra["base_max_ms"] = float(span[1])
        return cls(
            a=float(doc["a"]),
            b=float(doc["b"]),
            interval=(float(lo), float(hi)),
            class_log_weights=tuple(scales["log_weights"]) if scales else None,
            **extra,
        )

    def extends_above(self, base_ms: float) -> bool:
        """Whether the answer for `base_ms` is the map extended in proportion to the base
        (a log-affine map, above the largest base it was fitted on)."""
        top = self.base_max_ms
        return self.form == LOG_AFFINE and top is not None and base_ms > top

    def distance_above(self, base_ms: float) -> float:
        """How far (log units) `base_ms` is above the largest timed base, where the answer is
        the map extended (`extends_above`); 0 elsewhere. The interval widens with it
        (`leti.models.uncertainty.CALIBRATION_RANGE_SD`)."""
        if not self.extends_above(base_ms) or self.base_max_ms is None:
            return 0.0
        return float(uncertainty.distance_above(base_ms, self.base_max_ms))

    def map(self, base_ms: np.ndarray | float) -> np.ndarray:
        """The chosen form applied to the base's total."""
        if self.form == OFFSET:
            return offset_affine(base_ms, self.scale, self.offset_ms, self.floor)
        return log_affine(base_ms, self.a, self.b, self.base_max_ms)

    def apply(self, base_ms: np.ndarray | float, terms: np.ndarray | None = None) -> np.ndarray:
        """The calibrated total from the base's total (and, cross-runtime, its class terms)."""
        mapped = self.map(base_ms)
        if self.class_log_weights is None:
            return mapped
        return with_class_scales(mapped, terms, self.class_log_weights)
