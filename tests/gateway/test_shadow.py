"""Shadow evaluation through a real server: the client's answer never waits for it, its calls are
charged to the configured team (and its budget stops them), rule judges and a judge model give
the right labels; and the judges' own rules and verdict parsing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.learning.judges import parse_verdict, rule_scores, verdict_scores
from policies.schema import ShadowJudge
from support import KEY_ALPHA, WrappedBackend, wait_until
from learning_testkit import ask, learning_config, stored
from workers.types import GenerationChunk

SMALL_ANSWER, LARGE_ANSWER = "The answer is 41.", "The answer is 42."


class ScriptedBackend(WrappedBackend):
    """The zoo pool, except that each tier answers a fixed text (so judges have known answers to
    score), the shadow's own call can be held back, and a judge model says which answer has 42."""

    def __init__(self, inner):
        super().__init__(inner)
        self.release = threading.Event()
        self.release.set()
        self.calls: list[str] = []
        self.queued_as: dict[str, tuple] = {}  # request id -> (team, weight, priority) in the pool's fair queue

    async def generate(self, model, req):
        self.calls.append(req.request_id)
        self.queued_as[req.request_id] = (req.team, req.weight, req.priority)
        if req.request_id.endswith("-shadow"):
            await asyncio.to_thread(self.release.wait, 30)
        if req.request_id.endswith("-judge"):
            prompt = req.messages[-1]["content"]
            a = prompt.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
            text = "After careful thought, [[A]]" if "42" in a else "Answer B is better. [[B]]"
        else:
            text = LARGE_ANSWER if model == "mux-5m" else SMALL_ANSWER
        yield GenerationChunk(text=text, finish_reason="stop", prompt_tokens=7, completion_tokens=5)


def shadow_server(tmp_path, zoo_dir, start_server, judge: dict, budget_usd=None, pricing=None):
    from gateway.config import parse_config
    from gateway.server import make_backend

    config = learning_config(tmp_path, zoo_dir)
    config["teams"] = config["teams"] + [{"id": "evals", "budget_usd": budget_usd, "share": 0.5}]
    config["routing"]["shadow"] = {"share": 1.0, "judge": judge, "budget": "evals"}
    if pricing:
        config["pricing"] = pricing
    backend = ScriptedBackend(make_backend(parse_config(config), use_ray=False))
    server = start_server(config, backend)
    return server, config, backend, server.app.state.gateway.learning.shadow


def shadow_outcomes(config):
    return [o for o in stored(config, lambda s: s.outcomes(0, 2**32)) if o.source == "shadow"]


def test_the_client_never_waits_for_the_shadow_and_a_rule_judge_labels_both_tiers(tmp_path, zoo_dir, start_server):
    server, config, backend, shadow = shadow_server(tmp_path, zoo_dir, start_server,
                                                    {"rule": "regex", "pattern": r"\b42\b"})
    backend.release.clear()  # the shadow's call on the other tier hangs until released
    started = time.perf_counter()
    answer = ask(server, KEY_ALPHA)
    assert answer.choices[0].message.content == SMALL_ANSWER  # routed small (threshold 1.0)
    rid = answer.id.removeprefix("chatcmpl-")
    wait_until(lambda: f"{rid}-shadow" in backend.calls)  # the shadow started, after the answer...
    assert time.perf_counter() - started < 20
    assert shadow_outcomes(config) == []  # ...and is still held
    backend.release.set()
    outcome, = wait_until(lambda: shadow_outcomes(config))
    assert (outcome.request_id, outcome.routed, outcome.small_score, outcome.large_score, outcome.team) == \
        (rid, "small", 0.0, 1.0, "alpha")
    # charged to the budget team under its shadow key, not to the client's team
    evals = stored(config, lambda s: s.usage_records(0, 2**32, team_id="evals"))
    assert [(r.request_id, r.routed_model, r.route_reason) for r in evals] == [(f"{rid}-shadow", "mux-5m", "shadow")]
    alpha = stored(config, lambda s: s.usage_records(0, 2**32, team_id="alpha"))
    assert [r.request_id for r in alpha] == [rid]
    keys = {k.id: k.name for k in stored(config, lambda s: s.list_keys("evals"))}
    assert keys[evals[0].key_id] == "muxgate-shadow"


