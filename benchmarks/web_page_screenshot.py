"""Regenerate docs/web_page.png: the web page at GET / after estimating SqueezeNet (the graph
the onnx wheel ships) on two SoCs, in headless Chromium driven by Playwright.

    .venv/bin/python benchmarks/web_page_screenshot.py [--out docs/web_page.png]

Needs `pip install playwright` and a chromium binary (Debian: `apt-get install chromium`;
or $LETI_CHROMIUM). Starts its own server with the bundled models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import onnx

from leti.service.server import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent
GRAPH = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_squeezenet.onnx"
SOCS = ("snapdragon855", "snapdragon710")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "web_page.png")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("LETI_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    with BackgroundServer(threads=4) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(srv.url + "/")
        page.wait_for_selector(f"#soc-{SOCS[0]}")
        page.set_input_files("#model", str(GRAPH))
        for soc in SOCS:
            page.check(f"#soc-{soc}")
        page.click("#submit")
        for soc in SOCS:
            page.wait_for_selector(f".card[data-soc='{soc}'] .total-ms")
        page.select_option("#order", "time")  # where the time goes: slowest kernels first
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
