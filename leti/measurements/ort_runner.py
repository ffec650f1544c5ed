"""Time one ONNX model with onnxruntime on this machine's CPU; print one JSON line.

Run by path (`python .../ort_runner.py '{"model": "m.onnx", ...}'`), in a process of its own, by the
`onnxruntime` collector (`leti.measurements.tools.onnxruntime_cpu`). It imports only numpy and
onnxruntime, so that what is timed is onnxruntime and nothing of leti, and a crash or a hang
fails one graph of a campaign, not the campaign.

Two sessions on the same model file, both on the CPU execution provider at
ORT_ENABLE_EXTENDED (no layout transformation: every node is an ONNX node of the graph or a
fusion named after its Conv), with `threads` intra-op threads and sequential execution:
1. end to end: `warmup` untimed runs, then `repeats` runs each timed with
   `time.perf_counter` around `InferenceSession.run`;
2. per node: onnxruntime's profiler (`enable_profiling`) over `warmup` + `profile_runs`
   runs; each node's `*_kernel_time` events of the runs after the warmup, in ms.
The profiler's own overhead is in the second session only, so the end-to-end times are clean.

Output, on stdout: a line `LETI-ORT-RUN {json}` with `format`, `onnxruntime` (version),
`threads`, `optimization`, `e2e_ms` (one per repeat) and `nodes`
(`[{"name", "op", "provider", "ms": [one per profiled run]}]`, in execution order).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

FORMAT = "leti-ort-run/1"
MARKER = "LETI-ORT-RUN "


def _feeds(session, np):
    feeds = {}
    for inp in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        kind = inp.type[len("tensor(") : -1] if inp.type.startswith("tensor(") else "float"
        dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}.get(kind)
        if dtype is not None:
            rng = np.random.default_rng(0)
            feeds[inp.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[inp.name] = np.zeros(dims, {"int64": np.int64, "int32": np.int32}.get(kind, bool))
    return feeds


def _options(ort, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.log_severity_level = 3
    return so


def _node_times(events: list[dict], warmup: int) -> list[dict]:
    """Per node, its kernel time in each profiled run after the first `warmup` runs."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    kept = runs[warmup:]
    nodes: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = e["ts"]
        if not any(lo <= ts <= hi for lo, hi in kept):
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        op, provider = args.get("op_name", ""), args.get("provider", "")
        entry = nodes.setdefault(name, {"name": name, "op": op, "provider": provider})
        entry.setdefault("ms", []).append(e["dur"] / 1000.0)
    return list(nodes.values())


def run(model: str, warmup: int, repeats: int, profile_runs: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    session = ort.InferenceSession(model, _options(ort, threads), providers=providers)
    feeds = _feeds(session, np)
    for _ in range(warmup):
        session.run(None, feeds)
    e2e = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        e2e.append((time.perf_counter() - t0) * 1000.0)
    del session
    nodes: list[dict] = []
    if profile_runs > 0:
        with tempfile.TemporaryDirectory(prefix="leti-ort-") as tmp:
            so = _options(ort, threads)
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "profile")
            session = ort.InferenceSession(model, so, providers=providers)
            for _ in range(warmup + profile_runs):
                session.run(None, feeds)
            path = session.end_profiling()
            with open(path, encoding="utf-8") as fh:
                nodes = _node_times(json.load(fh), warmup)
    return {
        "format": FORMAT,
        "onnxruntime": ort.__version__,
        "threads": threads,
        "optimization": "ORT_ENABLE_EXTENDED",
        "provider": providers[0],
        "e2e_ms": e2e,
        "nodes": nodes,
    }


def main(argv: list[str] | None = None) -> int:
    """`ort_runner.py '{"model": "m.onnx", "warmup": 2, "repeats": 10, ...}'`: one JSON
    argument (an argument list element, never a shell string), the keys of `run`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: ort_runner.py JSON\n")
        return 2
    opts = json.loads(argv[0])
    doc = run(
        str(opts["model"]),
        int(opts.get("warmup", 2)),
        int(opts.get("repeats", 10)),
        int(opts.get("profile_runs", 3)),
        int(opts.get("threads", 1)),
    )
    sys.stdout.write(MARKER + json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
