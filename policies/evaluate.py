"""Evaluate the complexity router with RouteLLM's metrics; prints one JSON line.

    python -m policies.evaluate --data FILE.jsonl --json                   shipped weights, all rows
    python -m policies.evaluate --data FILE.jsonl --json --heldout-only    ... only rows the shipped
                                                                            weights never trained on
    python -m policies.evaluate --data FILE.jsonl --json --cv 5            5-fold CV within FILE
    python -m policies.evaluate --data FILE.jsonl --json --cross-source    train on the other
                                                                            *.jsonl next to FILE
    python -m policies.evaluate --data DIR --json --calibration-check      shipped weights: does a
                                                                            large-call share hold?

--calibration-check scores the calibration-split rows of --data (a file or a directory) with the
shipped weights, and 10 times (seeds 0-9) calibrates thresholds for 10%, 30% and 50% large calls
on a random half of them and measures the share on the other half (``max_share_miss``, in
points). It reports no APGR.

Reported: apgr, cpt50, cpt80, pgr_at_50, random_apgr (see metrics.py). With --cv the numbers are
means over folds (each fold: fit on the other folds, with the L2 strength chosen inside them,
then score the fold); ``apgr_folds`` lists each fold's APGR and ``l2_sparse_chosen`` each fold's
L2 strengths (raw-label member, then the topic-shrunk member when the training rows have topics).

The shipped weights were trained on the shared data set minus its calibration split, so scoring
those files with them is optimistic: use --heldout-only, --cv or --cross-source for real numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from policies import metrics, routing_data
from policies.classifier import ComplexityClassifier
from policies.features import FeatureConfig, Featurizer
from policies.fit import FitConfig
from policies.model import sigmoid
from policies.train import DEFAULT_L2_GRID, fit_with_selection, is_calibration_row, logits_of

_FOLD_KEYS = ("apgr", "cpt50", "cpt80", "pgr_at_50", "random_apgr")


def _fit_and_score(train_ex, test_ex, featurizer, fit_config, l2_grid, seed) -> tuple[np.ndarray, list]:
    train_m = routing_data.featurize_all(train_ex, featurizer)
    small, large = routing_data.score_arrays(train_ex)
    topics = routing_data.topic_labels(train_ex)
    selection = fit_with_selection(train_m, small, large, featurizer.n_buckets, fit_config, l2_grid, seed, topics=topics)
    test_m = routing_data.featurize_all(test_ex, featurizer)
    chosen = [selection.l2_sparse] + ([selection.topic_l2_sparse] if selection.topic_l2_sparse is not None else [])
    return sigmoid(logits_of(selection.params, test_m)), chosen


def cross_validate(examples, k: int, featurizer, fit_config, l2_grid, seed: int = 0, extra_train=()) -> dict:
    """K-fold CV over ``examples`` (seeded shuffle); ``extra_train`` rows join every training fold."""
    if k < 2 or k > len(examples):
        raise ValueError(f"--cv needs 2 <= K <= rows, got K={k} for {len(examples)} rows")
    order = np.random.default_rng(seed).permutation(len(examples))
    folds = np.array_split(order, k)
    small, large = routing_data.score_arrays(examples)
    per_fold, l2s = [], []
    pooled = np.zeros(len(examples))
    for i, test in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != i])
        scores, l2 = _fit_and_score(
            [examples[t] for t in train] + list(extra_train), [examples[t] for t in test],
            featurizer, fit_config, l2_grid, seed,
        )
        pooled[test] = scores
        per_fold.append(metrics.summary(scores, small[test], large[test]))
        l2s.append(l2)
    out = {key: round(float(np.mean([f[key] for f in per_fold])), 4) for key in _FOLD_KEYS}
    out["apgr_std"] = round(float(np.std([f["apgr"] for f in per_fold])), 4)
    out["apgr_folds"] = [f["apgr"] for f in per_fold]
    out["apgr_pooled"] = metrics.summary(pooled, small, large)["apgr"]
    out["l2_sparse_chosen"] = l2s
    return out


CHECK_SHARES = (0.1, 0.3, 0.5)


def calibration_check(classifier, examples, seeds: int = 10) -> dict:
    """Calibrate on one half of ``examples``, measure the large-call share on the other half."""
    from policies.calibration import Calibration

    scores = np.array([classifier.score_features(classifier.featurizer.from_text(ex.text)) for ex in examples])
    small, large = routing_data.score_arrays(examples)
    misses = []
    for seed in range(seeds):
        order = np.random.default_rng([seed, 0xCA1]).permutation(len(examples))
        fit_half, test_half = order[: len(order) // 2], order[len(order) // 2 :]
        calibration = Calibration.from_heldout(scores[fit_half], small[fit_half], large[fit_half])
        for share in CHECK_SHARES:
            measured = float(np.mean(scores[test_half] >= calibration.threshold_for_large_share(share)))
            misses.append(abs(measured - share) * 100)
    return {
        "checks": len(misses),
        "shares": list(CHECK_SHARES),
        "max_share_miss": round(max(misses), 2),
        "mean_share_miss": round(float(np.mean(misses)), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="JSONL file to evaluate on")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the only output format)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cv", type=int, metavar="K", help="K-fold cross-validation within --data")
    mode.add_argument("--cross-source", action="store_true", help="train on the other *.jsonl, test on --data")
    mode.add_argument("--heldout-only", action="store_true", help="shipped weights, calibration-split rows only")
    mode.add_argument("--calibration-check", action="store_true",
                      help="shipped weights: calibrate a large-call share on half the calibration-split rows, measure on the rest")
    parser.add_argument("--with-other-sources", action="store_true",
                        help="with --cv: also train every fold on the other *.jsonl files (never on --data's test fold)")
    parser.add_argument("--train-data", type=Path, help="directory of other sources (default: --data's directory)")
    parser.add_argument("--no-lexical", action="store_true", help="with --cv/--cross-source: dense features only")
    parser.add_argument("--weights", type=Path, help="weights to score with (default: shipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l2-grid", type=float, nargs="+", default=list(DEFAULT_L2_GRID))
    parser.add_argument("--max-iter", type=int, default=FitConfig().max_iter)
    parser.add_argument("--topic-shrink", type=float, default=FitConfig().topic_shrink,
                        help="weight of a topic row's own outcome against its topic's mean gain (1 = off; see fit.py)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    examples = routing_data.load(args.data)
    result: dict = {"data": str(args.data), "rows": len(examples)}
    fit_config = FitConfig(max_iter=args.max_iter, seed=args.seed, topic_shrink=args.topic_shrink)
    l2_grid = tuple(args.l2_grid)

    def other_sources() -> list:
        directory = args.train_data or args.data.parent
        files = [f for f in sorted(Path(directory).glob("*.jsonl")) if f.resolve() != args.data.resolve()]
        if not files:
            raise SystemExit(f"no other *.jsonl in {directory} to train on")
        result["trained_on"] = [f.name for f in files]
        return [ex for f in files for ex in routing_data.load_file(f)]

    if args.cv or args.cross_source:
        import torch

        torch.set_num_threads(1)
        featurizer = Featurizer(FeatureConfig.dense_only() if args.no_lexical else FeatureConfig())
        result["features"] = "dense-only" if args.no_lexical else "dense+lexical"
        result["topic_shrink"] = args.topic_shrink
        if args.cv:
            extra = other_sources() if args.with_other_sources else []
            result["mode"] = f"cv{args.cv}" + ("+other-sources" if extra else "")
            result.update(cross_validate(examples, args.cv, featurizer, fit_config, l2_grid, args.seed, extra))
        else:
            result["mode"] = "cross-source"
            scores, l2 = _fit_and_score(other_sources(), examples, featurizer, fit_config, l2_grid, args.seed)
            small, large = routing_data.score_arrays(examples)
            result.update(metrics.summary(scores, small, large), l2_sparse_chosen=l2)
    else:
        classifier = ComplexityClassifier.load(args.weights)
        if args.calibration_check:
            examples = [ex for ex in examples if is_calibration_row(ex.id)]
            result.update(mode="calibration-check", rows=len(examples), **calibration_check(classifier, examples))
            result["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(result, sort_keys=True))
            return 0
        if args.heldout_only:
            examples = [ex for ex in examples if is_calibration_row(ex.id)]
            result["rows"] = len(examples)
        result["mode"] = "shipped-heldout" if args.heldout_only else "shipped"
        scores = np.array([classifier.score_features(classifier.featurizer.from_text(ex.text)) for ex in examples])
        small, large = routing_data.score_arrays(examples)
        result.update(metrics.summary(scores, small, large))
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
