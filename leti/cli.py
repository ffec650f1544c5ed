"""`leti` command line: import | fit | predict | evaluate | serve | calibrate | measure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leti.core.errors import LetiError


def _shape_arg(text: str) -> tuple[str, list[int]]:
    """`input=1,3,224,224` -> ("input", [1, 3, 224, 224])."""
    name, _, dims = text.partition("=")
    if not dims:
        raise argparse.ArgumentTypeError("expected NAME=D1,D2,... e.g. input=1,3,224,224")
    try:
        return name, [int(d) for d in dims.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad dims in {text!r}") from exc


def _add_models_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir", type=Path, default=None, help="default: $LETI_MODELS_DIR or models/"
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: only when stderr is a terminal)",
    )


def _add_measurements_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--measurements-dir",
        type=Path,
        default=None,
        help="default: $LETI_MEASUREMENTS_DIR or measurements/",
    )


def cmd_import(args: argparse.Namespace) -> int:
    from leti.measurements.importers import import_mobile_ml_benchmark

    if args.source != "mobile-ml-benchmark":
        raise LetiError(f"unknown source {args.source!r}; known: mobile-ml-benchmark")
    out = args.measurements_dir / args.source if args.measurements_dir else None
    report = import_mobile_ml_benchmark(Path(args.path), out_dir=out, zoo_dir=args.zoo)
    print(report.summary())
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from leti.core.store import models_dir
    from leti.evaluate.accuracy import evaluate_soc, measured_pairs
    from leti.train.fit import fit_and_save

    root = models_dir(args.models_dir)
    pairs = _selected_pairs(measured_pairs(args.measurements_dir), args, "fit")
    bar = _bar(args, pairs, desc="fitting", unit="model")
    for soc, runtime in bar:
        bar.set_postfix_str(f"{soc}/{runtime}")
        t0 = time.perf_counter()
        cv = {}
        if not args.no_cv:
            cv = evaluate_soc(soc, runtime, args.measurements_dir).scores
        manifest = fit_and_save(soc, runtime, root, args.measurements_dir, cv_metrics=cv)
        acc = f", CV ±10% {100 * cv['leti']['acc10']:.1f}%" if cv else ""
        bar.write(
            f"{soc}/{runtime}: {manifest['model_version']} "
            f"({manifest['training']['graphs']} graphs{acc}) in {time.perf_counter() - t0:.1f}s",
            file=sys.stdout,
        )
    bar.close()
    if not args.no_transfer and not args.soc and args.runtime in (None, "tflite-gpu"):
        # The transfer model learns from every measured SoC at once; its leave-one-SoC-out
        # evaluation sizes the intervals of unmeasured SoCs, so it runs as part of fitting.
        _fit_transfer_model(root, args.measurements_dir, progress=args)
        # The shipped ncnn-vulkan calibrations sit on the transfer model: refit them after it.
        data = _ncnn_benchmark_dir()
        if (data / "ncnn_benchmark.csv").is_file():
            _ship_benchmark_calibrations(root, data)
        else:
            print(f"no ncnn benchmark at {data}: shipped ncnn-vulkan calibrations not refitted")
    return 0


def _ncnn_benchmark_dir() -> Path:
    from leti.core import settings

    return settings.shared_dir(Path(__file__).resolve().parents[1].parent / "shared") / (
        "data/ncnn-benchmark"
    )


def _fit_transfer_model(
    root: Path,
    measurements_dir: Path | None,
    report_out: Path | None = None,
    progress: argparse.Namespace | None = None,
) -> None:
    """Run the transfer evaluation (which sizes the intervals and the calibration priors),
    optionally write its report to `report_out`, then train on every measured SoC and write
    `<root>/transfer/tflite-gpu/`. `progress`: the arguments that say whether to show a bar
    of these steps."""
    from leti.evaluate.reports import write_transfer_report
    from leti.evaluate.transfer import run as run_transfer_evaluation
    from leti.train.transfer import fit_and_save as fit_and_save_transfer

    steps = _bar(progress or argparse.Namespace(progress=False), total=2, unit="step")
    steps.set_description("transfer model: leave-one-SoC-out evaluation")
    report, sets, cache = run_transfer_evaluation(measurements_dir)
    if report_out:
        write_transfer_report(report, report_out)
    steps.update()
    steps.set_description("transfer model: fitting on every measured SoC")
    manifest = fit_and_save_transfer(
        root,
        "tflite-gpu",
        measurements_dir,
        sets=sets,
        loso=report.loso,
        cache=cache,
        extra={
            "calibration_prior_sd": report.prior_sd,
            "evaluation": report.headline(),
            **({"class_priors": {"ncnn-vulkan": report.class_prior}} if report.class_prior else {}),
        },
    )
    steps.update()
    steps.close()
    print(f"{manifest['model_version']}: interval {manifest['interval_log_quantiles']}")


# --------------------------------------------------------------------------------------------
# leti predict: graphs x SoCs, priced in one process with the batch path

GRAPH_SUFFIXES = (".onnx", ".param")
FORMATS = ("table", "csv", "jsonl", "json", "trace")
CSV_COLUMNS = (
    "graph",
    "soc",
    "runtime",
    "total_ms",
    "interval_low_ms",
    "interval_high_ms",
    "kernel_sum_ms",
    "provenance",
    "model_version",
    "unsupported",
    "error",
    "detail",
)
_CHUNK = 32  # graphs per predict_many call: the progress bar moves once per chunk


@dataclass
class _Priced:
    """One (graph, SoC) answer of a sweep: the prediction, or the error that stopped it."""

    graph: str
    soc: str
    runtime: str
    pred: Any = None  # leti.core.records.Prediction
    error: LetiError | None = None
    graph_index: int = 0  # position of the graph in the sweep


def _int_at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `lowest`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number >= {lowest}, got {text!r}"
            ) from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


def _show_progress(args: argparse.Namespace) -> bool:
    """--progress / --no-progress, else only when stderr is a terminal."""
    flag = getattr(args, "progress", None)
    return sys.stderr.isatty() if flag is None else bool(flag)


def _bar(args: argparse.Namespace, iterable: Any = None, **kw: Any) -> Any:
    """A tqdm progress bar on stderr (a disabled one that still iterates, when not shown)."""
    from tqdm import tqdm

    return tqdm(
        iterable, file=sys.stderr, disable=not _show_progress(args), dynamic_ncols=True, **kw
    )


def _expand_graphs(items: Sequence[str]) -> list[Path]:
    """Files as given; a folder gives its .onnx and .param files (not its subfolders'); a
    glob pattern (quoted, or one the shell did not expand) gives what it matches."""
    import glob

    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.suffix.lower() in GRAPH_SUFFIXES and p.is_file()
            )
            if not found:
                raise LetiError(f"{item}: no .onnx or .param file in this folder")
            out += found
        elif not path.exists() and glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise LetiError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(path)  # a missing file becomes that graph's error
    return list(dict.fromkeys(out))


def _predict_socs(text: str, runtime: str | None, models_dir: Path | None) -> list[str]:
    """`--soc a,b,c`, or `all`: every SoC a model answers for on the runtime."""
    if text.strip().lower() != "all":
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names:
            raise LetiError("--soc needs a SoC id or alias, a comma-separated list, or 'all'")
        return names
    from leti.core import socs
    from leti.predict.registry import available

    rt = socs.resolve_runtime(runtime)
    found = list(dict.fromkeys(a["soc"] for a in available(models_dir) if a["runtime"] == rt))
    if not found:
        raise LetiError(f"--soc all: no model answers on {rt} in {_models_root(models_dir)}")
    return found


def _price(args: argparse.Namespace, paths: Sequence[Path], socs: Sequence[str]):
    """Every graph on every SoC: each graph is read once, then each SoC prices the batch."""
    from leti.frontend.graph import parse_graph
    from leti.predict.estimator import Estimator

    if getattr(args, "jobs", 1) != 1:
        return _price_in_workers(args, paths, socs)

    estimators = {}
    for soc in socs:  # a bad SoC or runtime is the caller's mistake: it stops the run
        est = Estimator.load(soc, args.runtime, args.models_dir)
        estimators.setdefault(est.soc, est)
    shapes = dict(args.input_shape) if args.input_shape else None
    graphs: list[Any] = []
    with _bar(args, total=len(paths), desc="reading", unit="graph", leave=False) as bar:
        for path in paths:
            try:
                graphs.append(parse_graph(path, shapes))
            except LetiError as exc:
                graphs.append(exc)
            bar.update()
    ok = [i for i, g in enumerate(graphs) if not isinstance(g, LetiError)]
    results: list[_Priced] = []
    total = len(paths) * len(estimators)
    with _bar(args, total=total, desc="pricing", unit="graph", leave=False) as bar:
        for est in estimators.values():
            answers: dict[int, Any] = {}
            for start in range(0, len(ok), _CHUNK):
                chunk = ok[start : start + _CHUNK]
                for i, answer in zip(
                    chunk, est.predict_many([graphs[i] for i in chunk]), strict=True
                ):
                    answers[i] = answer
                bar.update(len(chunk))
            bar.update(len(paths) - len(ok))
            for i, path in enumerate(paths):
                answer = answers.get(i, graphs[i])
                r = _Priced(str(path), est.soc, est.runtime, graph_index=i)
                if isinstance(answer, LetiError):
                    r.error = answer
                else:
                    r.pred = answer
                results.append(r)
    return results, [g if not isinstance(g, LetiError) else None for g in graphs]


def _price_in_workers(args: argparse.Namespace, paths: Sequence[Path], socs: Sequence[str]):
    """`_price` with `--jobs N`: each SoC's estimator prices the graphs in N processes, this one
    and N - 1 workers (`Estimator.predict_many(..., workers=N)`), which parse them too; the pool is
    stopped after each SoC. The parent parses a graph only for a trace (its node order)."""
    from leti.frontend.graph import parse_graph
    from leti.predict.estimator import Estimator
    from leti.predict.workers import default_workers, shutdown_pools

    jobs = args.jobs or default_workers()
    estimators = {}
    for soc in socs:
        est = Estimator.load(soc, args.runtime, args.models_dir)
        estimators.setdefault(est.soc, est)
    shapes = dict(args.input_shape) if args.input_shape else None
    sources = [str(p) for p in paths]
    step = _CHUNK * jobs * 2
    results: list[_Priced] = []
    priced = [False] * len(paths)
    total = len(paths) * len(estimators)
    with _bar(args, total=total, desc="pricing", unit="graph", leave=False) as bar:
        for est in estimators.values():
            answers: list[Any] = []
            for start in range(0, len(sources), step):
                chunk = sources[start : start + step]
                answers += est.predict_many(chunk, shapes, workers=jobs)
                bar.update(len(chunk))
            shutdown_pools()
            for i, (path, answer) in enumerate(zip(paths, answers, strict=True)):
                r = _Priced(str(path), est.soc, est.runtime, graph_index=i)
                if isinstance(answer, LetiError):
                    r.error = answer
                else:
                    r.pred = answer
                    priced[i] = True
                results.append(r)
    fmt = args.format or ("json" if args.json else "table")
    graphs: list[Any] = []
    for path, ok in zip(paths, priced, strict=True):
        graph: Any = None
        if ok:  # read and priced somewhere: a trace needs its node order, the rest only that
            graph = parse_graph(path, shapes) if fmt == "trace" else True
        graphs.append(graph)
    return results, graphs


def cmd_predict(args: argparse.Namespace) -> int:
    fmt = args.format or ("json" if args.json else "table")
    paths = _expand_graphs(args.graph)
    socs = _predict_socs(args.soc, args.runtime, args.models_dir)
    results, graphs = _price(args, paths, socs)
    single = len(results) == 1
    said = set()
    for r in results:
        if r.error is not None:
            message = _cli_message(r.error)
            where = r.graph
            if len({x.soc for x in results}) > 1 and graphs[r.graph_index] is not None:
                where = f"{r.graph} on {r.soc}"  # read, but this SoC could not price it
            line = f"error: {message}" if where in message else f"error: {where}: {message}"
            if line not in said:  # a graph that cannot be read fails on every SoC alike
                said.add(line)
                print(line, file=sys.stderr)
    if fmt == "json" and single and results[0].pred is not None:
        print(json.dumps(_answer_doc(args, results[0], with_graph=False), indent=2))
    elif fmt == "json":
        print(json.dumps([_answer_doc(args, r) for r in results], indent=2))
    elif fmt == "jsonl":
        for r in results:
            print(json.dumps(_answer_doc(args, r)))
    elif fmt == "csv":
        _print_csv(results)
    elif fmt == "trace":
        print(json.dumps(chrome_trace(results, graphs)))
    elif single:
        if results[0].pred is not None:
            _print_breakdown(results[0].pred, args)
    else:
        _print_sweep(results)
    failed = sum(r.error is not None for r in results)
    if not failed:
        return 0
    return 2 if failed == len(results) else 1


def _answer_doc(args: argparse.Namespace, r: _Priced, with_graph: bool = True) -> dict:
    """The service's document for an answer (its batch slot's error document for a failure),
    with the graph's path in front when several answers are printed."""
    head = {"graph": r.graph} if with_graph else {}
    if r.error is not None:
        return {
            **head,
            "soc": r.soc,
            "runtime": r.runtime,
            "error": r.error.kind,
            "detail": _cli_message(r.error),
        }
    doc = {**head, **r.pred.to_dict(layers=not args.no_layers)}
    if args.group_by == "kernel" and not args.no_layers:
        doc["groups"] = [
            {**g, "ms": round(g["ms"], 4), "share": round(g["share"], 6)}
            for g in kernel_groups(r.pred.layers)
        ]
    return doc


