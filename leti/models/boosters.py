"""Loaded xgboost boosters, predicting through libxgboost's C API without the xgboost package.

Serving needs two things of a booster: load it from the bytes `save_raw` wrote, and predict a
dense matrix. Importing the `xgboost` Python package for that costs ~0.3 s of cold start (it
imports scipy), ~0.8 s more where scikit-learn is installed (it imports that too), and ~50 us of
Python per call. This module opens the same shared library the package ships
(`xgboost/lib/libxgboost.so`, found without importing the package) and makes the same calls
`xgboost.Booster.load_model` and `Booster.inplace_predict` make, so the predictions are the same
numbers (tests/test_speed_paths.py compares them bit for bit). Where the library cannot be
opened this way, `load_booster` returns an `xgboost.Booster` as before. Training always uses
the package (`leti.models.regressors` imports it when it fits).

A call into libxgboost costs 150-500 us whatever the row count (xgboost walks every tree to
size its work before predicting, slower once the front end has pushed its trees out of the CPU
caches). For a few rows (a graph's distinct kernels of one kind, up to `SMALL_ROWS`) a booster
answers from numpy arrays of its trees instead (`SmallTrees`): the same float32 comparisons,
missing values sent the same way, the leaves summed in float32 in the same order from the same
base score; each booster checks that against the library on probe rows before it uses them,
and keeps to the library otherwise. Batches (`predict_many`) go to the library.

Fork safety: a process that forked after libgomp started its thread pool hangs at its next
parallel region (a forked server worker loading a booster after its parent did). Loading here
runs with one OpenMP thread for the calling thread and each booster predicts with `nthread=1`,
so leti itself never starts that pool: a parent that preloaded its models can fork workers
(`leti serve --workers N`). The setting is restored after each load; nothing global changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import sys
import threading
from typing import Any

import numpy as np

_LOCK = threading.Lock()
_LIB: Any = None  # the opened library, False when it cannot be opened
_PREDICT_CONFIG = json.dumps(
    {
        "type": 0,
        "training": False,
        "iteration_begin": 0,
        "iteration_end": 0,
        "missing": float("nan"),
        "strict_shape": False,
        "cache_id": 0,
    }
).encode()


def _library_file() -> str | None:
    """Where the xgboost package keeps its shared library (the package is not imported)."""
    spec = importlib.util.find_spec("xgboost")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = {"win32": "xgboost.dll", "darwin": "libxgboost.dylib"}.get(sys.platform, "libxgboost.so")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "lib", name)
        if os.path.isfile(path):
            return path
    return None


def library() -> Any:
    """The opened libxgboost (with argument types declared), or None where it cannot be."""
    global _LIB
    if _LIB is None:
        with _LOCK:
            if _LIB is None:
                _LIB = _open() or False
    return _LIB or None


def _open() -> Any:
    if os.environ.get("LETI_XGBOOST_PACKAGE"):  # escape hatch: always use the package
        return None
    path = _library_file()
    if path is None:
        return None
    try:
        lib = ctypes.cdll.LoadLibrary(path)
        lib.XGBGetLastError.restype = ctypes.c_char_p
        vp, u64 = ctypes.c_void_p, ctypes.c_uint64
        lib.XGBoosterCreate.argtypes = [ctypes.POINTER(vp), u64, ctypes.POINTER(vp)]
        lib.XGBoosterFree.argtypes = [vp]
        lib.XGBoosterSetParam.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
        lib.XGBoosterLoadModelFromBuffer.argtypes = [vp, ctypes.c_void_p, u64]
        lib.XGBoosterGetNumFeature.argtypes = [vp, ctypes.POINTER(u64)]
        lib.XGBoosterSaveModelToBuffer.argtypes = [
            vp,
            ctypes.c_char_p,
            ctypes.POINTER(u64),
            ctypes.POINTER(ctypes.POINTER(ctypes.c_char)),
        ]
        lib.XGBoosterPredictFromDense.argtypes = [
            vp,
            ctypes.c_char_p,
            ctypes.c_char_p,
            vp,
            ctypes.POINTER(ctypes.POINTER(u64)),
            ctypes.POINTER(u64),
            ctypes.POINTER(ctypes.POINTER(ctypes.c_float)),
        ]
    except (OSError, AttributeError):
        return None
    omp = [getattr(lib, f, None) for f in ("omp_get_max_threads", "omp_set_num_threads")]
    lib.leti_omp = omp if all(omp) else None
    return lib


def _check(lib: Any, rc: int) -> None:
    if rc != 0:
        raise ValueError(f"xgboost: {lib.XGBGetLastError().decode(errors='replace')}")


#: Up to this many rows, a booster answers from `SmallTrees` (see the module docstring): on a
#: graph's kernels, with the library's code and trees out of the CPU caches after the front end
#: ran, numpy is the faster up to 20-30 rows of a 300-tree booster.
SMALL_ROWS = 24
_NO_TREES: Any = object()


class SmallTrees:
    """A gbtree regression model as flat numpy arrays, predicting a few rows at a time.

    Every tree's nodes share one index space. A node goes to `left` when its feature value is
    below its float32 `threshold` (or is missing and `default_left`), else to `left + 1`: xgboost
    allocates a node's children together. A leaf points at itself with an infinite threshold,
    and holds its value in `leaf`. All trees advance one level per step, `depth` steps."""

    __slots__ = ("base", "left", "feature", "threshold", "default_left", "internal", "leaf",
                 "roots", "depth", "features", "_offsets")  # fmt: skip

    def __init__(self, doc: dict, features: int) -> None:
        """`doc`: the model as `save_raw` writes it, read by `read_ubj` (or `json.loads`)."""
        learner = doc["learner"]
        model = learner["gradient_booster"]
        param = learner["learner_model_param"]
        objective = learner.get("objective", {}).get("name")
        if (
            model.get("name") != "gbtree"
            or objective != "reg:squarederror"
            or int(param.get("num_target", 1)) != 1
            or int(param.get("num_class", 0)) > 1
        ):
            raise ValueError("not a single-output squared-error gbtree")
        self.base = np.float32(float(str(param["base_score"]).strip("[]")))
        trees = model["model"]["trees"]
        if not trees:
            raise ValueError("no trees")
        for tree in trees:
            if np.any(np.asarray(tree.get("split_type", ()))) or (
                int(tree["tree_param"]["size_leaf_vector"]) > 1
            ):
                raise ValueError("categorical splits or vector leaves")

        def joined(key: str, dtype: Any) -> np.ndarray:
            return np.concatenate([np.asarray(t[key], dtype) for t in trees])

        sizes = np.array([len(t["left_children"]) for t in trees], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        offset = np.repeat(offsets, sizes)
        left = joined("left_children", np.int64)
        right = joined("right_children", np.int64)
        internal = left >= 0
        if not np.array_equal(right[internal], left[internal] + 1):
            raise ValueError("children not side by side")
        ids = np.arange(len(left), dtype=np.int64)
        condition = joined("split_conditions", np.float32)
        self.left = np.where(internal, left + offset, ids)
        self.feature = np.where(internal, joined("split_indices", np.int64), 0)
        self.threshold = np.where(internal, condition, np.float32(np.inf)).astype(np.float32)
        self.default_left = joined("default_left", np.int64) != 0
        self.internal = internal
        self.leaf = np.where(internal, np.float32(0), condition).astype(np.float32)
        self.roots = offsets.astype(np.int64)
        # depth: how many times a node's parent can be taken before the root is reached
        parent = np.full(len(left), -1, np.int64)
        parent[self.left[internal]] = ids[internal]
        parent[self.left[internal] + 1] = ids[internal]
        level = np.zeros(len(left), np.int64)
        above = parent
        while (above >= 0).any():
            level += above >= 0
            above = np.where(above >= 0, parent[above], -1)
        self.depth = int(level.max())
        self.features = features
        self._offsets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.feature.size and int(self.feature.max()) >= features:
            raise ValueError("a split on a feature the model does not have")

    def _start(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(every tree's root, for each of n rows; each entry's row offset in the flat x)."""
        known = self._offsets.get(n)
        if known is None:
            trees = len(self.roots)
            rows = np.repeat(np.arange(n, dtype=np.int64) * self.features, trees)
            known = (np.tile(self.roots, n), rows)
            if len(self._offsets) < 64:
                self._offsets[n] = known
        return known

    def predict(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # as xgboost: beyond float32's range is infinite
            flat = np.ascontiguousarray(x, np.float32).reshape(-1)
        n = len(flat) // self.features
        roots, rows = self._start(n)
        node = roots
        if np.isfinite(flat).all():  # a leaf's infinite threshold keeps every value there
            feature, threshold, left = self.feature, self.threshold, self.left
            for _ in range(self.depth):
                go_right = flat[rows + feature[node]] >= threshold[node]
                node = left[node] + go_right
        else:  # a missing value takes its node's default way, +inf goes right of anything
            internal, default_left = self.internal, self.default_left
            for _ in range(self.depth):
                value = flat[rows + self.feature[node]]
                go_left = np.where(
                    np.isnan(value), default_left[node], value < self.threshold[node]
                )
                node = self.left[node] + (internal[node] & ~go_left)
        leaves = self.leaf[node].reshape(n, len(self.roots))
        # xgboost adds the trees to the base score one after another, in float32
        start = np.full((n, 1), self.base, np.float32)
        summed = np.cumsum(np.concatenate([start, leaves], axis=1), axis=1, dtype=np.float32)
        return summed[:, -1]


class Booster:
    """A booster loaded into libxgboost: `inplace_predict(x)` as `xgboost.Booster` has it."""

    __slots__ = ("_lib", "_handle", "_features", "_small")

    def __init__(self, lib: Any, raw: bytes) -> None:
        self._lib = lib
        self._handle = ctypes.c_void_p()
        omp = lib.leti_omp
        before = omp[0]() if omp else 0
        if omp:
            omp[1](1)  # this thread's loads start no OpenMP thread pool (see the module doc)
        try:
            _check(lib, lib.XGBoosterCreate(None, 0, ctypes.byref(self._handle)))
            _check(lib, lib.XGBoosterSetParam(self._handle, b"nthread", b"1"))
            buf = ctypes.create_string_buffer(raw, len(raw))
            _check(lib, lib.XGBoosterLoadModelFromBuffer(self._handle, buf, len(raw)))
            _check(lib, lib.XGBoosterSetParam(self._handle, b"nthread", b"1"))
            n = ctypes.c_uint64()
            _check(lib, lib.XGBoosterGetNumFeature(self._handle, ctypes.byref(n)))
            self._features = int(n.value)
        finally:
            if omp:
                omp[1](before)
        self._small: Any = None  # SmallTrees, built on the first few-row call

    def _small_trees(self) -> Any:
        """The booster as `SmallTrees` once it agrees with the library on probe rows, else
        `_NO_TREES` (then every call goes to the library)."""
        if self._small is None:
            with _LOCK:
                if self._small is None:
                    self._small = _checked_small_trees(self)
        return self._small

    def num_features(self) -> int:
        return self._features

    def prepare(self) -> None:
        """Build the numpy trees now rather than on the first few-row call (a server's master
        does, so that the workers it forks share them)."""
        self._small_trees()

    def inplace_predict(self, x: np.ndarray) -> np.ndarray:
        """float32 predictions of the rows of `x` (what `xgboost.Booster.inplace_predict`
        answers: the same library call, with the same array and configuration)."""
        x = np.asarray(x)
        if x.dtype.hasobject or x.dtype in (np.float16, np.bool_):
            x = x.astype(np.float32)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        if x.ndim != 2 or x.shape[1] != self._features:
            raise ValueError(
                f"Feature shape mismatch, expected: {self._features}, got {x.shape[-1]}"
            )
        if 0 < len(x) <= SMALL_ROWS:
            small = self._small_trees()
            if small is not _NO_TREES:
                return small.predict(x)
        return self._library_predict(x)

    def _library_predict(self, x: np.ndarray) -> np.ndarray:
        interface = json.dumps(x.__array_interface__).encode()
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        preds = ctypes.POINTER(ctypes.c_float)()
        lib = self._lib
        _check(
            lib,
            lib.XGBoosterPredictFromDense(
                self._handle,
                interface,
                _PREDICT_CONFIG,
                None,
                ctypes.byref(shape),
                ctypes.byref(dims),
                ctypes.byref(preds),
            ),
        )
        n = 1
        for i in range(dims.value):
            n *= int(shape[i])
        if n == 0:
            return np.zeros(0, np.float32)
        out = np.ctypeslib.as_array(preds, (n,)).copy()
        return out if dims.value == 1 else out.reshape([int(shape[i]) for i in range(dims.value)])

    def save_raw(self, raw_format: str = "ubj") -> bytearray:
        """The model as `xgboost.Booster.save_raw` writes it."""
        lib = self._lib
        length = ctypes.c_uint64()
        cptr = ctypes.POINTER(ctypes.c_char)()
        config = json.dumps({"format": raw_format}).encode()
        _check(
            lib,
            lib.XGBoosterSaveModelToBuffer(
                self._handle, config, ctypes.byref(length), ctypes.byref(cptr)
            ),
        )
        return bytearray(ctypes.string_at(cptr, length.value))

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value:
            with contextlib.suppress(Exception):  # at interpreter shutdown the library may be gone
                self._lib.XGBoosterFree(handle)


_UBJ_NUMBERS = {
    ord("i"): ">i1", ord("U"): "u1", ord("I"): ">i2", ord("l"): ">i4", ord("L"): ">i8",
    ord("d"): ">f4", ord("D"): ">f8",
}  # fmt: skip


def read_ubj(data: bytes) -> Any:
    """A Universal Binary JSON document (what xgboost's `save_raw("ubj")` writes) as Python
    values; typed numeric arrays become numpy arrays. Enough of the format for xgboost models:
    objects, arrays (typed, counted or not), numbers, strings, booleans, null. A typed array is a
    read-only big-endian view of `data`."""
    buf = memoryview(data)
    pos = 0

    def number(marker: int) -> Any:
        nonlocal pos
        dtype = np.dtype(_UBJ_NUMBERS[marker])
        value = np.frombuffer(buf, dtype, 1, pos)[0]
        pos += dtype.itemsize
        return float(value) if dtype.kind == "f" else int(value)

    def count() -> int:
        nonlocal pos
        marker = buf[pos]
        pos += 1
        return number(marker)

    def text() -> str:
        nonlocal pos
        n = count()
        out = bytes(buf[pos : pos + n]).decode("utf-8")
        pos += n
        return out

    def value(marker: int) -> Any:
        nonlocal pos
        if marker in _UBJ_NUMBERS:
            return number(marker)
        if marker == ord("S") or marker == ord("H"):
            return text()
        if marker == ord("C"):
            pos += 1
            return chr(buf[pos - 1])
        if marker == ord("T"):
            return True
        if marker == ord("F"):
            return False
        if marker == ord("Z"):
            return None
        if marker == ord("{"):
            return obj()
        if marker == ord("["):
            return arr()
        raise ValueError(f"UBJ marker {chr(marker)!r} at {pos - 1}")

    def obj() -> dict:
        nonlocal pos
        out = {}
        while True:
            if buf[pos] == ord("}"):
                pos += 1
                return out
            key = text()
            pos += 1
            out[key] = value(buf[pos - 1])

    def arr() -> Any:
        nonlocal pos
        kind = None
        if buf[pos] == ord("$"):
            kind = buf[pos + 1]
            pos += 2
        if buf[pos] == ord("#"):
            pos += 1
            n = count()
            if kind in _UBJ_NUMBERS:
                dtype = np.dtype(_UBJ_NUMBERS[kind])
                out = np.frombuffer(buf, dtype, n, pos)  # big-endian, read-only: a view
                pos += n * dtype.itemsize
                return out
            items = []
            for _ in range(n):
                if kind is None:
                    pos += 1
                    items.append(value(buf[pos - 1]))
                else:
                    items.append(value(kind))
            return items
        items = []
        while buf[pos] != ord("]"):
            pos += 1
            items.append(value(buf[pos - 1]))
        pos += 1
        return items

    pos = 1
    return value(buf[0])


def _checked_small_trees(booster: Booster) -> Any:
    """`SmallTrees` of `booster` if they give the library's numbers on probe rows (random
    values over many scales, with missing ones), else `_NO_TREES`."""
    try:
        small = SmallTrees(read_ubj(bytes(booster.save_raw("ubj"))), booster.num_features())
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        return _NO_TREES
    rng = np.random.default_rng(0)
    n = booster.num_features()
    probe = rng.normal(size=(256, n)) * rng.choice([1e-3, 0.1, 1.0, 10.0, 1e3, 1e6], size=(256, n))
    wild = probe[128:]  # the second half with missing, infinite and out-of-float32 values
    wild[::7, rng.integers(n)] = np.nan
    wild[3::11, rng.integers(n)] = np.inf
    wild[5::13, rng.integers(n)] = -1e300
    want = booster._library_predict(probe)
    got = np.concatenate([small.predict(probe[i : i + 16]) for i in range(0, len(probe), 16)])
    return small if np.array_equal(want, got, equal_nan=True) else _NO_TREES


def load_booster(raw: bytes | bytearray) -> Any:
    """A booster from the bytes `save_raw` wrote (UBJ or JSON): a `Booster` through the C API,
    or an `xgboost.Booster` where the library cannot be opened directly."""
    lib = library()
    if lib is not None:
        return Booster(lib, bytes(raw))
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    booster.set_param({"nthread": 1})
    return booster
