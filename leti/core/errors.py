"""Errors a user can cause. Each maps to one HTTP status so the service needs no guessing."""

from __future__ import annotations

from typing import Any


class LetiError(Exception):
    """Base class: a clear message for a person, plus an HTTP status for the service."""

    status = 400
    kind = "bad_request"

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail or message


class GraphError(LetiError):
    """Malformed, truncated or otherwise unusable ONNX."""

    kind = "invalid_graph"


class GraphTooLargeError(LetiError):
    """The file is over the size limit."""

    status = 413
    kind = "graph_too_large"


class TooManyLayersError(LetiError):
    status = 422
    kind = "too_many_layers"


class SymbolicShapeError(LetiError):
    """An input has symbolic dims and the caller gave no concrete shape for it."""

    status = 422
    kind = "symbolic_input_shape"

    def __init__(self, message: str, input_name: str):
        super().__init__(message)
        self.input_name = input_name


class UnknownSocError(LetiError):
    status = 404
    kind = "unknown_soc"


class UnknownRuntimeError(LetiError):
    status = 404
    kind = "unknown_runtime"


class ModelNotFoundError(LetiError):
    """No trained model for this (soc, runtime) in the models dir."""

    status = 404
    kind = "model_not_found"


class MeasurementError(LetiError):
    kind = "invalid_measurements"


class ServiceError(LetiError):
    """A request problem found by the service itself (not by the estimator)."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.extra = extra
