"""The whole loop, for real, on this machine: `leti measure --local --tool onnxruntime` over zoo
graphs -> `leti fit --soc host --runtime onnxruntime-cpu` -> `leti evaluate` (grouped CV) ->
`leti calibrate --from-measurements` -> `leti predict`.

The zoo's graphs carry no weights; the collector materialises random ones in a temporary copy.
Runs and threads are kept small (7 timed runs, 3 profiled, 1 thread) so the test takes a minute
or two on 2 busy cores. Whatever accuracy a noisy shared machine allows is printed with the
repeat-to-repeat spread of the measurements themselves (`pytest -s` shows it); the assertions
only catch a loop that is broken, not a machine that is busy.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from leti.cli import main

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install leti[dev])")

#: 24 graphs of the public zoo, small enough to time in about a second each.
GRAPHS = [
    "mobilenet_wd4", "mobilenet_wd2", "mobilenet_w3d4", "mobilenetb_wd4", "mobilenetb_wd2",
    "mobilenetv2_wd4", "mobilenetv2_w3d4", "mobilenetv2b_wd2", "mobilenetv3_small_w7d20",
    "mobilenetv3_small_wd2", "mobilenetv3_small_w1", "mobilenetv3_large_w7d20",
    "mobilenetv3_large_wd2", "fdmobilenet_wd4", "fdmobilenet_wd2", "fdmobilenet_w1",
    "regnetx002", "regnetx004", "regnety002", "regnety004", "squeezenet_v1_0",
    "squeezeresnet_v1_1", "resnet10", "preresnet10",
]  # fmt: skip


@pytest.fixture(scope="module")
def zoo(shared_dir: Path) -> Path:
    folder = shared_dir / "zoo" / "mobile-ml-benchmark"
    missing = [g for g in GRAPHS if not (folder / f"{g}.onnx").is_file()]
    if missing:
        pytest.skip(f"zoo graphs missing from {folder}: {', '.join(missing)}")
    return folder


def test_measure_fit_evaluate_calibrate_on_this_machine(zoo, tmp_path, capsys):
    meas, models = tmp_path / "measurements", tmp_path / "models"
    graphs = [str(zoo / f"{g}.onnx") for g in GRAPHS]
    argv = ["measure", "--soc", "host", "--tool", "onnxruntime", "--local", "--graphs", *graphs]
    argv += ["--runs", "7", "--warmup", "2", "--profile-runs", "3", "--threads", "1"]
    assert main([*argv, "--measurements-dir", str(meas), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["soc"] == "host" and doc["runtime"] == "onnxruntime-cpu"
    assert doc["totals"]["measured"] == len(GRAPHS) >= 20 and doc["totals"]["failed"] == 0
    assert doc["totals"]["rows"]["kernel"] > 20 * len(GRAPHS)
    # onnxruntime ran what leti's onnxruntime-cpu fusion rules say it runs
    assert all(not g["fusion_disagreements"] for g in doc["graphs"]), [
        (g["model"], g["fusion_disagreements"]) for g in doc["graphs"]
    ]
    spread = doc["repeat_spread"]
    assert spread["graphs"] == len(GRAPHS) and spread["median"] > 0

    # resumable: a second call measures nothing
    assert main([*argv, "--measurements-dir", str(meas)]) == 0
    assert f"0 measured, {len(GRAPHS)} skipped" in capsys.readouterr().out

    fit = ["fit", "--soc", "host", "--runtime", "onnxruntime-cpu", "--no-cv"]
    assert main([*fit, "--measurements-dir", str(meas), "--models-dir", str(models)]) == 0
    manifest = json.loads((models / "host" / "onnxruntime-cpu" / "manifest.json").read_text())
    assert manifest["training"]["graphs"] == len(GRAPHS)

    out = tmp_path / "accuracy.md"
    ev = ["evaluate", "--soc", "host", "--runtime", "onnxruntime-cpu", "--skip", "previous"]
    ev += ["--skip", "nb201", "--jobs", "1", "--out", str(out)]
    assert main([*ev, "--measurements-dir", str(meas), "--models-dir", str(models)]) == 0
    err = capsys.readouterr().err
    assert "host onnxruntime-cpu" in err
    report = json.loads(out.with_suffix(".json").read_text())
    cv = report["grouped-cv"]["host/onnxruntime-cpu"]["scores"]
    assert cv["leti"]["n"] == len(GRAPHS)
    assert math.isfinite(cv["leti"]["mape"]) and cv["leti"]["mape"] < 1.0
    assert cv["leti"]["kendall_tau"] > 0.3  # bigger graphs take longer, even on a busy machine

    cal = ["calibrate", "--soc", "host", "--runtime", "onnxruntime-cpu"]
    cal += ["--from-measurements", str(meas), "--models-dir", str(models)]
    assert main(cal) == 0
    said = capsys.readouterr().out
    assert f"host/onnxruntime-cpu: calibrated on {len(GRAPHS)} timings" in said
    doc_cal = json.loads((models / "host" / "onnxruntime-cpu" / "calibration.json").read_text())
    assert doc_cal["source"]["dataset"] == "leti measure" and doc_cal["k"] == len(GRAPHS)

    pred = ["predict", str(zoo / "resnet10.onnx"), "--soc", "host", "--runtime"]
    assert main([*pred, "onnxruntime-cpu", "--models-dir", str(models), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["provenance"] == "calibrated" and answer["total_ms"] > 0

    with capsys.disabled():
        print(
            f"\nhost/onnxruntime-cpu, {len(GRAPHS)} zoo graphs, grouped 5-fold CV: within 10% "
            f"{100 * cv['leti']['acc10']:.0f}%, within 20% {100 * cv['leti']['acc20']:.0f}%, "
            f"MAPE {100 * cv['leti']['mape']:.1f}%, Kendall tau {cv['leti']['kendall_tau']:.2f} "
            f"(FLOPs baseline MAPE {100 * cv['flops']['mape']:.1f}%); repeat-to-repeat spread "
            f"of the measurements: median {100 * spread['median']:.1f}%, "
            f"max {100 * spread['max']:.1f}%"
        )
