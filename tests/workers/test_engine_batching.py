"""Continuous batching against real zoo models: sequences that share forwards produce exactly what
they would alone, join and leave a running batch, and are charged for the steps they were in."""

import asyncio
import time

import pytest
import torch

from workers.engine import Engine
from workers.types import ContextLengthExceeded, GenerationRequest

PROMPTS = [
    "The quick brown fox",
    "Once upon a time, in a land far away, there lived a",
    "abc",
    "Hello there, how are you doing today? I wanted to ask about the weather in the mountains " * 3,
    "1 2 3 4 5 6 7",
]


@pytest.fixture(scope="module")
def engine(zoo_dir):
    torch.set_num_threads(1)
    # small prefill chunks, so long prompts are prefilled over several steps while others decode;
    # float32: batched and one-at-a-time results are then equal to the last bit that greedy
    # decoding can see (in bf16 a batch's kernels round differently and near-ties can flip)
    eng = Engine.load("mux-5m", str(zoo_dir / "mux-5m"), dtype="float32", prefill_chunk_tokens=16,
                      idle_release_s=0.01)
    yield eng
    eng.close()


@pytest.fixture
def batch_sizes(engine, monkeypatch):
    """Records how many sequences each decode forward advanced."""
    sizes = []
    decode = engine._batch.decode

    def recording(model, decoding):
        sizes.append(len(decoding))
        return decode(model, decoding)

    monkeypatch.setattr(engine._batch, "decode", recording)
    return sizes


def reference(engine, prompt: str, n: int) -> str:
    ids = engine.encode(GenerationRequest("ref", prompt=prompt))
    out = engine.model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                                attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return engine.tokenizer.decode(out[0][len(ids):], skip_special_tokens=True)


async def collect(engine, req: GenerationRequest, started: asyncio.Event | None = None):
    chunks = []
    async for chunk in engine.generate(req):
        chunks.append(chunk)
        if started is not None:
            started.set()
    return chunks


async def staggered(engine, reqs: list[GenerationRequest]):
    """Submit each request once the previous one is streaming, so each joins a running batch."""
    tasks = []
    for req in reqs:
        started = asyncio.Event()
        tasks.append(asyncio.create_task(collect(engine, req, started)))
        await started.wait()
    return await asyncio.gather(*tasks)


def text(chunks) -> str:
    return "".join(c.text for c in chunks)


def test_staggered_and_simultaneous_greedy_outputs_equal_model_generate(engine, batch_sizes):
    n = 24

    async def go():
        first = staggered(engine, [GenerationRequest(f"s{i}", prompt=p, max_tokens=n, temperature=0)
                                   for i, p in enumerate(PROMPTS)])
        together = asyncio.gather(*[collect(engine, GenerationRequest(f"t{i}", prompt=p, max_tokens=n, temperature=0))
                                    for i, p in enumerate(PROMPTS)])
        return await first, await together

    joined, together = asyncio.run(go())
    for prompt, a, b in zip(PROMPTS, joined, together):
        expected = reference(engine, prompt, n)
        assert text(a) == expected
        assert text(b) == expected
        assert a[-1].completion_tokens == b[-1].completion_tokens
        assert a[-1].prompt_tokens == len(engine.encode(GenerationRequest("x", prompt=prompt)))
    assert max(batch_sizes) >= 3  # they really shared forwards


def test_seeded_sampling_does_not_depend_on_the_batch(engine):
    def sampled(i, seed):
        return GenerationRequest(f"r{i}", prompt="Hello", max_tokens=16, temperature=0.8, top_p=0.9, seed=seed)

    async def go():
        alone = await collect(engine, sampled(0, 42))
        crowd = [GenerationRequest(f"c{i}", prompt=p, max_tokens=20, temperature=1.0, seed=i)
                 for i, p in enumerate(PROMPTS)]
        crowded = await staggered(engine, crowd[:2] + [sampled(1, 42)] + crowd[2:])
        return alone, crowded[2]

    alone, crowded = asyncio.run(go())
    assert text(alone) == text(crowded)


def test_stop_strings_in_a_batch(engine):
    n = 20
    fulls = [reference(engine, p, n) for p in PROMPTS]
    stops = [full[5:8] for full in fulls]

    async def go():
        return await asyncio.gather(*[
            collect(engine, GenerationRequest(f"st{i}", prompt=p, max_tokens=n, temperature=0, stop=[stop, "qqqqqq"]))
            for i, (p, stop) in enumerate(zip(PROMPTS, stops))])

    for full, stop, chunks in zip(fulls, stops, asyncio.run(go())):
        assert text(chunks) == full[: full.index(stop)]
        assert chunks[-1].finish_reason == "stop"


