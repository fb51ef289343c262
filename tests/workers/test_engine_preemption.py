"""Preemption by recompute: sequences taken out of one engine mid-answer and put into another engine
of the same model go on exactly where they stopped (same tokens, same stream, exact counts)."""

import asyncio

import pytest
import torch

from workers.engine import Engine
from workers.sequence_stream import Preempted
from workers.types import GenerationRequest


@pytest.fixture(scope="module")
def engines(zoo_dir):
    """Two engines of one model in float32 (exact equalities): the one before a swap and the one after."""
    torch.set_num_threads(1)
    pair = [Engine.load("mux-2m", str(zoo_dir / "mux-2m"), dtype="float32") for _ in range(2)]
    yield pair
    for engine in pair:
        engine.close()


def shape(chunks) -> list[tuple]:
    """What the client sees of a stream: its text, counts, and the tokens its logprobs name (their
    values agree to float precision only: recomputed KV is summed in another order), gpu_seconds aside."""
    def tokens(entries):
        return None if entries is None else [(e["token"], [t["token"] for t in e["top_logprobs"]]) for e in entries]
    return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.index, tokens(c.logprobs))
            for c in chunks]


def logprob_values(chunks) -> list[float]:
    return [e["logprob"] for c in chunks for e in c.logprobs or ()]


async def preempted_midway(before: Engine, after: Engine, req: GenerationRequest, at: int) -> tuple[list, Preempted]:
    """The request's chunks: `at` of them from `before`, then (preempted there) the rest from `after`."""
    chunks, caught = [], None
    try:
        async for chunk in before.generate(req):
            chunks.append(chunk)
            if len(chunks) == at:
                before.preempt(finish_if_cheaper=False)
    except Preempted as exc:
        caught = exc
    assert caught is not None, "the stream ended before it was preempted"
    assert before.in_flight == 0  # its row released: nothing of it left in the first engine
    chunks += [c async for c in after.resume(caught)]
    return chunks, caught


@pytest.mark.parametrize("sampling", [
    dict(temperature=0.0),
    dict(temperature=0.9, top_p=0.9, seed=7),
    dict(temperature=0.8, seed=3, presence_penalty=0.5, logprobs=True, top_logprobs=2),
])
def test_a_preempted_sequence_resumed_in_another_engine_answers_as_if_never_interrupted(engines, sampling):
    before, after = engines
    req = GenerationRequest("t", prompt="Once upon a time", max_tokens=48, **sampling)

    async def go():
        reference = [c async for c in before.generate(req)]
        recomputed = after.recomputed_tokens
        chunks, caught = await preempted_midway(before, after, req, at=10)
        return reference, chunks, caught, after.recomputed_tokens - recomputed

    reference, chunks, caught, recomputed = asyncio.run(go())
    assert reference[-1].finish_reason == "length"  # it was mid-answer when preempted
    assert shape(chunks) == shape(reference)  # no chunk lost or repeated, same tokens, same counts
    assert chunks[-1].completion_tokens == 48
    assert logprob_values(chunks) == pytest.approx(logprob_values(reference), abs=1e-4)
    # it re-prefilled its prompt and every token sampled before but the last
    seq = caught.stream.first
    assert recomputed > 0 and recomputed <= len(seq.kv_tokens())


def test_a_draft_is_dropped_and_the_answer_is_unchanged(engines):
    before, after = engines
    req = GenerationRequest("t", prompt="The quick brown fox", max_tokens=40, temperature=0.0, draft_tokens=3)

    async def go():
        reference = [c async for c in after.generate(req)]
        draft = before.model  # a model drafts for itself: every proposal accepted
        chunks, caught = [], None
        try:
            async for chunk in before.generate(req, draft=draft):
                chunks.append(chunk)
                if len(chunks) == 3:
                    before.preempt(finish_if_cheaper=False)
        except Preempted as exc:
            caught = exc
        assert caught is not None and caught.stream.first.draft is None
        assert not before.lends(draft)
        chunks += [c async for c in after.resume(caught)]
        return reference, chunks

    reference, chunks = asyncio.run(go())
    assert "".join(c.text for c in chunks) == "".join(c.text for c in reference)
    assert chunks[-1].completion_tokens == reference[-1].completion_tokens == 40


def test_choices_of_an_n_request_are_not_preempted_they_finish(engines):
    before, _ = engines
    req = GenerationRequest("t", prompt="abc", max_tokens=30, temperature=0.7, seed=1, n=2)

    async def go():
        chunks = []
        async for chunk in before.generate(req):  # never raises Preempted
            chunks.append(chunk)
            if len(chunks) == 4:
                before.preempt(finish_if_cheaper=False)
        return chunks

    chunks = asyncio.run(go())
    finals = [c for c in chunks if c.finish_reason is not None]
    assert sorted(c.index for c in finals) == [0, 1] and all(c.completion_tokens == 30 for c in finals)


def test_finishing_is_kept_when_cheaper_than_recomputing(engines):
    """The cost rule: a sequence with few tokens left, whose KV would take longer to recompute
    than its remaining tokens take to decode, finishes instead of being preempted."""
    before, _ = engines
    prompt = " ".join(["word"] * 200)
    req = GenerationRequest("t", prompt=prompt, max_tokens=8, temperature=0.0)

    async def go():
        chunks = []
        before.decode_step_seconds, before.prefill_token_seconds = 1e-6, 1.0  # decoding is cheap, recompute dear
        async for chunk in before.generate(req):
            chunks.append(chunk)
            if len(chunks) == 1:
                before.preempt()
        return chunks

    chunks = asyncio.run(go())
    assert chunks[-1].finish_reason == "length" and chunks[-1].completion_tokens == 8
