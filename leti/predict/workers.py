"""`Estimator.predict_many(..., workers=N)`: the batch split across N worker processes.

A worker is a fresh interpreter (`python -m leti.predict.worker_process`), not a fork, so
whatever the parent did before (a forked child of a process whose libgomp started threads hangs
at its next booster load) cannot reach it, and it never imports the caller's `__main__` (a NAS
script needs no `if __name__ == "__main__":` guard).

Nothing is pickled. A worker is told how the estimator was loaded (SoC, runtime, models dir,
`Estimator.load`'s arguments) and loads it from the saved models itself; it answers with the
model version it loaded, and a pool whose workers loaded another version than the parent's is
not used. Graphs travel as their bytes with their name hint and origin (`GraphBytes`), answers
come back as JSON (every float exact: JSON writes the shortest repr that round-trips), errors
by their class name in `leti.core.errors`. Every message is a length-prefixed frame on the
worker's stdin or stdout; a worker's stray prints go to stderr. An estimator built any other way
than `Estimator.load` (a `replace`d one, a calibration in the making) has no recipe a worker can
follow and prices its batch in this process.

The pool is started on the first call and kept for the estimator's lifetime, so a NAS loop pays
the start-up (about half a second per worker) once; `shutdown_pools` (also run at exit) stops
every pool. Each worker prices whole chunks of the batch with `predict_many` (one regressor call
per kernel kind per chunk), the next chunk going to whichever worker is free, and the answers
come back in order: the ones a single process gives, since every number is computed per graph or
per kernel row, whichever rows share a call.
"""

from __future__ import annotations

import atexit
import heapq
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from leti.core import errors
from leti.core.errors import LetiError
from leti.core.records import LayerTime, Prediction, Unsupported
from leti.frontend.graph import GraphBytes

log = logging.getLogger(__name__)

#: Chunks per worker: enough to even out graphs of different sizes, few enough that each chunk
#: still prices its kernels in one call per kind.
CHUNKS_PER_WORKER = 2


# -- frames and the JSON codec -----------------------------------------------------------------
def send(stream: IO[bytes], data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)


