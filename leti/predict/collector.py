"""Python's cyclic garbage collector, paused while a batch is priced or decoded.

Pricing builds many small container objects that live until the batch is answered (graph
records, kernel rows, breakdown lines); the collector walks every young one each 700
allocations, again in the older generations, and finds almost nothing: the records hold no
reference cycles and reference counting frees them. Over the 82 zoo graphs that walking was
about a fifth of `predict_many`'s time in one process (`benchmarks/speed.md`). Paused, the cost
is the few cycles a batch makes (a caught error's traceback) living until the batch ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off for the block, then as it was. Nested or concurrent pauses are safe:
    a block that found it off leaves it off (another thread then may resume it early, which only
    costs that block some speed). The flag is the process's: a caller that switches the
    collector off in another thread while a block runs finds it on again when the block ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
