"""The one place that reads leti's environment variables.

One reader per `LETI_*` variable, one policy for all of them: unset or empty gives the default;
a value that is set but unusable (not a number, zero or negative) raises `ConfigError` naming
the variable and the value, rather than being silently ignored. Readers look at the environment
on every call (nothing is cached), so a test's `monkeypatch.setenv` takes effect at once.
"""

from __future__ import annotations

import os
from pathlib import Path

from leti.core.errors import ConfigError

MODELS_DIR = "LETI_MODELS_DIR"
MEASUREMENTS_DIR = "LETI_MEASUREMENTS_DIR"
SHARED_DIR = "LETI_SHARED_DIR"
MAX_GRAPH_MB = "LETI_MAX_GRAPH_MB"
MAX_LAYERS = "LETI_MAX_LAYERS"
MAX_UPLOAD_MB = "LETI_MAX_UPLOAD_MB"
MAX_BATCH = "LETI_MAX_BATCH"
CACHE_MB = "LETI_CACHE_MB"

DEFAULT_MAX_GRAPH_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LAYERS = 20_000
DEFAULT_MAX_UPLOAD_MB = 64
DEFAULT_MAX_BATCH = 256
DEFAULT_CACHE_MB = 64

_MIB = 1024 * 1024


# ---------------------------------------------------------------------------- folders


def models_dir(default: Path) -> Path:
    """$LETI_MODELS_DIR: where trained models live (the `--models-dir` flag wins over it)."""
    return _path(MODELS_DIR, default)


def measurements_dir(default: Path) -> Path:
    """$LETI_MEASUREMENTS_DIR: where measurement tables live."""
    return _path(MEASUREMENTS_DIR, default)


def shared_dir(default: Path) -> Path:
    """$LETI_SHARED_DIR: the shared data folder (public data sets, model zoos)."""
    return _path(SHARED_DIR, default)


# ---------------------------------------------------------------------------- limits


def max_graph_bytes(default: int = DEFAULT_MAX_GRAPH_BYTES) -> int:
    """$LETI_MAX_GRAPH_MB, in bytes: the largest ONNX file the front end reads. The variable is
    in MiB and may be fractional (`0.5`)."""
    return _positive_int(MAX_GRAPH_MB, default, scale=_MIB)


def max_layers(default: int = DEFAULT_MAX_LAYERS) -> int:
    """$LETI_MAX_LAYERS: the most nodes a graph may have."""
    return _positive_int(MAX_LAYERS, default)


def max_upload_mb(default: int = DEFAULT_MAX_UPLOAD_MB) -> int:
    """$LETI_MAX_UPLOAD_MB: the service's request body limit, in MB."""
    return _positive_int(MAX_UPLOAD_MB, default)


def max_batch(default: int = DEFAULT_MAX_BATCH) -> int:
    """$LETI_MAX_BATCH: the most graphs in one batch request."""
    return _positive_int(MAX_BATCH, default)


def cache_bytes(default_mb: float = DEFAULT_CACHE_MB) -> int:
    """$LETI_CACHE_MB, in bytes: the most memory an estimator's answer cache holds (MiB, may be
    fractional; 0 turns the cache off)."""
    raw = os.environ.get(CACHE_MB, "").strip()
    try:
        if raw and float(raw) == 0:
            return 0
    except ValueError:
        pass  # not a number: refused below, naming the variable
    return _positive_int(CACHE_MB, int(default_mb * _MIB), scale=_MIB)


# ---------------------------------------------------------------------------- parsing


def _path(name: str, default: Path) -> Path:
    raw = os.environ.get(name, "")
    return Path(raw) if raw else default


def _positive_int(name: str, default: int, scale: int = 1) -> int:
    """`int(float(value) * scale)`; unset or blank -> `default`; anything else unusable raises."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw) * scale)
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        raise ConfigError(f"{name} must be a number, got {raw!r}", name, raw) from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}", name, raw)
    return value
