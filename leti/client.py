"""A small Python client for the leti service.

    from leti.client import Client
    with Client("http://127.0.0.1:8000") as c:
        c.predict("resnet50.onnx", soc="snapdragon855")["total_ms"]
        c.predict_many(["a.onnx", "b.onnx"], soc="pixel4")

Graphs may be paths, bytes or `onnx.ModelProto`, ONNX or ncnn `.param` (a `.param` holds no
weights and is uploaded as it is). ONNX weights are stripped before upload (the
graph-only copy keeps every initializer's shape, which is all the estimator needs), so a ResNet-50
upload is kilobytes, not 100 MB. Connection errors and 502/503/504 are retried with exponential
backoff (predictions are pure functions, so a retry is always safe). A 4xx raises a `ClientError`
subclass carrying the server's `error` kind and `detail`.

A Client holds one `requests.Session`; use one Client per thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx
import requests

from leti.core.errors import (  # the client's public API: importable from here
    BadGraph,
    BadRequest,
    ClientError,
    NotFound,
    ServerError,
    TooLarge,
    Unavailable,
    UnprocessableGraph,
    UnsupportedMediaType,
)

__all__ = [
    "Client",
    "ClientError",
    "BadRequest",
    "BadGraph",
    "UnprocessableGraph",
    "NotFound",
    "TooLarge",
    "UnsupportedMediaType",
    "ServerError",
    "Unavailable",
    "graph_bytes",
]

GraphLike = str | os.PathLike[str] | bytes | bytearray | onnx.ModelProto
_RETRY_STATUS = frozenset({502, 503, 504})
# What the client reads of a graph it strips: a protobuf's own ceiling (2 GiB), not the front
# end's LETI_MAX_GRAPH_MB, which is about what a server parses. The weights are dropped here,
# so the upload is small whatever the file's size; the server checks that size.
_READ_LIMIT = (2 << 30) - 1


def _error_class(status: int, error: str) -> type[ClientError]:
    if status == 422:
        return UnprocessableGraph
    if status == 400:
        return BadGraph if error == "invalid_graph" else BadRequest
    if status == 404:
        return NotFound
    if status == 413:
        return TooLarge
    if status == 415:
        return UnsupportedMediaType
    if status >= 500:
        return ServerError
    return ClientError


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    from leti.frontend.graph import strip_weights

    return strip_weights(model)


def graph_bytes(graph: GraphLike, strip: bool = True) -> bytes:
    """The bytes to upload for `graph`: a graph-only copy when `strip` (initializer dims kept,
    data dropped; external data is never read). An ncnn `.param` (a path ending in .param, or
    text starting with 7767517) holds no weights and is sent as it is. Bytes that do not parse
    are sent as they are, so the server can say what is wrong with them."""
    from leti.frontend.graph import load_model
    from leti.frontend.ncnn import is_param

    if isinstance(graph, onnx.ModelProto):
        return (_strip(graph) if strip else graph).SerializeToString()
    if isinstance(graph, bytes | bytearray):
        if not strip or is_param(bytes(graph)):
            return bytes(graph)
        try:
            model = load_model(bytes(graph), max_bytes=_READ_LIMIT)
        except Exception:
            return bytes(graph)
        return _strip(model).SerializeToString()
    path = Path(graph)
    if not strip or path.suffix.lower() == ".param":
        return path.read_bytes()
    with open(path, "rb") as fh:
        head = fh.read(16)
    if is_param(head):
        return path.read_bytes()
    # weights first, size after: a 300 MB model is a few kB once stripped
    return _strip(load_model(path, max_bytes=_READ_LIMIT)).SerializeToString()


def _suffix(blob: bytes) -> str:
    from leti.frontend.ncnn import is_param

    return ".param" if is_param(blob) else ".onnx"


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        timeout: float = 30,
        retries: int = 3,
        backoff: float = 0.2,
        max_batch: int = 256,
        max_batch_bytes: int = 48 << 20,
        strip: bool = True,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_batch = max(1, int(max_batch))
        self.max_batch_bytes = max_batch_bytes
        self.strip = strip
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "leti-client")

    # -- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = self.base_url + path
        last: Exception | None = None
        retry_after: float | None = None  # the server's Retry-After on a retryable status
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt, retry_after))
            try:
                resp = self.session.request(method, url, timeout=self.timeout, **kw)
            except requests.ConnectionError as exc:  # includes ConnectTimeout
                last, retry_after = exc, None
                continue
            if resp.status_code in _RETRY_STATUS and attempt < self.retries:
                retry_after = _seconds(resp.headers.get("Retry-After"))
                resp.close()
                continue
            if resp.status_code >= 400:
                raise self._to_error(resp)
            return resp
        raise Unavailable(None, "unavailable", f"{method} {url} failed: {last}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after is not None:
            delay = max(delay, min(retry_after, 30.0))
        return delay

    @staticmethod
    def _to_error(resp: requests.Response) -> ClientError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "error" in body:
            error, detail = str(body["error"]), str(body.get("detail", ""))
        else:
            error, detail, body = f"http_{resp.status_code}", resp.text[:500], None
        return _error_class(resp.status_code, error)(resp.status_code, error, detail, body)

    @staticmethod
    def _params(
        soc: str | None, runtime: str | None, layers: bool, input_shape: dict | None
    ) -> dict[str, str]:
        params: dict[str, str] = {"layers": "true" if layers else "false"}
        if soc is not None:
            params["soc"] = soc
        if runtime:
            params["runtime"] = runtime
        if input_shape:
            params["input_shape"] = json.dumps(input_shape)
        return params

    # -- endpoints -----------------------------------------------------------------------------
    def predict(
        self,
        graph: GraphLike,
        soc: str,
        runtime: str | None = None,
        layers: bool = True,
        input_shape: dict[str, list[int]] | None = None,
    ) -> dict:
        """POST /predict: the prediction dict (see `Prediction.to_dict`)."""
        data = graph_bytes(graph, self.strip)
        resp = self._request(
            "POST",
            "/predict",
            params=self._params(soc, runtime, layers, input_shape),
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        return resp.json()

    def predict_many(
        self,
        graphs: Iterable[GraphLike],
        soc: str,
        runtime: str | None = None,
        layers: bool = False,
        input_shape: dict[str, list[int]] | None = None,
    ) -> list[dict]:
        """POST /predict/batch: one dict per graph, in order. A graph the server rejects gets
        `{"error": ..., "detail": ...}` in its slot instead of raising. Large inputs are split
        into requests of at most `max_batch` graphs / `max_batch_bytes` bytes."""
        blobs = [graph_bytes(g, self.strip) for g in graphs]
        params = self._params(soc, runtime, layers, input_shape)
        out: list[dict] = []
        for chunk in self._chunks(blobs):
            files = [
                ("model", (f"graph{i}{_suffix(blob)}", blob, "application/octet-stream"))
                for i, blob in enumerate(chunk)
            ]
            resp = self._request("POST", "/predict/batch", params=params, files=files)
            results = resp.json()["results"]
            if len(results) != len(chunk):
                raise ServerError(
                    resp.status_code,
                    "bad_response",
                    f"server returned {len(results)} results for {len(chunk)} graphs",
                )
            out.extend(results)
        return out

    def _chunks(self, blobs: Sequence[bytes]) -> Iterable[list[bytes]]:
        chunk: list[bytes] = []
        size = 0
        for blob in blobs:
            if chunk and (len(chunk) >= self.max_batch or size + len(blob) > self.max_batch_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(blob)
            size += len(blob)
        if chunk:
            yield chunk

    def socs(self) -> list[dict]:
        """GET /socs: every registry SoC with the runtimes that have a model."""
        return self._request("GET", "/socs").json()["socs"]

    def health(self) -> dict:
        return self._request("GET", "/healthz").json()


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (its HTTP-date form is not used by leti servers)."""
    try:
        return float(header) if header else None
    except ValueError:
        return None
