"""HTTP service benchmark: throughput and latency of `leti serve` with 1 and 2 worker processes.

    .venv/bin/python benchmarks/service_bench.py [--requests 800] [--out benchmarks/service.md]

Starts the real server (`python -m leti serve`: waitress for one process, gunicorn for
`--workers 2`) twice, side by side, in subprocesses on 127.0.0.1 with the estimator preloaded
and the answer cache off (every request is priced); then for each graph sends `--requests`
graph-only uploads to POST /predict (layers=false) from 1, 4 and 16 concurrent clients (one
keep-alive connection each) and reports requests/s, p50, p99 and errors. The two servers are
measured in `--blocks` alternating blocks per row (the idle one sleeps), so that both see the
same background load. The in-process baseline is `Estimator.predict` on the same bytes,
measured in alternating blocks of 20 calls with the 1-client row of one process: the difference
is what HTTP adds. Also: each server's cold start (process start to the first answer), its
memory (RSS and PSS of every process), and a row with the answer cache on.
Client and server share the machine's cores, so the concurrent rows measure both. Where
ApacheBench (`ab`, Debian's apache2-utils) is installed, the concurrent rows are measured with
it as well: one C process with an event loop takes far less CPU per request than Python client
threads (plain `http.client` connections, the fallback, also reported), so its rows are the
ones the scaling target is judged on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from leti.client import graph_bytes  # noqa: E402
from leti.predict.estimator import Estimator  # noqa: E402
from leti.predict.registry import available  # noqa: E402
from leti.service.server import BackgroundServer, prefork_available  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SHARED = Path(os.environ.get("LETI_SHARED_DIR", REPO.parent / "shared"))
MOBILENET = SHARED / "zoo" / "mobile-ml-benchmark" / "mobilenetv2_w1.onnx"
CONCURRENCY = (1, 4, 16)
OCTET = {"Content-Type": "application/octet-stream"}
TARGET_SCALING = 1.7
PYTHON, AB = "python threads", "ab"
TARGET_OVERHEAD_MS = 5.0


def pick_graphs() -> list[tuple[str, Path]]:
    small = (
        ("mobilenetv2_w1", MOBILENET)
        if MOBILENET.is_file()
        else ("light_shufflenet", LIGHT / "light_shufflenet.onnx")
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


class Client:
    """One keep-alive connection posting graphs to /predict."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.path = parts.path + ("?" + parts.query if parts.query else "")

    def post(self, body: bytes) -> tuple[float, bool]:
        """(seconds, answered with a positive total)."""
        t = time.perf_counter()
        try:
            self.conn.request("POST", self.path, body=body, headers=OCTET)
            resp = self.conn.getresponse()
            data = resp.read()
            ok = resp.status == 200 and json.loads(data)["total_ms"] > 0
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            ok = False
            self.conn.close()
        return time.perf_counter() - t, ok

    def close(self) -> None:
        self.conn.close()


def _stats(times_ms: list[float], wall: float, errors: int) -> dict:
    return {
        "rps": len(times_ms) / wall,
        "p50": pct(times_ms, 0.5),
        "p99": pct(times_ms, 0.99),
        "errors": errors,
    }


def bench_paired(
    est: Estimator, url: str, body: bytes, n: int, block: int = 20
) -> tuple[dict, dict]:
    """In-process and 1-client HTTP, measured in alternating blocks of `block` back-to-back
    calls; returns (in-process, HTTP) stats."""
    local: list[float] = []
    remote: list[float] = []
    errors = 0
    client = Client(url)
    for _ in range(3):
        est.predict(body)
        client.post(body)
    while len(local) < n:
        for _ in range(min(block, n - len(local))):
            t = time.perf_counter()
            est.predict(body)
            local.append(time.perf_counter() - t)
        for _ in range(min(block, n - len(remote))):
            seconds, ok = client.post(body)
            remote.append(seconds)
            errors += not ok
    client.close()
    loc = _stats([t * 1000 for t in local], sum(local), 0)
    rem = _stats([t * 1000 for t in remote], sum(remote), errors)
    return loc, {**rem, "overhead": rem["p50"] - loc["p50"]}


def bench_http(url: str, body: bytes, n: int, clients: int) -> dict:
    per_client = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    connections = [Client(url) for _ in range(clients)]
    for c in connections:
        c.post(body)  # warm the connection (and every worker's code paths)

    def run(job: tuple[Client, int]) -> tuple[list[float], int]:
        client, count = job
        times, errors = [], 0
        for _ in range(count):
            seconds, ok = client.post(body)
            times.append(seconds * 1000)
            errors += not ok
        return times, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(run, zip(connections, per_client, strict=True)))
    wall = time.perf_counter() - t0
    for c in connections:
        c.close()
    times = [t for ts, _ in results for t in ts]
    return {**_stats(times, wall, sum(e for _, e in results)), "times": times, "wall": wall}


