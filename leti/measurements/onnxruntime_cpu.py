"""The `onnxruntime` collector: this machine's CPU, for real (SoC `host`, runtime
`onnxruntime-cpu`).

The zoo's graphs carry no weights (their initializers point at external files that are not
shipped), so `materialise` writes a temporary copy with weights drawn at random (normal, scaled
by 1/sqrt(fan-in), seeded; BatchNorm scales and variances 1, shifts and means 0, 1-D tensors 0):
onnxruntime's CPU kernels do not take data-dependent shortcuts on float weights, so the values
do not change the time, and bounded activations keep denormals out. Nodes without a name get
the name leti's front end gives them (`<op>_<index>`), so that the profiler's node names are
the graph's layer names.

The runner (`ort_runner.py`, run as a separate process by path) prints one JSON line, which
`leti.measurements.tools.parse_onnxruntime` reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from leti.core.errors import MeasurementError
from leti.measurements.tools import RunOptions

RUNNER = Path(__file__).with_name("ort_runner.py")


def materialise(src: Path, dst: Path, seed: int = 0) -> Path:
    """Write `src` to `dst` with every weight present (see the module doc)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(src), load_external_data=False)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise MeasurementError(f"{src}: not a readable ONNX model: {exc}") from exc
    rng = np.random.default_rng(seed)
    bn_role: dict[str, int] = {}
    used: set[str] = set()
    for idx, node in enumerate(model.graph.node):
        if node.op_type == "BatchNormalization":
            for pos, name in enumerate(node.input[1:5], start=1):
                bn_role[name] = pos
        name = node.name or f"{node.op_type}_{idx}"
        if name in used:
            name = f"{name}_{idx}"
            while name in used:
                name += "_"
        used.add(name)
        node.name = name
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and (t.raw_data or _has_values(t)):
            continue
        dims = [int(d) for d in t.dims]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        if bn_role.get(t.name) in (1, 4):  # scale, variance
            arr = np.ones(dims, dtype)
        elif bn_role.get(t.name) in (2, 3) or len(dims) <= 1 or dtype.kind not in "f":
            arr = np.zeros(dims, dtype)
        else:
            fan_in = int(np.prod(dims[1:])) or 1
            arr = (rng.standard_normal(dims) / np.sqrt(fan_in)).astype(dtype)
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def _has_values(t) -> bool:
    fields = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    return any(len(getattr(t, f)) for f in fields) or len(t.string_data) > 0


def command(model: str, opts: RunOptions) -> list[str]:
    """The runner's argument list: this Python, the runner by path, one JSON argument."""
    doc = {
        "model": model,
        "warmup": opts.warmup,
        "repeats": opts.runs,
        "profile_runs": opts.profile_runs,
        "threads": opts.threads,
    }
    return [opts.binary or sys.executable, str(RUNNER), json.dumps(doc)]
