"""The HTTP service: Flask test client for most cases, plus the real waitress server in a
subprocess for every endpoint and every error row over real HTTP.

Everything runs against the real `leti.predict.estimator` and the bundled models/ (or
$LETI_MODELS_DIR); graphs are the small ones the onnx wheel ships plus a few built here.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import os
import random
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import onnx
import pytest
import requests
from onnx import TensorProto, helper

from leti.cli import serve_main as server_main
from leti.core import socs
from leti.service.app import create_app
from leti.service.server import BackgroundServer

OCTET = {"Content-Type": "application/octet-stream"}

# ------------------------------------------------------------------------------ graphs


def conv_model(
    dims: list[int | str] | None = None, input_name: str = "image", weights: bool = True
) -> onnx.ModelProto:
    """image -> Conv 3x3 (8 ch) -> Relu -> GlobalAveragePool."""
    dims = dims or [1, 3, 32, 32]
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 3, 3, 3], [0.01] * (8 * 3 * 3 * 3))
    nodes = [
        helper.make_node("Conv", [input_name, "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["out"], name="gap"),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], [w] if weights else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def relu_chain(n: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    y = helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", [f"t{i}" if i else "x"], [f"t{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def external_data_model(location: str) -> onnx.ModelProto:
    """A conv whose weight claims to live in an external file at `location`."""
    model = conv_model(weights=False)
    t = model.graph.initializer.add()
    t.name = "W"
    t.data_type = TensorProto.FLOAT
    t.dims.extend([8, 3, 3, 3])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "864")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return model


@pytest.fixture(scope="module")
def graphs(light_dir: Path) -> dict[str, bytes]:
    out = {
        name: (light_dir / f"light_{name}.onnx").read_bytes()
        for name in ("squeezenet", "shufflenet", "resnet50")
    }
    out["tiny"] = conv_model().SerializeToString()
    return out


@pytest.fixture(scope="module")
def target() -> tuple[str, str]:
    """A (soc, runtime) the bundled models can serve, preferring snapdragon855/tflite-gpu."""
    from leti.predict.registry import available

    avail = available()
    if not avail:
        pytest.fail("no trained model in models/ (or $LETI_MODELS_DIR): run `leti fit`")
    pairs = [(a["soc"], a["runtime"]) for a in avail]
    return ("snapdragon855", "tflite-gpu") if ("snapdragon855", "tflite-gpu") in pairs else pairs[0]


@pytest.fixture(scope="module")
def app():
    return create_app({"TESTING": True})


@pytest.fixture()
def client(app):
    return app.test_client()


def q(target: tuple[str, str], **extra: str) -> str:
    params = {"soc": target[0], "runtime": target[1], **extra}
    return "?" + "&".join(f"{k}={requests.utils.quote(str(v))}" for k, v in params.items())


# ------------------------------------------------------------------------------ /predict


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet", "resnet50", "tiny"])
def test_predict_raw(client, graphs, target, name):
    r = client.post("/predict" + q(target), data=graphs[name], headers=OCTET)
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    assert (doc["soc"], doc["runtime"]) == target
    assert doc["total_ms"] > 0
    lo, hi = doc["interval_ms"]
    assert lo <= doc["total_ms"] <= hi
    assert doc["layers"] and {"name", "op", "kernel", "ms"} <= set(doc["layers"][0])
    assert doc["provenance"] in ("measured", "transfer", "calibrated")
    assert doc["model_version"]


def test_predict_layers_false_and_alias(client, graphs, target):
    alias = socs.all_socs()[target[0]].aliases[0]
    r = client.post(
        "/predict" + q((alias, target[1]), layers="false"), data=graphs["tiny"], headers=OCTET
    )
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["soc"] == target[0] and "layers" not in doc
    full = client.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET).get_json()
    assert full["total_ms"] == doc["total_ms"]


def test_predict_multipart_with_form_fields(client, graphs, target):
    r = client.post(
        "/predict",
        data={
            "model": (io.BytesIO(graphs["squeezenet"]), "squeezenet.onnx"),
            "soc": target[0],
            "runtime": target[1],
            "layers": "false",
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()
    raw = client.post("/predict" + q(target), data=graphs["squeezenet"], headers=OCTET)
    assert r.get_json()["total_ms"] == raw.get_json()["total_ms"]
    assert "layers" not in r.get_json()


def test_predict_multipart_without_file(client, target):
    r = client.post("/predict", data={"soc": target[0]}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "missing_parameter"


def test_missing_soc(client, graphs):
    r = client.post("/predict", data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 400
    doc = r.get_json()
    assert doc["error"] == "missing_parameter" and "snapdragon855" in doc["detail"]


def test_unknown_soc_and_runtime_list_known(client, graphs, target):
    r = client.post("/predict?soc=snapdragon9999", data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 404
    doc = r.get_json()
    assert (
        doc["error"] == "unknown_soc" and target[0] in doc["known"] and target[0] in doc["detail"]
    )
    r = client.post(f"/predict?soc={target[0]}&runtime=onnxruntime", data=b"x", headers=OCTET)
    assert r.status_code == 404
    doc = r.get_json()
    assert doc["error"] == "unknown_runtime" and "tflite-gpu" in doc["known"]


def test_model_not_found(graphs, tmp_path, target):
    c = create_app({"MODELS_DIR": str(tmp_path)}).test_client()
    r = c.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 404 and r.get_json()["error"] == "model_not_found"


@pytest.mark.parametrize(
    "body",
    [b"", b"not an onnx file", b"\x08\x07\x12\xff\xff\xff\xff\x0f", "truncated"],
    ids=["empty", "text", "bad-varint", "truncated"],
)
def test_malformed_onnx_is_400_with_parser_message(client, graphs, target, body):
    if body == "truncated":
        body = graphs["resnet50"][: len(graphs["resnet50"]) // 3]
    r = client.post("/predict" + q(target), data=body, headers=OCTET)
    assert r.status_code == 400, r.get_json()
    doc = r.get_json()
    assert doc["error"] == "invalid_graph" and len(doc["detail"]) > 10


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", None])
def test_wrong_content_type_is_415(client, graphs, target, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/predict" + q(target), data=graphs["tiny"], headers=headers)
    assert r.status_code == 415 and r.get_json()["error"] == "unsupported_media_type"


def test_symbolic_input_is_422_naming_the_input(client, target):
    model = conv_model(["batch", 3, "height", "width"], input_name="pixels")
    body = model.SerializeToString()
    r = client.post("/predict" + q(target), data=body, headers=OCTET)
    assert r.status_code == 422
    doc = r.get_json()
    assert doc["error"] == "symbolic_input_shape" and doc["input"] == "pixels"
    assert "pixels" in doc["detail"]
    # the hint speaks HTTP (the input_shape field), not Python's input_shapes={...}
    assert "input_shape" in doc["detail"] and "input_shapes=" not in doc["detail"]
    shape = json.dumps({"pixels": [1, 3, 64, 64]})
    r = client.post("/predict" + q(target, input_shape=shape), data=body, headers=OCTET)
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize(
    "shape", ["{not json", "[1,3,64,64]", '{"pixels": [1, 0]}', '{"pixels": "1x3"}']
)
def test_bad_input_shape_is_400(client, target, shape):
    body = conv_model(["batch", 3, "h", "w"], input_name="pixels").SerializeToString()
    r = client.post("/predict" + q(target, input_shape=shape), data=body, headers=OCTET)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_input_shape"


def test_bad_layers_flag_is_400(client, graphs, target):
    r = client.post("/predict" + q(target, layers="maybe"), data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_parameter"


def test_too_many_layers_is_422(graphs, target):
    c = create_app({"MAX_LAYERS": 50}).test_client()
    r = c.post("/predict" + q(target), data=graphs["squeezenet"], headers=OCTET)
    assert r.status_code == 422 and r.get_json()["error"] == "too_many_layers"
    assert c.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET).status_code == 200


class _Unreadable(io.BytesIO):
    """A request body that fails the test if anything reads it."""

    def read(self, *args):  # pragma: no cover - reaching it is the failure
        raise AssertionError("the body was read")

    read1 = readline = readinto = read


def test_413_from_content_length_before_reading(graphs, target):
    app = create_app({"MAX_UPLOAD_MB": 0.05})
    c = app.test_client()
    # over the limit by Content-Length: refused without a single read of the body
    r = c.post(
        "/predict" + q(target),
        input_stream=_Unreadable(),
        headers=OCTET,
        environ_overrides={"CONTENT_LENGTH": str(10**12)},
    )
    assert r.status_code == 413 and r.get_json()["error"] == "payload_too_large"
    # a real body just over the limit (resnet50 is ~78 KB > 51 KB)
    r = c.post("/predict" + q(target), data=graphs["resnet50"], headers=OCTET)
    assert r.status_code == 413 and r.get_json()["error"] == "payload_too_large"
    # multipart upload over the limit
    r = c.post(
        "/predict",
        data={"model": (io.BytesIO(graphs["resnet50"]), "r.onnx"), "soc": target[0]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 413
    # small graphs still pass
    assert c.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET).status_code == 200


def test_413_for_a_body_without_content_length(graphs, target):
    """A chunked body (no Content-Length; the server terminates the stream) is read with a cap."""
    c = create_app({"MAX_UPLOAD_MB": 0.05}).test_client()
    r = c.post(
        "/predict" + q(target),
        input_stream=io.BytesIO(graphs["resnet50"] * 4),
        headers=OCTET,
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413 and r.get_json()["error"] == "payload_too_large"


# ------------------------------------------------------------------------------ /predict/batch


def test_batch_multipart_keeps_order_and_isolates_bad_graphs(client, graphs, target):
    names = ["squeezenet", "garbage", "resnet50", "tiny"]
    blobs = [graphs.get(n, b"\x00garbage\xff") for n in names]
    files = [(io.BytesIO(b), f"{n}.onnx") for n, b in zip(names, blobs, strict=True)]
    r = client.post(
        "/predict/batch",
        data={"model": files, "soc": target[0], "runtime": target[1], "layers": "false"},
        content_type="multipart/form-data",
    )
    assert r.status_code == 200, r.get_json()
    doc = r.get_json()
    assert (doc["soc"], doc["runtime"]) == target
    res = doc["results"]
    assert len(res) == 4
    assert res[1]["error"] == "invalid_graph" and res[1]["detail"]
    for name, slot in zip(names, res, strict=True):
        if name == "garbage":
            continue
        single = client.post("/predict" + q(target), data=graphs[name], headers=OCTET)
        assert slot["total_ms"] == single.get_json()["total_ms"]
        assert "layers" not in slot


def test_batch_json_base64(client, graphs, target):
    body = {
        "soc": target[0],
        "runtime": target[1],
        "graphs": [
            base64.b64encode(graphs["tiny"]).decode(),
            "%%% not base64 %%%",
            42,
            base64.b64encode(conv_model(["n", 3, "h", "w"]).SerializeToString()).decode(),
            base64.b64encode(graphs["squeezenet"]).decode(),
        ],
    }
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 200, r.get_json()
    res = r.get_json()["results"]
    assert [s.get("error") for s in res] == [
        None,
        "invalid_graph",
        "invalid_graph",
        "symbolic_input_shape",
        None,
    ]
    assert res[3]["input"] == "image"
    assert res[0]["layers"]  # layers default to true, as on /predict


def test_batch_errors(graphs, target):
    c = create_app({"MAX_BATCH": 2}).test_client()
    b64 = base64.b64encode(graphs["tiny"]).decode()
    r = c.post("/predict/batch", json={"soc": target[0], "graphs": [b64] * 3})
    assert r.status_code == 413 and r.get_json()["error"] == "batch_too_large"
    files = [(io.BytesIO(graphs["tiny"]), f"{i}.onnx") for i in range(3)]
    r = c.post(
        "/predict/batch",
        data={"model": files, "soc": target[0]},
        content_type="multipart/form-data",
    )
    assert r.status_code == 413
    r = c.post("/predict/batch", json={"soc": target[0], "graphs": []})
    assert r.status_code == 400 and r.get_json()["error"] == "empty_batch"
    r = c.post("/predict/batch", data=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_json"
    r = c.post("/predict/batch", json={"soc": target[0], "graphs": "abc"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_json"
    deep = b"[" * 100_000 + b"]" * 100_000
    r = c.post("/predict/batch", data=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_json"
    for bad in ({"soc": 5}, {"soc": target[0], "runtime": [1]}, {"soc": {"a": 1}}):
        r = c.post("/predict/batch", json={**bad, "graphs": [b64]})
        assert r.status_code == 400 and r.get_json()["error"] == "invalid_parameter", bad
    for shape in ({"image": [True, 3, 8, 8]}, [1, 2], {"image": [1.5]}, "{" * 50_000):
        r = c.post("/predict/batch", json={"soc": target[0], "graphs": [b64], "input_shape": shape})
        assert r.status_code == 400 and r.get_json()["error"] == "invalid_input_shape", shape
    r = c.post("/predict/batch", json={"soc": target[0], "graphs": [b64], "layers": [1]})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_parameter"
    r = c.post("/predict/batch", data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 415
    r = c.post("/predict/batch", json={"soc": "nope", "graphs": [b64]})
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_soc"


# ------------------------------------------------------------------------------ other endpoints


def test_socs_lists_registry_with_models(client, target):
    r = client.get("/socs")
    assert r.status_code == 200
    doc = r.get_json()
    by_id = {s["id"]: s for s in doc["socs"]}
    assert set(by_id) == set(socs.all_socs())
    entry = by_id[target[0]]
    assert {"name", "gpu", "runtimes"} <= set(entry)
    model = entry["runtimes"][target[1]]
    assert model["model_version"] and model["provenance"] in ("measured", "transfer", "calibrated")
    assert "tflite-gpu" in doc["runtimes"]


def test_healthz(client):
    doc = client.get("/healthz").get_json()
    assert doc["status"] == "ok" and doc["limits"]["max_batch"] == 256
    assert doc["limits"]["max_upload_mb"] == 64


def test_openapi_is_valid_and_covers_every_route(app, client):
    spec = client.get("/openapi.json").get_json()
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec)
    routes = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes == set(spec["paths"])
    assert spec["openapi"].startswith("3.0")


def test_unknown_route_and_wrong_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"] == "not_found"
    r = client.get("/predict")
    assert r.status_code == 405 and r.get_json()["error"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]
    r = client.put("/socs")
    assert r.status_code == 405 and r.is_json


def test_unexpected_error_is_500_json_without_traceback(graphs, target, caplog):
    def broken_loader(soc, runtime, models_dir):
        raise RuntimeError("secret-internal-state /srv/keys")

    c = create_app({"ESTIMATOR_LOADER": broken_loader}).test_client()
    with caplog.at_level("ERROR", logger="leti.service.app"):
        r = c.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET)
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal_error", "detail": "internal server error"}
    text = r.get_data(as_text=True)
    assert "secret" not in text and "Traceback" not in text
    assert "secret-internal-state" in caplog.text  # ... but it is logged


_METRIC_LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+]+$')


def test_metrics_prometheus_text(graphs, target):
    c = create_app({}).test_client()
    assert c.post("/predict" + q(target), data=graphs["tiny"], headers=OCTET).status_code == 200
    assert c.post("/predict" + q(target), data=b"junk", headers=OCTET).status_code == 400
    assert c.get("/nowhere").status_code == 404
    r = c.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    for line in text.splitlines():
        assert line.startswith("# ") or _METRIC_LINE.match(line), line
    assert 'leti_http_requests_total{endpoint="/predict",method="POST",status="200"} 1' in text
    assert 'leti_http_requests_total{endpoint="/predict",method="POST",status="400"} 1' in text
    assert 'leti_http_errors_total{endpoint="/predict",error="invalid_graph"} 1' in text
    assert 'leti_http_errors_total{endpoint="unmatched",error="not_found"} 1' in text
    assert 'leti_http_request_duration_seconds_count{endpoint="/predict"} 2' in text
    assert 'leti_http_request_duration_seconds_bucket{endpoint="/predict",le="+Inf"} 2' in text
    assert "leti_estimators_loaded 1" in text


# ------------------------------------------------------------------------------ robustness


def test_estimator_cache_loads_once_under_concurrency(target):
    from leti.service.app import _default_loader

    calls = []

    def counting_loader(soc, runtime, models_dir):
        calls.append((soc, runtime))
        time.sleep(0.05)  # widen the race window
        return _default_loader(soc, runtime, models_dir)

    st = create_app({"ESTIMATOR_LOADER": counting_loader}).extensions["leti"]
    alias = socs.all_socs()[target[0]].aliases[0]
    barrier = threading.Barrier(16)

    def get(i):
        barrier.wait()
        return st.estimator(alias if i % 2 else target[0], target[1])

    with ThreadPoolExecutor(16) as pool:
        ests = list(pool.map(get, range(16)))
    assert calls == [target]
    assert all(e is ests[0] for e in ests)


def _mutations(seed: int, bases: list[bytes], n: int):
    rng = random.Random(seed)
    for i in range(n):
        base = bases[i % len(bases)]
        kind = i % 4
        if kind == 0:  # truncated
            yield base[: rng.randrange(1, len(base))]
        elif kind == 1:  # bit flips
            b = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(b))
                b[pos] ^= 1 << rng.randrange(8)
            yield bytes(b)
        elif kind == 2:  # random bytes
            yield rng.randbytes(rng.randint(0, 4096))
        else:  # a random slice spliced in
            a, b = sorted(rng.sample(range(len(base)), 2))
            yield base[:a] + rng.randbytes(rng.randint(1, 64)) + base[b:]


def test_fuzzed_bodies_never_500(client, graphs, target):
    bases = [graphs["tiny"], graphs["squeezenet"], relu_chain(5).SerializeToString()]
    statuses: dict[int, int] = {}
    for body in _mutations(20240611, bases, 120):
        r = client.post("/predict" + q(target, layers="false"), data=body, headers=OCTET)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400, 413, 422), (r.status_code, r.get_data()[:300])
        if r.status_code != 200:
            assert r.get_json()["error"]
    assert statuses.get(400, 0) > 10


class FifoWatch:
    """A named pipe at `path`: if anything opens it for reading, `opened` becomes True.

    Opening a FIFO's write end with O_NONBLOCK fails (ENXIO) while no reader has it open, so
    polling that tells, from any process, whether someone opened the file."""

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path)
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
            else:
                self.opened = True
                os.close(fd)  # the reader sees EOF and goes on
            time.sleep(0.002)

    def __enter__(self) -> FifoWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _external_locations(fifo: Path) -> list[str]:
    return [
        str(fifo),  # absolute
        "../" * 30 + str(fifo).lstrip("/"),  # traversal that lands on the fifo
        "../../etc/passwd",
        "/etc/passwd",
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_external_data_is_never_opened(client, target, tmp_path):
    with FifoWatch(tmp_path / "weights.bin") as watch:
        for loc in _external_locations(watch.path):
            body = external_data_model(loc).SerializeToString()
            r = client.post("/predict" + q(target), data=body, headers=OCTET)
            assert r.status_code in (200, 400), r.get_json()
            assert "root:" not in r.get_data(as_text=True)
        time.sleep(0.05)
    assert not watch.opened


# ------------------------------------------------------------------------------ the real server


@pytest.fixture(scope="module")
def server():
    env = {"LETI_MAX_UPLOAD_MB": "1", "LETI_MAX_LAYERS": "1000", "LETI_MAX_BATCH": "8"}
    with BackgroundServer(threads=8, env=env) as srv:
        yield srv
        assert srv.alive, "the server died:\n" + "\n".join(srv.log)


def test_http_every_endpoint(server, graphs, target):
    url = server.url
    with requests.Session() as s:
        assert s.get(url + "/healthz", timeout=10).json()["limits"]["max_upload_mb"] == 1
        assert s.get(url + "/socs", timeout=10).status_code == 200
        assert s.get(url + "/openapi.json", timeout=10).json()["openapi"].startswith("3.0")
        r = s.post(url + "/predict" + q(target), data=graphs["resnet50"], headers=OCTET)
        assert r.status_code == 200 and r.json()["layers"]
        r = s.post(
            url + "/predict",
            files={"model": ("s.onnx", graphs["squeezenet"])},
            data={"soc": target[0], "runtime": target[1], "layers": "false"},
        )
        assert r.status_code == 200 and "layers" not in r.json()
        r = s.post(
            url + "/predict/batch" + q(target),
            files=[("model", (f"{i}.onnx", b)) for i, b in enumerate([graphs["tiny"], b"x"])],
        )
        assert [x.get("error") for x in r.json()["results"]] == [None, "invalid_graph"]
        r = s.post(
            url + "/predict/batch",
            json={"soc": target[0], "graphs": [base64.b64encode(graphs["tiny"]).decode()]},
        )
        assert r.status_code == 200 and len(r.json()["results"]) == 1
        r = s.get(url + "/metrics", timeout=10)
        assert r.status_code == 200 and "leti_http_requests_total" in r.text
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")


def _raw_http(url: str, head: bytes, timeout: float = 10) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_http_every_error_row(server, graphs, target):
    url = server.url
    p = url + "/predict"
    symbolic = conv_model(["n", 3, "h", "w"], input_name="pixels").SerializeToString()
    s = requests.Session()

    here = p + q(target)

    def check(what, status, kind, path=None, method="POST", ctype=OCTET, **kw):
        headers = ctype if "data" in kw else {}
        r = s.request(method, path or here, timeout=20, headers=headers, **kw)
        assert r.status_code == status, (what, r.text[:300])
        assert r.headers["Content-Type"] == "application/json", what
        assert r.json()["error"] == kind, (what, r.json())
        return r.json()

    check("truncated onnx", 400, "invalid_graph", data=graphs["resnet50"][:5000])
    doc = check("unknown soc", 404, "unknown_soc", p + "?soc=nokia3310", data=graphs["tiny"])
    assert target[0] in doc["known"]
    doc = check("unknown runtime", 404, "unknown_runtime", p + q((target[0], "coreml")), data=b"x")
    assert target[1] in doc["known"]
    check("too large", 413, "payload_too_large", data=b"\0" * (3 << 19))
    plain = {"Content-Type": "text/plain"}
    check("wrong type", 415, "unsupported_media_type", ctype=plain, data=graphs["tiny"])
    doc = check("symbolic", 422, "symbolic_input_shape", data=symbolic)
    assert doc["input"] == "pixels"
    chain = relu_chain(1001).SerializeToString()
    check("too many layers", 422, "too_many_layers", data=chain)
    check("unknown route", 404, "not_found", url + "/v2/predict", method="GET")
    check("wrong method", 405, "method_not_allowed", p, method="GET")
    nine = {"soc": target[0], "graphs": ["AA=="] * 9}
    check("batch too large", 413, "batch_too_large", url + "/predict/batch", json=nine)

    with s:
        # a chunked body (no Content-Length) over the limit
        def chunks():
            for _ in range(24):
                yield b"\0" * 65536

        r = s.post(here, data=chunks(), headers=OCTET, timeout=20)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    # a Content-Length far over the limit is refused without sending (or reading) a body
    t0 = time.perf_counter()
    head = (
        f"POST /predict?soc={target[0]} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {10**12}\r\n\r\n"
    ).encode()
    reply = _raw_http(url, head)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert time.perf_counter() - t0 < 5


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_http_external_data_is_never_opened(server, target, tmp_path):
    with FifoWatch(tmp_path / "weights.bin") as watch, requests.Session() as s:
        for loc in _external_locations(watch.path):
            body = external_data_model(loc).SerializeToString()
            r = s.post(server.url + "/predict" + q(target), data=body, headers=OCTET, timeout=20)
            assert r.status_code in (200, 400), r.text
            assert "root:" not in r.text
        time.sleep(0.05)
    assert not watch.opened


def test_http_fuzz_and_worker_survives(server, graphs, target):
    bases = [graphs["tiny"], graphs["squeezenet"]]
    with requests.Session() as s:
        for body in _mutations(7, bases, 32):
            r = s.post(server.url + "/predict" + q(target), data=body, headers=OCTET, timeout=20)
            assert r.status_code in (200, 400, 422), (r.status_code, r.text[:300])
        assert s.get(server.url + "/healthz", timeout=10).status_code == 200
    assert server.alive


def test_http_16_concurrent_clients_no_errors_no_leaks(server, graphs, target):
    names = ["tiny", "squeezenet", "resnet50", "shufflenet"]
    with requests.Session() as s:
        expected = {
            n: s.post(server.url + "/predict" + q(target), data=graphs[n], headers=OCTET).json()
            for n in names
        }

    def worker(i: int) -> list[str]:
        problems = []
        with requests.Session() as s:
            for j in range(4):
                name = names[(i + j) % len(names)]
                r = s.post(
                    server.url + "/predict" + q(target),
                    data=graphs[name],
                    headers=OCTET,
                    timeout=60,
                )
                if r.status_code != 200:
                    problems.append(f"{name}: {r.status_code} {r.text[:200]}")
                elif r.json() != expected[name]:
                    problems.append(f"{name}: answer differs from the single-threaded one")
        return problems

    with ThreadPoolExecutor(16) as pool:
        problems = [p for ps in pool.map(worker, range(16)) for p in ps]
    assert problems == []


def test_serve_rejects_bad_arguments(capsys):
    assert server_main(["--threads", "0"]) == 2
    assert server_main(["--port", "70000"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert server_main(["--port", "0", "--preload", "snapdragon9999"]) == 2
    assert "unknown SoC" in capsys.readouterr().err


@pytest.mark.parametrize(
    "var, value, message",
    [
        ("LETI_MAX_UPLOAD_MB", "abc", "LETI_MAX_UPLOAD_MB must be a number, got 'abc'"),
        ("LETI_MAX_BATCH", "0", "LETI_MAX_BATCH must be positive, got '0'"),
        ("LETI_MAX_LAYERS", "-5", "LETI_MAX_LAYERS must be positive, got '-5'"),
        ("LETI_MAX_GRAPH_MB", "lots", "LETI_MAX_GRAPH_MB must be a number, got 'lots'"),
    ],
)
def test_bad_environment_fails_at_start_up(monkeypatch, capsys, var, value, message):
    from leti.core.errors import ConfigError

    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message) as info:
        create_app()
    assert (info.value.kind, info.value.variable, info.value.value) == (
        "invalid_config",
        var,
        value,
    )
    assert server_main(["--port", "0"]) == 2
    assert f"leti serve: {message}" in capsys.readouterr().err


def test_batch_survives_an_unexpected_failure_in_one_graph(graphs, target, caplog):
    """If predict_many itself breaks, the batch falls back to graph-by-graph predictions and
    only the graph that fails gets an (opaque) internal_error slot."""
    from leti.service.app import _default_loader

    class Flaky:
        def __init__(self, est):
            self.est, self.soc, self.runtime = est, est.soc, est.runtime

        def predict(self, model, input_shapes=None, **kw):  # model: the uploaded bytes
            if onnx.load_model_from_string(model).graph.name == "boom":
                raise RuntimeError("secret detail")
            return self.est.predict(model, input_shapes, **kw)

        def predict_many(self, models, input_shapes=None, **kw):
            raise RuntimeError("batch path broken")

    c = create_app({"ESTIMATOR_LOADER": lambda *a: Flaky(_default_loader(*a))}).test_client()
    boom = conv_model()
    boom.graph.name = "boom"
    b64 = [base64.b64encode(b).decode() for b in (graphs["tiny"], boom.SerializeToString())]
    with caplog.at_level("ERROR", logger="leti.service.app"):
        r = c.post("/predict/batch", json={"soc": target[0], "runtime": target[1], "graphs": b64})
    assert r.status_code == 200
    res = r.get_json()["results"]
    assert res[0]["total_ms"] > 0
    assert res[1] == {"error": "internal_error", "detail": "internal server error"}
    assert "secret detail" in caplog.text and "secret" not in r.get_data(as_text=True)
