"""`leti measure`: run a tool on a device over many graphs and store its rows.

A campaign measures graphs (`--graph G` or `--graphs DIR|GLOB`) on one SoC and runtime with one
tool (`leti.measurements.tools`), reached through one transport (`leti.measurements.transports`)
or read back from saved logs (`--from-log`). For each graph:

1. the file the device runs is found (`net.onnx` -> `net.tflite` beside it; `net.param` for
   benchncnn; for onnxruntime a temporary copy of the ONNX graph with weights materialised);
2. it is copied to the device, the tool runs, and its raw output is kept under
   `<out>/logs/` (re-parse it with `--from-log`);
3. the output is parsed; a run that is no measurement of the runtime (ops left on the CPU, no
   GPU) is *rejected* with its reason and writes nothing;
4. per-kernel tools are joined to leti's plan of the graph (`leti.measurements.join`); every
   kernel row and the end-to-end row are validated like imported rows;
5. the graph's rows replace any earlier rows of that (soc, runtime, model) in
   `<out>/kernels.csv` and `<out>/e2e.csv`, each file replaced atomically (kernels first, the
   end-to-end row last: a graph counts as measured once its end-to-end row is there), then the
   manifest (`import.json`) and the campaign record (`measure.json`: every graph's status and,
   for failures and rejections, the reason).

An interrupted campaign loses at most the graph in flight. A graph whose end-to-end row is
already in `<out>` is skipped unless `force`; failed and rejected graphs are tried again. A
graph's failure (a device that disappeared, a tool that crashed, an unreadable output) is
recorded and the campaign goes on.

`<out>` is `<measurements>/<source name>`, by default `measure-<soc>-<runtime>-<tool>`: one
folder per tool, so that "already measured" means measured by that tool. Each row's `source`
says `measure:<tool>:<where>` (`local`, `adb:SERIAL`, `ssh:HOST`, `log:FILE`) and whether the
clocks were pinned (`--clocks-pinned`: the user says so; leti does not pin them).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from leti.core import socs, store
from leti.core.errors import DeviceError, LetiError, MeasurementError
from leti.core.store import atomic_write_bytes, atomic_write_json, atomic_write_text
from leti.core.version import VERSION
from leti.measurements import schema as lm
from leti.measurements.importers import SOURCE_NAME
from leti.measurements.join import OPS, Join, join_onnxruntime, join_tflite
from leti.measurements.tools import RunOptions, Tool, ToolRun, tool
from leti.measurements.transports import Adb, Local, Ssh, Transport

__all__ = [
    "CAMPAIGN_FILE",
    "Campaign",
    "DeviceError",
    "GraphResult",
    "find_graphs",
    "measure_graph",
    "prepare_campaign",
    "run_campaign",
    "summary",
]

CAMPAIGN_FILE = "measure.json"
CAMPAIGN_FORMAT = "leti-measure-campaign/1"
GRAPH_SUFFIXES = (".onnx", ".param")
MEASURED, SKIPPED, REJECTED, FAILED = "measured", "skipped", "rejected", "failed"


@dataclass(frozen=True)
class Campaign:
    """What to measure, how, and where the rows go; `prepare_campaign` checks it up front."""

    soc: str
    runtime: str
    tool: Tool
    graphs: tuple[Path, ...]
    out_dir: Path
    source_name: str
    transport: Transport | None  # None: read saved logs (`from_log`)
    from_log: Path | None = None
    options: RunOptions = field(default_factory=RunOptions)
    force: bool = False
    timeout: float = 900.0
    clocks_pinned: bool = False
    model_file: Path | None = None  # the device's file for a single graph (else beside it)
    soc_gpu: str = ""


@dataclass
class GraphResult:
    """What happened to one graph of a campaign (the `--json` summary's per-graph document)."""

    graph: str
    model: str
    status: str  # measured | skipped | rejected | failed
    reason: str | None = None
    e2e_ms: float | None = None
    std_ms: float | None = None
    repeats: list[float] = field(default_factory=list)
    kernel_rows: int = 0
    e2e_rows: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fusion_disagreements: list[dict[str, str]] = field(default_factory=list)
    device: str | None = None
    log: str | None = None

    @property
    def spread(self) -> float | None:
        """Repeat-to-repeat spread: the standard deviation over the (median) time."""
        if self.std_ms is None or not self.e2e_ms:
            return None
        return self.std_ms / self.e2e_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph": self.graph,
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "rows": {"kernel": self.kernel_rows, "e2e": self.e2e_rows},
            "e2e_ms": self.e2e_ms,
            "std_ms": self.std_ms,
            "spread": self.spread,
            "repeats": self.repeats,
            "rejected": self.rejected,
            "fusion_disagreements": self.fusion_disagreements,
            "notes": self.notes,
            "device": self.device,
            "log": self.log,
        }


