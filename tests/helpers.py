"""Assertions shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import xgboost as xgb


def assert_no_pickle(folder: Path) -> None:
    """Every model file is JSON or xgboost's UBJ, and loads as such: nothing is pickled."""
    files = list(folder.iterdir())
    assert files
    for f in files:
        assert f.suffix in (".json", ".ubj"), f
        raw = f.read_bytes()
        assert not raw.startswith(b"\x80"), f"{f} looks like a pickle"
        if f.suffix == ".json":
            json.loads(raw)
        else:
            xgb.Booster().load_model(bytearray(raw))
