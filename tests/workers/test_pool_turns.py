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
    pool.close()
