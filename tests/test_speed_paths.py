"""The fast paths of issue 13 give the numbers the slow ones did, to the last bit.

- the answers recorded from the pipeline before the one-pass front end (tests/speed_reference.py:
  zoo, light and fixture graphs, ncnn params, six estimators) for `predict` and `predict_many`;
- leti's own shape rules against ONNX's inference on every ONNX node test case they cover;
- `KernelTable` features against the pandas frame's, the boosters loaded through libxgboost
  (both the library call and the few-row numpy path) against `xgboost.Booster`;
- the answer cache, and a request path that imports neither scikit-learn nor pandas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

import leti.frontend.graph as G
from leti.core.errors import GraphError, LetiError
from leti.frontend.features import KernelTable, kernel_features, kernels_frame
from leti.frontend.fusion import plan
from leti.frontend.graph import parse_graph
from leti.models.boosters import Booster, load_booster
from leti.predict.cache import AnswerCache
from leti.predict.estimator import Estimator
from tests import speed_reference as ref
from tests.conftest import REPO, SHARED

MODELS = REPO / "models"


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(ref.OUT.read_text("utf-8"))


@pytest.fixture(scope="module")
def graphs() -> list:
    return ref.all_graphs()


@pytest.fixture(scope="module")
def est() -> Estimator:
    return Estimator.load("snapdragon855")


@pytest.mark.parametrize("spec", [f"{s}/{r}" for s, r in ref.ESTIMATORS])
def test_answers_are_the_recorded_ones(
    spec: str, recorded: dict, graphs: list, monkeypatch
) -> None:
    """predict and predict_many answer what the pipeline answered before issue 13 (total,
    interval, kernel sum and the SHA-256 of every field, breakdown lines included)."""
    monkeypatch.setenv("LETI_CACHE_MB", "0")
    entry = recorded["estimators"].get(spec)
    if entry is None:
        pytest.skip(f"{spec}: not recorded")
    if recorded["fusion_sha256"] != ref.fusion_sha256():
        pytest.skip("fusion rules changed since the recording: python tests/speed_reference.py")
    soc, runtime = spec.split("/")
    try:
        est = Estimator.load(soc, runtime)
    except LetiError as exc:
        pytest.skip(f"{spec}: {exc}")
    if est.model_version != entry["model_version"]:
        pytest.skip(f"{spec} was refit since the recording: python tests/speed_reference.py")
    answers = entry["answers"]
    names = [n for n, _, _ in graphs if n in answers]
    if not (SHARED / "zoo").is_dir():
        pytest.skip(f"the zoo graphs of the recording are not at {SHARED} (set LETI_SHARED_DIR)")
    assert len(names) >= 30, "the recording misses most graphs"
    bad = []
    plain = []
    for name, source, shapes in graphs:
        if name not in answers:
            continue
        try:
            got = ref.summary(est.predict(source(), shapes))
        except LetiError as exc:
            got = ref.summary(exc)
        if got != answers[name]:
            bad.append(f"predict {name}: {answers[name]} != {got}")
        if shapes is None:
            plain.append((name, source()))
    for (name, _), answer in zip(plain, est.predict_many([s for _, s in plain]), strict=True):
        if ref.summary(answer) != answers[name]:
            bad.append(f"predict_many {name}")
    assert not bad, "\n".join(bad[:10])


def _node_cases() -> list[tuple[str, bytes]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        with np.errstate(all="ignore"):
            cases = collect_testcases(None)
    return [(c.name, c.model.SerializeToString()) for c in cases]


def _parse_or_error(data: bytes):
    try:
        return parse_graph(data)
    except LetiError as exc:
        return f"{type(exc).__name__}: {exc}"


def test_own_shape_rules_match_onnx_inference(monkeypatch) -> None:
    """Every ONNX node test case (and light model) of ops leti shapes itself parses to the same
    records either way: the own rules first, or ONNX's inference first."""
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    cases = _node_cases() + [(p.name, p.read_bytes()) for p in sorted(light.glob("*.onnx"))]
    checked = 0
    for name, data in cases:
        ops = {n.op_type for n in onnx.load_model_from_string(data).graph.node}
        if not ops <= G.OWN_SHAPE_OPS:
            continue
        own = _parse_or_error(data)
        monkeypatch.setattr(G, "OWN_SHAPE_OPS", frozenset())
        onnx_first = _parse_or_error(data)
        monkeypatch.undo()
        assert own == onnx_first, name
        checked += 1
    assert checked > 500


@pytest.mark.shared
def test_own_shape_rules_match_onnx_inference_on_the_zoo(shared_dir: Path, monkeypatch) -> None:
    paths = sorted((shared_dir / "zoo").glob("*/*.onnx"))
    own = {p: parse_graph(p) for p in paths}
    monkeypatch.setattr(G, "OWN_SHAPE_OPS", frozenset())
    for path in paths:
        assert parse_graph(path) == own[path], path.name


