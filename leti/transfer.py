"""Transfer to SoCs without measurements (filled in by the transfer model; see issue 4)."""

from __future__ import annotations

from pathlib import Path


def load_transfer_estimator(soc, runtime: str, models_dir: Path):
    """The transfer estimator for `soc`, or None when no transfer model is trained."""
    return None


def available_transfer(models_dir: Path, exclude: set[tuple[str, str]]) -> list[dict]:
    return []
