"""The HTTP service: a Flask app factory, one blueprint, one place for error handlers.

    app = create_app()                     # config from the environment
    app = create_app({"MODELS_DIR": "m"})  # or explicit

Endpoints (see `leti.service.openapi` and the README): POST /predict, POST /predict/batch,
GET /socs, GET /healthz, GET /openapi.json, GET /metrics, and GET / (a web page over them,
`leti.service.page`). Every error is JSON `{"error": kind, "detail": ...}`.

State that outlives a request lives on the app, never at module level: the estimator cache (one
`Estimator` per (soc, runtime), loaded once per process) and the metrics, each behind a lock.
Estimators are immutable after load, so handler threads share them freely. A request's own data
(body, parsed graph, options) stays in local variables of its handler.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from leti.core import settings, socs
from leti.core.errors import (
    GraphError,
    LetiError,
    ServiceError,
    SymbolicShapeError,
    UnknownRuntimeError,
    UnknownSocError,
)
from leti.core.store import models_dir as resolve_models_dir
from leti.core.version import VERSION
from leti.service.metrics import Metrics
from leti.service.page import bp as page_bp
from leti.service.parsing import (
    MULTIPART,
    RAW_TYPES,
    batch_inputs,
    http_message,
    param,
    parse_bool,
    parse_input_shape,
    read_capped,
    require_type,
)

log = logging.getLogger("leti.service.app")

EXTENSION = "leti"
DEFAULT_MAX_UPLOAD_MB = settings.DEFAULT_MAX_UPLOAD_MB
DEFAULT_MAX_BATCH = settings.DEFAULT_MAX_BATCH

# Names for HTTP errors that werkzeug raises (routing, body size, ...).
_HTTP_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    500: "internal_error",
    503: "unavailable",
}


# --------------------------------------------------------------------------------------------
# configuration


def _default_loader(soc: str, runtime: str, models_dir: Any) -> Any:
    from leti.predict.estimator import Estimator

    return Estimator.load(soc, runtime, models_dir=models_dir)


def _default_available(models_dir: Any) -> list[dict]:
    from leti.predict.registry import available

    return available(models_dir)


def load_config(config: dict | None = None) -> dict[str, Any]:
    """Defaults, overridden by LETI_* environment variables, overridden by `config`.

    A LETI_* variable set to an unusable value raises `ConfigError` here, at start-up, rather
    than on a request: $LETI_MAX_GRAPH_MB, which only the front end uses, is checked too."""
    settings.max_graph_bytes()
    cfg: dict[str, Any] = {
        "MODELS_DIR": None,  # None: --models-dir's default ($LETI_MODELS_DIR, else models/)
        "MAX_UPLOAD_MB": settings.max_upload_mb(),
        "MAX_LAYERS": settings.max_layers(),
        "MAX_BATCH": settings.max_batch(),
        # Seams for tests: how an estimator is loaded and what `available()` says. Defaults are
        # the real leti.predict ones.
        "ESTIMATOR_LOADER": _default_loader,
        "AVAILABLE": _default_available,
    }
    cfg.update(config or {})
    return cfg


# --------------------------------------------------------------------------------------------
# per-app state


class ServiceState:
    """What the app keeps between requests: config, the estimator cache and metrics."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.models_dir = resolve_models_dir(cfg["MODELS_DIR"])
        self.max_bytes = int(cfg["MAX_UPLOAD_MB"] * 1024 * 1024)
        # Passed to the front end, which enforces it; None: the front end's own default.
        self.max_layers: int | None = cfg["MAX_LAYERS"]
        self.max_batch = int(cfg["MAX_BATCH"])
        self._loader: Callable[..., Any] = cfg["ESTIMATOR_LOADER"]
        self._available: Callable[[Any], list[dict]] = cfg["AVAILABLE"]
        self._estimators: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.metrics = Metrics()

    # estimators -----------------------------------------------------------------------------
    def estimator(self, soc_name: str | None, runtime_name: str | None) -> Any:
        """The estimator for (soc, runtime), loaded on first use and then shared.

        Unknown names fail before any loading (404 listing the known ones)."""
        if not soc_name:
            known = ", ".join(sorted(socs.registry(self.models_dir).socs))
            raise ServiceError(
                400, "missing_parameter", f"'soc' is required; known SoCs: {known}", param="soc"
            )
        for name, value in (("soc", soc_name), ("runtime", runtime_name)):
            if value is not None and not isinstance(value, str):
                raise ServiceError(400, "invalid_parameter", f"'{name}' must be a string")
        soc = socs.registry(self.models_dir).resolve(soc_name)
        runtime = socs.resolve_runtime(runtime_name, self.models_dir)
        key = (soc.id, runtime)
        est = self._estimators.get(key)
        if est is None:
            with self._lock:
                est = self._estimators.get(key)
                if est is None:
                    log.info("loading estimator soc=%s runtime=%s", soc.id, runtime)
                    est = self._loader(soc.id, runtime, self.models_dir)
                    self._estimators[key] = est
        return est

    def preload(self, spec: str) -> Any:
        """`soc` or `soc:runtime` -> load that estimator now (used by `leti serve --preload`),
        with what its first predictions would build (shared by the workers a master forks)."""
        soc_name, _, runtime = spec.partition(":")
        est = self.estimator(soc_name.strip(), runtime.strip() or None)
        warm_up = getattr(est, "warm_up", None)
        return warm_up() if callable(warm_up) else est

    @property
    def estimators_loaded(self) -> int:
        with self._lock:
            return len(self._estimators)

    def available(self) -> list[dict]:
        return list(self._available(self.models_dir))


