"""Prometheus metrics for the service: counters and a latency histogram, rendered as text.

No dependency: the text exposition format is written by hand. One `Metrics` lives on each app
(`leti.service.ServiceState`), behind its own lock, so handler threads share it freely.
"""

from __future__ import annotations

import threading

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _labels(**kv: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(str(v))}"' for k, v in kv.items()) + "}"


class Metrics:
    """Counters and a latency histogram; label values come from a bounded set (route rules,
    status codes, error kinds), never from raw request paths."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.graphs: dict[str, int] = {}
        self.hist: dict[str, list[float]] = {}  # endpoint -> bucket counts + [sum, count]

    def observe(self, endpoint: str, method: str, status: int, seconds: float, error: str | None):
        with self._lock:
            key = (endpoint, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if error:
                ekey = (endpoint, error)
                self.errors[ekey] = self.errors.get(ekey, 0) + 1
            h = self.hist.setdefault(endpoint, [0.0] * (len(_BUCKETS) + 2))
            for i, edge in enumerate(_BUCKETS):
                if seconds <= edge:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def count_graphs(self, outcome: str, n: int = 1) -> None:
        with self._lock:
            self.graphs[outcome] = self.graphs.get(outcome, 0) + n

    def render(self, estimators_loaded: int) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            errors = sorted(self.errors.items())
            graphs = sorted(self.graphs.items())
            hist = {k: list(v) for k, v in sorted(self.hist.items())}
        out = [
            "# HELP leti_http_requests_total HTTP requests by endpoint, method and status.",
            "# TYPE leti_http_requests_total counter",
        ]
        for (ep, method, status), n in requests:
            out.append(
                f"leti_http_requests_total{_labels(endpoint=ep, method=method, status=status)} {n}"
            )
        out += [
            "# HELP leti_http_errors_total Error responses by endpoint and error kind.",
            "# TYPE leti_http_errors_total counter",
        ]
        for (ep, kind), n in errors:
            out.append(f"leti_http_errors_total{_labels(endpoint=ep, error=kind)} {n}")
        out += [
            "# HELP leti_graphs_total Graphs received, by outcome (predicted or an error kind).",
            "# TYPE leti_graphs_total counter",
        ]
        for outcome, n in graphs:
            out.append(f"leti_graphs_total{_labels(outcome=outcome)} {n}")
        out += [
            "# HELP leti_http_request_duration_seconds Time spent handling a request.",
            "# TYPE leti_http_request_duration_seconds histogram",
        ]
        for ep, h in hist.items():
            for i, edge in enumerate(_BUCKETS):
                out.append(
                    "leti_http_request_duration_seconds_bucket"
                    f"{_labels(endpoint=ep, le=repr(edge))} {int(h[i])}"
                )
            out.append(
                "leti_http_request_duration_seconds_bucket"
                f"{_labels(endpoint=ep, le='+Inf')} {int(h[-1])}"
            )
            out.append(f"leti_http_request_duration_seconds_sum{_labels(endpoint=ep)} {h[-2]:.6f}")
            out.append(
                f"leti_http_request_duration_seconds_count{_labels(endpoint=ep)} {int(h[-1])}"
            )
        out += [
            "# HELP leti_estimators_loaded Estimators held in memory by this process.",
            "# TYPE leti_estimators_loaded gauge",
            f"leti_estimators_loaded {estimators_loaded}",
        ]
        return "\n".join(out) + "\n"
