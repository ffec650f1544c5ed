"""Join the kernels a tool timed to the kernels leti plans for the graph (its fusion rules).

`performance_profiling` (tflite-gpu): each label names the TFLite nodes fused into one GPU
kernel (`convolution_2d_2_linked_:_add_3_linked_:_relu_4`, `convolution_2d 2 -> add 3 -> relu
4`). The node indices are the `.tflite` file's operator order, which a converter takes from the
graph's topological order: the kernels, sorted by the smallest index their label names, are
paired with the plan's kernels in order within each kernel family (conv, dwconv, fc, pool,
concat). A family whose counts differ between the run and the plan is rejected whole (the
pairing would be a guess). The source row is the kernel's first node index, stable across runs.
Then the ops each label says were linked into the kernel are checked against what leti's fusion
rules link into the paired kernel: a disagreement is listed (and the row's `fused` says what
the device ran), never smoothed over.

`onnxruntime` (onnxruntime-cpu): the profiler names each node; an unfused node keeps its
ONNX name and a fused Conv keeps the Conv's. A plan kernel's time is the sum of the profiled
nodes among its layers, per run, then the median over the runs. A conv kernel whose linked or
folded layers onnxruntime ran as nodes of their own, a kernel none of whose layers was
profiled, and a conv onnxruntime fused (FusedConv) where leti links nothing, are disagreements:
rejected and listed.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from leti.core.records import CONV_KINDS, Kernel, KernelPlan
from leti.measurements.tools import KernelTime

#: TFLite op names of the kernels leti models (the `op` column of a kernel row).
OPS = {
    "conv": "CONV_2D",
    "dwconv": "DEPTHWISE_CONV_2D",
    "gconv": "CONV_2D_GROUP",
    "fc": "FULLY_CONNECTED",
    "pool_max": "MAX_POOL_2D",
    "pool_avg": "AVERAGE_POOL_2D",
    "pool_global": "MEAN",
    "concat": "CONCATENATION",
}
FAMILIES = ("conv", "dwconv", "fc", "pool", "concat")
#: The TFLite GPU delegate's ReLU op carries the clip of a ReLU6: its labels say `relu`.
_TAG_ALIASES = {"relu6": "relu", "relu_n1_to_1": "relu"}


@dataclass
class Join:
    """Measured kernels paired with planned ones, and everything that could not be."""

    pairs: list[tuple[KernelTime, Any, str, float]] = field(default_factory=list)
    #: (tool kernel, plan kernel, fused as the device ran it, latency in ms)
    rejected: Counter = field(default_factory=Counter)  # kernel rows, by reason
    notes: list[str] = field(default_factory=list)
    disagreements: list[dict[str, str]] = field(default_factory=list)


def tool_family(kernel: KernelTime) -> str | None:
    """The kernel family of a `performance_profiling` kernel, "merged" for one GPU kernel that
    runs a depthwise conv and the following 1x1 conv, None for kernels leti does not model."""
    name = kernel.parts[0][0] if kernel.parts else kernel.label
    if "->" in name or "plus_1x1" in name:
        return "merged"
    if name.startswith(("depthwise", "dw_conv")):
        return "dwconv"
    if name.startswith("fully_connected"):
        return "fc"
    if name.startswith("conv") and "transpose" not in name:
        return "conv"
    if name.startswith(("pooling", "mean", "global_pooling", "max_pooling", "average_pooling")):
        return "pool"
    return "concat" if name.startswith("concat") else None


def plan_family(k: Any) -> str | None:
    """The family of a planned kernel. A 1x1 conv over a 1x1 plane runs as `fully_connected`."""
    if k.kind == "fc" or (k.kind == "conv" and k.kernel == 1 and (k.h_in, k.w_in) == (1, 1)):
        return "fc"
    if k.kind in ("conv", "gconv"):
        return "conv"
    if k.kind.startswith("pool"):
        return "pool"
    return k.kind if k.kind in ("dwconv", "concat") else None


def _norm_tags(tags: list[str]) -> list[str]:
    out = []
    for t in tags:
        for part in t.split("+"):
            part = re.sub(r"[^a-z0-9_]", "", part.lower())
            if part:
                out.append(_TAG_ALIASES.get(part, part))
    return out


def join_tflite(plan: KernelPlan, kernels: list[KernelTime]) -> Join:
    out = Join()
    planned = list(plan.kernels)
    order = {f: [i for i, k in enumerate(planned) if plan_family(k) == f] for f in FAMILIES}
    used: set[int] = set()

    def take(fam: str, after: int = -1) -> int | None:
        i = next((i for i in order[fam] if i not in used and i > after), None)
        if i is not None:
            used.add(i)
        return i

    ranked = sorted(kernels, key=lambda k: (k.index is None, k.index or 0, k.position))
    chosen: dict[str, list[tuple[KernelTime, int | None]]] = {f: [] for f in FAMILIES}
    for g in ranked:
        fam = tool_family(g)
        if fam is None:
            out.rejected["unmodelled_kernel"] += 1
            out.notes.append(f"{g.label}: no kernel family leti models")
        elif fam == "merged":
            dw = take("dwconv")
            take("conv", -1 if dw is None else dw)
            out.rejected["merged_kernel"] += 1
            out.notes.append(f"{g.label}: two graph kernels in one GPU kernel, no single geometry")
        else:
            chosen[fam].append((g, take(fam)))
    for fam, items in chosen.items():
        left = [i for i in order[fam] if i not in used]
        if any(i is None for _, i in items) or left:
            out.rejected["count_mismatch"] += len(items)
            n_plan = sum(i is not None for _, i in items) + len(left)
            out.notes.append(f"{fam}: {len(items)} GPU kernels but {n_plan} in leti's plan")
            continue
        for g, i in items:
            k = planned[i]
            ran = [name for name, _ in g.parts[1:]]
            fused = "+".join(ran)
            if _norm_tags(ran) != _norm_tags(list(k.fused)):
                out.disagreements.append(
                    {
                        "kernel": g.label,
                        "graph_kernel": k.name,
                        "device_linked": fused,
                        "leti_linked": "+".join(k.fused),
                    }
                )
                out.notes.append(
                    f"{g.label}: the device linked {fused or 'nothing'}, leti's fusion rules "
                    f"link {'+'.join(k.fused) or 'nothing'} into {k.name}"
                )
            out.pairs.append((g, k, fused, g.ms))
    out.pairs.sort(key=lambda p: p[0].position)
    return out


def _disagree(out: Join, reason: str, k: Kernel, onnxruntime: str, note: str) -> None:
    """A kernel of leti's plan that onnxruntime's profile does not confirm: counted under
    `reason`, listed with what each side says, and explained in a note."""
    out.rejected[reason] += 1
    out.disagreements.append(
        {"kernel": k.name, "leti": _kernel_text(k), "onnxruntime": onnxruntime}
    )
    out.notes.append(note)


def join_onnxruntime(
    plan: KernelPlan, node_runs: dict[str, list[float]], node_ops: dict[str, str]
) -> Join:
    out = Join()
    claimed: set[str] = set()
    for position, k in enumerate(plan.kernels):
        ran = [n for n in k.layers if n in node_runs]
        claimed.update(ran)
        if not ran:
            _disagree(
                out,
                "not_profiled",
                k,
                "no node of its own",
                f"{k.name} ({_kernel_text(k)}): onnxruntime profiled none of its layers "
                "(fused into another node or optimised away)",
            )
            continue
        if k.kind in CONV_KINDS:
            apart = [n for n in ran if n != k.name]
            op = node_ops.get(k.name, "")
            if apart or k.name not in ran:
                _disagree(
                    out,
                    "fusion_disagreement",
                    k,
                    "separate nodes: " + ", ".join(apart),
                    f"{k.name}: leti fuses {'+'.join(k.fused) or 'a folded op'} into it, "
                    f"onnxruntime ran {', '.join(apart)} as node(s) of their own",
                )
                continue
            if op == "FusedConv" and not k.fused:
                _disagree(
                    out,
                    "fusion_disagreement",
                    k,
                    "FusedConv",
                    f"{k.name}: onnxruntime fused an activation into it (FusedConv), leti's "
                    "fusion rules link nothing",
                )
                continue
        runs = min(len(node_runs[n]) for n in ran)
        per_run = [sum(node_runs[n][r] for n in ran) for r in range(runs)]
        label = "+".join(f"{n}:{node_ops.get(n, '')}" for n in ran)
        kt = KernelTime(label, float(statistics.median(per_run)), (), position)
        out.pairs.append((kt, k, "+".join(k.fused), kt.ms))
    rest = {n: statistics.median(v) for n, v in node_runs.items() if n not in claimed}
    if rest:
        ops = Counter(node_ops.get(n, "?") for n in rest)
        out.notes.append(
            f"{len(rest)} profiled node(s) outside leti's kernels ({sum(rest.values()):.3f} ms: "
            + ", ".join(f"{op} x{c}" for op, c in ops.most_common(6))
            + "): standalone ops for the graph stage"
        )
    return out


def _kernel_text(k: Any) -> str:
    return k.kind + "".join(f"+{t}" for t in k.fused)
