"""`leti measure`: time a model on a phone with TFLite's `benchmark_model` and store the rows.

One `benchmark_model --use_gpu=true --enable_op_profiling=true` run gives the end-to-end latency
(`Inference (avg)`) and, when the GPU delegate reports its kernels ("Delegate internal" rows
named like `convolution_2d_5_linked_:_add_6_linked_:_relu_7`), one latency per GPU kernel.
Those are paired with the ONNX graph's `tflite-gpu` plan in order within each kernel family
(geometry from the plan, `fused` from the GPU name), validated like imported rows, and merged
atomically into `<measurements>/<source-name>/`: existing rows are never dropped, and a key
(soc, runtime, model, source_row) already present keeps its old row. `--from-log` parses a
captured log instead of using a device. Op profiling syncs per kernel: e2e may read high.

The steps, which `leti measure` (in `leti.cli`) strings together and reports:

    job = prepare_measurement("snapdragon855", "net.onnx", tflite="net.tflite")
    run = run_on_device(job)            # or read_log(job, "captured.log")
    report = ingest(job, run)           # a MeasureReport; the tables are written
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from leti.core import store
from leti.core.errors import DeviceError, MeasurementError  # DeviceError: importable from here
from leti.core.records import Graph, KernelPlan
from leti.core.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from leti.core.version import VERSION
from leti.measurements import schema as lm
from leti.measurements.importers import SOURCE_NAME
from leti.measurements.schema import parse_fused

RUNTIME = "tflite-gpu"
REMOTE_DIR = "/data/local/tmp"
DEFAULT_BENCHMARK_BINARY = f"{REMOTE_DIR}/benchmark_model"
NO_KERNELS = "only end-to-end timing available: the delegate did not report per-kernel times"
_OPS = {"conv": "CONV_2D", "dwconv": "DEPTHWISE_CONV_2D", "gconv": "CONV_2D_GROUP"}
_OPS |= {"fc": "FULLY_CONNECTED", "pool_max": "MAX_POOL_2D", "pool_avg": "AVERAGE_POOL_2D"}
_OPS |= {"pool_global": "MEAN", "concat": "CONCATENATION"}
_GPU_NAME = re.compile(r"^[a-z][a-z0-9_]*?_\d+(?:_linked_:_[a-z][a-z0-9_]*?_\d+)*$")
_LOG_PREFIX = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): ")
_INFERENCE = re.compile(r"Inference timings in us:.*Inference \(avg\):\s*([0-9.eE+]+)")
_COUNT = re.compile(r"^count=\d+\b.*\bavg=([0-9.eE+]+)\s+std=([0-9.eE+]+)")
_NOT_DELEGATED = re.compile(
    r"(failed to (?:apply|create) (?:the )?gpu delegate|will not be executed by the delegate)", re.I
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class GpuKernelTime:
    name: str  # e.g. convolution_2d_2_linked_:_add_3_linked_:_relu_4
    avg_ms: float
    row: int  # 0-based position among the GPU kernel rows, in run order


@dataclass(frozen=True)
class BenchmarkLog:
    e2e_ms: float
    std_ms: float | None
    kernels: list[GpuKernelTime]
    other_ops: list[str]  # profiled rows that are not GPU kernels: the delegate node, CPU ops


def _table_rows(lines: list[str], start: int) -> tuple[list[dict[str, str]], int]:
    """Rows of the stats table whose `[node type] ... [Name]` header is at `lines[start]`."""
    columns = re.findall(r"\[([^\]]+)\]", lines[start])
    rows, i = [], start + 1
    while i < len(lines) and lines[i].strip() and not lines[i].startswith("="):
        cells = [c.strip() for c in lines[i].strip("\n").split("\t") if c.strip()]
        if len(cells) != len(columns):  # tabs lost in copying: the name is the last token
            cells = lines[i].split(None, len(columns) - 1)
        if len(cells) == len(columns):
            rows.append(dict(zip(columns, cells, strict=True)))
        i += 1
    return rows, i


def _gpu_name(row: dict[str, str]) -> str | None:
    name = re.sub(r":\d+$", "", re.sub(r"^Delegate/", "", row.get("Name", "")))
    for candidate in (name, row.get("node type", "")):
        if _GPU_NAME.match(candidate):
            return candidate
    return None


def parse_benchmark_log(text: str) -> BenchmarkLog:
    """End-to-end and per-GPU-kernel times from `benchmark_model` output (see module doc)."""
    lines = [_LOG_PREFIX.sub("", ln.rstrip("\r")) for ln in text.splitlines()]
    e2e = [float(m.group(1)) for ln in lines if (m := _INFERENCE.search(ln))]
    if not e2e:
        hint = next((ln for ln in lines if _NOT_DELEGATED.search(ln)), "")
        raise MeasurementError(
            "unparseable benchmark log: no 'Inference timings in us: ... Inference (avg)' line"
            + (f" ({hint.strip()})" if hint else "")
        )
    if any(_NOT_DELEGATED.search(ln) for ln in lines):
        raise MeasurementError("the GPU delegate was not applied: this is not a GPU timing")
    stds = [float(m.group(2)) for ln in lines if (m := _COUNT.match(ln.strip()))]
    kernels: list[GpuKernelTime] = []
    other: list[str] = []
    regular = next((i for i, ln in enumerate(lines) if "Regular Benchmark Runs" in ln), None)
    i = regular if regular is not None else len(lines)
    while i < len(lines):
        if "Run Order" in lines[i] and i + 1 < len(lines) and "[Name]" in lines[i + 1]:
            rows, i = _table_rows(lines, i + 1)
            for row in rows:
                name = _gpu_name(row)
                if name is None or row.get("node type", "").isupper():
                    other.append(row.get("node type", "?"))
                    continue
                try:
                    ms = float(row["avg ms"])
                except (KeyError, ValueError):
                    raise MeasurementError(f"unparseable profiling row for {name}: {row}") from None
                kernels.append(GpuKernelTime(name, ms, len(kernels)))
            continue
        i += 1
    if not kernels and other and not any("delegate" in op.lower() for op in other):
        raise MeasurementError(f"the GPU delegate was not applied: CPU ops {sorted(set(other))}")
    return BenchmarkLog(e2e[-1] / 1000.0, stds[-1] / 1000.0 if stds else None, kernels, other)


def gpu_family(name: str) -> str | None:
    """The kernel family of a GPU kernel name, or None for kernels leti does not model."""
    base = re.sub(r"(_\d+)+$", "", name.split("_linked_:_")[0])
    if base.startswith("depthwise"):
        return "merged" if "plus_1x1" in base else "dwconv"
    if base.startswith("fully_connected"):
        return "fc"
    if base.startswith("conv") and "transpose" not in base:
        return "conv"
    if base.startswith(("pooling", "mean", "global_pooling")):
        return "pool"
    return "concat" if base.startswith("concat") else None


def kernel_family(k: Any) -> str | None:
    """The family of a planned kernel. A 1x1 conv over a 1x1 plane runs as `fully_connected`."""
    if k.kind == "fc" or (k.kind == "conv" and k.kernel == 1 and (k.h_in, k.w_in) == (1, 1)):
        return "fc"
    if k.kind in ("conv", "gconv"):
        return "conv"
    if k.kind.startswith("pool"):
        return "pool"
    return k.kind if k.kind in ("dwconv", "concat") else None


def match_kernels(
    kernels: list[Any], gpu: list[GpuKernelTime]
) -> tuple[list[tuple[GpuKernelTime, Any]], Counter, list[str]]:
    """Pair GPU kernels with planned kernels, in order within each family.

    A family whose counts differ between the log and the plan is rejected whole: the pairing
    would be ambiguous. Returns (pairs, rejected counts by reason, notes).
    """
    order = {
        fam: [i for i, k in enumerate(kernels) if kernel_family(k) == fam]
        for fam in ("conv", "dwconv", "fc", "pool", "concat")
    }
    used: set[int] = set()

    def take(fam: str, after: int = -1) -> int | None:
        i = next((i for i in order[fam] if i not in used and i > after), None)
        if i is not None:
            used.add(i)
        return i

    rejected: Counter = Counter()
    notes: list[str] = []
    chosen: dict[str, list[tuple[GpuKernelTime, int | None]]] = {f: [] for f in order}
    for g in gpu:
        fam = gpu_family(g.name)
        if fam is None:
            rejected["unmodelled_kernel"] += 1
            notes.append(f"{g.name}: no kernel family leti models")
        elif fam == "merged":  # a depthwise conv and the following 1x1 conv in one kernel
            dw = take("dwconv")
            take("conv", -1 if dw is None else dw)
            rejected["merged_kernel"] += 1
            notes.append(f"{g.name}: two graph kernels in one GPU kernel, no single geometry")
        else:
            chosen[fam].append((g, take(fam)))
    pairs = []
    for fam, items in chosen.items():
        left = [i for i in order[fam] if i not in used]
        if any(i is None for _, i in items) or left:
            rejected["count_mismatch"] += len(items)
            n_plan = sum(i is not None for _, i in items) + len(left)
            notes.append(f"{fam}: {len(items)} GPU kernels but {n_plan} in the graph's plan")
            continue
        pairs += [(g, kernels[i]) for g, i in items]
    for g, k in pairs:
        if parse_fused(g.name) != "+".join(k.fused):
            notes.append(f"{g.name}: linked ops differ from the plan's {'+'.join(k.fused)!r}")
    return sorted(pairs, key=lambda p: p[0].row), rejected, notes


def _merge_table(
    path: Path, new: pd.DataFrame, columns: tuple[str, ...], key: list[str], sort_by: list[str]
) -> tuple[bytes, int, int, int]:
    """(file bytes, rows in it, rows added, rows already present). Old rows are kept as text."""

    def as_text(frame: pd.DataFrame) -> pd.DataFrame:
        buf = frame.to_csv(index=False, lineterminator="\n")
        return pd.read_csv(io.StringIO(buf), dtype=str, keep_default_na=False, na_filter=False)

    fresh = as_text(new.loc[:, list(columns)])
    old = fresh.iloc[0:0]
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
            raise MeasurementError(f"cannot read {path}: {exc}; nothing was written") from exc
        if tuple(old.columns) != columns:
            raise MeasurementError(f"{path}: columns {list(old.columns)} are not the schema's")
    seen = set(old[key].itertuples(index=False, name=None))
    is_new = [t not in seen for t in fresh[key].itertuples(index=False, name=None)]
    merged = pd.concat([old, fresh[is_new]], ignore_index=True)
    merged = merged.sort_values(
        sort_by,
        key=lambda s: pd.to_numeric(s, errors="coerce") if s.name == "source_row" else s,
        kind="mergesort",
    )
    text = merged.to_csv(index=False, lineterminator="\n")
    return text.encode("utf-8"), len(merged), sum(is_new), len(is_new) - sum(is_new)


def _run(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"{what} timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise DeviceError(f"{what} could not run: {exc}") from exc


def _last(text: str, n: int = 800) -> str:
    return text.strip()[-n:]


@dataclass(frozen=True)
class MeasureJob:
    """What to measure and where the rows go; `prepare_measurement` checks it all up front."""

    soc: str  # registry id
    source_name: str  # the folder under the measurements dir
    graph_path: Path
    graph: Graph
    plan: KernelPlan  # the graph's tflite-gpu kernels
    out_dir: Path
    tflite: Path | None = None
    runs: int = 50
    warmup: int = 10


@dataclass(frozen=True)
class BenchmarkRun:
    """A `benchmark_model` log: from the device (kept under `<out>/logs/`) or a captured file."""

    text: str
    serial: str  # the device's, or the log file's name for a captured log
    log_path: Path


@dataclass(frozen=True)
class MeasureReport:
    """What one measurement added to the tables."""

    model: str
    soc: str
    runtime: str
    e2e_ms: float
    std_ms: float | None
    gpu_kernels: int  # GPU kernel rows in the log (0: the delegate reported none)
    kernels_added: int
    kernels_kept: int  # already present: the old row is kept
    e2e_added: int
    e2e_kept: int
    out_dir: Path
    rejected: dict[str, int] = field(default_factory=dict)  # kernel rows, by reason
    notes: list[str] = field(default_factory=list)

    @property
    def kernels_rejected(self) -> int:
        return sum(self.rejected.values())


def prepare_measurement(
    soc: str,
    graph: str | Path,
    *,
    tflite: str | Path | None = None,
    source_name: str | None = None,
    measurements_dir: str | Path | None = None,
    runs: int = 50,
    warmup: int = 10,
) -> MeasureJob:
    """Resolve the SoC, check the options and plan the graph: a bad graph fails before any
    device is touched."""
    from leti.core.socs import resolve
    from leti.frontend.fusion import plan
    from leti.frontend.graph import parse_graph

    soc_id = resolve(soc).id
    name = source_name or f"measure-{soc_id}"
    if not _SAFE_NAME.match(name) or name == SOURCE_NAME:
        raise MeasurementError(f"bad --source-name {name!r}: use a plain, new folder name")
    if runs < 1 or warmup < 0:
        raise MeasurementError("--runs must be >= 1 and --warmup >= 0")
    graph_path = Path(graph).resolve()
    parsed = parse_graph(graph_path)
    return MeasureJob(
        soc=soc_id,
        source_name=name,
        graph_path=graph_path,
        graph=parsed,
        plan=plan(parsed, RUNTIME),
        out_dir=store.measurements_dir(measurements_dir) / name,
        tflite=Path(tflite) if tflite is not None else None,
        runs=runs,
        warmup=warmup,
    )


def run_on_device(
    job: MeasureJob,
    *,
    serial: str | None = None,
    benchmark_binary: str | None = None,
    timeout: float = 900.0,
) -> BenchmarkRun:
    """Push the .tflite, run `benchmark_model` on the phone and keep its log under
    `<out>/logs/` (the rows can be re-derived from it with `read_log`)."""
    adb = shutil.which("adb")
    if adb is None:
        raise DeviceError("adb not found on PATH: install Android platform-tools or use --from-log")
    if job.tflite is None or not job.tflite.is_file():
        raise MeasurementError(f"--tflite file not found: {job.tflite}")
    base = [adb, *(["-s", serial] if serial else [])]
    state = _run([*base, "get-state"], 20, "adb get-state")
    if state.returncode != 0 or state.stdout.strip() != "device":
        who = f"device {serial!r}" if serial else "a device"
        raise DeviceError(f"{who} not found or not ready: {_last(state.stderr or state.stdout)}")
    serial = serial or _run([*base, "get-serialno"], 20, "adb get-serialno").stdout.strip()
    remote = f"{REMOTE_DIR}/{job.tflite.name}"
    push = _run([*base, "push", str(job.tflite), remote], 300, "adb push")
    if push.returncode != 0:
        raise DeviceError(f"adb push failed: {_last(push.stderr or push.stdout)}")
    flags = [f"--graph={remote}", "--use_gpu=true", "--gpu_precision_loss_allowed=true"]
    flags += [
        "--enable_op_profiling=true",
        f"--num_runs={job.runs}",
        f"--warmup_runs={job.warmup}",
    ]
    binary = benchmark_binary or DEFAULT_BENCHMARK_BINARY
    remote_cmd = " ".join(shlex.quote(a) for a in [binary, *flags])
    bench = _run([*base, "shell", remote_cmd], timeout, "benchmark_model")
    text = f"{bench.stdout}\n{bench.stderr}"  # TFLITE_LOG writes to stderr
    if bench.returncode != 0 or "Inference timings" not in text:
        why = _last(bench.stderr) or _last(bench.stdout)
        raise DeviceError(f"benchmark_model failed (exit {bench.returncode}): {why}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_path = atomic_write_text(job.out_dir / "logs" / f"{job.graph_path.stem}-{stamp}.log", text)
    return BenchmarkRun(text, serial or "unknown", log_path)


def read_log(path: str | Path, serial: str | None = None) -> BenchmarkRun:
    """A captured `benchmark_model` log; `serial` defaults to the file's name."""
    path = Path(path)
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError as exc:
        raise MeasurementError(f"cannot read log {path}: {exc}") from exc
    return BenchmarkRun(text, serial or path.name, path)


