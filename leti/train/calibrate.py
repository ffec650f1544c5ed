"""Few-shot calibration from end-to-end timings (issue 4).

A user who can time a handful of whole models on a device, but cannot profile its layers,
fits a small correction on top of the estimator we already have for that SoC, in one of two
forms (`leti.models.calibration`):

    log_affine:  log t = a + b * log t_base
    offset:      t = s * t_base + c          (c may be negative, bounded; see OFFSET_FLOOR)

where t_base is the base estimator's end-to-end prediction. The base is the SoC's measured
model for the runtime, else its transfer model; for runtimes without per-kernel data (e.g.
ncnn-vulkan) it is the SoC's tflite-gpu estimator (measured or transfer) priced with the
target runtime's fusion rules: the timings are all we know of that runtime, and the map
absorbs the runtime's different speed. Such a cross-runtime base answers its *kernel sum*: the
graph-level corrector learned what tflite-gpu adds on top of its kernels (launches, standalone
ops), which is not what another runtime adds; on the ncnn benchmark dropping it lifts k = 5
accuracy and halves the gap to a FLOPs fit (`leti evaluate --transfer`). The choice is stored
in the calibration (`base.total`); documents written before it lack the key and keep the
corrected total they were fitted on.

Which base: the SoC's own (above), or, when the timings clearly say so, the transfer model
priced with one of the measured SoCs' descriptors (a "profile": e.g. a new Mali GPU that
behaves like the Exynos 9820 rather than like its spec sheet). A profile replaces the own base
only when its leave-one-out error on the timings is below `PROFILE_GAIN` x the own base's, and
still is on every subset that leaves one timing out (`choose_base`): with k = 5 timings the
raw comparison switched bases in half of the draws on one board, and those draws did worse.
The calibration stores the choice and the reason, and every answer repeats it.

Fit: the intercept `a` is free; the slope is ridge-regressed towards 1 (prior b = 1,
`SLOPE_PRIOR` = lambda on (b - 1)), so with k = 3 timings the map is essentially a scale and
it only tilts once the timings span enough range to say so. From `ROBUST_MIN_TIMINGS` timings
on the fit is a Huber fit, so that one graph far off the trend does not tilt the map for all.

Which form: setups can differ by a fixed per-inference overhead (two published datasets of
the same NAS-Bench-201 archs on the same Adreno 640 differ by ~1.8 ms + 0.99x), which a
log-affine map cannot express for small graphs where the overhead is a large share. The
offset form is fitted on relative error with s ridge-shrunk towards the log-affine fit's
scale (`SCALE_PRIOR`) and c bounded below so that every answer stays positive; it replaces the
log-affine map only when its leave-one-out error on the timings is below `OFFSET_GAIN` x the
log-affine map's (`choose_form`), on the base already chosen. Stored as `form` (+
`offset_map`); `a`, `b` always hold the log-affine fit.

Interval (either form): leave-one-out residuals of the fit, pooled with a prior residual
scale (`PRIOR_WEIGHT` pseudo-observations of the error that calibration at this k left on
held-out SoCs, from `leti evaluate --transfer`) and widened by Student's t with the matching
degrees of freedom, so that k = 3 gives a wide interval rather than an over-confident one.

Cross-runtime calibrations (ncnn-vulkan) also fit per-kernel-class scales on the same base,
with a prior learned across the GPUs of the runtime's public benchmark (`leti.models.class_scales`,
stored in the transfer manifest under `class_priors`), and answer the geometric mean of the two
fits (the map half in the form chosen above), leaning towards the class half by the graph's
share of int8 time that ncnn runs on the CPU; the interval then comes from the leave-one-out
residuals of that mean. There, a timing mostly priced analytically (an int8 graph) is kept out
of the base selection and the map only: it sets the class model's `cpu_fallback` weight, which
nothing else can (on the ncnn benchmark's leave-one-model-out, the Snapdragon 888's eight int8
graphs went from +51..+137% errors, none within 20%, to four within 20%).

Persistence: `<models_dir>/<soc>/<runtime>/calibration.json` (atomic) with k, the timings'
hash, every accepted row with its fitted and leave-one-out residual, and every rejected row
with its reason. Bad rows (missing file, non-numeric or non-positive latency, duplicate graph,
unreadable graph) are reported, never silently dropped; fewer than 3 usable rows is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from leti.core import socs
from leti.core.errors import (
    CalibrationError,
    LetiError,
    ModelNotFoundError,
    UnknownRuntimeError,
)
from leti.core.store import atomic_write_json
from leti.core.store import models_dir as resolve_models_dir
from leti.models import class_scales, uncertainty
from leti.models.calibration import (
    LOG_AFFINE,
    OFFSET,
    OFFSET_FLOOR,
    log_affine,
    offset_affine,
    with_class_scales,
)
from leti.models.transfer import TRANSFER_RUNTIMES
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.predict.registry import (
    CALIBRATION_FORMAT,
    KERNEL_SUM_TOTAL,
    base_runtime,
    base_total,
    calibration_path,
    transfer_manifest,
)
from leti.train.timings import RejectedRow, TimingRow, Timings, read_timings, timings_sha256

log = logging.getLogger(__name__)

MIN_TIMINGS = 3
#: Ridge penalty on (b - 1), in squared log units: equal to the information about the slope
#: of timings whose log base predictions spread over ~0.55 (a factor 1.7). Results on the
#: leave-one-SoC-out protocol barely move between 0.3 and 3; ncnn prefers the freer slope.
SLOPE_PRIOR = 0.3
#: From this many timings on, the log-affine map is a Huber fit (`class_scales.HUBER_SCALE`):
#: with fewer, one timing off the trend cannot be told from the trend itself, and a robust
#: fit would only add noise; with more, one graph the runtime runs on a slow path (the ncnn
#: benchmark's vision transformer on a Snapdragon 888: 751 ms for a base that ranks it with
#: resnet50) no longer tilts the map for every other graph.
ROBUST_MIN_TIMINGS = 8
#: Iteratively reweighted least squares for the robust map: at most this many rounds.
ROBUST_ROUNDS = 50
#: A transfer profile replaces the SoC's own base only when its leave-one-out mean squared
#: log residual on the timings is below this share of the own base's.
PROFILE_GAIN = 0.6
#: Ridge penalty on (s / s0 - 1) in the offset form, s0 being the log-affine fit's scale at
#: the timings, against the fit's squared relative residuals: moving s 10% away from s0 costs
#: as much as a 2.2% residual on one timing. The timings move s only as far as they can tell a
#: scale from an offset: on graphs of similar size (whose offset share barely varies) s stays
#: near s0 and c takes up the difference; a spread of small and large graphs frees s. On
#: simulated NB201-like timings (1.8 ms + 0.99x on 1.5-12 ms bases, 5% noise) 0.01 and 0.05
#: behave alike and 0.2 holds s so tight at k = 3 that the offset form rarely pays off.
SCALE_PRIOR = 0.05
#: The offset form replaces the log-affine map only when its leave-one-out mean squared log
#: residual on the timings is below this share of the log-affine map's. Leave-one-out error
#: already charges a form for fitting noise, but on k = 3-10 timings it is itself noisy: on
#: simulated timings that are a pure scale (plus 5-12% noise) the offset form wins the raw
#: comparison in 20-38% of the draws and then costs accuracy (more where the true map is a
#: power law, slope 0.9, over a wide range). With this margin it switches in <= 12% of the
#: draws at k = 3, <= 5% at k = 5 and ~0 at k = 10, while timings with a real offset (NB201
#: cells: ~1.8 ms on 2-10 ms graphs) still switch in about half the draws and gain where they
#: do. The same value as PROFILE_GAIN, for the same reason.
OFFSET_GAIN = 0.6
#: Pseudo-observations given to the prior residual scale when sizing the interval.
PRIOR_WEIGHT = 3.0
COVERAGE = 0.9
#: Prior residual scale (log) when no evaluation-derived one is available.
DEFAULT_PRIOR_SD = 0.15
OWN = "own"
PROFILE_PREFIX = "profile:"
#: A timing whose base time is at least this share priced analytically (op families without
#: measurements, e.g. the int8 layers ncnn-vulkan runs on the CPU) says more about that op
#: family than about the map: it is kept out of the fit while enough other timings remain (out
#: of the map half only, when the calibration has class scales).
MOSTLY_ANALYTIC = 0.5
MOSTLY_ANALYTIC_REASON = "mostly_analytic"


def analytic_share(plan: Any, kernel_ms: np.ndarray) -> float:
    """Share of a plan's kernel time priced analytically (no measurements of its family)."""
    ms = np.asarray(kernel_ms, float)
    total = float(ms.sum())
    if total <= 0:
        return 0.0
    analytic = np.array([k.priced == "analytic" for k in plan.kernels], bool)
    return float(ms[analytic].sum()) / total


