"""The web page at GET /, driven in a real headless browser.

Playwright drives the system's Chromium (Debian's `chromium` package; Playwright's own browser
download is not needed): the test starts the real server (`leti serve` with the bundled models),
opens the page, uploads a small ONNX graph, picks two SoCs and checks what the page shows
against the JSON API's own answers. Without playwright or a chromium binary it skips, saying
which is missing ($LETI_CHROMIUM names a browser binary explicitly).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path

import onnx
import pytest
import requests
from onnx import TensorProto, helper

from leti.service.server import BackgroundServer

SOCS = ("snapdragon855", "snapdragon710")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LETI_CHROMIUM"), "chromium", "chromium-browser"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def small_graph() -> bytes:
    """image -> Conv 3x3 (8 ch) -> Relu -> MaxPool -> GlobalAveragePool."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 3, 3, 3], [0.01] * (8 * 3 * 3 * 3))
    nodes = [
        helper.make_node("Conv", ["image", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["out"], name="gap"),
    ]
    graph = helper.make_graph(nodes, "web-page-test", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return model.SerializeToString()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    exe = chromium_path()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install chromium, or set $LETI_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    with BackgroundServer(threads=4) as srv:
        yield srv
        assert srv.alive, "the server died:\n" + "\n".join(srv.log)


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True)
    p = context.new_page()
    p.requests = []  # every URL the page asks for
    p.problems = []  # console errors and uncaught exceptions
    p.on("request", lambda r: p.requests.append(r.url))
    p.on("console", lambda m: m.type == "error" and p.problems.append(m.text))
    p.on("pageerror", lambda e: p.problems.append(str(e)))
    p.goto(server.url + "/")
    p.wait_for_selector(f"#soc-{SOCS[0]}")  # the SoC list came from /socs
    yield p
    context.close()


def choose(page, path: Path, socs=SOCS, runtime: str = "tflite-gpu") -> None:
    page.set_input_files("#model", str(path))
    page.select_option("#runtime", runtime)
    for soc in socs:
        page.check(f"#soc-{soc}")
    page.click("#submit")


def api_answer(server, graph: bytes, soc: str) -> dict:
    r = requests.post(
        server.url + "/predict",
        files={"model": ("g.onnx", graph)},
        data={"soc": soc, "runtime": "tflite-gpu"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_two_socs_totals_bars_comparison_and_downloads(page, server, tmp_path):
    graph = small_graph()
    path = tmp_path / "small.onnx"
    path.write_bytes(graph)
    choose(page, path)
    for soc in SOCS:
        page.wait_for_selector(f".card[data-soc='{soc}'] .total-ms")
    assert page.text_content("#status") == "Done."

    shown, n_layers = {}, {}
    for soc in SOCS:
        expected = api_answer(server, graph, soc)
        shown[soc], n_layers[soc] = expected["total_ms"], len(expected["layers"])
        card = page.locator(f".card[data-soc='{soc}']")
        total = float(card.locator(".total-ms").text_content())
        assert total == pytest.approx(expected["total_ms"], rel=5e-3, abs=1e-4)  # as shown
        assert card.locator(".provenance").text_content() == expected["provenance"]
        interval = card.locator(".interval").text_content()
        assert interval.startswith("interval ") and interval.endswith(" ms")
        # one bar per kernel (the graph stage's overhead included), each labelled by its layer
        layers = expected["layers"]
        assert card.locator(".bars .bar").count() == len(layers) >= 3
        labels = card.locator(".bar-label").all_text_contents()
        assert [lab.split(" · ")[0] for lab in labels] == [lay["name"] for lay in layers]
        for note in expected["notes"]:
            assert note in card.locator(".notes").text_content()

    rows = page.locator("#compare tbody tr")
    assert not page.locator("#compare-wrap").is_hidden()
    assert rows.count() == 2
    assert "×1.00" in rows.all_text_contents()[0] + rows.all_text_contents()[1]

    with page.expect_download() as dl:
        page.click("#download-csv")
    table = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text("utf-8"))))
    totals = {r["soc"]: float(r["ms"]) for r in table if r["row"] == "total"}
    assert totals == pytest.approx(shown)  # the API's own numbers, unrounded
    assert len(table) == len(SOCS) + sum(n_layers.values())
    with page.expect_download() as dl:
        page.click("#download-json")
    assert dl.value.suggested_filename == "leti-small.json"

    # nothing but this server was asked for anything, and the script raised nothing
    assert page.requests and all(u.startswith(server.url) for u in page.requests)
    assert page.problems == []


def test_api_errors_are_shown_in_the_apis_words(page, server, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    detail = requests.post(
        server.url + "/predict?soc=snapdragon855",
        data=bad.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=30,
    ).json()["detail"]
    choose(page, bad, socs=SOCS[:1])
    page.wait_for_selector(".card.failed .api-error")
    assert detail in page.text_content(".card.failed .api-error")
    assert detail in page.text_content("#status")


def test_a_runtime_without_a_model_for_a_soc_says_so(page, server, tmp_path):
    path = tmp_path / "small.onnx"
    path.write_bytes(small_graph())
    # snapdragon855 has no model for pytorch-metal (an Apple runtime): the API answers 404
    choose(page, path, socs=("snapdragon855",), runtime="pytorch-metal")
    page.wait_for_selector(".card.failed")
    assert "model_not_found" in page.text_content(".card.failed .api-error")


def test_page_is_self_contained():
    from leti.service.app import create_app

    r = create_app({}).test_client().get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # no external asset
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert onnx  # the graphs above are built with onnx.helper
