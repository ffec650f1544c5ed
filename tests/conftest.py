"""Shared fixtures. Tests that need ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LETI_SHARED_DIR", REPO.parent / "shared"))
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "mobile-ml-benchmark").is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set LETI_SHARED_DIR)")
    return SHARED


@pytest.fixture(scope="session")
def light_dir() -> Path:
    if not LIGHT.is_dir():
        pytest.skip(f"onnx wheel has no light test graphs at {LIGHT}")
    return LIGHT


@pytest.fixture(scope="session")
def light_models(light_dir: Path) -> list[Path]:
    return sorted(light_dir.glob("*.onnx"))
