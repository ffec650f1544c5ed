"""Every exception class of leti, in one place.

`LetiError` and its subclasses are errors a user can cause; each maps to one HTTP status so the
service needs no guessing. `ClientError` and its subclasses are what `leti.client` raises for an
error answer from a leti server (they are re-exported there, their public home).
"""

from __future__ import annotations

import json
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


class SocRegistryError(LetiError):
    """A user-defined SoC that cannot be added, or an unreadable `<models-dir>/socs.json`."""

    kind = "invalid_soc"


class UnknownRuntimeError(LetiError):
    status = 404
    kind = "unknown_runtime"


class ModelNotFoundError(LetiError):
    """No trained model for this (soc, runtime) in the models dir."""

    status = 404
    kind = "model_not_found"


class MeasurementError(LetiError):
    kind = "invalid_measurements"


class CalibrationError(LetiError):
    """Unusable timings for `leti calibrate` (too few rows, an unreadable file, ...)."""

    kind = "invalid_calibration"


class DeviceError(MeasurementError):
    """adb is missing, the phone is unreachable, or `benchmark_model` failed on it."""

    status = 503
    kind = "device_error"


class ConfigError(LetiError):
    """A LETI_* environment variable is set to an unusable value (see `leti.core.settings`)."""

    status = 500  # the server's configuration, not the request, is at fault
    kind = "invalid_config"

    def __init__(self, message: str, variable: str, value: str):
        super().__init__(message)
        self.variable = variable
        self.value = value


class ServiceError(LetiError):
    """A request problem found by the service itself (not by the estimator)."""

    def __init__(self, status: int, kind: str, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.extra = extra


# --------------------------------------------------------------------------------------------
# leti.client: error answers from a leti server


class ClientError(Exception):
    """An error answer from the server (or no answer at all)."""

    def __init__(
        self, status: int | None, error: str, detail: str, body: dict | None = None
    ) -> None:
        super().__init__(f"{status or 'no response'} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.body = body or {}


class BadRequest(ClientError):
    """400: a bad parameter (missing soc, bad input_shape, bad JSON...)."""


class BadGraph(BadRequest):
    """The graph itself is unusable: malformed/truncated ONNX (400)."""


class UnprocessableGraph(BadGraph):
    """422: symbolic input dims without input_shape (`body["input"]` names it), or too many
    layers."""


class NotFound(ClientError):
    """404: unknown SoC or runtime (`body["known"]` lists the valid ones), no model, bad URL."""


class TooLarge(ClientError):
    """413: body over the server's upload limit, or too many graphs in one batch."""


class UnsupportedMediaType(ClientError):
    """415."""


class ServerError(ClientError):
    """5xx (after retries, for the retryable ones)."""


class Unavailable(ServerError):
    """The server could not be reached (after retries)."""


# -- errors between leti's own processes -------------------------------------------------------
def is_json(value: Any) -> bool:
    """Whether JSON can carry `value` as it is."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def error_state(exc: LetiError) -> dict:
    """The attributes of `exc` that JSON can carry (a worker process sends them with the class
    name and the message; `rebuild_error` makes the same error again)."""
    return {key: value for key, value in exc.__dict__.items() if is_json(value)}


def rebuild_error(name: str, message: str, state: dict) -> LetiError:
    """The error another leti process sent as (class name, message, `error_state`): that class
    of this module (LetiError for a name it does not know), without calling its constructor,
    since some subclasses take extra arguments."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, LetiError)):
        cls = LetiError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc
