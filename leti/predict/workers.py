"""`Estimator.predict_many(..., workers=N)`: the batch priced by N processes, the calling one
and N - 1 worker processes.

A worker is a fresh interpreter (`python -m leti.predict.worker_process`), not a fork, so
whatever the parent did before (a forked child of a process whose libgomp started threads hangs
at its next booster load) cannot reach it, and it never imports the caller's `__main__` (a NAS
script needs no `if __name__ == "__main__":` guard).

Nothing is pickled. A worker is told how the estimator was loaded (SoC, runtime, models dir,
`Estimator.load`'s arguments) and loads it from the saved models itself; it answers with the
model version it loaded, and a pool whose workers loaded another version than the parent's is
not used. Graphs travel as their bytes with their name hint and origin (`GraphBytes`), answers
come back as MessagePack (plain values only; floats as exact binary doubles), errors by their
class name in `leti.core.errors`. Every message is a length-prefixed frame on the worker's
stdin or stdout; a worker's stray prints go to stderr. An estimator built any other way than
`Estimator.load` (a `replace`d one, a calibration in the making) has no recipe a worker can
follow and prices its batch in this process.

The pool is started on the first call and kept for the estimator's lifetime, so a NAS loop pays
the start-up (about half a second per worker) once; `shutdown_pools` (also run at exit) stops
every pool. The batch is cut into one share per process of about equal bytes; each share is
priced with `predict_many` (one regressor call per kernel kind per share) and the answers come
back in order: the ones a single process gives, since every number is computed per graph or
per kernel row, whichever rows share a call.

Where the time went, measured over the 82 zoo graphs on 2 cores (`benchmarks/speed.md`): with
a dispatching parent and JSON answers, the parent's decoding (25 ms, half of it the cyclic
collector) and the workers' encoding (17 ms) ran beside the pricing and the scaling stopped at
1.4-1.5x. MessagePack cut both to 4-5 ms; the caller pricing a share itself, instead of
dispatching, removed the third process competing for two cores.
"""

from __future__ import annotations

import atexit
import contextlib
import heapq
import json
import logging
import os
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import IO, Any

import msgpack

from leti.core import child_process, errors
from leti.core.errors import LetiError
from leti.core.records import LayerTime, Prediction, Unsupported
from leti.frontend.graph import GraphBytes
from leti.predict import collector

log = logging.getLogger(__name__)

#: The calling process's share is this much smaller than a worker's: it also writes the
#: workers' graphs and decodes their answers (benchmarks/speed.py, 82 zoo graphs on 2 cores).
CALLER_LEAD = 0.03

#: The pipe buffer asked for (Linux's default upper limit for an unprivileged process).
PIPE_BYTES = 1 << 20


# -- frames and the codec ---------------------------------------------------------------------
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


def encode_answers(answers: Sequence[Prediction | LetiError]) -> bytes:
    """A chunk's answers, exactly, as MessagePack (`Prediction.to_dict` rounds for people; this
    does not): floats as binary doubles, breakdown lines as arrays. MessagePack holds nothing
    but plain values, so decoding builds no object the bytes name; it is 4-5x faster than JSON
    both ways, and the parent's decoding is serial work that competes with the workers."""
    return msgpack.packb([answer_doc(a) for a in answers])


def decode_answers(data: bytes) -> list[Prediction | LetiError]:
    """The inverse of `encode_answers`: answers equal to those that were sent."""
    return [answer_from_doc(doc) for doc in msgpack.unpackb(data, use_list=False)]


def answer_doc(answer: Prediction | LetiError) -> dict[str, Any]:
    """One answer as plain values (tuples, LayerTime included, are packed as arrays)."""
    if isinstance(answer, LetiError):
        # an error's extra attributes go as JSON text: lists stay lists (arrays decode as tuples)
        state = json.dumps(errors.error_state(answer))
        return {"error": type(answer).__name__, "message": str(answer), "state": state}
    return {
        "soc": answer.soc,
        "runtime": answer.runtime,
        "total_ms": answer.total_ms,
        "interval_ms": answer.interval_ms,
        "layers": answer.layers,
        "unsupported": [(u.op, u.count, u.names) for u in answer.unsupported],
        "model_version": answer.model_version,
        "provenance": answer.provenance,
        "kernel_sum_ms": answer.kernel_sum_ms,
        "notes": answer.notes,
    }


def answer_from_doc(doc: dict[str, Any]) -> Prediction | LetiError:
    """An answer from `answer_doc`'s values as MessagePack decodes them (arrays as tuples)."""
    if "error" in doc:
        return errors.rebuild_error(doc["error"], doc["message"], json.loads(doc["state"]))
    return Prediction(
        soc=doc["soc"],
        runtime=doc["runtime"],
        total_ms=doc["total_ms"],
        interval_ms=doc["interval_ms"],
        layers=tuple([_LINE(LayerTime, line) for line in doc["layers"]]),
        unsupported=tuple(Unsupported(op, n, names) for op, n, names in doc["unsupported"]),
        model_version=doc["model_version"],
        provenance=doc["provenance"],
        kernel_sum_ms=doc["kernel_sum_ms"],
        notes=doc["notes"],
    )


#: A breakdown line from its decoded tuple, every field already in place (shapes are tuples or
#: None, as sent): `LayerTime._make` without its length check and generator.
_LINE = tuple.__new__