# --------------------------------------------------------------------------------------------
# The fit


@dataclass(frozen=True)
class LogAffine:
    a: float
    b: float
    residuals: np.ndarray  # log(measured / calibrated), in sample
    loo_residuals: np.ndarray  # the same, each from a fit without that timing
    sd: float  # pooled residual scale behind the interval
    interval: tuple[float, float]  # log quantiles around the calibrated total
    base_range_ms: tuple[float, float] | None = None  # the timed bases' range
    form: ClassVar[str] = LOG_AFFINE

    def apply(self, base_ms: np.ndarray | float) -> np.ndarray:
        top = None if self.base_range_ms is None else self.base_range_ms[1]
        return log_affine(base_ms, self.a, self.b, top)

    @property
    def loo_mse(self) -> float:
        return float(np.mean(self.loo_residuals**2))


@dataclass(frozen=True)
class OffsetAffine:
    """t = s * t_base + c (floored at OFFSET_FLOOR * s * t_base), fitted beside `log_affine`."""

    scale: float
    offset_ms: float
    log_affine: LogAffine  # the log-affine fit on the same timings: the scale's prior, the rival
    residuals: np.ndarray
    loo_residuals: np.ndarray
    sd: float
    interval: tuple[float, float]
    floor: float = OFFSET_FLOOR
    form: ClassVar[str] = OFFSET

    def apply(self, base_ms: np.ndarray | float) -> np.ndarray:
        return offset_affine(base_ms, self.scale, self.offset_ms, self.floor)

    @property
    def loo_mse(self) -> float:
        return float(np.mean(self.loo_residuals**2))


