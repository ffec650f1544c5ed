"""The importer for the public mobile-ml-benchmark data: four source CSVs in, tidy tables out.

It maps each source's quirks (microseconds, per-op feature dicts, phone columns) onto the schema
of `leti.measurements.schema`, so a new source is one importer. Rows go through the same
validation as `leti measure`'s. Every file is written atomically, and re-importing replaces the
folder's files with byte-identical ones when the source has not changed.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from leti.core.errors import MeasurementError
from leti.core.socs import soc_for_phone
from leti.core.store import atomic_write_bytes, atomic_write_json, measurements_dir, sha256_file
from leti.core.version import VERSION
from leti.measurements.schema import (
    E2E_COLUMNS,
    E2E_FILE,
    KERNEL_COLUMNS,
    KERNELS_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    Rejection,
    csv_bytes,
    parse_fused,
    parse_latency,
    partition_e2e_rows,
    partition_kernel_rows,
)

SOURCE_NAME = "mobile-ml-benchmark"

# The four files of the benchmark, which table each feeds, and the runtimes its phone columns
# may belong to (tried in order against the SoC registry: in torch_* `iphonexs` ran Metal).
_FILES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tflite_cnn_ops_gpu.csv", "kernels", ("tflite-gpu",)),
    ("tflite_cnn_e2e.csv", "e2e", ("tflite-gpu",)),
    ("torch_cnn_ops_gpu.csv", "kernels", ("pytorch-vulkan", "pytorch-metal")),
    ("torch_cnn_e2e.csv", "e2e", ("pytorch-vulkan", "pytorch-metal")),
)
_OPS_LATENCY = re.compile(r"^(?P<phone>[^|]+)\|gpu\|float$")
_E2E_LATENCY = re.compile(r"^(?P<phone>[^|]+)\|gpu\|float\|mean$")
_LICENCE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "COPYING")
_SAFE_MODEL = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$")
_MAX_FEATURE_CHARS = 10_000
_EXAMPLES_PER_REASON = 3

_TFLITE_KINDS = {
    "CONV_2D": "conv",
    "DEPTHWISE_CONV_2D": "dwconv",
    "CONV_2D_GROUP": "gconv",
    "FULLY_CONNECTED": "fc",
    "MAX_POOL_2D": "pool_max",
    "AVERAGE_POOL_2D": "pool_avg",
    "MEAN": "pool_global",
    "CONCATENATION": "concat",
}
_TORCH_KINDS = {
    "vulkan_prepack::run_conv2d_context": "conv",
    "vulkan_prepack::run_linear_context": "fc",
    "vulkan_prepack::run_batchnorm_context": "bn",
    "aten::add": "add",
    "aten::mul": "mul",
    "aten::relu": "act",
    "aten::hardswish": "act",
    "aten::sigmoid": "act",
    "aten::adaptive_avg_pool2d": "pool_global",
    "aten::avg_pool2d": "pool_avg",
    "aten::max_pool2d": "pool_max",
}


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class FileReport:
    """What became of one source file, so a surprising count can be traced to its file."""

    name: str
    table: str  # "kernels" | "e2e"
    sha256: str
    source_rows: int
    written: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportReport:
    """The outcome of an import: written rows, and every rejected one counted by reason."""

    source: str
    source_path: str
    out_dir: str
    data_sha256: str
    written: dict[str, int]  # table ("kernels", "e2e") -> rows written
    rejected: dict[str, int]  # reason -> candidate rows rejected, over all files
    examples: dict[str, list[str]]  # reason -> a few "file row N (phone): detail" lines
    by_target: dict[str, dict[str, int]]  # "soc/runtime" -> {"kernels": n, "e2e": m}
    files: list[FileReport]
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"imported {self.source} from {self.source_path}",
            f"  into {self.out_dir}",
            f"  data sha256 {self.data_sha256[:16]}...",
            f"  rows written: {self.written.get('kernels', 0)} kernels, "
            f"{self.written.get('e2e', 0)} end-to-end",
            f"  {'soc/runtime':<34}{'kernels':>9}{'e2e':>6}",
        ]
        for target, counts in sorted(self.by_target.items()):
            lines.append(f"  {target:<34}{counts.get('kernels', 0):>9}{counts.get('e2e', 0):>6}")
        total = sum(self.rejected.values())
        lines.append(f"  rejected: {total} candidate rows")
        for reason, count in sorted(self.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {reason:<24}{count:>7}")
            lines.extend(f"      e.g. {ex}" for ex in self.examples.get(reason, [])[:2])
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Row parsing


class _Reject(Exception):
    """A candidate row is unusable: raised inside this module, counted by `_Tally`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _latency(cell: Any) -> float:
    """The cell's positive latency, or `_Reject` with the schema's reason."""
    latency = parse_latency(cell)
    if isinstance(latency, Rejection):
        raise _Reject(latency.reason, latency.detail)
    return latency


