"""A bounded in-memory cache of answers, for NAS loops that price the same graph again.

Each `Estimator` holds one (`Estimator.answers`). A key is (SHA-256 of the graph's bytes, SoC,
runtime, model version, the caller's input shapes, the layer limit): everything an answer
depends on besides the bytes themselves and the estimator's own models. A `Prediction` is
immutable, so a hit hands back the same object. The cache holds at most $LETI_CACHE_MB MiB of
answers (default 64; 0 turns it off), counted from their breakdown lines, and drops the least
recently used first. Errors are never cached: a bad graph is parsed again and fails again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from leti.core import settings

#: Approximate bytes an answer holds: the record, its notes, and each breakdown line (a named
#: tuple with its names and shapes). Measured with tracemalloc on zoo graphs: 20-60 KiB each.
ANSWER_BYTES = 2048
LINE_BYTES = 700


def answer_size(answer: Any) -> int:
    """The cache's estimate of an answer's memory, in bytes."""
    return ANSWER_BYTES + LINE_BYTES * len(getattr(answer, "layers", ()))


def shapes_key(input_shapes: Mapping[str, Sequence[int]] | None) -> Hashable | None:
    """`input_shapes` as a key: sorted (name, dims) pairs; None where they are not plain ints
    (the front end will refuse them: nothing to cache)."""
    if not input_shapes:
        return ()
    try:
        return tuple(sorted((str(k), tuple(int(d) for d in v)) for k, v in input_shapes.items()))
    except (TypeError, ValueError, AttributeError):
        return None


class AnswerCache:
    """Least-recently-used answers, bounded by their estimated size; safe across threads."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = settings.cache_bytes() if max_bytes is None else max(int(max_bytes), 0)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable | None) -> Any:
        if key is None or not self.max_bytes:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable | None, answer: Any) -> None:
        if key is None or not self.max_bytes:
            return
        size = answer_size(answer)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (answer, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
