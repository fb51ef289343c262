"""Fair share into a replica: a bounded queue that refuses a flooding team with 429 but still lets
another team in, and the context length the pool advertises is the one its engines enforce."""

import asyncio

import pytest

from workers.pool import ModelPool
from workers.types import ContextLengthExceeded, GenerationRequest, ModelSpec, QueueFull


def pool_of(zoo_dir, **kw) -> ModelPool:
    return ModelPool([ModelSpec("mux-2m", str(zoo_dir / "mux-2m"))], torch_threads=1, **kw)


def req(name: str, team: str, max_tokens: int = 40, **kw) -> GenerationRequest:
    return GenerationRequest(name, prompt="once upon a time", max_tokens=max_tokens, temperature=0.0, team=team,
                             **kw)


async def drain(pool, r):
    return [c async for c in pool.generate("mux-2m", r)]


def test_a_full_queue_refuses_the_flooding_team_with_retry_after_but_not_the_other_team(zoo_dir):
    pool = pool_of(zoo_dir, max_queued_requests=4, max_running_per_model=1)

    async def go():
        await drain(pool, req("warm", "a", 1))  # loaded: the queue below is engine admission only
        flood = [asyncio.ensure_future(drain(pool, req(f"a{i}", "a"))) for i in range(8)]
        await asyncio.sleep(0)  # each has entered the pool; none has had a token yet
        other = await drain(pool, req("b", "b", 4))  # the queue is full of a's: b is under its part
        results = await asyncio.gather(*flood, return_exceptions=True)
        return other, results

    other, results = asyncio.run(go())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 4 and all(isinstance(e, QueueFull) for e in errors)
    assert all(e.status == 429 and e.retry_after >= 1 for e in errors)
    assert other[-1].finish_reason is not None  # team b was served
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 4
    assert pool.stats()["queued_requests"] == 0 and pool.stats()["queue_refusals"] == 4
    pool.close()


@pytest.mark.parametrize("heavier, refused", [({"weight": 3.0}, 1), ({"priority": 2}, 0)], ids=["share", "route_priority"])
def test_a_heavier_team_may_hold_more_of_the_queue(zoo_dir, heavier, refused):
    pool = pool_of(zoo_dir, max_queued_requests=4, max_running_per_model=1)

    async def go():
        await drain(pool, req("warm", "a", 1))
        light = [asyncio.ensure_future(drain(pool, req(f"a{i}", "a"))) for i in range(4)]
        heavy = [asyncio.ensure_future(drain(pool, req(f"b{i}", "b", **heavier))) for i in range(4)]
        results = await asyncio.gather(*light, *heavy, return_exceptions=True)
        return results[:4], results[4:]

    light, heavy = asyncio.run(go())
    # the queue holds a's 4; b is under its part (4 x its weight / both weights; its weight: share
    # times 2**priority) until it holds 3 of the 4 slots (weight 3), or all 4 (priority 2: weight 4).
    # Before, priority did not count here: b at priority 2 got only 2 of them
    assert sum(isinstance(r, QueueFull) for r in light) == 0
    assert sum(isinstance(r, QueueFull) for r in heavy) == refused
    pool.close()


def test_the_advertised_context_length_is_the_one_enforced(zoo_dir):
    pool = pool_of(zoo_dir, kv_reserve_tokens=300)
    (info,) = pool.models()
    assert info.context_length == 300  # the zoo checkpoint says more; the KV reserve holds 300

    async def go(total):  # prompt + max_tokens = total
        prompt = "once upon a time"
        first = await drain(pool, GenerationRequest("w", prompt=prompt, max_tokens=1))
        n = first[-1].prompt_tokens
        return await drain(pool, GenerationRequest("c", prompt=prompt, max_tokens=total - n, temperature=0.0))

    assert asyncio.run(go(300))[-1].finish_reason is not None
    with pytest.raises(ContextLengthExceeded) as exc:
        asyncio.run(go(301))
    assert exc.value.details["context_length"] == info.context_length
    pool.close()