def _feature_dict(text: str) -> dict[str, Any]:
    """Parse the feature column with `ast.literal_eval`: data is never executed."""
    if len(text) > _MAX_FEATURE_CHARS:
        raise _Reject("unparseable_feature", f"{len(text)} characters")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _Reject("unparseable_feature", repr(text[:60])) from None
    if not isinstance(value, dict):
        raise _Reject("unparseable_feature", f"not a dict: {text[:60]!r}")
    return value


def _as_int(value: Any) -> int | None:
    """Integers as the data writes them ('224', 224, 224.0, [3, 3]); '-' or '' mean absent."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text in ("", "-"):
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _need(feat: dict[str, Any], key: str) -> int:
    value = _as_int(feat.get(key))
    if value is None:
        raise _Reject("bad_feature", f"{key}={feat.get(key)!r}")
    return value


def _opt(feat: dict[str, Any], key: str) -> int | None:
    if key in feat and feat[key] not in ("-", "", None) and _as_int(feat[key]) is None:
        raise _Reject("bad_feature", f"{key}={feat[key]!r}")
    return _as_int(feat.get(key))


def _same_pad(h_in: int, h_out: int, kernel: int, stride: int) -> int:
    """TFLite's total padding along H: what SAME needs, 0 for VALID. Exact given the shapes."""
    return max(0, (h_out - 1) * stride + kernel - h_in)


def _geometry(
    kind: str,
    h_in: int,
    c_in: int,
    h_out: int,
    c_out: int,
    *,
    kernel: int = 1,
    stride: int = 1,
    groups: int = 1,
    pad: int | None = 0,
    flops: int | None = None,
) -> dict[str, Any]:
    """One row's geometry. Square planes (the data gives H only); defaults as `records.Kernel`."""
    return {
        "kind": kind,
        **{"h_in": h_in, "w_in": h_in, "c_in": c_in, "h_out": h_out, "w_out": h_out},
        **{"c_out": c_out, "kernel": kernel, "stride": stride, "groups": groups, "pad": pad},
        "flops": flops,
    }


def _tflite_row(op: str, feat: dict[str, Any]) -> dict[str, Any]:
    kind = _TFLITE_KINDS[op]
    flops = _opt(feat, "FLOPS")
    if kind == "fc":
        return _geometry(
            kind, 1, _need(feat, "Input_channel"), 1, _need(feat, "Filter"), flops=flops
        )
    h_in, c_in = _need(feat, "Input_shape"), _need(feat, "Input_channel")
    if kind == "pool_global":  # MEAN: Output_shape holds the channel count, not a size
        return _geometry(kind, h_in, c_in, 1, c_in, kernel=h_in, flops=flops)
    if kind == "concat":  # Input_channel: the first input's; Filter: the output's channels
        c_out = _opt(feat, "Filter") or c_in
        return _geometry(kind, h_in, c_in, _opt(feat, "Output_shape") or h_in, c_out, flops=flops)
    h_out, kernel, stride = (_need(feat, k) for k in ("Output_shape", "Kernel", "Stride"))
    pad = _same_pad(h_in, h_out, kernel, stride)
    if kind in ("pool_max", "pool_avg"):
        if kind == "pool_avg" and h_out == 1 and kernel == h_in:
            kind = "pool_global"
        return _geometry(
            kind, h_in, c_in, h_out, c_in, kernel=kernel, stride=stride, pad=pad, flops=flops
        )
    if kind == "dwconv":  # Filter is the multiplier (1): the output keeps the input's channels
        c_out, groups = c_in, c_in
    else:
        c_out = _need(feat, "Filter")
        groups = (_opt(feat, "Group") or 1) if kind == "gconv" else 1
    return _geometry(
        kind,
        h_in,
        c_in,
        h_out,
        c_out,
        kernel=kernel,
        stride=stride,
        groups=groups,
        pad=pad,
        flops=flops,
    )


