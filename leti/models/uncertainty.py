"""How much wider an interval gets where the model knows less.

The base interval of a fitted model is the 5%/95% quantiles of its out-of-fold log residuals
on the training graphs: honest for graphs like them, over-confident for a 4K image or a
transformer. Four things widen it, each in log units, added in quadrature and scaled to the
same 90% coverage:

- **extrapolation**: kernels whose features lie outside the range their kind was trained on
  (their efficiency is held at its edge value, the analytic part keeps scaling). The spread
  grows with the distance past the edge, in units of the training span, weighted by the share
  of the kernel time those kernels carry;
- **analytic pricing**: the share of the total priced without any measurement of that op
  family (borrowed efficiencies, standalone op types the training graphs never had);
- **graph size**: a kernel sum smaller or larger than every training graph's, in log units
  (the structural terms were fitted on graphs of that range; a 2 ms NAS cell below 5 ms
  ResNets is as far outside as a 4K image is above them);
- **above a calibration's timed range**: a calibrated graph whose base is larger than every
  base the calibration timed (`calibration_distance`; the log-affine map then grows in
  proportion to the base, `leti.models.calibration.log_affine`). Its interval was sized on
  timings inside the range.

The first three constants are judgement, not a fit: they are chosen so that a graph
entirely outside the data gets an interval of roughly a factor of two either side, and they
are checked by the size-extrapolation protocols of `leti evaluate` (coverage on held-out
larger and smaller models). The fourth is sized on the ncnn benchmark's held-out answers
(`CALIBRATION_RANGE_SD`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Log-units of spread per unit of log1p(distance past the training range).
EXTRAPOLATION_SD = 0.25
#: Log-units of spread for a graph priced entirely analytically.
ANALYTIC_SD = 0.35
#: Log-units of spread per log unit of kernel sum outside the training graphs' range.
SIZE_SD = 0.25
#: Log-units of spread per log unit a calibrated graph's base lies above the largest base its
#: calibration timed. Sized on the ncnn benchmark (benchmarks/transfer.md): leaving each model
#: out of its GPU's calibration, the 24 answers above the others' range (mostly vgg16, at
#: 2.3-3.7x the largest other base) erred by 0.83 log units RMS against 0.45 inside it, and
#: the 90% interval held the timing for only 50% of them. 0.25 / 0.4 / 0.5 / 0.6 hold 71 / 83 /
#: 83 / 83%; the rest are vision transformers and int8 graphs just above the range, whose error
#: is not the distance. Chosen on those same answers: their coverage in the report is in sample.
CALIBRATION_RANGE_SD = 0.5
#: z of the 95% quantile: the base interval is a 5%..95% one.
Z90 = 1.645


@dataclass(frozen=True)
class Widening:
    """The log-units an interval widens by on each side, and why."""

    log_units: float
    extrapolated_share: float  # share of the kernel time outside the training range
    analytic_share: float  # share of the total priced analytically
    reasons: tuple[str, ...]


def widening(
    kernel_ms: np.ndarray,
    distance: np.ndarray,
    analytic_ms: float,
    total_ms: float,
    size_distance: float = 0.0,
    calibration_distance: float = 0.0,
) -> Widening:
    """`distance`: per kernel, how far past its kind's training range (0 inside);
    `size_distance`: how far (log units) the graph's kernel sum is outside the training
    graphs'; `calibration_distance`: how far (log units) its base is above the largest base
    its calibration timed (the estimator's note says so, so it adds no reason here)."""
    kernel_ms = np.asarray(kernel_ms, float)
    distance = np.asarray(distance, float)
    ksum = float(kernel_ms.sum())
    outside = distance > 0
    ext_share = float(kernel_ms[outside].sum()) / ksum if ksum > 0 else 0.0
    ext = float((kernel_ms * np.log1p(distance)).sum()) / ksum if ksum > 0 else 0.0
    ana_share = min(max(analytic_ms / total_ms, 0.0), 1.0) if total_ms > 0 else 1.0
    sd = math.hypot(
        EXTRAPOLATION_SD * ext,
        ANALYTIC_SD * ana_share,
        SIZE_SD * size_distance,
        CALIBRATION_RANGE_SD * calibration_distance,
    )
    reasons = []
    if size_distance > 0.05:
        reasons.append(
            f"the graph's kernel time is {math.exp(size_distance):.1f}x outside the range of "
            "the graphs the model was trained on"
        )
    if ext_share > 0.01:
        reasons.append(
            f"{100 * ext_share:.0f}% of the kernel time is in kernels outside the sizes the "
            "model was trained on (their efficiency is held at the edge of the data)"
        )
    if ana_share > 0.01:
        reasons.append(
            f"{100 * ana_share:.0f}% of the total is priced analytically (op families "
            "without measurements on this SoC)"
        )
    return Widening(Z90 * sd, ext_share, ana_share, tuple(reasons))


def calibration_widening(base_ms: np.ndarray | float, base_max_ms: float | None) -> np.ndarray:
    """Log units a calibrated answer's interval widens by on each side when that is its only
    widening: `CALIBRATION_RANGE_SD` per log unit of base above `base_max_ms` (None: no range
    known, no widening), scaled to the interval's 90% coverage."""
    if base_max_ms is None:
        return np.zeros_like(np.asarray(base_ms, float))
    return Z90 * CALIBRATION_RANGE_SD * distance_above(base_ms, base_max_ms)


def distance_above(base_ms: np.ndarray | float, base_max_ms: float) -> np.ndarray:
    """log(base / base_max_ms) above it, 0 at or below."""
    base = np.maximum(np.asarray(base_ms, float), 1e-12)
    return np.maximum(np.log(base / base_max_ms), 0.0)
