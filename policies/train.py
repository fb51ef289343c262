"""Train the complexity classifier and write its weights and calibration.

    python -m policies.train [--data DIR] [--out DIR]

Default data: ../shared/data/routing next to the repository if it exists, else the in-repo
sample (policies/data/). The authored chit-chat rows (policies/data/synthetic/) are added to the
training side only. Default output: policies/weights/ (the shipped weights).

Protocol (all splits are seeded, so a rerun on the same data writes the same weights):
1. A calibration split (15% of rows, chosen by a hash of the row id) is set aside. The model
   never trains on it; its scores there give the threshold tables (calibration.py) and the
   held-out metrics recorded in the metadata.
2. The L2 strength is chosen on an inner validation split of the remaining rows (validation
   cross-entropy), then the model is refit on all of them with that strength.
3. When rows have topics (MMLU subjects), step 2 runs twice, on the raw label and on the label
   shrunk towards each subject's mean gain (--topic-shrink, fit.py), and the weights are the mean
   of the two fits' logits (model.ModelParams.mean_of).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from policies import metrics, routing_data
from policies.calibration import Calibration
from policies.classifier import WEIGHTS_DIR, ComplexityClassifier
from policies.features import FeatureConfig, Featurizer
from policies.fit import FitConfig, fit, win_rate_targets
from policies.model import ModelParams, sigmoid
from policies.routing_data import FeatureMatrix, RoutingExample

CALIBRATION_PERCENT = 15
# Each authored chit-chat row counts this many times: ~100 rows among ~18k benchmark rows are
# otherwise too few to move the dense part of the model for very short prompts.
EXTRA_ROW_WEIGHT = 5.0
DEFAULT_L2_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
INNER_VALIDATION_SHARE = 0.15


def is_calibration_row(row_id: str) -> bool:
    """Whether a row belongs to the calibration split (stable across runs, machines and files)."""
    return zlib.crc32(row_id.encode("utf-8")) % 100 < CALIBRATION_PERCENT


def calibration_split(examples: list[RoutingExample], seed: int = 0) -> tuple[np.ndarray, str]:
    """Boolean mask of calibration rows, and the rule that chose them.

    Normally the id hash (is_calibration_row). Data drawn from one side of that split, like the
    in-repo sample (taken from the shipped model's calibration rows), falls back to a seeded
    random 15% so that training still has rows on both sides.
    """
    if len(examples) < 2:
        raise ValueError("need at least two rows to train and calibrate")
    mask = np.array([is_calibration_row(ex.id) for ex in examples])
    if 0.05 <= mask.mean() <= 0.5:
        return mask, f"crc32(id) % 100 < {CALIBRATION_PERCENT}"
    n_holdout = max(1, int(round(len(examples) * CALIBRATION_PERCENT / 100)))
    mask = np.zeros(len(examples), dtype=bool)
    mask[np.random.default_rng(seed).permutation(len(examples))[:n_holdout]] = True
    return mask, f"seeded random {CALIBRATION_PERCENT}% (seed {seed}): data not spread over the id-hash split"


def _cross_entropy(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    p = np.clip(sigmoid(logits), 1e-7, 1 - 1e-7)
    return float(-np.average(targets * np.log(p) + (1 - targets) * np.log(1 - p), weights=weights))


def logits_of(params: ModelParams, matrix: FeatureMatrix) -> np.ndarray:
    """Model logits for every row of a feature matrix."""
    return params.logits(matrix.dense, matrix.indptr, matrix.indices, matrix.values)


@dataclass(frozen=True)
class Selection:
    """Outcome of fit_with_selection: the fitted parameters and how the L2 strengths were chosen."""

    params: ModelParams
    l2_sparse: float  # the raw-label member's
    validation_loss: dict[float, float]
    # The topic-shrunk member's, when there is one (rows with topics and topic_shrink != 1).
    topic_l2_sparse: float | None = None
    topic_validation_loss: dict[float, float] = field(default_factory=dict)


def _select_and_fit(matrix, targets, n_buckets, fit_config, l2_grid, seed, weights):
    """(params, chosen l2, validation loss per l2) for one set of targets."""
    losses: dict[float, float] = {}
    if len(l2_grid) > 1:
        order = np.random.default_rng(seed).permutation(len(targets))
        n_val = max(1, int(round(INNER_VALIDATION_SHARE * len(targets))))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
        train_m, val_m = matrix.rows(train), matrix.rows(val)
        for l2 in l2_grid:
            params = fit(train_m, targets[train], n_buckets, replace(fit_config, l2_sparse=l2), weights[train])
            losses[l2] = _cross_entropy(logits_of(params, val_m), targets[val], weights[val])
        best = min(losses, key=losses.get)
    else:
        best = l2_grid[0]
    return fit(matrix, targets, n_buckets, replace(fit_config, l2_sparse=best), weights), best, losses


def fit_with_selection(
    matrix: FeatureMatrix,
    small: np.ndarray,
    large: np.ndarray,
    n_buckets: int,
    fit_config: FitConfig = FitConfig(),
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
    seed: int = 0,
    weights: np.ndarray | None = None,
    topics: np.ndarray | None = None,
) -> Selection:
    """Pick l2_sparse on an inner validation split of these rows only, then refit on all of them.

    Nothing outside ``matrix`` is looked at, so cross-validation that calls this per fold stays
    honest: the held-out fold never influences the hyper-parameter. With ``topics`` (one per
    row, "" for none) naming a topic for some rows and fit_config.topic_shrink != 1, a second
    model is fitted the same way on labels shrunk towards each topic's mean gain over these rows
    (fit.win_rate_targets), and the result is the mean of the two models' logits.
    """
    weights = np.ones(len(small)) if weights is None else np.asarray(weights, dtype=np.float64)
    targets = win_rate_targets(small, large)
    params, best, losses = _select_and_fit(matrix, targets, n_buckets, fit_config, l2_grid, seed, weights)
    if topics is None or fit_config.topic_shrink == 1.0 or not np.any(np.asarray(topics) != ""):
        return Selection(params=params, l2_sparse=best, validation_loss=losses)
    shrunk = win_rate_targets(small, large, topics, fit_config.topic_shrink)
    topic_params, topic_best, topic_losses = _select_and_fit(matrix, shrunk, n_buckets, fit_config, l2_grid, seed, weights)
    return Selection(
        params=ModelParams.mean_of([params, topic_params]),
        l2_sparse=best,
        validation_loss=losses,
        topic_l2_sparse=topic_best,
        topic_validation_loss=topic_losses,
    )


def _family_summaries(examples: list[RoutingExample], scores: np.ndarray) -> dict[str, dict]:
    out = {}
    families = np.array([ex.family for ex in examples])
    small, large = routing_data.score_arrays(examples)
    for family in sorted(set(families)):
        rows = families == family
        try:
            out[family] = metrics.summary(scores[rows], small[rows], large[rows])
        except ValueError:  # too few rows for the two models to differ
            out[family] = {"n": int(rows.sum())}
    return out


def train(
    examples: list[RoutingExample],
    feature_config: FeatureConfig = FeatureConfig(),
    fit_config: FitConfig = FitConfig(),
    l2_grid: tuple[float, ...] = DEFAULT_L2_GRID,
    log=lambda msg: None,
    extra_train: list[RoutingExample] = (),
) -> tuple[ComplexityClassifier, dict]:
    """Train on ``examples`` (minus the calibration split); returns the classifier and a report.

    ``extra_train`` rows (the authored chit-chat rows) are only ever trained on, so the
    calibration tables describe the benchmark mix alone.
    """
    started = time.perf_counter()
    featurizer = Featurizer(feature_config)
    holdout_mask, split_rule = calibration_split(examples)
    train_rows = [ex for ex, h in zip(examples, holdout_mask) if not h] + list(extra_train)
    heldout_rows = [ex for ex, h in zip(examples, holdout_mask) if h]
    log(f"featurising {len(examples)} rows ({len(heldout_rows)} held out for calibration)")
    train_m = routing_data.featurize_all(train_rows, featurizer)
    heldout_m = routing_data.featurize_all(heldout_rows, featurizer)
    small, large = routing_data.score_arrays(train_rows)
    log(f"fitting (l2 grid {list(l2_grid)})")
    weights = np.concatenate([np.ones(len(train_rows) - len(extra_train)), np.full(len(extra_train), EXTRA_ROW_WEIGHT)])
    selection = fit_with_selection(
        train_m, small, large, featurizer.n_buckets, fit_config, l2_grid, weights=weights,
        topics=routing_data.topic_labels(train_rows),
    )
    log(f"chose l2_sparse={selection.l2_sparse}" + (
        f", topic-shrunk member l2_sparse={selection.topic_l2_sparse}" if selection.topic_l2_sparse is not None else ""))

    heldout_scores = sigmoid(logits_of(selection.params, heldout_m))
    h_small, h_large = routing_data.score_arrays(heldout_rows)
    calibration = Calibration.from_heldout(heldout_scores, h_small, h_large)
    report = {
        "rows": {"train": len(train_rows), "calibration": len(heldout_rows), "extra_train": len(extra_train)},
        "sources": {f: int(n) for f, n in zip(*np.unique([ex.family for ex in examples], return_counts=True))},
        "label": "win rate of large over small, ties half: (1 + gain) / 2, gain = large_score - small_score",
        "members": "one fit on the label" if selection.topic_l2_sparse is None else (
            "mean of the logits of one fit on the label and one with rows of "
            f"{sorted(routing_data.TOPIC_FAMILIES)} shrunk towards their topic's mean gain "
            f"(topic_shrink {fit_config.topic_shrink})"),
        "l2_sparse": selection.l2_sparse,
        "validation_loss": {str(k): round(v, 5) for k, v in selection.validation_loss.items()},
        "topic_member": None if selection.topic_l2_sparse is None else {
            "l2_sparse": selection.topic_l2_sparse,
            "validation_loss": {str(k): round(v, 5) for k, v in selection.topic_validation_loss.items()},
        },
        "heldout": _family_summaries(heldout_rows, heldout_scores),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    metadata = {
        "fit_config": asdict(replace(fit_config, l2_sparse=selection.l2_sparse)),
        "calibration_split": split_rule,
        "training": report,
    }
    classifier = ComplexityClassifier(selection.params, featurizer, calibration, metadata)
    return classifier, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="directory of *.jsonl (or one file)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write the weights")
    parser.add_argument("--extra-data", type=Path, default=routing_data.SYNTHETIC_DATA_DIR,
                        help="rows added to training only (default: the authored chit-chat rows)")
    parser.add_argument("--no-extra-data", action="store_true", help="train on --data alone")
    parser.add_argument("--hash-bits", type=int, default=FeatureConfig().hash_bits)
    parser.add_argument("--l2-grid", type=float, nargs="+", default=list(DEFAULT_L2_GRID))
    parser.add_argument("--no-lexical", action="store_true", help="dense features only (FeatureConfig.dense_only)")
    parser.add_argument("--max-iter", type=int, default=FitConfig().max_iter, help="L-BFGS iterations per fit")
    parser.add_argument("--topic-shrink", type=float, default=FitConfig().topic_shrink,
                        help="weight of a topic row's own outcome against its topic's mean gain (1 = off; see fit.py)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # small problem; leave the other cores to whatever else runs
    data = args.data or routing_data.default_data_dir()

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[train] {msg}", file=sys.stderr, flush=True)

    examples = routing_data.load(data)
    extra = []
    if not args.no_extra_data:
        if args.extra_data.exists():
            extra = routing_data.load(args.extra_data)
        else:  # e.g. an installed wheel without policies/data: say so, the weights will differ
            log(f"no {args.extra_data}; training without the authored chit-chat rows")
    log(f"loaded {len(examples)} rows from {data}, {len(extra)} training-only rows")
    classifier, report = train(
        examples,
        FeatureConfig.dense_only() if args.no_lexical else FeatureConfig(hash_bits=args.hash_bits),
        FitConfig(max_iter=args.max_iter, topic_shrink=args.topic_shrink),
        tuple(args.l2_grid),
        log,
        extra,
    )
    meta_path, arrays_path = classifier.save(args.out)
    size = meta_path.stat().st_size + arrays_path.stat().st_size
    print(json.dumps({"out": str(args.out), "bytes": size, "data": str(data), **report}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
