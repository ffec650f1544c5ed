"""HTTP service benchmark: throughput and latency of `leti serve` vs in-process prediction.

    .venv/bin/python benchmarks/service_bench.py [--requests 200] [--out benchmarks/service.md]

Starts the real server (`python -m leti serve`, waitress) in a subprocess on 127.0.0.1, then for
each graph sends `--requests` graph-only uploads to POST /predict (layers=false) from 1, 4 and 16
concurrent clients (one requests.Session each) and reports requests/s, p50 and p99. The
in-process baseline is `Estimator.predict` on the same graph-only bytes the server receives, so
the difference is what HTTP adds: transfer, parsing the request, JSON encoding, waitress. The
in-process and 1-client rows are measured in alternating blocks of 20 calls, so that both see the
same background load.
Client and server share the machine's cores, so the concurrent rows measure both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from leti.client import graph_bytes  # noqa: E402
from leti.predict.estimator import Estimator  # noqa: E402
from leti.predict.registry import available  # noqa: E402
from leti.service.server import BackgroundServer  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SHARED = Path(os.environ.get("LETI_SHARED_DIR", REPO.parent / "shared"))
MOBILENET = SHARED / "zoo" / "mobile-ml-benchmark" / "mobilenetv2_w1.onnx"
CONCURRENCY = (1, 4, 16)
OCTET = {"Content-Type": "application/octet-stream"}


def pick_graphs() -> list[tuple[str, Path]]:
    small = (
        ("mobilenetv2_w1", MOBILENET)
        if MOBILENET.is_file()
        else (
            "light_shufflenet",
            LIGHT / "light_shufflenet.onnx",
        )
    )
    return [small, ("light_resnet50", LIGHT / "light_resnet50.onnx")]


def pick_target(soc: str | None, runtime: str | None) -> tuple[str, str]:
    if soc:
        est = Estimator.load(soc, runtime)
        return est.soc, est.runtime
    pairs = [(a["soc"], a["runtime"]) for a in available()]
    if not pairs:
        sys.exit("no trained model in models/ (or $LETI_MODELS_DIR): run `leti fit` first")
    return ("snapdragon855", "tflite-gpu") if ("snapdragon855", "tflite-gpu") in pairs else pairs[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _stats(times: list[float], wall: float) -> dict:
    return {"rps": len(times) / wall, "p50": pct(times, 0.5), "p99": pct(times, 0.99)}


def _timed_post(s: requests.Session, url: str, body: bytes) -> tuple[float, bool]:
    """(seconds, answered with a positive total) for one POST /predict."""
    t = time.perf_counter()
    try:
        r = s.post(url, data=body, headers=OCTET, timeout=60)
        ok = r.status_code == 200 and r.json()["total_ms"] > 0
    except requests.RequestException:
        ok = False
    return time.perf_counter() - t, ok


def bench_paired(
    est: Estimator, url: str, body: bytes, n: int, block: int = 20
) -> tuple[dict, dict]:
    """In-process and 1-client HTTP, measured in alternating blocks of `block` back-to-back
    calls, so that both see the same background load (this machine may be shared) while each
    runs the way a client loop would; returns (in-process, HTTP) stats."""
    local: list[float] = []
    remote: list[float] = []
    errors = 0
    with requests.Session() as s:
        for _ in range(3):
            est.predict(body)
            s.post(url, data=body, headers=OCTET, timeout=60)
        while len(local) < n:
            for _ in range(min(block, n - len(local))):
                t = time.perf_counter()
                est.predict(body)
                local.append(time.perf_counter() - t)
            for _ in range(min(block, n - len(remote))):
                seconds, ok = _timed_post(s, url, body)
                remote.append(seconds)
                errors += not ok
    loc = _stats([t * 1000 for t in local], sum(local))
    rem = _stats([t * 1000 for t in remote], sum(remote))
    return {**loc, "errors": 0}, {**rem, "errors": errors, "overhead": rem["p50"] - loc["p50"]}


def bench_http(url: str, body: bytes, n: int, clients: int) -> dict:
    per_client = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]

    def run(count: int) -> tuple[list[float], int]:
        times, errors = [], 0
        with requests.Session() as s:
            s.post(url, data=body, headers=OCTET, timeout=60)  # warm the connection
            for _ in range(count):
                seconds, ok = _timed_post(s, url, body)
                times.append(seconds * 1000)
                errors += not ok
        return times, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, per_client))
    wall = time.perf_counter() - t0
    times = [t for ts, _ in results for t in ts]
    return {
        "rps": n / wall,
        "p50": pct(times, 0.5),
        "p99": pct(times, 0.99),
        "errors": sum(e for _, e in results),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per setting")
    ap.add_argument("--threads", type=int, default=8, help="server threads (leti serve default)")
    ap.add_argument("--soc", default=None)
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "service.md"))
    args = ap.parse_args(argv)

    soc, runtime = pick_target(args.soc, args.runtime)
    est = Estimator.load(soc, runtime)
    rows = []
    overheads = []
    errors_16 = 0
    with BackgroundServer(threads=args.threads) as srv:
        url = f"{srv.url}/predict?soc={soc}&runtime={runtime}&layers=false"
        for name, path in pick_graphs():
            body = graph_bytes(path)
            local, single = bench_paired(est, url, body, args.requests)
            rows.append((name, len(body), "in-process", "-", local))
            print(f"{name}: in-process p50 {local['p50']:.2f} ms", flush=True)
            for clients in CONCURRENCY:
                res = single if clients == 1 else bench_http(url, body, args.requests, clients)
                rows.append((name, len(body), "HTTP", clients, res))
                print(
                    f"{name}: {clients:>2} clients {res['rps']:7.1f} req/s  p50 {res['p50']:.2f} "
                    f"p99 {res['p99']:.2f} ms  errors {res['errors']}",
                    flush=True,
                )
                if clients == 1:
                    overheads.append((name, res["overhead"]))
                if clients == 16:
                    errors_16 += res["errors"]
        if not srv.alive:
            print("server died during the benchmark", file=sys.stderr)
            return 1

    worst = max(o for _, o in overheads)
    lines = [
        "# Service benchmark",
        "",
        "Generated by `benchmarks/service_bench.py`; do not edit by hand.",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        f"- server: `python -m leti serve` (waitress, {args.threads} threads) on 127.0.0.1, "
        "client and server on the same machine",
        f"- estimator: {soc} / {runtime} ({est.provenance}, {est.model_version})",
        f"- {args.requests} requests per row; POST /predict with graph-only ONNX "
        "(`leti.client.graph_bytes`), `layers=false`; in-process = `Estimator.predict` on "
        "the same bytes",
        "",
        "| graph | upload | mode | clients | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, size, mode, clients, r in rows:
        lines.append(
            f"| {name} | {size / 1024:.1f} KiB | {mode} | {clients} | {r['rps']:.1f} | "
            f"{r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} |"
        )
    lines += [
        "",
        "HTTP overhead at p50 (1 client, HTTP minus in-process; measured in alternating "
        "blocks of 20 calls): "
        + ", ".join(f"{n} {o:+.2f} ms" for n, o in overheads)
        + f". Goal <= 5 ms: {'met' if worst <= 5 else 'NOT met'}.",
        f"Errors with 16 concurrent clients: {errors_16}. Goal 0: "
        f"{'met' if errors_16 == 0 else 'NOT met'}.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")
    return 0 if worst <= 5 and errors_16 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