def _torch_row(op: str, feat: dict[str, Any]) -> dict[str, Any]:
    kind = _TORCH_KINDS[op]
    flops = _opt(feat, "flops")
    if kind == "fc":  # input_shape / output_shape are feature counts here
        c_in, c_out = _need(feat, "input_shape"), _need(feat, "output_shape")
        return _geometry(kind, 1, c_in, 1, c_out, flops=flops)
    h_in, c_in = _need(feat, "input_shape"), _need(feat, "input_channel")
    if kind in ("add", "mul", "act", "bn"):
        return _geometry(kind, h_in, c_in, h_in, c_in, flops=flops)
    if kind == "pool_avg" and _opt(feat, "output_shape") in (None, 1):
        kind = "pool_global"  # pytorchcv's final AvgPool2d: logged without an output shape
    if kind == "pool_global":
        return _geometry(kind, h_in, c_in, 1, c_in, kernel=h_in, flops=flops)
    h_out, kernel, stride = (_need(feat, k) for k in ("output_shape", "kernel_size", "stride"))
    padding = _opt(feat, "padding")
    pad = None if padding is None else 2 * padding
    if kind != "conv":  # max/avg pool
        return _geometry(
            kind, h_in, c_in, h_out, c_in, kernel=kernel, stride=stride, pad=pad, flops=flops
        )
    c_out = _need(feat, "output_channel")
    groups = _opt(feat, "groups")
    filter_size = _opt(feat, "filter_size")
    if groups is None and filter_size:  # depthwise rows omit `groups`; the weight count has it
        whole, rest = divmod(c_in * c_out * kernel * kernel, filter_size)
        groups = whole if rest == 0 and whole > 0 else None
    groups = groups or 1
    if groups > 1:
        kind = "dwconv" if groups == c_in else "gconv"
    return _geometry(
        kind,
        h_in,
        c_in,
        h_out,
        c_out,
        kernel=kernel,
        stride=stride,
        groups=groups,
        pad=pad,
        flops=flops,
    )


# --------------------------------------------------------------------------------------------
# Import


