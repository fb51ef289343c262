"""KV admission under contention: a long request waiting for KV room does not hold up short ones
queued behind it, it is passed only a bounded number of times, and teams share a model's engine
by weight (times 2**priority, the route's)."""

import asyncio

import pytest

from workers.engine import Engine
from workers.types import GenerationRequest

BUDGET_TOKENS = 130  # occupant + short (2 rows x 60) fit; occupant + long (2 x 80) do not


@pytest.fixture
def model(engine_2m):
    return engine_2m  # its weights and tokenizer, shared by engines with their own budgets


def engine_with(model, **kw) -> Engine:
    return Engine("mux-2m", model.model, model.tokenizer, prefix_cache_bytes=0,
                  kv_budget_bytes=BUDGET_TOKENS * model.kv_bytes_per_token, **kw)


def request(engine, name: str, total: int, **kw) -> GenerationRequest:
    """A request whose prompt + max_tokens is `total` tokens and that never stops early."""
    prompt = "one two three four five"
    n = len(engine.encode(GenerationRequest("n", prompt=prompt)))
    no_eos = {t: -100.0 for t in engine.eos_ids}
    return GenerationRequest(name, prompt=prompt, max_tokens=total - n, temperature=0.0, logit_bias=no_eos, **kw)


async def stream(engine, req, events: list):
    first = True
    async for chunk in engine.generate(req):
        if first:
            events.append(f"{req.request_id} started")
            first = False
        if chunk.finish_reason:
            events.append(f"{req.request_id} done")


async def occupied(engine, events):
    """Start a 60-token occupant and wait until it decodes, so the requests after it queue behind it."""
    task = asyncio.ensure_future(stream(engine, request(engine, "occupant", 60), events))
    while "occupant started" not in events:
        await asyncio.sleep(0.001)
    return task


def test_a_short_request_is_not_held_up_by_a_long_one_waiting_for_kv(model):
    eng = engine_with(model)
    try:
        async def go():
            events = []
            occupant = await occupied(eng, events)
            await asyncio.gather(occupant, stream(eng, request(eng, "long", 80), events),
                                 stream(eng, request(eng, "short", 12), events))
            return events

        events = asyncio.run(go())
        # the short one ran beside the occupant; the long one waited for the occupant's KV
        assert events.index("short done") < events.index("occupant done") < events.index("long started")
    finally:
        eng.close()


def test_a_waiting_long_request_is_passed_at_most_max_bypass_times(model):
    eng = engine_with(model, max_bypass=1)
    try:
        async def go():
            events = []
            occupant = await occupied(eng, events)
            long = asyncio.ensure_future(stream(eng, request(eng, "long", 80), events))
            await asyncio.sleep(0.01)  # queued in this order
            first = asyncio.ensure_future(stream(eng, request(eng, "short1", 12), events))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(stream(eng, request(eng, "short2", 12), events))
            await asyncio.gather(occupant, long, first, second)
            return events

        events = asyncio.run(go())
        assert events.index("short1 done") < events.index("occupant done")  # one bypass allowed
        assert events.index("long started") < events.index("short2 started")  # then the long one goes first
    finally:
        eng.close()


def start_order(model, requests, gap_s: float = 0.0) -> list[str]:
    """Room for one request at a time: `requests(engine)` queue, in order (`gap_s` apart), behind a
    running occupant; the order in which they start."""
    eng = Engine("mux-2m", model.model, model.tokenizer, prefix_cache_bytes=0, max_running=1)
    try:
        async def go():
            events = []
            occupant = await occupied(eng, events)
            queued = []
            for req in requests(eng):
                queued.append(asyncio.ensure_future(stream(eng, req, events)))
                if gap_s:
                    await asyncio.sleep(gap_s)
            await asyncio.gather(occupant, *queued)
            return [e.split()[0] for e in events if e.endswith("started") and e != "occupant started"]

        return asyncio.run(go())
    finally:
        eng.close()


def test_a_flooding_team_does_not_push_another_teams_request_to_the_back(model):
    """Team a queues eight, then team b one; b's is served second, not ninth."""
    def requests(eng):
        yield from (request(eng, f"a{i}", 20, team="a") for i in range(8))
        yield request(eng, "b", 20, team="b")

    order = start_order(model, requests, gap_s=0.002)
    assert order.index("b") <= 1, order


def test_a_routes_priority_gives_its_team_more_of_the_turns_not_all_of_them(model):
    """Teams a (priority 0) and b (priority 2, its route's) queue six each, interleaved: b is
    admitted about four times for each of a's (2**2), and a still gets its turns."""
    def requests(eng):
        for i in range(6):  # no await in between: all queued, in this order, while the occupant runs
            yield request(eng, f"a{i}", 20, team="a")
            yield request(eng, f"b{i}", 20, team="b", priority=2)

    order = start_order(model, requests)
    first = [name[0] for name in order[:6]]
    assert first.count("b") == 5 and "a" in first, order  # equal priorities would alternate: 3 and 3
    assert len(order) == 12  # every request of both teams was served