def bench_ab(url: str, body: bytes, n: int, clients: int) -> dict:
    """`ab -k` (keep-alive) posting `body` `n` times from `clients` connections. Its per-request
    times are the 101 percentile points it writes (`-e`), which merge across blocks of equal
    size; a failed request is any non-2xx answer or a body whose length differs (the same
    graph, the same answer)."""
    ab = shutil.which("ab")
    assert ab is not None
    with tempfile.TemporaryDirectory() as tmp:
        post, csv = Path(tmp) / "body", Path(tmp) / "pct.csv"
        post.write_bytes(body)
        cmd = [ab, "-q", "-k", "-n", str(n), "-c", str(clients), "-p", str(post)]
        cmd += ["-T", OCTET["Content-Type"], "-e", str(csv), url.replace("localhost", "127.0.0.1")]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"ab failed: {out.stderr.strip() or out.stdout.strip()}")
        text = out.stdout
        points = [float(line.split(",")[1]) for line in csv.read_text().splitlines()[1:]]

    def field(label: str) -> float:
        for line in text.splitlines():
            if line.startswith(label):
                return float(line.split(":")[1].split()[0])
        return 0.0

    wall = field("Time taken for tests")
    errors = int(field("Failed requests") + field("Non-2xx responses"))
    done = int(field("Complete requests"))
    return {
        **_stats(points, wall, errors),
        "rps": done / wall,
        "times": points,
        "wall": wall,
        "requests": done,
    }


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB of `pid` and its children (PSS counts shared pages once overall)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    rss = pss = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return rss, pss


def _merge(parts: list[dict]) -> dict:
    """One row from blocks of the same setting: requests over their summed wall time."""
    times = [t for part in parts for t in part["times"]]
    wall = sum(part["wall"] for part in parts)
    done = sum(part.get("requests", len(part["times"])) for part in parts)
    return {
        **_stats(times, wall, sum(part["errors"] for part in parts)),
        "rps": done / wall,
        "wall": wall,
        "times": times,
    }


