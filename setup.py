"""Ships the trained models inside the package.

`models/` stays at the repository root (`leti fit` and `leti calibrate` refit it in place); a
build maps it into the package as `leti/_bundled_models` (package data, see pyproject.toml), so
that a wheel installed anywhere finds its models. An editable install maps nothing: it reads
`models/` in the checkout (`leti.core.store.bundled_models_dir`). Everything else about the
package is declared in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

#: every folder under models/ is a package of the wheel (data only): setuptools warns about, and
#: will one day drop, data in folders that are not declared packages
BUNDLED = [
    "leti._bundled_models",
    *(f"leti._bundled_models.{p}" for p in find_namespace_packages(where="models")),
]

setup(
    packages=[*find_namespace_packages(include=["leti", "leti.*"]), *BUNDLED],
    package_dir={"leti._bundled_models": "models"},
)