def test_a_judge_model_is_called_through_muxgate_and_its_verdict_labels_the_tiers(tmp_path, zoo_dir, start_server):
    server, config, backend, shadow = shadow_server(tmp_path, zoo_dir, start_server, {"model": "mux-5m"})
    rids = [ask(server, KEY_ALPHA, f"question {i}").id.removeprefix("chatcmpl-") for i in range(4)]
    outcomes = wait_until(lambda: len(shadow_outcomes(config)) == 4 and shadow_outcomes(config))
    # whichever order the judge saw them in, the large tier's answer (42) won
    assert sorted((o.request_id, o.small_score, o.large_score) for o in outcomes) == \
        sorted((rid, 0.0, 1.0) for rid in rids)
    charged = {r.request_id for r in stored(config, lambda s: s.usage_records(0, 2**32, team_id="evals"))}
    assert charged == {f"{rid}-{kind}" for rid in rids for kind in ("shadow", "judge")}
    # the replicas queue them as the budget team's work at its share, not as the client's (before: alpha's)
    assert {backend.queued_as[c] for c in charged} == {("evals", 0.5, 0)}
    assert {backend.queued_as[rid][0] for rid in rids} == {"alpha"}


def test_the_budget_teams_budget_stops_shadow_evaluation(tmp_path, zoo_dir, start_server):
    pricing = {"models": [{"model": "mux-5m", "input_per_1m_usd": 1_000_000, "output_per_1m_usd": 1_000_000}]}
    server, config, backend, shadow = shadow_server(tmp_path, zoo_dir, start_server, {"rule": "exact"},
                                                    budget_usd=0.001, pricing=pricing)
    answer = ask(server, KEY_ALPHA)
    assert answer.choices[0].message.content == SMALL_ANSWER
    wait_until(lambda: shadow.counts["refused"] == 1)
    assert shadow_outcomes(config) == []
    assert not any(c.endswith("-shadow") for c in backend.calls)  # refused before any generation


def test_shadow_work_beyond_the_queue_is_dropped_not_queued(tmp_path, zoo_dir, start_server):
    server, config, backend, shadow = shadow_server(tmp_path, zoo_dir, start_server, {"rule": "exact"})
    backend.release.clear()
    limit = shadow.config.max_concurrent + shadow.config.max_queued
    for i in range(limit + 3):
        ask(server, KEY_ALPHA, f"burst {i}")
    wait_until(lambda: shadow.counts["submitted"] + shadow.counts["dropped"] == limit + 3)
    assert shadow.counts["dropped"] >= 3
    backend.release.set()


def test_rule_judges():
    regex = ShadowJudge(rule="regex", pattern=r"#### \d+")
    assert rule_scores(regex, "so #### 12", "no number") == (1.0, 0.0)
    exact = ShadowJudge(rule="exact")
    assert rule_scores(exact, "  Paris ", "paris") == (1.0, 1.0)
    assert rule_scores(exact, "Lyon", "Paris") == (0.0, 1.0)
    schema = ShadowJudge(rule="json_schema", json_schema={"type": "object", "required": ["a"]})
    assert rule_scores(schema, '{"a": 1}', '{"b": 1}') == (1.0, 0.0)
    own = ShadowJudge(rule="json_schema")  # the request's own response_format schema
    response_format = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}
    assert rule_scores(own, "[1]", "not json", response_format) == (1.0, 0.0)
    assert rule_scores(own, "{}", "[]") == (1.0, 1.0)  # no schema anywhere: valid JSON is enough


def test_judge_settings_are_checked_at_load():
    from pydantic import ValidationError

    for bad in ({}, {"model": "m", "rule": "exact"}, {"rule": "regex"}, {"rule": "regex", "pattern": "("}):
        with pytest.raises(ValidationError):
            ShadowJudge(**bad)


@pytest.mark.parametrize("text,verdict", [
    ("[[A]]", "A"), ("I prefer [[ b ]].", "B"), ("[[tie]]", "tie"),
    ("First I thought [[A]] but on reflection [[B]]", "B"),  # the last tag is the verdict
    ("Verdict: A", "A"), ("Final answer: (B)", "B"), ("Answer B is clearly better.", "B"),
    ("Assistant A was more helpful overall", "A"), ("B", "B"), ("a.", "A"),
    ("Both are equally good.", "tie"), ("It's a tie", "tie"),
    ("I cannot decide.", None), ("Answer A is better, no wait, answer B is better", None), ("", None),
])
def test_verdicts_are_read_robustly(text, verdict):
    assert parse_verdict(text) == verdict


def test_verdicts_map_back_through_the_order_shown():
    assert verdict_scores("A", small_first=True) == (1.0, 0.0)
    assert verdict_scores("A", small_first=False) == (0.0, 1.0)
    assert verdict_scores("B", small_first=False) == (1.0, 0.0)
    assert verdict_scores("tie", small_first=True) == (0.5, 0.5)
