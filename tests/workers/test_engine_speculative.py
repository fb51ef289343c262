"""Speculative decoding in the engine: a draft model proposes, the served model decides, and the
answer is exactly the served model's own greedy answer."""

import asyncio

import pytest
import torch

from support import TEST_ZOO
from workers.engine import Engine
from workers.types import GenerationRequest

PROMPTS = ["The quick brown fox", "Write a poem about the sea.", "def fib(n):\n    return", "17 times 23 is"]


@pytest.fixture(scope="module")
def pair(zoo_dir):
    """The zoo's speculative pair: mux-40m and its two-layer draft (same embeddings and head)."""
    from workers.zoo import build_zoo

    torch.set_num_threads(1)
    build_zoo(TEST_ZOO, ["mux-40m", "mux-40m-draft"], progress=False)
    # float32: a verify forward then gives exactly the one-token forwards' argmax (in bf16 it
    # rounds differently and near-ties can flip, see docs/BENCHMARKS.md)
    target = Engine.load("mux-40m", str(TEST_ZOO / "mux-40m"), dtype="float32")
    draft = Engine.load("mux-40m-draft", str(TEST_ZOO / "mux-40m-draft"), dtype="float32")
    unrelated = Engine.load("mux-5m", str(zoo_dir / "mux-5m"), dtype="float32")  # same tokenizer, random: rarely agrees
    yield target, draft.model, unrelated.model
    for eng in (target, draft, unrelated):
        eng.close()


def reference(engine, prompt, n):
    ids = engine.encode(GenerationRequest("ref", prompt=prompt))
    out = engine.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return out[0][len(ids):].tolist()


async def collect(engine, draft=None, **kw):
    return [c async for c in engine.generate(GenerationRequest("t", **kw), draft=draft)]


def text(chunks):
    return "".join(c.text for c in chunks)


@pytest.mark.parametrize("which", ["draft", "unrelated"])
def test_greedy_answers_equal_the_served_model_alone(pair, which):
    target, draft, unrelated = pair
    model = draft if which == "draft" else unrelated
    before = (target.draft_proposed, target.draft_accepted)
    for prompt in PROMPTS:
        expected = reference(target, prompt, 40)
        chunks = asyncio.run(collect(target, model, prompt=prompt, max_tokens=40, temperature=0, draft_tokens=4))
        assert text(chunks) == target.tokenizer.decode(expected, skip_special_tokens=True)
        assert chunks[-1].completion_tokens == 40 and chunks[-1].finish_reason == "length"
    proposed = target.draft_proposed - before[0]
    accepted = target.draft_accepted - before[1]
    assert proposed > 0
    if which == "draft":
        assert accepted > proposed / 3  # most steps emit several tokens for one large forward
    else:
        assert accepted < proposed / 3  # mostly rejected: the correction path carries the answer


def test_max_tokens_is_exact_even_when_a_step_could_emit_more(pair):
    target, draft, _ = pair
    for n in (1, 2, 5, 6):
        chunks = asyncio.run(collect(target, draft, prompt=PROMPTS[0], max_tokens=n, temperature=0, draft_tokens=4))
        assert chunks[-1].completion_tokens == n
        assert text(chunks) == target.tokenizer.decode(reference(target, PROMPTS[0], n), skip_special_tokens=True)


def test_a_stop_string_inside_a_speculative_step_ends_the_answer_there(pair):
    target, draft, _ = pair
    plain = text(asyncio.run(collect(target, prompt=PROMPTS[1], max_tokens=30, temperature=0)))
    stop = plain[len(plain) // 2 : len(plain) // 2 + 3]
    assert stop.strip()
    want = asyncio.run(collect(target, prompt=PROMPTS[1], max_tokens=30, temperature=0, stop=[stop]))
    got = asyncio.run(collect(target, draft, prompt=PROMPTS[1], max_tokens=30, temperature=0, stop=[stop]))
    assert text(got) == text(want) and stop not in text(got)
    assert got[-1].finish_reason == "stop"
    assert got[-1].completion_tokens == want[-1].completion_tokens


def test_sampled_requests_keep_the_answer_their_seed_gives(pair):
    target, draft, _ = pair
    kw = dict(prompt=PROMPTS[2], max_tokens=20, temperature=0.8, seed=7)
    assert text(asyncio.run(collect(target, draft, **kw))) == text(asyncio.run(collect(target, **kw)))


def test_speculative_and_batched_sequences_run_together_exactly(pair):
    target, draft, _ = pair
    expected = {p: target.tokenizer.decode(reference(target, p, 24), skip_special_tokens=True) for p in PROMPTS}

    async def go(n_speculative, n_plain):
        jobs = [collect(target, draft, prompt=PROMPTS[i % 4], max_tokens=24, temperature=0) for i in range(n_speculative)]
        jobs += [collect(target, prompt=PROMPTS[i % 4], max_tokens=24, temperature=0) for i in range(n_plain)]
        return await asyncio.gather(*jobs)

    # 3 sequences stay under speculate_max_batch; 9 push the speculative ones into the batch
    for n_spec, n_plain in ((2, 1), (5, 4)):
        results = asyncio.run(go(n_spec, n_plain))
        for i, chunks in enumerate(results):
            prompt = PROMPTS[(i if i < n_spec else i - n_spec) % 4]
            assert text(chunks) == expected[prompt]


def test_the_next_turn_reuses_the_kv_a_speculative_answer_left(pair):
    target, draft, _ = pair
    first = asyncio.run(collect(target, draft, prompt=PROMPTS[3], max_tokens=20, temperature=0))
    follow_up = PROMPTS[3] + text(first) + " and then"
    hits = target.prefix_hit_tokens
    again = asyncio.run(collect(target, draft, prompt=follow_up, max_tokens=16, temperature=0))
    assert target.prefix_hit_tokens > hits
    assert text(again) == target.tokenizer.decode(reference(target, follow_up, 16), skip_special_tokens=True)


def test_constrained_and_processed_rows_do_not_speculate(pair):
    """The verify step keeps the raw argmax; a grammar's mask or a bias must decide instead."""
    import json

    target, draft, _ = pair
    schema = {"type": "object", "properties": {"v": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["v"]}
    steps = target.speculative_steps
    constrained = asyncio.run(collect(target, draft, prompt=PROMPTS[0], max_tokens=32, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "v", "schema": schema}}))
    assert json.loads(text(constrained))["v"] in range(10) and constrained[-1].finish_reason == "stop"
    forced, = target.tokenizer.encode(" the", add_special_tokens=False)
    biased = asyncio.run(collect(target, draft, prompt=PROMPTS[0], max_tokens=6, temperature=0, logit_bias={forced: 100}))
    assert text(biased) == " the" * 6
    assert target.speculative_steps == steps
    asyncio.run(collect(target, draft, prompt=PROMPTS[0], max_tokens=6, temperature=0))
    assert target.speculative_steps > steps  # the same request without them does speculate
