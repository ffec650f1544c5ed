"""The OpenAPI 3.0 description of the service, built as a dict (served at GET /openapi.json)."""

from __future__ import annotations

from typing import Any

OPENAPI_VERSION = "3.0.3"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_SOC = {
    "name": "soc",
    "in": "query",
    "required": False,
    "description": "SoC id or alias (e.g. snapdragon855, 'Snapdragon 855', pixel4). Required; "
    "for multipart and JSON bodies it may be sent as a form/body field instead.",
    "schema": {"type": "string"},
    "example": "snapdragon855",
}
_RUNTIME = {
    "name": "runtime",
    "in": "query",
    "required": False,
    "description": "Runtime id; default tflite-gpu.",
    "schema": {"type": "string"},
    "example": "tflite-gpu",
}
_INPUT_SHAPE = {
    "name": "input_shape",
    "in": "query",
    "required": False,
    "description": "Concrete shapes for inputs with symbolic dims, as JSON: "
    '{"input": [1, 3, 224, 224]}.',
    "schema": {"type": "string"},
}
_LAYERS = {
    "name": "layers",
    "in": "query",
    "required": False,
    "description": "false returns the total only (no per-layer list). Default true.",
    "schema": {"type": "boolean", "default": True},
}


def _schemas() -> dict[str, Any]:
    return {
        "Error": {
            "type": "object",
            "required": ["error", "detail"],
            "properties": {
                "error": {
                    "type": "string",
                    "description": "Machine-readable kind, e.g. invalid_graph, unknown_soc, "
                    "payload_too_large, symbolic_input_shape, too_many_layers.",
                },
                "detail": {"type": "string", "description": "Human-readable explanation."},
                "known": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "For unknown_soc / unknown_runtime: the accepted ids.",
                },
                "input": {
                    "type": "string",
                    "description": "For symbolic_input_shape: the input that needs a shape.",
                },
            },
        },
        "Shape": {
            "type": "array",
            "items": {"type": "integer"},
            "nullable": True,
            "description": "A tensor's dims; null when unknown.",
            "example": [1, 3, 224, 224],
        },
        "LayerTime": {
            "type": "object",
            "description": "One line of the breakdown: a kernel the runtime launches, a "
            "standalone op, or the graph-level rest '(graph overhead)'. The lines add up to "
            "total_ms.",
            "required": [
                "name",
                "op",
                "kernel",
                "ms",
                "priced",
                "layers",
                "input_shapes",
                "output_shapes",
                "flops",
                "share",
            ],
            "properties": {
                "name": {"type": "string", "description": "The kernel's main node."},
                "op": {"type": "string", "description": "Op type of the main node."},
                "kernel": {
                    "type": "string",
                    "description": "Kernel kind and what is fused into it (conv+bn+relu), "
                    "'standalone', or 'graph' for the graph-level rest.",
                },
                "ms": {"type": "number"},
                "layers": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "The model's own node names this line covers (ONNX nodes "
                    "or ncnn layers a kernel fused), in graph order; empty for the graph-level "
                    "rest.",
                },
                "input_shapes": {
                    "type": "array",
                    "items": _ref("Shape"),
                    "description": "Shapes of the activations the line reads (weights and "
                    "constants left out).",
                },
                "output_shapes": {
                    "type": "array",
                    "items": _ref("Shape"),
                    "description": "Shapes of what the line writes.",
                },
                "flops": {
                    "type": "integer",
                    "description": "FLOPs (2 x MACs) of the covered nodes.",
                },
                "share": {
                    "type": "number",
                    "description": "ms / total_ms (negative for a graph-level rest that a "
                    "calibration lowers below the kernel sum).",
                },
                "priced": {
                    "type": "string",
                    "enum": ["measured", "analytic", "graph"],
                    "description": "measured: the kernel family was measured on this SoC "
                    "(analytic cost x learned efficiency); analytic: no measurements of this "
                    "op family (borrowed efficiency, or a standalone op's structural terms); "
                    "graph: graph-level terms fitted on end-to-end timings.",
                },
            },
        },
        "Unsupported": {
            "type": "object",
            "required": ["op", "count", "names"],
            "properties": {
                "op": {"type": "string"},
                "count": {"type": "integer"},
                "names": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Prediction": {
            "type": "object",
            "required": [
                "soc",
                "runtime",
                "total_ms",
                "interval_ms",
                "kernel_sum_ms",
                "unsupported",
                "model_version",
                "provenance",
                "notes",
            ],
            "properties": {
                "soc": {"type": "string"},
                "runtime": {"type": "string"},
                "total_ms": {"type": "number", "description": "Predicted end-to-end latency."},
                "interval_ms": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "Prediction interval [low, high] in ms.",
                },
                "kernel_sum_ms": {"type": "number"},
                "layers": {
                    "type": "array",
                    "items": _ref("LayerTime"),
                    "description": "Per-kernel times; omitted when layers=false.",
                },
                "unsupported": {"type": "array", "items": _ref("Unsupported")},
                "model_version": {"type": "string"},
                "provenance": {"type": "string", "enum": ["measured", "transfer", "calibrated"]},
                "notes": {"type": "array", "items": {"type": "string"}},
            },
        },
        "BatchResult": {"oneOf": [_ref("Prediction"), _ref("Error")]},
        "BatchResponse": {
            "type": "object",
            "required": ["soc", "runtime", "results"],
            "properties": {
                "soc": {"type": "string"},
                "runtime": {"type": "string"},
                "results": {
                    "type": "array",
                    "items": _ref("BatchResult"),
                    "description": "One entry per graph, in request order.",
                },
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["soc", "graphs"],
            "properties": {
                "soc": {"type": "string"},
                "runtime": {"type": "string"},
                "layers": {"type": "boolean", "default": True},
                "input_shape": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                },
                "graphs": {
                    "type": "array",
                    "items": {"type": "string", "format": "byte"},
                    "description": "Base64-encoded ONNX models or ncnn .param texts.",
                },
            },
        },
        "RuntimeModel": {
            "type": "object",
            "properties": {
                "model_version": {"type": "string"},
                "provenance": {"type": "string", "enum": ["measured", "transfer", "calibrated"]},
                "calibration": _ref("CalibrationSummary"),
            },
        },
        "CalibrationSummary": {
            "type": "object",
            "description": "A saved calibration: how many timings, on which base and why, and "
            "where the timings come from (a public benchmark's section for the shipped ones).",
            "required": ["k", "base"],
            "properties": {
                "k": {"type": "integer", "minimum": 1},
                "base": {
                    "type": "object",
                    "properties": {
                        "runtime": {"type": "string"},
                        "provenance": {"type": "string"},
                        "profile": {"type": "string", "nullable": True},
                        "model_version": {"type": "string"},
                    },
                },
                "why": {"type": "string", "nullable": True},
                "form": {"type": "string", "enum": ["log_affine", "offset"]},
                "source": {"type": "object", "nullable": True},
            },
        },
        "Soc": {
            "type": "object",
            "required": ["id", "name", "gpu", "runtimes"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "gpu": {"type": "string"},
                "vendor": {"type": "string"},
                "aliases": {"type": "array", "items": {"type": "string"}},
                "measured_runtimes": {"type": "array", "items": {"type": "string"}},
                "runtimes": {
                    "type": "object",
                    "additionalProperties": _ref("RuntimeModel"),
                    "description": "Runtimes with a loadable model, keyed by runtime id.",
                },
                "user_defined": {
                    "type": "boolean",
                    "description": "Defined with `leti socs add` in the models dir's socs.json; "
                    "its descriptors follow.",
                },
                "family": {"type": "string"},
                "fp16_gflops": {"type": "number"},
                "fp32_gflops": {"type": "number"},
                "dram_gbps": {"type": "number"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["ok", "degraded"],
                    "description": "degraded (with HTTP 503): no model can be loaded.",
                },
                "detail": {"type": "string", "description": "Why the status is degraded."},
                "version": {"type": "string"},
                "models_available": {
                    "type": "integer",
                    "description": "Loadable (SoC, runtime) models.",
                },
                "estimators_loaded": {"type": "integer"},
                "limits": {
                    "type": "object",
                    "properties": {
                        "max_upload_mb": {"type": "number"},
                        "max_batch": {"type": "integer"},
                        "max_layers": {"type": "integer", "nullable": True},
                    },
                },
            },
        },
    }


