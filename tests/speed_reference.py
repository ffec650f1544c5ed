"""Recorded predictions for tests/test_speed_paths.py: the answers the pipeline gave before the
one-pass front end (issue 13), to the last bit, for a fixed set of graphs and estimators.

    python tests/speed_reference.py          # rewrite tests/data/speed_reference.json

Each answer is stored as its total, interval and kernel sum (exact floats) and the SHA-256 of
its whole `Prediction` (every breakdown line, note and shape) in a canonical JSON form; each
estimator with its model version, and the file with the fusion rules' hash, so that the test
compares only what was recorded with the same models and rules. After a refit, re-record with
this script (the equivalence tests of test_speed_paths.py keep checking the fast paths against
their slow twins meanwhile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # after PYTHONPATH: a baseline checkout can come first

import onnx  # noqa: E402

OUT = REPO / "tests" / "data" / "speed_reference.json"
SHARED = Path(os.environ.get("LETI_SHARED_DIR", REPO.parent / "shared"))
ZOO = SHARED / "zoo" / "mobile-ml-benchmark"
NCNN = SHARED / "data" / "ncnn-benchmark" / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

#: (soc, runtime): a measured model with a structural graph stage, one with free-form trees,
#: a PyTorch runtime, the transfer model, a calibrated and a borrowed cross-runtime answer.
ESTIMATORS = (
    ("snapdragon855", "tflite-gpu"),
    ("apple-a12", "pytorch-metal"),
    ("exynos9820", "pytorch-vulkan"),
    ("kirin9000", "tflite-gpu"),
    ("rk3568", "ncnn-vulkan"),
    ("kirin9000", "ncnn-vulkan"),
)


def fixture_graphs() -> Iterator[tuple[str, Callable[[], Any], dict | None]]:
    """(name, a function returning the source, input_shapes) of the graphs built in the tests."""
    from tests import plausibility_graphs as pg
    from tests import test_kernels as tk

    yield "separable_224", lambda: pg.separable_net(), None
    yield "separable_b8", lambda: pg.separable_net(batch=8), None
    yield "separable_640", lambda: pg.separable_net(size=640), None
    yield "fc_1", lambda: pg.fully_connected(1024, 1000), None
    yield "fc_197", lambda: pg.fully_connected(768, 768, rows=197), None
    yield "elementwise", lambda: pg.elementwise_only(), None
    yield "vit_block", tk._vit_block, None
    yield "lstm", lambda: tk._rnn("LSTM", seq=20, batch=1, inp=32, hidden=64, dirs=1), None
    yield "gru", lambda: tk._rnn("GRU", seq=20, batch=1, inp=32, hidden=64, dirs=2), None
    yield "conv3d", lambda: tk._conv3d(frames=16, kd=3), None
    from leti.frontend import nb201

    for arch in (
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
        "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|none~1|nor_conv_3x3~2|",
        "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    ):
        yield f"nb201:{arch}", lambda a=arch: nb201.build(a), None


def file_graphs() -> Iterator[tuple[str, Callable[[], Any], dict | None]]:
    for path in sorted(LIGHT.glob("*.onnx")):
        yield f"light:{path.name}", lambda p=path: p.read_bytes(), None
    if ZOO.is_dir():
        for path in sorted(ZOO.glob("*.onnx")):
            yield f"zoo:{path.name}", lambda p=path: p.read_bytes(), None
        mb = ZOO / "mobilenetv2_w1.onnx"
        yield "zoo:mobilenetv2_w1.onnx@160", mb.read_bytes, {"input": [1, 3, 160, 160]}
    if NCNN.is_dir():
        for path in sorted(NCNN.glob("*.param")):
            yield f"ncnn:{path.name}", lambda p=path: p.read_bytes(), None


def all_graphs() -> list[tuple[str, Callable[[], Any], dict | None]]:
    return [*fixture_graphs(), *file_graphs()]


def canonical(answer: Any) -> dict[str, Any]:
    """A prediction (or an error) as plain JSON, every float exact (repr round-trips)."""
    if isinstance(answer, BaseException):
        return {"error": type(answer).__name__, "message": str(answer)}
    doc = {f.name: getattr(answer, f.name) for f in dataclasses.fields(answer)}
    doc["layers"] = [_plain(lt) for lt in answer.layers]
    doc["unsupported"] = [_plain(u) for u in answer.unsupported]
    return json.loads(json.dumps(doc, default=list))


def _plain(record: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(record):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    return dict(record._asdict())


def summary(answer: Any) -> dict[str, Any]:
    doc = canonical(answer)
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    if "error" in doc:
        return {"error": doc["error"], "sha256": digest}
    return {
        "total_ms": doc["total_ms"],
        "interval_ms": doc["interval_ms"],
        "kernel_sum_ms": doc["kernel_sum_ms"],
        "lines": len(doc["layers"]),
        "sha256": digest,
    }


def fusion_sha256() -> str:
    from importlib import resources

    raw = resources.files("leti").joinpath("data/fusion.json").read_bytes()
    return hashlib.sha256(raw).hexdigest()


def record() -> dict[str, Any]:
    from leti.core.errors import LetiError
    from leti.predict.estimator import Estimator

    graphs = all_graphs()
    out: dict[str, Any] = {"fusion_sha256": fusion_sha256(), "estimators": {}}
    for soc, runtime in ESTIMATORS:
        try:
            est = Estimator.load(soc, runtime)
        except LetiError:
            continue
        answers = {}
        for name, source, shapes in graphs:
            try:
                answers[name] = summary(est.predict(source(), shapes))
            except LetiError as exc:
                answers[name] = summary(exc)
        out["estimators"][f"{soc}/{runtime}"] = {
            "model_version": est.model_version,
            "answers": answers,
        }
    return out


def main() -> None:
    doc = record()
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    n = sum(len(e["answers"]) for e in doc["estimators"].values())
    import leti

    sys.stderr.write(f"wrote {OUT}: {n} answers from {len(doc['estimators'])} estimators ")
    sys.stderr.write(f"(leti from {Path(leti.__file__).parent})\n")


if __name__ == "__main__":
    main()
