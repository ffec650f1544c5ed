"""How leti starts a Python process of its own (`python -m leti.<module>`): the same
interpreter, with the directory `leti` was imported from first on PYTHONPATH, so that a child
runs this very code (a checkout, or an installed wheel) whatever its working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def command(module: str, *args: str) -> list[str]:
    """The command line that runs `module` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def environment() -> dict[str, str]:
    """This process's environment with leti's own package root first on PYTHONPATH."""
    package_root = str(Path(__file__).resolve().parents[2])  # where `leti` is imported from
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, path) if p)}
