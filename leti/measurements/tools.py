"""The tools that time a model on a device: for each, the command that runs it and the parser of
what it prints (the formats are those of `../shared/docs/device-tools.md`).

- `performance_profiling` (tflite-gpu, runs a `.tflite`): per-kernel GPU times and the end-to-end
  time ("Total time");
- `benchmark_model` (tflite-gpu, `.tflite`): end to end; a run that left ops on the CPU is
  rejected;
- `benchncnn` (ncnn-vulkan, `.param`): end to end; the GPU banner says which GPU ran it;
- `speed_benchmark_torch` (pytorch-vulkan, `.ptl`): end to end (per iteration with
  `--report_pep`);
- `onnxruntime` (onnxruntime-cpu, `.onnx`, on this machine): per-node profiler times and the
  end-to-end time.

A parser returns a `ToolRun`: its end-to-end time (and the per-repeat times when the tool gives
them), the kernels it timed, and, when the run is not a measurement of the runtime at all (the
GPU delegate left ops on the CPU, benchncnn ran on the CPU), the reason it is rejected. Parsers
raise `MeasurementError` only for output they cannot read.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leti.core.errors import MeasurementError


@dataclass(frozen=True)
class KernelTime:
    """One kernel a tool timed. `parts`: the ops its label names as (op name, node index), the
    kernel's own op first and then what was linked into it; an index is None where the label
    gives none (a merged `dw_conv2d->conv1x1`)."""

    label: str
    ms: float
    parts: tuple[tuple[str, int | None], ...] = ()
    position: int = 0  # 0-based, in the order the tool printed it

    @property
    def index(self) -> int | None:
        """The smallest node index the label names (its place in the graph)."""
        found = [i for _, i in self.parts if i is not None]
        return min(found) if found else None


@dataclass(frozen=True)
class ToolRun:
    """What one run of a tool says about one model."""

    e2e_ms: float | None
    std_ms: float | None = None
    repeats: tuple[float, ...] = ()  # per-repeat end-to-end times, when the tool gives them
    kernels: tuple[KernelTime, ...] = ()
    rejected: str | None = None  # why this run is no measurement of the runtime
    device: str | None = None  # what ran it, when the tool says (benchncnn's GPU banner)
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # tool-specific facts (precision, ...)


@dataclass(frozen=True)
class RunOptions:
    """How a tool is run: iterations, warmup, threads, and the binary on the device."""

    runs: int = 50
    warmup: int = 10
    threads: int = 1
    profile_runs: int = 3  # onnxruntime: profiled runs after the warmup
    binary: str | None = None


_LOG_PREFIX = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE): ")


def _lines(text: str) -> list[str]:
    return [_LOG_PREFIX.sub("", ln.rstrip("\r")) for ln in text.splitlines()]


def _stats(values: Sequence[float]) -> tuple[float, float | None]:
    """(median, sample standard deviation or None for one value)."""
    med = float(statistics.median(values))
    return med, (float(statistics.stdev(values)) if len(values) > 1 else None)


# --------------------------------------------------------------------------------------------
# performance_profiling: the TFLite GPU (OpenCL) delegate's own per-kernel profiler

_PP_HEADER = re.compile(r"^Per kernel timing\((\d+) kernels\):")
_PP_OLD = re.compile(r"^\s*(?P<label>\S.*?) - (?P<ms>[0-9.eE+-]+)ms\s*$")
_PP_NEW = re.compile(r"^\s*(?P<label>\S.*?); (?P<ms>[0-9.eE+-]+) ms(?:;.*)?$")
_PP_TOTAL = re.compile(r"^Total time - ([0-9.eE+-]+)ms")
_PP_IDEAL = re.compile(r"^Ideal total time: ([0-9.eE+-]+)ms")
_OLD_PART = re.compile(r"^(?P<name>[a-z][a-z0-9_x]*?)_(?P<idx>\d+)$")
_NEW_PART = re.compile(r"^(?P<name>\S+?)(?:\s+(?P<idx>\d+))?$")


def parse_label(label: str) -> tuple[tuple[str, int | None], ...]:
    """The ops a `performance_profiling` kernel label names, as (op name, TFLite node index).

    Older releases: `convolution_2d_16_linked_:_add_17_linked_:_relu_18`; newer ones:
    `convolution_2d 0 -> prelu 1`, `dw_conv2d->conv1x1 -> add 4 -> prelu 5` (the merged
    kernel's first part carries no index), `pooling_2d 11`."""
    label = label.strip()
    if " " in label or "->" in label:
        parts = []
        for seg in label.split(" -> "):
            m = _NEW_PART.match(seg.strip())
            if m is None:
                raise MeasurementError(f"unreadable kernel label {label!r}")
            idx = m.group("idx")
            parts.append((m.group("name"), int(idx) if idx is not None else None))
        return tuple(parts)
    parts = []
    for seg in label.split("_linked_:_"):
        m = _OLD_PART.match(seg)
        parts.append((m.group("name"), int(m.group("idx"))) if m else (seg, None))
    return tuple(parts)


def parse_performance_profiling(text: str) -> ToolRun:
    lines = _lines(text)
    start = next((i for i, ln in enumerate(lines) if _PP_HEADER.match(ln.strip())), None)
    if start is None:
        raise MeasurementError(
            "unparseable performance_profiling output: no 'Per kernel timing(N kernels):' line"
        )
    expected = int(_PP_HEADER.match(lines[start].strip()).group(1))
    kernels: list[KernelTime] = []
    for ln in lines[start + 1 :]:
        if not ln.strip() or ln.strip().startswith("---"):
            break
        m = _PP_NEW.match(ln) or _PP_OLD.match(ln)
        if m is None:
            raise MeasurementError(f"unreadable performance_profiling kernel line: {ln.strip()!r}")
        label = m.group("label").strip()
        kernels.append(KernelTime(label, float(m.group("ms")), parse_label(label), len(kernels)))
    if len(kernels) != expected:
        raise MeasurementError(
            f"performance_profiling announced {expected} kernels but listed {len(kernels)}"
        )
    totals = [float(m.group(1)) for ln in lines if (m := _PP_TOTAL.match(ln.strip()))]
    ideal = [float(m.group(1)) for ln in lines if (m := _PP_IDEAL.match(ln.strip()))]
    extra: dict[str, Any] = {}
    for ln in lines:
        for key in ("Precision", "Storage type"):
            if ln.startswith(f"{key}: "):
                extra[key.lower().replace(" ", "_")] = ln.split(": ", 1)[1].strip()
    notes = []
    if ideal:
        extra["ideal_total_ms"] = ideal[-1]
        notes.append(
            f"ideal total (sum of kernels) {ideal[-1]:g} ms; end to end adds launch and "
            "synchronisation gaps"
        )
    if not totals:
        raise MeasurementError("performance_profiling output has no 'Total time - X ms' line")
    e2e, std = _stats(totals)
    return ToolRun(e2e, std, tuple(totals), tuple(kernels), notes=tuple(notes), extra=extra)


# --------------------------------------------------------------------------------------------
# benchmark_model: end to end

_BM_INFERENCE = re.compile(r"Inference timings in us:.*Inference \(avg\):\s*([0-9.eE+]+)")
_BM_COUNT = re.compile(r"^count=\d+\b.*\bavg=([0-9.eE+]+)\s+std=([0-9.eE+]+)")
_BM_SPLIT = re.compile(
    r"(\d+) operations will run on the GPU, and the remaining (\d+) operations? will run on the CPU"
)
_BM_UNSUPPORTED = "Following operations are not supported by GPU delegate:"
_BM_NO_DELEGATE = re.compile(r"failed to (?:apply|create) (?:the )?gpu delegate", re.I)


def parse_benchmark_model(text: str) -> ToolRun:
    lines = _lines(text)
    e2e = [float(m.group(1)) for ln in lines if (m := _BM_INFERENCE.search(ln))]
    if not e2e:
        raise MeasurementError(
            "unparseable benchmark_model output: no 'Inference timings in us: ... "
            "Inference (avg)' line"
        )
    stds = [float(m.group(2)) for ln in lines if (m := _BM_COUNT.match(ln.strip()))]
    rejected = None
    split = next((m for ln in lines if (m := _BM_SPLIT.search(ln))), None)
    if split is not None and int(split.group(2)) > 0:
        rejected = f"CPU fallback: {split.group(0)}: not a GPU measurement" + _unsupported_ops(
            lines
        )
    elif any(_BM_UNSUPPORTED in ln for ln in lines):
        rejected = "CPU fallback: the GPU delegate did not take every op" + _unsupported_ops(lines)
    elif any(_BM_NO_DELEGATE.search(ln) for ln in lines):
        rejected = "the GPU delegate was not applied: not a GPU measurement"
    return ToolRun(e2e[-1] / 1000.0, stds[-1] / 1000.0 if stds else None, rejected=rejected)


def _unsupported_ops(lines: list[str]) -> str:
    at = next((i for i, ln in enumerate(lines) if _BM_UNSUPPORTED in ln), None)
    if at is None:
        return ""
    ops = []
    for ln in lines[at + 1 :]:
        if not ln.strip() or _BM_SPLIT.search(ln):
            break
        ops.append(ln.split(":")[0].strip())
    return f" ({', '.join(ops)})" if ops else ""


# --------------------------------------------------------------------------------------------
# benchncnn: end to end for ncnn-vulkan

_NCNN_RESULT = re.compile(
    r"^\s*(?P<name>\S.*?)\s+min =\s*(?P<min>[0-9.]+)\s+max =\s*(?P<max>[0-9.]+)"
    r"\s+avg =\s*(?P<avg>[0-9.]+)\s*$"
)
_NCNN_SETTING = re.compile(r"^\s*(?P<key>[a-z_]+) = (?P<value>\S.*?)\s*$")
#: ncnn's Vulkan device log line (gpu.cpp): `[0 Adreno (TM) 660]  queueC=0[3]  queueG=...`.
_NCNN_BANNER = re.compile(r"^\[(?P<index>\d+) (?P<name>.+?)\]\s+queueC=")


def parse_benchncnn(text: str, model: str | None = None) -> ToolRun:
    """`model`: the result line to read when the run timed several (its name or file name)."""
    lines = _lines(text)
    settings = {m["key"]: m["value"] for ln in lines if (m := _NCNN_SETTING.match(ln))}
    results = [m for ln in lines if (m := _NCNN_RESULT.match(ln))]
    if not results:
        raise MeasurementError(
            "unparseable benchncnn output: no '<model>  min = ..  max = ..  avg = ..' line"
        )
    if model is not None and len(results) > 1:
        stems = {model, Path(model).name, Path(model).stem}
        picked = [m for m in results if m["name"].strip() in stems]
        if len(picked) != 1:
            raise MeasurementError(f"benchncnn timed {len(results)} models; none is {model!r}")
        result = picked[0]
    elif len(results) > 1:
        raise MeasurementError(f"benchncnn timed {len(results)} models; expected one")
    else:
        result = results[0]
    banners = {int(m["index"]): m["name"] for ln in lines if (m := _NCNN_BANNER.match(ln))}
    gpu_device = int(settings.get("gpu_device", "0"))
    device = banners.get(gpu_device) if gpu_device >= 0 else "CPU"
    rejected = None
    if gpu_device < 0:
        rejected = "benchncnn ran on the CPU (gpu_device = -1): not an ncnn-vulkan measurement"
    elif device is None:
        rejected = (
            f"no Vulkan GPU banner for gpu_device = {gpu_device}: which GPU ran it is unknown, "
            "and ncnn may have run on the CPU"
        )
    lo, hi = float(result["min"]), float(result["max"])
    notes = (f"min {lo:g} ms, max {hi:g} ms over loop_count = {settings.get('loop_count', '?')}",)
    extra = {"settings": settings, "min_ms": lo, "max_ms": hi, "gpus": banners}
    return ToolRun(float(result["avg"]), None, (), (), rejected, device, notes, extra)


# --------------------------------------------------------------------------------------------
# speed_benchmark_torch: end to end for PyTorch Mobile (Vulkan)

_TORCH_MAIN = re.compile(r"Main run finished\. Microseconds per iter: ([0-9.eE+]+)\.")
_TORCH_PEP = re.compile(r"^PyTorchObserver (\{.*\})\s*$")


def parse_speed_benchmark_torch(text: str) -> ToolRun:
    lines = _lines(text)
    main = [float(m.group(1)) for ln in lines if (m := _TORCH_MAIN.search(ln))]
    per_iter = []
    for ln in lines:
        m = _TORCH_PEP.match(ln.strip())
        if m is None:
            continue
        try:
            doc = json.loads(m.group(1))
        except ValueError:
            raise MeasurementError(f"unreadable PyTorchObserver line: {ln.strip()!r}") from None
        if doc.get("type") == "NET" and doc.get("metric") == "latency":
            scale = {"us": 1e-3, "ms": 1.0}.get(doc.get("unit"))
            if scale is None:
                raise MeasurementError(f"PyTorchObserver unit {doc.get('unit')!r} is not us or ms")
            per_iter.append(float(doc["value"]) * scale)
    if not main and not per_iter:
        raise MeasurementError(
            "unparseable speed_benchmark_torch output: no 'Main run finished. Microseconds per "
            "iter: X.' line"
        )
    std = _stats(per_iter)[1] if per_iter else None
    e2e = main[-1] / 1000.0 if main else _stats(per_iter)[0]
    return ToolRun(e2e, std, tuple(per_iter))


# --------------------------------------------------------------------------------------------
# onnxruntime on this machine: the line `leti/measurements/ort_runner.py` prints

ORT_MARKER = "LETI-ORT-RUN "
ORT_FORMAT = "leti-ort-run/1"


def parse_onnxruntime(text: str) -> ToolRun:
    """The line `ort_runner.py` prints: end-to-end times per repeat, per-node profiler times
    (the kernels, each the median over the profiled runs; every run's times in
    `extra["node_runs"]`)."""
    line = next((ln for ln in text.splitlines() if ln.startswith(ORT_MARKER)), None)
    if line is None:
        raise MeasurementError(f"unparseable onnxruntime output: no '{ORT_MARKER.strip()}' line")
    try:
        doc = json.loads(line[len(ORT_MARKER) :])
    except ValueError as exc:
        raise MeasurementError(f"unparseable onnxruntime output: {exc}") from None
    if doc.get("format") != ORT_FORMAT:
        raise MeasurementError(f"onnxruntime output format {doc.get('format')!r} is not mine")
    e2e = [float(v) for v in doc.get("e2e_ms", [])]
    if not e2e:
        raise MeasurementError("onnxruntime output has no end-to-end time")
    kernels = []
    runs: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for pos, node in enumerate(doc.get("nodes", [])):
        ms = [float(v) for v in node.get("ms", [])]
        if not ms:
            continue
        runs[node["name"]] = ms
        ops[node["name"]] = node.get("op", "")
        op = node.get("op", "")
        kernels.append(KernelTime(node["name"], float(statistics.median(ms)), ((op, None),), pos))
    med = float(statistics.median(e2e))
    std = float(statistics.stdev(e2e)) if len(e2e) > 1 else None
    providers = {n.get("provider") for n in doc.get("nodes", [])} - {None, ""}
    rejected = None
    if providers - {"CPUExecutionProvider"}:
        rejected = f"nodes ran on {sorted(providers)}: not an onnxruntime-cpu measurement"
    extra = {
        "onnxruntime": doc.get("onnxruntime"),
        "threads": doc.get("threads"),
        "optimization": doc.get("optimization"),
        "node_runs": runs,
        "node_ops": ops,
    }
    device = f"onnxruntime {doc.get('onnxruntime')} CPU, {doc.get('threads')} thread(s)"
    return ToolRun(med, std, tuple(e2e), tuple(kernels), rejected, device, (), extra)


# --------------------------------------------------------------------------------------------
# The tools


@dataclass(frozen=True)
class Tool:
    name: str
    runtime: str
    suffix: str  # of the file the device runs
    per_kernel: bool
    binary: str  # default binary name
    transports: tuple[str, ...] = ("adb", "ssh", "local", "log")
    summary: str = ""

    def model_file(self, graph: Path, given: Path | None = None) -> Path:
        """The file the device runs for `graph`: `given`, the graph itself when it already is
        one, else the file of the same name beside it (`net.onnx` -> `net.tflite`)."""
        if given is not None:
            path = Path(given)
        elif graph.suffix.lower() == self.suffix:
            path = graph
        else:
            path = graph.with_suffix(self.suffix)
        if not path.is_file():
            raise MeasurementError(
                f"{self.name} runs a {self.suffix} file: none at {path} (put the converted "
                f"model beside {graph.name}, or name it with --model-file)"
            )
        return path

    def command(
        self, binary: str, model: str, opts: RunOptions, input_shape: Sequence[int] | None
    ) -> list[str]:
        """The argument list that runs the tool on `model` (a path on the device)."""
        if self.name == "performance_profiling":
            return [binary, "--model_path", model]
        if self.name == "benchmark_model":
            return [
                binary,
                f"--graph={model}",
                "--use_gpu=true",
                "--gpu_precision_loss_allowed=true",
                f"--num_runs={opts.runs}",
                f"--warmup_runs={opts.warmup}",
            ]
        if self.name == "benchncnn":
            argv = [binary, str(opts.runs), str(opts.threads), "0", "0", "0", f"param={model}"]
            if input_shape and len(input_shape) == 4:
                _, c, h, w = (int(d) for d in input_shape)
                argv.append(f"shape=[{w},{h},{c}]")
            return argv
        if self.name == "speed_benchmark_torch":
            dims = ",".join(str(int(d)) for d in (input_shape or (1, 3, 224, 224)))
            return [
                binary,
                f"--model={model}",
                f"--input_dims={dims}",
                "--input_type=float",
                f"--warmup={opts.warmup}",
                f"--iter={opts.runs}",
                "--vulkan=true",
                "--report_pep=true",
            ]
        raise MeasurementError(f"{self.name}: no device command (it runs on this machine)")

    def parse(self, text: str, model: str | None = None) -> ToolRun:
        if self.name == "performance_profiling":
            return parse_performance_profiling(text)
        if self.name == "benchmark_model":
            return parse_benchmark_model(text)
        if self.name == "benchncnn":
            return parse_benchncnn(text, model)
        if self.name == "speed_benchmark_torch":
            return parse_speed_benchmark_torch(text)
        return parse_onnxruntime(text)


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "performance_profiling",
            "tflite-gpu",
            ".tflite",
            True,
            "performance_profiling",
            summary="TFLite GPU (OpenCL) delegate's profiler: per-kernel times + end to end",
        ),
        Tool(
            "benchmark_model",
            "tflite-gpu",
            ".tflite",
            False,
            "benchmark_model",
            summary="TFLite benchmark_model --use_gpu=true: end to end (CPU fallback rejected)",
        ),
        Tool(
            "benchncnn",
            "ncnn-vulkan",
            ".param",
            False,
            "benchncnn",
            summary="ncnn benchncnn on a .param, gpu device 0: end to end (+ the GPU banner)",
        ),
        Tool(
            "speed_benchmark_torch",
            "pytorch-vulkan",
            ".ptl",
            False,
            "speed_benchmark_torch",
            summary="PyTorch Mobile speed_benchmark_torch --vulkan=true: end to end",
        ),
        Tool(
            "onnxruntime",
            "onnxruntime-cpu",
            ".onnx",
            True,
            "python",
            transports=("local", "log"),
            summary="onnxruntime on this machine's CPU: per-node profiler times + end to end",
        ),
    )
}


def tool(name: str) -> Tool:
    try:
        return TOOLS[name]
    except KeyError:
        raise MeasurementError(
            f"unknown tool {name!r}; known tools: {', '.join(TOOLS)}", detail=", ".join(TOOLS)
        ) from None
