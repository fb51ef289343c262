"""Models take turns: on a replica with room for one model, a cold model's request gets its load
while another model is flooded (the hot one is paused, drains, is evicted), and the hot model's
requests are answered after it is swapped back."""

import asyncio

from workers.pool import ModelPool
from workers.types import GenerationRequest, ModelSpec


def test_a_cold_model_gets_its_turn_on_a_replica_busy_with_a_hot_one(zoo_dir):
    pool = ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in ("mux-2m", "mux-5m")], max_resident=1,
                     torch_threads=1, load_timeout_s=20)

    async def ask(model, name):
        r = GenerationRequest(name, prompt="hi there", max_tokens=6, temperature=0.0)
        return [c async for c in pool.generate(model, r)][-1]

    async def flood(stop: asyncio.Event, answers: list):
        while not stop.is_set():  # always a request of the hot model in flight: it never goes idle by itself
            answers.append(await ask("mux-2m", "hot"))

    async def go():
        await ask("mux-2m", "warm")
        stop, answers = asyncio.Event(), []
        flooders = [asyncio.ensure_future(flood(stop, answers)) for _ in range(4)]
        await asyncio.sleep(0.2)
        cold = await ask("mux-5m", "cold")  # before: waited for room until its load timed out (503)
        hot_after = len(answers)
        await asyncio.sleep(0.2)
        while len(answers) <= hot_after:  # the hot model is back and serving
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*flooders)
        return cold, answers

    cold, answers = asyncio.run(go())
    stats = pool.stats()
    assert cold.finish_reason is not None and cold.replica == pool.replica_id
    assert all(a.finish_reason is not None for a in answers)  # no hot request failed while it waited its turn
    assert stats["pauses"] >= 1 and stats["evictions"] >= 2  # out for the cold one, and the swap back
    assert stats["resident"] == ["mux-2m"] and stats["paused"] == []
    assert stats["paused_seconds"]["mux-2m"] > 0  # what the turn cost it (the cold one may be paused for the swap back)
    pool.close()


def test_a_paused_draft_is_no_longer_lent_so_it_drains(zoo_dir):
    """The cheapest model to swap out is a draft lent to every stream of a flooded model: once it is
    paused, new streams decode without it, so it goes idle and the waiting load gets its room."""
    from workers.zoo import build_zoo

    build_zoo(zoo_dir, ["mux-40m", "mux-40m-draft"], progress=False)
    pool = ModelPool([ModelSpec(n, str(zoo_dir / n)) for n in ("mux-40m", "mux-40m-draft", "mux-2m")],
                     max_resident=2, kv_reserve_tokens=64, torch_threads=1, load_timeout_s=15)

    async def ask(model, **kw):
        r = GenerationRequest("t", prompt="hi there", max_tokens=6, temperature=0.0, **kw)
        return [c async for c in pool.generate(model, r)][-1]

    async def flood(stop: asyncio.Event, answers: list):
        while not stop.is_set():  # every stream borrows the draft while it is lent
            answers.append(await ask("mux-40m", draft_model="mux-40m-draft", draft_tokens=3))

    async def go():
        await ask("mux-40m-draft")
        await ask("mux-40m")
        pool._resident["mux-40m"].load_seconds = 1e6  # the draft is the cheapest to swap out
        stop, answers = asyncio.Event(), []
        flooders = [asyncio.ensure_future(flood(stop, answers)) for _ in range(3)]
        await asyncio.sleep(0.2)
        try:
            return await ask("mux-2m")  # before: the paused draft stayed lent, and this load timed out
        finally:
            stop.set()
            await asyncio.gather(*flooders)

    assert asyncio.run(go()).finish_reason is not None
    assert "mux-40m" in pool.stats()["resident"] and pool.stats()["pauses"] >= 1
    pool.close()
