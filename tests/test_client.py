"""leti.client against the real server (subprocess) plus a stub server for the retry paths."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leti.client import (
    BadGraph,
    BadRequest,
    Client,
    NotFound,
    ServerError,
    TooLarge,
    Unavailable,
    UnprocessableGraph,
    graph_bytes,
)
from leti.service.server import BackgroundServer


def heavy_model(channels: int = 128, dims: list | None = None) -> onnx.ModelProto:
    """Three 3x3 convs with real float weights (~1.3 MB at 128 channels)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims or [1, 3, 56, 56])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    inits, nodes, prev, cin = [], [], "image", 3
    for i in range(3):
        w = rng.standard_normal((channels, cin, 3, 3)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, cin = f"r{i}", channels
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["out"]))
    graph = helper.make_graph(nodes, "heavy", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture(scope="module")
def target() -> tuple[str, str]:
    from leti.predict.registry import available

    pairs = [(a["soc"], a["runtime"]) for a in available()]
    if not pairs:
        pytest.fail("no trained model in models/ (or $LETI_MODELS_DIR): run `leti fit`")
    return ("snapdragon855", "tflite-gpu") if ("snapdragon855", "tflite-gpu") in pairs else pairs[0]


@pytest.fixture(scope="module")
def server(target):
    preload = ["--preload", f"{target[0]}:{target[1]}"]
    with BackgroundServer(threads=4, env={"LETI_MAX_UPLOAD_MB": "1"}, args=preload) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with Client(server.url, retries=1, backoff=0.01) as c:
        yield c


@pytest.fixture(scope="module")
def squeezenet(light_dir: Path) -> Path:
    return light_dir / "light_squeezenet.onnx"


def test_graph_bytes_strips_weights_but_keeps_shapes(tmp_path):
    model = heavy_model()
    full = model.SerializeToString()
    assert len(full) > 1_000_000
    lite = graph_bytes(model)
    assert len(lite) < 10_000
    stripped = onnx.load_model_from_string(lite)
    assert [list(t.dims) for t in stripped.graph.initializer] == [
        list(t.dims) for t in model.graph.initializer
    ]
    path = tmp_path / "heavy.onnx"
    path.write_bytes(full)
    assert graph_bytes(path) == lite == graph_bytes(full)
    assert graph_bytes(b"garbage") == b"garbage"  # the server will say what is wrong


def test_predict_path_bytes_and_proto_agree(client, squeezenet, target):
    by_path = client.predict(squeezenet, soc=target[0], runtime=target[1])
    assert by_path["soc"] == target[0] and by_path["total_ms"] > 0 and by_path["layers"]
    by_bytes = client.predict(squeezenet.read_bytes(), soc=target[0], runtime=target[1])
    proto = onnx.load(str(squeezenet), load_external_data=False)
    by_proto = client.predict(proto, soc=target[0], runtime=target[1], layers=False)
    assert by_path == by_bytes
    assert by_proto["total_ms"] == by_path["total_ms"] and "layers" not in by_proto


def test_heavy_model_uploads_graph_only(server, target):
    """1.3 MB of weights against a 1 MB server limit: fine stripped, 413 if sent whole."""
    model = heavy_model()
    with Client(server.url, retries=0) as c:
        assert c.predict(model, soc=target[0], runtime=target[1])["total_ms"] > 0
    with Client(server.url, retries=0, strip=False) as c, pytest.raises(TooLarge) as info:
        c.predict(model, soc=target[0], runtime=target[1])
    assert info.value.status == 413 and info.value.error == "payload_too_large"
    # far over the limit, waitress refuses it (plain text) before the app sees it
    huge = heavy_model(300)
    assert huge.ByteSize() > 6_000_000
    with Client(server.url, retries=0, strip=False) as c, pytest.raises(TooLarge) as info:
        c.predict(huge, soc=target[0], runtime=target[1])
    assert info.value.status == 413


def test_predict_many_chunks_and_keeps_order(server, squeezenet, light_dir, target):
    graphs = [
        squeezenet,
        b"\x00not onnx",
        light_dir / "light_resnet50.onnx",
        heavy_model(),
        light_dir / "light_shufflenet.onnx",
    ]
    requests_seen = []
    with Client(server.url, max_batch=2) as c:
        c.session.hooks["response"].append(lambda r, *a, **k: requests_seen.append(r.url))
        results = c.predict_many(graphs, soc=target[0], runtime=target[1])
        singles = [
            c.predict(g, soc=target[0], runtime=target[1], layers=False)
            for i, g in enumerate(graphs)
            if i != 1
        ]
    assert sum("/predict/batch" in u for u in requests_seen) == 3
    assert len(results) == 5
    assert results[1]["error"] == "invalid_graph"
    ok = [r for i, r in enumerate(results) if i != 1]
    assert [r["total_ms"] for r in ok] == [s["total_ms"] for s in singles]
    assert all("layers" not in r for r in ok)


def test_errors_map_to_classes(client, squeezenet, target):
    with pytest.raises(NotFound) as info:
        client.predict(squeezenet, soc="snapdragon9999")
    assert info.value.error == "unknown_soc" and target[0] in info.value.body["known"]
    with pytest.raises(NotFound):
        client.predict(squeezenet, soc=target[0], runtime="coreml")
    with pytest.raises(BadGraph) as info:
        client.predict(squeezenet.read_bytes()[:4000], soc=target[0])
    assert info.value.status == 400 and info.value.error == "invalid_graph"
    assert info.value.detail
    symbolic = heavy_model(8, dims=["n", 3, "h", "w"])
    with pytest.raises(UnprocessableGraph) as info:
        client.predict(symbolic, soc=target[0], runtime=target[1])
    assert info.value.status == 422 and info.value.body["input"] == "image"
    shape = {"image": [1, 3, 32, 32]}
    assert client.predict(symbolic, soc=target[0], runtime=target[1], input_shape=shape)
    with pytest.raises(BadRequest) as info:
        client.predict(symbolic, soc=target[0], input_shape={"image": [1, 0, 3, 3]})
    assert not isinstance(info.value, BadGraph)


def test_socs_and_health(client, target):
    socs = {s["id"]: s for s in client.socs()}
    assert target[1] in socs[target[0]]["runtimes"]
    health = client.health()
    assert health["status"] == "ok" and health["limits"]["max_upload_mb"] == 1
    assert health["estimators_loaded"] >= 1  # --preload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_errors_are_retried_then_raise():
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    with (
        Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.05) as c,
        pytest.raises(Unavailable),
    ):
        c.health()
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # two backoff sleeps


class _Stub:
    """A tiny HTTP server answering from a script of (status, body) pairs."""

    def __init__(self, script: list[tuple[int, dict]]):
        self.script = list(script)
        self.hits = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                stub.hits += 1
                status, body = stub.script.pop(0) if stub.script else (500, {})
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_503_is_retried_with_backoff():
    busy = (503, {"error": "unavailable", "detail": "busy"})
    with _Stub([busy, busy, (200, {"status": "ok"})]) as stub:
        with Client(stub.url, retries=3, backoff=0.01) as c:
            assert c.health() == {"status": "ok"}
        assert stub.hits == 3
    with _Stub([busy] * 5) as stub:
        with Client(stub.url, retries=2, backoff=0.01) as c, pytest.raises(ServerError) as info:
            c.health()
        assert stub.hits == 3 and info.value.status == 503


def test_4xx_is_not_retried():
    with _Stub([(404, {"error": "not_found", "detail": "no"})] * 3) as stub:
        with Client(stub.url, retries=3, backoff=0.01) as c, pytest.raises(NotFound):
            c.socs()
        assert stub.hits == 1
