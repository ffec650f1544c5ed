"""GET /healthz: 200 "ok" while a model can be loaded, 503 "degraded" when none can."""

from __future__ import annotations

from pathlib import Path

import pytest

from leti.predict import registry
from leti.service.app import create_app


def test_ok_with_the_bundled_models():
    r = create_app({}).test_client().get("/healthz")
    doc = r.get_json()
    assert r.status_code == 200, doc
    assert doc["status"] == "ok" and doc["models_available"] > 0
    assert "detail" not in doc


def test_degraded_with_an_empty_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Nothing to fall back on either: no bundled transfer model.
    monkeypatch.setattr(registry, "bundled_models_dir", lambda: tmp_path / "no-bundled-models")
    empty = tmp_path / "models"
    empty.mkdir()
    r = create_app({"MODELS_DIR": str(empty)}).test_client().get("/healthz")
    doc = r.get_json()
    assert r.status_code == 503, doc
    assert doc["status"] == "degraded" and doc["models_available"] == 0
    assert str(empty) in doc["detail"]
    # the rest of the document is still there for the operator
    assert doc["limits"]["max_batch"] == 256 and doc["version"]


def test_degraded_when_listing_the_models_fails():
    def broken(models_dir):
        raise OSError("models dir unreadable")

    r = create_app({"AVAILABLE": broken}).test_client().get("/healthz")
    assert r.status_code == 503
    doc = r.get_json()
    assert doc["status"] == "degraded" and "unreadable" in doc["detail"]
