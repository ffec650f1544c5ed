"""ncnn-vulkan calibrations shipped from the public ncnn benchmark (issue 10).

No per-layer timing of a Snapdragon 888, Kirin 9000 or RK3568 GPU is public. The ncnn project's
benchmark does time its 35 graphs end to end on the GPUs of two of them (Adreno 660; Mali-G52
2EE MC2, timed on an RK3566), so those SoCs answer on ncnn-vulkan as a user's own calibration
would: `leti.train.calibrate.calibrate_timings` on every timing of the section, against the
exact `.param` graphs the benchmark ran. The document records the section, the number of
models, the data's hash and its licence, and the notes every answer repeats.

A SoC with no public timing at all (Kirin 9000) gets a *borrowed* map instead: the
log-affine map from the transfer model's kernel sum to ncnn-vulkan time, fitted on the pooled
timings of the GPUs of its family in the table, each priced with its own descriptors; the
Kirin 9000 answer applies it to its own kernel sum (priced with its own descriptors). Its
interval comes from leave-one-GPU-out errors: the map fitted without a GPU, tested on it.
Such an answer keeps the provenance `transfer`, and says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from leti.core import socs
from leti.core.errors import LetiError, ModelNotFoundError
from leti.core.store import atomic_write_json, sha256_file
from leti.frontend.graph import parse_graph
from leti.measurements import ncnn_benchmark as bench
from leti.models.calibration import LOG_AFFINE
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.predict.registry import CALIBRATION_FORMAT, base_runtime, base_total, calibration_path
from leti.train.calibrate import (
    DEFAULT_PRIOR_SD,
    MOSTLY_ANALYTIC_REASON,
    calibrate_timings,
    fit_log_affine,
)
from leti.train.timings import TimingRow, Timings, timings_sha256

log = logging.getLogger(__name__)

RUNTIME = "ncnn-vulkan"
DATASET = "ncnn-benchmark"
#: A section ships a calibration only with at least this many timed graphs (the evaluation's
#: leave-one-model-out protocol uses the same bar).
MIN_MODELS = 15
#: Coverage of the borrowed answer's interval (quantiles of the leave-one-GPU-out errors).
COVERAGE = 0.9


def target_timings(target: bench.NcnnTarget) -> Timings:
    """The section's timings as calibration rows: each exact graph at its benchmark input."""
    rows = []
    for i, rec in enumerate(target.timings.itertuples(), start=1):
        path = Path(rec.graph)
        shapes = None
        if rec.input_shape is not None:
            shapes = {bench.input_blob(path): list(rec.input_shape)}
        rows.append(
            TimingRow(
                i,
                f"{bench.MODELS_DIR}/{path.name}",
                path,
                float(rec.latency_ms),
                sha256_file(path),
                shapes,
            )
        )
    return Timings(source=f"{DATASET}: {target.section}", file_sha256="", rows=rows)


def _source(target: bench.NcnnTarget, data_hash: str, soc: socs.Soc) -> dict:
    spec = socs.gpu_specs()[target.gpu.id]
    n = len(target.timings)
    notes = [
        f"ncnn-vulkan calibrated on the {n} public end-to-end timings of the ncnn benchmark "
        f"(BSD-3), section '{target.section[:80]}' ({target.gpu_name})"
    ]
    if spec.get("soc_note"):
        notes.append(f"{soc.name}: {spec['soc_note']}")
    return {
        "dataset": DATASET,
        "section": target.section,
        "gpu_name": target.gpu_name,
        "gpu": target.gpu.id,
        "runs": list(target.runs),
        "models": n,
        "data_sha256": data_hash,
        "licence": bench.LICENCE,
        "notes": notes,
    }


def linked_targets(data_dir: Path) -> list[tuple[socs.Soc, bench.NcnnTarget]]:
    """(registry SoC, its GPU's section) for every GPU of the table linked to a SoC
    (`soc` in `data/ncnn_gpus.json`) with at least `MIN_MODELS` timed graphs."""
    out = []
    specs = socs.gpu_specs()
    for target in bench.load_targets(Path(data_dir)):
        sid = specs[target.gpu.id].get("soc")
        if sid and len(target.timings) >= MIN_MODELS:
            out.append((socs.resolve(sid), target))
    return out


def ship_calibrations(data_dir: Path, models_dir: Path) -> list[dict]:
    """Write `<models_dir>/<soc>/ncnn-vulkan/calibration.json` for every linked SoC and the
    borrowed map of every SoC listed under `borrow`; returns the documents."""
    data_hash = bench.data_sha256(Path(data_dir))
    docs = []
    for soc, target in linked_targets(data_dir):
        timings = target_timings(target)
        bad = []
        for row in timings.rows:  # every graph must read before anything is written
            try:
                parse_graph(row.path, row.input_shapes)
            except LetiError as exc:
                bad.append(f"{row.graph}: {exc}")
        if bad:
            raise LetiError(f"{soc.id}: benchmark graphs unusable:\n" + "\n".join(bad))
        doc = calibrate_timings(
            soc, RUNTIME, timings, Path(models_dir), _source(target, data_hash, soc)
        )
        unexpected = [r for r in timings.rejected if r.reason != MOSTLY_ANALYTIC_REASON]
        if unexpected:  # cannot happen after the check above; say so loudly if it does
            raise LetiError(f"{soc.id}: rows rejected:\n{timings.report()}")
        docs.append(doc)
    for sid, entry in socs.gpu_borrow().items():
        docs.append(borrow_calibration(socs.resolve(sid), entry, data_dir, models_dir, data_hash))
    return docs