def receive(stream: IO[bytes]) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other end closed the pipe")
    size = int.from_bytes(head, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe")
    return data


def send_json(stream: IO[bytes], doc: Any) -> None:
    send(stream, json.dumps(doc, separators=(",", ":")).encode())


def receive_json(stream: IO[bytes]) -> Any:
    return json.loads(receive(stream))


def answer_doc(answer: Prediction | LetiError) -> dict[str, Any]:
    """An answer as JSON, exactly (`Prediction.to_dict` rounds for people; this does not)."""
    if isinstance(answer, LetiError):
        state = {k: v for k, v in answer.__dict__.items() if _is_json(v)}
        return {"error": type(answer).__name__, "message": str(answer), "state": state}
    return {
        "soc": answer.soc,
        "runtime": answer.runtime,
        "total_ms": answer.total_ms,
        "interval_ms": list(answer.interval_ms),
        "layers": [list(lt) for lt in answer.layers],
        "unsupported": [[u.op, u.count, list(u.names)] for u in answer.unsupported],
        "model_version": answer.model_version,
        "provenance": answer.provenance,
        "kernel_sum_ms": answer.kernel_sum_ms,
        "notes": list(answer.notes),
    }


def answer_from_doc(doc: dict[str, Any]) -> Prediction | LetiError:
    """The inverse of `answer_doc`: equal to the answer that was sent."""
    if "error" in doc:
        cls = getattr(errors, doc["error"], None)
        if not (isinstance(cls, type) and issubclass(cls, LetiError)):
            cls = LetiError
        exc = cls.__new__(cls)  # some subclasses take extra constructor arguments
        Exception.__init__(exc, doc["message"])
        exc.__dict__.update(doc["state"])
        return exc
    return Prediction(
        soc=doc["soc"],
        runtime=doc["runtime"],
        total_ms=doc["total_ms"],
        interval_ms=tuple(doc["interval_ms"]),
        layers=tuple(_layer_time(line) for line in doc["layers"]),
        unsupported=tuple(Unsupported(op, n, tuple(names)) for op, n, names in doc["unsupported"]),
        model_version=doc["model_version"],
        provenance=doc["provenance"],
        kernel_sum_ms=doc["kernel_sum_ms"],
        notes=tuple(doc["notes"]),
    )


def _layer_time(line: list) -> LayerTime:
    name, op, kernel, ms, priced, layers, ins, outs, flops, share = line
    return LayerTime(
        name, op, kernel, ms, priced, tuple(layers), _shapes(ins), _shapes(outs), flops, share
    )


def _shapes(shapes: list) -> tuple:
    return tuple(None if s is None else tuple(s) for s in shapes)


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- the parent's side ---------------------------------------------------------------------------
class Worker:
    """One worker process with the estimator loaded: `price(chunk)` -> its answers."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # where `leti` is imported from
        path = os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, path) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leti.predict.worker_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        send_json(self._in, recipe)
        self._in.flush()
        self.loaded: dict[str, Any] | None = None

    def hello(self) -> dict[str, Any]:
        """What the worker loaded (its model version), or the error it met."""
        if self.loaded is None:
            self.loaded = receive_json(self._out)
        return self.loaded

    def price(
        self, sources: Sequence[GraphBytes], input_shapes: Any, max_layers: int | None
    ) -> list:
        head = {"n": len(sources), "input_shapes": input_shapes, "max_layers": max_layers}
        head["graphs"] = [[s.stem, s.where] for s in sources]
        send_json(self._in, head)
        for source in sources:
            send(self._in, source.data)
        self._in.flush()
        return [answer_from_doc(doc) for doc in receive_json(self._out)]

    def close(self) -> None:
        try:
            self._in.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


def balanced_chunks(sizes: Sequence[int], n: int) -> list[list[int]]:
    """The indices of `sizes` in at most `n` chunks of about equal total size, largest chunk
    first, each in index order. A graph's bytes stand for its pricing time; contiguous slices
    of a batch sorted by anything (a NAS loop's generations, a zoo's names) would leave one
    worker with the large graphs while the other waits."""
    n = max(1, min(n, len(sizes)))
    heap = [(0, c) for c in range(n)]
    chunks: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        total, c = heapq.heappop(heap)
        chunks[c].append(i)
        heapq.heappush(heap, (total + sizes[i], c))
    totals = {c: t for t, c in heap}
    order = sorted(range(n), key=lambda c: -totals[c])
    return [sorted(chunks[c]) for c in order if chunks[c]]


class Pool:
    """N workers of one estimator; one batch at a time (callers in other threads wait)."""

    def __init__(self, recipe: dict[str, Any], workers: int) -> None:
        self.size = workers
        self.workers = [Worker(recipe) for _ in range(workers)]
        self.lock = threading.Lock()

    @classmethod
    def start(cls, estimator: Any, workers: int) -> Pool | None:
        """A pool whose workers loaded what `estimator` is, or None (said in the log) when
        they cannot: no recipe, or another model version than the parent's."""
        if estimator.origin is None:
            log.info("pricing in this process: the estimator was not built by Estimator.load")
            return None
        started = cls(estimator.origin, workers)
        try:
            hellos = [w.hello() for w in started.workers]
        except EOFError as exc:
            started.close()
            raise RuntimeError(f"a leti worker process failed to start: {exc}") from exc
        for hello in hellos:
            if hello.get("model_version") != estimator.model_version:
                started.close()
                log.warning(
                    "pricing in this process: a worker loaded %r, not %r",
                    hello.get("model_version") or hello.get("error"),
                    estimator.model_version,
                )
                return None
        return started

    def price(
        self, sources: Sequence[GraphBytes], input_shapes: Any, max_layers: int | None
    ) -> list:
        todo: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        for chunk in balanced_chunks([len(s.data) for s in sources], self.size * CHUNKS_PER_WORKER):
            todo.put(chunk)
        out: list[Any] = [None] * len(sources)
        failures: list[BaseException] = []

        def serve(worker: Worker) -> None:
            while not failures:
                try:
                    chunk = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    answers = worker.price([sources[i] for i in chunk], input_shapes, max_layers)
                except BaseException as exc:  # a worker that died: the batch fails
                    failures.append(exc)
                    return
                for i, answer in zip(chunk, answers, strict=True):
                    out[i] = answer

        with self.lock:
            threads = [threading.Thread(target=serve, args=(w,)) for w in self.workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if failures:
            raise RuntimeError(f"a leti worker process failed: {failures[0]!r}")
        return out

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


_POOLS: dict[int, Pool | None] = {}  # None: this estimator cannot use workers
_LOCK = threading.Lock()


def pool(estimator: Any, workers: int) -> Pool | None:
    """The running pool of `workers` processes for `estimator` (started on first use), or None
    when workers cannot load what it is (the batch is then priced in this process)."""
    key = id(estimator)
    with _LOCK:
        if key in _POOLS and _POOLS[key] is None:
            return None
        current = _POOLS.get(key)
        if current is not None and current.size == workers:
            return current
        if current is not None:
            current.close()
        started = Pool.start(estimator, workers)
        _POOLS[key] = started
        weakref.finalize(estimator, _drop, key, started)
        return started


def _drop(key: int, stale: Pool | None) -> None:
    with _LOCK:
        if key in _POOLS and _POOLS[key] is stale:
            del _POOLS[key]
    if stale is not None:
        stale.close()


def shutdown_pools() -> None:
    """Stop every worker pool of this process."""
    with _LOCK:
        pools = [p for p in _POOLS.values() if p is not None]
        _POOLS.clear()
    for p in pools:
        p.close()


atexit.register(shutdown_pools)


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def predict_in_workers(
    estimator: Any,
    sources: Sequence[GraphBytes],
    input_shapes: Any,
    max_layers: int | None,
    workers: int,
) -> list | None:
    """Answers for `sources`, in order, from `workers` processes; None when workers cannot
    answer for this estimator (no recipe, or `input_shapes` that JSON cannot carry). A pool
    whose worker died is dropped (the next call starts a new one)."""
    if not _is_json(input_shapes):
        return None
    running = pool(estimator, workers)
    if running is None:
        return None
    try:
        return running.price(sources, input_shapes, max_layers)
    except RuntimeError:
        _drop(id(estimator), running)
        raise
