"""`Estimator.predict_many(..., workers=N)`: the batch split across N worker processes.

A worker is a fresh interpreter (`python -m leti.predict.workers`), not a fork: it unpickles the
estimator (its boosters travel as their saved bytes) and loads them itself, so whatever the
parent did before (a forked child of a process whose libgomp started threads hangs at its next
booster load) cannot reach it, and it never imports the caller's `__main__` (a NAS script needs
no `if __name__ == "__main__":` guard). Parent and worker talk over the worker's stdin and stdout
in length-prefixed pickles; a worker's stray prints go to stderr.

The pool is started on the first call and kept for the estimator's lifetime, so a NAS loop pays
the start-up (about half a second per worker) once; `shutdown_pools` (also run at exit) stops
every pool. Each worker prices whole chunks of the batch with `predict_many` (one regressor call
per kernel kind per chunk), the next chunk going to whichever worker is free, and the answers
come back in order: the ones a single process gives, since every number is computed per graph or
per kernel row, whichever rows share a call.
"""

from __future__ import annotations

import atexit
import os
import pickle
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from leti.core.errors import LetiError

#: Chunks per worker: enough to even out graphs of different sizes, few enough that each chunk
#: still prices its kernels in one call per kind.
CHUNKS_PER_WORKER = 2
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _send(stream: IO[bytes], data: bytes) -> None:
    stream.write(len(data).to_bytes(8, "little"))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the other end closed the pipe")
    size = int.from_bytes(head, "little")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other end closed the pipe")
    return data


def _portable(answer: Any) -> Any:
    """A LetiError as (marker, class, message, attributes): some subclasses take extra
    constructor arguments, which pickling an exception would lose."""
    if isinstance(answer, LetiError):
        return ("__leti_error__", type(answer), str(answer), dict(answer.__dict__))
    return answer


def _restored(answer: Any) -> Any:
    if isinstance(answer, tuple) and answer and answer[0] == "__leti_error__":
        _, cls, message, state = answer
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        exc.__dict__.update(state)
        return exc
    return answer


class Worker:
    """One worker process with the estimator loaded: `price(chunk)` -> its answers."""

    def __init__(self, estimator_pickle: bytes) -> None:
        package_root = str(Path(__file__).resolve().parents[2])  # where `leti` is imported from
        path = os.environ.get("PYTHONPATH", "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, path) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leti.predict.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        _send(self._in, estimator_pickle)

    def price(self, sources: Sequence[Any], input_shapes: Any, max_layers: int | None) -> list:
        _send(self._in, pickle.dumps((list(sources), input_shapes, max_layers), _PROTOCOL))
        return [_restored(a) for a in pickle.loads(_receive(self._out))]

    def close(self) -> None:
        try:
            self._in.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


class Pool:
    """N workers of one estimator; one batch at a time (callers in other threads wait)."""

    def __init__(self, estimator: Any, workers: int) -> None:
        data = pickle.dumps(estimator, _PROTOCOL)
        self.size = workers
        self.workers = [Worker(data) for _ in range(workers)]
        self.lock = threading.Lock()

    def price(self, sources: Sequence[Any], input_shapes: Any, max_layers: int | None) -> list:
        chunk = max(1, -(-len(sources) // (self.size * CHUNKS_PER_WORKER)))
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        starts = range(0, len(sources), chunk)
        for start in starts:
            todo.put(start)
        done: dict[int, list] = {}
        failures: list[BaseException] = []

        def serve(worker: Worker) -> None:
            while not failures:
                try:
                    start = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done[start] = worker.price(
                        sources[start : start + chunk], input_shapes, max_layers
                    )
                except BaseException as exc:  # a worker that died: the batch fails
                    failures.append(exc)

        with self.lock:
            threads = [threading.Thread(target=serve, args=(w,)) for w in self.workers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if failures:
            raise RuntimeError(f"a leti worker process failed: {failures[0]!r}")
        return [answer for start in starts for answer in done[start]]

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


_POOLS: dict[int, Pool] = {}
_LOCK = threading.Lock()


def pool(estimator: Any, workers: int) -> Pool:
    """The running pool of `workers` processes for `estimator` (started on first use)."""
    key = id(estimator)
    with _LOCK:
        current = _POOLS.get(key)
        if current is not None and current.size == workers:
            return current
        if current is not None:
            current.close()
        started = Pool(estimator, workers)
        _POOLS[key] = started
        weakref.finalize(estimator, _drop, key, started)
        return started


def _drop(key: int, stale: Pool) -> None:
    with _LOCK:
        if _POOLS.get(key) is stale:
            del _POOLS[key]
    stale.close()


def shutdown_pools() -> None:
    """Stop every worker pool of this process."""
    with _LOCK:
        pools = list(_POOLS.values())
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
    sources: Sequence[Any],
    input_shapes: Any,
    max_layers: int | None,
    workers: int,
) -> list:
    """Answers for `sources` (picklable: bytes, paths, Graphs), in order, from `workers`
    processes. A pool whose worker died is dropped (the next call starts a new one)."""
    running = pool(estimator, workers)
    try:
        return running.price(sources, input_shapes, max_layers)
    except RuntimeError:
        _drop(id(estimator), running)
        raise


def _serve() -> None:
    """A worker's loop: the estimator, then (sources, input_shapes, max_layers) chunks."""
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not reach the pipe
    estimator = pickle.loads(_receive(inp))
    estimator.answers.max_bytes = 0  # the parent keeps the answers
    while True:
        try:
            sources, input_shapes, max_layers = pickle.loads(_receive(inp))
        except EOFError:
            return
        answers = estimator.predict_many(sources, input_shapes, max_layers=max_layers)
        _send(out, pickle.dumps([_portable(a) for a in answers], _PROTOCOL))


if __name__ == "__main__":
    _serve()
