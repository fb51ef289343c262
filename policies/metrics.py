"""Router quality metrics, as defined by RouteLLM (Ong et al., 2024).

A router with scores s sends the top-x share of prompts (highest s first) to the large model:

  quality(x) = mean over prompts of (large_score if routed large else small_score)
  PGR(x)     = (quality(x) - quality(0)) / (quality(1) - quality(0))    performance gap recovered
  APGR       = area under PGR(x) for x in [0, 1] (trapezoid on a 0.01 grid, as RouteLLM does)
  CPT(p)     = smallest share of large calls with PGR >= p                 call-performance threshold

Since quality(x) - quality(0) is the summed gain (large - small) of the routed prompts divided by
N, PGR(x) is the routed prompts' share of the total gain. Prompts with equal scores are routed as
a block, and a partly routed block counts its mean gain (the expectation under random
tie-breaking), so a constant router scores exactly 0.5 and results never depend on row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARE_GRID = np.linspace(0.0, 1.0, 101)

# numpy >= 2 renamed trapz to trapezoid; support both (pyproject allows numpy 1.26).
_trapezoid = getattr(np, "trapezoid", None) or np.trapz


@dataclass(frozen=True)
class GainCurve:
    """Cumulative gain as routed share grows: piecewise linear through (positions, gains)."""

    positions: np.ndarray  # shares in [0, 1] at tie-block boundaries, starting at 0
    gains: np.ndarray  # PGR at those shares
    total_gain: float  # sum(large - small); PGR is undefined when this is 0

    def pgr(self, share) -> np.ndarray | float:
        """PGR at one share or an array of shares."""
        return np.interp(share, self.positions, self.gains)

    def cpt(self, target: float) -> float:
        """Smallest share with PGR >= target (linear inside a block); 1.0 if never reached."""
        reached = np.flatnonzero(self.gains >= target - 1e-12)
        if len(reached) == 0:
            return 1.0
        i = int(reached[0])
        if i == 0:
            return 0.0
        x0, x1 = self.positions[i - 1], self.positions[i]
        g0, g1 = self.gains[i - 1], self.gains[i]
        return float(x0 + (x1 - x0) * (target - g0) / (g1 - g0))


def gain_curve(scores, small_scores, large_scores) -> GainCurve:
    """Build the PGR curve of a router; raises ValueError if large and small are equally good."""
    scores = np.asarray(scores, dtype=np.float64)
    gain = np.asarray(large_scores, dtype=np.float64) - np.asarray(small_scores, dtype=np.float64)
    if scores.shape != gain.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError("scores, small_scores and large_scores must be equal-length 1-d arrays")
    total = float(gain.sum())
    if abs(total) < 1e-12:
        raise ValueError("PGR is undefined: large and small models have the same mean quality")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    cumulative = np.concatenate([[0.0], np.cumsum(gain[order])])
    # Boundaries between tie blocks (and both ends); within a block the gain accrues linearly.
    block_ends = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    boundaries = np.concatenate([[0], block_ends, [len(scores)]])
    return GainCurve(
        positions=boundaries / len(scores),
        gains=cumulative[boundaries] / total,
        total_gain=total,
    )


def apgr(curve: GainCurve) -> float:
    """Area under the PGR curve on SHARE_GRID (trapezoid)."""
    return float(_trapezoid(curve.pgr(SHARE_GRID), SHARE_GRID))


def random_apgr(small_scores, large_scores, seeds: int = 10) -> float:
    """Mean APGR of a router with uniformly random scores over ``seeds`` seeds (about 0.5)."""
    n = len(small_scores)
    results = []
    for seed in range(seeds):
        # A seed sequence of its own, so the "random" router cannot be correlated with data
        # that someone generated with the same small integer seeds.
        scores = np.random.default_rng([seed, 0x5EED]).random(n)
        results.append(apgr(gain_curve(scores, small_scores, large_scores)))
    return float(np.mean(results))


def summary(scores, small_scores, large_scores, random_seeds: int = 10) -> dict:
    """The numbers ``policies.evaluate`` reports for one set of routed prompts."""
    curve = gain_curve(scores, small_scores, large_scores)
    small = np.asarray(small_scores, dtype=np.float64)
    large = np.asarray(large_scores, dtype=np.float64)
    return {
        "n": int(len(small)),
        "apgr": round(apgr(curve), 4),
        "cpt50": round(curve.cpt(0.5), 4),
        "cpt80": round(curve.cpt(0.8), 4),
        "pgr_at_50": round(float(curve.pgr(0.5)), 4),
        "random_apgr": round(random_apgr(small, large, random_seeds), 4),
        "small_quality": round(float(small.mean()), 4),
        "large_quality": round(float(large.mean()), 4),
    }
