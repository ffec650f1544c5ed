"""The ceilings of the ncnn evaluation (`leti evaluate --transfer`): how much of a bar the
public timings can support, on synthetic tables whose answer is known."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from leti.evaluate import transfer as et
from leti.evaluate.reports import _ncnn_ceiling_section
from leti.models import class_scales
from tests.test_class_scales import TRUE, prior_at, random_terms

N = 30


def table(gid: str, measured: np.ndarray, models=None, terms=None, timings=None):
    models = list(models if models is not None else (f"m{i}" for i in range(len(measured))))
    frame = pd.DataFrame(
        {
            "model": models,
            "measured": measured,
            "transfer": measured / 3.0,
            "analytic_share": np.zeros(len(measured)),
        }
    )
    terms = terms if terms is not None else random_terms(len(measured))
    target = SimpleNamespace(gpu=SimpleNamespace(id=gid), timings=timings)
    return et.NcnnTable(target, frame, {"transfer": terms})


def cost(n: int = N, seed: int = 1) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).uniform(0, 4, n))


def test_nearest_gpu_ceiling_finds_the_gpu_that_predicts_it():
    c = cost()
    noise = np.exp(np.random.default_rng(2).normal(0, 0.5, N))
    tables = [
        table("a", c),
        table("b", 2 * c**0.9),  # a power law of a's times: predicts a exactly
        table("c", c * noise),  # a's times with noise: predicts a badly
    ]
    out = et.ncnn_nearest_gpu_ceiling(tables, min_shared=20)
    assert out["a"]["via"] == "b" and out["a"]["acc20"] == pytest.approx(1.0)
    assert out["a"]["shared_models"] == N
    assert out["c"]["acc20"] < 0.8  # its noise is its own: no other GPU knows it


def test_nearest_gpu_ceiling_needs_enough_shared_models():
    c = cost()
    tables = [table("a", c), table("b", 2 * c[:10], models=[f"m{i}" for i in range(10)])]
    assert et.ncnn_nearest_gpu_ceiling(tables, min_shared=20) == {}


def test_in_sample_fit_explains_timings_its_terms_can_express():
    terms = random_terms(N)
    exact = class_scales.predict(terms, TRUE)
    tb = table("a", exact, terms=terms)
    fit = et.ncnn_in_sample(tb, prior_at(TRUE), 0.5)
    assert fit["acc20"] == pytest.approx(1.0)
    # timings with noise the terms cannot express: the fit explains fewer of them
    noisy = exact * np.exp(np.random.default_rng(3).normal(0, 0.6, N))
    assert et.ncnn_in_sample(table("a", noisy, terms=terms), prior_at(TRUE), 0.5)["acc20"] < 0.7


def test_repeat_agreement_counts_models_timed_twice():
    spread = np.r_[np.full(12, 1.05), np.full(4, 1.5), np.ones(10)]
    timings = pd.DataFrame(
        {"model": [f"m{i}" for i in range(26)], "repeats": [2] * 16 + [1] * 10, "spread": spread}
    )
    rep = et.repeat_agreement(SimpleNamespace(timings=timings))
    assert rep == {"models": 16, "agree20": 0.75, "median_spread": pytest.approx(1.05)}
    # too few repeated models to say anything
    assert et.repeat_agreement(SimpleNamespace(timings=timings.iloc[4:])) is None


def test_report_shows_the_ceilings_beside_leave_one_model_out():
    ceiling = {
        "in_sample": {"acc20": 0.7, "mape": 0.2},
        "nearest_gpu": {"acc20": 0.84, "via": "adreno640", "shared_models": 25},
        "repeats": None,
    }
    result = SimpleNamespace(
        target=SimpleNamespace(gpu=SimpleNamespace(id="adreno660")),
        loo={"all": {"acc20": 0.69}},
        ceiling=ceiling,
    )
    lines = _ncnn_ceiling_section(SimpleNamespace(ncnn=[result]))
    assert "### Ceilings: what these timings allow" in lines
    assert "| adreno660 | 69% | 70% | 20% | 84% (adreno640, 25) | – |" in lines
    assert _ncnn_ceiling_section(SimpleNamespace(ncnn=[SimpleNamespace(ceiling=None)])) == []
