"""n > 1: a request's choices decode together from one prefill of the prompt, each with its own
sampler, and a choice answers exactly what a single request with its seed (seed + index) would."""

import asyncio
import json

import jsonschema
import pytest

from workers.engine import Engine
from workers.types import ContextLengthExceeded, GenerationRequest
from support import engine_drained

PROMPT = "The choices of a request share one prompt, and here is a long enough prompt for that"


@pytest.fixture(scope="module")
def engine(engine_2m):
    return engine_2m


def collect(engine, req):
    async def go():
        return [c async for c in engine.generate(req)]
    return asyncio.run(go())


def by_choice(chunks) -> dict[int, list]:
    out: dict[int, list] = {}
    for c in chunks:
        out.setdefault(c.index, []).append(c)
    return out


def test_three_choices_each_equal_a_single_request_with_its_seed_and_prefill_once(engine):
    engine.clear_prefix_cache()
    before = engine.prefill_tokens
    chunks = collect(engine, GenerationRequest("n3", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=40, n=3))
    prompt_tokens = chunks[-1].prompt_tokens
    assert engine.prefill_tokens - before == prompt_tokens  # the prompt was computed once, not three times
    choices = by_choice(chunks)
    assert sorted(choices) == [0, 1, 2]
    texts = []
    for index, parts in choices.items():
        assert [c.finish_reason for c in parts].count("length") == 1 and parts[-1].finish_reason == "length"
        assert parts[-1].completion_tokens == 12 and parts[-1].prompt_tokens == prompt_tokens
        texts.append("".join(c.text for c in parts))
        engine.clear_prefix_cache()
        alone = collect(engine, GenerationRequest("one", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=40 + index))
        assert texts[-1] == "".join(c.text for c in alone)
    assert len(set(texts)) == 3


def test_greedy_choices_are_the_same_answer(engine):
    choices = by_choice(collect(engine, GenerationRequest("g", prompt=PROMPT, max_tokens=10, temperature=0, n=2)))
    assert len({"".join(c.text for c in parts) for parts in choices.values()}) == 1


def test_every_choice_is_constrained(engine):
    schema = {"type": "object", "properties": {"k": {"enum": ["x", "y"]}, "v": {"type": "integer", "minimum": 0,
                                                                             "maximum": 50}}, "required": ["k", "v"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "kv", "schema": schema}}
    chunks = collect(engine, GenerationRequest("j", prompt=PROMPT, max_tokens=64, temperature=1.0, seed=1, n=4,
                                               response_format=fmt))
    for parts in by_choice(chunks).values():
        assert parts[-1].finish_reason == "stop"
        jsonschema.validate(json.loads("".join(c.text for c in parts)), schema)


def test_the_kv_budget_counts_every_choice(engine):
    per_token = engine.kv_bytes_per_token
    small = Engine("mux-2m", engine.model, engine.tokenizer, kv_budget_bytes=per_token * 100, prefix_cache_bytes=0)
    try:
        req = dict(prompt="hello there", max_tokens=40, temperature=0)
        assert collect(small, GenerationRequest("a", n=2, **req))[-1].finish_reason == "length"
        with pytest.raises(ContextLengthExceeded):  # 3 x (prompt + 40) > 100 positions
            collect(small, GenerationRequest("b", n=3, **req))
    finally:
        small.close()


def test_leaving_early_frees_every_choice(engine):
    async def go():
        stream = engine.generate(GenerationRequest("e", prompt=PROMPT, max_tokens=200, temperature=1.0, n=3))
        async for _ in stream:
            break
        await stream.aclose()
        return await engine_drained(engine)
    assert asyncio.run(go())
