"""The cost model's parts on synthetic data: analytic x efficiency kernels, the structural graph
stage, the interval widening. Synthetic numbers, real code paths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from leti.core import socs
from leti.frontend.features import GRAPH_FEATURES
from leti.models.kernel_cost import KernelCosts, kernel_work
from leti.models.overhead import (
    FAMILY_TAU_MIN,
    MIN_DISPATCH_MS,
    GraphOverhead,
    family_tau,
    load_graph_stage,
)
from leti.models.uncertainty import widening

HW = socs.resolve("snapdragon855")


def _convs(n: int, rng: np.random.Generator, scale: float = 1.0) -> pd.DataFrame:
    h = rng.choice([7, 14, 28, 56], n) * scale
    c = rng.choice([32, 64, 128], n)
    return pd.DataFrame(
        {
            "kind": "conv",
            "h_in": h,
            "c_in": c,
            "h_out": h,
            "w_out": h,
            "c_out": c,
            "kernel": 3,
            "stride": 1,
            "groups": 1,
            "fused": "",
        }
    )


@pytest.fixture(scope="module")
def costs() -> tuple[KernelCosts, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = _convs(300, rng)
    model = KernelCosts.for_hardware(HW, n_estimators=40)
    analytic = model.analytic_ms(rows)
    # a synthetic GPU at 40% of its analytic speed, with noise
    latency = analytic / 0.4 * rng.uniform(0.95, 1.05, len(rows))
    return model.fit(rows, latency), rows


def test_work_scales_with_batch_and_honours_overrides() -> None:
    rows = _convs(3, np.random.default_rng(1))
    _, flops, moved = kernel_work(rows)
    _, flops8, moved8 = kernel_work(rows.assign(batch=8))
    np.testing.assert_allclose(flops8, 8 * flops)
    assert (moved8 > moved).all() and (moved8 < 8 * moved).all()  # weights are read once
    _, own, own_bytes = kernel_work(rows.assign(work_flops=1e9, work_bytes=4e6))
    np.testing.assert_allclose(own, 1e9)
    np.testing.assert_allclose(own_bytes, 2e6)  # the front end counts 4 bytes, FP16 moves 2


def test_efficiency_is_held_at_the_edge_outside_the_training_range(costs) -> None:
    model, rows = costs
    big = _convs(20, np.random.default_rng(2), scale=16)  # 16x the largest training size
    ratio = model.predict(big) / model.analytic_ms(big)
    edge = model.predict(rows) / model.analytic_ms(rows)
    assert ratio.min() >= 0.8 * edge.min() and ratio.max() <= 1.25 * edge.max()
    assert (model.extrapolation(big) > 0).all() and (model.extrapolation(rows) == 0).all()


def test_kernel_costs_round_trip_without_pickle(costs, tmp_path) -> None:
    model, rows = costs
    files = model.save(tmp_path)
    again = KernelCosts.load(tmp_path, files)
    np.testing.assert_array_equal(again.predict(rows), model.predict(rows))
    meta = json.loads((tmp_path / files["_cost"]).read_text())
    assert meta["fp16_gflops"] == HW.fp16_gflops and "conv" in meta["feature_ranges"]
    assert not list(tmp_path.glob("*.pkl"))


def _graph_rows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Graph-feature rows and their end-to-end times under known structural terms."""
    idx = {name: i for i, name in enumerate(GRAPH_FEATURES)}
    x = np.zeros((n, len(GRAPH_FEATURES)))
    ksum = rng.uniform(1, 100, n)
    x[:, idx["log_kernel_sum"]] = np.log(ksum)
    x[:, idx["n_kernels"]] = rng.integers(20, 200, n)
    x[:, idx["n_overhead"]] = rng.integers(0, 10, n)
    x[:, idx["log_overhead_elems"]] = np.log1p(rng.uniform(0, 2e6, n))
    e2e = 1.1 * ksum + 0.01 * x[:, idx["n_kernels"]] + 0.8
    return x, e2e