def _graph_body(data: bytes) -> bytes:
    """The ONNX bytes of a request (already capped at the upload limit), handed to the estimator
    as they are: the front end parses them once, never loading external data, and enforces the
    layer limit (`max_layers`)."""
    if not data:
        raise GraphError("empty body: expected ONNX model bytes")
    return data


def state() -> ServiceState:
    return current_app.extensions[EXTENSION]


# --------------------------------------------------------------------------------------------
# error documents


def _error_doc(exc: LetiError) -> dict[str, Any]:
    doc: dict[str, Any] = {"error": exc.kind, "detail": http_message(exc)}
    if isinstance(exc, UnknownSocError):
        doc["known"] = sorted(socs.all_socs())
    elif isinstance(exc, UnknownRuntimeError):
        doc["known"] = sorted(socs.runtimes())
    elif isinstance(exc, SymbolicShapeError):
        doc["input"] = exc.input_name
    if isinstance(exc, ServiceError):
        doc.update(exc.extra)
    return doc


# --------------------------------------------------------------------------------------------
# the blueprint

bp = Blueprint("leti", __name__)


@bp.post("/predict")
def predict() -> Response:
    st = state()
    mt = require_type((*RAW_TYPES, MULTIPART))
    if mt == MULTIPART:
        upload = request.files.get("model")
        if upload is None:
            raise ServiceError(
                400, "missing_parameter", "multipart body needs a file field 'model'", param="model"
            )
        data = read_capped(upload.stream, st.max_bytes)
    else:
        data = read_capped(request.stream, st.max_bytes)
    layers = parse_bool(param("layers"), "layers", True)
    input_shape = parse_input_shape(param("input_shape"))
    est = st.estimator(param("soc"), param("runtime"))
    try:
        pred = est.predict(_graph_body(data), input_shape, max_layers=st.max_layers)
    except LetiError as exc:
        st.metrics.count_graphs(exc.kind)
        raise
    st.metrics.count_graphs("predicted")
    return jsonify(pred.to_dict(layers=layers))


