"""The measurement schema, its validation, and the readers of the tidy tables.

Training reads only the tidy tables written by the importers (`leti.measurements.importers`)
and by `leti measure`: `kernels.csv` and `e2e.csv`, never the source files. One row per
measured kernel and one per end-to-end measurement, latencies in ms, shapes in the same
vocabulary as `leti.core.records.Kernel`, so that a measured row and an ONNX-derived kernel
describe the same thing.

Imported copies live in git-ignored `measurements/<source>/` folders: the data is licensed by
others and is never committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from leti.core.errors import MeasurementError, UnknownSocError
from leti.core.records import KERNEL_KINDS
from leti.core.socs import resolve, resolve_runtime
from leti.core.store import measurements_dir, sha256_file

SCHEMA_VERSION = 1
KERNELS_FILE = "kernels.csv"
E2E_FILE = "e2e.csv"
MANIFEST_FILE = "import.json"

# fmt: off
KERNEL_COLUMNS: tuple[str, ...] = (
    "soc", "runtime", "model", "source_row", "op", "kind",
    "h_in", "w_in", "c_in", "h_out", "w_out", "c_out", "kernel", "stride", "groups", "pad",
    "flops", "fused", "latency_ms", "gpu_kernel", "source",
)
E2E_COLUMNS: tuple[str, ...] = (
    "soc", "runtime", "model", "latency_ms", "std_ms", "flops", "params_bytes", "graph", "source",
)
#: Regressor kinds a kernel row may carry (`leti.core.records.KERNEL_KINDS`, as a set).
KINDS: frozenset[str] = frozenset(KERNEL_KINDS)
_KERNEL_STR = ("soc", "runtime", "model", "op", "kind", "fused", "gpu_kernel", "source")
_KERNEL_INT = (
    "source_row", "h_in", "w_in", "c_in", "h_out", "w_out", "c_out", "kernel", "stride", "groups",
    "pad", "flops",
)
# fmt: on
_SHAPE_REQUIRED = ("h_in", "w_in", "c_in", "h_out", "w_out", "c_out")
_SHAPE_POSITIVE = (*_SHAPE_REQUIRED, "kernel", "stride", "groups")
_E2E_STR = ("soc", "runtime", "model", "graph", "source")
_E2E_INT = ("flops", "params_bytes")


# --------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class Rejection:
    """Why a candidate row is unusable: the reason it is counted under, and a short detail."""

    reason: str
    detail: str = ""


def parse_latency(cell: Any) -> float | Rejection:
    """A positive finite latency, or why it is not one (an empty cell means not measured)."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return Rejection("no_measurement", "empty cell")
    text = str(cell).strip()
    if not text:
        return Rejection("no_measurement", "empty cell")
    try:
        value = float(text)
    except ValueError:
        return Rejection("non_numeric_latency", repr(text[:40]))
    if not math.isfinite(value):
        return Rejection("nan_latency", repr(text[:40]))
    if value <= 0:
        return Rejection("non_positive_latency", repr(text[:40]))
    return value


def parse_fused(gpu_kernel: str) -> str:
    """Elementwise ops the GPU linked into a kernel, in order: 'conv_1_linked_:_add_2' -> 'add'.

    Names are `<op>_<idx>` segments joined by `_linked_:_`; the first segment is the kernel
    itself, the rest are what was fused into it.
    """
    parts = [p for p in str(gpu_kernel or "").split("_linked_:_") if p]
    words = [re.sub(r"(_\d+)+$", "", p) for p in parts[1:]]
    return "+".join(w for w in words if w)


# --------------------------------------------------------------------------------------------
# Validation


def _strings(series: pd.Series) -> pd.Series:
    return series.astype(object).where(series.notna(), "").astype(str)