# -- the parent's side ---------------------------------------------------------------------------
class Worker:
    """One worker process with the estimator loaded: `send(chunk)`, then `answers()`."""

    def __init__(self, recipe: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            child_process.command("leti.predict.worker_process"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_process.environment(),
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        _widen(self._in)
        _widen(self._out)
        send_json(self._in, recipe)
        self._in.flush()
        self.loaded: dict[str, Any] | None = None

    def hello(self) -> dict[str, Any]:
        """What the worker loaded (its model version), or the error it met."""
        if self.loaded is None:
            self.loaded = receive_json(self._out)
        return self.loaded

    def send(
        self, sources: Sequence[GraphBytes], input_shapes: Any, max_layers: int | None
    ) -> None:
        """One chunk to price: a JSON head, then each graph's bytes in a frame of its own."""
        head = {"n": len(sources), "input_shapes": input_shapes, "max_layers": max_layers}
        head["graphs"] = [[s.stem, s.where] for s in sources]
        send_json(self._in, head)
        for source in sources:
            send(self._in, source.data)
        self._in.flush()

    def answers(self) -> list:
        """The answers to the oldest chunk sent and not yet answered, in its order."""
        return decode_answers(receive(self._out))

    def close(self) -> None:
        try:
            self._in.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(10)


def _widen(pipe: IO[bytes]) -> None:
    """A 1 MiB pipe instead of 64 KiB: a batch's graph bytes (15 MB for the 82 zoo graphs, weights
    included) then cross in a few large copies instead of hundreds of wake-ups on each side,
    which halves their cost. Linux only; elsewhere, or past the system's limit, pipes stay as
    they are."""
    try:
        import fcntl
    except ImportError:  # not on a POSIX system
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)


def balanced_chunks(sizes: Sequence[int], n: int, lead: float = 0.0) -> list[list[int]]:
    """The indices of `sizes` in at most `n` chunks of about equal total size, largest chunk
    first, each in index order. A graph's bytes stand for its pricing time; contiguous slices
    of a batch sorted by anything (a NAS loop's generations, a zoo's names) would leave one
    worker with the large graphs while the other waits. With `lead`, one chunk counts that much
    before its first graph (the calling process's own work) and comes last, if it got any."""
    n = max(1, min(n, len(sizes)))
    heap = [(0.0, c) for c in range(n - 1)] + [(float(lead), n - 1)]
    heapq.heapify(heap)
    chunks: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        total, c = heapq.heappop(heap)
        chunks[c].append(i)
        heapq.heappush(heap, (total + sizes[i], c))
    totals = {c: t for t, c in heap}
    order = sorted(range(n - 1), key=lambda c: -totals[c]) + [n - 1]
    return [sorted(chunks[c]) for c in order if chunks[c]]


class Pool:
    """N worker processes of one estimator, helping the calling process (a batch on N + 1
    processes); one batch at a time (callers in other threads wait)."""

    def __init__(self, recipe: dict[str, Any], workers: int) -> None:
        self.size = workers
        self.workers = [Worker(recipe) for _ in range(workers)]
        self.lock = threading.Lock()
        self.broken = False

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
        self,
        sources: Sequence[GraphBytes],
        input_shapes: Any,
        max_layers: int | None,
        own: Callable[[list[GraphBytes]], list],
    ) -> list:
        """The batch cut into one share per process (`balanced_chunks`: a graph's bytes predict
        its pricing time closely, r = 0.97 over the zoo). Each worker is sent its share whole
        (a worker reads all of it before pricing, so the writes never wait on it for long);
        the calling process prices the smallest share itself with `own`, then reads and
        decodes the workers' answers, which wait in their pipes (a worker whose answers outgrow
        the pipe waits for the read). The caller is no idle dispatcher taking a core's time
        slices from the workers, and only the workers' shares cross a pipe."""
        sizes = [len(s.data) for s in sources]
        lead = CALLER_LEAD * sum(sizes) / (self.size + 1)
        chunks = balanced_chunks(sizes, self.size + 1, lead)
        mine, theirs = chunks[-1], chunks[:-1]
        out: list[Any] = [None] * len(sources)
        with self.lock:
            try:
                for worker, chunk in zip(self.workers, theirs, strict=False):
                    worker.send([sources[i] for i in chunk], input_shapes, max_layers)
                for i, answer in zip(mine, own([sources[i] for i in mine]), strict=True):
                    out[i] = answer
                with collector.paused():  # decoding: no cycles to find
                    for worker, chunk in zip(self.workers, theirs, strict=False):
                        for i, answer in zip(chunk, worker.answers(), strict=True):
                            out[i] = answer
            except (OSError, EOFError) as exc:  # a worker that died: the batch fails
                self.broken = True
                raise RuntimeError(f"a leti worker process failed: {exc!r}") from exc
            except BaseException:
                self.broken = True  # answers may be left in the pipes: never reuse this pool
                raise
        return out

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


_POOLS: dict[int, Pool | None] = {}  # None: this estimator cannot use workers
_LOCK = threading.Lock()


def pool(estimator: Any, workers: int) -> Pool | None:
    """The running pool of `workers` worker processes for `estimator` (started on first use),
    or None when workers cannot load what it is (the batch is then priced in this process)."""
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
    """One process per core this process may use (the calling one included)."""
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
    """Answers for `sources`, in order, from `workers` processes: this one and `workers` - 1
    worker processes. None when workers cannot answer for this estimator (no recipe, or
    `input_shapes` that JSON cannot carry). A pool whose batch failed is dropped (the next call
    starts a new one)."""
    if not errors.is_json(input_shapes):
        return None
    running = pool(estimator, workers - 1)
    if running is None:
        return None
    try:
        return running.price(
            sources,
            input_shapes,
            max_layers,
            lambda share: estimator._predict_sources(share, input_shapes, max_layers),
        )
    finally:
        if running.broken:
            _drop(id(estimator), running)