@bp.post("/predict/batch")
def predict_batch() -> Response:
    st = state()
    items, body = batch_inputs(st)
    if not items:
        raise ServiceError(400, "empty_batch", "the batch holds no graphs")
    layers = parse_bool(param("layers", body), "layers", True)
    input_shape = parse_input_shape(param("input_shape", body))
    est = st.estimator(param("soc", body), param("runtime", body))

    slots: list[Any] = []
    todo: list[tuple[int, bytes]] = []
    for i, item in enumerate(items):
        if isinstance(item, LetiError):
            slots.append(item)
            continue
        try:
            slots.append(None)
            todo.append((i, _graph_body(item)))
        except LetiError as exc:
            slots[i] = exc
    if todo:
        models = [m for _, m in todo]
        limit = st.max_layers
        try:
            results = list(est.predict_many(models, input_shape, max_layers=limit))
            if len(results) != len(models):
                raise RuntimeError(f"predict_many returned {len(results)} for {len(models)}")
        except Exception:
            # Something unexpected in the batch path: isolate it graph by graph so that one
            # bad graph cannot fail the others.
            log.exception("predict_many failed; retrying graph by graph")
            results = [_predict_one(est, m, input_shape, limit) for m in models]
        for (i, _), res in zip(todo, results, strict=True):
            slots[i] = res

    out = []
    for res in slots:
        if isinstance(res, LetiError):
            st.metrics.count_graphs(res.kind)
            out.append(_error_doc(res))
        elif isinstance(res, BaseException):
            st.metrics.count_graphs("internal_error")
            out.append({"error": "internal_error", "detail": "internal server error"})
        else:
            st.metrics.count_graphs("predicted")
            out.append(res.to_dict(layers=layers))
    return jsonify({"soc": est.soc, "runtime": est.runtime, "results": out})


def _predict_one(est: Any, model: bytes, input_shape: dict | None, max_layers: int | None) -> Any:
    try:
        return est.predict(model, input_shape, max_layers=max_layers)
    except LetiError as exc:
        return exc
    except Exception as exc:
        log.exception("predict failed inside a batch")
        return exc


@bp.get("/socs")
def list_socs() -> Response:
    st = state()
    try:
        avail = st.available()
    except Exception:
        log.exception("listing available models failed")
        avail = []
    by_soc: dict[str, dict[str, dict]] = {}
    for entry in avail:
        by_soc.setdefault(entry.get("soc", ""), {})[entry.get("runtime", "")] = {
            "model_version": entry.get("model_version"),
            "provenance": entry.get("provenance"),
            **({"calibration": entry["calibration"]} if entry.get("calibration") else {}),
        }
    out = []
    reg = socs.registry(st.models_dir)
    for sid, soc in sorted(reg.socs.items()):
        out.append(
            {
                "id": sid,
                "name": soc.name,
                "gpu": soc.gpu,
                "vendor": soc.vendor,
                "aliases": list(soc.aliases),
                "measured_runtimes": list(soc.measured_runtimes),
                "runtimes": by_soc.get(sid, {}),
            }
        )
        if reg.is_user(sid):
            out[-1].update(
                user_defined=True,
                family=soc.family,
                fp16_gflops=soc.fp16_gflops,
                fp32_gflops=soc.fp32_gflops,
                dram_gbps=soc.dram_gbps,
            )
    return jsonify({"socs": out, "runtimes": sorted(socs.all_runtimes(st.models_dir))})


@bp.get("/healthz")
def healthz() -> Response:
    """200 `ok` while at least one (SoC, runtime) model can be loaded; otherwise 503 `degraded`
    (say, an empty or wrong models dir): the process is up but cannot answer a prediction."""
    st = state()
    try:
        models = len(st.available())
        problem = None if models else f"no model can be loaded from {st.models_dir}"
    except Exception as exc:
        log.exception("listing available models failed")
        models, problem = 0, f"listing the models in {st.models_dir} failed: {exc}"
    doc: dict[str, Any] = {
        "status": "degraded" if problem else "ok",
        "version": VERSION,
        "models_available": models,
        "estimators_loaded": st.estimators_loaded,
        "limits": {
            "max_upload_mb": st.cfg["MAX_UPLOAD_MB"],
            "max_batch": st.max_batch,
            "max_layers": st.max_layers,
        },
    }
    if problem:
        doc["detail"] = problem
    resp = jsonify(doc)
    resp.status_code = 503 if problem else 200
    return resp


