"""Several processes: `predict_many(..., workers=N)`, `leti predict --jobs N` and
`leti serve --workers N` answer what one process answers, and a forked server worker starts and
answers after the parent loaded its models (a forked process that loads an xgboost booster after
its parent started libgomp's threads hangs: leti never starts them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from leti.core.errors import SymbolicShapeError
from leti.core.records import LayerTime
from leti.predict import workers
from leti.predict.estimator import Estimator
from leti.predict.workers import balanced_chunks, decode_answers, encode_answers, shutdown_pools
from leti.service.server import BackgroundServer, prefork_available

OCTET = {"Content-Type": "application/octet-stream"}


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator.load("snapdragon855")


def test_predict_many_in_workers_answers_what_one_process_does(
    light_models: list[Path], monkeypatch
) -> None:
    monkeypatch.setenv("LETI_CACHE_MB", "0")  # every call prices (no answer from the cache)
    est = Estimator.load("snapdragon855")
    sources = [p.read_bytes() for p in light_models] + [b"junk", str(light_models[0])]
    one = est.predict_many(sources)
    try:
        two = est.predict_many(sources, workers=2)
        again = est.predict_many(sources, workers=2)  # the pool is kept
        running = workers._POOLS.get(id(est))
        assert isinstance(running, workers.Pool), "the batch was not priced in workers"
        assert all(w.proc.poll() is None for w in running.workers)
    finally:
        shutdown_pools()
    assert len(one) == len(two) == len(again) == len(sources)
    for a, b, c in zip(one, two, again, strict=True):
        if isinstance(a, Exception):
            assert type(a) is type(b) is type(c) and str(a) == str(b) and a.kind == b.kind
        else:
            assert a == b == c


def test_an_estimator_workers_cannot_load_is_priced_in_this_process(
    est: Estimator, light_models: list[Path]
) -> None:
    """A `replace`d estimator has no recipe a worker could follow: no pool, same answers."""
    other = replace(est, log_interval=(-0.5, 0.5))
    assert est.origin is not None and other.origin is None
    sources = [p.read_bytes() for p in light_models[:3]]
    try:
        answers = other.predict_many(sources, workers=2)
        assert workers._POOLS.get(id(other)) is None
    finally:
        shutdown_pools()
    assert answers == other.predict_many(sources)


def test_answers_cross_the_pipe_exactly(est: Estimator, light_models: list[Path]) -> None:
    """The MessagePack codec gives back equal answers: floats exact, tuples, unknown shapes,
    breakdown lines as LayerTime, an error's class and its extra attributes (a list stays a
    list)."""
    preds = [est.predict(p) for p in light_models[:3]]
    line = preds[0].layers[0]
    odd = replace(preds[0], layers=(line._replace(input_shapes=(None, (1, 3))),), notes=("n",))
    err = SymbolicShapeError("give a shape", input_name="x")
    err.extra = [1, "two"]
    back = decode_answers(encode_answers([*preds, odd, err]))
    assert back[:4] == [*preds, odd]
    assert all(type(lt) is LayerTime for p in back[:4] for lt in p.layers)
    assert isinstance(back[0].total_ms, float) and back[0].total_ms == preds[0].total_ms
    err_back = back[4]
    assert type(err_back) is SymbolicShapeError and str(err_back) == str(err)
    assert err_back.input_name == "x" and err_back.kind == err.kind and err_back.status == 422
    assert err_back.extra == [1, "two"]


def test_three_processes_answer_alike_and_a_failed_batch_drops_the_pool(
    light_models: list[Path], monkeypatch
) -> None:
    """workers=3 is this process and two worker processes. An unexpected failure in this
    process's own share leaves the workers' answers in their pipes: that pool is never used
    again, and the next batch starts a new one and answers right."""
    monkeypatch.setenv("LETI_CACHE_MB", "0")
    est = Estimator.load("snapdragon855")
    sources = [p.read_bytes() for p in light_models]
    one = est.predict_many(sources)
    try:
        assert est.predict_many(sources, workers=3) == one
        first = workers._POOLS[id(est)]
        assert isinstance(first, workers.Pool) and len(first.workers) == 2

        def boom(*args, **kwargs):
            raise MemoryError("simulated")

        monkeypatch.setattr(Estimator, "_predict_sources", boom)
        with pytest.raises(MemoryError):
            est.predict_many(sources, workers=3)
        assert first.broken and workers._POOLS.get(id(est)) is None
        assert all(w.proc.wait(10) is not None for w in first.workers)
        monkeypatch.undo()
        monkeypatch.setenv("LETI_CACHE_MB", "0")
        assert est.predict_many(sources, workers=3) == one
        assert workers._POOLS[id(est)] is not first
    finally:
        shutdown_pools()


def test_leti_never_imports_pickle() -> None:
    """No module of the package imports pickle, nor multiprocessing or a process pool (which
    pickle what they hand between processes): models, measurements, uploads, the answers of
    predict_many's workers and `leti evaluate --jobs`'s evaluations travel as JSON,
    MessagePack or raw bytes."""
    package = Path(__file__).resolve().parent.parent / "leti"
    users = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if any(
            line.strip().startswith(
                ("import pickle", "from pickle", "import cPickle", "import multiprocessing")
            )
            or "ProcessPoolExecutor" in line
            for line in p.read_text("utf-8").splitlines()
        )
    ]
    assert not users, users


def test_balanced_chunks_cover_every_graph_once_with_even_totals() -> None:
    """A batch sorted by size (small graphs first, as a zoo or a NAS generation may be) is
    not cut into contiguous slices: each chunk's total is within the largest graph of the
    others', and every index is in exactly one chunk."""
    sizes = [1] * 40 + [50] * 8 + [400, 600]
    chunks = balanced_chunks(sizes, 4)
    assert sorted(i for c in chunks for i in c) == list(range(len(sizes)))
    totals = [sum(sizes[i] for i in c) for c in chunks]
    assert totals == sorted(totals, reverse=True)
    assert max(totals) - min(totals) <= max(sizes)
    assert balanced_chunks([5], 4) == [[0]] and balanced_chunks([], 4) == []


