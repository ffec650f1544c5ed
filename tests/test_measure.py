"""`leti measure` without a phone: parsing, joining to the plan, and merging into the tables.

`data/benchmark_model_gpu_sample.txt` is SYNTHETIC: its layout follows TFLite benchmark_model's
op-profiling output (Run Order tables, a "Delegate internal" section with the GPU kernels), but
every number in it is invented. Its GPU kernel names follow the order in which the tflite-gpu
plan lists the kernels of `tiny_net` below. The device path is exercised with a fake `adb`.
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper

from leti.cli import add_measure_arguments, cmd_measure, main
from leti.core.errors import MeasurementError, UnknownSocError
from leti.measurements import collect as measure
from leti.measurements.collect import (
    NO_KERNELS,
    DeviceError,
    gpu_family,
    kernel_family,
    parse_benchmark_log,
)
from leti.measurements.schema import KERNEL_COLUMNS, load_e2e, load_kernels

SAMPLE = Path(__file__).parent / "data" / "benchmark_model_gpu_sample.txt"
GPU_NAMES = [
    "convolution_2d_0_linked_:_relu_1",
    "convolution_2d_2_linked_:_add_3_linked_:_relu_4",
    "depthwise_convolution_5_linked_:_relu_6",
    "convolution_2d_7",
    "mean_8",
    "fully_connected_9",
]


def _w(name: str, dims: list[int]) -> onnx.TensorProto:
    values = np.full(int(np.prod(dims)), 0.01, np.float32).tolist()
    return helper.make_tensor(name, TensorProto.FLOAT, dims, values)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """conv+relu, conv+add+relu (residual), dwconv+relu, 1x1 conv, global pool, flatten, Gemm."""
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", **conv),
        helper.make_node("Add", ["c2", "r1"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node(
            "Conv", ["r2", "w3"], ["c3"], name="dw3", strides=[2, 2], group=16, **conv
        ),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Conv", ["r3", "w4"], ["c4"], name="pw4", kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c4"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_w("w1", [16, 3, 3, 3]), _w("w2", [16, 16, 3, 3]), _w("w3", [16, 1, 3, 3])]
    inits += [_w("w4", [32, 16, 1, 1]), _w("wf", [10, 32]), _w("bf", [10])]
    g = helper.make_graph(
        nodes,
        "tiny_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    path = tmp_path_factory.mktemp("graph") / "tiny_net.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _measure(graph: Path, out: Path, *extra: str, log: Path | None = SAMPLE) -> int:
    argv = ["measure", "--soc", "Snapdragon 855", "--graph", str(graph)]
    argv += ["--measurements-dir", str(out), "--source-name", "my-phone", *extra]
    return main(argv + (["--from-log", str(log)] if log else []))


def measure_args(graph: Path, out: Path, **kw):
    p = argparse.ArgumentParser()
    add_measure_arguments(p)
    args = p.parse_args(["--soc", kw.pop("soc", "snapdragon855"), "--graph", str(graph)])
    args.measurements_dir, args.source_name = out, "my-phone"
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def _files(out: Path) -> dict[str, bytes]:
    folder = out / "my-phone"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sample_log_parses_into_e2e_and_gpu_kernels():
    log = parse_benchmark_log(SAMPLE.read_text())
    assert log.e2e_ms == pytest.approx(0.63142)
    assert log.std_ms == pytest.approx(0.021)  # the regular runs' count= line, not the warmup's
    assert [k.name for k in log.kernels] == GPU_NAMES
    assert [k.avg_ms for k in log.kernels] == [0.081, 0.214, 0.046, 0.035, 0.019, 0.012]
    assert log.other_ops == ["TfLiteGpuDelegateV2"]


def test_from_log_writes_kernel_and_e2e_rows(graph, tmp_path, capsys):
    assert _measure(graph, tmp_path) == 0
    assert "6 written" in capsys.readouterr().out
    k = load_kernels(tmp_path, soc="snapdragon855", runtime="tflite-gpu")
    assert list(k.columns) == list(KERNEL_COLUMNS)
    assert k["gpu_kernel"].tolist() == GPU_NAMES
    assert k["kind"].tolist() == ["conv", "conv", "dwconv", "conv", "pool_global", "fc"]
    assert k["op"].tolist()[2:] == ["DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    assert k["fused"].tolist() == ["relu", "add+relu", "relu", "", "", ""]
    assert k["source_row"].tolist() == list(range(6))
    assert k["latency_ms"].sum() == pytest.approx(0.407)
    dw = k.iloc[2]
    assert (dw.h_in, dw.c_in, dw.h_out, dw.c_out, dw.kernel, dw.stride, dw.groups, dw.pad) == (
        32, 16, 16, 16, 3, 2, 16, 2,
    )  # fmt: skip
    fc = k.iloc[5]
    assert (fc.h_in, fc.c_in, fc.c_out) == (1, 32, 10)
    assert set(k["model"]) == {"tiny_net"}
    assert set(k["source"]) == {"measure:benchmark_model_gpu_sample.txt"}
    e = load_e2e(tmp_path)
    assert len(e) == 1
    assert e.loc[0, "latency_ms"] == pytest.approx(0.63142)
    assert e.loc[0, "std_ms"] == pytest.approx(0.021)
    assert e.loc[0, "graph"] == str(graph.resolve())
    assert (tmp_path / "my-phone" / "import.json").is_file()


def test_rerun_is_byte_identical_and_existing_rows_are_kept(graph, tmp_path, capsys):
    folder = tmp_path / "my-phone"
    folder.mkdir()
    other = {c: "" for c in KERNEL_COLUMNS}
    other.update(soc="snapdragon855", runtime="tflite-gpu", model="older", source_row="0")
    other.update(op="CONV_2D", kind="conv", h_in="8", w_in="8", c_in="4", h_out="8", w_out="8")
    other.update(c_out="4", kernel="1", stride="1", groups="1", latency_ms="0.5", source="x")
    clash = {**other, "model": "tiny_net", "latency_ms": "9.75"}  # same key as row 0 below
    pd.DataFrame([other, clash]).to_csv(folder / "kernels.csv", index=False)

    assert _measure(graph, tmp_path) == 0
    first = _files(tmp_path)
    assert "5 written, 1 already present" in capsys.readouterr().out
    assert _measure(graph, tmp_path) == 0
    assert _files(tmp_path) == first
    assert "0 written, 6 already present" in capsys.readouterr().out

    k = load_kernels(tmp_path)
    assert len(k) == 7
    assert k.loc[k["model"] == "older", "latency_ms"].tolist() == [0.5]
    row0 = k[(k["model"] == "tiny_net") & (k["source_row"] == 0)]
    assert row0["latency_ms"].tolist() == [9.75]  # the row already there wins


def test_log_without_gpu_kernel_names_gives_e2e_only(graph, tmp_path, capsys):
    text = SAMPLE.read_text()
    log = tmp_path / "no_kernels.txt"
    log.write_text(text[: text.index("Delegate internal:")])
    assert parse_benchmark_log(log.read_text()).kernels == []
    assert _measure(graph, tmp_path / "m", log=log) == 0
    out = capsys.readouterr().out
    assert NO_KERNELS in out
    assert load_kernels(tmp_path / "m").empty
    assert load_e2e(tmp_path / "m")["latency_ms"].tolist() == [pytest.approx(0.63142)]


def test_count_mismatch_and_unknown_kernels_are_rejected_with_reasons(graph, tmp_path, capsys):
    lines = SAMPLE.read_text().splitlines(keepends=True)
    lines = [ln for ln in lines if "convolution_2d_7" not in ln]  # one conv missing in the log
    at = next(i for i, ln in enumerate(lines) if "Delegate/fully_connected_9:5" in ln)
    lines.insert(at, lines[at].replace("fully_connected_9", "resize_10"))
    log = tmp_path / "odd.txt"
    log.write_text("".join(lines))
    assert _measure(graph, tmp_path / "m", log=log) == 0
    out = capsys.readouterr().out
    assert "rejected count_mismatch: 2" in out  # both remaining convs: pairing is ambiguous
    assert "rejected unmodelled_kernel: 1" in out
    k = load_kernels(tmp_path / "m")
    assert k["kind"].tolist() == ["dwconv", "pool_global", "fc"]


def test_family_names():
    assert gpu_family("convolution_winograd_4x4_6x6_3_linked_:_relu_4") == "conv"
    assert gpu_family("convolution_2d_grouped_46_linked_:_relu_47") == "conv"
    assert gpu_family("depthwise_conv_plus_1x1_conv_2") == "merged"
    assert gpu_family("pooling_2d_9") == gpu_family("mean_51") == "pool"
    assert gpu_family("concat_199") == "concat"
    assert gpu_family("add_7") is None
    one_by_one = SimpleNamespace(kind="conv", kernel=1, h_in=1, w_in=1)
    assert kernel_family(one_by_one) == "fc"  # the delegate runs it as fully_connected
    assert kernel_family(SimpleNamespace(kind="gconv", kernel=3, h_in=7, w_in=7)) == "conv"


def test_tabs_lost_in_copying_still_parse():
    log = parse_benchmark_log(SAMPLE.read_text().expandtabs(4))
    assert [k.name for k in log.kernels] == GPU_NAMES


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nothing useful here\n", "no 'Inference timings"),
        ("Failed to apply GPU delegate.\n", "Failed to apply GPU delegate"),
    ],
)
def test_bad_logs_fail_clearly(text, match):
    with pytest.raises(MeasurementError, match=match):
        parse_benchmark_log(text)


def test_errors_leave_existing_files_alone(graph, tmp_path, capsys):
    assert _measure(graph, tmp_path) == 0
    before = _files(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("Segmentation fault\n")
    assert _measure(graph, tmp_path, log=bad) == 2
    assert "unparseable benchmark log" in capsys.readouterr().err
    assert _files(tmp_path) == before
    with pytest.raises(UnknownSocError):
        cmd_measure(measure_args(graph, tmp_path, soc="not-a-soc"))


def test_missing_adb_is_a_clear_error(graph, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(measure.shutil, "which", lambda name: None)
    with pytest.raises(DeviceError, match="adb not found"):
        cmd_measure(measure_args(graph, tmp_path))
    assert _measure(graph, tmp_path, log=None) == 2
    assert "adb not found on PATH" in capsys.readouterr().err
    assert not (tmp_path / "my-phone").exists()


FAKE_ADB = """#!/bin/sh
echo "$@" >> "{calls}"
while [ "$1" = "-s" ]; do shift 2; done
case "$1" in
  get-state) [ -n "{state}" ] && echo "{state}" && exit 0
             echo "error: device not found" >&2; exit 1;;
  get-serialno) echo FAKE123;;
  push) exit 0;;
  shell) [ "{fail}" = 1 ] && echo "ERROR: Could not open '/x.tflite'" >&2 && exit 1
         cat "{log}" >&2;;
