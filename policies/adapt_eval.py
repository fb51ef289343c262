"""How much the adaptive router gains from a deployment's own labels; prints one JSON line.

    python -m policies.adapt_eval --data F --warm N --json [--label both|chosen] [--seed S]

Starts from classifier weights fitted without F's source (policies/prior_weights.py: the other
*.jsonl next to F, cached under var/; the shipped weights when F's source is not in their
training data, or with --prior shipped / --prior DIR), streams F's rows in a seeded order,
reveals the first N rows' labels to the router, then scores APGR on the remaining rows with the
router frozen. ``--label both`` reveals both tiers' scores (what shadow evaluation gives);
``--label chosen`` only the score of the tier the router picked for the row (what feedback gives;
the router routes the warm rows itself at --share large with --explore of them at random).

Fields: ``shipped_apgr`` (the prior weights alone), ``adapted_apgr``, ``baseline_apgr`` (a plain
in-file baseline fitted on the same N rows alone, with both scores: TF-IDF word 1-2-grams and
ridge regression on (1 + large - small) / 2), ``random_apgr`` and ``oracle_apgr`` (routing by
the true gain, the best any router can do on these rows). With --repeats R the numbers are means
over seeds S .. S+R-1 (``per_seed`` lists each).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from policies import metrics, routing_data
from policies.adaptive import AdaptKnobs, AdaptiveRouter
from policies.classifier import ComplexityClassifier
from policies.embedding import StaticEmbedder
from policies.outcome import Outcome, encode_features, pair_name

FIELDS = ("shipped_apgr", "adapted_apgr", "baseline_apgr", "random_apgr", "oracle_apgr")
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def tfidf_ridge_scores(train_texts, train_targets, test_texts, alpha: float = 1.0) -> np.ndarray:
    """TF-IDF over word 1- and 2-grams (vocabulary and idf from the training texts, smooth idf,
    L2-normalised rows, as scikit-learn's TfidfVectorizer(ngram_range=(1, 2))) and ridge
    regression with an intercept (scikit-learn's Ridge(alpha=1.0)), solved in its dual form."""

    def grams(text: str) -> list[str]:
        words = _TOKEN.findall(text.lower())
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    train_grams = [grams(t) for t in train_texts]
    vocabulary: dict[str, int] = {}
    for g in train_grams:
        for term in g:
            vocabulary.setdefault(term, len(vocabulary))

    x_train = np.zeros((len(train_grams), max(len(vocabulary), 1)))
    for i, g in enumerate(train_grams):
        for term in g:
            x_train[i, vocabulary[term]] += 1.0
    df = np.count_nonzero(x_train, axis=0)
    idf = np.log((1.0 + len(train_texts)) / (1.0 + df)) + 1.0
    x_train *= idf
    x_train /= np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
    y = np.asarray(train_targets, dtype=np.float64)
    x_mean, y_mean = x_train.mean(axis=0), y.mean()
    xc = x_train - x_mean
    weights = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(len(y)), y - y_mean)
    offset = y_mean - float(x_mean @ weights)
    out = np.empty(len(test_texts))
    for i, text in enumerate(test_texts):  # one sparse row at a time: the test set may be large
        counts: dict[int, float] = {}
        for term in grams(text):
            j = vocabulary.get(term)
            if j is not None:
                counts[j] = counts.get(j, 0.0) + 1.0
        if not counts:
            out[i] = offset
            continue
        cols = np.fromiter(counts, dtype=np.int64)
        vals = np.fromiter(counts.values(), dtype=np.float64) * idf[cols]
        out[i] = offset + float(vals @ weights[cols]) / float(np.linalg.norm(vals))
    return out


def prior_classifier(data: Path, prior: str, train_dir: Path | None, log) -> tuple[ComplexityClassifier, str]:
    """(classifier to start from, how it was chosen)."""
    if prior == "shipped":
        return ComplexityClassifier.shipped(), "shipped"
    if prior != "auto":
        return ComplexityClassifier.load(prior), f"weights {prior}"
    shipped = ComplexityClassifier.shipped()
    families = {ex.family for ex in routing_data.load_file(data)}
    trained_on = set(shipped.metadata.get("training", {}).get("sources", {}))
    if not families & trained_on:
        return shipped, "shipped (F's source is not in their training data)"
    from policies.prior_weights import leave_one_out

    classifier, names = leave_one_out(data, train_dir, log)
    return classifier, f"fitted without {data.name} on {', '.join(names)}"


def evaluate_once(examples, base, embedder, warm: int, label: str, seed: int, share: float, explore: float,
                  knobs: dict) -> dict:
    order = np.random.default_rng([seed, 0xADA]).permutation(len(examples))
    rows = [examples[i] for i in order]
    warm_rows, test_rows = rows[:warm], rows[warm:]
    small, large = routing_data.score_arrays(test_rows)
    pair = pair_name("small", "large")
    router = AdaptiveRouter(base, pair, target_large_share=share, embedder=embedder,
                            explore=explore if label == "chosen" else 0.0, seed=seed, **knobs)

    def features(ex):
        f = base.featurizer.from_text(ex.text)
        if embedder is None:
            return f
        return replace(f, embedding=embedder.embed_text(ex.text))

    for i, ex in enumerate(warm_rows):
        f = features(ex)
        if label == "both":
            routed, s, l = "large", ex.small_score, ex.large_score
        else:
            routed = "large" if router.use_large(f) else "small"
            s, l = (None, ex.large_score) if routed == "large" else (ex.small_score, None)
        router.observe(Outcome(ex.id, "eval", pair, routed, s, l, "replay", encode_features(f), float(i)))
    test_features = [features(ex) for ex in test_rows]
    shipped_scores = np.array([base.score_features(f) for f in test_features])
    adapted_scores = np.array([router.rank(f) for f in test_features])  # what it routes by
    baseline_scores = tfidf_ridge_scores(
        [ex.text.user for ex in warm_rows],
        [(1.0 + ex.large_score - ex.small_score) / 2.0 for ex in warm_rows],
        [ex.text.user for ex in test_rows],
    )

    def apgr(scores):
        return metrics.apgr(metrics.gain_curve(scores, small, large))

    return {
        "seed": seed,
        "shipped_apgr": apgr(shipped_scores),
        "adapted_apgr": apgr(adapted_scores),
        "baseline_apgr": apgr(baseline_scores),
        "random_apgr": metrics.random_apgr(small, large),
        "oracle_apgr": apgr(large - small),
        "labels": router.status()["labels"],
    }


def _knobs(items: list[str]) -> dict:
    types = {f.name: f.type for f in fields(AdaptKnobs)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"--knob {name}: not one of {', '.join(types)}")
        out[name] = (value.lower() in ("1", "true", "yes")) if types[name] == "bool" else (
            int(value) if types[name] == "int" else float(value))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m policies.adapt_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="JSONL file whose rows are streamed")
    parser.add_argument("--warm", type=int, required=True, metavar="N", help="rows whose labels the router sees")
    parser.add_argument("--json", action="store_true", help="print one JSON line (the only output format)")
    parser.add_argument("--label", choices=("both", "chosen"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="mean over this many seeds from --seed")
    parser.add_argument("--prior", default="auto", help="auto (weights fitted without F's source), shipped, or a weights directory")
    parser.add_argument("--train-data", type=Path, help="with --prior auto: directory of the other sources (default: F's)")
    parser.add_argument("--no-embedding", action="store_true", help="no sentence-embedding features (policies/embedding.py)")
    parser.add_argument("--share", type=float, default=0.5, help="large share the router targets while it routes (--label chosen)")
    parser.add_argument("--explore", type=float, default=0.2, help="with --label chosen: share of warm rows routed at random")
    parser.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="AdaptiveRouter knob (adaptive.AdaptKnobs)")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    log = lambda msg: print(f"[adapt_eval] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    examples = routing_data.load_file(args.data)
    if not 1 <= args.warm < len(examples) - 1:
        raise SystemExit(f"--warm must leave rows to score: 1 <= N < {len(examples) - 1}")
    base, prior = prior_classifier(args.data, args.prior, args.train_data, log)
    embedder = None if args.no_embedding else StaticEmbedder.shipped()
    knobs = _knobs(args.knob)
    runs = [evaluate_once(examples, base, embedder, args.warm, args.label, args.seed + r, args.share, args.explore, knobs)
            for r in range(args.repeats)]
    result = {
        "data": str(args.data), "rows": len(examples), "warm": args.warm, "scored": len(examples) - args.warm,
        "label": args.label, "seed": args.seed, "repeats": args.repeats, "prior": prior,
        "features": "dense+lexical prior" + ("" if embedder is None else f", embedding {embedder.dim}"),
        **{key: round(float(np.mean([r[key] for r in runs])), 4) for key in FIELDS},
    }
    result["adapted_minus_best"] = round(result["adapted_apgr"] - max(result["shipped_apgr"], result["baseline_apgr"]), 4)
    result["adapted_minus_random"] = round(result["adapted_apgr"] - result["random_apgr"], 4)
    if args.label == "chosen":
        result.update(share=args.share, explore=args.explore)
    if knobs:
        result["knobs"] = knobs
    if args.repeats > 1:
        result["per_seed"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
