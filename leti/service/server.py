"""The production server: one process, the Flask app behind waitress.

waitress is pure Python, runs on Linux, macOS and Windows, is multi-threaded and needs no C build.
One process means the models are loaded once and shared by all worker threads (estimators are
immutable; the cache that holds them is locked). Run it as `leti serve` or
`python -m leti serve --port 8000` (flags and printing live in `leti.cli`).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

log = logging.getLogger("leti.service.server")

# waitress refuses (413, without reading it) a body whose Content-Length passes this margin over
# the app's own limit; bodies within it get the app's JSON 413.
_WAITRESS_SLACK = 2 << 20


def build_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 8,
    models_dir: str | None = None,
    preload: Sequence[str] | None = None,
    config: dict | None = None,
):
    """Create the app and a bound (not yet running) waitress server; `port=0` picks a free one."""
    from waitress import create_server

    from leti.service.app import create_app

    cfg = dict(config or {})
    if models_dir:
        cfg["MODELS_DIR"] = models_dir
    app = create_app(cfg)
    st = app.extensions["leti"]
    for spec in preload or ():
        est = st.preload(spec)
        log.info("preloaded %s/%s (%s)", est.soc, est.runtime, est.model_version)
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="leti",
        max_request_body_size=st.max_bytes + _WAITRESS_SLACK,
        channel_timeout=60,
        connection_limit=max(100, threads * 8),
        clear_untrusted_proxy_headers=True,
    )
    return server, app


def server_url(server, host: str) -> str:
    """`http://host:port` of a server from `build_server`: the real port, even with `port=0`."""
    url_host = f"[{host}]" if ":" in host else host
    return f"http://{url_host}:{server.effective_port}"


def run_server(server) -> None:
    """Run a server from `build_server` until interrupted (Ctrl-C or SIGTERM), then close it."""
    if threading.current_thread() is threading.main_thread():
        # `docker stop` sends SIGTERM, and as PID 1 Python would otherwise ignore it.
        signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int = 8,
    models_dir: str | None = None,
    preload: list[str] | None = None,
) -> None:
    """Serve until interrupted (the library form of `leti serve`; it logs, never prints)."""
    server, app = build_server(host, port, threads, models_dir, preload)
    log.info(
        "serving on %s (%d threads, models from %s)",
        server_url(server, host),
        threads,
        app.extensions["leti"].models_dir,
    )
    run_server(server)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


class BackgroundServer:
    """`python -m leti serve` in a subprocess on loopback, for tests and benchmarks.

        with BackgroundServer(env={"LETI_MAX_UPLOAD_MB": "1"}) as srv:
            requests.get(srv.url + "/healthz")

    Binds port 0 (a free port, no race) and reads the real one from the start-up line. Its
    stderr is drained into `log` (the last lines), so a chatty server never blocks on a pipe.
    """

    _READY = re.compile(r"leti: serving on (http://\S+)")

    def __init__(
        self,
        threads: int = 8,
        models_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        startup_timeout: float = 60.0,
    ) -> None:
        self.threads = threads
        self.models_dir = models_dir
        self.env = dict(env or {})
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.url = ""
        self.log: collections.deque[str] = collections.deque(maxlen=400)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> BackgroundServer:
        cmd = [sys.executable, "-m", "leti", "serve", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--threads", str(self.threads), *self.args]
        if self.models_dir:
            cmd += ["--models-dir", str(self.models_dir)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.url:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:  # EOF or timed out
                self.stop()
                raise RuntimeError("leti server did not start:\n" + "\n".join(self.log))
            m = self._READY.search(line)
            if m:
                self.url = m.group(1)
        return self

    def _drain(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))
            if not self.url:
                lines.put(line)
        lines.put(None)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
