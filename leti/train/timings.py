"""The timings CSV that `leti calibrate` reads: `graph,latency_ms` rows, validated one by one.

Bad rows (missing file, non-numeric or non-positive latency, duplicate graph) are kept with a
reason, never silently dropped; `leti.train.calibrate` adds the graphs it cannot parse.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from leti.core.errors import CalibrationError
from leti.core.store import sha256_file

#: A timings file holds a handful of rows; anything this large is a mistake.
MAX_CSV_BYTES = 1 << 20


@dataclass(frozen=True)
class TimingRow:
    line: int
    graph: str  # as written in the CSV
    path: Path  # resolved
    latency_ms: float
    sha256: str  # of the graph file
    #: Input shapes the graph was timed at (e.g. a benchmark's input size); None: its own.
    input_shapes: dict[str, list[int]] | None = None


@dataclass(frozen=True)
class RejectedRow:
    line: int
    graph: str
    reason: str  # missing_file | non_numeric_latency | non_positive_latency | duplicate | ...
    detail: str = ""

    def to_dict(self) -> dict:
        return {
            "line": self.line,
            "graph": self.graph,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass
class Timings:
    source: str
    file_sha256: str
    rows: list[TimingRow] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.rows)

    def report(self) -> str:
        lines = [f"{self.source}: {self.k} usable timing(s), {len(self.rejected)} rejected"]
        lines += [
            f"  rejected line {r.line} ({r.graph or '-'}): {r.reason}"
            + (f" ({r.detail})" if r.detail else "")
            for r in self.rejected
        ]
        return "\n".join(lines)


def _resolve_graph(text: str, base: Path) -> Path | None:
    """Relative paths are read against the CSV's folder first, then the working directory."""
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [base / p, p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return None


def read_timings(csv_path: str | Path) -> Timings:
    """Parse and validate `graph,latency_ms` rows; every unusable row is kept with its reason."""
    path = Path(csv_path)
    if not path.is_file():
        raise CalibrationError(f"timings file not found: {path}")
    raw = path.read_bytes()
    if len(raw) > MAX_CSV_BYTES:
        raise CalibrationError(f"{path}: over {MAX_CSV_BYTES} bytes; expected a few rows")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not UTF-8 text") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "graph" not in header or "latency_ms" not in header:
        raise CalibrationError(
            f"{path}: expected the columns graph,latency_ms; found {','.join(header) or 'none'}"
        )
    reader.fieldnames = header
    out = Timings(source=str(path), file_sha256=hashlib.sha256(raw).hexdigest())
    seen_paths: dict[Path, int] = {}
    seen_hashes: dict[str, int] = {}
    for i, rec in enumerate(reader, start=2):  # line 1 is the header
        graph = (rec.get("graph") or "").strip()
        cell = (rec.get("latency_ms") or "").strip()

        def reject(reason: str, detail: str = "", line: int = i, graph: str = graph) -> None:
            out.rejected.append(RejectedRow(line, graph, reason, detail))

        if not graph:
            reject("missing_graph", "empty graph cell")
            continue
        try:
            latency = float(cell)
        except ValueError:
            reject("non_numeric_latency", repr(cell[:40]))
            continue
        if not math.isfinite(latency):
            reject("non_numeric_latency", repr(cell[:40]))
            continue
        if latency <= 0:
            reject("non_positive_latency", repr(cell[:40]))
            continue
        resolved = _resolve_graph(graph, path.parent)
        if resolved is None:
            reject("missing_file", "no such file")
            continue
        if resolved in seen_paths:
            reject("duplicate", f"same file as line {seen_paths[resolved]}")
            continue
        digest = sha256_file(resolved)
        if digest in seen_hashes:
            reject("duplicate", f"same graph content as line {seen_hashes[digest]}")
            continue
        seen_paths[resolved] = i
        seen_hashes[digest] = i
        out.rows.append(TimingRow(i, graph, resolved, latency, digest))
    return out


def timings_sha256(rows: Sequence[TimingRow]) -> str:
    """Hash of what the fit used: each graph's content hash and its latency, in file order."""
    canon = "".join(f"{r.sha256}\t{r.latency_ms!r}\n" for r in rows)
    return hashlib.sha256(canon.encode()).hexdigest()
