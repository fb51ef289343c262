"""The logits seam on a real zoo model: logit_bias, penalties and logprobs change what a user gets
the way OpenAI's API says, and rows that ask for none of them are sampled exactly as before."""

import asyncio
import math

import pytest
import torch

from workers.logits import Penalties
from workers.types import GenerationRequest

@pytest.fixture(scope="module")
def engine(engine_2m):
    return engine_2m

def run(engine, **kw):
    async def go():
        return [c async for c in engine.generate(GenerationRequest("t", prompt="Once upon a time", **kw))]
    return asyncio.run(go())

def test_a_plus_100_bias_forces_a_token_and_minus_100_bans_one(engine):
    forced, = engine.tokenizer.encode(" the", add_special_tokens=False)
    chunks = run(engine, max_tokens=8, temperature=1.0, seed=3, logit_bias={forced: 100.0})
    assert "".join(c.text for c in chunks) == " the" * 8
    plain = run(engine, max_tokens=4, temperature=0, logprobs=True)
    first = plain[0].logprobs[0]["token"]
    banned, = engine.tokenizer.encode(first, add_special_tokens=False)
    biased = run(engine, max_tokens=4, temperature=0, logprobs=True, logit_bias={banned: -100.0})
    assert all(e["token"] != first for c in biased for e in c.logprobs)

def test_presence_penalty_stops_repeats_that_greedy_decoding_makes(engine):
    def tokens(chunks):
        return [e["token"] for c in chunks for e in c.logprobs]

    plain = tokens(run(engine, max_tokens=16, temperature=0, logprobs=True))
    assert len(set(plain)) < len(plain)  # a random model repeats itself greedily
    penalised = tokens(run(engine, max_tokens=16, temperature=0, logprobs=True, presence_penalty=2.0))
    assert len(set(penalised)) == len(penalised) == 16
    frequent = tokens(run(engine, max_tokens=16, temperature=0, logprobs=True, frequency_penalty=2.0))
    assert len(set(frequent)) == 16

def test_penalties_subtract_presence_once_and_frequency_per_occurrence():
    p = Penalties(8, presence=0.5, frequency=0.25)
    for t in (3, 3, 3, 5):
        p.accept(t)
    logits = torch.zeros(8)
    p.apply(logits)
    assert logits.tolist() == [0, 0, 0, -(0.5 + 3 * 0.25), 0, -(0.5 + 0.25), 0, 0]

def test_logprobs_are_the_distribution_the_greedy_token_came_from(engine):
    chunks = run(engine, max_tokens=10, temperature=0, logprobs=True, top_logprobs=5)
    entries = [e for c in chunks for e in c.logprobs]
    assert len(entries) == chunks[-1].completion_tokens == 10
    text = "".join(c.text for c in chunks)
    assert "".join(e["token"] for e in entries) == text
    for e in entries:
        top = e["top_logprobs"]
        assert len(top) == 5
        assert (e["token"], e["logprob"]) == (top[0]["token"], top[0]["logprob"])  # greedy: the top one
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0 + 1e-6
        assert bytes(e["bytes"]).decode("utf-8") == e["token"]

def test_asking_for_logprobs_leaves_greedy_and_seeded_answers_unchanged(engine):
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 7}):
        plain = "".join(c.text for c in run(engine, max_tokens=20, **kw))
        with_logprobs = run(engine, max_tokens=20, logprobs=True, **kw)
        assert "".join(c.text for c in with_logprobs) == plain
        assert all(c.logprobs is None for c in run(engine, max_tokens=3, **kw))
