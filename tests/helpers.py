"""Assertions and fixtures' data shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from leti.frontend.features import kernels_frame
from leti.frontend.fusion import plan
from leti.frontend.graph import parse_graph
from leti.measurements.schema import E2E_COLUMNS, KERNEL_COLUMNS


def assert_no_pickle(folder: Path) -> None:
    """Every model file is JSON or xgboost's UBJ, and loads as such: nothing is pickled."""
    files = list(folder.iterdir())
    assert files
    for f in files:
        assert f.suffix in (".json", ".ubj"), f
        raw = f.read_bytes()
        assert not raw.startswith(b"\x80"), f"{f} looks like a pickle"
        if f.suffix == ".json":
            json.loads(raw)
        else:
            xgb.Booster().load_model(bytearray(raw))


def write_synthetic_measurements(
    root: Path, graphs, soc: str = "snapdragon855", runtime: str = "tflite-gpu"
) -> Path:
    """kernels.csv + e2e.csv in the documented schema under `root/synthetic`, with SYNTHETIC
    latencies (a formula of each kernel's FLOPs, with noise), for tests of the fit and of
    the evaluation protocols."""
    krows, erows = [], []
    rng = np.random.default_rng(0)
    for path in graphs:
        p = plan(parse_graph(path), runtime)
        frame = kernels_frame(p.kernels)
        flops = np.array([k.flops for k in p.kernels], float)
        ms = 0.02 + flops / 2e8 * rng.uniform(0.9, 1.1, len(flops))  # synthetic
        for i, (k, t) in enumerate(zip(p.kernels, ms, strict=True)):
            row = dict(frame.iloc[i])
            row.update(
                soc=soc,
                runtime=runtime,
                model=path.stem,
                source_row=i,
                op=k.op_type,
                w_in=k.w_in,
                pad=k.pad,
                flops=k.flops,
                latency_ms=t,
                gpu_kernel="",
                source="synthetic",
            )
            krows.append(row)
        erows.append(
            dict(
                soc=soc,
                runtime=runtime,
                model=path.stem,
                latency_ms=1.3 * ms.sum() + 0.5,
                std_ms=0.1,
                flops=flops.sum(),
                params_bytes=0,
                graph=str(path),
                source="synthetic",
            )
        )
    folder = root / "synthetic"
    folder.mkdir(parents=True)
    pd.DataFrame(krows)[list(KERNEL_COLUMNS)].to_csv(folder / "kernels.csv", index=False)
    pd.DataFrame(erows)[list(E2E_COLUMNS)].to_csv(folder / "e2e.csv", index=False)
    return root


def light(light_dir: Path, name: str) -> Path:
    """The onnx wheel's `light_<name>.onnx`."""
    return light_dir / f"light_{name}.onnx"


def write_timings_csv(path: Path, rows) -> Path:
    """A `leti calibrate` timings file: `graph,latency_ms`, one (graph, latency) row each."""
    path.write_text("graph,latency_ms\n" + "".join(f"{g},{t}\n" for g, t in rows), "utf-8")
    return path