def _print_csv(results: Sequence[_Priced]) -> None:
    import csv

    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in results:
        if r.error is not None:
            row = [r.graph, r.soc, r.runtime, "", "", "", "", "", "", "", r.error.kind]
            w.writerow([*row, _cli_message(r.error)])
            continue
        p = r.pred
        w.writerow(
            [
                r.graph,
                p.soc,
                p.runtime,
                f"{p.total_ms:.4f}",
                f"{p.interval_ms[0]:.4f}",
                f"{p.interval_ms[1]:.4f}",
                f"{p.kernel_sum_ms:.4f}",
                p.provenance,
                p.model_version,
                sum(u.count for u in p.unsupported),
                "",
                "",
            ]
        )


def kernel_groups(layers: Sequence[Any]) -> list[dict]:
    """Breakdown lines summed by kernel kind (conv, dwconv, fc, ..., standalone, graph), the
    most expensive first."""
    groups: dict[str, dict] = {}
    for lt in layers:
        kind = lt.kernel.split("+", 1)[0]
        g = groups.setdefault(
            kind, {"kernel": kind, "count": 0, "ms": 0.0, "share": 0.0, "flops": 0, "ops": []}
        )
        g["count"] += 1
        g["ms"] += lt.ms
        g["share"] += lt.share
        g["flops"] += lt.flops
        if lt.op not in g["ops"]:
            g["ops"].append(lt.op)
    return sorted(groups.values(), key=lambda g: -g["ms"])


