"""Which model answers for a (SoC, runtime): the one owner of that policy.

The order is fixed and visible here:
1. **measured**: `<models_dir>/<soc>/<runtime>/manifest.json`, a model fitted on that SoC's own
   per-kernel measurements;
2. **transfer**: for a runtime with per-kernel data elsewhere but none on this SoC, the model
   trained across the measured SoCs (`<models_dir>/transfer/<runtime>/`, else the bundled one),
   priced with this SoC's hardware descriptors;
3. **calibration-only**: a runtime without per-kernel data anywhere (ncnn-vulkan) answers only
   when a calibration was fitted for it; it then sits on the SoC's default-runtime base
   (measured or transfer), priced with the target runtime's fusion rules.
Then the saved calibration (`calibration.json` in the pair's folder), if any, is applied on
top. A calibration may name a transfer *profile*: the transfer model priced with a measured
SoC's descriptors instead of the SoC's own, when the timings fitted it better.

`choose` returns a plain description (`ModelChoice`) of what to load; `leti.predict.estimator`
builds the estimator from it. Nothing here loads a regressor, so the policy is cheap to ask
and to test.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from leti.core import socs
from leti.core.errors import ModelNotFoundError
from leti.core.store import bundled_models_dir
from leti.core.store import models_dir as resolve_models_dir
from leti.models import class_scales
from leti.models.transfer import MANIFEST as TRANSFER_MANIFEST
from leti.models.transfer import TRANSFER_DIR, TRANSFER_RUNTIMES

log = logging.getLogger(__name__)

MEASURED_MANIFEST = "manifest.json"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "leti-calibration/1"
#: What a base estimator's total is: the kernel sum times the graph-level correction, or the
#: kernel sum alone (cross-runtime bases: the other runtime's corrector learned its own
#: overheads, not the target runtime's).
CORRECTED_TOTAL = "corrected"
KERNEL_SUM_TOTAL = "kernel_sum"

Total = Literal["corrected", "kernel_sum"]


@dataclass(frozen=True)
class BaseChoice:
    """An uncalibrated estimator, described: which fitted model prices the kernels and how."""

    source: Literal["measured", "transfer"]
    folder: Path  # the model folder (measured) or the transfer model folder
    hardware: str | None  # transfer: the SoC whose descriptors price the kernels
    profile: str | None  # transfer priced with a measured SoC's descriptors (calibration)
    total: Total  # corrected total, or the kernel sum alone


@dataclass(frozen=True)
class ModelChoice:
    """What answers for (soc, runtime): a base, and the saved calibration applied on it."""

    soc: str
    runtime: str  # the runtime answered (its fusion rules plan the graph)
    base: BaseChoice
    calibration: Mapping[str, Any] | None = None  # a `calibration.json` document
    models_dir: Path | None = None  # whose SoC registry (user-defined SoCs) `soc` is in


# --------------------------------------------------------------------------------------------
# Runtimes and folders


def has_per_kernel_data(runtime: str) -> bool:
    """Bundled runtimes say; a runtime of the user's own never has per-kernel data."""
    return bool(socs.runtimes().get(runtime, {}).get("per_kernel_data", False))


def base_runtime(runtime: str) -> str:
    """Runtimes without per-kernel data are calibrated on the default (tflite-gpu) estimator."""
    return runtime if has_per_kernel_data(runtime) else socs.default_runtime()


def base_total(runtime: str) -> Total:
    """What the base of a new calibration for `runtime` answers: the kernel sum for runtimes
    calibrated on another runtime's estimator, else the corrected total."""
    return KERNEL_SUM_TOTAL if base_runtime(runtime) != runtime else CORRECTED_TOTAL


def is_transfer_target(soc: socs.Soc, runtime: str) -> bool:
    """Transfer serves (SoC, runtime) pairs with per-kernel data elsewhere but none here."""
    return soc.transfer and runtime in TRANSFER_RUNTIMES and runtime not in soc.phones


def model_folder(models_dir: Path, soc: str, runtime: str) -> Path:
    return Path(models_dir) / soc / runtime


def transfer_folder(models_dir: Path | None, runtime: str) -> Path | None:
    """The transfer model for `runtime`: in `models_dir`, else the one bundled with leti."""
    candidates = [Path(models_dir) / TRANSFER_DIR / runtime] if models_dir else []
    candidates.append(bundled_models_dir() / TRANSFER_DIR / runtime)
    for folder in candidates:
        if (folder / TRANSFER_MANIFEST).is_file():
            return folder
    return None


