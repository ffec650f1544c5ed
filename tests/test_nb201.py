"""The NAS-Bench-201 builder: valid ONNX graphs with the kernels the construction implies."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from leti.evaluate.nb201 import family_consistency
from leti.frontend import nb201
from leti.frontend.fusion import plan
from leti.frontend.graph import parse_graph

ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_CONV3 = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|"
    "+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)
ALL_SKIP = nb201.arch_string(["skip_connect"] * 6)
MIXED = (
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|"
    "+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
)
#: node 1 is dead (none~0), so the ops reading it are skipped: node 2 = conv1x1(x0),
#: node 3 = avg_pool(x0) + node 2.
DEAD_NODE = (
    "|none~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|skip_connect~2|"
)

CELLS = 3 * nb201.CELLS_PER_STAGE
#: stem conv + 2 reduction blocks x (two 3x3 convs + one 1x1 conv)
FIXED_CONVS = 1 + 2 * 3


def _kinds(arch: str, runtime: str = "tflite-gpu") -> Counter:
    return Counter(k.kind for k in plan(parse_graph(nb201.build(arch)), runtime).kernels)


@pytest.mark.parametrize("arch", [ALL_NONE, ALL_CONV3, ALL_SKIP, MIXED, DEAD_NODE])
def test_graphs_are_valid_onnx(arch):
    model = nb201.build(arch, weights="zeros")
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type.shape
    assert [d.dim_value for d in out.dim] == [1, nb201.CLASSES]
    assert model.doc_string == arch


def test_graph_only_export_parses_like_the_zoo():
    g = parse_graph(nb201.build(MIXED))
    assert dict(g.inputs)["input"] == nb201.INPUT_SHAPE
    stripped = sum(t.ByteSize() for t in nb201.build(MIXED).graph.initializer)
    full = sum(t.ByteSize() for t in nb201.build(MIXED, weights="zeros").graph.initializer)
    assert stripped < full / 100


def test_all_none_is_stem_reductions_and_head():
    kinds = _kinds(ALL_NONE)
    assert kinds == {"conv": FIXED_CONVS, "pool_avg": 2, "pool_global": 1, "fc": 1}
    assert nb201.cell_counts(ALL_NONE).live is False


def test_all_conv3x3_runs_six_convs_per_cell():
    kinds = _kinds(ALL_CONV3)
    assert kinds == {"conv": FIXED_CONVS + 6 * CELLS, "pool_avg": 2, "pool_global": 1, "fc": 1}
    model = nb201.build(ALL_CONV3)
    ops = Counter(n.op_type for n in model.graph.node)
    # per cell: 6 ReLU->Conv->BN and 3 Adds (node 2 sums two terms, node 3 three)
    assert ops["Conv"] == FIXED_CONVS + 6 * CELLS
    assert ops["Add"] == 3 * CELLS + 2
    assert ops["Relu"] == 6 * CELLS + 2 + 1


def test_all_skip_launches_only_adds_in_cells():
    model = nb201.build(ALL_SKIP)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["Conv"] == FIXED_CONVS
    assert ops["Add"] == 3 * CELLS + 2


@pytest.mark.parametrize("arch", [MIXED, DEAD_NODE, ALL_CONV3, ALL_NONE])
def test_kernel_counts_follow_cell_counts(arch):
    c = nb201.cell_counts(arch)
    kinds = _kinds(arch)
    assert kinds["conv"] == FIXED_CONVS + CELLS * (c.conv1x1 + c.conv3x3)
    assert kinds["pool_avg"] == 2 + CELLS * c.avg_pool
    ops = Counter(n.op_type for n in nb201.build(arch).graph.node)
    assert ops["Add"] == 2 + CELLS * c.adds


def test_dead_node_ops_are_skipped():
    assert nb201.cell_counts(DEAD_NODE) == nb201.CellCounts(
        conv1x1=1, conv3x3=0, avg_pool=1, adds=1, live=True
    )


def test_flops_grow_with_convs():
    def flops(arch):
        return sum(layer.flops for layer in parse_graph(nb201.build(arch)).layers)

    # nb201.md: 10-220 MFLOPs in multiply-adds (the all-none net ~8); leti counts multiply
    # and add separately
    assert 5e6 <= flops(ALL_NONE) / 2 < flops(MIXED) / 2 < flops(ALL_CONV3) / 2 <= 230e6


def test_arch_strings_round_trip_and_enumerate_deterministically():
    archs = list(nb201.all_archs())
    assert len(archs) == nb201.N_ARCHS == 15_625 == len(set(archs))
    assert archs[0] == ALL_NONE
    assert ALL_CONV3 in archs and MIXED in archs
    for i in (0, 1, 777, 15_624):
        assert nb201.arch_at(i) == archs[i]
        assert nb201.arch_string(nb201.parse_arch(archs[i])) == archs[i]
    sample = nb201.sample_archs(500, seed=0)
    assert len(set(sample)) == 500 and sample == nb201.sample_archs(500, seed=0)
    assert sample != nb201.sample_archs(500, seed=1)
    with pytest.raises(ValueError):
        nb201.parse_arch("|nor_conv_3x3~1|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_family_consistency_scores_a_shipped_estimator():
    from leti.predict.estimator import Estimator

    archs = [ALL_NONE, ALL_CONV3, MIXED, DEAD_NODE, ALL_SKIP]
    est = Estimator.load("snapdragon855")
    fc = family_consistency(est, archs, nb201.build_graphs(archs))
    s = fc.scores()
    assert s["archs"] == 5 and -1 <= s["tau_total_kernel_sum"] <= 1
    assert np.all(fc.totals > 0) and np.all(fc.kernel_sums > 0)
    assert s["graph_term_ms"]["min"] <= s["graph_term_ms"]["median"] <= s["graph_term_ms"]["max"]
    assert fc.totals[archs.index(ALL_CONV3)] > fc.totals[archs.index(ALL_NONE)]
