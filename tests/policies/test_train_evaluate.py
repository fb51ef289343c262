"""Training and evaluation run end to end on the in-repo sample."""

import json

import numpy as np

from policies import evaluate, train
from policies.classifier import ComplexityClassifier
from policies.routing_data import SAMPLE_DATA_DIR

FAST = ["--max-iter", "25", "--l2-grid", "0.001"]


def test_train_writes_weights_that_load_and_score(tmp_path, capsys):
    assert train.main(["--data", str(SAMPLE_DATA_DIR), "--out", str(tmp_path), "--quiet", "--hash-bits", "16", *FAST]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows"]["train"] > report["rows"]["calibration"] > 0
    clf = ComplexityClassifier.load(tmp_path)
    assert 0.0 <= clf.score(prompt="What is 2 + 2?") <= 1.0
    assert clf.featurizer.config.hash_bits == 16


def test_training_is_deterministic(tmp_path):
    for name in ("a", "b"):
        train.main(["--data", str(SAMPLE_DATA_DIR), "--out", str(tmp_path / name), "--quiet", "--hash-bits", "12", *FAST])
    a, b = (np.load(tmp_path / n / "complexity.npz") for n in ("a", "b"))
    np.testing.assert_array_equal(a["sparse"], b["sparse"])


def _run_evaluate(capsys, *args):
    assert evaluate.main(["--data", str(SAMPLE_DATA_DIR / "routing_sample.jsonl"), "--json", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_evaluate_prints_one_json_line_with_routellm_metrics(capsys):
    out = _run_evaluate(capsys)
    for key in ("apgr", "cpt50", "cpt80", "pgr_at_50", "random_apgr"):
        assert key in out
    assert 0.4 < out["random_apgr"] < 0.6
    # These rows were held out from the shipped weights: the router must beat random on them.
    assert out["apgr"] > out["random_apgr"]


def test_evaluate_cross_validation_runs(capsys):
    out = _run_evaluate(capsys, "--cv", "2", *FAST)
    assert out["mode"] == "cv2" and len(out["apgr_folds"]) == 2


def test_calibration_split_is_stable_and_about_fifteen_percent():
    ids = [f"mmlu/x/{i}" for i in range(5000)]
    share = np.mean([train.is_calibration_row(i) for i in ids])
    assert 0.12 < share < 0.18
    assert [train.is_calibration_row(i) for i in ids[:50]] == [train.is_calibration_row(i) for i in ids[:50]]


def test_topic_shrinkage_pulls_topic_rows_towards_their_topic_mean_only():
    from policies.fit import win_rate_targets

    small = np.array([0.0, 1.0, 1.0, 0.0, 0.0])
    large = np.array([1.0, 1.0, 1.0, 1.0, 1.0])  # gains 1, 0, 0, 1, 1
    topics = np.array(["mmlu/a", "mmlu/a", "mmlu/b", "mmlu/b", ""], dtype=object)
    np.testing.assert_allclose(win_rate_targets(small, large), [1.0, 0.5, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(win_rate_targets(small, large, topics, 1.0), win_rate_targets(small, large))
    # topic means are 0.5 for both topics; shrink 0 gives the mean, 0.5 half-way; the untopical row keeps its gain
    np.testing.assert_allclose(win_rate_targets(small, large, topics, 0.0), [0.75, 0.75, 0.75, 0.75, 1.0])
    np.testing.assert_allclose(win_rate_targets(small, large, topics, 0.5), [0.875, 0.625, 0.625, 0.875, 1.0])


def test_mean_of_members_scores_the_mean_of_their_logits(sample):
    from policies.features import FeatureConfig, Featurizer
    from policies.fit import FitConfig
    from policies.routing_data import featurize_all, score_arrays, topic_labels

    featurizer = Featurizer(FeatureConfig(hash_bits=12))
    matrix = featurize_all(sample, featurizer)
    small, large = score_arrays(sample)
    topics = topic_labels(sample)
    assert (topics != "").any() and (topics == "").any()  # the sample has MMLU rows and others
    config = FitConfig(max_iter=15, topic_shrink=0.3)
    sel = train.fit_with_selection(matrix, small, large, featurizer.n_buckets, config, (1e-3,), topics=topics)
    assert sel.topic_l2_sparse == 1e-3
    assert sel.params.head_in.shape[0] == 2 * config.hidden
    raw = train.fit_with_selection(matrix, small, large, featurizer.n_buckets, config, (1e-3,))
    assert raw.topic_l2_sparse is None and raw.params.head_in.shape[0] == config.hidden
    from policies.fit import fit, win_rate_targets

    shrunk = fit(matrix, win_rate_targets(small, large, topics, 0.3), featurizer.n_buckets, config)
    expected = (train.logits_of(raw.params, matrix) + train.logits_of(shrunk, matrix)) / 2
    np.testing.assert_allclose(train.logits_of(sel.params, matrix), expected, rtol=1e-4, atol=1e-4)


def test_calibration_check_reports_the_share_misses(capsys):
    out = _run_evaluate(capsys, "--calibration-check")
    assert out["mode"] == "calibration-check" and out["checks"] == 30
    assert 0.0 <= out["mean_share_miss"] <= out["max_share_miss"] < 10.0
