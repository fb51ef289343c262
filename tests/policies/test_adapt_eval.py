"""python -m policies.adapt_eval on the in-repo sample: one JSON line with the issue's fields."""

import json

import numpy as np
import pytest

from policies import adapt_eval
from policies.routing_data import SAMPLE_DATA_DIR

SAMPLE = SAMPLE_DATA_DIR / "routing_sample.jsonl"


def run(capsys, *args) -> dict:
    assert adapt_eval.main(["--data", str(SAMPLE), "--json", "--prior", "shipped", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


@pytest.mark.parametrize("label", ["both", "chosen"])
def test_prints_the_fields_of_the_issue(capsys, label):
    result = run(capsys, "--warm", "200", "--label", label)
    for key in ("shipped_apgr", "adapted_apgr", "baseline_apgr", "random_apgr", "oracle_apgr"):
        assert 0.0 < result[key] < 2.0, key
    assert (result["rows"], result["warm"], result["scored"], result["label"]) == (600, 200, 400, label)
    assert result["oracle_apgr"] > max(result["adapted_apgr"], result["baseline_apgr"], result["shipped_apgr"])
    assert abs(result["random_apgr"] - 0.5) < 0.05


def test_the_order_is_seeded(capsys):
    first = run(capsys, "--warm", "100", "--seed", "3")
    again = run(capsys, "--warm", "100", "--seed", "3")
    other = run(capsys, "--warm", "100", "--seed", "4")
    assert {k: v for k, v in first.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}
    assert first["adapted_apgr"] != other["adapted_apgr"]


def test_the_baseline_is_tfidf_ridge_on_the_warm_rows():
    # words seen with a high target score high; a text of unseen words gets the intercept alone
    train = ["prove the theorem", "prove this lemma", "hello there", "hello friend"]
    scores = adapt_eval.tfidf_ridge_scores(train, [1.0, 1.0, 0.0, 0.0], ["prove it", "hello you", "zzz"])
    assert scores[0] > scores[2] > scores[1]
    assert np.all(np.isfinite(scores))


def test_warm_must_leave_rows_to_score(capsys):
    with pytest.raises(SystemExit):
        adapt_eval.main(["--data", str(SAMPLE), "--json", "--prior", "shipped", "--warm", "600"])
