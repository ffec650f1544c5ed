"""Ships the trained models inside the package.

`models/` stays at the repository root (`leti fit` and `leti calibrate` refit it in place); a
build maps it into the package as `leti/_bundled_models` (package data, see pyproject.toml), so
that a wheel installed anywhere finds its models. An editable install maps nothing: it reads
`models/` in the checkout (`leti.core.store.bundled_models_dir`). Everything else about the
package is declared in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["leti", "leti.*"]), "leti._bundled_models"],
    package_dir={"leti._bundled_models": "models"},
)