@bp.get("/openapi.json")
def openapi() -> Response:
    from leti.service.openapi import build_spec

    st = state()
    return jsonify(
        build_spec(version=VERSION, max_upload_mb=st.cfg["MAX_UPLOAD_MB"], max_batch=st.max_batch)
    )


@bp.get("/metrics")
def metrics() -> Response:
    st = state()
    return Response(
        st.metrics.render(st.estimators_loaded),
        mimetype="text/plain",
        content_type="text/plain; version=0.0.4; charset=utf-8",
    )


# --------------------------------------------------------------------------------------------
# the one place for errors, timing and metrics


def _json_error(status: int, doc: dict[str, Any], headers: dict | None = None) -> Response:
    g.leti_error = doc.get("error")
    resp = jsonify(doc)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _register_handlers(app: Flask) -> None:
    @app.errorhandler(LetiError)
    def _leti_error(exc: LetiError) -> Response:
        return _json_error(exc.status, _error_doc(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        headers = {}
        if code == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        detail = exc.description or ""
        if code == 404:
            detail = f"no endpoint {request.method} {request.path}"
        elif code == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        elif code == 413:
            limit = state().cfg["MAX_UPLOAD_MB"]
            detail = f"body exceeds the {limit:g} MB limit (LETI_MAX_UPLOAD_MB)"
        kind = _HTTP_KINDS.get(code, f"http_{code}")
        return _json_error(code, {"error": kind, "detail": detail}, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json_error(500, {"error": "internal_error", "detail": "internal server error"})

    @app.before_request
    def _start() -> None:
        g.leti_start = time.perf_counter()
        st = state()
        cl = request.content_length
        # Refuse an oversized body from its Content-Length, before a byte of it is read.
        # (multipart framing gets a little headroom on top of the graph limit.)
        if cl is not None and cl > st.max_bytes + _MULTIPART_SLACK:
            raise ServiceError(
                413,
                "payload_too_large",
                f"body of {cl} bytes exceeds the {st.cfg['MAX_UPLOAD_MB']:g} MB limit "
                "(LETI_MAX_UPLOAD_MB)",
            )

    @app.after_request
    def _finish(resp: Response) -> Response:
        started = g.get("leti_start")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "OTHER"
        error = g.get("leti_error")
        if error is None and resp.status_code >= 400:
            error = _HTTP_KINDS.get(resp.status_code, f"http_{resp.status_code}")
        state().metrics.observe(rule, method, resp.status_code, elapsed, error)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp


_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
_MULTIPART_SLACK = 1 << 20


def create_app(config: dict | None = None) -> Flask:
    """Build the app. `config` keys: MODELS_DIR, MAX_UPLOAD_MB, MAX_LAYERS, MAX_BATCH (else from
    LETI_MODELS_DIR, LETI_MAX_UPLOAD_MB (64), LETI_MAX_LAYERS, LETI_MAX_BATCH (256)), plus any
    Flask setting, and test seams ESTIMATOR_LOADER / AVAILABLE."""
    cfg = load_config(config)
    app = Flask("leti")
    st = ServiceState(cfg)
    app.config.update({k: v for k, v in cfg.items() if k.isupper()})
    # Flask/werkzeug enforce these too: a Content-Length over the limit is refused before the
    # body is read, and a body without one is cut off at the limit.
    app.config["MAX_CONTENT_LENGTH"] = st.max_bytes + _MULTIPART_SLACK
    app.config["MAX_FORM_PARTS"] = st.max_batch + 64
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = st
    app.register_blueprint(bp)
    app.register_blueprint(page_bp)
    _register_handlers(app)
    return app