def _dims(shapes: Sequence[Any]) -> str:
    return ",".join("?" if s is None else "x".join(str(d) for d in s) for s in shapes) or "-"


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _print_breakdown(pred: Any, args: argparse.Namespace) -> None:
    """One graph on one SoC: the total, then the most expensive lines (or kernel kinds)."""
    lo, hi = pred.interval_ms
    print(f"{pred.soc} / {pred.runtime} ({pred.provenance}, {pred.model_version})")
    print(f"end-to-end: {pred.total_ms:.2f} ms  (interval {lo:.2f} - {hi:.2f} ms)")
    if not args.no_layers and args.group_by == "kernel":
        groups = kernel_groups(pred.layers)[: args.top]
        print(f"top {len(groups)} kernel kinds:")
        print(f"  {'ms':>9}  {'share':>6}  {'count':>5}  {'FLOPs':>7}  {'kernel':<12} ops")
        for g in groups:
            print(
                f"  {g['ms']:9.3f}  {100 * g['share']:5.1f}%  {g['count']:5d}  "
                f"{_si(g['flops']):>7}  {g['kernel']:<12} {', '.join(g['ops'])}"
            )
    elif not args.no_layers:
        top = sorted(pred.layers, key=lambda lt: -lt.ms)[: args.top]
        print(f"top {len(top)} of {len(pred.layers)} kernels:")
        print(
            f"  {'ms':>9}  {'share':>6}  {'priced':<8}  {'kernel':<20} {'op':<16} "
            f"{'in -> out':<32} {'FLOPs':>7}  nodes"
        )
        for lt in top:
            io = f"{_dims(lt.input_shapes)} -> {_dims(lt.output_shapes)}" if lt.layers else ""
            nodes = ", ".join(lt.layers) if lt.layers else lt.name
            flops = _si(lt.flops) if lt.layers else ""
            print(
                f"  {lt.ms:9.3f}  {100 * lt.share:5.1f}%  {lt.priced:<8}  {lt.kernel:<20} "
                f"{lt.op:<16} {io:<32} {flops:>7}  {nodes}"
            )
    for u in pred.unsupported:
        print(f"unsupported: {u.op} x{u.count} (not included in the total)")
    for note in pred.notes:
        print(f"note: {note}")


def _print_sweep(results: Sequence[_Priced]) -> None:
    """Several answers: one row per graph, one column per SoC (ms; the interval below)."""
    socs = list(dict.fromkeys(r.soc for r in results))
    graphs = list(dict.fromkeys(r.graph for r in results))
    cell = {(r.graph, r.soc): r for r in results}
    width = max(19, *(len(s) for s in socs))
    names = {g: Path(g).name for g in graphs}
    if len(set(names.values())) < len(names):  # two folders with the same file name
        names = {g: g for g in graphs}
    name_w = min(max(len(n) for n in names.values()), 60)
    print(f"{'graph':<{name_w}}  " + "  ".join(f"{s:>{width}}" for s in socs))
    for g in graphs:
        cells = []
        for s in socs:
            r = cell[(g, s)]
            if r.error is not None:
                cells.append(f"{'error (stderr)':>{width}}")
            else:
                lo, hi = r.pred.interval_ms
                text = f"{r.pred.total_ms:.2f} ({lo:.1f}-{hi:.1f})"
                cells.append(f"{text:>{width}}")
        shown = names[g] if len(names[g]) <= name_w else "..." + names[g][-(name_w - 3) :]
        print(f"{shown:<{name_w}}  " + "  ".join(cells))
    print("ms on each SoC (interval); models:")
    for s in socs:
        ok = [r for r in results if r.soc == s and r.pred is not None]
        if ok:
            p = ok[0].pred
            print(f"  {s}: {p.runtime}, {p.provenance} {p.model_version}")