def start_servers(
    worker_counts: Sequence[int], args: argparse.Namespace, soc: str, runtime: str, cache: bool
) -> tuple[dict[int, BackgroundServer], dict[int, float]]:
    """The servers, all running at once (an idle one sleeps), with their cold starts: process
    start to the first answer, the preloaded estimator warmed up on the way."""
    servers, cold = {}, {}
    first = graph_bytes(pick_graphs()[0][1])
    for workers in worker_counts:
        t0 = time.perf_counter()
        srv = BackgroundServer(
            threads=args.threads,
            workers=workers,
            env={"LETI_CACHE_MB": "64" if cache else "0"},
            args=["--preload", f"{soc}:{runtime}"],
        ).start()
        ok = Client(f"{srv.url}/predict?soc={soc}&runtime={runtime}&layers=false").post(first)
        cold[workers] = time.perf_counter() - t0 if ok[1] else float("nan")
        servers[workers] = srv
    return servers, cold


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=800, help="requests per setting")
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads per server process, the same for 1 and 2 workers (leti serve's default "
        "with --workers; more threads only interleave CPU-bound predictions)",
    )
    ap.add_argument(
        "--blocks", type=int, default=4, help="alternating blocks per row (1 vs 2 workers)"
    )
    ap.add_argument(
        "--client",
        choices=("auto", "ab", "python"),
        default="auto",
        help="load generator for the concurrent rows besides the Python threads: ab where "
        "installed (auto), required (ab) or none (python)",
    )
    ap.add_argument("--soc", default=None)
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "service.md"))
    args = ap.parse_args(argv)

    ab = shutil.which("ab") if args.client in ("auto", "ab") else None
    if args.client == "ab" and ab is None:
        sys.exit("--client ab: no `ab` on PATH (Debian: apt-get install apache2-utils)")
    clients_used = [(PYTHON, bench_http)] + ([(AB, bench_ab)] if ab else [])
    judged = AB if ab else PYTHON  # the client the scaling target is judged with
    soc, runtime = pick_target(args.soc, args.runtime)
    os.environ["LETI_CACHE_MB"] = "0"  # the in-process baseline prices every call too
    est = Estimator.load(soc, runtime)
    worker_counts = (1, 2) if prefork_available() else (1,)
    load_before = os.getloadavg()[0]
    rows: list = []
    overheads = []
    servers, cold = start_servers(worker_counts, args, soc, runtime, cache=False)
    try:
        urls = {
            w: f"{srv.url}/predict?soc={soc}&runtime={runtime}&layers=false"
            for w, srv in servers.items()
        }
        for name, path in pick_graphs():
            body = graph_bytes(path)
            local, single = bench_paired(est, urls[1], body, args.requests)
            rows.append((name, len(body), "in-process", "-", local))
            overheads.append((name, single["overhead"]))
            for client, bench in clients_used:
                for clients in CONCURRENCY:
                    # the worker counts in alternating blocks: both see the same background load
                    blocks: dict[int, list[dict]] = {w: [] for w in worker_counts}
                    per_block = max(clients, args.requests // args.blocks)
                    # one worker, one Python client: the paired row measured above
                    paired = {w: clients == 1 and w == 1 and client == PYTHON for w in blocks}
                    for _ in range(args.blocks):
                        for w in worker_counts:
                            if not paired[w]:
                                blocks[w].append(bench(urls[w], body, per_block, clients))
                    for w in worker_counts:
                        res = single if paired[w] else _merge(blocks[w])
                        mode = f"HTTP, {w} worker(s), {client}"
                        rows.append((name, len(body), mode, clients, res))
                        print(
                            f"{name} {w}w {clients:>2}c {client}: {res['rps']:7.1f} req/s p50 "
                            f"{res['p50']:.2f} p99 {res['p99']:.2f} ms errors {res['errors']}",
                            flush=True,
                        )
        memory_of = {w: memory(srv.proc.pid) for w, srv in servers.items()}
        alive = all(srv.alive for srv in servers.values())
    finally:
        for srv in servers.values():
            srv.stop()
    # the answer cache on: the 16 clients repeat one graph
    cached, _ = start_servers(worker_counts, args, soc, runtime, cache=True)
    try:
        name, path = pick_graphs()[0]
        body = graph_bytes(path)
        for w, srv in cached.items():
            url = f"{srv.url}/predict?soc={soc}&runtime={runtime}&layers=false"
            res = bench_http(url, body, args.requests, 16)
            rows.append((name, len(body), f"HTTP, {w} worker(s), {PYTHON}, cache on", 16, res))
    finally:
        for srv in cached.values():
            srv.stop()
    load_after = os.getloadavg()[0]

    def rps(name: str, workers: int, clients: int, client: str = judged) -> float:
        mode = f"HTTP, {workers} worker(s), {client}"
        return next(r["rps"] for n, _, m, c, r in rows if n == name and m == mode and c == clients)

    worst = max(o for _, o in overheads)
    errors_16 = sum(r["errors"] for _, _, _, c, r in rows if c == 16)
    lines = [
        "# Service benchmark",
        "",
        "Generated by `benchmarks/service_bench.py`; do not edit by hand.",
        "",
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average {load_before:.1f} before, "
        f"{load_after:.1f} after (the machine is shared)",
        f"- server: `python -m leti serve --preload {soc}:{runtime}` on 127.0.0.1 with "
        f"{args.threads} threads per process: waitress for 1 worker, gunicorn (gthread) for "
        "`--workers 2`; client and server on the same machine (the client takes CPU from the "
        f"workers: `{PYTHON}` is one Python process of client threads, `{AB}` is ApacheBench, "
        "one C process); answer cache off (LETI_CACHE_MB=0) except in the rows that say so",
        f"- estimator: {soc} / {runtime} ({est.provenance}, {est.model_version})",
        f"- {args.requests} requests per row; POST /predict with graph-only ONNX "
        "(`leti.client.graph_bytes`), `layers=false`, one keep-alive connection per client "
        "(gunicorn closes it after each answer, so that a free worker takes the next: "
        "`leti/service/server.py`); "
        "in-process = `Estimator.predict` on the same bytes",
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
        "HTTP overhead at p50 (1 client, 1 worker, HTTP minus in-process; measured in "
        "alternating blocks of 20 calls): "
        + ", ".join(f"{n} {o:+.2f} ms" for n, o in overheads)
        + f". Goal <= {TARGET_OVERHEAD_MS:.0f} ms: "
        + ("met" if worst <= TARGET_OVERHEAD_MS else "NOT met")
        + ".",
        f"Errors with 16 concurrent clients: {errors_16}. Goal 0: "
        f"{'met' if errors_16 == 0 else 'NOT met'}.",
    ]
    scaling_ok = True
    if 2 in worker_counts:
        for name, _ in pick_graphs():
            ratio = rps(name, 2, 16) / rps(name, 1, 16)
            scaling_ok &= ratio >= TARGET_SCALING
            also = ""
            if judged != PYTHON:
                also = (
                    f" (with the `{PYTHON}` client, which takes more of the two cores: "
                    f"{rps(name, 2, 16, PYTHON) / rps(name, 1, 16, PYTHON):.2f}x)"
                )
            lines.append(
                f"{name}: 2 workers serve **{ratio:.2f}x** the req/s of 1 at 16 clients with "
                f"`{judged}`{also}; target >= {TARGET_SCALING}x on an idle 2-core machine: "
                f"{'met' if ratio >= TARGET_SCALING else 'NOT met'}."
            )
    lines += ["", "| workers | cold start (process start to first answer) | RSS | PSS |"]
    lines.append("|---:|---:|---:|---:|")
    for workers in worker_counts:
        rss, pss = memory_of[workers]
        lines.append(f"| {workers} | {cold[workers]:.2f} s | {rss:.0f} MiB | {pss:.0f} MiB |")
    lines += [
        "",
        "RSS adds every process's resident pages; PSS counts the pages the gunicorn workers share "
        "with their master (the preloaded models, forked after loading) once.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0 if alive and worst <= TARGET_OVERHEAD_MS and errors_16 == 0 and scaling_ok else 1


if __name__ == "__main__":
    sys.exit(main())