MapFit = LogAffine | OffsetAffine


def _ab_weighted(
    x: np.ndarray, y: np.ndarray, slope_prior: float, w: np.ndarray
) -> tuple[float, float]:
    """Free offset, slope ridge-shrunk to 1: minimise sum w (y - a - b x)^2 + lambda (b - 1)^2."""
    d = y - x
    xm = float(w @ x) / float(w.sum())
    dm = float(w @ d) / float(w.sum())
    xc = x - xm
    beta = float((w * xc) @ (d - dm)) / (float((w * xc) @ xc) + slope_prior)
    return dm - beta * xm, 1.0 + beta


def _ab(x: np.ndarray, y: np.ndarray, slope_prior: float) -> tuple[float, float]:
    """The log-affine map's (a, b): least squares below `ROBUST_MIN_TIMINGS` timings, a Huber
    fit (iteratively reweighted: weight min(1, scale / |residual|)) from there on."""
    w = np.ones(len(x))
    a, b = _ab_weighted(x, y, slope_prior, w)
    if len(x) < ROBUST_MIN_TIMINGS:
        return a, b
    scale = class_scales.HUBER_SCALE
    for _ in range(ROBUST_ROUNDS):
        r = np.abs(y - a - b * x)
        w = np.minimum(1.0, scale / np.maximum(r, 1e-12))
        a1, b1 = _ab_weighted(x, y, slope_prior, w)
        if abs(a1 - a) < 1e-10 and abs(b1 - b) < 1e-10:
            return a1, b1
        a, b = a1, b1
    return a, b