def chrome_trace(results: Sequence[_Priced], graphs: Sequence[Any] = ()) -> dict:
    """The breakdowns as a Chrome trace (chrome://tracing, Perfetto): one process per (graph,
    SoC), its lines laid end to end in graph order as complete ("X") events, microseconds."""
    events: list[dict] = []
    pid = 0
    for r in results:
        if r.pred is None:
            continue
        pid += 1
        p = r.pred
        label = f"{Path(r.graph).name} on {p.soc} ({p.runtime}): {p.total_ms:.3f} ms"
        events += [
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}},
            {
                "name": "process_sort_index",
                "ph": "M",
                "pid": pid,
                "tid": 0,
                "args": {"sort_index": pid},
            },
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": "kernels"}},
        ]
        graph = graphs[r.graph_index] if r.graph_index < len(graphs) else None
        order = {la.name: i for i, la in enumerate(graph.layers)} if graph is not None else {}
        lines = sorted(
            enumerate(p.layers),
            key=lambda e: (order.get(e[1].layers[0], len(order)) if e[1].layers else 1 << 60, e[0]),
        )
        ts = 0.0
        for _, lt in lines:
            dur = max(lt.ms, 0.0) * 1000.0
            events.append(
                {
                    "name": lt.name,
                    "cat": lt.priced,
                    "ph": "X",
                    "ts": round(ts, 3),
                    "dur": round(dur, 3),
                    "pid": pid,
                    "tid": 1,
                    "args": {
                        "op": lt.op,
                        "kernel": lt.kernel,
                        "nodes": list(lt.layers),
                        "input_shapes": [None if s is None else list(s) for s in lt.input_shapes],
                        "output_shapes": [None if s is None else list(s) for s in lt.output_shapes],
                        "flops": lt.flops,
                        "ms": round(lt.ms, 6),
                        "share": round(lt.share, 6),
                        "priced": lt.priced,
                    },
                }
            )
            ts += dur
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _cli_message(exc: LetiError) -> str:
    """An error's message in the command line's own syntax: the front end words its hints for
    Python callers (`input_shapes={'x': [...]}`); here they read `--input-shape x=...`."""
    import re

    text = exc.message
    text = re.sub(
        r"pass input_shapes=\{(['\"])(.*?)\1: \[\.\.\.\]\}",
        r"pass --input-shape \2=1,3,224,224 (its concrete dims)",
        text,
    )
    text = re.sub(r"input_shapes\[(['\"])(.*?)\1\]", r"--input-shape \2", text)
    text = re.sub(r", or input_shape=\{.*?\} over HTTP", "", text)
    return text.replace("input_shapes names", "--input-shape names")


def _evaluate_transfer(args: argparse.Namespace) -> int:
    """`leti evaluate --transfer`: writes benchmarks/transfer.{md,json} unless `--out` names
    another file than accuracy.md."""
    from leti.evaluate.accuracy import measured_pairs
    from leti.evaluate.reports import write_transfer_report
    from leti.evaluate.transfer import DEFAULT_OUT
    from leti.evaluate.transfer import run as run_transfer_evaluation

    out = Path(args.out) if args.out and Path(args.out).name != "accuracy.md" else DEFAULT_OUT
    if not any(rt == "tflite-gpu" for _, rt in measured_pairs(args.measurements_dir)):
        raise _nothing_imported(args.measurements_dir, "tflite-gpu")
    with _bar(args, total=2, unit="step") as steps:
        steps.set_description("leave-one-SoC-out evaluation")
        report, _, _ = run_transfer_evaluation(args.measurements_dir)
        steps.update()
        steps.set_description("writing the report")
        write_transfer_report(report, out)
        steps.update()
    for key, value in report.headline().items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def _nothing_imported(measurements_dir: Path | None, runtime: str | None = None) -> LetiError:
    """No end-to-end measurements to work from: say what to import (nothing is written)."""
    from leti.core.store import measurements_dir as resolve

    which = f" of {runtime}" if runtime else ""
    return LetiError(
        f"no end-to-end measurements{which} in {resolve(measurements_dir)}: import the public "
        "data first, `leti import mobile-ml-benchmark ../shared/data/mobile-ml-benchmark` "
        "(or point --measurements-dir / LETI_MEASUREMENTS_DIR at an imported copy); "
        "nothing was written"
    )