def _numbers(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(numeric values, mask of cells that were present but not numeric)."""
    raw = series.astype(object)
    blank = raw.isna() | raw.map(lambda v: isinstance(v, str) and not v.strip())
    values = pd.to_numeric(raw.where(~blank, None), errors="coerce")
    return values, values.isna() & ~blank


def _reject(
    mask: pd.Series, reason: str, reasons: pd.Series, detail: pd.Series, text: pd.Series | str
) -> None:
    """Mark rows under `mask` with `reason` unless an earlier check already rejected them."""
    fresh = mask & reasons.eq("")
    reasons[fresh] = reason
    detail[fresh] = text[fresh] if isinstance(text, pd.Series) else text


def _show(df: pd.DataFrame, col: str) -> pd.Series:
    return col + "=" + df[col].astype(object).map(repr)


def _check_columns(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise MeasurementError(f"{what} rows lack columns {missing}; expected {list(columns)}")


def _validate_latency(
    df: pd.DataFrame, column: str, reasons: pd.Series, detail: pd.Series
) -> pd.Series:
    values = df[column].astype(object)
    for i, cell in values.items():
        if reasons[i]:
            continue
        latency = parse_latency(cell)
        if isinstance(latency, Rejection):
            reasons[i], detail[i] = latency.reason, f"{column}={latency.detail}"
    return pd.to_numeric(values.where(reasons.eq(""), None), errors="coerce")


def _start_validation(
    df: pd.DataFrame, columns: tuple[str, ...], str_columns, what: str
) -> tuple[pd.DataFrame, pd.Series, pd.Series, pd.Series]:
    """The checks both tables share: columns, text cells, row keys and a positive latency.

    Returns (frame in schema order, per-row reject reason, detail, latency as numbers)."""
    _check_columns(df, columns, what)
    df = df.loc[:, list(columns)].reset_index(drop=True)
    reasons = pd.Series("", index=df.index, dtype=object)
    detail = pd.Series("", index=df.index, dtype=object)
    for col in str_columns:
        df[col] = _strings(df[col])
    keys = (df[["soc", "runtime", "model"]] == "").any(axis=1)
    _reject(keys, "missing_key", reasons, detail, "empty soc, runtime or model")
    latency = _validate_latency(df, "latency_ms", reasons, detail)
    return df, reasons, detail, latency


def partition_kernel_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid rows in schema order and dtypes, rejected rows with `reason` and `detail`)."""
    df, reasons, detail, latency = _start_validation(df, KERNEL_COLUMNS, _KERNEL_STR, "kernel")
    _reject(~df["kind"].isin(KINDS), "unknown_op", reasons, detail, _show(df, "kind"))
    ints: dict[str, pd.Series] = {}
    for col in _KERNEL_INT:
        values, junk = _numbers(df[col])
        fractional = values.notna() & (values != values.round())
        bad = junk | fractional
        if col in _SHAPE_REQUIRED:
            bad |= values.isna() | (values <= 0)
        elif col in _SHAPE_POSITIVE:
            bad |= values <= 0
        else:  # pad, flops, source_row: absent is fine, negative is not
            bad |= values < 0
        _reject(bad, "bad_shape", reasons, detail, _show(df, col))
        ints[col] = values
    for col, values in ints.items():
        df[col] = values.where(reasons.eq(""), None).round().astype("Int64")
    df["latency_ms"] = latency.astype(float)
    keyed = reasons.eq("") & df["source_row"].notna()
    dup = df[keyed].duplicated(["soc", "runtime", "model", "source_row"], keep="first")
    dup = dup.reindex(df.index, fill_value=False)
    _reject(dup, "duplicate", reasons, detail, "same soc, runtime, model and source_row")
    ok = reasons.eq("")
    rejected = df[~ok].assign(reason=reasons[~ok], detail=detail[~ok])
    return df[ok].reset_index(drop=True), rejected


def validate_kernel_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the rows that satisfy the schema; count the others by reason.

    Shared by the importers and by `leti measure`, so that new measurements meet the same bar
    as imported ones. Raises `MeasurementError` only when columns are missing.
    """
    ok, rejected = partition_kernel_rows(df)
    return ok, dict(Counter(rejected["reason"]))


def partition_e2e_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The end-to-end counterpart of `partition_kernel_rows`."""
    df, reasons, detail, latency = _start_validation(df, E2E_COLUMNS, _E2E_STR, "end-to-end")
    std, junk = _numbers(df["std_ms"])
    bad_std = junk | (std < 0) | (std.notna() & ~std.map(math.isfinite).astype(bool))
    _reject(bad_std, "bad_std", reasons, detail, _show(df, "std_ms"))
    for col in _E2E_INT:
        values, junk = _numbers(df[col])
        bad = junk | (values < 0) | (values.notna() & (values != values.round()))
        _reject(bad, "bad_feature", reasons, detail, _show(df, col))
        df[col] = values.where(reasons.eq(""), None).round().astype("Int64")
    df["latency_ms"] = latency.astype(float)
    df["std_ms"] = std.astype(float)
    dup = df[reasons.eq("")].duplicated(["soc", "runtime", "model"], keep="first")
    dup = dup.reindex(df.index, fill_value=False)
    _reject(dup, "duplicate", reasons, detail, "same soc, runtime and model")
    ok = reasons.eq("")
    rejected = df[~ok].assign(reason=reasons[~ok], detail=detail[~ok])
    return df[ok].reset_index(drop=True), rejected


def validate_e2e_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """The end-to-end counterpart of `validate_kernel_rows`."""
    ok, rejected = partition_e2e_rows(df)
    return ok, dict(Counter(rejected["reason"]))


# --------------------------------------------------------------------------------------------
# Files


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A table as UTF-8 CSV bytes: no index column, `\\n` line ends."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------------
# Readers


def _root(measurements_root: Path | None) -> Path:
    return Path(measurements_root) if measurements_root is not None else measurements_dir()


@dataclass(frozen=True)
class _Table:
    """How one table is stored: its file name and which columns hold which dtype."""

    file: str
    columns: tuple[str, ...]
    strs: tuple[str, ...]
    ints: tuple[str, ...]
    floats: tuple[str, ...]


_KERNELS_TABLE = _Table(KERNELS_FILE, KERNEL_COLUMNS, _KERNEL_STR, _KERNEL_INT, ("latency_ms",))
_E2E_TABLE = _Table(E2E_FILE, E2E_COLUMNS, _E2E_STR, _E2E_INT, ("latency_ms", "std_ms"))


def _typed(frame: pd.DataFrame, path: Path, table: _Table) -> pd.DataFrame:
    """Cast a table read as text to the schema's dtypes, failing with the file and column."""
    for col in table.strs:
        frame[col] = frame[col].astype(str)
    for col in (*table.ints, *table.floats):
        values, junk = _numbers(frame[col])
        if junk.any():
            first = frame.loc[junk, col].iloc[0]
            raise MeasurementError(f"{path}: column {col!r} has non-numeric value {first!r}")
        if col in table.floats:
            frame[col] = values.astype(float)
        elif (values.notna() & (values != values.round())).any():
            raise MeasurementError(f"{path}: column {col!r} has non-integer values")
        else:
            frame[col] = values.round().astype("Int64")
    return frame


def _load(root: Path, table: _Table) -> pd.DataFrame:
    frames = []
    for path in sorted(root.glob(f"*/{table.file}")):
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise MeasurementError(f"cannot read {path}: {exc}") from exc
        missing = [c for c in table.columns if c not in frame.columns]
        if missing:
            raise MeasurementError(f"{path}: missing columns {missing}; re-run the import")
        frames.append(_typed(frame.loc[:, list(table.columns)].copy(), path, table))
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=object) for c in table.columns})
        return _typed(empty, root, table)
    return pd.concat(frames, ignore_index=True)