def transfer_manifest(models_dir: Path | None, runtime: str = "tflite-gpu") -> dict | None:
    folder = transfer_folder(models_dir, runtime)
    if folder is None:
        return None
    return json.loads((folder / TRANSFER_MANIFEST).read_text("utf-8"))


# --------------------------------------------------------------------------------------------
# Saved calibrations


def calibration_path(models_dir: Path, soc: str, runtime: str) -> Path:
    return model_folder(models_dir, soc, runtime) / CALIBRATION_FILE


def read_calibration(models_dir: Path | None, soc: str, runtime: str) -> dict | None:
    """The saved calibration of (soc, runtime), or None; an unreadable one is logged, ignored."""
    if models_dir is None:
        return None
    path = calibration_path(Path(models_dir), soc, runtime)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable calibration ignored: %s", path, exc)
        return None
    required = {"a", "b", "interval_log_quantiles", "base", "soc", "runtime", "k", "model_version"}
    if doc.get("format") != CALIBRATION_FORMAT or not required <= set(doc):
        log.warning("%s: not a %s document; ignored", path, CALIBRATION_FORMAT)
        return None
    cls = doc.get("class_scales")
    n_weights = len(cls.get("log_weights", [])) if cls else 0
    if cls and n_weights not in (len(class_scales.TERMS), len(class_scales.LEGACY_TERMS)):
        log.warning("%s: class scales with other terms; re-run `leti calibrate`; ignored", path)
        return None
    return doc


def saved_calibrations(models_dir: Path | None) -> list[tuple[str, str, dict]]:
    """(soc, runtime, document) for every valid calibration under `models_dir`."""
    if models_dir is None or not Path(models_dir).is_dir():
        return []
    out = []
    registry = socs.registry(models_dir).socs
    for path in sorted(Path(models_dir).glob(f"*/*/{CALIBRATION_FILE}")):
        soc, runtime = path.parent.parent.name, path.parent.name
        if soc not in registry or runtime not in socs.all_runtimes(models_dir):
            continue
        doc = read_calibration(models_dir, soc, runtime)
        if doc is not None:
            out.append((soc, runtime, doc))
    return out


# --------------------------------------------------------------------------------------------
# The policy


def base_choice(
    soc: socs.Soc,
    runtime: str,
    models_dir: Path | None,
    profile: str | None = None,
    total: Total | None = None,
) -> BaseChoice | None:
    """The uncalibrated base of (soc, runtime), or None when no model can answer.

    A runtime without per-kernel data sits on the SoC's `base_runtime` model. `profile`: the
    transfer model priced with that measured SoC's descriptors instead. `total`: default
    `base_total(runtime)`."""
    total = total or base_total(runtime)
    brt = base_runtime(runtime)
    if profile:
        folder = transfer_folder(models_dir, brt) if brt in TRANSFER_RUNTIMES else None
        if folder is None or profile not in socs.all_socs():
            return None
        return BaseChoice("transfer", folder, profile, profile, total)
    if models_dir is not None:
        folder = model_folder(models_dir, soc.id, brt)
        if (folder / MEASURED_MANIFEST).is_file():
            return BaseChoice("measured", folder, None, None, total)
    if is_transfer_target(soc, brt):
        folder = transfer_folder(models_dir, brt)
        if folder is not None:
            return BaseChoice("transfer", folder, soc.id, None, total)
    return None