esac
"""


def _fake_adb(tmp_path: Path, monkeypatch, state: str = "device", fail: int = 0) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.txt"
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.format(calls=calls, state=state, fail=fail, log=SAMPLE))
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_device_flow_with_a_fake_adb(graph, tmp_path, monkeypatch, capsys):
    calls = _fake_adb(tmp_path, monkeypatch)
    tflite = tmp_path / "tiny net.tflite"
    tflite.write_bytes(b"\0" * 1234)
    assert _measure(graph, tmp_path, "--tflite", str(tflite), "--runs", "7", log=None) == 0
    lines = calls.read_text().splitlines()
    assert lines[:2] == ["get-state", "get-serialno"]
    assert lines[2].startswith("push ") and lines[2].endswith("/data/local/tmp/tiny net.tflite")
    assert lines[3].startswith("shell /data/local/tmp/benchmark_model '--graph=/data/local/tmp/")
    assert "--num_runs=7" in lines[3] and "--enable_op_profiling=true" in lines[3]
    assert len(load_kernels(tmp_path)) == 6
    e = load_e2e(tmp_path)
    assert e["params_bytes"].tolist() == [1234]
    assert e["source"].tolist() == ["measure:FAKE123"]
    assert len(list((tmp_path / "my-phone" / "logs").glob("tiny_net-*.log"))) == 1


def test_device_not_found_and_benchmark_failure(graph, tmp_path, monkeypatch):
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"x")
    _fake_adb(tmp_path, monkeypatch, state="")
    with pytest.raises(DeviceError, match="device 'ABC' not found.*device not found"):
        cmd_measure(measure_args(graph, tmp_path, tflite=tflite, serial="ABC"))
    _fake_adb(tmp_path, monkeypatch, fail=1)
    with pytest.raises(DeviceError, match="benchmark_model failed .exit 1.*Could not open"):
        cmd_measure(measure_args(graph, tmp_path, tflite=tflite))
    assert not (tmp_path / "my-phone" / "kernels.csv").exists()
