"""Preemption by recompute: on a replica with room for one model, a cold model's request no longer
waits for a paused hot model's long requests to finish. They are preempted (KV released), wait at
the hot model's gate, and once it is swapped back go on in its new engine where they stopped: the
same answer, the same stream, the same counts as without the interruption."""

import asyncio

import pytest

from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec, PoolOverloaded

HOT, COLD = "mux-2m", "mux-5m"


def hot_requests() -> list[GenerationRequest]:
    """Long answers (each ends on its max_tokens): greedy, and seeded sampling."""
    return [GenerationRequest("greedy", prompt="Once upon a time", max_tokens=1500, temperature=0.0),
            GenerationRequest("seeded", prompt="The quick brown fox", max_tokens=1500, temperature=0.9, seed=11)]


def pool_of(zoo_dir, **kw) -> ModelPool:
    # float32: answers compared exactly; kv_reserve_tokens: both long requests run at once
    return ModelPool([ModelSpec(n, str(zoo_dir / n), dtype="float32") for n in (HOT, COLD)], max_resident=1,
                     torch_threads=1, kv_reserve_tokens=4096, **kw)


async def until(predicate, what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def collect(pool: ModelPool, model: str, req: GenerationRequest, into: list) -> list:
    async for chunk in pool.generate(model, req):
        into.append(chunk)
    return into


def finished(chunks: list) -> bool:
    return bool(chunks) and chunks[-1].finish_reason is not None


def hot_then_cold(pool: ModelPool):
    """The hot model's long requests are mid-answer when a cold model's short one arrives. Returns
    the cold answer, the hot streams, and which hot streams had finished when the cold one was answered."""
    async def go():
        await collect(pool, HOT, GenerationRequest("warm", prompt="hi", max_tokens=2, temperature=0.0), [])
        streams = [[] for _ in hot_requests()]
        tasks = [asyncio.ensure_future(collect(pool, HOT, r, s)) for r, s in zip(hot_requests(), streams)]
        await until(lambda: all(len(s) >= 5 for s in streams), "the hot answers to be under way")
        cold = await collect(pool, COLD, GenerationRequest("cold", prompt="hello", max_tokens=1, temperature=0.0), [])
        done_then = [finished(s) for s in streams]
        await asyncio.gather(*tasks)
        return cold, streams, done_then

    return asyncio.run(go())


def client_view(chunks: list) -> list[tuple]:
    return [(c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) for c in chunks]


@pytest.fixture(scope="module")
def without_preemption(zoo_dir):
    """The same scenario with preemption off: the reference answers (never interrupted)."""
    pool = pool_of(zoo_dir, preempt_after_s=None, load_timeout_s=120)
    try:
        yield hot_then_cold(pool), pool.stats()
    finally:
        pool.close()


def test_without_preemption_the_cold_request_waits_for_the_hot_answers_to_finish(without_preemption):
    (cold, streams, done_then), stats = without_preemption
    assert finished(cold)
    assert done_then == [True, True]  # what preemption removes: the cold model waited for every hot answer
    assert stats["preemptions"] == 0 and stats["recomputed_tokens"] == 0
    assert [s[-1].finish_reason for s in streams] == ["length", "length"]


def test_a_cold_request_is_answered_while_the_hot_answers_are_preempted_and_they_end_unchanged(
        zoo_dir, without_preemption):
    (_, reference, _), _ = without_preemption
    pool = pool_of(zoo_dir, preempt_after_s=0.2, load_timeout_s=120)
    try:
        cold, streams, done_then = hot_then_cold(pool)
        stats = pool.stats()
    finally:
        pool.close()
    assert finished(cold) and cold[-1].completion_tokens == 1
    assert done_then == [False, False]  # answered while both hot answers were mid-way
    for got, want in zip(streams, reference):  # greedy, then seeded sampling
        assert client_view(got) == client_view(want)  # same tokens, no chunk lost or repeated
        assert got[-1].completion_tokens == 1500
    assert stats["preemptions"] >= 2 and stats["recomputed_tokens"] > 0
    assert stats["resident"] == [HOT] and stats["paused"] == [] and stats["in_flight"] == {}


def test_a_preempted_client_that_leaves_is_dropped(zoo_dir):
    pool = pool_of(zoo_dir, preempt_after_s=0.1, load_timeout_s=60)

    async def go():
        hot = []
        task = asyncio.ensure_future(collect(pool, HOT, hot_requests()[0], hot))
        await until(lambda: len(hot) >= 5, "the hot answer to be under way")
        cold = asyncio.ensure_future(collect(pool, COLD, GenerationRequest("c", prompt="hi", max_tokens=1), []))
        await until(lambda: pool.preemptions >= 1, "the hot request to be preempted")
        task.cancel()  # the client leaves while its request waits for the hot model to come back
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished(await cold)
        await until(lambda: not pool.stats()["in_flight"], "nothing in flight")
        # the pool serves on: the hot model once more
        return await collect(pool, HOT, GenerationRequest("again", prompt="hi", max_tokens=3, temperature=0.0), [])

    assert finished(asyncio.run(go()))
    pool.close()


def test_a_preempted_stream_whose_model_does_not_come_back_gets_pool_overloaded(zoo_dir, monkeypatch):
    import threading

    pool = pool_of(zoo_dir, preempt_after_s=0.1, load_timeout_s=3)
    materialize, stuck = pool._materialize, threading.Event()

    def reload_stuck(model, predicted):  # the hot model's reload does not finish within load_timeout_s
        if model == HOT and pool.loads["cold"] >= 2:
            stuck.wait(30)
        return materialize(model, predicted)

    monkeypatch.setattr(pool, "_materialize", reload_stuck)

    async def go():
        hot = []
        task = asyncio.ensure_future(collect(pool, HOT, hot_requests()[0], hot))
        await until(lambda: len(hot) >= 5, "the hot answer to be under way")
        assert finished(await collect(pool, COLD, GenerationRequest("c", prompt="hi", max_tokens=1), []))
        try:
            with pytest.raises(PoolOverloaded):
                await task
        finally:
            stuck.set()
        await until(lambda: not pool.stats()["loading"], "the stuck reload to end")  # closed with the pool
        return hot

    hot = asyncio.run(go())
    assert not finished(hot)  # mid-answer, then a 503, not a hang
    assert pool.stats()["preemptions"] == 1
    pool.close()
