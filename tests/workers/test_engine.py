"""The engine against real zoo models: what it generates, how it stops, what it frees."""

import asyncio

import pytest
import torch

from workers.engine import Engine
from workers.types import ContextLengthExceeded, GenerationRequest
from support import engine_drained


@pytest.fixture(scope="module")
def engine(zoo_dir):
    torch.set_num_threads(1)
    eng = Engine.load("mux-5m", str(zoo_dir / "mux-5m"), dtype="float32")  # exact equalities below
    yield eng
    eng.close()


def run(engine, **kw):
    async def go():
        return [c async for c in engine.generate(GenerationRequest("t", **kw))]
    return asyncio.run(go())


def test_greedy_output_equals_model_generate(engine):
    prompt = "The quick brown fox"
    chunks = run(engine, prompt=prompt, max_tokens=24, temperature=0)
    ids = engine.encode(GenerationRequest("t", prompt=prompt))
    ref = engine.model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = engine.tokenizer.decode(ref[0][len(ids):], skip_special_tokens=True)
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 24
    assert chunks[-1].prompt_tokens == len(ids)


def test_streams_token_by_token(engine):
    chunks = run(engine, prompt="abc", max_tokens=10, temperature=0)
    assert len(chunks) >= 5
    assert [c.completion_tokens for c in chunks] == sorted(c.completion_tokens for c in chunks)
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_chat_template_is_applied(engine):
    req = GenerationRequest("t", messages=[{"role": "user", "content": "hello"}])
    text = engine.tokenizer.decode(engine.encode(req))
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


def test_stop_string_is_never_emitted(engine):
    full = "".join(c.text for c in run(engine, prompt="Once upon a time", max_tokens=20, temperature=0))
    stop = full[6:9]
    chunks = run(engine, prompt="Once upon a time", max_tokens=20, temperature=0, stop=[stop, "zzzzzz"])
    text = "".join(c.text for c in chunks)
    assert text == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_unaffected_by_concurrency(engine):
    def req(i, seed):
        return GenerationRequest(f"r{i}", prompt="Hello", max_tokens=12, temperature=1.0, top_p=0.9, seed=seed)

    async def concurrent():
        async def one(r):
            return "".join([c.text async for c in engine.generate(r)])
        return await asyncio.gather(*[one(req(i, i % 3)) for i in range(9)])

    outs = asyncio.run(concurrent())
    alone = "".join(c.text for c in run(engine, prompt="Hello", max_tokens=12, temperature=1.0, top_p=0.9, seed=0))
    assert outs[0] == outs[3] == outs[6] == alone
    assert len({outs[0], outs[1], outs[2]}) == 3


def test_context_overflow_is_refused_before_generating(engine):
    with pytest.raises(ContextLengthExceeded) as info:
        run(engine, prompt="hi", max_tokens=engine.context_length)
    assert str(engine.context_length) in info.value.message
    with pytest.raises(ContextLengthExceeded):
        run(engine, prompt="word " * 3000, max_tokens=1)


def test_closing_the_stream_frees_the_sequence(engine):
    async def go():
        agen = engine.generate(GenerationRequest("t", prompt="x", max_tokens=1000, temperature=0))
        await anext(agen)
        assert engine.in_flight == 1
        await agen.aclose()
        return await engine_drained(engine)
    assert asyncio.run(go())