def _t_quantile(p: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def fit_log_affine(
    base_ms: Sequence[float],
    measured_ms: Sequence[float],
    slope_prior: float | None = None,
    prior_sd: float = DEFAULT_PRIOR_SD,
    prior_weight: float = PRIOR_WEIGHT,
    coverage: float = COVERAGE,
) -> LogAffine:
    slope_prior = SLOPE_PRIOR if slope_prior is None else slope_prior
    base = np.asarray(base_ms, float)
    x = np.log(base)
    y = np.log(np.asarray(measured_ms, float))
    k = len(x)
    if k < MIN_TIMINGS:
        raise CalibrationError(f"calibration needs at least {MIN_TIMINGS} usable timings, got {k}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise CalibrationError("calibration got a non-finite latency")
    a, b = _ab(x, y, slope_prior)
    resid = y - (a + b * x)
    loo = np.empty(k)
    for i in range(k):
        keep = np.arange(k) != i
        ai, bi = _ab(x[keep], y[keep], slope_prior)
        # as the map answers it (`log_affine`, in log units, where a pure scale is exact): in
        # proportion to the base above the others' range
        edge = min(float(x[i]), float(x[keep].max()))
        loo[i] = y[i] - (ai + bi * edge + (x[i] - edge))
    sd, interval = _interval(loo, prior_sd, prior_weight, coverage)
    span = (float(base.min()), float(base.max()))
    return LogAffine(a, b, resid, loo, sd, interval, span)


def _box_lsq(m: np.ndarray, t: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """argmin ||m p - t||^2 over p >= lower, for two parameters (closed form: the free
    optimum if it is feasible, else the best point of the two boundary rays)."""
    p = np.linalg.lstsq(m, t, rcond=None)[0]
    if (p >= lower).all():
        return p
    best, best_obj = lower.copy(), math.inf
    for j in (0, 1):  # p[j] held at its bound, the other parameter free above its own
        o = 1 - j
        q = lower.copy()
        col = m[:, o]
        q[o] = max(lower[o], float(col @ (t - m[:, j] * lower[j])) / float(col @ col))
        obj = float(np.sum((m @ q - t) ** 2))
        if obj < best_obj:
            best, best_obj = q, obj
    return best


def _sc(
    base: np.ndarray, y: np.ndarray, s0: float, scale_prior: float, floor: float = OFFSET_FLOOR
) -> tuple[float, float]:
    """Scale and offset minimising sum ((s b + c) / y - 1)^2 + lambda (s / s0 - 1)^2 subject
    to s > 0 and c >= -(1 - floor) * s * min(b): the fit is solved as t = s (b - shift) + d
    with d >= 0, so both bounds are boxes."""
    shift = (1 - floor) * float(base.min())
    m = np.column_stack([(base - shift) / y, 1 / y])
    t = np.ones(len(y))
    if scale_prior > 0:
        m = np.vstack([m, [math.sqrt(scale_prior) / s0, 0.0]])
        t = np.append(t, math.sqrt(scale_prior))
    s, d = _box_lsq(m, t, np.array([1e-3 * s0, 0.0]))
    return float(s), float(d - shift * s)


def _la_scale(a: float, b: float, x: np.ndarray) -> float:
    """The log-affine map's scale at the timings: the geometric mean of t / t_base."""
    return math.exp(a + (b - 1) * float(x.mean()))


def fit_offset(
    base_ms: Sequence[float],
    measured_ms: Sequence[float],
    slope_prior: float | None = None,
    scale_prior: float | None = None,
    prior_sd: float = DEFAULT_PRIOR_SD,
    prior_weight: float = PRIOR_WEIGHT,
    coverage: float = COVERAGE,
    log_affine: LogAffine | None = None,
) -> OffsetAffine:
    """The offset form t = s * t_base + c on relative error, s shrunk towards the log-affine
    fit's scale at the timings (`SCALE_PRIOR`); its interval as `fit_log_affine`'s, from its
    own leave-one-out residuals (each left-out timing predicted by both fits redone without
    it)."""
    slope_prior = SLOPE_PRIOR if slope_prior is None else slope_prior
    scale_prior = SCALE_PRIOR if scale_prior is None else scale_prior
    base = np.asarray(base_ms, float)
    y = np.asarray(measured_ms, float)
    la = log_affine or fit_log_affine(base, y, slope_prior, prior_sd, prior_weight, coverage)
    x, ly = np.log(base), np.log(y)
    s, c = _sc(base, y, _la_scale(la.a, la.b, x), scale_prior)
    resid = ly - np.log(offset_affine(base, s, c))
    k = len(y)
    loo = np.empty(k)
    for i in range(k):
        keep = np.arange(k) != i
        ai, bi = _ab(x[keep], ly[keep], slope_prior)
        si, ci = _sc(base[keep], y[keep], _la_scale(ai, bi, x[keep]), scale_prior)
        loo[i] = ly[i] - math.log(float(offset_affine(base[i], si, ci)))
    sd, interval = _interval(loo, prior_sd, prior_weight, coverage)
    return OffsetAffine(s, c, la, resid, loo, sd, interval)


def choose_form(
    base_ms: Sequence[float],
    measured_ms: Sequence[float],
    la: LogAffine,
    prior_sd: float = DEFAULT_PRIOR_SD,
    gain: float = OFFSET_GAIN,
    slope_prior: float | None = None,
) -> tuple[MapFit, OffsetAffine]:
    """(the form kept, the offset fit): the offset form replaces the log-affine map `la` only
    when its leave-one-out mean squared log residual is below `gain` times `la`'s."""
    off = fit_offset(base_ms, measured_ms, slope_prior, prior_sd=prior_sd, log_affine=la)
    return (off if off.loo_mse < gain * la.loo_mse else la), off


def _interval(
    loo: np.ndarray, prior_sd: float, prior_weight: float = PRIOR_WEIGHT, coverage: float = COVERAGE
) -> tuple[float, tuple[float, float]]:
    """(sd, log quantiles) from leave-one-out residuals pooled with the prior scale."""
    k = len(loo)
    sd = math.sqrt((float(loo @ loo) + prior_weight * prior_sd**2) / (k + prior_weight))
    half = _t_quantile((1 + coverage) / 2, k - 1 + prior_weight) * sd
    center = float(np.median(loo)) if k >= 5 else 0.0
    return sd, (center - half, center + half)


@dataclass(frozen=True)
class CrossRuntimeFit:
    """A cross-runtime calibration: the geometric mean of a map of the base's kernel sum (the
    log-affine or the offset form) and of per-kernel-class scales (`leti.models.class_scales`)
    on the same base."""

    map_fit: MapFit
    log_weights: np.ndarray
    residuals: np.ndarray  # log(measured / calibrated), in sample
    loo_residuals: np.ndarray
    sd: float
    interval: tuple[float, float]

    @property
    def form(self) -> str:
        return self.map_fit.form

    def apply(self, base_ms: np.ndarray | float, terms: np.ndarray) -> np.ndarray:
        return with_class_scales(self.map_fit.apply(base_ms), terms, self.log_weights)


def fit_cross_runtime(
    base_ms: Sequence[float],
    terms: np.ndarray,
    measured_ms: Sequence[float],
    prior: class_scales.ClassPrior,
    prior_sd: float = DEFAULT_PRIOR_SD,
    map_fit: MapFit | None = None,
    map_rows: np.ndarray | None = None,
) -> CrossRuntimeFit:
    """Fit both halves on the timings (the map half: `map_fit` if given, else the log-affine
    map); the interval comes from leave-one-out residuals of the combined answer, each
    left-out timing predicted by both halves refitted without it.

    `map_rows` (a mask; default all): the timings the map half is fitted on (`map_fit` must
    be fitted on exactly those). The others (mostly int8 graphs, whose layers ncnn runs on the
    CPU) say nothing about the GPU's map but set the class model's `cpu_fallback` weight: the
    class half is fitted on every timing, and the map half predicts the others out of sample."""
    base = np.asarray(base_ms, float)
    terms = np.asarray(terms, float)
    y = np.asarray(measured_ms, float)
    rows = np.ones(len(y), bool) if map_rows is None else np.asarray(map_rows, bool)
    la = map_fit or fit_log_affine(base[rows], y[rows], prior_sd=prior_sd)
    w = class_scales.fit_log_weights(terms, y, prior)
    share = class_scales.class_share(terms)
    resid = np.log(y) - np.log(
        class_scales.combine(la.apply(base), class_scales.predict(terms, w), share)
    )
    # the map half's leave-one-out prediction is measured / exp(its loo residual) on the rows
    # it was fitted on, and its plain prediction on the others (never in its fit)
    la_loo = np.asarray(la.apply(base), float).copy()
    la_loo[rows] = y[rows] * np.exp(-la.loo_residuals)
    loo = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        wi = class_scales.fit_log_weights(terms[keep], y[keep], prior)
        pred = class_scales.combine(la_loo[i], class_scales.predict(terms[i], wi), share[i])
        loo[i] = np.log(y[i]) - np.log(float(pred))
    sd, interval = _interval(loo, prior_sd)
    return CrossRuntimeFit(la, w, resid, loo, sd, interval)


def interval_at(
    fit: MapFit | CrossRuntimeFit, base_ms: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """The fit's log interval around its answer for each base, widened above the largest
    timed base as the estimator widens it (log-affine maps: `CalibrationMap.distance_above`),
    so that an evaluation scores the intervals users get."""
    m = fit.map_fit if isinstance(fit, CrossRuntimeFit) else fit
    span = m.base_range_ms if isinstance(m, LogAffine) else None
    wide = uncertainty.calibration_widening(base_ms, None if span is None else span[1])
    lo, hi = fit.interval
    return lo - wide, hi + wide


@dataclass(frozen=True)
class BaseSelection:
    """Which candidate base a calibration kept, and why (stored in the calibration)."""

    chosen: str
    loo_mse: dict[str, float]  # every candidate's leave-one-out mean squared log residual
    contender: str | None  # the profile that beat the own base on all the timings, if any
    subsets_won: int  # of the leave-one-timing-out subsets where the contender still won
    subsets: int
    why: str


def _loo_mse(base: np.ndarray, y: np.ndarray, slope_prior: float | None, prior_sd: float) -> float:
    return float(
        np.mean(fit_log_affine(base, y, slope_prior, prior_sd=prior_sd).loo_residuals ** 2)
    )


def choose_base(
    candidates: Mapping[str, Sequence[float]],
    measured_ms: Sequence[float],
    prior_sd: float = DEFAULT_PRIOR_SD,
    gain: float = PROFILE_GAIN,
    slope_prior: float | None = None,
) -> BaseSelection:
    """The own base (first candidate) unless a profile's log-affine leave-one-out mean squared
    log residual is below `gain` x the own base's on the timings *and* on every subset that
    leaves one timing out. The second condition makes the choice robust to which k timings
    were drawn: one lucky timing cannot move a calibration to another phone's profile."""
    names = list(candidates)
    if not names:
        raise CalibrationError("no base estimator to calibrate")
    y = np.asarray(measured_ms, float)
    bases = {n: np.asarray(v, float) for n, v in candidates.items()}
    bases = {n: v for n, v in bases.items() if n == names[0] or np.isfinite(v).all()}
    mse = {n: _loo_mse(v, y, slope_prior, prior_sd) for n, v in bases.items()}
    own = names[0]
    contender = min((n for n in bases if n != own), key=mse.__getitem__, default=None)
    if contender is None:
        return BaseSelection(own, mse, None, 0, 0, "own base: no transfer profile to compare")
    ratio = mse[contender] / max(mse[own], 1e-12)
    if ratio >= gain:
        why = (
            f"own base kept: no profile's leave-one-out error is below {gain} x its own "
            f"(best profile {contender}: {ratio:.2f}x)"
        )
        return BaseSelection(own, mse, None, 0, 0, why)
    k = len(y)
    won = 0
    subsets = 0
    if k - 1 >= MIN_TIMINGS:
        for i in range(k):
            keep = np.arange(k) != i
            subsets += 1
            own_i = _loo_mse(bases[own][keep], y[keep], slope_prior, prior_sd)
            won += _loo_mse(bases[contender][keep], y[keep], slope_prior, prior_sd) < gain * own_i
    if subsets and won == subsets:
        why = (
            f"{contender} replaces the own base: its leave-one-out error is {ratio:.2f}x the own "
            f"base's (< {gain}) on all {k} timings and on each of the {subsets} subsets that "
            "leave one timing out"
        )
        return BaseSelection(contender, mse, contender, won, subsets, why)
    why = (
        f"own base kept: {contender} fits these timings better ({ratio:.2f}x) but not on "
        f"every subset that leaves one timing out ({won}/{subsets})"
        if subsets
        else f"own base kept: {contender} fits better ({ratio:.2f}x) but {k} timings are too "
        "few to check that the choice holds without any one of them"
    )
    return BaseSelection(own, mse, contender, won, subsets, why)


def select_and_fit(
    candidates: Mapping[str, Sequence[float]],
    measured_ms: Sequence[float],
    prior_sd: float = DEFAULT_PRIOR_SD,
    gain: float = PROFILE_GAIN,
    slope_prior: float | None = None,
    offset_gain: float | None = OFFSET_GAIN,
) -> tuple[str, MapFit]:
    """Keep the base the timings support (`choose_base`), then the form (`choose_form`, by the
    same kind of rule; `offset_gain` None: log-affine only). Returns (candidate name, fit of
    the form kept)."""
    sel = choose_base(candidates, measured_ms, prior_sd, gain, slope_prior)
    la = fit_log_affine(candidates[sel.chosen], measured_ms, slope_prior, prior_sd=prior_sd)
    if offset_gain is None:
        return sel.chosen, la
    form, _ = choose_form(
        candidates[sel.chosen], measured_ms, la, prior_sd, offset_gain, slope_prior
    )
    return sel.chosen, form


# --------------------------------------------------------------------------------------------
# Which estimator a calibration sits on


def candidate_bases(soc: socs.Soc, runtime: str, models_dir: Path | None) -> dict[str, Estimator]:
    """The SoC's own base first, then every transfer profile (one per measured SoC)."""
    own = uncalibrated_base(soc, runtime, models_dir)
    out: dict[str, Any] = {} if own is None else {OWN: own}
    brt = base_runtime(runtime)
    manifest = transfer_manifest(models_dir, brt) if brt in TRANSFER_RUNTIMES else None
    for other in (manifest or {}).get("trained_socs", []):
        if other != soc.id and other in socs.all_socs():
            est = uncalibrated_base(soc, runtime, models_dir, profile=other)
            if est is not None:
                out[f"{PROFILE_PREFIX}{other}"] = est
    return out


def class_prior_for(runtime: str, models_dir: Path | None) -> class_scales.ClassPrior | None:
    """The class-scale prior for a cross-runtime calibration of `runtime`, learned across the
    GPUs of that runtime's public benchmark and stored in the transfer manifest; else None."""
    if base_total(runtime) != KERNEL_SUM_TOTAL:
        return None
    manifest = transfer_manifest(models_dir, base_runtime(runtime)) or {}
    doc = manifest.get("class_priors", {}).get(runtime)
    if doc is None:
        return None
    try:
        return class_scales.ClassPrior.from_dict(doc)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("transfer manifest: unusable class prior for %s ignored: %s", runtime, exc)
        return None


def prior_sd_for(base: Estimator, runtime: str, models_dir: Path | None) -> tuple[float, str]:
    """Residual scale expected after calibrating this kind of base (and where it comes from)."""
    manifest = transfer_manifest(models_dir) or {}
    priors = manifest.get("calibration_prior_sd", {})
    if base_runtime(runtime) != runtime and "cross_runtime" in priors:
        return float(priors["cross_runtime"]), "transfer manifest: ncnn k=5 evaluation"
    if base.provenance == "transfer" and "transfer" in priors:
        return float(priors["transfer"]), "transfer manifest: leave-one-SoC-out k=5 evaluation"
    if base.provenance == "measured" and base_runtime(runtime) == runtime:
        lo, hi = base.log_interval
        return max((hi - lo) / (2 * 1.645), 0.02), "base model's cross-validated interval"
    return DEFAULT_PRIOR_SD, "default"


# --------------------------------------------------------------------------------------------
# Fit and save


def calibrate(
    soc_name: str,
    runtime_name: str | None,
    csv_path: str | Path,
    models_dir: str | Path | None = None,
) -> tuple[dict, Timings]:
    """Fit a calibration from a timings CSV and write it; returns (document, timings)."""
    root = resolve_models_dir(models_dir)
    soc = socs.registry(root).resolve(soc_name)
    try:
        runtime = socs.resolve_runtime(runtime_name, root)
        new_runtime = False
    except UnknownRuntimeError:
        # any runtime name: a cross-runtime calibration on the default runtime's estimator
        runtime, new_runtime = socs.user_runtime_name(runtime_name or ""), True
    timings = read_timings(csv_path)
    doc = calibrate_timings(soc, runtime, timings, root)
    if new_runtime:
        socs.add_user_runtime(root, runtime)  # only once the calibration is written
    return doc, timings


def calibrate_timings(
    soc: socs.Soc,
    runtime: str,
    timings: Timings,
    root: Path,
    source: Mapping[str, Any] | None = None,
) -> dict:
    """Fit a calibration of (soc, runtime) on `timings` and write it under `root`; returns
    the document. `source`: where the timings come from when they are not a user's file (a
    public benchmark's section), stored in the document and named in every answer."""
    if timings.k < MIN_TIMINGS:
        raise CalibrationError(
            f"calibration needs at least {MIN_TIMINGS} usable timings, got {timings.k}\n"
            + timings.report(),
            detail=timings.report(),
        )
    bases = candidate_bases(soc, runtime, root)
    if OWN not in bases:
        raise ModelNotFoundError(
            f"no base estimator to calibrate for {soc.id} on {runtime}: no measured or "
            f"transfer model for {soc.id}/{base_runtime(runtime)} in {root}"
        )
    base = bases[OWN]
    used: list[TimingRow] = []
    plans = []
    preds: dict[str, list[float]] = {name: [] for name in bases}
    for row in timings.rows:
        try:
            plan = base.plan(row.path, row.input_shapes)
            totals = {name: est.predict_plan(plan).total_ms for name, est in bases.items()}
        except LetiError as exc:
            timings.rejected.append(RejectedRow(row.line, row.graph, "unusable_graph", exc.message))
            continue
        used.append(row)
        plans.append(plan)
        for name, total in totals.items():
            preds[name].append(total)
    shares = [analytic_share(plan, base.kernel_ms(plan)) for plan in plans]
    keep = [sh < MOSTLY_ANALYTIC for sh in shares]
    prior = class_prior_for(runtime, root)
    # Mostly analytic timings (int8 graphs ncnn runs on the CPU) stay out of the map fit while
    # enough others remain; with class scales they still set the class model's cpu_fallback
    # weight, else they are rejected.
    class_only: list[dict[str, Any]] = []
    if sum(keep) >= MIN_TIMINGS and not all(keep):
        for row, sh, k in zip(used, shares, keep, strict=True):
            if k:
                continue
            why = (
                f"{100 * sh:.0f}% of its base time is priced without measurements of its op "
                "family: kept out of the "
            )
            if prior is not None:
                class_only.append({"line": row.line, "graph": row.graph, "why": why + "map fit"})
            else:
                timings.rejected.append(
                    RejectedRow(row.line, row.graph, MOSTLY_ANALYTIC_REASON, why + "fit")
                )
        if prior is None:
            used = [r for r, k in zip(used, keep, strict=True) if k]
            plans = [p for p, k in zip(plans, keep, strict=True) if k]
            preds = {n: [v for v, k in zip(vs, keep, strict=True) if k] for n, vs in preds.items()}
            keep = [True] * len(used)
    else:
        keep = [True] * len(used)
    timings.rows = used
    timings.rejected.sort(key=lambda r: r.line)
    if sum(keep) < MIN_TIMINGS:
        raise CalibrationError(
            f"calibration needs at least {MIN_TIMINGS} usable timings, got {sum(keep)}\n"
            + timings.report(),
            detail=timings.report(),
        )
    rows = np.array(keep, bool)  # the timings the map half is fitted on
    measured = np.array([r.latency_ms for r in used])
    prior_sd, prior_source = prior_sd_for(base, runtime, root)
    map_preds = {n: np.asarray(v, float)[rows] for n, v in preds.items()}
    selection = choose_base(map_preds, measured[rows], prior_sd=prior_sd)
    chosen = selection.chosen
    la = fit_log_affine(map_preds[chosen], measured[rows], prior_sd=prior_sd)
    base = bases[chosen]
    profile = chosen[len(PROFILE_PREFIX) :] if chosen.startswith(PROFILE_PREFIX) else None
    own_fit = fit_log_affine(map_preds[OWN], measured[rows], prior_sd=prior_sd)
    base_preds = np.asarray(preds[chosen], float)
    fit, off = choose_form(map_preds[chosen], measured[rows], la, prior_sd)
    final: MapFit | CrossRuntimeFit = fit
    class_doc = None
    if prior is not None:
        terms = np.array(
            [class_scales.class_terms(p.kernels, base.kernel_ms(p), p.overhead) for p in plans]
        )
        final = fit_cross_runtime(
            base_preds, terms, measured, prior, prior_sd, map_fit=fit, map_rows=rows
        )
        calibrated = final.apply(base_preds, terms)
        class_doc = {
            "model": "t = sum_i w_i * term_i (leti.class_scales)",
            "terms": list(class_scales.TERMS),
            "log_weights": [float(v) for v in final.log_weights],
            "prior": prior.to_dict(),
            "combine": f"geometric mean of the {fit.form} map and the class-scale model, "
            "leaning towards the class model by the graph's share of cpu_fallback time",
            "class_only": class_only,
        }
    else:
        calibrated = fit.apply(base_preds)
    kernel_sum = " (base total = its kernel sum)" if base_total(runtime) == KERNEL_SUM_TOTAL else ""
    if fit.form == OFFSET:
        map_text = (
            f"total_ms = scale * base_total_ms + offset_ms, floored at {OFFSET_FLOOR} x "
            "scale * base_total_ms" + kernel_sum
        )
    else:
        map_text = "log(total_ms) = a + b * log(base_total_ms)" + kernel_sum
    digest = timings_sha256(used)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    doc = {
        "format": CALIBRATION_FORMAT,
        "soc": soc.id,
        "runtime": runtime,
        "model_version": f"{base.model_version}+cal-{digest[:10]}",
        "created": created,
        "base": {
            "runtime": base_runtime(runtime),
            "provenance": base.provenance,
            "model_version": base.model_version,
            "profile": profile,
            "total": base_total(runtime),
        },
        "base_selection": {
            "rule": f"a transfer profile replaces the own base only when its leave-one-out "
            f"mean squared log residual is below {PROFILE_GAIN} x the own base's on the "
            "timings and on every subset that leaves one timing out",
            "chosen": chosen,
            "why": selection.why,
            "loo_mse": selection.loo_mse,
            "contender": selection.contender,
            "subsets_won": selection.subsets_won,
            "subsets": selection.subsets,
            "own_loo_rms_log_residual": float(np.sqrt(np.mean(own_fit.loo_residuals**2))),
        },
        "form": fit.form,
        "map": map_text
        + ("; answer = geometric mean with the class-scale model" if class_doc else ""),
        # the log-affine fit on the chosen base, whichever form answers
        "a": la.a,
        "b": la.b,
        "base_range_ms": list(la.base_range_ms or ()),
        "offset_map": (
            {"scale": fit.scale, "offset_ms": fit.offset_ms, "floor": fit.floor}
            if isinstance(fit, OffsetAffine)
            else None
        ),
        "form_selection": {
            "rule": f"the offset form t = s * t_base + c replaces the log-affine map only when "
            f"its leave-one-out mean squared log residual is below {OFFSET_GAIN} x the "
            "log-affine map's",
            "gain": OFFSET_GAIN,
            "loo_mse": {LOG_AFFINE: la.loo_mse, OFFSET: off.loo_mse},
            "offset_fit": {"scale": off.scale, "offset_ms": off.offset_ms},
            "chosen": fit.form,
        },
        "class_scales": class_doc,
        "k": len(used),
        "timings_sha256": digest,
        "timings_file": timings.source,
        "timings_file_sha256": timings.file_sha256,
        "prior": {
            "slope": 1.0,
            "slope_ridge_lambda": SLOPE_PRIOR,
            "offset_scale": "the log-affine fit's scale at the timings",
            "offset_scale_ridge_lambda": SCALE_PRIOR,
            "residual_sd": prior_sd,
            "residual_sd_source": prior_source,
            "residual_sd_weight": PRIOR_WEIGHT,
        },
        "interval_log_quantiles": list(final.interval),
        "interval": {
            "coverage": COVERAGE,
            "method": "leave-one-out residuals pooled with the prior residual scale, "
            "Student t with k - 1 + prior weight degrees of freedom",
            "sd": final.sd,
        },
        "residuals": [
            {
                "line": r.line,
                "graph": r.graph,
                "graph_sha256": r.sha256,
                "measured_ms": r.latency_ms,
                "base_ms": float(p),
                "calibrated_ms": float(c),
                "log_residual": float(res),
                "loo_log_residual": float(lres),
            }
            for r, p, c, res, lres in zip(
                used, base_preds, calibrated, final.residuals, final.loo_residuals, strict=True
            )
        ],
        "fit_rms_log_residual": float(np.sqrt(np.mean(final.residuals**2))),
        "loo_rms_log_residual": float(np.sqrt(np.mean(final.loo_residuals**2))),
        "rejected": [r.to_dict() for r in timings.rejected],
        "source": dict(source) if source else None,
    }
    atomic_write_json(calibration_path(root, soc.id, runtime), doc)
    return doc
