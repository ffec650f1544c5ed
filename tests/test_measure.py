"""`leti measure` without a device: the tools' parsers on fixtures, the joins to leti's plan,
campaigns (resume, --force, failures recorded), and the adb and ssh paths against fake `adb`,
`ssh` and `scp` executables that record their argument lists and replay fixture output.

Every fixture under `data/device_tools/` follows `../shared/docs/device-tools.md` and says in its
first line that its numbers are invented. The TFLite fixtures time `tiny_net` below, whose
TFLite node indices are 0 conv, 1 relu, 2 conv, 3 add, 4 relu, 5 depthwise conv, 6 relu, 7 conv
(1x1), 8 mean, 9 reshape, 10 fully connected.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from leti.cli import main
from leti.core.errors import DeviceError, MeasurementError
from leti.measurements import collect
from leti.measurements.schema import KERNEL_COLUMNS, load_e2e, load_kernels
from leti.measurements.tools import (
    parse_benchmark_model,
    parse_benchncnn,
    parse_label,
    parse_performance_profiling,
    parse_speed_benchmark_torch,
)
from leti.measurements.transports import Adb, Ssh

DATA = Path(__file__).parent / "data" / "device_tools"
OLD = DATA / "performance_profiling_tflite210.txt"
NEW = DATA / "performance_profiling_new.txt"
BM_GPU = DATA / "benchmark_model_gpu.txt"
BM_CPU = DATA / "benchmark_model_cpu_fallback.txt"
NCNN = DATA / "benchncnn_user_param.txt"
TORCH = DATA / "speed_benchmark_torch.txt"
TINY_PARAM = """7767517
4 4
Input            data             0 1 data 0=32 1=32 2=3
Convolution      conv1            1 1 data c1 0=16 1=3 4=1 5=1 6=432 9=1
Pooling          gap              1 1 c1 g 0=1 4=1
InnerProduct     fc               1 1 g out 0=10 1=1 2=160
"""


def _w(name: str, dims: list[int]) -> onnx.TensorProto:
    values = np.full(int(np.prod(dims)), 0.01, np.float32).tolist()
    return helper.make_tensor(name, TensorProto.FLOAT, dims, values)


def tiny_net(path: Path) -> Path:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def graph(tmp_path) -> Path:
    return tiny_net(tmp_path / "zoo" / "tiny_net.onnx")


def _measure(*argv: str, out: Path) -> int:
    return main(["measure", *argv, "--measurements-dir", str(out)])


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------------------------
# Fixtures and parsers


def test_every_fixture_says_its_numbers_are_invented():
    files = sorted(DATA.glob("*.txt"))
    assert len(files) >= 6
    for f in files:
        first = f.read_text().splitlines()[0]
        assert first.startswith("#") and "invented" in first, f.name


def test_labels_of_both_formats():
    assert parse_label("convolution_2d_16_linked_:_add_17_linked_:_relu_18") == (
        ("convolution_2d", 16),
        ("add", 17),
        ("relu", 18),
    )
    assert parse_label("convolution_winograd_4x4_6x6_3") == (("convolution_winograd_4x4_6x6", 3),)
    assert parse_label("convolution_2d 0 -> prelu 1") == (("convolution_2d", 0), ("prelu", 1))
    assert parse_label("dw_conv2d->conv1x1 -> add 4 -> prelu 5") == (
        ("dw_conv2d->conv1x1", None),
        ("add", 4),
        ("prelu", 5),
    )
    assert parse_label("depthwise_convolution 2 -> relu 3") == (
        ("depthwise_convolution", 2),
        ("relu", 3),
    )
    assert parse_label("pooling_2d 11") == (("pooling_2d", 11),)
    assert parse_label("concat 171") == (("concat", 171),)


def test_performance_profiling_both_formats():
    old = parse_performance_profiling(OLD.read_text())
    assert [k.label for k in old.kernels][:2] == [
        "convolution_2d_0_linked_:_relu_1",
        "convolution_2d_2_linked_:_add_3_linked_:_relu_4",
    ]
    assert [k.ms for k in old.kernels][:5] == [0.081024, 0.214016, 0.04608, 0.035072, 0.0192]
    assert old.e2e_ms == pytest.approx(0.62)  # the median of the "Total time" lines
    assert old.std_ms == pytest.approx(0.02)
    assert old.extra["ideal_total_ms"] == pytest.approx(0.4115)
    assert old.extra["precision"] == "CalculationsPrecision::F16"
    new = parse_performance_profiling(NEW.read_text())
    assert len(new.kernels) == 8
    assert new.kernels[2].parts == (("depthwise_convolution", 5),)
    assert new.kernels[6].ms == pytest.approx(0.004096)  # a line without Gflops
    assert new.e2e_ms == pytest.approx(0.645)
    with pytest.raises(MeasurementError, match="announced 9 kernels but listed 8"):
        parse_performance_profiling(NEW.read_text().replace("timing(8", "timing(9"))
    with pytest.raises(MeasurementError, match="Per kernel timing"):
        parse_performance_profiling("Segmentation fault\n")


def test_old_fixture_lists_seven_kernels():
    assert len(parse_performance_profiling(OLD.read_text()).kernels) == 7


def test_benchmark_model_end_to_end_and_cpu_fallback():
    ok = parse_benchmark_model(BM_GPU.read_text())
    assert ok.e2e_ms == pytest.approx(0.63142) and ok.std_ms == pytest.approx(0.021)
    assert ok.rejected is None
    bad = parse_benchmark_model(BM_CPU.read_text())
    assert bad.rejected.startswith("CPU fallback: 9 operations will run on the GPU")
    assert "RESIZE_NEAREST_NEIGHBOR" in bad.rejected
    with pytest.raises(MeasurementError, match="Inference timings"):
        parse_benchmark_model("nothing useful here\n")


def test_benchncnn_gpu_banner_and_cpu_run():
    run = parse_benchncnn(NCNN.read_text())
    assert run.e2e_ms == pytest.approx(13.48) and run.device == "Mali-G52"
    assert run.rejected is None and run.extra["settings"]["loop_count"] == "50"
    cpu = parse_benchncnn(NCNN.read_text().replace("gpu_device = 0", "gpu_device = -1"))
    assert "ran on the CPU" in cpu.rejected
    no_banner = "\n".join(ln for ln in NCNN.read_text().splitlines() if "queue" not in ln)
    assert "no Vulkan GPU banner" in parse_benchncnn(no_banner).rejected


def test_speed_benchmark_torch():
    run = parse_speed_benchmark_torch(TORCH.read_text())
    assert run.e2e_ms == pytest.approx(6.18907)
    assert run.repeats == pytest.approx((6.12, 6.25, 6.18, 6.31, 6.085))
    assert run.std_ms == pytest.approx(np.std([6.12, 6.25, 6.18, 6.31, 6.085], ddof=1))


# --------------------------------------------------------------------------------------------
# --from-log: one graph, rows joined to the plan


def test_performance_profiling_old_labels_join_through_node_indices(graph, tmp_path, capsys):
    out = tmp_path / "m"
    rc = _measure(
        "--soc", "Snapdragon 855", "--tool", "performance_profiling", "--graph", str(graph),
        "--from-log", str(OLD), "--json", out=out,
    )  # fmt: skip
    assert rc == 0
    doc = _json(capsys)
    assert doc["rows"] == {"kernel": 6, "e2e": 1}
    assert doc["e2e_ms"] == pytest.approx(0.62) and doc["status"] == "measured"
    assert doc["rejected"] == [{"reason": "unmodelled_kernel", "rows": 1}]  # reshape 9
    assert doc["fusion_disagreements"] == []
    k = load_kernels(out, soc="snapdragon855", runtime="tflite-gpu")
    assert list(k.columns) == list(KERNEL_COLUMNS)
    assert k["source_row"].tolist() == [0, 2, 5, 7, 8, 10]  # TFLite node indices
    assert k["kind"].tolist() == ["conv", "conv", "dwconv", "conv", "pool_global", "fc"]
    assert k["fused"].tolist() == ["relu", "add+relu", "relu", "", "", ""]
    assert k["op"].tolist()[2:] == ["DEPTHWISE_CONV_2D", "CONV_2D", "MEAN", "FULLY_CONNECTED"]
    dw = k.iloc[2]
    assert (dw.h_in, dw.c_in, dw.h_out, dw.c_out, dw.kernel, dw.stride, dw.groups) == (
        32, 16, 16, 16, 3, 2, 16,
    )  # fmt: skip
    assert set(k["source"]) == {f"measure:performance_profiling:log:{OLD.name}:clocks-unpinned"}
    e = load_e2e(out)
    assert e["latency_ms"].tolist() == [pytest.approx(0.62)]
    assert e["graph"].tolist() == [str(graph.resolve())]


def test_new_labels_report_a_fusion_disagreement(graph, tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["--soc", "sd855", "--tool", "performance_profiling", "--graph", str(graph)]
    assert _measure(*argv, "--from-log", str(NEW), "--json", out=out) == 0
    doc = _json(capsys)
    assert doc["fusion_disagreements"] == [
        {
            "kernel": "depthwise_convolution 5",
            "graph_kernel": "dw3",
            "device_linked": "",
            "leti_linked": "relu",
        }
    ]
    assert {"reason": "unmodelled_kernel", "rows": 2} in doc["rejected"]  # relu 6, reshape 9
    k = load_kernels(out)
    assert k.loc[k["kind"] == "dwconv", "fused"].tolist() == [""]  # what the device ran
    assert len(k) == 6


def test_a_family_count_mismatch_is_rejected_whole(graph, tmp_path, capsys):
    text = OLD.read_text().replace("  convolution_2d_7 - 0.035072ms\n", "")
    log = tmp_path / "odd.log"
    log.write_text(text.replace("timing(7", "timing(6"))
    argv = ["--soc", "sd855", "--tool", "performance_profiling", "--graph", str(graph)]
    assert _measure(*argv, "--from-log", str(log), "--json", out=tmp_path / "m") == 0
    doc = _json(capsys)
    assert {"reason": "count_mismatch", "rows": 2} in doc["rejected"]
    assert "conv: 2 GPU kernels but 3 in leti's plan" in doc["notes"]
    assert load_kernels(tmp_path / "m")["kind"].tolist() == ["dwconv", "pool_global", "fc"]


def test_benchmark_model_cpu_fallback_is_rejected_and_writes_nothing(graph, tmp_path, capsys):
    argv = ["--soc", "sd855", "--tool", "benchmark_model", "--graph", str(graph), "--json"]
    assert _measure(*argv, "--from-log", str(BM_CPU), out=tmp_path / "m") == 2
    doc = _json(capsys)
    assert doc["status"] == "rejected" and doc["rows"] == {"kernel": 0, "e2e": 0}
    assert doc["rejected"][0]["reason"] == "run_rejected"
    assert "remaining 2 operations will run on the CPU" in doc["reason"]
    assert load_e2e(tmp_path / "m").empty
    record = json.loads((tmp_path / "m" / "measure-snapdragon855-tflite-gpu-benchmark_model"
                         / collect.CAMPAIGN_FILE).read_text())  # fmt: skip
    entry = record["graphs"]["snapdragon855/tflite-gpu/tiny_net"]
    assert entry["status"] == "rejected" and "CPU" in entry["reason"]
    assert _measure(*argv, "--from-log", str(BM_GPU), out=tmp_path / "m") == 0
    assert _json(capsys)["rows"] == {"kernel": 0, "e2e": 1}


def test_benchncnn_records_the_gpu(tmp_path, capsys):
    param = tmp_path / "tiny_net.param"
    param.write_text(TINY_PARAM)
    argv = ["--soc", "rk3568", "--tool", "benchncnn", "--graph", str(param), "--json"]
    assert _measure(*argv, "--from-log", str(NCNN), out=tmp_path / "m") == 0
    doc = _json(capsys)
    assert doc["runtime"] == "ncnn-vulkan" and doc["device"] == "Mali-G52"
    e = load_e2e(tmp_path / "m", soc="rk3568", runtime="ncnn-vulkan")
    assert e["latency_ms"].tolist() == [13.48]
    assert e["source"].tolist()[0].endswith(":gpu-Mali-G52")


def test_speed_benchmark_torch_rows(graph, tmp_path, capsys):
    argv = ["--soc", "exynos9820", "--tool", "speed_benchmark_torch", "--graph", str(graph)]
    assert _measure(*argv, "--from-log", str(TORCH), "--json", out=tmp_path / "m") == 0
    doc = _json(capsys)
    assert doc["runtime"] == "pytorch-vulkan" and doc["spread"] == pytest.approx(
        doc["std_ms"] / doc["e2e_ms"]
    )
    assert load_e2e(tmp_path / "m")["latency_ms"].tolist() == [pytest.approx(6.18907)]


def test_bad_arguments_fail_before_anything_is_written(graph, tmp_path, capsys):
    out = tmp_path / "m"
    base = ["--tool", "benchmark_model", "--graph", str(graph), "--from-log", str(BM_GPU)]
    assert _measure("--soc", "not-a-soc", *base, out=out) == 2
    assert "unknown SoC" in capsys.readouterr().err
    assert _measure("--soc", "sd855", "--runtime", "ncnn-vulkan", *base, out=out) == 2
    assert "benchmark_model measures tflite-gpu" in capsys.readouterr().err
    argv = ["--soc", "host", "--tool", "onnxruntime", "--graph", str(graph), "--adb"]
    assert _measure(*argv, out=out) == 2
    assert "onnxruntime runs only local" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one transport only
        _measure("--soc", "sd855", *base, "--local", out=out)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Campaigns over adb and ssh, against fake executables

FAKE = """#!/bin/sh
# leti test double: records its argument list (one line, NUL-free) and replays fixtures
printf '%s\\n' "$0 $*" >> "{calls}"
n=$(cat "{counter}" 2>/dev/null || echo 0)
case "$*" in
  *get-state*) echo device; exit 0;;
  *get-serialno*) echo FAKE123; exit 0;;
  *" push "*|*"-q "*) exit 0;;
  *mkdir*) exit 0;;