def _gpu_base(own: Estimator, gpu: socs.GpuSpec) -> Estimator:
    """`own` (a transfer base) priced with another GPU's descriptors."""
    return replace(own, kernels=own.kernels.model.bind(gpu))


def _priced(est: Estimator, rows: Sequence[TimingRow]) -> np.ndarray:
    return np.array([est.predict(r.path, r.input_shapes).total_ms for r in rows])


def borrow_calibration(
    soc: socs.Soc,
    entry: dict,
    data_dir: Path,
    models_dir: Path,
    data_hash: str | None = None,
) -> dict:
    """The borrowed ncnn-vulkan map of `soc` (module docstring), written atomically."""
    own = uncalibrated_base(soc, RUNTIME, Path(models_dir))
    if own is None or own.provenance != "transfer":
        raise ModelNotFoundError(f"{soc.id}: no transfer model to borrow an ncnn map onto")
    wanted = list(entry["gpus"])
    targets = [t for t in bench.load_targets(Path(data_dir)) if t.gpu.id in wanted]
    if len(targets) < 2:
        raise LetiError(f"{soc.id}: need >= 2 of {wanted} in the benchmark to borrow from")
    rows_of = {t.gpu.id: target_timings(t).rows for t in targets}  # hashes each graph once
    base = {t.gpu.id: _priced(_gpu_base(own, t.gpu), rows_of[t.gpu.id]) for t in targets}
    meas = {t.gpu.id: t.timings["latency_ms"].to_numpy(float) for t in targets}
    ids = [t.gpu.id for t in targets]

    def pooled(keep: Sequence[str]):
        x = np.concatenate([base[g] for g in keep])
        y = np.concatenate([meas[g] for g in keep])
        return fit_log_affine(x, y, prior_sd=DEFAULT_PRIOR_SD)

    fit = pooled(ids)
    logo = {}
    for g in ids:
        held = pooled([o for o in ids if o != g])
        logo[g] = np.log(meas[g]) - np.log(held.apply(base[g]))
    resid = np.concatenate(list(logo.values()))
    lo, hi = np.quantile(resid, [(1 - COVERAGE) / 2, (1 + COVERAGE) / 2])
    rows = [r for t in targets for r in rows_of[t.gpu.id]]
    digest = timings_sha256(rows)
    names = ", ".join(f"{t.gpu.name} ({len(t.timings)})" for t in targets)
    doc = {
        "format": CALIBRATION_FORMAT,
        "soc": soc.id,
        "runtime": RUNTIME,
        "provenance": "transfer",
        "model_version": f"{own.model_version}+borrowed-{digest[:10]}",
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "base": {
            "runtime": base_runtime(RUNTIME),
            "provenance": own.provenance,
            "model_version": own.model_version,
            "profile": None,
            "total": base_total(RUNTIME),
        },
        "base_selection": {
            "chosen": "own",
            "why": f"no timing of {soc.name} exists: its own transfer base, with the map "
            f"borrowed from {', '.join(ids)}",
        },
        "form": LOG_AFFINE,
        "map": "log(total_ms) = a + b * log(base_total_ms) (base total = its kernel sum), "
        "fitted on the pooled timings of other GPUs, each priced with its own descriptors",
        "a": fit.a,
        "b": fit.b,
        "base_range_ms": list(fit.base_range_ms or ()),
        "offset_map": None,
        "class_scales": None,
        "k": len(rows),
        "timings_sha256": digest,
        "interval_log_quantiles": [float(lo), float(hi)],
        "interval": {
            "coverage": COVERAGE,
            "method": "quantiles of the leave-one-GPU-out log errors (the map fitted without "
            "a GPU, tested on all of that GPU's timings)",
        },
        "leave_one_gpu_out": {
            g: {
                "models": len(r),
                "median_log_error": float(np.median(r)),
                "within_20pct": float(np.mean(np.abs(np.expm1(r)) <= 0.2)),
            }
            for g, r in logo.items()
        },
        "source": {
            "dataset": DATASET,
            "borrowed_from": ids,
            "sections": [t.section for t in targets],
            "models": len(rows),
            "data_sha256": data_hash or bench.data_sha256(Path(data_dir)),
            "licence": bench.LICENCE,
            "why": entry.get("why", ""),
            "notes": [
                f"no public {soc.name} ({soc.gpu}) timing exists: this ncnn-vulkan answer "
                f"borrows the runtime map of {names} from the ncnn benchmark (BSD-3), applied "
                f"to {soc.name}'s own kernel sum (priced with its descriptors); the interval "
                "comes from leave-one-GPU-out errors"
            ],
        },
    }
    atomic_write_json(calibration_path(Path(models_dir), soc.id, RUNTIME), doc)
    return doc
