"""Atomic file writes and where models live.

Every model, manifest and measurement file goes through `atomic_write_*`: a crash or a full disk
leaves the old file intact rather than a half-written one that a server would later load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leti.core import settings

_PACKAGE = Path(__file__).resolve().parents[1]
_REPO_ROOT = _PACKAGE.parent
#: Where a built package carries the trained models: setup.py maps the repository's `models/`
#: there (package data). A checkout or an editable install has no such folder.
SHIPPED_MODELS = "_bundled_models"


def bundled_models_dir() -> Path:
    """The committed, trained models: inside the package when it was installed from a wheel
    (`leti/_bundled_models`), else `models/` at the root of the checkout (an editable install,
    or running from the source tree), which `leti fit` refits in place."""
    shipped = _PACKAGE / SHIPPED_MODELS
    return shipped if shipped.is_dir() else _REPO_ROOT / "models"


def models_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """`--models-dir`, else $LETI_MODELS_DIR, else the bundled models (`bundled_models_dir`),
    else `./models`."""
    if arg:
        return Path(arg)
    bundled = bundled_models_dir()
    return settings.models_dir(bundled if bundled.is_dir() else Path("models"))


def measurements_dir(arg: str | os.PathLike[str] | None = None) -> Path:
    """`--measurements-dir`, else $LETI_MEASUREMENTS_DIR, else the bundled `measurements/`."""
    if arg:
        return Path(arg)
    return settings.measurements_dir(_bundled_or_relative("measurements"))


def _bundled_or_relative(name: str) -> Path:
    """The folder next to the package when it is there (a checkout), else `./name`."""
    bundled = _REPO_ROOT / name
    return bundled if bundled.is_dir() else Path(name)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` on a temp file in the same folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; keep the usual mode
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (data files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
