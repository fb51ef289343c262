"""The shipped complexity classifier, as the gateway's routing policy uses it."""

import json
import shutil

import numpy as np
import pytest

from policies.classifier import ComplexityClassifier
from policies.calibration import ABOVE_ALL_SCORES

# Not in the authored training rows (policies/data/synthetic/chitchat.jsonl): unseen phrasings.
CHITCHAT = ["hey, thanks so much!", "hi, how's it going?", "good evening :)", "cheers!", "thanks, bye",
            "hello friend", "Hi! Nice to meet you.", "ok thank you", "great, see you soon", "morning!"]
HARD = [
    "Let G be a finite group and H a normal subgroup. Prove that if |G/H| and |H| are coprime then "
    "H is characteristic in G.\nA. True\nB. False\nC. Only if G is abelian\nD. Only if H is cyclic\nAnswer:",
    "Janet buys 3 boxes of 12 pencils at $2.40 a box and sells each pencil for $0.35. After giving 7 "
    "pencils away she sells the rest. How much profit does she make, in dollars?",
    "Write a Python function that returns the longest palindromic substring of s in O(n^2) time, "
    "then explain its complexity step by step.\n```python\ndef longest(s):\n    ...\n```",
]


def test_shipped_weights_load_and_fit_the_size_budget(shipped):
    from policies.classifier import WEIGHTS_DIR

    size = sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir())
    assert size <= 10 * 1024 * 1024
    assert shipped.metadata["training"]["rows"]["train"] > 0


def test_scores_are_probabilities_and_deterministic(shipped, sample):
    scores = [shipped.score(messages=[{"role": "user", "content": ex.text.user}]) for ex in sample[:50]]
    again = [shipped.score(prompt=ex.text.user) for ex in sample[:50]]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores == again
    assert len(set(scores)) > 10  # it actually discriminates


def test_reloading_gives_identical_scores(shipped):
    other = ComplexityClassifier.load()
    for text in CHITCHAT + HARD:
        assert other.score(prompt=text) == shipped.score(prompt=text)


def test_hard_prompts_score_above_chitchat(shipped):
    chat = [shipped.score(prompt=t) for t in CHITCHAT]
    hard = [shipped.score(prompt=t) for t in HARD]
    assert np.mean(hard) > np.mean(chat)
    assert min(hard) > np.median(chat)


def test_chitchat_stays_on_the_small_model_unless_most_traffic_goes_large(shipped):
    chat = [shipped.score(prompt=t) for t in CHITCHAT]
    assert max(chat) < shipped.threshold_for_large_share(0.3)
    assert np.median(chat) < shipped.threshold_for_large_share(0.5)


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5, 0.7])
def test_threshold_for_large_share_hits_the_share_on_the_sample(shipped, sample, share):
    # The sample is drawn from the calibration rows, in roughly the training mix; with 600 rows
    # sampling noise alone is ~2 points, so allow 6.
    scores = np.array([shipped.score_features(shipped.featurizer.from_text(ex.text)) for ex in sample])
    routed = np.mean(scores >= shipped.threshold_for_large_share(share))
    assert abs(routed - share) <= 0.06


def test_thresholds_are_monotone_and_cover_the_extremes(shipped):
    shares = np.linspace(0, 1, 21)
    thresholds = [shipped.threshold_for_large_share(s) for s in shares]
    assert all(a >= b for a, b in zip(thresholds, thresholds[1:]))
    assert thresholds[0] == ABOVE_ALL_SCORES and thresholds[-1] == 0.0
    assert shipped.large_share_for_threshold(shipped.threshold_for_large_share(0.3)) == pytest.approx(0.3, abs=0.01)
    quality = [shipped.threshold_for_quality(p) for p in (0.2, 0.5, 0.8)]
    assert quality[0] >= quality[1] >= quality[2]


def test_explain_names_dense_features(shipped):
    reasons = shipped.explain(prompt=HARD[2], top=3)
    assert "lexical" in reasons and len(reasons) == 4


def test_weights_written_for_other_features_are_rejected(shipped, tmp_path):
    shipped.save(tmp_path)
    meta = json.loads((tmp_path / "complexity.json").read_text())
    meta["dense_feature_names"] = meta["dense_feature_names"][:-1]
    (tmp_path / "complexity.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError):
        ComplexityClassifier.load(tmp_path)


def test_save_and_load_round_trip(shipped, tmp_path):
    shipped.save(tmp_path / "copy")
    copy = ComplexityClassifier.load(tmp_path / "copy")
    for text in HARD:
        assert copy.score(prompt=text) == pytest.approx(shipped.score(prompt=text), abs=1e-7)


def test_the_request_path_imports_neither_torch_nor_sklearn():
    import subprocess
    import sys

    code = (
        "import sys; from policies.classifier import ComplexityClassifier; "
        "ComplexityClassifier.load().score(prompt='hi'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_is_loaded_once_and_shared():
    assert ComplexityClassifier.shipped() is ComplexityClassifier.shipped()


def test_concurrent_scoring_matches_sequential(shipped, sample):
    from concurrent.futures import ThreadPoolExecutor

    texts = [ex.text.user for ex in sample[:64]]
    sequential = [shipped.score(prompt=t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda t: shipped.score(prompt=t), texts))
    assert concurrent == sequential