esac
n=$((n + 1)); echo $n > "{counter}"
if [ "$n" = "{fail_at}" ]; then
  echo "{fail_message}" >&2; exit {fail_rc}
fi
cat "{replay}" >&2
"""


def _fake(tmp_path: Path, monkeypatch, names, replay: Path, fail_at: int, msg: str, rc: int):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    calls = tmp_path / "calls.txt"
    text = FAKE.format(
        calls=calls,
        counter=tmp_path / "counter",
        fail_at=fail_at,
        fail_message=msg,
        fail_rc=rc,
        replay=replay,
    )
    for name in names:
        exe = bindir / name
        exe.write_text(text)
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return calls


def _zoo(tmp_path: Path, names: list[str], suffix: str) -> Path:
    zoo = tmp_path / "campaign"
    for name in names:
        tiny_net(zoo / f"{name}.onnx")
        (zoo / f"{name}{suffix}").write_bytes(b"\0" * 64)
    return zoo


def test_adb_campaign_device_lost_midway_is_recorded_and_the_campaign_goes_on(
    tmp_path, monkeypatch, capsys
):
    names = ["a_net", "b net; rm -rf x", "c_net"]
    zoo = _zoo(tmp_path, names, ".tflite")
    calls = _fake(tmp_path, monkeypatch, ["adb"], OLD, 2, "error: device 'FAKE123' not found", 1)
    out = tmp_path / "m"
    argv = ["--soc", "sd855", "--tool", "performance_profiling", "--graphs", str(zoo)]
    assert _measure(*argv, "--adb", "--json", out=out) == 1
    doc = _json(capsys)
    status = {g["model"]: g["status"] for g in doc["graphs"]}
    assert status == {"a_net": "measured", "b net; rm -rf x": "failed", "c_net": "measured"}
    failed = next(g for g in doc["graphs"] if g["status"] == "failed")
    assert "disappeared" in failed["reason"] and "FAKE123" in failed["reason"]
    assert doc["totals"]["rows"] == {"kernel": 12, "e2e": 2}
    lines = calls.read_text().splitlines()
    assert lines[0].endswith("adb get-state") and lines[1].endswith("adb get-serialno")
    assert lines[2].endswith("adb -s FAKE123 shell mkdir -p /data/local/tmp/leti")
    pushes = [ln for ln in lines if " push " in ln]
    runs = [ln for ln in lines if " shell /data/local/tmp/performance_profiling" in ln]
    assert len(pushes) == 3 and len(runs) == 3
    # the remote file names are leti's own: the graph's odd name never reaches the device shell
    assert all("rm -rf" not in ln.split(" push ")[1].split()[-1] for ln in pushes)
    assert "--model_path /data/local/tmp/leti/b_net__rm_-rf_x-" in runs[1]
    record = json.loads((out / "measure-snapdragon855-tflite-gpu-performance_profiling"
                         / collect.CAMPAIGN_FILE).read_text())  # fmt: skip
    assert record["graphs"]["snapdragon855/tflite-gpu/b net; rm -rf x"]["status"] == "failed"
    assert sorted(load_e2e(out)["model"]) == ["a_net", "c_net"]
    assert (
        len(
            list(
                (out / "measure-snapdragon855-tflite-gpu-performance_profiling" / "logs").glob(
                    "*.log"
                )
            )
        )
        == 2
    )  # fmt: skip  (none for the lost run)

    # resumed: the measured graphs are skipped, the failed one is tried again
    assert _measure(*argv, "--adb", "FAKE123", "--json", out=out) == 0
    doc = _json(capsys)
    status = {g["model"]: g["status"] for g in doc["graphs"]}
    assert status == {"a_net": "skipped", "b net; rm -rf x": "measured", "c_net": "skipped"}
    assert sorted(load_e2e(out)["model"]) == ["a_net", "b net; rm -rf x", "c_net"]
    # --force measures them all again; the rows are replaced, not duplicated
    assert _measure(*argv, "--adb", "FAKE123", "--force", out=out) == 0
    assert "3 measured, 0 skipped" in capsys.readouterr().out
    assert len(load_e2e(out)) == 3 and len(load_kernels(out)) == 18


def test_ssh_campaign_with_a_board_that_drops_off(tmp_path, monkeypatch, capsys):
    zoo = _zoo(tmp_path, ["a_net", "b_net", "c_net"], ".ptl")
    calls = _fake(
        tmp_path, monkeypatch, ["ssh", "scp"], TORCH, 1,
        "ssh: connect to host rk: Connection refused", 255,
    )  # fmt: skip
    out = tmp_path / "m"
    argv = ["--soc", "exynos9820", "--tool", "speed_benchmark_torch", "--graphs"]
    rc = _measure(*argv, f"{zoo}/*.onnx", "--ssh", "me@rk3568-board", "--json", out=out)
    assert rc == 1
    doc = _json(capsys)
    assert [g["status"] for g in doc["graphs"]] == ["failed", "measured", "measured"]
    assert "me@rk3568-board unreachable" in doc["graphs"][0]["reason"]
    lines = calls.read_text().splitlines()
    scp = [ln for ln in lines if "/scp " in ln]
    assert len(scp) == 3 and scp[0].split()[-1].startswith("me@rk3568-board:/tmp/leti/a_net-")
    runs = [ln for ln in lines if "speed_benchmark_torch" in ln]
    assert "--input_dims=1,3,32,32" in runs[0] and "--vulkan=true" in runs[0]
    assert runs[0].split()[1:6] == [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=20",
        "me@rk3568-board",
    ]


def test_hosts_and_serials_that_look_like_options_are_refused():
    with pytest.raises(MeasurementError, match="bad ssh host"):
        Ssh("-oProxyCommand=evil")
    with pytest.raises(MeasurementError, match="bad adb serial"):
        Adb("x; reboot")


def test_no_adb_on_path_is_a_clear_error(graph, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    argv = ["--soc", "sd855", "--tool", "benchmark_model", "--graph", str(graph), "--adb"]
    assert _measure(*argv, out=tmp_path / "m") == 2
    assert "adb not found on PATH" in capsys.readouterr().err
    with pytest.raises(DeviceError):
        Adb().connect()


def test_from_log_folder_campaign_with_progress_bar(tmp_path, capsys):
    zoo = _zoo(tmp_path, ["a_net", "b_net"], ".tflite")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a_net.log").write_text(BM_GPU.read_text())
    argv = ["--soc", "sd855", "--tool", "benchmark_model", "--graphs", str(zoo)]
    assert _measure(*argv, "--from-log", str(logs), "--progress", out=tmp_path / "m") == 1
    out, err = capsys.readouterr()
    assert "measuring (benchmark_model)" in err  # tqdm's bar, on stderr
    assert "b_net: FAILED: no saved log for b_net" in out
    assert "1 measured, 0 skipped (already measured), 0 rejected, 1 failed" in out


def test_end_to_end_rows_feed_calibrate_from_measurements(tmp_path, light_dir, capsys):
    """benchmark_model rows of four graphs (saved logs, invented numbers) become the timings of
    `leti calibrate --from-measurements` on a synthetic transfer model."""
    from tests.test_transfer import build_synthetic_transfer

    models = build_synthetic_transfer(tmp_path / "models")
    names = ("squeezenet", "shufflenet", "bvlc_alexnet", "inception_v1")
    zoo, logs = tmp_path / "zoo", tmp_path / "logs"
    zoo.mkdir()
    logs.mkdir()
    for i, name in enumerate(names):
        (zoo / f"{name}.onnx").write_bytes((light_dir / f"light_{name}.onnx").read_bytes())
        avg = f"Inference (avg): {1000 * (3 + 2 * i):.2f}"
        (logs / f"{name}.log").write_text(
            BM_GPU.read_text().replace("Inference (avg): 631.42", avg)
        )
    meas = tmp_path / "m"
    argv = ["--soc", "sd888", "--tool", "benchmark_model", "--graphs", str(zoo), "--from-log"]
    assert _measure(*argv, str(logs), out=meas) == 0
    capsys.readouterr()
    cal = ["calibrate", "--soc", "snapdragon888", "--runtime", "tflite-gpu"]
    rc = main([*cal, "--from-measurements", str(meas), "--models-dir", str(models)])
    assert rc == 0
    assert "snapdragon888/tflite-gpu: calibrated on 4 timings" in capsys.readouterr().out
    doc = json.loads((models / "snapdragon888" / "tflite-gpu" / "calibration.json").read_text())
    assert doc["source"]["dataset"] == "leti measure" and doc["k"] == 4
    assert sorted(r["measured_ms"] for r in doc["residuals"]) == [3.0, 5.0, 7.0, 9.0]
    empty = ["--from-measurements", str(tmp_path / "nothing"), "--models-dir", str(models)]
    assert main(["calibrate", "--soc", "rk3568", "--runtime", "tflite-gpu", *empty]) == 2
    assert "no end-to-end measurements of rk3568/tflite-gpu" in capsys.readouterr().err
