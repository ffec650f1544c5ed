"""The ncnn benchmark (../shared/data/ncnn-benchmark, BSD-3): end-to-end Vulkan timings of the
35 models of ncnn's `benchncnn` on ~19 mobile GPUs, used to ship ncnn-vulkan calibrations for
the named SoCs whose GPUs it timed, and to test transfer and few-shot calibration on a runtime
(ncnn-vulkan) and GPUs we have no per-layer data for.

Selection rules (deterministic; documented in benchmarks/transfer.md):
- rows with `backend == "vulkan"` and `gpu_banner == 1` (two boards print `gpu_device = 0`
  but ran on the CPU: their banner is 0);
- the Station-M3 RK3588S GPU rows are excluded: they look broken (vgg16 in 0.56 ms);
- a target is a GPU listed in `data/ncnn_gpus.json` (mobile GPUs, with approximate hardware
  descriptors), matched on the start of the device section and the Vulkan device name;
- per target, the runs (run_index) with the most rows are kept, and per model the minimum of
  `avg_ms` over those runs and over duplicate rows (`repeats` counts them, `spread` is their
  max / min: how far two timings of one model on one board disagree);
- graphs: the exact `.param` files the benchmark ran (`models/<name>.param`, input sizes from
  `models/inputs.json`): every model with a timing. `zoo_dir=` selects the older approximate
  ONNX exports of 15 classification models instead (`../shared/zoo/ncnn/mapping.json`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from leti.core.socs import GpuSpec, gpu_spec, gpu_specs
from leti.core.store import sha256_file

CSV_NAME = "ncnn_benchmark.csv"
BROKEN_SECTIONS = ("Station-M3",)
MODELS_DIR = "models"
INPUTS_FILE = "inputs.json"
LICENCE = "BSD-3-Clause (the ncnn project's benchmark/README.md and benchmark/models)"


@dataclass(frozen=True)
class NcnnTarget:
    gpu: GpuSpec
    section: str  # full section name in the benchmark
    gpu_name: str
    runs: tuple[int, ...]  # run_index values kept
    #: model, latency_ms, repeats, spread, graph (path), input_shape ([1, c, h, w] or None)
    timings: pd.DataFrame


def load_vulkan_rows(data_dir: Path) -> pd.DataFrame:
    """Vulkan rows that really ran on a GPU, without the known-broken sections."""
    df = pd.read_csv(Path(data_dir) / CSV_NAME, low_memory=False)
    df = df[(df["backend"] == "vulkan") & (df["gpu_banner"] == 1)]
    for prefix in BROKEN_SECTIONS:
        df = df[~df["section"].astype(str).str.startswith(prefix)]
    return df[pd.to_numeric(df["avg_ms"], errors="coerce") > 0].copy()


def load_mapping(zoo_dir: Path) -> dict[str, Path]:
    """ncnn model name -> ONNX graph, for the models that have one."""
    raw = json.loads((Path(zoo_dir) / "mapping.json").read_text("utf-8"))
    out = {}
    for name in raw:
        if name.startswith("_"):
            continue
        path = Path(zoo_dir) / f"{name}.onnx"
        if path.is_file():
            out[name] = path
    return out


def load_param_graphs(data_dir: Path) -> dict[str, tuple[Path, list[int]]]:
    """ncnn model name -> (its exact `.param` graph, its benchmark input [1, c, h, w])."""
    folder = Path(data_dir) / MODELS_DIR
    sizes = json.loads((folder / INPUTS_FILE).read_text("utf-8"))
    out = {}
    for path in sorted(folder.glob("*.param")):
        size = sizes.get(path.stem)
        if size is not None:
            out[path.stem] = (path, [1, int(size["c"]), int(size["h"]), int(size["w"])])
    return out


def input_blob(param: Path) -> str:
    """The name of the `Input` layer's blob (what an input shape is given for)."""
    for line in param.read_text("utf-8").splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] == "Input":
            return fields[4]
    raise ValueError(f"{param}: no Input layer")


def data_sha256(data_dir: Path) -> str:
    """Hash of the timings table and every graph the targets read."""
    h = hashlib.sha256(sha256_file(Path(data_dir) / CSV_NAME).encode())
    folder = Path(data_dir) / MODELS_DIR
    for path in sorted([*folder.glob("*.param"), folder / INPUTS_FILE]):
        h.update(f"{path.name}\t{sha256_file(path)}\n".encode())
    return h.hexdigest()


def load_targets(data_dir: Path, zoo_dir: Path | None = None) -> list[NcnnTarget]:
    """Every GPU of `data/ncnn_gpus.json` with Vulkan rows, its timings joined to the exact
    `.param` graphs (or, with `zoo_dir`, to the approximate ONNX exports)."""
    rows = load_vulkan_rows(data_dir)
    if zoo_dir is None:
        params = load_param_graphs(data_dir)
        graphs = {m: p for m, (p, _) in params.items()}
        shapes = {m: shape for m, (_, shape) in params.items()}
    else:
        graphs, shapes = load_mapping(zoo_dir), {}
    out = []
    for gid, d in gpu_specs().items():
        sel = rows[
            rows["section"].astype(str).str.startswith(d["section"])
            & (rows["gpu_name"].astype(str) == d["gpu_name"])
        ]
        if sel.empty:
            continue
        sizes = sel.groupby("run_index").size()
        runs = tuple(sorted(int(r) for r in sizes[sizes == sizes.max()].index))
        sel = sel[sel["run_index"].isin(runs) & sel["model"].isin(list(graphs))]
        t = (
            sel.assign(avg_ms=pd.to_numeric(sel["avg_ms"]))
            .groupby("model", as_index=False)["avg_ms"]
            .agg(latency_ms="min", slowest="max", repeats="size")
            .sort_values("model")
            .reset_index(drop=True)
        )
        t["spread"] = t.pop("slowest") / t["latency_ms"]
        t["graph"] = [str(graphs[m]) for m in t["model"]]
        t["input_shape"] = [shapes.get(m) for m in t["model"]]
        out.append(
            NcnnTarget(
                gpu=gpu_spec(gid),
                section=str(sel["section"].iloc[0]) if len(sel) else d["section"],
                gpu_name=d["gpu_name"],
                runs=runs,
                timings=t,
            )
        )
    return out