def build_spec(
    version: str = "0.1.0", max_upload_mb: float = 64, max_batch: int = 256
) -> dict[str, Any]:
    """The OpenAPI 3.0 document; limits are filled in from the running server's config."""
    onnx_body = {
        "type": "string",
        "format": "binary",
        "description": f"An ONNX model (graph-only is enough) or an ncnn .param text, at most "
        f"{max_upload_mb} MB.",
    }
    common_errors = {
        "404": _error("Unknown SoC or runtime, or no model for them (lists the known ones)."),
        "413": _error(f"Body over {max_upload_mb} MB (LETI_MAX_UPLOAD_MB)."),
        "415": _error("Unsupported Content-Type."),
        "500": _error("Unexpected server error (logged; no traceback is returned)."),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "leti",
            "version": version,
            "description": "Latency estimator for neural networks on mobile GPUs. Upload an "
            "ONNX graph or ncnn .param, get the predicted end-to-end and per-layer latency on "
            "a SoC.",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Predict the latency of one graph (ONNX or ncnn .param)",
                    "operationId": "predict",
                    "parameters": [_SOC, _RUNTIME, _INPUT_SHAPE, _LAYERS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": onnx_body},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model"],
                                    "properties": {
                                        "model": onnx_body,
                                        "soc": {"type": "string"},
                                        "runtime": {"type": "string"},
                                        "input_shape": {"type": "string"},
                                        "layers": {"type": "boolean"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json(_ref("Prediction"), "The prediction."),
                        "400": _error("A malformed or truncated graph, or a bad parameter."),
                        "422": _error(
                            "Symbolic input dims without input_shape (names the input), or "
                            "too many layers."
                        ),
                        **common_errors,
                    },
                }
            },
            "/predict/batch": {
                "post": {
                    "summary": "Predict many graphs in one request",
                    "description": f"At most {max_batch} graphs (LETI_MAX_BATCH). A bad graph "
                    "gets an Error object in its slot and does not fail the others.",
                    "operationId": "predictBatch",
                    "parameters": [_SOC, _RUNTIME, _INPUT_SHAPE, _LAYERS],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["model"],
                                    "properties": {
                                        "model": {
                                            "type": "array",
                                            "items": onnx_body,
                                            "description": "Repeat the field once per graph.",
                                        },
                                        "soc": {"type": "string"},
                                        "runtime": {"type": "string"},
                                        "input_shape": {"type": "string"},
                                        "layers": {"type": "boolean"},
                                    },
                                }
                            },
                            "application/json": {"schema": _ref("BatchRequest")},
                        },
                    },
                    "responses": {
                        "200": _json(_ref("BatchResponse"), "One result per graph, in order."),
                        "400": _error("Bad JSON, empty batch or a bad parameter."),
                        **common_errors,
                        "413": _error(
                            f"Body over {max_upload_mb} MB or more than {max_batch} graphs."
                        ),
                    },
                }
            },
            "/socs": {
                "get": {
                    "summary": "Known SoCs and the runtimes with a trained model",
                    "operationId": "listSocs",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "socs": {"type": "array", "items": _ref("Soc")},
                                    "runtimes": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                            "The SoC registry.",
                        )
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Health check",
                    "operationId": "health",
                    "responses": {
                        "200": _json(_ref("Health"), "The server is up and can load a model."),
                        "503": _json(_ref("Health"), "Degraded: no model can be loaded."),
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "A web page over this API (upload, pick SoCs, compare)",
                    "operationId": "page",
                    "responses": {
                        "200": {
                            "description": "A self-contained HTML page (no external assets).",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0 document.")},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Request counts by endpoint and status, error "
                            "counts, latency histogram (Prometheus text format 0.0.4).",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": _schemas()},
    }