def test_structural_stage_recovers_its_terms_and_keeps_its_floors() -> None:
    x, e2e = _graph_rows(80, np.random.default_rng(3))
    ksum = np.exp(x[:, 0])
    stage = GraphOverhead.for_hardware(HW).fit(x, np.log(e2e / ksum))
    a, per_kernel, per_op, per_melem, per_inference = stage.coef
    assert a == pytest.approx(1.1, rel=0.05) and per_inference == pytest.approx(0.8, rel=0.2)
    assert per_kernel == pytest.approx(0.01, rel=0.3)
    assert per_op >= MIN_DISPATCH_MS and per_melem >= stage.floors()[3] > 0
    np.testing.assert_allclose(stage.total_ms(x), ksum * np.exp(stage.predict(x)))


def test_structural_stage_round_trips_and_old_correctors_still_load(tmp_path) -> None:
    x, e2e = _graph_rows(40, np.random.default_rng(4))
    stage = GraphOverhead.for_hardware(HW).fit(x, np.log(e2e / np.exp(x[:, 0])))
    stage.save(tmp_path / "corrector.json")
    again = load_graph_stage(tmp_path / "corrector.json")
    assert isinstance(again, GraphOverhead)
    np.testing.assert_array_equal(again.predict(x), stage.predict(x))
    (tmp_path / "old.json").write_text(
        json.dumps({"type": "constant", "features": list(GRAPH_FEATURES), "offset": 0.2})
    )
    assert load_graph_stage(tmp_path / "old.json").predict(x[:2]) == pytest.approx([0.2, 0.2])


def _family(n: int, rng: np.random.Generator) -> np.ndarray:
    """A NAS-like family: small graphs whose kernel counts barely track their kernel sums."""
    idx = {name: i for i, name in enumerate(GRAPH_FEATURES)}
    x = np.zeros((n, len(GRAPH_FEATURES)))
    x[:, idx["log_kernel_sum"]] = np.log(rng.uniform(0.5, 3.0, n))
    x[:, idx["n_kernels"]] = rng.integers(10, 100, n)
    return x


def test_count_terms_are_capped_where_they_would_reorder_a_nas_family() -> None:
    rng = np.random.default_rng(5)
    x, e2e = _graph_rows(80, rng)
    family = _family(200, rng)
    y = np.log(e2e / np.exp(x[:, 0]))
    free = GraphOverhead.for_hardware(HW).fit(x, y)
    assert family_tau(free, family) < FAMILY_TAU_MIN  # 0.01 ms x 90 kernels vs 0.5-3 ms sums
    capped = GraphOverhead.for_hardware(HW).fit(x, y, family=family)
    assert 0 <= capped.count_scale < 1
    assert capped.coef[1] < free.coef[1]
    assert family_tau(capped, family) >= FAMILY_TAU_MIN == pytest.approx(0.95)
    assert capped.family_tau == pytest.approx(family_tau(capped, family))
    # the cap costs fit on the training graphs, but only a little: the other terms refit
    err = np.abs(capped.predict(x) - y).mean()
    assert err > np.abs(free.predict(x) - y).mean() and err < 0.1
    # a family the free fit already keeps in order leaves the terms alone
    ordered = GraphOverhead.for_hardware(HW).fit(x, y, family=x)
    assert ordered.count_scale == 1.0
    np.testing.assert_array_equal(ordered.coef, free.coef)


def test_capped_stage_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(6)
    x, e2e = _graph_rows(60, rng)
    stage = GraphOverhead.for_hardware(HW).fit(x, np.log(e2e / np.exp(x[:, 0])), _family(50, rng))
    stage.save(tmp_path / "corrector.json")
    again = load_graph_stage(tmp_path / "corrector.json")
    assert again.count_scale == stage.count_scale and again.family_tau == stage.family_tau
    np.testing.assert_array_equal(again.coef, stage.coef)


def test_interval_widens_with_distance_and_analytic_share() -> None:
    ms = np.array([1.0, 1.0])
    inside = widening(ms, np.zeros(2), analytic_ms=0.0, total_ms=2.0)
    assert inside.log_units == 0 and not inside.reasons
    near = widening(ms, np.array([0.5, 0.0]), 0.0, 2.0)
    far = widening(ms, np.array([5.0, 5.0]), 0.0, 2.0)
    assert 0 < near.log_units < far.log_units and far.extrapolated_share == 1.0
    analytic = widening(ms, np.zeros(2), analytic_ms=2.0, total_ms=2.0)
    assert analytic.log_units > 0 and analytic.analytic_share == 1.0
    assert any("analytically" in r for r in analytic.reasons)