# --------------------------------------------------------------------------------------------
# Setting up


def find_graphs(items: Sequence[str | Path], tool_name: str) -> list[Path]:
    """Graph files from files, folders (their graphs, not their subfolders') and glob patterns.

    The graphs are ONNX files; for benchncnn a `.param` is the graph itself (and is preferred
    to an ONNX file of the same name)."""
    suffixes = (".param", ".onnx") if tool_name == "benchncnn" else (".onnx",)
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
            if not found:
                raise MeasurementError(f"{item}: no {' or '.join(suffixes)} file in this folder")
        elif not path.exists() and glob.has_magic(str(item)):
            found = sorted(
                Path(p)
                for p in glob.glob(str(item), recursive=True)
                if Path(p).is_file() and Path(p).suffix in GRAPH_SUFFIXES
            )
            if not found:
                raise MeasurementError(f"{item}: no graph file matches this pattern")
        else:
            found = [path]
        out += found
    by_stem: dict[str, Path] = {}
    for p in out:  # one graph per model name: benchncnn's .param wins over the .onnx
        best = by_stem.get(p.stem)
        if best is None or (suffixes.index(p.suffix) if p.suffix in suffixes else 9) < (
            suffixes.index(best.suffix) if best.suffix in suffixes else 9
        ):
            by_stem[p.stem] = p
    return [p for p in dict.fromkeys(out) if by_stem.get(p.stem) == p]


def make_transport(
    adb: str | bool | None = None, ssh: str | None = None, local: bool = False
) -> Transport:
    """`adb`: True (the only device) or a serial."""
    chosen = [x for x in (adb, ssh, local) if x not in (None, False)]
    if len(chosen) != 1:
        raise MeasurementError("choose one of --adb [SERIAL], --ssh HOST, --local or --from-log")
    if local:
        return Local()
    if ssh:
        return Ssh(ssh)
    return Adb(adb if isinstance(adb, str) else None)


def prepare_campaign(
    soc: str,
    tool_name: str,
    graphs: Sequence[Path],
    *,
    runtime: str | None = None,
    transport: Transport | None = None,
    from_log: str | Path | None = None,
    measurements_dir: str | Path | None = None,
    models_dir: str | Path | None = None,
    source_name: str | None = None,
    options: RunOptions | None = None,
    force: bool = False,
    timeout: float = 900.0,
    clocks_pinned: bool = False,
    model_file: str | Path | None = None,
) -> Campaign:
    """Resolve the SoC, the tool and the runtime, and check the options: a bad argument fails
    before any device is touched."""
    t = tool(tool_name)
    reg = socs.registry(store.models_dir(models_dir) if models_dir else None)
    hw = reg.resolve(soc)
    rt = (runtime or t.runtime).strip().lower()
    if rt != t.runtime:
        raise MeasurementError(f"{t.name} measures {t.runtime}, not {rt!r}")
    if (transport is None) == (from_log is None):
        raise MeasurementError("choose one of --adb [SERIAL], --ssh HOST, --local or --from-log")
    if transport is not None and transport.kind not in t.transports:
        raise MeasurementError(
            f"{t.name} runs only {' or '.join(x for x in t.transports if x != 'log')} "
            f"(or --from-log), not over {transport.kind}"
        )
    name = source_name or f"measure-{hw.id}-{rt}-{t.name}"
    if not safe_folder_name(name) or name == SOURCE_NAME:
        raise MeasurementError(f"bad --source-name {name!r}: use a plain folder name")
    opts = options or RunOptions()
    if opts.runs < 1 or opts.warmup < 0 or opts.threads < 1 or opts.profile_runs < 0:
        raise MeasurementError("--runs and --threads must be >= 1, --warmup >= 0")
    if not graphs:
        raise MeasurementError("no graph to measure")
    if model_file is not None and len(graphs) != 1:
        raise MeasurementError("--model-file names the device's file for one --graph only")
    log = Path(from_log) if from_log is not None else None
    if log is not None and not log.exists():
        raise MeasurementError(f"--from-log {log}: no such file or folder")
    if log is not None and log.is_file() and len(graphs) != 1:
        raise MeasurementError("--from-log FILE reads one graph's run; give a folder of logs")
    return Campaign(
        soc=hw.id,
        runtime=rt,
        tool=t,
        graphs=tuple(Path(g) for g in graphs),
        out_dir=store.measurements_dir(measurements_dir) / name,
        source_name=name,
        transport=transport,
        from_log=log,
        options=opts,
        force=force,
        timeout=timeout,
        clocks_pinned=clocks_pinned,
        model_file=Path(model_file) if model_file is not None else None,
        soc_gpu=hw.gpu,
    )