@dataclass
class _Tally:
    """Rejections of one import, per file and reason, with a few examples to show."""

    by_file: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, file: str, reason: str, example: str) -> None:
        self.by_file.setdefault(file, Counter())[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(f"{file} {example}")


def _read_source(path: Path, required: tuple[str, ...], latency: re.Pattern[str]) -> pd.DataFrame:
    """Read every cell as text so that validation, not the CSV parser, decides what is bad."""
    if not path.is_file():
        raise MeasurementError(f"source file missing: {path}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig"
        )
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise MeasurementError(f"cannot read {path}: {exc}") from exc
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise MeasurementError(f"{path.name}: duplicate header columns {dupes}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise MeasurementError(f"{path.name}: header lacks required columns {missing}")
    if not any(latency.match(c) for c in frame.columns):
        raise MeasurementError(f"{path.name}: header has no GPU latency column ({latency.pattern})")
    return frame


def _target(runtimes: tuple[str, ...], phone: str) -> tuple[str, str] | None:
    """(soc id, runtime) for a phone column prefix, or None when the registry does not know it."""
    for runtime in runtimes:
        soc = soc_for_phone(runtime, phone)
        if soc is not None:
            return soc.id, runtime
    return None


def _phones(frame: pd.DataFrame, latency: re.Pattern[str]) -> list[tuple[str, str]]:
    return [(m["phone"], c) for c in frame.columns if (m := latency.match(c))]


def _import_kernels(
    path: Path, runtimes: tuple[str, ...], tally: _Tally
) -> tuple[list[dict[str, Any]], int]:
    """Candidate rows of one ops file (one per row x GPU phone column) and the source row count."""
    frame = _read_source(path, ("model", "operation", "feature"), _OPS_LATENCY)
    source = f"{SOURCE_NAME}/{path.name}"
    is_tflite = runtimes[0] == "tflite-gpu"
    kinds, to_row = (_TFLITE_KINDS, _tflite_row) if is_tflite else (_TORCH_KINDS, _torch_row)
    columns = [
        (phone, col, _target(runtimes, phone)) for phone, col in _phones(frame, _OPS_LATENCY)
    ]
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict("records")):
        op, model = rec["operation"].strip(), rec["model"].strip()
        try:
            if op not in kinds:
                raise _Reject("unknown_op", repr(op[:60]))
            geometry: dict[str, Any] | _Reject = to_row(op, _feature_dict(rec["feature"]))
        except _Reject as bad:
            geometry = bad
        for phone, col, target in columns:
            cell = rec[col]
            gpu_kernel = rec.get(col.replace("|float", "|kernel"), "").strip()
            try:
                if target is None:
                    raise _Reject("unknown_phone", f"column {col!r}")
                latency = _latency(cell)
                if isinstance(geometry, _Reject):
                    raise geometry
            except _Reject as bad:
                tally.add(path.name, bad.reason, f"row {i} ({phone}): {bad.detail}")
                continue
            rows.append(
                {
                    "soc": target[0],
                    "runtime": target[1],
                    "model": model,
                    "source_row": i,
                    "op": op,
                    **geometry,
                    "fused": parse_fused(gpu_kernel),
                    "latency_ms": round(latency / 1000.0, 9),
                    "gpu_kernel": gpu_kernel,
                    "source": source,
                    "_where": f"row {i} ({phone})",
                }
            )
    return rows, len(frame)


def _graph_path(zoo_dir: Path | None, model: str) -> str:
    if zoo_dir is None or not _SAFE_MODEL.match(model):
        return ""
    path = zoo_dir / f"{model}.onnx"
    return str(path.resolve()) if path.is_file() else ""


def _import_e2e(
    path: Path, runtimes: tuple[str, ...], zoo_dir: Path | None, tally: _Tally
) -> tuple[list[dict[str, Any]], int]:
    frame = _read_source(path, ("model",), _E2E_LATENCY)
    source = f"{SOURCE_NAME}/{path.name}"
    flops_col = next((c for c in ("FLOPS", "flops") if c in frame.columns), None)
    columns = [
        (phone, col, _target(runtimes, phone)) for phone, col in _phones(frame, _E2E_LATENCY)
    ]
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(frame.to_dict("records")):
        model = rec["model"].strip()
        for phone, col, target in columns:
            try:
                if target is None:
                    raise _Reject("unknown_phone", f"column {col!r}")
                latency = _latency(rec[col])
                std_text = rec.get(col[: -len("mean")] + "std", "").strip()
                std = float(std_text) / 1000.0 if _is_float(std_text) else std_text
            except _Reject as bad:
                tally.add(path.name, bad.reason, f"row {i} ({phone}): {bad.detail}")
                continue
            rows.append(
                {
                    "soc": target[0],
                    "runtime": target[1],
                    "model": model,
                    "latency_ms": round(latency / 1000.0, 9),
                    "std_ms": round(std, 9) if isinstance(std, float) else std,
                    "flops": rec.get(flops_col, "") if flops_col else "",
                    "params_bytes": rec.get("size", ""),
                    "graph": _graph_path(zoo_dir, model),
                    "source": source,
                    "_where": f"row {i} ({phone})",
                }
            )
    return rows, len(frame)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _finish(
    rows: list[dict[str, Any]],
    validate: Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame]],
    columns: tuple[str, ...],
    sort_by: list[str],
    tally: _Tally,
) -> pd.DataFrame:
    """Run table-level validation over the candidates, count its rejections, sort stably."""
    frame = pd.DataFrame(rows, columns=[*columns, "_where"])
    ok, rejected = validate(frame.drop(columns="_where"))
    for i, rej in rejected.iterrows():
        file = str(rej["source"]).rsplit("/", 1)[-1]
        tally.add(file, rej["reason"], f"{frame.at[i, '_where']}: {rej['detail']}")
    return ok.sort_values(sort_by, kind="mergesort").reset_index(drop=True)


def _licence(src: Path) -> dict[str, str] | None:
    for name in _LICENCE_NAMES:
        path = src / name
        if path.is_file():
            lines = path.read_text("utf-8", errors="replace").splitlines()
            first = next((ln.strip() for ln in lines if ln.strip()), "")
            return {"file": name, "first_line": first, "sha256": sha256_file(path)}
    return None