def test_the_callers_chunk_comes_last_lighter_by_its_lead() -> None:
    """The calling process also sends and decodes: its chunk (the last) starts `lead` behind."""
    sizes = [10] * 60
    chunks = balanced_chunks(sizes, 2, lead=100)
    assert sorted(i for c in chunks for i in c) == list(range(60))
    assert [len(c) for c in chunks] == [35, 25]
    assert [len(c) for c in balanced_chunks(sizes, 2)] == [30, 30]


def test_predict_jobs_gives_the_same_table(light_dir: Path) -> None:
    graphs = [str(light_dir / n) for n in ("light_squeezenet.onnx", "light_vgg19.onnx")]
    cmd = [sys.executable, "-m", "leti", "predict", *graphs, "missing.onnx"]
    cmd += ["--soc", "snapdragon855,exynos9820", "--format", "jsonl"]
    one = subprocess.run(cmd, capture_output=True, text=True)
    two = subprocess.run([*cmd, "--jobs", "2"], capture_output=True, text=True)
    assert one.returncode == two.returncode == 1, one.stderr + two.stderr
    assert one.stdout == two.stdout and one.stderr == two.stderr
    assert len([json.loads(line) for line in one.stdout.splitlines()]) == 6


@pytest.mark.skipif(not prefork_available(), reason="gunicorn forks: Linux and macOS only")
def test_a_forked_worker_answers_after_the_parent_loaded_models(light_dir: Path) -> None:
    """Two gunicorn workers forked after the master preloaded snapdragon855: concurrent
    requests all answer, those for a model no one preloaded too (loaded in a worker, after
    the fork), the same numbers one process gives, each on a connection of its own; and
    SIGTERM stops every process."""
    body = (light_dir / "light_squeezenet.onnx").read_bytes()
    want = {
        soc: Estimator.load(soc).predict(body).to_dict(layers=False)
        for soc in ("snapdragon855", "exynos9820")
    }
    srv = BackgroundServer(workers=2, threads=4, args=["--preload", "snapdragon855"])
    with srv:
        assert "2 workers" in "\n".join(srv.log)

        def ask(i: int) -> dict:
            soc = ("snapdragon855", "exynos9820")[i % 2]
            r = requests.post(
                f"{srv.url}/predict?soc={soc}&layers=false", data=body, headers=OCTET, timeout=60
            )
            assert r.status_code == 200, r.text
            # a kept-alive connection would stay with one worker: each answer closes it
            assert r.headers.get("Connection", "").lower() == "close"
            return r.json()

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
        for answer in answers:
            assert answer == want[answer["soc"]]
        pids = _children(srv.proc.pid)
        assert len(pids) >= 2, pids
    assert srv.proc.returncode is not None
    assert not [p for p in pids if Path(f"/proc/{p}").exists()], "workers outlived the master"


def _children(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        raw = out.stdout
    return [int(p) for p in raw.split()]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_loads_and_predicts_after_the_parent_did(est: Estimator) -> None:
    """The hang itself: a child forked after this process loaded boosters loads another one
    and predicts, within seconds."""
    code = (
        "import os, sys, time\n"
        "from leti.predict.estimator import Estimator\n"
        "from tests.plausibility_graphs import separable_net\n"
        "assert Estimator.load('snapdragon855').predict(separable_net()).total_ms > 0\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    e = Estimator.load('exynos9820')\n"
        "    assert e.predict(separable_net()).total_ms > 0\n"
        "    os._exit(0)\n"
        "for _ in range(300):\n"
        "    done, status = os.waitpid(pid, os.WNOHANG)\n"
        "    if done:\n"
        "        sys.exit(os.waitstatus_to_exitcode(status))\n"
        "    time.sleep(0.1)\n"
        "os.kill(pid, 9)\n"
        "sys.exit('the forked child hung')\n"
    )
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not prefork_available(), reason="gunicorn forks: Linux and macOS only")
def test_gunicorn_refuses_an_oversized_body_as_waitress_does() -> None:
    """gunicorn has no body limit of its own: the app refuses a Content-Length over
    LETI_MAX_UPLOAD_MB with the JSON 413, and a chunked body once it passes the limit."""
    big = b"\0" * (1024 * 1024 + 10)
    with BackgroundServer(workers=2, threads=2, env={"LETI_MAX_UPLOAD_MB": "1"}) as srv:
        url = f"{srv.url}/predict?soc=snapdragon855"
        r = requests.post(url, data=big, headers=OCTET, timeout=60)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
        chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))
        r = requests.post(url, data=chunks, headers=OCTET, timeout=60)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large", r.text
        assert requests.get(f"{srv.url}/healthz", timeout=30).status_code == 200