def ingest(job: MeasureJob, run: BenchmarkRun) -> MeasureReport:
    """Parse the log, pair its GPU kernels with the plan, validate the rows and merge them into
    `job.out_dir` atomically (existing rows are kept; the manifest is written last)."""
    from leti.frontend.features import kernels_frame

    log = parse_benchmark_log(run.text)
    model, source = job.graph_path.stem, f"measure:{run.serial}"
    key = {"soc": job.soc, "runtime": RUNTIME, "model": model}

    kernels = list(job.plan.kernels)
    pairs, rejected, notes = match_kernels(kernels, log.kernels)
    geometry = kernels_frame([k for _, k in pairs])
    rows = []
    for j, (g, k) in enumerate(pairs):
        row = {**key, **geometry.iloc[j].to_dict(), "fused": parse_fused(g.name)}
        row.update(source_row=g.row, op=_OPS.get(k.kind, k.op_type), w_in=k.w_in, pad=k.pad)
        row.update(flops=k.flops or None, latency_ms=round(g.avg_ms, 9), gpu_kernel=g.name)
        rows.append({**row, "source": source})
    new_kernels, bad = lm.validate_kernel_rows(pd.DataFrame(rows, columns=list(lm.KERNEL_COLUMNS)))
    rejected.update(bad)
    params = job.tflite.stat().st_size if job.tflite and job.tflite.is_file() else None
    e2e_row = {**key, "latency_ms": round(log.e2e_ms, 9), "std_ms": log.std_ms, "source": source}
    e2e_row.update(flops=sum(la.flops for la in job.graph.layers) or None, params_bytes=params)
    e2e_row["graph"] = str(job.graph_path)
    new_e2e, bad_e2e = lm.validate_e2e_rows(pd.DataFrame([e2e_row], columns=list(lm.E2E_COLUMNS)))
    if bad_e2e:
        raise MeasurementError(f"the end-to-end row is invalid: {bad_e2e}")

    out = job.out_dir
    sort_k = ["source", "soc", "runtime", "model", "source_row"]
    k_bytes, k_rows, k_added, k_kept = _merge_table(
        out / lm.KERNELS_FILE, new_kernels, lm.KERNEL_COLUMNS, sort_k[1:], sort_k
    )
    e_bytes, e_rows, e_added, e_kept = _merge_table(
        out / lm.E2E_FILE, new_e2e, lm.E2E_COLUMNS, sort_k[1:4], sort_k[:4]
    )
    tables = ((lm.KERNELS_FILE, k_bytes, k_rows), (lm.E2E_FILE, e_bytes, e_rows))
    outputs = {f: {"rows": n, "sha256": hashlib.sha256(b).hexdigest()} for f, b, n in tables}
    manifest = {
        "schema_version": lm.SCHEMA_VERSION,
        "source": job.source_name,
        "tool": "leti measure",
    }
    manifest.update(licence=None, outputs=outputs, leti_version=VERSION)
    atomic_write_bytes(out / lm.KERNELS_FILE, k_bytes)  # manifest last, as the importer does
    atomic_write_bytes(out / lm.E2E_FILE, e_bytes)
    atomic_write_json(out / lm.MANIFEST_FILE, manifest)

    return MeasureReport(
        model=model,
        soc=job.soc,
        runtime=RUNTIME,
        e2e_ms=log.e2e_ms,
        std_ms=log.std_ms,
        gpu_kernels=len(log.kernels),
        kernels_added=k_added,
        kernels_kept=k_kept,
        e2e_added=e_added,
        e2e_kept=e_kept,
        out_dir=out,
        rejected=dict(sorted(rejected.items())),
        notes=notes,
    )
