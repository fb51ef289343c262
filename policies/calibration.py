"""Turning a wanted large-model share (or quality) into a score threshold.

A raw score of 0.6 means little to an operator; "send 30% of traffic to the large model" does.
At training time we score a held-out split that the model never saw and keep two tables:

* ``score_quantiles[i]``: the score above which a share ``SHARE_GRID[i]`` of held-out prompts
  lies, so ``score >= threshold_for_large_share(0.3)`` routes ~30% of traffic large;
* ``pgr[i]``: the performance gap recovered at that share on the same held-out prompts, so a
  quality target can be turned into a share and then into a threshold.

Both hold for traffic that looks like the training mix; a different mix shifts them (the
gateway should watch the realised large share and can re-derive thresholds from its own logs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policies.metrics import SHARE_GRID, gain_curve

# Route large iff score >= threshold. Share 0 needs a threshold no score reaches (scores are <= 1).
ABOVE_ALL_SCORES = float(np.nextafter(1.0, 2.0))


@dataclass(frozen=True)
class Calibration:
    """Held-out score quantiles and PGR, both on SHARE_GRID (share of prompts routed large)."""

    share_grid: np.ndarray  # increasing, 0 .. 1
    score_quantiles: np.ndarray  # non-increasing: threshold for each share
    pgr: np.ndarray  # held-out PGR at each share
    n_heldout: int

    @classmethod
    def from_heldout(cls, scores, small_scores, large_scores) -> "Calibration":
        """Build the tables from held-out scores in [0, 1] and both models' quality."""
        scores = np.asarray(scores, dtype=np.float64)
        # The share routed large at threshold q(x) is the share of scores >= q(x) = 1-x quantile.
        quantiles = np.quantile(scores, 1.0 - SHARE_GRID, method="linear")
        quantiles[0] = ABOVE_ALL_SCORES
        quantiles = np.minimum.accumulate(quantiles)  # guard against float noise
        try:
            pgr = gain_curve(scores, small_scores, large_scores).pgr(SHARE_GRID)
        except ValueError:  # both models equally good on the held-out split: no quality signal
            pgr = SHARE_GRID.copy()
        return cls(SHARE_GRID.copy(), quantiles, np.asarray(pgr, dtype=np.float64), int(len(scores)))

    def to_dict(self) -> dict:
        return {
            "share_grid": [round(float(x), 4) for x in self.share_grid],
            "score_quantiles": [float(x) for x in self.score_quantiles],
            "pgr": [round(float(x), 5) for x in self.pgr],
            "n_heldout": self.n_heldout,
        }

    @classmethod
    def from_dict(cls, data) -> "Calibration":
        return cls(
            share_grid=np.asarray(data["share_grid"], dtype=np.float64),
            score_quantiles=np.asarray(data["score_quantiles"], dtype=np.float64),
            pgr=np.asarray(data["pgr"], dtype=np.float64),
            n_heldout=int(data["n_heldout"]),
        )

    def threshold_for_large_share(self, share: float) -> float:
        """Score threshold that routes ``share`` of (training-mix) traffic to the large model."""
        share = float(np.clip(share, 0.0, 1.0))
        if share <= 0.0:
            return ABOVE_ALL_SCORES
        if share >= 1.0:
            return 0.0
        return float(np.interp(share, self.share_grid, self.score_quantiles))

    def large_share_for_threshold(self, threshold: float) -> float:
        """Inverse of threshold_for_large_share: expected share of traffic with score >= threshold."""
        # score_quantiles decreases with share; np.interp needs increasing x, so flip both.
        return float(np.interp(threshold, self.score_quantiles[::-1], self.share_grid[::-1]))

    def share_for_quality(self, target_pgr: float) -> float:
        """Smallest share of large calls whose held-out PGR reaches ``target_pgr`` (1.0 if never)."""
        reached = np.flatnonzero(self.pgr >= target_pgr)
        if len(reached) == 0:
            return 1.0
        i = int(reached[0])
        if i == 0:
            return 0.0
        x0, x1, g0, g1 = self.share_grid[i - 1], self.share_grid[i], self.pgr[i - 1], self.pgr[i]
        return float(x0 + (x1 - x0) * (target_pgr - g0) / (g1 - g0))

    def threshold_for_quality(self, target_pgr: float) -> float:
        """Threshold expected to recover ``target_pgr`` of the small->large quality gap."""
        return self.threshold_for_large_share(self.share_for_quality(target_pgr))