def test_kernel_table_gives_the_frames_features(light_models: list[Path]) -> None:
    kernels = [k for p in light_models for k in plan(parse_graph(p), "tflite-gpu").kernels]
    kernels += [
        k
        for p in light_models[:3]
        for runtime in ("pytorch-vulkan", "ncnn-vulkan")
        for k in plan(parse_graph(p), runtime).kernels
    ]
    table = KernelTable.of(kernels)
    frame = kernels_frame(kernels)
    assert len(table) == len(frame) == len(kernels)
    assert np.array_equal(kernel_features(table), kernel_features(frame))
    est = Estimator.load("snapdragon855")
    assert np.array_equal(est.kernels.predict(table), est.kernels.predict(frame))
    assert np.array_equal(est.kernels.extrapolation(table), est.kernels.extrapolation(frame))


def _booster_files() -> list[tuple[Path, bytes]]:
    kernels = [*MODELS.glob("*/*/kernel_*.ubj"), *MODELS.glob("transfer/*/kernel_*.json")]
    out = [(path, path.read_bytes()) for path in sorted(kernels)]
    for path in sorted(MODELS.glob("*/*/corrector.json")):
        doc = json.loads(path.read_text("utf-8"))
        if doc.get("type") == "xgboost":
            out.append((path, json.dumps(doc["booster"]).encode()))
    return out


def test_boosters_predict_what_xgboost_predicts() -> None:
    """Every shipped booster, loaded through libxgboost, gives xgboost.Booster's float32
    predictions bit for bit: many rows (the library call) and one to three rows at a time (the
    numpy trees), values over many scales, missing ones included. It pickles as its bytes."""
    xgb = pytest.importorskip("xgboost")
    files = _booster_files()
    assert files
    rng = np.random.default_rng(0)
    for path, raw in files:
        ours = load_booster(raw)
        assert isinstance(ours, Booster), path
        theirs = xgb.Booster()
        theirs.load_model(bytearray(raw))
        theirs.set_param({"nthread": 1})
        n = ours.num_features()
        x = rng.normal(size=(600, n)) * rng.choice([1e-3, 1.0, 10.0, 1e4], size=(600, n))
        x[::13, rng.integers(n)] = np.nan
        want = theirs.inplace_predict(x)
        assert np.array_equal(ours.inplace_predict(x), want, equal_nan=True), path
        few = np.concatenate([ours.inplace_predict(x[i : i + 3]) for i in range(0, 600, 3)])
        assert np.array_equal(few, want, equal_nan=True), path


def test_the_answer_cache(est: Estimator, light_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("LETI_CACHE_MB", "64")
    fresh = replace(est)  # each estimator, a replaced one too, has a cache of its own
    assert fresh.answers is not est.answers and len(fresh.answers) == 0
    data = (light_dir / "light_squeezenet.onnx").read_bytes()
    first = fresh.predict(data)
    assert fresh.predict(data) is first and fresh.answers.hits == 1
    path = light_dir / "light_squeezenet.onnx"
    assert fresh.predict(path) is first  # the key is the bytes, not where they came from
    other = fresh.predict(data, {"data_0": [1, 3, 160, 160]})
    assert other is not first and other.total_ms < first.total_ms
    assert fresh.predict_many([data, b"junk", data])[0] is first
    with pytest.raises(GraphError):
        fresh.predict(b"junk")  # errors are never cached
    assert len(fresh.answers) == 2

    small = AnswerCache(max_bytes=3 * 100_000)
    for i in range(10):
        small.put(i, first)
    assert len(small) * (2048 + 700 * len(first.layers)) <= 300_000 and 9 in small._entries
    assert 0 not in small._entries and small.size_bytes <= small.max_bytes

    monkeypatch.setenv("LETI_CACHE_MB", "0")
    off = replace(est)
    assert off.predict(data) is not off.predict(data) and len(off.answers) == 0


def test_predict_many_answers_a_repeated_graph_once(est: Estimator, light_dir: Path) -> None:
    data = (light_dir / "light_vgg19.onnx").read_bytes()
    fresh = replace(est)
    a, b = fresh.predict_many([data, data])
    assert a is b or a == b


def test_the_request_path_imports_neither_sklearn_nor_pandas(light_dir: Path) -> None:
    """`import leti` and a first answer load no scikit-learn, pandas, scipy or xgboost Python
    package (xgboost's package imports scikit-learn where it is installed: ~0.8 s of cold
    start). The time to the first answer is benchmarks/speed.md's."""
    graph = str(light_dir / "light_resnet50.onnx")
    code = (
        "import sys, leti\n"
        f"p = leti.Estimator.load('snapdragon855').predict({graph!r})\n"
        "assert p.total_ms > 0\n"
        "print(sorted({'sklearn', 'pandas', 'scipy', 'xgboost'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared")
def test_recording_covers_the_zoo(recorded: dict) -> None:
    answers = recorded["estimators"]["snapdragon855/tflite-gpu"]["answers"]
    assert sum(name.startswith("zoo:") for name in answers) >= 80
