"""Prediction speed against the parse floor, measured in one run.

    python benchmarks/speed.py [--soc snapdragon855] [--zoo ../shared/zoo/mobile-ml-benchmark]
                               [--baseline-rev REV] [--rounds 15]

Writes benchmarks/speed.md. The floor is what any ONNX-reading estimator pays: `onnx` loading
the same bytes and running its shape inference on them (`onnx.shape_inference.infer_shapes`).
Every figure is a ratio to the floor (or to the baseline) timed in the same run, in alternating
rounds, because the machine may be shared: absolute times from different runs do not compare.

- warm single predict (answer cache off) of light_resnet50 (onnx wheel), mobilenetv2_w1 (zoo)
  and a one-conv graph, with the split by stage;
- the cost per node: a straight line through (nodes, time) of every zoo graph, for predict and
  for the floor;
- `predict_many` over the zoo graphs in one process, against the floor and, with
  `--baseline-rev`, against that revision of leti (its `leti/` from git, run in a subprocess on
  the same models), and with `workers=2` (this process and one worker process) against 1;
- an answer-cache hit;
- cold start: a fresh interpreter's `import leti; Estimator.load(...).predict(...)`, its RSS,
  and which heavy modules it imported; the RSS with every model loaded.
Graphs are held in memory (no disk I/O timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("speed.md")
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = REPO.parent / "shared" / "zoo" / "mobile-ml-benchmark"
os.environ.setdefault("LETI_CACHE_MB", "0")  # every predict below is priced, not looked up

from leti.frontend.fusion import plan as plan_kernels  # noqa: E402
from leti.frontend.graph import parse_graph  # noqa: E402
from leti.predict.estimator import Estimator  # noqa: E402
from leti.predict.workers import shutdown_pools  # noqa: E402

TARGETS = {"warm": 4.0, "slope": 3.0, "batch": 2.0, "workers": 1.7, "cold": 1.0}


def floor(data: bytes) -> None:
    onnx.shape_inference.infer_shapes(onnx.load_model_from_string(data))


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def med(values) -> float:
    return statistics.median(values)


def one_conv() -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32, 32])
    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "one_conv", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def stages(est: Estimator, data: bytes) -> tuple[float, float, float]:
    """Seconds in parse, kernel plan, pricing (kernels, graph stage, breakdown)."""
    t0 = time.perf_counter()
    graph = parse_graph(data)
    t1 = time.perf_counter()
    plan = plan_kernels(graph, est.runtime)
    t2 = time.perf_counter()
    est.predict_plan(plan, graph)
    return t1 - t0, t2 - t1, time.perf_counter() - t2


# ---------------------------------------------------------------------------- baseline


BASELINE_CHILD = r"""
import json, os, sys, time
from pathlib import Path
from leti.predict.estimator import Estimator
soc, zoo = sys.argv[1], Path(sys.argv[2])
blobs = [p.read_bytes() for p in sorted(zoo.glob("*.onnx"))]
est = Estimator.load(soc)
est.predict_many(blobs[:5])
print("ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    est.predict_many(blobs)
    print(json.dumps(time.perf_counter() - t), flush=True)
"""


class Baseline:
    """Another revision's leti (git archive of `rev`), pricing the zoo in a subprocess on
    command, on this checkout's models."""

    def __init__(self, rev: str, soc: str, zoo: Path) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="leti-baseline-")
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "leti"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", self.dir.name], input=archive, check=True)
        self.rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        env = {
            **os.environ,
            "PYTHONPATH": self.dir.name,
            "LETI_MODELS_DIR": str(REPO / "models"),
            "LETI_CACHE_MB": "0",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BASELINE_CHILD, soc, str(zoo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.dir.name,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def batch(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.dir.cleanup()


# ---------------------------------------------------------------------------- cold start

COLD_CHILD = r"""
import time
t0 = time.perf_counter()
import sys, json
import leti
from leti import Estimator
pred = Estimator.load(sys.argv[1]).predict(sys.argv[2])
t1 = time.perf_counter()
heavy = sorted({"sklearn", "pandas", "scipy", "xgboost", "flask"} & set(sys.modules))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

one = rss()
loaded = []
if len(sys.argv) > 3:
    for a in leti.available():
        try:
            loaded.append(Estimator.load(a["soc"], a["runtime"]))
        except leti.LetiError:
            pass
print(json.dumps({"answer_s": t1 - t0, "heavy": heavy, "rss_mib": one, "every": len(loaded),
                  "rss_all_mib": rss()}))
"""


def cold_start(soc: str, graph: Path, runs: int) -> dict:
    walls, inner, last = [], [], {}
    for i in range(runs):
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", COLD_CHILD, soc, str(graph), *(["all"] if i == 0 else [])],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "LETI_CACHE_MB": "64"},
        )
        wall = time.perf_counter() - t
        doc = json.loads(out.stdout.strip().splitlines()[-1])
        if i == 0:
            last = doc
            continue  # the first run also loads every model: not a cold start
        walls.append(wall)
        inner.append(doc["answer_s"])
        last = {**doc, "rss_all_mib": last["rss_all_mib"], "every": last["every"]}
    return {"wall": med(walls), "inner": med(inner), **last}


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--soc", default="snapdragon855")
    ap.add_argument("--zoo", type=Path, default=ZOO)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--baseline-rev", default=None, help="git revision to compare the batch with")
    ap.add_argument("--cold-runs", type=int, default=7)
    args = ap.parse_args()
    est = Estimator.load(args.soc)
    lines = [
        "# Prediction speed",
        "",
        f"Generated by `python benchmarks/speed.py` on {datetime.now(UTC).date().isoformat()}; "
        "do not edit by hand.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(load average {os.getloadavg()[0]:.1f} at the start: the machine is shared), "
        f"Python {platform.python_version()}, onnx {onnx.__version__}. Estimator: "
        f"{est.soc}/{est.runtime} ({est.model_version}). The floor is `onnx.load_model_from_"
        "string` + `onnx.shape_inference.infer_shapes` on the same bytes, timed in alternating "
        f"rounds with what it is compared to ({args.rounds} rounds; times are medians, ratios "
        "the medians of each round's own ratio); graphs are held in memory; the answer cache "
        "is off except where it is the subject.",
        "",
    ]

    # warm single predict
    graphs = [("light_resnet50", (LIGHT / "light_resnet50.onnx").read_bytes())]
    mb = args.zoo / "mobilenetv2_w1.onnx"
    if mb.is_file():
        graphs.append(("mobilenetv2_w1", mb.read_bytes()))
    graphs.append(("one conv", one_conv()))
    lines += [
        "## Warm single predict",
        "",
        "| graph | nodes | kernels | floor ms | predict ms | ratio | parse ms | plan ms | "
        "pricing ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for name, data in graphs:
        for _ in range(3):
            est.predict(data)
            floor(data)
        fl, pr, split = [], [], []
        for _ in range(args.rounds * 2):
            fl.append(timed(floor, data))
            pr.append(timed(est.predict, data))
            split.append(stages(est, data))
        nodes = len(onnx.load_model_from_string(data).graph.node)
        kernels = len(est.plan(data).kernels)
        ratios[name] = med(p / f for p, f in zip(pr, fl, strict=True))  # paired rounds
        lines.append(
            f"| {name} | {nodes} | {kernels} | {1000 * med(fl):.2f} | {1000 * med(pr):.2f} | "
            f"**{ratios[name]:.2f}x** | "
            + " | ".join(f"{1000 * med(s[i] for s in split):.2f}" for i in range(3))
            + " |"
        )
    warm_ok = all(
        ratios[n] <= TARGETS["warm"] for n in ("light_resnet50", "mobilenetv2_w1") if n in ratios
    )
    lines += [
        "",
        f"Target: resnet50 and mobilenetv2 <= {TARGETS['warm']:.0f}x the floor: "
        f"{'met' if warm_ok else 'NOT met'}. A cache hit (the same bytes again, cache on) "
        f"costs {_cache_hit_us(args.soc, graphs[0][1]):.0f} us for light_resnet50.",
        "",
    ]

    zoo = sorted(args.zoo.glob("*.onnx")) if args.zoo.is_dir() else []
    if not zoo:
        lines += [f"Zoo sections skipped: no graphs at {args.zoo}.", ""]
    else:
        blobs = [p.read_bytes() for p in zoo]
        lines += _slope(est, blobs, max(args.rounds // 3, 3))
        lines += _batch(est, blobs, args)
    cold = cold_start(args.soc, LIGHT / "light_resnet50.onnx", args.cold_runs)
    lines += [
        "## Cold start and memory",
        "",
        f"A fresh `python -c \"import leti; leti.Estimator.load('{args.soc}')"
        ".predict('light_resnet50.onnx')\"`, median of "
        f"{args.cold_runs - 1} runs:",
        "",
        "| measure | value |",
        "|---|---|",
        f"| process start to exit (interpreter included) | **{cold['wall']:.2f} s** |",
        f"| `import leti` to the first answer, in the process | {cold['inner']:.2f} s |",
        f"| heavy modules imported | {', '.join(cold['heavy']) or 'none'} "
        "(of sklearn, pandas, scipy, xgboost, flask) |",
        f"| RSS after the first answer (one estimator) | {cold['rss_mib']:.0f} MiB |",
        f"| RSS with all {cold['every']} (SoC, runtime) estimators loaded | "
        f"{cold['rss_all_mib']:.0f} MiB |",
        "",
        f"Target: cold start <= {TARGETS['cold']:.1f} s: "
        f"{'met' if cold['wall'] <= TARGETS['cold'] else 'NOT met'}.",
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    shutdown_pools()


def _cache_hit_us(soc: str, data: bytes) -> float:
    os.environ["LETI_CACHE_MB"] = "64"
    try:
        est = Estimator.load(soc)
        est.predict(data)
        return 1e6 * med(timed(est.predict, data) for _ in range(50))
    finally:
        os.environ["LETI_CACHE_MB"] = "0"


def _slope(est: Estimator, blobs: list[bytes], rounds: int) -> list[str]:
    nodes = np.array([len(onnx.load_model_from_string(b).graph.node) for b in blobs], float)
    fl = np.zeros((rounds, len(blobs)))
    pr = np.zeros((rounds, len(blobs)))
    for r in range(rounds):
        for i, b in enumerate(blobs):
            fl[r, i] = timed(floor, b)
            pr[r, i] = timed(est.predict, b)
    f_slope, f_icpt = np.polyfit(nodes, np.median(fl, axis=0), 1)
    p_slope, p_icpt = np.polyfit(nodes, np.median(pr, axis=0), 1)
    ratio = p_slope / f_slope
    return [
        "## Cost per node",
        "",
        f"A straight line through (nodes, median time) of the {len(blobs)} zoo graphs "
        f"({int(nodes.min())}-{int(nodes.max())} nodes), {rounds} rounds:",
        "",
        "| | intercept ms | per node us |",
        "|---|---:|---:|",
        f"| floor | {1000 * f_icpt:.2f} | {1e6 * f_slope:.1f} |",
        f"| predict | {1000 * p_icpt:.2f} | {1e6 * p_slope:.1f} |",
        "",
        f"Slope ratio **{ratio:.2f}x**; target <= {TARGETS['slope']:.0f}x: "
        f"{'met' if ratio <= TARGETS['slope'] else 'NOT met'}.",
        "",
    ]


def _batch(est: Estimator, blobs: list[bytes], args: argparse.Namespace) -> list[str]:
    n = len(blobs)
    results = est.predict_many(blobs)
    errors = sum(not hasattr(r, "total_ms") for r in results)
    t = time.perf_counter()
    two = est.predict_many(blobs, workers=2)  # starts the pool
    start_up = time.perf_counter() - t - med(timed(est.predict_many, blobs) for _ in range(3)) / 2
    same = all(
        a.total_ms == b.total_ms and a.interval_ms == b.interval_ms and a.layers == b.layers
        for a, b in zip(results, two, strict=True)
    )
    base = Baseline(args.baseline_rev, args.soc, args.zoo) if args.baseline_rev else None
    rounds = args.rounds
    t_floor, t_one, t_two, t_base = [], [], [], []
    try:
        for _ in range(rounds):
            t_floor.append(sum(timed(floor, b) for b in blobs))
            t_one.append(timed(est.predict_many, blobs))
            t_two.append(timed(lambda: est.predict_many(blobs, workers=2)))
            if base is not None:
                t_base.append(base.batch())
    finally:
        if base is not None:
            base.close()
    one, two_w, fl = med(t_one), med(t_two), med(t_floor)
    # ratios of the round's own pair (timed back to back): less at the mercy of the neighbours
    scale = med(a / b for a, b in zip(t_one, t_two, strict=True))
    lines = [
        "## Batch throughput",
        "",
        f"`Estimator.predict_many` over the {n} zoo graphs, {rounds} rounds ({errors} errors; "
        f"2 processes give {'the same' if same else 'DIFFERENT'} answers as 1); the "
        "gains below are medians of each round's own ratio:",
        "",
        "| | graphs/s | ratio to the floor |",
        "|---|---:|---:|",
        f"| floor (load + shape inference, one process) | {n / fl:.1f} | 1.00x |",
        f"| predict_many, one process | **{n / one:.1f}** | {one / fl:.2f}x |",
        f"| predict_many, workers=2 (this process + 1 worker process, warm) | "
        f"**{n / two_w:.1f}** | {two_w / fl:.2f}x |",
        f"| (starting the worker, once per estimator) | {start_up:.2f} s | |",
    ]
    if t_base:
        lines.append(
            f"| predict_many at {base.rev} (before issue 13), one process | "
            f"{n / med(t_base):.1f} | {med(t_base) / fl:.2f}x |"
        )
    lines.append("")
    if t_base:
        gain = med(a / b for a, b in zip(t_base, t_one, strict=True))
        lines.append(
            f"One process: **{gain:.2f}x** the rate of {base.rev}; target >= "
            f"{TARGETS['batch']:.0f}x: {'met' if gain >= TARGETS['batch'] else 'NOT met'}."
        )
    lines += [
        f"workers=2: **{scale:.2f}x** one process; target >= {TARGETS['workers']:.1f}x on an "
        f"idle 2-core machine: {'met' if scale >= TARGETS['workers'] else 'NOT met'} "
        f"(load average {os.getloadavg()[0]:.1f} now).",
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
