"""The measurement importer, schema validation and readers.

Most tests build small SYNTHETIC copies of the four mobile-ml-benchmark files in tmp_path (same
headers and cell formats as the real ones, made-up numbers), so that every rejection reason can
be provoked on purpose. The `shared` tests at the end import the real data when it is present.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from leti.core.errors import MeasurementError
from leti.core.records import KERNEL_KINDS
from leti.measurements.importers import import_mobile_ml_benchmark
from leti.measurements.schema import (
    E2E_COLUMNS,
    KERNEL_COLUMNS,
    data_manifest,
    load_e2e,
    load_kernels,
    parse_fused,
    validate_kernel_rows,
)

# --- synthetic sources -----------------------------------------------------------------------

CONV = (
    "{'Input_shape': '56', 'Input_channel': 16, 'Output_shape': '56', 'Stride': '1', "
    "'Kernel': '3', 'Filter': '32', 'Group': '1', 'FLOPS': '28901376'}"
)
DWCONV = (
    "{'Input_shape': '113', 'Input_channel': 32, 'Output_shape': '56', 'Stride': '2', "
    "'Kernel': '3', 'Filter': '1', 'Group': '1', 'FLOPS': '1806336'}"
)
FC = (
    "{'Input_shape': '-', 'Input_channel': 1024, 'Output_shape': '-', 'Stride': '-', "
    "'Kernel': '-', 'Filter': '1000', 'Group': '-', 'FLOPS': '2048000'}"
)
MEAN = (
    "{'Input_shape': '7', 'Input_channel': 1024, 'Output_shape': '1024', 'Stride': '-', "
    "'Kernel': '1', 'Filter': '-', 'Group': '-', 'FLOPS': '50176'}"
)
GLOBAL_AVG = (
    "{'Input_shape': '7', 'Input_channel': 512, 'Output_shape': '1', 'Stride': '1', "
    "'Kernel': '7', 'Filter': '-', 'Group': '-', 'FLOPS': '25088'}"
)
TORCH_DW = (
    "{'input_channel': 32, 'input_shape': 112, 'output_channel': 32, 'output_shape': 56, "
    "'kernel_size': 3, 'stride': 2, 'padding': 1, 'input_size': 401408, 'output_size': 100352, "
    "'flops': 903168, 'filter_size': 288}"
)
TORCH_CONV = (
    "{'input_channel': 3, 'input_shape': 224, 'output_channel': 32, 'output_shape': 112, "
    "'kernel_size': 3, 'stride': 2, 'padding': 1, 'groups': 1, 'input_size': 150528, "
    "'output_size': 401408, 'flops': 10838016, 'filter_size': 864}"
)
TORCH_ADD = "{'input_channel': 32, 'input_shape': 56, 'flops': 100352}"
TORCH_POOL = "{'input_channel': 1024, 'input_shape': 7, 'input_size': 50176}"

TFLITE_PHONES = ("pixel4", "s10")
TORCH_PHONES = ("pixel4", "iphonexs")


def _write(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _ops_header(phones: tuple[str, ...]) -> list[str]:
    return ["model", "operation", "feature"] + [
        col for p in phones for col in (f"{p}|gpu|float", f"{p}|gpu|kernel")
    ]


def _e2e_header(phones: tuple[str, ...], flops: str) -> list[str]:
    cols = ["model", flops, "size"]
    for p in phones:  # CPU columns are present in the real files and must be ignored
        cols += [f"{p}|1large|float|mean", f"{p}|1large|float|std"]
        cols += [f"{p}|gpu|float|mean", f"{p}|gpu|float|std"]
    return cols


def _e2e_row(model: str, gpu_us: list[str]) -> list[object]:
    row: list[object] = [model, 1_000_000, 4_000_000]
    for us in gpu_us:
        row += [99999, 10, us, "12.5"]
    return row


GOOD_TFLITE_OPS = [
    [
        "netA",
        "CONV_2D",
        CONV,
        "100.5",
        "convolution_2d_0_linked_:_relu_1",
        "120",
        "convolution_2d_0",
    ],
    ["netA", "DEPTHWISE_CONV_2D", DWCONV, "30", "depthwise_convolution_2", "40", "dw_2"],
    ["netA", "MEAN", MEAN, "8", "mean_3", "9", "mean_3"],
    ["netA", "FULLY_CONNECTED", FC, "50", "fully_connected_4", "60", "fully_connected_4"],
    ["netB", "AVERAGE_POOL_2D", GLOBAL_AVG, "7", "pooling_2d_0", "7.5", "pooling_2d_0"],
]
GOOD_TORCH_OPS = [
    ["netA", "vulkan_prepack::run_conv2d_context", TORCH_CONV, "200", "vulkan.conv2d", "20", "m"],
    ["netA", "vulkan_prepack::run_conv2d_context", TORCH_DW, "90", "vulkan.conv2d_dw", "9", "m"],
    ["netA", "aten::add", TORCH_ADD, "15", "vulkan.add", "", "metal.elementwise_mpscnn"],
    ["netA", "aten::avg_pool2d", TORCH_POOL, "12", "vulkan.avg_pool2d", "3", "m"],
]


def make_source(
    root: Path,
    tflite_ops: list[list[object]] | None = None,
    torch_ops: list[list[object]] | None = None,
    tflite_phones: tuple[str, ...] = TFLITE_PHONES,
    with_zoo: bool = True,
) -> Path:
    """A synthetic `data/mobile-ml-benchmark` folder (and a zoo beside it, like ../shared)."""
    src = root / "data" / "mobile-ml-benchmark"
    src.mkdir(parents=True)
    (src / "LICENSE").write_text("MIT License\n\nsynthetic test data\n")
    _write(
        src / "tflite_cnn_ops_gpu.csv", _ops_header(tflite_phones), tflite_ops or GOOD_TFLITE_OPS
    )
    _write(
        src / "tflite_cnn_e2e.csv",
        _e2e_header(tflite_phones, "FLOPS"),
        [_e2e_row("netA", ["2000"] * len(tflite_phones)), _e2e_row("netB", ["900"] * 2)],
    )
    _write(src / "torch_cnn_ops_gpu.csv", _ops_header(TORCH_PHONES), torch_ops or GOOD_TORCH_OPS)
    _write(
        src / "torch_cnn_e2e.csv",
        _e2e_header(TORCH_PHONES, "flops"),
        [_e2e_row("netA", ["3000", ""])],  # iphonexs did not run netA end to end
    )
    if with_zoo:
        zoo = root / "zoo" / "mobile-ml-benchmark"
        zoo.mkdir(parents=True)
        (zoo / "netA.onnx").write_bytes(b"synthetic, never parsed here")
    return src


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source(tmp_path / "shared")


# --- clean import ----------------------------------------------------------------------------


def test_clean_import_maps_every_row(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "mobile-ml-benchmark"
    report = import_mobile_ml_benchmark(source, out)
    assert report.written == {"kernels": 5 * 2 + 4 * 2 - 1, "e2e": 4 + 1}
    assert report.rejected == {"no_measurement": 2}  # the two empty synthetic cells
    kernels = pd.read_csv(out / "kernels.csv", keep_default_na=False)
    assert tuple(kernels.columns) == KERNEL_COLUMNS
    assert tuple(pd.read_csv(out / "e2e.csv").columns) == E2E_COLUMNS

    k = load_kernels(out.parent)
    conv = k[(k.soc == "snapdragon855") & (k.runtime == "tflite-gpu") & (k.source_row == 0)]
    row = conv.iloc[0]
    assert (row.kind, row.c_in, row.c_out, row.kernel, row.pad, row.groups) == (
        "conv",
        16,
        32,
        3,
        2,
        1,
    )
    assert row.latency_ms == pytest.approx(0.1005)  # microseconds in, milliseconds out
    assert row.fused == "relu" and row.gpu_kernel == "convolution_2d_0_linked_:_relu_1"
    assert row.source == "mobile-ml-benchmark/tflite_cnn_ops_gpu.csv"

    tfl = k[k.runtime == "tflite-gpu"]
    kinds = dict(zip(tfl.source_row, tfl.kind, strict=True))
    assert kinds == {0: "conv", 1: "dwconv", 2: "pool_global", 3: "fc", 4: "pool_global"}
    fc = k[(k.kind == "fc") & (k.runtime == "tflite-gpu")].iloc[0]
    assert (fc.h_in, fc.w_in, fc.c_in, fc.c_out, fc.h_out) == (1, 1, 1024, 1000, 1)
    mean = k[(k.op == "MEAN")].iloc[0]
    assert (mean.h_out, mean.c_out, mean.kernel) == (1, 1024, 7)

    # torch: the iphonexs columns ran Metal, the rest Vulkan
    assert set(k[k.soc == "apple-a12"].runtime) == {"pytorch-metal"}
    assert set(k[k.soc == "snapdragon855"].runtime) == {"tflite-gpu", "pytorch-vulkan"}
    vk = k[k.runtime == "pytorch-vulkan"].set_index("source_row")
    assert list(vk.kind) == ["conv", "dwconv", "add", "pool_global"]
    assert vk.loc[0, "pad"] == 2 and vk.loc[1, "groups"] == 32  # groups from filter_size


def test_depthwise_c_out_is_input_channels(source: Path, tmp_path: Path) -> None:
    import_mobile_ml_benchmark(source, tmp_path / "m" / "x")
    k = load_kernels(tmp_path / "m")
    dw = k[k.op == "DEPTHWISE_CONV_2D"]
    assert len(dw) == 2
    assert (dw.c_out == 32).all() and (dw.groups == 32).all() and (dw.c_in == 32).all()
    assert (dw.pad == 0).all()  # 113 -> 56 with k3 s2 is VALID: the padding was a separate op


def test_e2e_rows_and_graph_paths(source: Path, tmp_path: Path) -> None:
    import_mobile_ml_benchmark(source, tmp_path / "m" / "x")
    e = load_e2e(tmp_path / "m")
    a = e[(e.model == "netA") & (e.runtime == "tflite-gpu")]
    assert len(a) == 2 and (a.latency_ms == 2.0).all() and (a.std_ms == 0.0125).all()
    assert (a.flops == 1_000_000).all() and (a.params_bytes == 4_000_000).all()
    expected = str((source.parent.parent / "zoo" / "mobile-ml-benchmark" / "netA.onnx").resolve())
    assert set(a.graph) == {expected}
    assert set(e[e.model == "netB"].graph) == {""}  # no graph in the zoo: left empty
    assert set(e[e.runtime.str.startswith("pytorch")].soc) == {"snapdragon855"}


def test_no_zoo_leaves_graph_empty_and_warns(tmp_path: Path) -> None:
    src = make_source(tmp_path / "shared", with_zoo=False)
    report = import_mobile_ml_benchmark(src, tmp_path / "m" / "x")
    assert set(load_e2e(tmp_path / "m").graph) == {""}
    assert any("zoo" in w for w in report.warnings)


# --- rejections ------------------------------------------------------------------------------


def test_each_bad_row_is_rejected_with_its_reason(tmp_path: Path) -> None:
    bad = [
        # synthetic rows, each broken in one way (the good rows come after them)
        ["netC", "CONV_2D", "{'Input_shape': '56', 'Input_chan", "10", "k", "10", "k"],
        ["netC", "CONV_2D", CONV, "-5", "k", "abc", "k"],  # negative / non-numeric latency
        ["netC", "CONV_2D", CONV, "", "", "nan", "k"],  # empty cell / NaN
        ["netC", "SOFTMAX", CONV, "10", "k", "10", "k"],  # unknown op
        [
            "netC",
            "CONV_2D",
            CONV.replace("'Input_channel': 16", "'Input_channel': 0"),
            "1",
            "",
            "1",
            "",
        ],
        ["netC", "CONV_2D", CONV.replace("'Kernel': '3'", "'Kernel': 'x'"), "1", "", "1", ""],
        ["netC", "CONV_2D", "__import__('os').system('touch pwned')", "1", "", "1", ""],
    ]
    src = make_source(tmp_path / "shared", tflite_ops=bad + GOOD_TFLITE_OPS)
    report = import_mobile_ml_benchmark(src, tmp_path / "m" / "x")
    tfl = next(f for f in report.files if f.name == "tflite_cnn_ops_gpu.csv")
    assert tfl.rejected == {
        "unparseable_feature": 4,
        "non_positive_latency": 1,
        "non_numeric_latency": 1,
        "no_measurement": 1,
        "nan_latency": 1,
        "unknown_op": 2,
        "bad_shape": 2,
        "bad_feature": 2,
    }
    assert tfl.written == len(GOOD_TFLITE_OPS) * 2  # nothing else was lost
    assert tfl.source_rows == len(bad) + len(GOOD_TFLITE_OPS)
    assert not Path("pwned").exists()  # the feature column is parsed, never evaluated
    k = load_kernels(tmp_path / "m", runtime="tflite-gpu")
    assert set(k.model) == {"netA", "netB"}
    assert sorted(set(k.source_row)) == list(range(len(bad), len(bad) + len(GOOD_TFLITE_OPS)))
    assert all(report.examples[r] for r in tfl.rejected)
    text = report.summary()
    assert "unparseable_feature" in text and "snapdragon855/tflite-gpu" in text


def test_unknown_phone_column_is_counted_not_fatal(tmp_path: Path) -> None:
    phones = ("pixel4", "nokia3310")
    rows = [r[:5] + ["55", "k"] for r in GOOD_TFLITE_OPS]
    src = make_source(tmp_path / "shared", tflite_ops=rows, tflite_phones=phones)
    report = import_mobile_ml_benchmark(src, tmp_path / "m" / "x")
    files = {f.name: f for f in report.files}
    assert files["tflite_cnn_ops_gpu.csv"].rejected == {"unknown_phone": len(rows)}
    assert files["tflite_cnn_ops_gpu.csv"].written == len(rows)
    assert files["tflite_cnn_e2e.csv"].rejected == {"unknown_phone": 2}


def test_duplicate_phone_columns_for_one_soc_are_rejected(tmp_path: Path) -> None:
    # mi8se and onefusion are both Snapdragon 710; under tflite only mi8se is registered, so
    # we simulate the clash by validating two copies of the same rows.
    src = make_source(tmp_path / "shared")
    import_mobile_ml_benchmark(src, tmp_path / "m" / "x")
    k = load_kernels(tmp_path / "m")
    ok, rejected = validate_kernel_rows(pd.concat([k, k.head(3)], ignore_index=True))
    assert rejected == {"duplicate": 3} and len(ok) == len(k)


def test_validate_kernel_rows_checks_new_rows() -> None:
    base = {
        "soc": "snapdragon855", "runtime": "tflite-gpu", "model": "m", "source_row": 0,
        "op": "Conv", "kind": "conv", "h_in": 8, "w_in": 8, "c_in": 4, "h_out": 8, "w_out": 8,
        "c_out": 4, "kernel": 3, "stride": 1, "groups": 1, "pad": 2, "flops": 100, "fused": "",
        "latency_ms": 0.5, "gpu_kernel": "", "source": "leti-measure",
    }  # fmt: skip
    rows = [
        base,
        {**base, "source_row": 1, "c_out": -4},
        {**base, "source_row": 2, "kind": "softmax"},
        {**base, "source_row": 3, "latency_ms": 0.0},
        {**base, "source_row": 4, "latency_ms": None},
        {**base, "source_row": 5, "h_in": "wide"},
        {**base, "source_row": 6, "pad": None, "flops": None},  # optional fields may be absent
        {**base, "source_row": 7, "soc": ""},
    ]
    ok, rejected = validate_kernel_rows(pd.DataFrame(rows))
    assert rejected == {
        "bad_shape": 2,
        "unknown_op": 1,
        "non_positive_latency": 1,
        "no_measurement": 1,
        "missing_key": 1,
    }
    assert list(ok.source_row) == [0, 6]
    assert str(ok.dtypes["c_out"]) == "Int64" and ok.pad.isna().tolist() == [False, True]
    with pytest.raises(MeasurementError, match="lack columns"):
        validate_kernel_rows(pd.DataFrame([base]).drop(columns=["kind"]))


@pytest.mark.parametrize(
    ("name", "fused"),
    [
        ("convolution_2d_19_linked_:_add_20_linked_:_relu_21", "add+relu"),
        ("convolution_2d_0", ""),
        ("depthwise_convolution_3_linked_:_hard_swish_4", "hard_swish"),
        ("fully_connected_9_linked_:_relu_10_linked_:_mul_11", "relu+mul"),
        ("depthwise_conv_plus_1x1_conv_5_6_7_linked_:_add_8", "add"),
        ("convolution_winograd_4x4_6x6_1", ""),
        ("vulkan.conv2d_pw_2x", ""),
        ("", ""),
    ],
)
def test_parse_fused(name: str, fused: str) -> None:
    assert parse_fused(name) == fused


# --- aborts, idempotence, atomic writes --------------------------------------------------------


def test_missing_file_or_header_aborts_before_writing(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "m" / "x"
    (source / "torch_cnn_e2e.csv").unlink()
    with pytest.raises(MeasurementError, match="torch_cnn_e2e.csv"):
        import_mobile_ml_benchmark(source, out)
    assert not out.exists()

    _write(source / "torch_cnn_e2e.csv", ["name", "pixel4|gpu|float|mean"], [["netA", "1"]])
    with pytest.raises(MeasurementError, match="required columns"):
        import_mobile_ml_benchmark(source, out)
    _write(source / "torch_cnn_e2e.csv", ["model", "pixel4|cpu|float|mean"], [["netA", "1"]])
    with pytest.raises(MeasurementError, match="no GPU latency column"):
        import_mobile_ml_benchmark(source, out)
    assert not out.exists()
    with pytest.raises(MeasurementError, match="not found"):
        import_mobile_ml_benchmark(tmp_path / "nowhere", out)


def test_reimport_is_byte_identical_and_replaces(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "m" / "x"
    first = import_mobile_ml_benchmark(source, out)
    before = {f: (out / f).read_bytes() for f in ("kernels.csv", "e2e.csv")}
    second = import_mobile_ml_benchmark(source, out)
    assert {f: (out / f).read_bytes() for f in before} == before
    assert first.data_sha256 == second.data_sha256
    manifest = json.loads((out / "import.json").read_text())
    assert manifest["data_sha256"] == first.data_sha256
    assert manifest["licence"]["first_line"] == "MIT License"
    assert manifest["files"]["tflite_cnn_ops_gpu.csv"]["written"] == 10

    # fewer source rows -> fewer imported rows: a re-import replaces, never appends
    _write(source / "tflite_cnn_ops_gpu.csv", _ops_header(TFLITE_PHONES), GOOD_TFLITE_OPS[:1])
    third = import_mobile_ml_benchmark(source, out)
    assert third.written["kernels"] == first.written["kernels"] - 8
    assert len(load_kernels(out.parent)) == third.written["kernels"]
    assert third.data_sha256 != first.data_sha256


def test_failed_write_leaves_previous_files_intact(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m" / "x"
    import_mobile_ml_benchmark(source, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def half_then_fail(self: Path, data: bytes) -> int:  # a full disk mid-write
        with open(self, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    _write(source / "tflite_cnn_ops_gpu.csv", _ops_header(TFLITE_PHONES), GOOD_TFLITE_OPS[:1])
    with pytest.raises(OSError, match="No space"):
        import_mobile_ml_benchmark(source, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temp file, no half file

    fresh = tmp_path / "m2" / "x"
    with pytest.raises(OSError):
        import_mobile_ml_benchmark(source, fresh)
    assert list(fresh.iterdir()) == []


# --- readers ---------------------------------------------------------------------------------


def test_load_filters_by_alias_and_runtime(source: Path, tmp_path: Path) -> None:
    import_mobile_ml_benchmark(source, tmp_path / "m" / "x")
    k = load_kernels(tmp_path / "m", soc="Pixel 4", runtime="tflite-gpu")
    assert set(k.soc) == {"snapdragon855"} and set(k.runtime) == {"tflite-gpu"} and len(k) == 5
    assert load_e2e(tmp_path / "m", soc="Galaxy S10").soc.unique().tolist() == ["exynos9820"]
    assert load_kernels(tmp_path / "m", soc="sd888").empty


def test_load_from_empty_root_and_broken_file(tmp_path: Path) -> None:
    empty = load_kernels(tmp_path)
    assert empty.empty and tuple(empty.columns) == KERNEL_COLUMNS
    assert load_e2e(tmp_path).empty
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "kernels.csv").write_text("soc,runtime\nx,y\n")
    with pytest.raises(MeasurementError, match="missing columns"):
        load_kernels(tmp_path)


def test_data_manifest_reports_sources_and_tampering(source: Path, tmp_path: Path) -> None:
    report = import_mobile_ml_benchmark(source, tmp_path / "m" / "mobile-ml-benchmark")
    doc = data_manifest(tmp_path / "m")
    entry = doc["sources"]["mobile-ml-benchmark"]
    assert entry["data_sha256"] == report.data_sha256 and entry["consistent"]
    assert entry["licence"]["file"] == "LICENSE"
    assert set(entry["files"]) == {f.name for f in report.files}
    kernels = tmp_path / "m" / "mobile-ml-benchmark" / "kernels.csv"
    kernels.write_text(kernels.read_text() + kernels.read_text().splitlines()[-1] + "\n")
    assert not data_manifest(tmp_path / "m")["sources"]["mobile-ml-benchmark"]["consistent"]


# --- the real data (skipped when ../shared is absent) ----------------------------------------


@pytest.fixture(scope="module")
def real(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("measurements")
    src = shared_dir / "data" / "mobile-ml-benchmark"
    return root, import_mobile_ml_benchmark(src, root / "mobile-ml-benchmark")


@pytest.mark.shared
def test_real_import_covers_models_socs_runtimes(real: tuple[Path, object]) -> None:
    root, report = real
    k = load_kernels(root)
    tfl = k[k.runtime == "tflite-gpu"]
    assert tfl.model.nunique() == 82
    assert tfl.soc.nunique() == 6
    assert k[k.runtime == "pytorch-vulkan"].soc.nunique() == 3
    assert set(k[k.runtime == "pytorch-metal"].soc) == {"apple-a12"}
    assert set(k.kind) <= set(KERNEL_KINDS)
    assert ((k.latency_ms > 0) & (k.latency_ms < 10_000)).all()
    # the only rejections in the published data are phones that did not run some models
    assert set(report.rejected) == {"no_measurement"}


@pytest.mark.shared
def test_real_e2e_has_graphs_for_all_tflite_models(real: tuple[Path, object]) -> None:
    root, _ = real
    e = load_e2e(root, runtime="tflite-gpu")
    assert e.model.nunique() == 82 and len(e) == 82 * 6
    assert (e.graph != "").all()
    assert all(Path(g).is_file() for g in e.graph.unique())
    assert ((e.latency_ms > 0) & (e.latency_ms < 10_000)).all()
    assert data_manifest(root)["sources"]["mobile-ml-benchmark"]["consistent"]
