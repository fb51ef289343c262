"""AdaptiveRouter: the shipped classifier as a prior, outcomes as evidence, a share controller."""

import json
from dataclasses import replace

import numpy as np
import pytest

from policies.adaptive import AdaptiveRouter
from policies.embedding import StaticEmbedder
from policies.outcome import Outcome, decode_features, encode_features

PAIR = "small-model->large-model"


@pytest.fixture(scope="module")
def embedder():
    return StaticEmbedder.shipped()


@pytest.fixture(scope="module")
def rows(shipped, sample, embedder):
    """(example, features with embedding) for every sample row, in a seeded order (the file is by source)."""
    order = np.random.default_rng(0).permutation(len(sample))
    return [(ex, replace(shipped.featurizer.from_text(ex.text), embedding=embedder.embed_text(ex.text)))
            for ex in (sample[i] for i in order)]


def outcome(features, small=None, large=None, routed="large", i=0, pair=PAIR):
    source = "shadow" if small is not None and large is not None else "feedback"
    return Outcome(f"r{i}", "team-a", pair, routed, small, large, source, encode_features(features), float(i))


def test_without_evidence_the_router_scores_exactly_like_the_shipped_classifier(shipped, rows, embedder):
    router = AdaptiveRouter(shipped, PAIR, embedder=embedder)
    for _, f in rows[:50]:
        assert router.score(f) == pytest.approx(shipped.score_features(f), abs=1e-9)
    assert router.status()["labels_seen"] == 0


def test_shadow_outcomes_move_the_router_towards_the_evidence(shipped, rows, embedder):
    # This deployment's large model is needed exactly on the multiple-choice (MMLU) prompts.
    needs_large = [ex.family == "mmlu" for ex, _ in rows]
    router = AdaptiveRouter(shipped, PAIR, embedder=embedder)
    train, test = rows[:400], rows[400:]
    for i, ((ex, f), large) in enumerate(zip(train, needs_large)):
        router.observe(outcome(f, small=0.0 if large else 1.0, large=1.0 if large else 0.0, i=i))
    truth = np.array(needs_large[400:])

    def separation(score):
        scores = np.array([score(f) for _, f in test])
        return scores[truth].mean() - scores[~truth].mean()

    assert separation(router.score) > separation(shipped.score_features) + 0.2
    assert router.status()["labels_seen"] == 400


def test_state_round_trips_through_json(shipped, rows, embedder):
    router = AdaptiveRouter(shipped, PAIR, target_large_share=0.3, embedder=embedder)
    for i, (ex, f) in enumerate(rows[:100]):
        router.observe(outcome(f, small=ex.small_score, large=ex.large_score, i=i))
        router.use_large(f)
    restored = AdaptiveRouter.from_state(shipped, json.loads(json.dumps(router.state())), embedder=embedder)
    for _, f in rows[100:150]:
        assert restored.score(f) == router.score(f)
    assert restored.status() == router.status()


def test_offline_fit_gives_the_online_posterior(shipped, rows, embedder):
    stream = [outcome(f, small=ex.small_score, large=ex.large_score, i=i) for i, (ex, f) in enumerate(rows[:200])]
    online = AdaptiveRouter(shipped, PAIR, embedder=embedder)
    for o in stream:
        online.observe(o)
    other_pair = [replace(o, pair="a->b") for o in stream[:50]]  # another pair's labels are skipped
    shuffled = [stream[i] for i in np.random.default_rng(1).permutation(len(stream))]  # fit sorts by time
    refit = AdaptiveRouter.fit(shipped, other_pair + shuffled, PAIR, embedder=embedder)
    for _, f in rows[200:250]:
        assert refit.score(f) == pytest.approx(online.score(f), abs=1e-6)


def test_an_outcome_of_another_pair_is_refused(shipped, rows):
    router = AdaptiveRouter(shipped, PAIR)
    with pytest.raises(ValueError):
        router.observe(outcome(rows[0][1], small=1.0, large=0.0, pair="x->y"))


@pytest.fixture(scope="module")
def stream(shipped, sample, embedder):
    """3,000 distinct prompts (pieces of the sample's text, 20-2,000 characters), each with
    outcomes where the large tier is needed more often on longer prompts."""
    corpus = "\n".join(ex.text.user for ex in sample)
    rng = np.random.default_rng(11)
    out = []
    for _ in range(3000):
        length = int(np.exp(rng.uniform(np.log(20), np.log(2000))))
        start = int(rng.integers(0, len(corpus) - length))
        text = corpus[start : start + length]
        f = replace(shipped.features(prompt=text), embedding=embedder.embed(prompt=text))
        large_wins = rng.random() < length / 2000
        out.append((f, float(not large_wins), float(large_wins)))
    return out


