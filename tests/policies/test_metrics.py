"""RouteLLM metric definitions on synthetic data with known answers."""

import numpy as np
import pytest

from policies import metrics


def _synthetic(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    small = (rng.random(n) < 0.6).astype(float)
    large = np.maximum(small, (rng.random(n) < 0.5).astype(float))  # large never worse here
    return small, large


def test_pgr_is_zero_with_no_large_calls_and_one_with_all():
    small, large = _synthetic()
    curve = metrics.gain_curve(np.random.default_rng(1).random(len(small)), small, large)
    assert curve.pgr(0.0) == pytest.approx(0.0)
    assert curve.pgr(1.0) == pytest.approx(1.0)


def test_hand_computed_example():
    # gains (large - small): 1, 0, 1, 0; the router ranks the two winners first.
    small = np.array([0.0, 1.0, 0.0, 1.0])
    large = np.array([1.0, 1.0, 1.0, 1.0])
    curve = metrics.gain_curve([0.9, 0.1, 0.8, 0.2], small, large)
    assert curve.pgr(0.25) == pytest.approx(0.5)
    assert curve.pgr(0.5) == pytest.approx(1.0)
    assert curve.cpt(0.5) == pytest.approx(0.25)
    assert curve.cpt(1.0) == pytest.approx(0.5)
    # PGR rises linearly to 1 at x=0.5, then stays: area = 0.25 + 0.5
    assert metrics.apgr(curve) == pytest.approx(0.75, abs=1e-9)


def test_oracle_beats_random_which_is_about_half():
    small, large = _synthetic()
    oracle = metrics.apgr(metrics.gain_curve(large - small, small, large))
    rand = metrics.random_apgr(small, large, seeds=10)
    assert rand == pytest.approx(0.5, abs=0.03)
    assert oracle > rand + 0.3


def test_always_wrong_router_scores_below_random():
    small, large = _synthetic()
    wrong = metrics.apgr(metrics.gain_curve(small - large, small, large))
    assert wrong < metrics.random_apgr(small, large) - 0.3


def test_constant_router_is_exactly_half_whatever_the_row_order():
    small, large = _synthetic()
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(small))
        curve = metrics.gain_curve(np.zeros(len(small)), small[order], large[order])
        assert metrics.apgr(curve) == pytest.approx(0.5, abs=1e-9)


def test_cpt_is_monotone_in_the_target():
    small, large = _synthetic()
    scores = (large - small) + np.random.default_rng(2).normal(0, 0.7, len(small))
    curve = metrics.gain_curve(scores, small, large)
    cpts = [curve.cpt(p) for p in np.linspace(0.05, 1.0, 20)]
    assert all(a <= b + 1e-12 for a, b in zip(cpts, cpts[1:]))
    assert curve.pgr(curve.cpt(0.8)) == pytest.approx(0.8, abs=1e-9)


def test_summary_has_the_reported_keys():
    small, large = _synthetic(500)
    out = metrics.summary(large - small, small, large)
    for key in ("apgr", "cpt50", "cpt80", "pgr_at_50", "random_apgr"):
        assert key in out
    assert out["cpt50"] <= out["cpt80"]


def test_equal_models_are_rejected():
    with pytest.raises(ValueError):
        metrics.gain_curve([0.1, 0.2], [1.0, 0.0], [1.0, 0.0])
