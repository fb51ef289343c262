"""`muxgate router status`, `muxgate router fit --from-store [--out DIR]` and `muxgate export
distill`, run as the CLI on a config's own store (a real SQLite file)."""

from __future__ import annotations

import json

import pytest
import yaml
from learning_testkit import PAIR, features, learning_config, seed_outcomes, stored

from gateway.cli import main
from gateway.store import RoutedRequest
from policies.classifier import ComplexityClassifier
from policies.outcome import Outcome


@pytest.fixture
def cli_config(tmp_path, zoo_dir):
    config = learning_config(tmp_path, zoo_dir)
    path = tmp_path / "muxgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, str(path)


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_status_lists_the_policys_pairs_before_anything_is_learnt(capsys, cli_config):
    config, path = cli_config
    code, out, _ = run(capsys, "router", "status", "--config", path)
    assert code == 0
    status = json.loads(out)
    assert status["saved_at"] is None and status["pairs"][PAIR]["labels_seen"] == 0


def test_fit_from_the_store_refits_every_pair_and_status_shows_it(capsys, cli_config):
    config, path = cli_config
    seed_outcomes(config, 30)
    code, out, _ = run(capsys, "router", "fit", "--from-store", "--config", path)
    assert code == 0, out
    fit = json.loads(out)
    assert fit["written"] == "store" and fit["pairs"][PAIR]["outcomes"] == 30
    code, out, _ = run(capsys, "router", "status", "--config", path)
    status = json.loads(out)
    assert status["fitted_at"] is not None
    pair = status["pairs"][PAIR]
    assert pair["labels_seen"] == 30 and {"large_share", "apgr_estimate", "apgr_ci"} <= set(pair)
    assert pair["apgr_estimate"] is not None and pair["apgr_ci"][0] <= pair["apgr_estimate"] <= pair["apgr_ci"][1]


def test_fit_with_out_writes_a_weights_directory(capsys, cli_config, tmp_path):
    config, path = cli_config
    seed_outcomes(config, 6)
    out_dir = tmp_path / "refit"
    code, out, _ = run(capsys, "router", "fit", "--from-store", "--out", str(out_dir), "--config", path)
    assert code == 0, out
    assert ComplexityClassifier.load(out_dir).params.dense_linear.shape  # a weights directory a policy can name
    document = json.loads((out_dir / "adaptive_state.json").read_text())
    assert document["fitted_at"] and document["adaptive"][PAIR]["labels_seen"]["both"] == 6
    assert stored(config, lambda s: s.load_router_state()) is None  # the store is left alone


def test_fit_needs_from_store(capsys, cli_config):
    _, path = cli_config
    code, _, err = run(capsys, "router", "fit", "--config", path)
    assert code == 2 and "--from-store" in err


def seed_traffic(config) -> None:
    def routed(rid, tier, answer, other=None, team="beta"):
        return RoutedRequest(rid, team, 1_700_000_000, PAIR, tier, "mux-5m" if tier == "large" else "mux-2m",
                             features(rid), messages=[{"role": "user", "content": f"question {rid}"}],
                             answer=answer, other_answer=other)

    def outcome(rid, tier, small, large, source):
        return Outcome(rid, "beta", PAIR, tier, small, large, source, features(rid), 1_700_000_100)

    async def write(store):
        # routed large and liked; routed small, shadowed, the large answer judged good; judged bad; unjudged
        await store.record_routed(routed("big", "large", "large says 42"))
        await store.record_outcome(outcome("big", "large", None, 1.0, "feedback"))
        await store.record_routed(routed("shadowed", "small", "small says 41", other="large says 43"))
        await store.record_outcome(outcome("shadowed", "small", 0.0, 0.9, "shadow"))
        await store.record_routed(routed("poor", "small", "small says 1", other="large says 2"))
        await store.record_outcome(outcome("poor", "small", 1.0, 0.2, "shadow"))
        await store.record_routed(routed("unjudged", "large", "large says 7"))
    stored(config, write)


def test_export_distill_writes_the_large_tiers_judged_answers_as_chat_jsonl(capsys, cli_config, tmp_path):
    config, path = cli_config
    seed_traffic(config)
    out = tmp_path / "distill.jsonl"
    code, _, err = run(capsys, "export", "distill", "--team", "beta", "--from", "2023-01-01", "--to", "2030-01-01",
                       "--min-score", "0.5", "--out", str(out), "--config", path)
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [
        {"messages": [{"role": "user", "content": "question big"}, {"role": "assistant", "content": "large says 42"}]},
        {"messages": [{"role": "user", "content": "question shadowed"},
                      {"role": "assistant", "content": "large says 43"}]}]
    assert "2 examples" in err
    code, stdout, _ = run(capsys, "export", "distill", "--team", "beta", "--from", "2023-01-01", "--to", "2030-01-01",
                          "--min-score", "0.95", "--config", path)
    assert code == 0 and [json.loads(x)["messages"][1]["content"] for x in stdout.splitlines()] == ["large says 42"]


def test_export_distill_refuses_a_team_without_store_prompts(capsys, cli_config):
    _, path = cli_config
    code, _, err = run(capsys, "export", "distill", "--team", "alpha", "--config", path)
    assert code == 1 and "does not store prompts" in err
    code, _, err = run(capsys, "export", "distill", "--team", "nobody", "--config", path)
    assert code == 1 and "No team" in err
