"""GET /: a small web page over the JSON API, served by the same app.

The page is one self-contained HTML document: the template (`web/page.html`) is rendered here
with the stylesheet and the script (`web/page.css`, `web/page.js`) inlined, so nothing is
fetched from anywhere but this server, and the page needs no route besides `/`. The script
calls the API the way any client does (`GET /socs`, then one `POST /predict` per chosen SoC)
and draws the answers; the API itself is unchanged. A Content-Security-Policy allows exactly
the inlined script and style (by hash) and requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from flask import Blueprint, Response, render_template_string

from leti.core.version import VERSION

bp = Blueprint("page", __name__)


@dataclass(frozen=True)
class _Assets:
    template: str
    css: str
    js: str
    csp: str


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def _assets() -> _Assets:
    web = resources.files("leti.service").joinpath("web")
    css = web.joinpath("page.css").read_text("utf-8")
    js = web.joinpath("page.js").read_text("utf-8")
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(js)}",
            f"style-src {_sha256(css)}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return _Assets(web.joinpath("page.html").read_text("utf-8"), css, js, csp)


@bp.get("/")
def index() -> Response:
    a = _assets()
    html = render_template_string(a.template, version=VERSION, css=a.css, js=a.js)
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = a.csp
    resp.headers["Cache-Control"] = "no-cache"
    return resp