def safe_folder_name(name: str) -> bool:
    return bool(name) and name[0].isalnum() and all(c.isalnum() or c in "_.+-" for c in name)


# --------------------------------------------------------------------------------------------
# Tables


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame({c: pd.Series(dtype=str) for c in columns})
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise MeasurementError(f"cannot read {path}: {exc}; nothing was written") from exc
    if tuple(frame.columns) != columns:
        raise MeasurementError(f"{path}: columns {list(frame.columns)} are not the schema's")
    return frame


def _as_text(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    buf = frame.loc[:, list(columns)].to_csv(index=False, lineterminator="\n")
    return pd.read_csv(io.StringIO(buf), dtype=str, keep_default_na=False, na_filter=False)


def _replace_rows(
    path: Path, new: pd.DataFrame, columns: tuple[str, ...], key: dict[str, str]
) -> tuple[bytes, int]:
    """The table at `path` with `key`'s rows replaced by `new` (as text, old rows untouched)."""
    old = _read_table(path, columns)
    mine = (old["soc"] == key["soc"]) & (old["runtime"] == key["runtime"])
    mine &= old["model"] == key["model"]
    merged = pd.concat([old[~mine], _as_text(new, columns)], ignore_index=True)
    order = ["soc", "runtime", "model"] + (["source_row"] if "source_row" in columns else [])
    merged = merged.sort_values(
        order,
        key=lambda s: pd.to_numeric(s, errors="coerce") if s.name == "source_row" else s,
        kind="mergesort",
    )
    text = merged.to_csv(index=False, lineterminator="\n")
    return text.encode("utf-8"), len(merged)


def measured_models(campaign: Campaign) -> set[str]:
    """Models with an end-to-end row of this soc and runtime in the campaign's folder."""
    e2e = _read_table(campaign.out_dir / lm.E2E_FILE, lm.E2E_COLUMNS)
    ok = (e2e["soc"] == campaign.soc) & (e2e["runtime"] == campaign.runtime)
    return set(e2e.loc[ok, "model"])


def _write(campaign: Campaign, model: str, kernels: pd.DataFrame, e2e: pd.DataFrame) -> None:
    out = campaign.out_dir
    key = {"soc": campaign.soc, "runtime": campaign.runtime, "model": model}
    k_bytes, k_rows = _replace_rows(out / lm.KERNELS_FILE, kernels, lm.KERNEL_COLUMNS, key)
    e_bytes, e_rows = _replace_rows(out / lm.E2E_FILE, e2e, lm.E2E_COLUMNS, key)
    atomic_write_bytes(out / lm.KERNELS_FILE, k_bytes)  # the end-to-end row last: the marker
    atomic_write_bytes(out / lm.E2E_FILE, e_bytes)
    tables = ((lm.KERNELS_FILE, k_bytes, k_rows), (lm.E2E_FILE, e_bytes, e_rows))
    outputs = {f: {"rows": n, "sha256": hashlib.sha256(b).hexdigest()} for f, b, n in tables}
    manifest = {
        "schema_version": lm.SCHEMA_VERSION,
        "source": campaign.source_name,
        "tool": f"leti measure --tool {campaign.tool.name}",
        "licence": None,
        "outputs": outputs,
        "leti_version": VERSION,
    }
    atomic_write_json(out / lm.MANIFEST_FILE, manifest)


def _record(campaign: Campaign, result: GraphResult) -> None:
    """Rewrite `<out>/measure.json` with this graph's latest status."""
    path = campaign.out_dir / CAMPAIGN_FILE
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            doc = {}
    graphs = doc.get("graphs", {}) if isinstance(doc.get("graphs"), dict) else {}
    entry = result.to_dict()
    entry["at"] = datetime.now(UTC).replace(microsecond=0).isoformat()
    entry["tool"] = campaign.tool.name
    graphs[f"{campaign.soc}/{campaign.runtime}/{result.model}"] = entry
    atomic_write_json(
        path,
        {
            "format": CAMPAIGN_FORMAT,
            "source": campaign.source_name,
            "leti_version": VERSION,
            "graphs": dict(sorted(graphs.items())),
        },
    )


# --------------------------------------------------------------------------------------------
# One graph


def _source(campaign: Campaign, where: str) -> str:
    clocks = "clocks-pinned" if campaign.clocks_pinned else "clocks-unpinned"
    if campaign.tool.name == "onnxruntime":
        clocks = f"threads-{campaign.options.threads}"
    return f"measure:{campaign.tool.name}:{where}:{clocks}"


def _log_for(campaign: Campaign, graph: Path) -> Path:
    log = campaign.from_log
    assert log is not None
    if log.is_file():
        return log
    for name in (f"{graph.stem}.log", f"{graph.stem}.txt"):
        if (log / name).is_file():
            return log / name
    found = sorted(log.glob(f"{glob.escape(graph.stem)}-{campaign.tool.name}-*.log"))
    if found:
        return found[-1]  # the latest saved run
    raise MeasurementError(f"no saved log for {graph.stem} in {log} ({graph.stem}.log)")


def _run_tool(campaign: Campaign, graph: Path, parsed: Any) -> tuple[str, str, Path | None]:
    """(the tool's output, where it ran, the saved log) for one graph."""
    t = campaign.tool
    if campaign.transport is None:
        path = _log_for(campaign, graph)
        try:
            text = path.read_text("utf-8", errors="replace")
        except OSError as exc:
            raise MeasurementError(f"cannot read log {path}: {exc}") from exc
        return text, f"log:{path.name}", path
    tr = campaign.transport
    opts = campaign.options
    shape = parsed.inputs[0][1] if parsed.inputs else None
    with tempfile.TemporaryDirectory(prefix="leti-measure-") as tmp:
        if t.name == "onnxruntime":
            from leti.measurements.onnxruntime_cpu import command, materialise

            model = materialise(t.model_file(graph, campaign.model_file), Path(tmp) / graph.name)
            argv = command(tr.stage(model), opts)
        else:
            model = t.model_file(graph, campaign.model_file)
            binary = opts.binary or (
                f"{tr.remote_dir.rsplit('/', 1)[0]}/{t.binary}" if tr.kind == "adb" else t.binary
            )
            argv = t.command(binary, tr.stage(model), opts, shape)
        out = tr.execute(argv, campaign.timeout, t.name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_path = campaign.out_dir / "logs" / f"{graph.stem}-{t.name}-{stamp}.log"
    atomic_write_text(log_path, out.text)
    if out.rc != 0:
        raise DeviceError(f"{t.name} failed (exit {out.rc}): {out.tail()}")
    return out.text, tr.where, log_path


def _kernel_rows(
    campaign: Campaign, model: str, join: Join, source: str
) -> tuple[pd.DataFrame, Counter]:
    from leti.frontend.features import kernels_frame

    key = {"soc": campaign.soc, "runtime": campaign.runtime, "model": model}
    geometry = kernels_frame([k for _, k, _, _ in join.pairs])
    rows = []
    for j, (g, k, fused, ms) in enumerate(join.pairs):
        row = {**key, **geometry.iloc[j].to_dict(), "fused": fused}
        row.update(source_row=g.index if g.index is not None else g.position, w_in=k.w_in)
        row.update(op=OPS.get(k.kind, k.op_type), pad=k.pad, flops=k.flops or None)
        row.update(latency_ms=round(ms, 9), gpu_kernel=g.label, source=source)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(lm.KERNEL_COLUMNS))
    ok, bad = lm.validate_kernel_rows(frame)
    return ok, Counter(bad)


def measure_graph(campaign: Campaign, graph: Path, skip: set[str] | None = None) -> GraphResult:
    """Measure one graph and store its rows. Never raises for a problem of this graph (it is
    recorded in the result and in `measure.json`); raises only for a table it cannot read."""
    graph = Path(graph)
    model = graph.stem
    result = GraphResult(str(graph), model, FAILED)
    if skip is not None and model in skip and not campaign.force:
        result.status, result.reason = SKIPPED, "already measured (use --force to measure again)"
        return result
    try:
        _measure(campaign, graph, result)
    except LetiError as exc:
        result.status, result.reason = FAILED, exc.message
    except OSError as exc:  # a full disk, a folder we may not write
        result.status, result.reason = FAILED, f"{type(exc).__name__}: {exc}"
    _record(campaign, result)
    return result


def _measure(campaign: Campaign, graph: Path, result: GraphResult) -> None:
    from leti.frontend.fusion import plan
    from leti.frontend.graph import parse_graph

    if not graph.is_file():
        raise MeasurementError(f"{graph}: no such graph file")
    parsed = parse_graph(graph)  # a bad graph fails before the device is touched
    text, where, log_path = _run_tool(campaign, graph, parsed)
    result.log = str(log_path) if log_path else None
    run: ToolRun = campaign.tool.parse(text, graph.name)
    result.e2e_ms, result.std_ms, result.repeats = run.e2e_ms, run.std_ms, list(run.repeats)
    result.device = run.device
    result.notes += list(run.notes)
    if run.device and campaign.tool.name == "benchncnn" and not _same_gpu(run.device, campaign):
        result.notes.append(
            f"the GPU banner says {run.device!r}; the registry's {campaign.soc} has "
            f"{campaign.soc_gpu!r}"
        )
    if run.rejected:
        result.status, result.reason = REJECTED, run.rejected
        result.rejected.append({"reason": "run_rejected", "detail": run.rejected})
        return
    source = _source(campaign, where)
    if run.device and campaign.tool.name == "benchncnn":
        source += f":gpu-{_slug(run.device)}"
    kernels = pd.DataFrame(columns=list(lm.KERNEL_COLUMNS))
    if campaign.tool.per_kernel:
        graph_plan = plan(parsed, campaign.runtime)
        if campaign.tool.name == "onnxruntime":
            join = join_onnxruntime(
                graph_plan, run.extra.get("node_runs", {}), run.extra.get("node_ops", {})
            )
        else:
            join = join_tflite(graph_plan, list(run.kernels))
        kernels, bad = _kernel_rows(campaign, graph.stem, join, source)
        rejected = join.rejected + bad
        result.rejected += [{"reason": r, "rows": n} for r, n in sorted(rejected.items())]
        result.notes += join.notes
        result.fusion_disagreements = join.disagreements
    e2e_row = {
        "soc": campaign.soc,
        "runtime": campaign.runtime,
        "model": graph.stem,
        "latency_ms": round(float(run.e2e_ms), 9) if run.e2e_ms else None,
        "std_ms": round(run.std_ms, 9) if run.std_ms is not None else None,
        "flops": sum(la.flops for la in parsed.layers) or None,
        "params_bytes": None,
        "graph": str(graph.resolve()),
        "source": source,
    }
    e2e, bad_e2e = lm.validate_e2e_rows(pd.DataFrame([e2e_row], columns=list(lm.E2E_COLUMNS)))
    if bad_e2e:
        raise MeasurementError(f"the end-to-end row is invalid: {bad_e2e}")
    _write(campaign, graph.stem, kernels, e2e)
    result.status = MEASURED
    result.kernel_rows, result.e2e_rows = len(kernels), len(e2e)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:40]


