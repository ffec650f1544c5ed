"""The version of leti, in one place: pyproject.toml reads it from here (statically), and
`leti.__version__`, the import and model manifests and the service's `/healthz` report it."""

VERSION = "0.1.0"