def test_cancelling_one_stream_frees_its_row_and_leaves_the_others_intact(engine):
    n = 40

    async def go():
        keep = [asyncio.create_task(collect(engine, GenerationRequest(f"k{i}", prompt=p, max_tokens=n, temperature=0)))
                for i, p in enumerate(PROMPTS[:2])]
        doomed = engine.generate(GenerationRequest("d", prompt="x y z", max_tokens=1000, temperature=0))
        await anext(doomed)
        await anext(doomed)
        rows_before = len(engine._batch)
        await doomed.aclose()
        for _ in range(500):
            if engine.in_flight <= 2 and len(engine._batch) < rows_before:
                break
            await asyncio.sleep(0.005)
        rows_after, in_flight = len(engine._batch), engine.in_flight
        return rows_before, rows_after, in_flight, await asyncio.gather(*keep)

    rows_before, rows_after, in_flight, kept = asyncio.run(go())
    assert in_flight <= 2 and rows_after < rows_before
    for prompt, chunks in zip(PROMPTS, kept):
        assert text(chunks) == reference(engine, prompt, n)
    assert engine.in_flight == 0 and engine._running == [] and not engine._waiting
    for _ in range(500):  # an idle engine gives its KV slots back
        if engine._batch.cache.nbytes == 0:
            break
        time.sleep(0.005)
    assert len(engine._batch) == 0 and engine._batch.cache.nbytes == 0


def test_a_full_engine_queues_and_still_answers_everyone(zoo_dir):
    eng = Engine.load("mux-2m", str(zoo_dir / "mux-2m"), max_running=2, prefix_cache_bytes=0)
    try:
        async def go():
            return await asyncio.gather(*[collect(eng, GenerationRequest(f"q{i}", prompt=p, max_tokens=8, temperature=0))
                                          for i, p in enumerate(PROMPTS)])
        outs = asyncio.run(go())
        for prompt, chunks in zip(PROMPTS, outs):
            assert text(chunks) == reference(eng, prompt, 8)
    finally:
        eng.close()


def test_gpu_seconds_split_the_busy_time_among_the_sequences(engine):
    async def go():
        before = engine.busy_seconds
        outs = await staggered(engine, [GenerationRequest(f"g{i}", prompt=p, max_tokens=12, temperature=0)
                                        for i, p in enumerate(PROMPTS)])
        return engine.busy_seconds - before, outs

    busy, outs = asyncio.run(go())
    charged = [chunks[-1].gpu_seconds for chunks in outs]
    assert all(c > 0 for c in charged)
    assert sum(charged) == pytest.approx(busy, rel=1e-6)
    for chunks in outs:
        assert [c.gpu_seconds for c in chunks] == sorted(c.gpu_seconds for c in chunks)


def test_a_grouped_query_attention_model_batches_exactly(zoo_dir):
    """Fewer KV heads than query heads (most real models): the cache and masks still line up."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    eng = Engine("gqa", model, AutoTokenizer.from_pretrained(zoo_dir / "mux-2m"), prefix_cache_bytes=0)
    try:
        outs = asyncio.run(staggered(eng, [GenerationRequest(f"q{i}", prompt=p, max_tokens=12, temperature=0)
                                           for i, p in enumerate(PROMPTS)]))
        for prompt, chunks in zip(PROMPTS, outs):
            assert text(chunks) == reference(eng, prompt, 12)
        assert all(chunks[-1].completion_tokens > 0 for chunks in outs) and any(text(c) for c in outs)
    finally:
        eng.close()


def test_the_running_batch_never_outgrows_its_kv_budget(zoo_dir):
    """Six requests of 40 + 24 tokens against room for three such rows: they queue, all finish with
    the answers they would get alone, and the KV tensor never exceeds the budget."""
    torch.set_num_threads(1)
    probe = Engine.load("mux-5m", str(zoo_dir / "mux-5m"))
    per_token = probe.kv_bytes_per_token
    probe.close()
    budget = 3 * 70 * per_token
    eng = Engine.load("mux-5m", str(zoo_dir / "mux-5m"), kv_budget_bytes=budget)
    try:
        prompts = [("word " * 40)[: 160 + i] for i in range(6)]
        lengths = [len(eng.encode(GenerationRequest("n", prompt=p))) for p in prompts]
        assert all(n + 24 <= 70 for n in lengths)

        async def go():
            async def one(p):
                return "".join([c.text async for c in eng.generate(GenerationRequest("b", prompt=p, max_tokens=24,
                                                                                     temperature=0))])
            return await asyncio.gather(*[one(p) for p in prompts])

        outs = asyncio.run(go())
        assert outs == [reference(eng, p, 24) for p in prompts]
        assert 0 < eng._batch.cache.peak_nbytes <= budget
        with pytest.raises(ContextLengthExceeded, match="maximum context length is 210 tokens"):
            asyncio.run(go_one(eng, "hi", max_tokens=300))
    finally:
        eng.close()


async def go_one(engine, prompt, **kw):
    return [c async for c in engine.generate(GenerationRequest("x", prompt=prompt, **kw))]
