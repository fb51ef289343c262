"""KV admission under contention: a long request waiting for KV room does not hold up short ones
queued behind it, it is passed only a bounded number of times, and teams share a model's engine
by weight."""

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


def test_a_flooding_team_does_not_push_another_teams_request_to_the_back(model):
    """Room for one request at a time: team a queues eight, then team b one; b's is served second,
    not ninth."""
    eng = Engine("mux-2m", model.model, model.tokenizer, prefix_cache_bytes=0, max_running=1)
    try:
        async def go():
            events = []
            occupant = await occupied(eng, events)
            flood = []
            for i in range(8):
                flood.append(asyncio.ensure_future(stream(eng, request(eng, f"a{i}", 20, team="a"), events)))
                await asyncio.sleep(0.002)
            b = asyncio.ensure_future(stream(eng, request(eng, "b", 20, team="b"), events))
            await asyncio.gather(occupant, b, *flood)
            return [e.split()[0] for e in events if e.endswith("started") and e != "occupant started"]

        order = asyncio.run(go())
        assert order.index("b") <= 1, order
    finally:
        eng.close()
