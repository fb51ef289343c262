"""Prefix reuse with a real model: a prompt that extends a finished sequence reuses its KV, and the
answer is exactly the one computed from scratch."""

import asyncio

import pytest
import torch

from workers.engine import Engine
from workers.types import GenerationRequest


@pytest.fixture(scope="module")
def engines(zoo_dir):
    torch.set_num_threads(1)
    # float32: reused KV (computed in other chunks) then gives the same greedy answer as from scratch
    reuse = Engine.load("mux-5m", str(zoo_dir / "mux-5m"), dtype="float32", prefill_chunk_tokens=32)
    scratch = Engine("mux-5m", reuse.model, reuse.tokenizer, prefix_cache_bytes=0)
    yield reuse, scratch
    reuse.close()
    scratch.close()


def answer(engine, **kw) -> str:
    async def go():
        return "".join([c.text async for c in engine.generate(GenerationRequest("p", **kw))])
    return asyncio.run(go())


def reference(engine, req: GenerationRequest, n: int) -> str:
    ids = engine.encode(req)
    out = engine.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return engine.tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


def test_an_agent_chain_reuses_its_history_and_answers_as_from_scratch(engines):
    reuse, scratch = engines
    messages = [{"role": "system", "content": "You are a terse agent. Use the tools; report results."}]
    hits = []
    for step in range(4):
        messages.append({"role": "user", "content": f"Step {step}: list the files, then open number {step}."})
        req = dict(messages=list(messages), max_tokens=20, temperature=0, session_id="agent-1")
        before = reuse.prefix_hit_tokens
        got = answer(reuse, **req)
        hits.append(reuse.prefix_hit_tokens - before)
        assert got == answer(scratch, **req)
        assert got == reference(reuse, GenerationRequest("r", messages=list(messages)), 20)
        messages.append({"role": "assistant", "content": got})
    assert hits[0] == 0
    # each later step reuses at least the previous prompt (its answer may retokenize differently)
    prompt_lengths = [len(reuse.encode(GenerationRequest("r", messages=messages[: 2 + 2 * i]))) for i in range(4)]
    for step in range(1, 4):
        assert hits[step] >= prompt_lengths[step - 1] - 1
    assert scratch.prefix_hit_tokens == 0


def test_a_shared_prefix_that_diverges_mid_prompt(engines):
    reuse, scratch = engines
    base = "Shared context about the project layout and the tools available to you. " * 3
    answer(reuse, prompt=base + "First question?", max_tokens=8, temperature=0)
    prompt = base + "A different question entirely?"
    ids = reuse.encode(GenerationRequest("x", prompt=prompt))
    assert 0 < reuse.cached_prefix_tokens(ids) < len(ids)
    before = reuse.prefix_hit_tokens
    got = answer(reuse, prompt=prompt, max_tokens=16, temperature=0)
    assert reuse.prefix_hit_tokens > before
    assert got == answer(scratch, prompt=prompt, max_tokens=16, temperature=0)
    assert got == reference(reuse, GenerationRequest("r", prompt=prompt), 16)


def test_repeating_a_prompt_recomputes_only_its_last_token(engines):
    reuse, _ = engines
    prompt = "Repeat after me: the same prompt twice gives the same answer twice."
    first = answer(reuse, prompt=prompt, max_tokens=12, temperature=0)
    ids = reuse.encode(GenerationRequest("x", prompt=prompt))
    before = reuse.prefix_hit_tokens
    assert answer(reuse, prompt=prompt, max_tokens=12, temperature=0) == first
    assert reuse.prefix_hit_tokens - before == len(ids) - 1


def test_seeded_sampling_is_the_same_with_or_without_reuse(engines):
    reuse, scratch = engines
    kw = dict(prompt="Seeded sampling over a reused prefix: " * 4, max_tokens=16, temperature=0.9, top_p=0.95, seed=7)
    answer(reuse, **kw)  # files the prompt's KV
    assert answer(reuse, **kw) == answer(scratch, **kw)
