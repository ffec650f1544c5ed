"""Install anywhere: a wheel carries the trained models (models/ mapped into the package as
leti/_bundled_models), an editable install reads models/ in place, and `make serve` installs
what serving needs only.

The fast tests check the packaging configuration and the lookup; the slow one builds the real
wheel and runs `leti` from it in an empty folder."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from leti.core import store
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
MODELS = REPO / "models"


def _setup_kwargs() -> dict[str, ast.expr]:
    tree = ast.parse((REPO / "setup.py").read_text("utf-8"))
    call = next(
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup"
    )
    return {kw.arg: kw.value for kw in call.keywords}


def _model_files() -> list[str]:
    """Every file of models/ a wheel must carry (hidden staging folders left out)."""
    out = []
    for path in MODELS.rglob("*"):
        rel = path.relative_to(MODELS)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            out.append(rel.as_posix())
    return sorted(out)


def test_models_are_mapped_into_the_package():
    kwargs = _setup_kwargs()
    assert ast.literal_eval(kwargs["package_dir"]) == {"leti._bundled_models": "models"}
    # the package and every folder below it (a data-only package each: setuptools warns about
    # data in folders that are not declared packages)
    assert "*BUNDLED" in ast.unparse(kwargs["packages"])
    bundled = (REPO / "setup.py").read_text("utf-8").split("BUNDLED = [", 1)[1].split("]\n", 1)[0]
    assert '"leti._bundled_models"' in bundled
    assert 'find_namespace_packages(where="models")' in bundled
    assert store.SHIPPED_MODELS == "_bundled_models"
    # pyproject must not list the packages itself: it would override setup.py's list
    assert "packages" not in PYPROJECT["tool"]["setuptools"]


def test_package_data_covers_every_model_file():
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["leti._bundled_models"]
    files = _model_files()
    assert any(f.endswith("manifest.json") for f in files)

    def shipped(rel: str) -> bool:
        # setuptools globs recursively: "**/" matches any depth, the top level included
        return any(
            fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.removeprefix("**/")) for p in patterns
        )

    missing = [f for f in files if not shipped(f)]
    assert not missing, f"model files a wheel would not carry: {missing[:5]}"


def test_checkout_reads_models_in_place(monkeypatch):
    monkeypatch.delenv("LETI_MODELS_DIR", raising=False)
    assert not (REPO / "leti" / "_bundled_models").exists()
    assert store.bundled_models_dir() == MODELS
    assert store.models_dir() == MODELS


def test_installed_package_reads_its_shipped_models(tmp_path, monkeypatch):
    monkeypatch.delenv("LETI_MODELS_DIR", raising=False)
    package = tmp_path / "site-packages" / "leti"
    (package / "_bundled_models" / "snapdragon855").mkdir(parents=True)
    monkeypatch.setattr(store, "_PACKAGE", package)
    monkeypatch.setattr(store, "_REPO_ROOT", package.parent)
    assert store.bundled_models_dir() == package / "_bundled_models"
    assert store.models_dir() == package / "_bundled_models"
    monkeypatch.setenv("LETI_MODELS_DIR", str(tmp_path / "mine"))
    assert store.models_dir() == tmp_path / "mine"  # the variable still wins


def test_progress_library_is_a_dependency():
    deps = PYPROJECT["project"]["dependencies"]
    assert any(re.match(r"tqdm\b", d) for d in deps)


def test_make_serve_installs_no_dev_extras():
    text = (REPO / "Makefile").read_text("utf-8")
    rules = {}
    for block in re.split(r"\n(?=\S)", text):
        head, _, body = block.partition("\n")
        if ":" in head and not head.startswith("#"):
            target, _, prereqs = head.partition(":")
            rules[target.strip()] = (prereqs.split(), body)
    serve_stamp = rules["serve"][0][0]
    test_stamp = rules["test"][0][0]
    assert serve_stamp != test_stamp
    serve_install = rules[serve_stamp][1]
    assert "pip install" in serve_install and "[dev]" not in serve_install
    assert "'.[dev]'" in rules[test_stamp][1]
    for target in ("lint", "format"):
        assert rules[target][0][0] == test_stamp


@pytest.mark.slow
def test_wheel_carries_the_models_and_runs_anywhere(tmp_path):
    """Build the wheel, check it carries every model file, then run `leti` from it (its
    dependencies are this environment's) in an empty folder."""
    # from a copy of what a source distribution holds: no build/ folder left in the checkout,
    # and none of an earlier build's files in this wheel
    src = tmp_path / "src"
    shutil.copytree(REPO / "leti", src / "leti", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(MODELS, src / "models")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(wheels), "--no-deps", "-q"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if build.returncode != 0 and "satisfies the requirement setuptools" in build.stderr:
        pytest.skip(f"no build backend reachable: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    [wheel] = wheels.glob("leti-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(tmp_path / "site")
    shipped = {n.removeprefix("leti/_bundled_models/") for n in names}
    missing = [f for f in _model_files() if f not in shipped]
    assert not missing, missing[:5]
    assert "leti/data/socs.json" in names and "leti/cli.py" in names

    site = tmp_path / "site"
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETI_")}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install of the checkout
    light = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"
    a, b = light / "light_squeezenet.onnx", light / "light_shufflenet.onnx"

    def leti(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "leti", *args],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    where = subprocess.run(
        [sys.executable, "-c", "from leti.core import store; print(store.bundled_models_dir())"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "leti" / "_bundled_models"), where.stderr
    out = leti("predict", str(a), str(b), "--soc", "snapdragon855,kirin9000", "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert len(rows) == 1 + 4 and all(",measured," in r or ",transfer," in r for r in rows[1:])
    socs = leti("socs")
    assert socs.returncode == 0 and "snapdragon855: Snapdragon 855" in socs.stdout
    assert "tflite-gpu: measured" in socs.stdout
