"""NAS-Bench-201 networks as ONNX graphs: a family of graphs that differ in a few ops.

Training uses the family to keep the graph-level stage from reordering a NAS search space
(`leti.train.fit`); evaluation reports how each shipped model prices it (`leti.evaluate.nb201`).

The construction follows `../shared/docs/nb201.md` (nn-Meter's TF builder of the published
mobile-GPU timings): input 1x3x32x32; stem conv 3x3 (16, no bias) + BN; three stages of 5 cells
at 16/32/64 channels with a reduction block between stages; `nor_conv_kxk` = ReLU -> conv kxk
(same padding, no bias) -> BN; `avg_pool_3x3` stride 1, pad 1, padding not counted;
`skip_connect` the tensor itself; node sums are Adds; `none` drops the edge and an op that reads
a node with no live input is skipped; reduction block: shortcut = avg-pool 2x2 s2 -> conv 1x1,
main = conv 3x3 s2 + BN + ReLU -> conv 3x3 + BN, added; head: BN -> ReLU -> global average
pool -> MatMul 64x10 (a Flatten between the pool and the MatMul moves no data).

One case the construction leaves open: a cell whose output node has no live input (e.g. the
all-`none` cell) computes nothing; here it passes its input through unchanged, so such a
network is the stem, the reduction blocks and the head.

Graphs are graph-only by default: initializers carry their dims and type and no values, as the
zoo's stripped exports do (`weights="zeros"` writes zero-valued tensors instead).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from leti.core.records import Graph
from leti.frontend.graph import parse_graph

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (node, input node) of the six edges of a cell, in the order of the arch string.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
N_ARCHS = len(OPS) ** len(EDGES)  # 15,625
CHANNELS = (16, 32, 64)
CELLS_PER_STAGE = 5
INPUT_SHAPE = (1, 3, 32, 32)
CLASSES = 10
OPSET = 13


def arch_string(ops: Sequence[str]) -> str:
    """The arch string of six edge ops given in `EDGES` order."""
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise ValueError(f"need six ops out of {OPS}, got {ops!r}")
    nodes: list[list[str]] = [[], [], []]
    for (node, src), op in zip(EDGES, ops, strict=True):
        nodes[node - 1].append(f"{op}~{src}")
    return "+".join("|" + "|".join(n) + "|" for n in nodes)


def parse_arch(arch: str) -> tuple[str, ...]:
    """The six edge ops of an arch string, in `EDGES` order; ValueError if malformed."""
    ops: list[str] = []
    parts = arch.split("+")
    if len(parts) != 3:
        raise ValueError(f"not a NAS-Bench-201 arch string: {arch!r}")
    for node, part in enumerate(parts, start=1):
        edges = [e for e in part.split("|") if e]
        if len(edges) != node:
            raise ValueError(f"node {node} of {arch!r} needs {node} edges")
        for src, edge in enumerate(edges):
            op, _, idx = edge.partition("~")
            if op not in OPS or idx != str(src):
                raise ValueError(f"bad edge {edge!r} in {arch!r}")
            ops.append(op)
    return tuple(ops)


def all_archs() -> Iterator[str]:
    """All 15,625 arch strings in a fixed order (index i = the base-5 digits of i over `OPS`)."""
    for ops in itertools.product(OPS, repeat=len(EDGES)):
        yield arch_string(ops)


def arch_at(index: int) -> str:
    """The arch string at position `index` of `all_archs()`."""
    if not 0 <= index < N_ARCHS:
        raise IndexError(index)
    digits = []
    for _ in EDGES:
        index, d = divmod(index, len(OPS))
        digits.append(OPS[d])
    return arch_string(digits[::-1])


def sample_archs(n: int, seed: int = 0) -> list[str]:
    """`n` distinct arch strings drawn with `seed`, in enumeration order (all of them if
    n >= 15,625)."""
    if n >= N_ARCHS:
        return list(all_archs())
    idx = np.sort(np.random.default_rng(seed).choice(N_ARCHS, size=n, replace=False))
    return [arch_at(int(i)) for i in idx]


@dataclass(frozen=True)
class CellCounts:
    """What one cell of an arch launches (before any runtime fusion)."""

    conv1x1: int
    conv3x3: int
    avg_pool: int
    adds: int
    live: bool  # False: the output node has no live input; the cell passes its input through


def cell_counts(arch: str) -> CellCounts:
    """The ops one cell of `arch` builds, under the `none`-pruning rule of the construction."""
    ops = parse_arch(arch)
    live = [True, False, False, False]
    counts = {"nor_conv_1x1": 0, "nor_conv_3x3": 0, "avg_pool_3x3": 0}
    adds = 0
    for node in (1, 2, 3):
        terms = 0
        for (dst, src), op in zip(EDGES, ops, strict=True):
            if dst != node or op == "none" or not live[src]:
                continue
            terms += 1
            if op in counts:
                counts[op] += 1
        live[node] = terms > 0
        adds += max(terms - 1, 0)
    if not live[3]:
        return CellCounts(0, 0, 0, 0, False)
    return CellCounts(
        counts["nor_conv_1x1"], counts["nor_conv_3x3"], counts["avg_pool_3x3"], adds, True
    )


class _Builder:
    def __init__(self, weights: str) -> None:
        if weights not in ("empty", "zeros"):
            raise ValueError("weights must be 'empty' or 'zeros'")
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}_{self.n}"

    def tensor(self, prefix: str, dims: Sequence[int]) -> str:
        name = self.name(prefix)
        if self.weights == "zeros":
            t = onnx.numpy_helper.from_array(np.zeros(dims, np.float32), name)
        else:
            t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
        self.inits.append(t)
        return name

    def node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1) -> str:
        w = self.tensor("w", (c_out, c_in, k, k))
        p = k // 2
        return self.node(
            "Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride], pads=[p, p, p, p]
        )

    def bn(self, x: str, c: int) -> str:
        params = [self.tensor(n, (c,)) for n in ("scale", "bias", "mean", "var")]
        return self.node("BatchNormalization", [x, *params], epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def avg_pool(self, x: str, k: int, stride: int, pad: int) -> str:
        return self.node(
            "AveragePool",
            [x],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            count_include_pad=0,
        )

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def cell(self, x: str, c: int, ops: Sequence[str]) -> str:
        nodes: list[str | None] = [x, None, None, None]
        for node in (1, 2, 3):
            total: str | None = None
            for (dst, src), op in zip(EDGES, ops, strict=True):
                inp = nodes[src]
                if dst != node or op == "none" or inp is None:
                    continue
                if op == "skip_connect":
                    y = inp
                elif op == "avg_pool_3x3":
                    y = self.avg_pool(inp, 3, 1, 1)
                else:
                    k = 1 if op == "nor_conv_1x1" else 3
                    y = self.bn(self.conv(self.relu(inp), c, c, k), c)
                total = y if total is None else self.add(total, y)
            nodes[node] = total
        return x if nodes[3] is None else nodes[3]

    def reduction(self, x: str, c_in: int, c_out: int) -> str:
        main = self.relu(self.bn(self.conv(x, c_in, c_out, 3, stride=2), c_out))
        main = self.bn(self.conv(main, c_out, c_out, 3), c_out)
        short = self.conv(self.avg_pool(x, 2, 2, 0), c_in, c_out, 1)
        return self.add(main, short)


def build(arch: str, weights: str = "empty") -> onnx.ModelProto:
    """The NAS-Bench-201 network of `arch` as an ONNX model (opset 13), input `input`
    1x3x32x32, output `logits` 1x10."""
    ops = parse_arch(arch)
    b = _Builder(weights)
    x = b.bn(b.conv("input", INPUT_SHAPE[1], CHANNELS[0], 3), CHANNELS[0])
    for stage, c in enumerate(CHANNELS):
        if stage:
            x = b.reduction(x, CHANNELS[stage - 1], c)
        for _ in range(CELLS_PER_STAGE):
            x = b.cell(x, c, ops)
    x = b.node("GlobalAveragePool", [b.relu(b.bn(x, CHANNELS[-1]))])
    x = b.node("Flatten", [x], axis=1)
    w = b.tensor("fc", (CHANNELS[-1], CLASSES))
    b.nodes.append(helper.make_node("MatMul", [x, w], ["logits"], name="head_matmul"))
    graph = helper.make_graph(
        b.nodes,
        "nb201",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(INPUT_SHAPE))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="leti-nb201"
    )
    model.ir_version = 8
    model.doc_string = arch
    return model


def build_graphs(archs: Sequence[str]) -> list[Graph]:
    """Parsed (shape-inferred) graphs of `archs`, ready for `Estimator.predict_many`."""
    return [parse_graph(build(a), name=f"nb201:{a}") for a in archs]
