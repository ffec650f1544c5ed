"""The production server: the Flask app behind waitress (one process) or gunicorn (several).

waitress is pure Python, runs on Linux, macOS and Windows, is multi-threaded and needs no C build.
One process means the models are loaded once and shared by all worker threads (estimators are
immutable; the cache that holds them is locked). Run it as `leti serve` or
`python -m leti serve --port 8000` (flags and printing live in `leti.cli`).

A prediction is CPU-bound Python, so one process serves about one core's worth of requests.
`leti serve --workers N` (Linux) runs gunicorn instead: a master process builds the app and
loads the `--preload`ed models, then forks N workers that share the listening socket, each with
`--threads` threads (`serve_workers`). Forking after the models are loaded shares their memory
and is safe: leti loads and prices its xgboost boosters without starting libgomp's thread pool
(`leti.models.boosters`), the state that hangs a forked child. Each worker keeps its own answer
cache and loads what was not preloaded on first use. The master restarts a worker that dies.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("leti.service.server")

# waitress refuses (413, without reading it) a body whose Content-Length passes this margin over
# the app's own limit; bodies within it get the app's JSON 413.
_WAITRESS_SLACK = 2 << 20


def _app_with_models(
    models_dir: str | None, preload: Sequence[str] | None, config: dict | None
) -> Any:
    """The Flask app with the `preload`ed estimators loaded (before any worker is forked)."""
    from leti.service.app import create_app

    cfg = dict(config or {})
    if models_dir:
        cfg["MODELS_DIR"] = models_dir
    app = create_app(cfg)
    st = app.extensions["leti"]
    for spec in preload or ():
        est = st.preload(spec)
        log.info("preloaded %s/%s (%s)", est.soc, est.runtime, est.model_version)
    return app


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

    app = _app_with_models(models_dir, preload, config)
    st = app.extensions["leti"]
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


def serve_workers(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 2,
    threads: int = 8,
    models_dir: str | None = None,
    preload: Sequence[str] | None = None,
    config: dict | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve with gunicorn until stopped (SIGTERM or SIGINT: the workers finish their requests):
    the app and the preloaded models are made here, in the master, before `workers` processes
    are forked (gthread workers of `threads` threads each). `on_ready(url)` runs once the
    socket listens (`port=0` picks a free one; the url has the real port). Linux and other
    Unixes only (gunicorn forks)."""
    from gunicorn.app.base import BaseApplication

    app = _app_with_models(models_dir, preload, config)
    gc.collect()
    gc.freeze()  # what the master made stays out of the workers' collections: pages stay shared

    def when_ready(arbiter: Any) -> None:
        bound = arbiter.LISTENERS[0].sock.getsockname()
        if on_ready is not None:
            on_ready(_url(host, bound[1]))

    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 10,
        # A kept-alive connection stays with the worker that accepted it: 16 keep-alive clients
        # served 185-386 req/s on 2 workers by how their connections happened to fall (all on
        # one worker: one worker's rate), 282-376 when each request comes on a new connection,
        # taken by whichever worker is free (ab -k, mobilenetv2, 2 cores). The price is a TCP
        # connection per request; a load balancer in front keeps its clients' connections alive.
        "keepalive": 0,
        "backlog": max(2048, workers * threads * 8),
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "leti",
        "when_ready": when_ready,
        # X-Forwarded-* from anyone but the load balancer in front is not trusted
        "forwarded_allow_ips": "127.0.0.1",
    }

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Gunicorn().run()


def _url(host: str, port: int) -> str:
    url_host = f"[{host}]" if ":" in host else host
    return f"http://{url_host}:{port}"


def prefork_available() -> bool:
    """Whether `serve_workers` can run here (gunicorn installed, a forking system)."""
    if not hasattr(os, "fork") or sys.platform == "win32":
        return False
    import importlib.util

    return importlib.util.find_spec("gunicorn") is not None


def server_url(server, host: str) -> str:
    """`http://host:port` of a server from `build_server`: the real port, even with `port=0`."""
    return _url(host, server.effective_port)


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
    `workers` > 1 runs `leti serve --workers N` (gunicorn).
    """

    _READY = re.compile(r"leti: serving on (http://\S+)")

    def __init__(
        self,
        threads: int = 8,
        models_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        workers: int = 1,
    ) -> None:
        self.workers = workers
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
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
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
