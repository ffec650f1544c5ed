"""Physical expectations of the shipped models, not fitted numbers (issue 9's plausibility
suite): work that grows must cost more, in proportion; nothing that computes is free; the
interval widens where the model knows less.

Where an end-to-end total is compared, remember it includes what the structural graph stage
charges per inference (on Snapdragon 855 / TFLite about 0.9 ms: input upload, read-back,
queue), so single-op graphs compare their layer's own cost.
"""

from __future__ import annotations

import pytest

import leti
from tests.plausibility_graphs import elementwise_only, fully_connected, separable_net

SOC = "snapdragon855"


@pytest.fixture(scope="module")
def est():
    return leti.Estimator.load(SOC)


def _layer_ms(pred, op: str) -> float:
    return sum(lt.ms for lt in pred.layers if lt.op == op)


def _relative_width(pred) -> float:
    lo, hi = pred.interval_ms
    return hi / lo


def test_the_shipped_model_prices_kernels_analytically(est) -> None:
    assert type(est.kernels).__name__ == "KernelCosts"


def test_batch_8_costs_3_to_10_times_batch_1(est) -> None:
    one, eight = est.predict(separable_net(batch=1)), est.predict(separable_net(batch=8))
    assert 3.0 <= eight.total_ms / one.total_ms <= 10.0


def test_2048_px_costs_4_to_16_times_640_px(est) -> None:
    small, large = est.predict(separable_net(size=640)), est.predict(separable_net(size=2048))
    assert 4.0 <= large.total_ms / small.total_ms <= 16.0


def test_fc_with_19x_the_weights_costs_at_least_6x(est) -> None:
    small, large = (
        est.predict(fully_connected(2048, 1000)),
        est.predict(fully_connected(9216, 4096)),
    )
    assert _layer_ms(large, "MatMul") >= 6.0 * _layer_ms(small, "MatMul")
    assert large.total_ms > small.total_ms


def test_197_row_matmul_costs_at_least_4x_one_row(est) -> None:
    one, many = (
        est.predict(fully_connected(768, 768, 1)),
        est.predict(fully_connected(768, 768, 197)),
    )
    assert _layer_ms(many, "MatMul") >= 4.0 * _layer_ms(one, "MatMul")


def test_an_elementwise_only_graph_costs_more_than_nothing(est) -> None:
    pred = est.predict(elementwise_only())
    assert pred.total_ms > 0 and not pred.unsupported
    standalone = [lt for lt in pred.layers if lt.kernel == "standalone"]
    assert len(standalone) == 3
    assert all(lt.ms > 0 and lt.priced == "analytic" for lt in standalone)
    assert any("priced analytically" in note for note in pred.notes)


def test_the_interval_widens_outside_the_training_sizes(est) -> None:
    at_224, at_2048 = est.predict(separable_net(size=224)), est.predict(separable_net(size=2048))
    assert _relative_width(at_2048) >= 1.5 * _relative_width(at_224)
    assert any("outside the sizes" in note for note in at_2048.notes)


def test_totals_grow_monotonically_with_resolution(est) -> None:
    totals = [est.predict(separable_net(size=s)).total_ms for s in (64, 128, 224, 448, 896)]
    assert all(b > a for a, b in zip(totals, totals[1:], strict=False))


def _priced(pred) -> None:
    assert pred.total_ms > 0 and not pred.unsupported, pred.unsupported
    assert pred.kernel_sum_ms >= 0
    assert all(lt.ms >= 0 for lt in pred.layers if lt.kernel != "graph")


def test_new_op_families_price_above_zero_with_nothing_unsupported(est) -> None:
    from tests import test_kernels as graphs

    vit = est.predict(graphs._vit_block())
    _priced(vit)
    assert any(lt.priced == "analytic" for lt in vit.layers)
    for model in (
        graphs._rnn("LSTM", seq=20, batch=1, inp=32, hidden=64, dirs=1),
        graphs._rnn("GRU", seq=20, batch=1, inp=32, hidden=64, dirs=2),
        graphs._conv3d(frames=16, kd=3),
    ):
        _priced(est.predict(model))


def test_a_3d_conv_over_16_frames_costs_more_than_the_2d_conv_over_one(est) -> None:
    from tests import test_kernels as graphs

    one = est.predict(graphs._conv3d(frames=1, kd=1))
    many = est.predict(graphs._conv3d(frames=16, kd=1))
    assert many.kernel_sum_ms >= 4.0 * one.kernel_sum_ms


def test_quantized_graphs_are_priced_as_float_and_say_so(est) -> None:
    from tests import test_kernels as graphs

    test = graphs.test_qoperator_conv_and_matmul_keep_their_quantized_name
    assert test is not None  # the QOperator graph is built inside that test; QDQ below
    wq = graphs.helper.make_tensor("wq", graphs.TensorProto.INT8, [8, 8, 3, 3], [1] * 576)
    inits = [*graphs._quant_params("x"), *graphs._quant_params("w", graphs.TensorProto.INT8), wq]
    nodes = [
        graphs.helper.make_node("QuantizeLinear", ["x", "x.s", "x.z"], ["xq"], name="q"),
        graphs.helper.make_node("DequantizeLinear", ["xq", "x.s", "x.z"], ["xd"], name="dq"),
        graphs.helper.make_node("DequantizeLinear", ["wq", "w.s", "w.z"], ["wd"], name="dq_w"),
        graphs.helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    pred = est.predict(graphs._graph(nodes, {"x": graphs.SHAPE}, inits))
    _priced(pred)
    assert any("quantized ops" in note for note in pred.notes)
