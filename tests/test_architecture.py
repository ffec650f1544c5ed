"""The code's shape, as tests: the public surface, no import cycle, no private name crossing a
module boundary, printing and argument parsing only in the CLI, a light client.

The layer rules themselves are import-linter contracts in pyproject.toml (`lint-imports`, run
by `make test`); these tests cover what import-linter cannot see (names, calls) and keep the
cycle check in the plain pytest run as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import leti

PACKAGE = Path(leti.__file__).resolve().parent
#: Modules that may print for people or parse arguments.
CLI_MODULES = {"leti.cli"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = ast.parse(path.read_text("utf-8"), str(path))
    return out


def test_public_api_is_pinned() -> None:
    assert sorted(leti.__all__) == sorted(
        ["Estimator", "Prediction", "available", "LetiError", "__version__"]
    )
    for name in leti.__all__:
        assert getattr(leti, name) is not None
    assert issubclass(leti.LetiError, Exception)
    with pytest.raises(AttributeError):
        _ = leti.no_such_name


def test_version_has_one_source() -> None:
    """pyproject.toml reads the version from leti.core.version instead of repeating it, and
    the installed metadata agrees with it."""
    from importlib import metadata

    from leti.core.version import VERSION

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text("utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert 'attr = "leti.core.version.VERSION"' in pyproject
    assert leti.__version__ == VERSION and VERSION.count(".") >= 2
    assert metadata.version("leti") == VERSION


def test_no_import_cycle_between_modules() -> None:
    """Every direct import, function-level ones included: no module is reachable back from a
    module it imports."""
    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (dev extra)")
    graph = grimp.build_graph("leti", include_external_packages=False)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_crosses_a_module_boundary() -> None:
    crossing = []
    for module, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("leti"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        crossing.append(f"{module}: from {node.module} import {alias.name}")
    assert not crossing, "\n".join(crossing)


def test_only_the_cli_prints_or_parses_arguments() -> None:
    found = []
    for module, tree in _modules().items():
        if module in CLI_MODULES:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "print"
            ):
                found.append(f"{module}:{node.lineno}: print()")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names]
                if "argparse" in names or getattr(node, "module", None) == "argparse":
                    found.append(f"{module}:{node.lineno}: imports argparse")
    assert not found, "\n".join(found)


def test_exception_classes_live_in_core_errors() -> None:
    """Public exception classes are defined once, in leti.core.errors (private control-flow
    signals inside one module are not part of the interface)."""
    found = []
    for module, tree in _modules().items():
        if module == "leti.core.errors":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{module}: class {node.name}")
    assert not found, "\n".join(found)


def test_import_leti_and_the_client_stay_light() -> None:
    """`import leti` and the HTTP client must not pull in xgboost, pandas, flask or sklearn:
    NAS loops import them in every worker."""
    code = (
        "import sys, leti, leti.client; "
        "heavy = {'xgboost', 'pandas', 'flask', 'sklearn', 'scipy', 'waitress'} & set(sys.modules);"
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