@pytest.mark.parametrize("target", [0.1, 0.3, 0.6])
def test_the_share_controller_holds_the_target_while_the_router_learns(shipped, stream, embedder, target):
    router = AdaptiveRouter(shipped, PAIR, target_large_share=target, embedder=embedder, window=500)
    decisions = []
    for step, (f, small, large) in enumerate(stream):
        decisions.append(router.use_large(f))
        if step % 3 == 0:  # labels arrive all along, so the score distribution keeps moving
            router.observe(outcome(f, small=small, large=large, i=step))
    for end in range(1000, 3001, 250):
        assert abs(np.mean(decisions[end - 500 : end]) - target) <= 0.02
    assert abs(router.status()["large_share"] - target) <= 0.02
    assert router.status()["labels_seen"] == 1000


def test_chosen_only_labels_do_not_bias_the_gain(shipped, rows, embedder):
    """Feedback scores only the tier the router chose. Here the truth is the large tier gains 0.8
    on long prompts and loses 0.2 on short ones; the router (exploring 20% of the time) must learn
    both from its own, selected labels, and be as good as one that saw both scores."""
    rng = np.random.default_rng(3)
    chars = np.array([f.dense[0] for _, f in rows])  # log_chars
    long_prompt = chars > np.median(chars)

    def scores(i):
        small = 0.2 if long_prompt[i] else 0.7
        return small, small + (0.8 if long_prompt[i] else -0.2)

    chosen = AdaptiveRouter(shipped, PAIR, target_large_share=0.5, embedder=embedder, explore=0.2)
    # the lexical stacking input learns from shadow rows only: compare like with like
    both = AdaptiveRouter(shipped, PAIR, embedder=embedder, lexical_l2=0.0)
    for step in range(1500):
        i = int(rng.integers(len(rows)))
        f = rows[i][1]
        small, large = scores(i)
        noisy = lambda s: float(np.clip(s + rng.normal(0, 0.1), 0, 1))  # noqa: E731
        both.observe(outcome(f, small=noisy(small), large=noisy(large), i=step))
        if chosen.use_large(f):
            chosen.observe(outcome(f, large=noisy(large), routed="large", i=step))
        else:
            chosen.observe(outcome(f, small=noisy(small), routed="small", i=step))
    true_gain = np.where(long_prompt, 0.8, -0.2)
    separation = {}
    for name, router in (("chosen", chosen), ("both", both)):
        estimated = np.array([2 * router.rank(f) - 1 for _, f in rows])
        assert abs(estimated.mean() - true_gain.mean()) < 0.05  # no bias towards either tier
        separation[name] = estimated[long_prompt].mean() - estimated[~long_prompt].mean()
    assert separation["chosen"] > 0.9 * separation["both"] > 0.5
    assert chosen.status()["labels"]["both"] == 0


def test_feature_bytes_round_trip_exactly_and_stay_small(shipped, rows):
    for _, f in rows[:100]:
        data = encode_features(f)
        back = decode_features(data)
        for name in ("dense", "indices", "values", "embedding"):
            assert np.array_equal(getattr(back, name), getattr(f, name))
        assert shipped.score_features(back) == shipped.score_features(f)
    short = shipped.features(prompt="What is the capital of France?")
    assert len(encode_features(short)) < 400


@pytest.mark.parametrize("bad", [b"", b"xx", b"mf\x02" + b"\0" * 10, None])
def test_bad_feature_bytes_are_refused(shipped, bad):
    if bad is None:
        bad = encode_features(shipped.features(prompt="hello there"))[:-3]
    with pytest.raises(ValueError):
        decode_features(bad)


@pytest.mark.parametrize("change", [
    {"routed": "medium"}, {"source": "guess"}, {"pair": "nopair"}, {"small_score": 1.5},
    {"large_score": float("nan")}, {"small_score": None, "large_score": None},
])
def test_outcome_refuses_bad_fields(change):
    fields = dict(request_id="r", team="t", pair=PAIR, routed="small", small_score=0.5, large_score=None,
                  source="feedback", features=b"", created_at=0.0)
    with pytest.raises(ValueError):
        Outcome(**{**fields, **change})