def choose(
    soc: str, runtime: str | None = None, models_dir: str | os.PathLike[str] | None = None
) -> ModelChoice:
    """What answers for `soc` (id or alias) on `runtime` (default tflite-gpu); raises
    `ModelNotFoundError` (listing what is available) when nothing can."""
    root = resolve_models_dir(models_dir)
    s = socs.registry(root).resolve(soc)
    rt = socs.resolve_runtime(runtime, root)
    doc = read_calibration(root, s.id, rt)
    if has_per_kernel_data(rt):
        own = base_choice(s, rt, root, total=CORRECTED_TOTAL)
        if own is None:
            raise _not_found(s.id, rt, root)
        if doc is None or doc["base"].get("runtime") != rt:
            return ModelChoice(s.id, rt, own, models_dir=root)
        if not doc["base"].get("profile"):
            return ModelChoice(s.id, rt, own, doc, root)
        base = _calibration_base(s, rt, root, doc)
        if base is None:
            log.warning("calibration for %s/%s: its transfer profile is gone; ignored", s.id, rt)
            return ModelChoice(s.id, rt, own, models_dir=root)
        return ModelChoice(s.id, rt, base, doc, root)
    # calibration-only runtime
    base = None if doc is None else _calibration_base(s, rt, root, doc)
    if doc is not None and base is None:
        log.warning("calibration for %s/%s has no base estimator to sit on", s.id, rt)
    if base is None:
        raise _not_found(s.id, rt, root)
    return ModelChoice(s.id, rt, base, doc, root)


def _calibration_base(
    soc: socs.Soc, runtime: str, models_dir: Path, doc: Mapping[str, Any]
) -> BaseChoice | None:
    """The base a saved calibration was fitted on (documents written before `base.total`
    existed keep the corrected total they were fitted on)."""
    return base_choice(
        soc,
        runtime,
        models_dir,
        profile=doc["base"].get("profile"),
        total=doc["base"].get("total", CORRECTED_TOTAL),
    )


def _not_found(soc: str, runtime: str, root: Path) -> ModelNotFoundError:
    have = ", ".join(f"{a['soc']}/{a['runtime']}" for a in available(root)) or "none"
    return ModelNotFoundError(
        f"no trained model for {soc} on {runtime} in {root}; available: {have}", detail=have
    )


def available(models_dir: str | os.PathLike[str] | None = None) -> list[dict]:
    """Every loadable (soc, runtime): measured models, then transfer pairs (unmeasured SoCs x
    transfer runtimes), then calibration-only pairs; each with its provenance and version."""
    root = resolve_models_dir(models_dir)
    reg = socs.registry(root)
    registry = reg.socs
    out = []
    for manifest_path in sorted(root.glob(f"*/*/{MEASURED_MANIFEST}")):
        m = json.loads(manifest_path.read_text("utf-8"))
        soc = registry.get(m.get("soc", ""))
        if soc is None:
            continue
        cal = read_calibration(root, soc.id, m["runtime"])
        out.append(_entry(soc, m["runtime"], m["model_version"], "measured", cal))
    listed = {(a["soc"], a["runtime"]) for a in out}
    for rt in TRANSFER_RUNTIMES:
        manifest = transfer_manifest(root, rt)
        if manifest is None:
            continue
        for sid, soc in sorted(registry.items()):
            if (sid, rt) in listed or not is_transfer_target(soc, rt):
                continue
            cal = read_calibration(root, sid, rt)
            out.append(_entry(soc, rt, manifest["model_version"], "transfer", cal))
            if reg.is_user(sid):
                out[-1]["user_defined"] = True
    listed = {(a["soc"], a["runtime"]) for a in out}
    for sid, rt, cal in saved_calibrations(root):
        if (sid, rt) in listed or has_per_kernel_data(rt):
            continue
        out.append(_entry(registry[sid], rt, cal["model_version"], "calibrated", cal))
    return out


def _entry(soc: socs.Soc, runtime: str, version: str, provenance: str, cal: Mapping | None) -> dict:
    out = {
        "soc": soc.id,
        "name": soc.name,
        "gpu": soc.gpu,
        "runtime": runtime,
        "model_version": cal["model_version"] if cal else version,
        "provenance": str(cal.get("provenance") or "calibrated") if cal else provenance,
    }
    if cal:
        out["calibration"] = calibration_summary(cal)
    return out


def calibration_summary(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a listing says of a saved calibration: its size, its base and why, its source."""
    base = doc.get("base") or {}
    source = doc.get("source") or {}
    return {
        "k": int(doc["k"]),
        "base": {
            "runtime": base.get("runtime"),
            "provenance": base.get("provenance"),
            "profile": base.get("profile"),
            "model_version": base.get("model_version"),
        },
        "why": (doc.get("base_selection") or {}).get("why"),
        "form": doc.get("form", "log_affine"),
        "source": (
            {k: source[k] for k in ("dataset", "section", "borrowed_from", "models") if k in source}
            or None
        ),
    }