def _filter(frame: pd.DataFrame, soc: str | None, runtime: str | None) -> pd.DataFrame:
    if soc is not None:
        # A SoC the registry does not list yet (measured by `leti measure`) matches its raw id.
        with contextlib.suppress(UnknownSocError):
            soc = resolve(soc).id
        frame = frame[frame["soc"] == soc]
    if runtime is not None:
        frame = frame[frame["runtime"] == resolve_runtime(runtime)]
    return frame.reset_index(drop=True)


def load_kernels(
    measurements_root: Path | None = None, soc: str | None = None, runtime: str | None = None
) -> pd.DataFrame:
    """Every `<root>/*/kernels.csv` in one frame with schema dtypes, optionally filtered.

    `soc` accepts any registry alias. An empty frame (not an error) when nothing is imported.
    """
    frame = _load(_root(measurements_root), _KERNELS_TABLE)
    return _filter(frame, soc, runtime)


def load_e2e(
    measurements_root: Path | None = None, soc: str | None = None, runtime: str | None = None
) -> pd.DataFrame:
    """Every `<root>/*/e2e.csv` in one frame; `std_ms`, `flops`, `params_bytes` may be NA."""
    frame = _load(_root(measurements_root), _E2E_TABLE)
    return _filter(frame, soc, runtime)


def data_manifest(measurements_root: Path | None = None) -> dict[str, Any]:
    """What is imported, for model manifests: per source its licence and hashes.

    `consistent` is False when a folder's tables no longer match the hashes its import
    recorded (edited by hand, or a crash between two file replacements).
    """
    root = _root(measurements_root)
    sources: dict[str, Any] = {}
    combined = hashlib.sha256()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        tables = {f: folder / f for f in (KERNELS_FILE, E2E_FILE) if (folder / f).is_file()}
        if not tables:
            continue
        hashes = {f: sha256_file(p) for f, p in tables.items()}
        entry: dict[str, Any] = {"tables": hashes}
        manifest_path = folder / MANIFEST_FILE
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text("utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise MeasurementError(f"unreadable manifest {manifest_path}: {exc}") from exc
            recorded = {f: o.get("sha256") for f, o in manifest.get("outputs", {}).items()}
            entry.update(
                source=manifest.get("source", folder.name),
                licence=manifest.get("licence"),
                data_sha256=manifest.get("data_sha256"),
                files={f: m.get("sha256") for f, m in manifest.get("files", {}).items()},
                leti_version=manifest.get("leti_version"),
                created=manifest.get("created"),
                consistent=all(recorded.get(f) == h for f, h in hashes.items()),
            )
        else:
            entry.update(source=folder.name, licence=None, data_sha256=None, consistent=True)
        sources[folder.name] = entry
        for f in sorted(hashes):
            combined.update(f"{folder.name}/{f}:{hashes[f]}\n".encode())
    return {"root": str(root), "sources": sources, "tables_sha256": combined.hexdigest()}