def _same_gpu(banner: str, campaign: Campaign) -> bool:
    def words(s: str) -> set[str]:
        return {w for w in "".join(c if c.isalnum() else " " for c in s.lower()).split() if w}

    common = words(banner) & words(campaign.soc_gpu)
    return bool(common - {"tm", "gpu", "mc2", "2ee"})


# --------------------------------------------------------------------------------------------
# A campaign


def run_campaign(campaign: Campaign) -> Iterator[GraphResult]:
    """Measure every graph in turn, yielding each result as it is stored. Connects to the
    device first (DeviceError when it is not there at all)."""
    if campaign.transport is not None:
        campaign.transport.connect()
    skip = measured_models(campaign)
    seen: set[str] = set()
    for graph in campaign.graphs:
        if graph.stem in seen:
            result = GraphResult(str(graph), graph.stem, FAILED)
            result.reason = f"another graph of this campaign is already named {graph.stem!r}"
            _record(campaign, result)
            yield result
            continue
        seen.add(graph.stem)
        yield measure_graph(campaign, graph, skip)


def summary(campaign: Campaign, results: Sequence[GraphResult]) -> dict[str, Any]:
    """The machine-readable summary: per graph, and totals with the repeat-to-repeat spread."""
    counts = {s: sum(r.status == s for r in results) for s in (MEASURED, SKIPPED, REJECTED, FAILED)}
    spreads = [r.spread for r in results if r.status == MEASURED and r.spread is not None]
    return {
        "soc": campaign.soc,
        "runtime": campaign.runtime,
        "tool": campaign.tool.name,
        "out_dir": str(campaign.out_dir),
        "graphs": [r.to_dict() for r in results],
        "totals": {
            **counts,
            "rows": {
                "kernel": sum(r.kernel_rows for r in results),
                "e2e": sum(r.e2e_rows for r in results),
            },
        },
        "repeat_spread": {
            "what": "per graph, the standard deviation of its repeats over their median",
            "graphs": len(spreads),
            "median": float(statistics.median(spreads)) if spreads else None,
            "max": max(spreads) if spreads else None,
        },
    }
