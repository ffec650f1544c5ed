"""`Estimator.predict_many(..., workers=N)`: the batch split across N worker processes.

Workers are started with the `spawn` method: a fresh interpreter that unpickles the estimator
(its boosters travel as their saved bytes) and loads them itself. A forked worker would inherit
the parent's libgomp state, and one that then loads a booster hangs if the parent's libgomp had
started threads; spawn cannot hit that, whatever the parent did before. The pool is started on
the first call and kept for the estimator's lifetime, so a NAS loop pays the start-up (about half
a second per worker) once; `shutdown_pools` (also run at exit) stops them.

Each worker prices whole chunks of the batch with `predict_many` (one regressor call per kernel
kind per chunk), and answers come back in order. The predictions are the ones a single process
gives: every number is computed per graph or per kernel row, whichever rows share a call.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from leti.core.errors import LetiError

_POOLS: dict[int, tuple[ProcessPoolExecutor, int]] = {}
_LOCK = threading.Lock()
#: Chunks per worker: enough to even out graphs of different sizes, few enough that each chunk
#: still prices its kernels in one call per kind.
CHUNKS_PER_WORKER = 4

_WORKER_ESTIMATOR: Any = None


def _start_worker(estimator_pickle: bytes) -> None:
    global _WORKER_ESTIMATOR
    _WORKER_ESTIMATOR = pickle.loads(estimator_pickle)


def _price_chunk(sources: Sequence[Any], input_shapes: Any, max_layers: int | None) -> list:
    answers = _WORKER_ESTIMATOR.predict_many(sources, input_shapes, max_layers=max_layers)
    return [_portable(a) for a in answers]


def _portable(answer: Any) -> Any:
    """A LetiError as (class, message, attributes): some subclasses take extra constructor
    arguments, which pickling an exception would lose."""
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


def pool(estimator: Any, workers: int) -> ProcessPoolExecutor:
    """The running pool of `workers` processes for `estimator` (started on first use)."""
    key = id(estimator)
    with _LOCK:
        entry = _POOLS.get(key)
        if entry is not None and entry[1] == workers:
            return entry[0]
        if entry is not None:
            entry[0].shutdown(wait=False, cancel_futures=True)
        executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(pickle.dumps(estimator),),
        )
        _POOLS[key] = (executor, workers)
        weakref.finalize(estimator, _drop, key, executor)
        return executor


def _drop(key: int, executor: ProcessPoolExecutor) -> None:
    with _LOCK:
        entry = _POOLS.get(key)
        if entry is not None and entry[0] is executor:
            del _POOLS[key]
    executor.shutdown(wait=False, cancel_futures=True)


def shutdown_pools() -> None:
    """Stop every worker pool of this process."""
    with _LOCK:
        entries = list(_POOLS.values())
        _POOLS.clear()
    for executor, _ in entries:
        executor.shutdown(wait=True, cancel_futures=True)


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
    processes."""
    chunk = max(1, -(-len(sources) // (workers * CHUNKS_PER_WORKER)))
    parts = [list(sources[i : i + chunk]) for i in range(0, len(sources), chunk)]
    executor = pool(estimator, workers)
    futures = [executor.submit(_price_chunk, part, input_shapes, max_layers) for part in parts]
    return [_restored(a) for f in futures for a in f.result()]
