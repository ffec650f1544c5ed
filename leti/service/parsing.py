"""Reading a request: parameters, capped bodies, flags, input shapes and batch payloads.

Helpers for the handlers of `leti.service.app`; each refuses bad input with a `ServiceError` (400,
413 or 415) before any graph is parsed. They read Flask's `request` of the current context.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import IO, Any, Protocol

from flask import request

from leti.core.errors import GraphError, LetiError, ServiceError

MAX_DIM = 1 << 20  # a single input dim above this is a typo, not a model
_READ_CHUNK = 1 << 16

# Content types accepted as "raw ONNX bytes".
RAW_TYPES = ("application/octet-stream", "application/onnx", "application/x-onnx")
MULTIPART = "multipart/form-data"
JSON_TYPE = "application/json"


class _Limits(Protocol):
    """What batch decoding needs from the app state (a `leti.service.app.ServiceState`)."""

    max_bytes: int
    max_batch: int


def _mimetype() -> str:
    return (request.mimetype or "").lower()


def param(name: str, body: dict | None = None) -> Any:
    """A parameter from the JSON body, the multipart form, or the query string, in that order."""
    if body is not None and body.get(name) is not None:
        return body[name]
    if _mimetype() == MULTIPART and name in request.form:
        return request.form[name]
    return request.args.get(name)


def read_capped(stream: IO[bytes], limit: int) -> bytes:
    """Read a body or an uploaded file, refusing (413) the moment it passes `limit` bytes.

    Content-Length is checked before any read; this guards bodies without one (chunked)."""
    buf = bytearray()
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise ServiceError(
                413,
                "payload_too_large",
                f"body exceeds the {limit / (1 << 20):g} MB limit (LETI_MAX_UPLOAD_MB)",
            )


def parse_bool(value: Any, name: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ServiceError(400, "invalid_parameter", f"'{name}' must be true or false, got {value!r}")


def parse_input_shape(value: Any) -> dict[str, list[int]] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise ServiceError(
                400,
                "invalid_input_shape",
                'input_shape must be JSON like {"input": [1, 3, 224, 224]}: ' + str(exc),
            ) from None
    if not isinstance(value, dict) or not value:
        raise ServiceError(
            400,
            "invalid_input_shape",
            'input_shape must be an object like {"input": [1,3,224,224]}',
        )
    shapes: dict[str, list[int]] = {}
    for name, dims in value.items():
        ok = (
            isinstance(dims, list)
            and 0 < len(dims) <= 16
            and all(type(d) is int and 0 < d <= MAX_DIM for d in dims)
        )
        if not ok:
            raise ServiceError(
                400,
                "invalid_input_shape",
                f"input_shape[{name!r}] must be a list of 1-16 positive integers <= {MAX_DIM}",
            )
        shapes[str(name)] = list(dims)
    return shapes


def http_message(exc: LetiError) -> str:
    """An error's message in the HTTP API's own terms: the front end words its hints for Python
    callers (`input_shapes={'x': [...]}`, `input_shapes['x']`) and an ncnn hint names the
    command line too; over HTTP they name the `input_shape` field. For an error document's
    `detail` (`leti.service.app`)."""
    text = exc.message
    text = re.sub(
        r"pass input_shapes=\{(['\"])(.*?)\1: \[\.\.\.\]\}",
        lambda m: (
            "send the input_shape field, e.g. input_shape="
            + json.dumps({m.group(2): [1, 3, 224, 224]})
        ),
        text,
    )
    text = re.sub(
        r"input_shapes\[(['\"])(.*?)\1\]", lambda m: f"input_shape[{json.dumps(m.group(2))}]", text
    )
    text = re.sub(
        r"`leti predict --input-shape [^`]*`, or (input_shape=\{.*?\}) over HTTP", r"\1", text
    )
    return text.replace("input_shapes names", "input_shape names")


def require_type(allowed: Iterable[str]) -> str:
    mt = _mimetype()
    allowed = tuple(allowed)
    if mt not in allowed:
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"Content-Type {mt or '(none)'!r} is not accepted here; use one of: "
            + ", ".join(allowed),
        )
    return mt


def batch_inputs(st: _Limits) -> tuple[list[bytes | LetiError], dict | None]:
    """The graphs of a batch request, in order; a slot that cannot even be decoded holds its
    error instead of bytes."""
    mt = require_type((MULTIPART, JSON_TYPE))
    if mt == MULTIPART:
        files = request.files.getlist("model")
        if len(files) > st.max_batch:
            raise _batch_too_large(len(files), st.max_batch)
        return [read_capped(f.stream, st.max_bytes) for f in files], None
    raw = read_capped(request.stream, st.max_bytes)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ServiceError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("graphs"), list):
        raise ServiceError(
            400,
            "invalid_json",
            'body must be an object like {"soc": "...", "graphs": ["<base64 ONNX>", ...]}',
        )
    graphs = body["graphs"]
    if len(graphs) > st.max_batch:
        raise _batch_too_large(len(graphs), st.max_batch)
    out: list[bytes | LetiError] = []
    for i, item in enumerate(graphs):
        if not isinstance(item, str):
            out.append(GraphError(f"graphs[{i}] must be a base64 string"))
            continue
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError) as exc:
            out.append(GraphError(f"graphs[{i}] is not valid base64: {exc}"))
    return out, body


def _batch_too_large(n: int, limit: int) -> ServiceError:
    return ServiceError(
        413,
        "batch_too_large",
        f"{n} graphs in one batch; this server accepts at most {limit} (LETI_MAX_BATCH)",
    )