def _selected_pairs(
    pairs: Sequence[tuple[str, str]], args: argparse.Namespace, verb: str
) -> list[tuple[str, str]]:
    """The measured (SoC, runtime) pairs that --soc and --runtime select, checked before
    anything is fitted or written: none imported says what to import, none selected says
    which pairs there are."""
    if not pairs:
        raise _nothing_imported(args.measurements_dir)
    chosen = list(pairs)
    if args.soc:
        from leti.core.socs import resolve

        chosen = [p for p in chosen if p[0] == resolve(args.soc).id]
    if args.runtime:
        chosen = [p for p in chosen if p[1] == args.runtime]
    if not chosen:
        asked = " on ".join(a for a in (args.soc, args.runtime) if a)
        measured = ", ".join(f"{s}/{r}" for s, r in pairs)
        raise LetiError(
            f"nothing to {verb}: no end-to-end measurements of {asked}; measured are "
            f"{measured} (`leti calibrate` adapts a SoC from a few timings of its own)"
        )
    return chosen


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.transfer:
        return _evaluate_transfer(args)
    import os

    from leti.evaluate.accuracy import (
        EXTRAPOLATION_RUNTIMES,
        EvalTask,
        available_methods,
        evaluate_many,
        measured_pairs,
    )
    from leti.evaluate.accuracy_report import write_accuracy_report
    from leti.evaluate.nb201 import shipped_consistency

    t0 = time.perf_counter()
    pairs = _selected_pairs(measured_pairs(args.measurements_dir), args, "evaluate")
    skip = set(args.skip or ())
    methods = available_methods()
    if "previous" in skip:
        methods = methods[:1]
    tasks = []
    for soc, runtime in pairs:
        protocols = ("grouped-cv",)
        if "extrapolation" not in skip and runtime in EXTRAPOLATION_RUNTIMES:
            protocols += ("train-small", "train-large")
        tasks.append(
            EvalTask(soc, runtime, args.measurements_dir, tuple(methods), protocols, args.seed)
        )
    jobs = args.jobs or min(2, os.cpu_count() or 1)
    print(
        f"evaluating {len(tasks)} (SoC, runtime) pairs, methods {', '.join(methods)}, "
        f"{jobs} process(es)",
        file=sys.stderr,
    )
    done = {}
    bar = _bar(args, total=len(tasks), desc="evaluating", unit="pair")
    # the longest evaluations first, so that the workers finish together
    for r in evaluate_many(sorted(tasks, key=lambda t: -len(t.protocols)), jobs):
        cells = "  ".join(
            f"{m} ±10% {100 * r.scores[m]['acc10']:5.1f}% cov {100 * r.cv.coverage[m]:3.0f}%"
            for m in r.methods
        )
        extra = "".join(
            f"  | {p} ±10% "
            + "/".join(f"{100 * r.results[p].scores[m]['acc10']:.0f}%" for m in r.methods)
            for p in r.results
            if p != "grouped-cv"
        )
        bar.write(
            f"{r.soc:>14} {r.runtime:<15} {cells}  FLOPs ±10% "
            f"{100 * r.scores['flops']['acc10']:5.1f}%{extra}  ({r.elapsed_s:.0f} s)",
            file=sys.stderr,
        )
        bar.update()
        done[(r.soc, r.runtime)] = r
    bar.close()
    results = [done[p] for p in pairs]
    family = []
    if "nb201" not in skip:
        tflite = [soc for soc, runtime in pairs if runtime == "tflite-gpu"]
        bar = _bar(args, total=len(tflite), desc="NB201 family", unit="SoC")
        for fc in shipped_consistency(tflite, args.models_dir, args.nb201_archs, args.seed):
            s = fc.scores()
            g = s["graph_term_ms"]
            bar.write(
                f"{fc.soc:>14} NB201 x{len(fc.archs)}: tau(total, kernel sum) {fc.tau:.3f}, "
                f"graph term {g['min']:.2f}-{g['max']:.2f} ms ({fc.graph_stage})",
                file=sys.stderr,
            )
            bar.update()
            family.append(fc)
        bar.close()
    skipped = [
        {
            "previous": "the previous method",
            "extrapolation": "the size-extrapolation protocols",
            "nb201": "the NB201 family",
        }[s]
        for s in sorted(skip)
    ]
    out = Path(args.out)
    if write_accuracy_report(results, out, time.perf_counter() - t0, family, skipped):
        print(f"wrote {out}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    else:
        print(f"wrote {out} (no PNG: install matplotlib, `pip install leti[plot]`)")
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per process (default 8 in one process, 2 per worker with --workers: a "
        "prediction is CPU-bound Python, more threads only interleave them)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes (default 1: waitress in this process; N > 1 on Linux: gunicorn forks N "
        "workers after --preload has loaded their models)",
    )
    parser.add_argument(
        "--models-dir",
        default=None,
        help="trained models (default $LETI_MODELS_DIR, else the bundled models/)",
    )
    parser.add_argument(
        "--preload",
        action="append",
        default=None,
        metavar="SOC[:RUNTIME]",
        help="load this estimator at start-up instead of on first request (repeatable)",
    )
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    if args.threads is None:
        from leti.service.server import prefork_available

        args.threads = 8 if args.workers == 1 or not prefork_available() else 2
    if args.threads < 1:
        print("leti serve: --threads must be at least 1", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("leti serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("leti serve: --port must be 0-65535", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("leti", "waitress"):  # INFO even when the CLI configured WARNING
        logging.getLogger(name).setLevel(logging.INFO)
    from leti.service.server import build_server, prefork_available, run_server, server_url

    if args.workers > 1 and not prefork_available():
        print(
            "leti serve: --workers needs gunicorn on a forking system (Linux, macOS); "
            "serving in one process",
            file=sys.stderr,
        )
    elif args.workers > 1:
        return _serve_workers(args)
    try:
        server, app = build_server(
            args.host, args.port, args.threads, args.models_dir, args.preload
        )
        # One line the tests (and people) can read the actual port from, even with --port 0.
        print(
            f"leti: serving on {server_url(server, args.host)} "
            f"({args.threads} threads, models from {app.extensions['leti'].models_dir})",
            file=sys.stderr,
            flush=True,
        )
        run_server(server)
    except LetiError as exc:  # e.g. --preload of an unknown SoC, LETI_MAX_UPLOAD_MB=abc
        print(f"leti serve: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"leti serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. port in use
        print(f"leti serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_workers(args: argparse.Namespace) -> int:
    """`leti serve --workers N`: gunicorn's master preloads, then forks the workers."""
    from leti.core.store import models_dir as resolve_models_dir
    from leti.service.server import serve_workers

    def ready(url: str) -> None:
        # the same line as one process prints: tests and people read the port from it
        print(
            f"leti: serving on {url} ({args.workers} workers x {args.threads} threads, "
            f"models from {resolve_models_dir(args.models_dir)})",
            file=sys.stderr,
            flush=True,
        )

    try:
        serve_workers(
            args.host,
            args.port,
            args.workers,
            args.threads,
            args.models_dir,
            args.preload,
            on_ready=ready,
        )
    except LetiError as exc:
        print(f"leti serve: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"leti serve: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # gunicorn exits when it cannot bind or a worker cannot boot
        return int(exc.code or 0)
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    """`leti serve [flags]` on its own (what `python -m leti serve` runs, as a function)."""
    parser = argparse.ArgumentParser(prog="leti serve", description="Run the leti HTTP service.")
    add_serve_arguments(parser)
    return cmd_serve(parser.parse_args(argv))


def _ship_benchmark_calibrations(root: Path, data_dir: Path) -> None:
    """ncnn-vulkan calibrations of the SoCs whose GPUs the public ncnn benchmark timed."""
    import math

    from leti.train.benchmark import ship_calibrations

    for doc in ship_calibrations(data_dir, root):
        lo, hi = doc["interval_log_quantiles"]
        src = doc.get("source") or {}
        what = src.get("section", ", ".join(src.get("borrowed_from", [])))
        print(
            f"{doc['soc']}/{doc['runtime']}: {doc.get('provenance') or 'calibrated'} from "
            f"{doc['k']} public timings ({what[:60]}); interval "
            f"{100 * (math.exp(lo) - 1):+.0f}% / {100 * (math.exp(hi) - 1):+.0f}%"
        )


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`leti calibrate --soc S [--runtime R] --measurements timings.csv [--models-dir D]`, or
    `leti calibrate --from-benchmark [DIR]` (the shipped ncnn-vulkan calibrations)."""
    import math

    from leti.predict.registry import calibration_path
    from leti.train.calibrate import calibrate

    if args.from_benchmark is not None:
        _ship_benchmark_calibrations(_models_root(args.models_dir), args.from_benchmark)
        return 0
    if args.from_measurements is not None:
        doc, timings = _calibrate_from_measurements(args)
    elif not args.soc or not args.measurements:
        raise LetiError(
            "leti calibrate needs --soc and --measurements (or --from-measurements, or "
            "--from-benchmark)"
        )
    else:
        doc, timings = calibrate(args.soc, args.runtime, args.measurements, args.models_dir)
    print(timings.report())
    lo, hi = doc["interval_log_quantiles"]
    base = doc["base"]
    print(
        f"{doc['soc']}/{doc['runtime']}: calibrated on {doc['k']} timings "
        f"(base {base['runtime']}, {base['provenance']}"
        + (f", profile {base['profile']}" if base["profile"] else "")
        + ")"
    )
    off = doc.get("offset_map") if doc.get("form") == "offset" else None
    if off:
        mapped = f"t = {off['scale']:.4f} t_base {off['offset_ms']:+.3f} ms"
    else:
        mapped = f"log t = {doc['a']:+.4f} + {doc['b']:.4f} log t_base"
    why = (doc.get("base_selection") or {}).get("why")
    if why:
        print(f"  base: {why}")
    sel = doc.get("form_selection")
    if sel:
        mse = sel["loo_mse"]
        print(
            f"  form {sel['chosen']} (leave-one-out RMS log residual: log-affine "
            f"{math.sqrt(mse['log_affine']):.3f}, offset {math.sqrt(mse['offset']):.3f}; "
            f"the offset form needs < {sel['gain']} x the log-affine mean square)"
        )
    print(
        f"  {mapped}; leave-one-out RMS "
        f"{100 * (math.exp(doc['loo_rms_log_residual']) - 1):.1f}%; interval "
        f"{100 * (math.exp(lo) - 1):+.0f}% / {100 * (math.exp(hi) - 1):+.0f}%"
    )
    for r in doc["residuals"]:
        print(
            f"  {r['graph']}: measured {r['measured_ms']:.2f} ms, base {r['base_ms']:.2f}, "
            f"calibrated {r['calibrated_ms']:.2f} "
            f"({100 * (math.exp(-r['log_residual']) - 1):+.1f}%)"
        )
    for row in (doc.get("class_scales") or {}).get("class_only", []):
        print(f"  line {row['line']} {row['graph']}: {row['why']} (class scales only)")
    path = calibration_path(_models_root(args.models_dir), doc["soc"], doc["runtime"])
    print(f"wrote {path} ({doc['model_version']})")
    if timings.rejected:
        print(f"warning: {len(timings.rejected)} row(s) rejected (see above)")
    return 0


def _calibrate_from_measurements(args: argparse.Namespace) -> tuple[dict, Any]:
    """`leti calibrate --soc S [--runtime R] --from-measurements [DIR]`: the end-to-end rows of
    (S, R) in the measurements dir, each with its graph, as the timings of a calibration."""
    import hashlib

    from leti.core import socs
    from leti.core.store import measurements_dir, sha256_file
    from leti.measurements.schema import load_e2e
    from leti.train.calibrate import calibrate_timings
    from leti.train.timings import RejectedRow, TimingRow, Timings

    if not args.soc:
        raise LetiError("leti calibrate --from-measurements needs --soc")
    root = _models_root(args.models_dir)
    soc = socs.registry(root).resolve(args.soc)
    runtime = socs.resolve_runtime(args.runtime, root)
    where = measurements_dir(None if args.from_measurements is True else args.from_measurements)
    rows = load_e2e(where, soc=soc.id, runtime=runtime)
    if rows.empty:
        raise LetiError(
            f"no end-to-end measurements of {soc.id}/{runtime} in {where}: run `leti measure` "
            "first; nothing was written"
        )
    digest = hashlib.sha256(
        rows.sort_values(["model", "source"]).to_csv(index=False).encode()
    ).hexdigest()
    timings = Timings(source=f"{where} ({soc.id}/{runtime} end-to-end rows)", file_sha256=digest)
    seen: dict[str, int] = {}
    for line, rec in enumerate(rows.itertuples(index=False), start=1):
        path = Path(rec.graph) if rec.graph else None
        if path is None or not path.is_file():
            timings.rejected.append(RejectedRow(line, rec.model, "missing_file", str(rec.graph)))
            continue
        sha = sha256_file(path)
        if sha in seen:
            timings.rejected.append(
                RejectedRow(line, rec.model, "duplicate", f"same graph as row {seen[sha]}")
            )
            continue
        seen[sha] = line
        timings.rows.append(TimingRow(line, rec.model, path.resolve(), float(rec.latency_ms), sha))
    tools = sorted({str(s).split(":")[1] for s in rows["source"] if str(s).count(":") >= 1})
    source = {
        "dataset": "leti measure",
        "section": f"{soc.id}/{runtime} end-to-end rows in {where}",
        "models": len(timings.rows),
        "notes": [
            f"calibrated on {len(timings.rows)} end-to-end timings measured with leti measure "
            f"({', '.join(tools) or 'unknown tool'})"
        ],
    }
    return calibrate_timings(soc, runtime, timings, root, source=source), timings


def cmd_socs(args: argparse.Namespace) -> int:
    """`leti socs [--json]` lists every SoC; `leti socs add ...` defines your own board."""
    import json

    from leti.core import socs
    from leti.predict.registry import available

    root = _models_root(args.models_dir)
    if getattr(args, "socs_command", None) == "remove":
        path = socs.remove_user_soc(root, args.id)
        print(f"removed {args.id} from {path}")
        return 0
    if getattr(args, "socs_command", None) == "add":
        path = socs.add_user_soc(
            root,
            args.id,
            replace=args.replace,
            name=args.name,
            gpu=args.gpu,
            family=args.family,
            fp16_gflops=args.fp16_gflops,
            fp32_gflops=args.fp32_gflops,
            dram_gbps=args.dram_gbps,
        )
        done = "replaced" if args.replace else "added"
        print(f"{done} {args.id} ({args.name}, {args.gpu}) in {path}")
        print(f"calibrate it: leti calibrate --soc {args.id} --measurements t.csv")
        return 0
    reg = socs.registry(root)
    by_soc: dict[str, dict[str, dict]] = {}
    for a in available(root):
        by_soc.setdefault(a["soc"], {})[a["runtime"]] = {
            "provenance": a["provenance"],
            "model_version": a["model_version"],
            **({"calibration": a["calibration"]} if a.get("calibration") else {}),
        }
    rows = [
        {
            "id": sid,
            "name": soc.name,
            "gpu": soc.gpu,
            "family": soc.family,
            "user_defined": reg.is_user(sid),
            "runtimes": by_soc.get(sid, {}),
        }
        for sid, soc in sorted(reg.socs.items())
    ]
    if args.json:
        print(json.dumps({"models_dir": str(root), "socs": rows}, indent=2))
        return 0
    for r in rows:
        mark = " [user-defined]" if r["user_defined"] else ""
        print(f"{r['id']}: {r['name']} ({r['gpu']}){mark}")
        if not r["runtimes"]:
            print("  no model answers (yet)")
        for rt, e in sorted(r["runtimes"].items()):
            print(f"  {rt}: {e['provenance']} {e['model_version']}")
            cal = e.get("calibration")
            if cal:
                src = cal.get("source") or {}
                where = src.get("section") or ", ".join(src.get("borrowed_from", []))
                print(
                    f"    {cal['k']} timings{f' ({where[:60]})' if where else ''}; base "
                    f"{cal['base']['runtime']} {cal['base']['provenance']}"
                    + (f" as {cal['base']['profile']}" if cal["base"].get("profile") else "")
                )
                if cal.get("why"):
                    print(f"    {cal['why']}")
    return 0


def _models_root(arg: Path | None) -> Path:
    from leti.core.store import models_dir

    return models_dir(arg)


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    from leti.measurements.tools import TOOLS

    p.description = (
        "Time graphs with a device tool and store the rows (per-kernel where the tool gives "
        "them, end-to-end always) under <measurements-dir>/<source-name>. A campaign (--graphs) "
        "skips graphs already measured (unless --force), records each failure with its reason "
        "in measure.json and goes on. See the README, 'Measuring on devices'."
    )
    p.add_argument("--soc", required=True, help="SoC id or alias of the device")
    p.add_argument(
        "--runtime",
        default=None,
        help="default: the tool's ("
        + ", ".join(f"{t.name}: {t.runtime}" for t in TOOLS.values())
        + ")",
    )
    p.add_argument("--tool", required=True, choices=list(TOOLS), help="what times the model")
    graphs = p.add_mutually_exclusive_group(required=True)
    graphs.add_argument("--graph", type=Path, help="one graph (ONNX, or a .param for benchncnn)")
    graphs.add_argument(
        "--graphs",
        nargs="+",
        metavar="DIR|GLOB",
        help="a campaign: folders (their graphs) and quoted glob patterns",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--adb", nargs="?", const=True, default=None, metavar="SERIAL", help="an Android device"
    )
    where.add_argument("--ssh", metavar="HOST", help="a Linux board (user@host, key login)")
    where.add_argument("--local", action="store_true", help="this machine")
    where.add_argument(
        "--from-log", type=Path, metavar="LOG", help="a saved run (a folder of <model>.log)"
    )
    p.add_argument(
        "--model-file",
        "--tflite",
        type=Path,
        default=None,
        help="the file the device runs for --graph (default: beside the graph, e.g. net.tflite)",
    )
    p.add_argument("--binary", default=None, help="the tool on the device (default: its name)")
    p.add_argument("--runs", type=int, default=None, help="timed runs (default 50; onnxruntime 10)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs (default 10; ort 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (benchncnn, onnxruntime)")
    p.add_argument(
        "--profile-runs", type=int, default=3, help="onnxruntime: profiled runs (default 3)"
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run of the tool")
    p.add_argument("--force", action="store_true", help="measure graphs already measured again")
    p.add_argument(
        "--clocks-pinned",
        action="store_true",
        help="say in the rows that you pinned the device's clocks (leti does not pin them)",
    )
    p.add_argument(
        "--source-name", default=None, help="folder name (default measure-<soc>-<runtime>-<tool>)"
    )
    p.add_argument("--json", action="store_true", help="print the machine-readable summary")
    _add_measurements_dir(p)
    _add_models_dir(p)
    _add_progress(p)


def cmd_measure(args: argparse.Namespace) -> int:
    """`leti measure`: one graph or a campaign; exit 0 when every graph was measured (or
    skipped), 1 when some failed or were rejected, 2 when none was measured."""
    from leti.measurements import collect
    from leti.measurements.tools import RunOptions

    graphs = collect.find_graphs(args.graphs, args.tool) if args.graphs else [args.graph]
    ort = args.tool == "onnxruntime"
    options = RunOptions(
        runs=args.runs if args.runs is not None else (10 if ort else 50),
        warmup=args.warmup if args.warmup is not None else (2 if ort else 10),
        threads=args.threads,
        profile_runs=args.profile_runs,
        binary=args.binary,
    )
    transport = None
    if args.from_log is None:
        transport = collect.make_transport(args.adb, args.ssh, args.local)
    campaign = collect.prepare_campaign(
        args.soc,
        args.tool,
        graphs,
        runtime=args.runtime,
        transport=transport,
        from_log=args.from_log,
        measurements_dir=args.measurements_dir,
        models_dir=args.models_dir,
        source_name=args.source_name,
        options=options,
        force=args.force,
        timeout=args.timeout,
        clocks_pinned=args.clocks_pinned,
        model_file=args.model_file,
    )
    results = []
    bar = _bar(args, total=len(campaign.graphs), desc=f"measuring ({args.tool})", unit="graph")
    for r in collect.run_campaign(campaign):
        results.append(r)
        bar.set_postfix_str(f"{r.model}: {r.status}")
        if not args.json:
            bar.write(_measure_lines(r, getattr(args, "verbose", False)), file=sys.stdout)
        bar.update()
    bar.close()
    doc = collect.summary(campaign, results)
    if args.json:
        if args.graph is not None and len(results) == 1:
            one = {k: doc[k] for k in ("soc", "runtime", "tool", "out_dir")}
            print(json.dumps({**one, **doc["graphs"][0]}, indent=2))
        else:
            print(json.dumps(doc, indent=2))
    else:
        tot = doc["totals"]
        print(
            f"{tot['measured']} measured, {tot['skipped']} skipped (already measured), "
            f"{tot['rejected']} rejected, {tot['failed']} failed: {tot['rows']['kernel']} kernel "
            f"and {tot['rows']['e2e']} end-to-end rows into {campaign.out_dir}"
        )
        spread = doc["repeat_spread"]
        if spread["median"] is not None:
            print(
                f"repeat-to-repeat spread (std / median per graph): median "
                f"{100 * spread['median']:.1f}%, max {100 * spread['max']:.1f}% over "
                f"{spread['graphs']} graphs"
            )
        if tot["failed"] or tot["rejected"]:
            print(f"reasons recorded in {campaign.out_dir / collect.CAMPAIGN_FILE}")
    bad = sum(r.status in ("failed", "rejected") for r in results)
    ok = sum(r.status in ("measured", "skipped") for r in results)
    return 0 if not bad else (1 if ok else 2)


def _measure_lines(r: Any, verbose: bool = False) -> str:
    """`r`: a `leti.measurements.collect.GraphResult`."""
    if r.status == "skipped":
        return f"{r.model}: skipped, {r.reason}"
    if r.status == "failed":
        return f"{r.model}: FAILED: {r.reason}"
    std = f" ± {r.std_ms:.3f}" if r.std_ms is not None else ""
    head = f"{r.model}: {r.status}, end-to-end {r.e2e_ms:.3f}{std} ms" if r.e2e_ms else r.model
    if r.device:
        head += f" on {r.device}"
    lines = [head]
    if r.status == "rejected":
        lines.append(f"  rejected: {r.reason}")
    else:
        lines[0] += f"; {r.kernel_rows} kernel row(s), {r.e2e_rows} end-to-end row"
    for rej in r.rejected:
        if rej.get("rows"):
            lines.append(f"  kernel rows rejected, {rej['reason']}: {rej['rows']}")
    if r.fusion_disagreements:
        lines.append(f"  {len(r.fusion_disagreements)} fusion disagreement(s) with leti's rules")
    for note in r.notes if verbose else r.notes[:5]:
        lines.append(f"  note: {note}")
    if not verbose and len(r.notes) > 5:
        lines.append(f"  ({len(r.notes) - 5} more notes: -v, or --json)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="leti", description="mobile-GPU latency estimator")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("import", help="validate and import a public measurement data set")
    p.add_argument("source", help="mobile-ml-benchmark")
    p.add_argument("path", help="folder of the data set, e.g. ../shared/data/mobile-ml-benchmark")
    p.add_argument("--zoo", type=Path, default=None, help="folder of the models' ONNX graphs")
    _add_measurements_dir(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("fit", help="retrain models/ from measurements/")
    p.add_argument("--soc", default=None)
    p.add_argument("--runtime", default=None)
    p.add_argument("--no-cv", action="store_true", help="skip grouped CV metrics in the manifest")
    p.add_argument("--no-transfer", action="store_true", help="do not retrain the transfer model")
    _add_progress(p)
    _add_models_dir(p)
    _add_measurements_dir(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "predict",
        help="predict the end-to-end latency of ONNX graphs or ncnn .param files on SoCs",
        description="Price every graph on every SoC in one process (the batch path). A graph "
        "that fails gets its error (on stderr, and as a row or line of the output) and the "
        "others still print; the exit status is 1 if some failed, 2 if all did.",
    )
    p.add_argument(
        "graph",
        nargs="+",
        help="ONNX or .param files, folders (their .onnx and .param files) or glob patterns",
    )
    p.add_argument(
        "--soc",
        required=True,
        help="a SoC id or alias, several separated by commas, or 'all' (every SoC a model "
        "answers for on the runtime)",
    )
    p.add_argument("--runtime", default=None, help="default: tflite-gpu")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="table (default): one graph and SoC in detail, several as a graph x SoC grid; "
        "csv: one row per graph and SoC; jsonl: one answer document per line; json: the "
        "answer document (a list of them for several); trace: a Chrome trace of the kernels "
        "(chrome://tracing, Perfetto)",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--no-layers", action="store_true", help="no per-layer breakdown")
    p.add_argument(
        "--top", type=_int_at_least(1), default=10, help="lines of the table's breakdown (>= 1)"
    )
    p.add_argument(
        "--group-by",
        choices=("kernel",),
        default=None,
        help="sum the breakdown by kernel kind (table; json and jsonl add 'groups')",
    )
    p.add_argument("--input-shape", type=_shape_arg, action="append", metavar="NAME=D1,D2,..")
    p.add_argument(
        "--jobs",
        type=_int_at_least(0),
        default=1,
        help="processes that price the graphs (default 1: this one; N: this one and N-1 worker "
        "processes; 0: one per core); each SoC starts its own workers, about half a second each",
    )
    _add_progress(p)
    _add_models_dir(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="accuracy report: grouped CV, size extrapolation, interval coverage, NB201 family",
    )
    p.add_argument("--soc", default=None, help="evaluate this SoC only (id or alias)")
    p.add_argument("--runtime", default=None)
    p.add_argument("--out", default="benchmarks/accuracy.md")
    p.add_argument("--transfer", action="store_true", help="leave-one-SoC-out transfer report")
    p.add_argument(
        "--skip",
        action="append",
        choices=("previous", "extrapolation", "nb201"),
        help="leave out a slow part: the previous method's fits, the size-extrapolation "
        "protocols or the NB201 family (repeatable)",
    )
    p.add_argument(
        "--nb201-archs",
        type=int,
        default=1000,
        help="NB201 archs to price, a seeded sample of the 15,625 (default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="folds and NB201 sample (default 0)")
    p.add_argument(
        "--jobs", type=int, default=0, help="worker processes (default: up to 2, one per core)"
    )
    _add_progress(p)
    _add_models_dir(p)
    _add_measurements_dir(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="serve the HTTP API (waitress; gunicorn with --workers N)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("calibrate", help="fit a calibration from end-to-end timings")
    p.add_argument("--soc")
    p.add_argument("--runtime", default=None)
    p.add_argument("--measurements", type=Path, help="CSV: graph,latency_ms")
    p.add_argument(
        "--from-benchmark",
        type=Path,
        nargs="?",
        const=_ncnn_benchmark_dir(),
        default=None,
        metavar="DIR",
        help="write the ncnn-vulkan calibrations of the SoCs the public ncnn benchmark timed "
        f"(default {_ncnn_benchmark_dir()})",
    )
    p.add_argument(
        "--from-measurements",
        type=Path,
        nargs="?",
        const=True,
        default=None,
        metavar="DIR",
        help="calibrate --soc/--runtime on the end-to-end rows `leti measure` stored (default "
        "$LETI_MEASUREMENTS_DIR or measurements/)",
    )
    _add_models_dir(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("socs", help="list every SoC and what answers for it; add your own board")
    p.add_argument("--json", action="store_true")
    _add_models_dir(p)
    p.set_defaults(func=cmd_socs)
    socs_sub = p.add_subparsers(dest="socs_command")
    a = socs_sub.add_parser("add", help="define your own SoC in <models-dir>/socs.json")
    a.add_argument("--id", required=True, help="lowercase letters, digits and dashes")
    a.add_argument("--name", required=True)
    a.add_argument("--gpu", required=True)
    a.add_argument("--family", required=True, help="adreno, mali, powervr, apple or other")
    a.add_argument("--fp16-gflops", required=True)
    a.add_argument("--fp32-gflops", required=True)
    a.add_argument("--dram-gbps", required=True)
    a.add_argument(
        "--replace", action="store_true", help="edit a SoC of yours already defined (same --id)"
    )
    a.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS, help="as for `socs`")
    a.set_defaults(func=cmd_socs)
    r = socs_sub.add_parser("remove", help="take a SoC of yours out of <models-dir>/socs.json")
    r.add_argument("id")
    r.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS, help="as for `socs`")
    r.set_defaults(func=cmd_socs)

    p = sub.add_parser("measure", help="collect per-kernel measurements on a device")
    add_measure_arguments(p)
    p.set_defaults(func=cmd_measure)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a reader that went away (`| head -1`) shows up here, not at exit
        return rc
    except LetiError as exc:
        print(f"error: {_cli_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader closed the pipe: stop quietly, and point stdout at /dev/null so that
        # the interpreter's own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as if killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
