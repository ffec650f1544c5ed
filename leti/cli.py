"""`leti` command line: import | fit | predict | evaluate | serve | calibrate | measure."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

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
    pairs = measured_pairs(args.measurements_dir)
    if args.soc:
        from leti.core.socs import resolve

        pairs = [p for p in pairs if p[0] == resolve(args.soc).id]
    if args.runtime:
        pairs = [p for p in pairs if p[1] == args.runtime]
    if not pairs:
        raise LetiError("nothing to fit: no end-to-end measurements match (run `leti import`)")
    for soc, runtime in pairs:
        t0 = time.perf_counter()
        cv = {}
        if not args.no_cv:
            cv = evaluate_soc(soc, runtime, args.measurements_dir).scores
        manifest = fit_and_save(soc, runtime, root, args.measurements_dir, cv_metrics=cv)
        acc = f", CV ±10% {100 * cv['leti']['acc10']:.1f}%" if cv else ""
        print(
            f"{soc}/{runtime}: {manifest['model_version']} "
            f"({manifest['training']['graphs']} graphs{acc}) in {time.perf_counter() - t0:.1f}s"
        )
    if not args.no_transfer and not args.soc and args.runtime in (None, "tflite-gpu"):
        # The transfer model learns from every measured SoC at once; its leave-one-SoC-out
        # evaluation sizes the intervals of unmeasured SoCs, so it runs as part of fitting.
        _fit_transfer_model(root, args.measurements_dir)
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
    root: Path, measurements_dir: Path | None, report_out: Path | None = None
) -> None:
    """Run the transfer evaluation (which sizes the intervals and the calibration priors),
    optionally write its report to `report_out`, then train on every measured SoC and write
    `<root>/transfer/tflite-gpu/`."""
    from leti.evaluate.reports import write_transfer_report
    from leti.evaluate.transfer import run as run_transfer_evaluation
    from leti.train.transfer import fit_and_save as fit_and_save_transfer

    report, sets, cache = run_transfer_evaluation(measurements_dir)
    if report_out:
        write_transfer_report(report, report_out)
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
    print(f"{manifest['model_version']}: interval {manifest['interval_log_quantiles']}")


def cmd_predict(args: argparse.Namespace) -> int:
    from leti.predict.estimator import Estimator

    est = Estimator.load(args.soc, args.runtime, args.models_dir)
    shapes = dict(args.input_shape) if args.input_shape else None
    pred = est.predict(args.graph, shapes)
    if args.json:
        print(json.dumps(pred.to_dict(layers=not args.no_layers), indent=2))
        return 0
    lo, hi = pred.interval_ms
    print(f"{pred.soc} / {pred.runtime} ({pred.provenance}, {pred.model_version})")
    print(f"end-to-end: {pred.total_ms:.2f} ms  (interval {lo:.2f} - {hi:.2f} ms)")
    if not args.no_layers:
        top = sorted(pred.layers, key=lambda lt: -lt.ms)[: args.top]
        print(f"top {len(top)} of {len(pred.layers)} kernels:")
        for lt in top:
            print(f"  {lt.ms:9.3f} ms  {lt.kernel:<24} {lt.name}")
    for u in pred.unsupported:
        print(f"unsupported: {u.op} x{u.count} (not included in the total)")
    for note in pred.notes:
        print(f"note: {note}")
    return 0


def _evaluate_transfer(args: argparse.Namespace) -> int:
    """`leti evaluate --transfer`: writes benchmarks/transfer.{md,json} unless `--out` names
    another file than accuracy.md."""
    from leti.evaluate.reports import write_transfer_report
    from leti.evaluate.transfer import DEFAULT_OUT
    from leti.evaluate.transfer import run as run_transfer_evaluation

    out = Path(args.out) if args.out and Path(args.out).name != "accuracy.md" else DEFAULT_OUT
    report, _, _ = run_transfer_evaluation(args.measurements_dir)
    write_transfer_report(report, out)
    for key, value in report.headline().items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


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
    pairs = measured_pairs(args.measurements_dir)
    if args.runtime:
        pairs = [p for p in pairs if p[1] == args.runtime]
    if not pairs:
        which = f" for {args.runtime}" if args.runtime else ""
        raise LetiError(f"no end-to-end measurements{which}: run `leti import` first")
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
        print(
            f"{r.soc:>14} {r.runtime:<15} {cells}  FLOPs ±10% "
            f"{100 * r.scores['flops']['acc10']:5.1f}%{extra}  ({r.elapsed_s:.0f} s)",
            file=sys.stderr,
        )
        done[(r.soc, r.runtime)] = r
    results = [done[p] for p in pairs]
    family = []
    if "nb201" not in skip:
        tflite = [soc for soc, runtime in pairs if runtime == "tflite-gpu"]
        for fc in shipped_consistency(tflite, args.models_dir, args.nb201_archs, args.seed):
            s = fc.scores()
            g = s["graph_term_ms"]
            print(
                f"{fc.soc:>14} NB201 x{len(fc.archs)}: tau(total, kernel sum) {fc.tau:.3f}, "
                f"graph term {g['min']:.2f}-{g['max']:.2f} ms ({fc.graph_stage})",
                file=sys.stderr,
            )
            family.append(fc)
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
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
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
    if args.threads < 1:
        print("leti serve: --threads must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("leti serve: --port must be 0-65535", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for name in ("leti", "waitress"):  # INFO even when the CLI configured WARNING
        logging.getLogger(name).setLevel(logging.INFO)
    from leti.service.server import build_server, run_server, server_url

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
    if not args.soc or not args.measurements:
        raise LetiError("leti calibrate needs --soc and --measurements (or --from-benchmark)")
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
    path = calibration_path(_models_root(args.models_dir), doc["soc"], doc["runtime"])
    print(f"wrote {path} ({doc['model_version']})")
    if timings.rejected:
        print(f"warning: {len(timings.rejected)} row(s) rejected (see above)")
    return 0


def cmd_socs(args: argparse.Namespace) -> int:
    """`leti socs [--json]` lists every SoC; `leti socs add ...` defines your own board."""
    import json

    from leti.core import socs
    from leti.predict.registry import available

    root = _models_root(args.models_dir)
    if getattr(args, "socs_command", None) == "add":
        path = socs.add_user_soc(
            root,
            args.id,
            name=args.name,
            gpu=args.gpu,
            family=args.family,
            fp16_gflops=args.fp16_gflops,
            fp32_gflops=args.fp32_gflops,
            dram_gbps=args.dram_gbps,
        )
        print(f"added {args.id} ({args.name}, {args.gpu}) to {path}")
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
    p.add_argument("--soc", required=True, help="SoC id or alias of the phone")
    p.add_argument("--graph", type=Path, required=True, help="the model's ONNX graph")
    p.add_argument("--tflite", type=Path, default=None, help="the same model as .tflite")
    p.add_argument("--serial", default=None, help="adb serial (default: the only device)")
    # default: leti.measurements.collect.DEFAULT_BENCHMARK_BINARY (/data/local/tmp/...)
    p.add_argument("--benchmark-binary", default=None)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the benchmark")
    p.add_argument("--source-name", default=None, help="folder name (default: measure-<soc>)")
    p.add_argument("--measurements-dir", type=Path, default=None, help="default: measurements/")
    p.add_argument("--from-log", type=Path, default=None, help="parse a captured log instead")


def cmd_measure(args: argparse.Namespace) -> int:
    from leti.measurements import collect

    job = collect.prepare_measurement(
        args.soc,
        args.graph,
        tflite=args.tflite,
        source_name=args.source_name,
        measurements_dir=args.measurements_dir,
        runs=args.runs,
        warmup=args.warmup,
    )
    if args.from_log is not None:
        run = collect.read_log(args.from_log, serial=args.serial)
    else:
        run = collect.run_on_device(
            job, serial=args.serial, benchmark_binary=args.benchmark_binary, timeout=args.timeout
        )
        print(f"raw log: {run.log_path} (re-parse with --from-log)")
    _print_measure_report(collect.ingest(job, run), collect.NO_KERNELS)
    return 0


def _print_measure_report(r, no_kernels: str) -> None:
    """`r`: a `leti.measurements.collect.MeasureReport`."""
    std = f" ± {r.std_ms:.3f}" if r.std_ms is not None else ""
    print(f"{r.model} on {r.soc} ({r.runtime}): end-to-end {r.e2e_ms:.3f}{std} ms")
    if not r.gpu_kernels:
        print(no_kernels)
    print(
        f"kernels: {r.kernels_added} written, {r.kernels_kept} already present (kept), "
        f"{r.kernels_rejected} rejected"
    )
    for reason, n in sorted(r.rejected.items()):
        print(f"  rejected {reason}: {n}")
    for note in r.notes[:20]:
        print(f"  note: {note}")
    print(f"end-to-end: {r.e2e_added} written, {r.e2e_kept} already present (kept)")
    print(f"into {r.out_dir}")


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
    _add_models_dir(p)
    _add_measurements_dir(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser(
        "predict", help="predict the end-to-end latency of an ONNX graph or ncnn .param"
    )
    p.add_argument("graph", type=Path)
    p.add_argument("--soc", required=True)
    p.add_argument("--runtime", default=None, help="default: tflite-gpu")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    p.add_argument("--no-layers", action="store_true")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--input-shape", type=_shape_arg, action="append", metavar="NAME=D1,D2,..")
    _add_models_dir(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "evaluate",
        help="accuracy report: grouped CV, size extrapolation, interval coverage, NB201 family",
    )
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
    _add_models_dir(p)
    _add_measurements_dir(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="serve the HTTP API (waitress)")
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
    a.add_argument("--models-dir", type=Path, default=argparse.SUPPRESS, help="as for `socs`")
    a.set_defaults(func=cmd_socs)

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
        return args.func(args)
    except LetiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