def import_mobile_ml_benchmark(
    src: Path, out_dir: Path | None = None, zoo_dir: Path | None = None
) -> ImportReport:
    """Import the four GPU files of mobile-ml-benchmark into `out_dir` (kernels, e2e, manifest).

    Bad rows are counted and skipped; a missing file or header aborts with `MeasurementError`
    before anything is written, so a failed import never leaves a half-updated folder behind.
    """
    src = Path(src)
    if not src.is_dir():
        raise MeasurementError(f"source folder not found: {src}")
    out = Path(out_dir) if out_dir is not None else measurements_dir() / SOURCE_NAME
    if zoo_dir is None:
        guess = src.resolve().parent.parent / "zoo" / SOURCE_NAME
        zoo_dir = guess if guess.is_dir() else None
    elif not Path(zoo_dir).is_dir():
        raise MeasurementError(f"zoo folder not found: {zoo_dir}")
    zoo = Path(zoo_dir).resolve() if zoo_dir is not None else None

    tally = _Tally()
    kernel_rows: list[dict[str, Any]] = []
    e2e_rows: list[dict[str, Any]] = []
    files: list[FileReport] = []
    for name, table, runtimes in _FILES:
        path = src / name
        if table == "kernels":
            rows, n = _import_kernels(path, runtimes, tally)
            kernel_rows += rows
        else:
            rows, n = _import_e2e(path, runtimes, zoo, tally)
            e2e_rows += rows
        files.append(FileReport(name, table, sha256_file(path), n))

    kernels = _finish(
        kernel_rows,
        partition_kernel_rows,
        KERNEL_COLUMNS,
        ["source", "soc", "runtime", "model", "source_row"],
        tally,
    )
    e2e = _finish(
        e2e_rows, partition_e2e_rows, E2E_COLUMNS, ["source", "soc", "runtime", "model"], tally
    )

    for report in files:
        src_name = f"{SOURCE_NAME}/{report.name}"
        table = kernels if report.table == "kernels" else e2e
        report.written = int((table["source"] == src_name).sum())
        report.rejected = dict(sorted(tally.by_file.get(report.name, Counter()).items()))
    data_hash = hashlib.sha256()
    for report in sorted(files, key=lambda r: r.name):
        data_hash.update((src / report.name).read_bytes())

    kernels_bytes, e2e_bytes = csv_bytes(kernels), csv_bytes(e2e)
    by_target: dict[str, dict[str, int]] = {}
    for table, frame in (("kernels", kernels), ("e2e", e2e)):
        for (soc, runtime), n in frame.groupby(["soc", "runtime"]).size().items():
            by_target.setdefault(f"{soc}/{runtime}", {"kernels": 0, "e2e": 0})[table] = int(n)
    rejected: Counter = Counter()
    for counts in tally.by_file.values():
        rejected.update(counts)
    licence = _licence(src)
    warnings = [] if licence else [f"no licence file ({'/'.join(_LICENCE_NAMES)}) in {src}"]
    if zoo is None:
        warnings.append("no ONNX zoo folder found: e2e rows have no graph paths")

    report = ImportReport(
        source=SOURCE_NAME,
        source_path=str(src.resolve()),
        out_dir=str(out),
        data_sha256=data_hash.hexdigest(),
        written={"kernels": len(kernels), "e2e": len(e2e)},
        rejected=dict(sorted(rejected.items())),
        examples={k: v for k, v in sorted(tally.examples.items())},
        by_target=dict(sorted(by_target.items())),
        files=files,
        warnings=warnings,
    )
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": SOURCE_NAME,
        "source_path": report.source_path,
        "licence": licence,
        "zoo_dir": str(zoo) if zoo else None,
        "data_sha256": report.data_sha256,
        "files": {
            r.name: {
                "table": r.table,
                "sha256": r.sha256,
                "source_rows": r.source_rows,
                "written": r.written,
                "rejected": r.rejected,
            }
            for r in files
        },
        "outputs": {
            KERNELS_FILE: {
                "rows": len(kernels),
                "sha256": hashlib.sha256(kernels_bytes).hexdigest(),
            },
            E2E_FILE: {"rows": len(e2e), "sha256": hashlib.sha256(e2e_bytes).hexdigest()},
        },
        "rows_by_target": report.by_target,
        "rejected": report.rejected,
        "leti_version": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Manifest last: its output hashes let a reader notice a folder left between two imports.
    atomic_write_bytes(out / KERNELS_FILE, kernels_bytes)
    atomic_write_bytes(out / E2E_FILE, e2e_bytes)
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return report
